// juanji._core: only creates the module and calls each area's register function.
#include <pybind11/pybind11.h>

#include <string>

#include "bind_util.hpp"
#include "juanji/error.hpp"

namespace py = pybind11;

namespace juanji::bind {
void register_tensor(py::module_& m);
void register_conv(py::module_& m);
void register_pool(py::module_& m);
void register_signal(py::module_& m);
void register_dense(py::module_& m);
void register_optim(py::module_& m);
void register_nn(py::module_& m);
void register_io(py::module_& m);
void register_data(py::module_& m);
void register_distributed(py::module_& m);
}  // namespace juanji::bind

PYBIND11_MODULE(_core, m) {
  m.doc() = "juanji C++ core";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const juanji::TypeError& e) {
      PyErr_SetObject(PyExc_TypeError, juanji::bind::error_text(e.what()).ptr());
    } catch (const std::invalid_argument& e) {
      PyErr_SetObject(PyExc_ValueError, juanji::bind::error_text(e.what()).ptr());
    } catch (const py::cast_error& e) {
      // pybind11 would raise RuntimeError for what is a wrong argument type.
      PyErr_SetObject(PyExc_TypeError,
                      juanji::bind::error_text((std::string("an argument has the wrong type: ") + e.what()).c_str()).ptr());
    } catch (const juanji::AllocationError& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    } catch (const std::bad_alloc&) {
      PyErr_SetString(PyExc_MemoryError, "out of memory: an allocation failed (std::bad_alloc)");
    }
  });
  juanji::bind::register_tensor(m);
  juanji::bind::register_conv(m);
  juanji::bind::register_pool(m);
  juanji::bind::register_signal(m);
  juanji::bind::register_dense(m);
  // Before nn: Sequential.train_step's signature then names juanji._core.optim.SGD.
  juanji::bind::register_optim(m);
  juanji::bind::register_nn(m);
  juanji::bind::register_io(m);
  juanji::bind::register_data(m);
  juanji::bind::register_distributed(m);
}
