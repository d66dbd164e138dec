#include "bind_util.hpp"

namespace juanji::bind {

void register_dense(py::module_& m) { (void)m; }

}  // namespace juanji::bind
