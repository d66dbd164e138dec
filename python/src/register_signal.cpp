#include "bind_util.hpp"

namespace juanji::bind {

void register_signal(py::module_& m) { (void)m; }

}  // namespace juanji::bind
