// juanji._core.distributed: MPI ranks, allreduce and broadcast (juanji/distributed.hpp).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "bind_util.hpp"
#include "juanji/distributed.hpp"
#include "juanji/error.hpp"

namespace py = pybind11;

namespace juanji::bind {

namespace {

distributed::ReduceOp reduce_op(const std::string& op) {
  if (op == "sum") return distributed::ReduceOp::sum;
  if (op == "mean") return distributed::ReduceOp::mean;
  throw std::invalid_argument("op: expected 'sum' or 'mean', got '" + op + "'");
}

// A writable, C-contiguous float32/float64 NumPy array's memory, to work on in place.
struct ArrayMemory {
  void* data;
  std::int64_t count;
  DType dtype;
};

ArrayMemory array_memory(py::array array, const char* what) {
  check_type(array.dtype().is(py::dtype::of<float>()) || array.dtype().is(py::dtype::of<double>()),
             what, ": expected a float32 or float64 array, got ", std::string(py::str(array.dtype())));
  check(array.writeable(), what, ": the array is read-only (it is changed in place)");
  check((array.flags() & py::array::c_style) != 0, what, ": expected a C-contiguous array");
  return {array.mutable_data(), static_cast<std::int64_t>(array.size()),
          array.dtype().is(py::dtype::of<float>()) ? DType::float32 : DType::float64};
}

template <class F>
auto without_gil_here(F&& f) {
  py::gil_scoped_release release;
  return f();
}

}  // namespace

void register_distributed(py::module_& m) {
  auto d = m.def_submodule("distributed", "MPI ranks, allreduce and broadcast (data-parallel training)");
  d.def("compiled", &distributed::compiled, "Whether this copy of juanji was built with MPI.");
  d.def("library_version", &distributed::library_version,
        "The MPI library's version text (MPI_Get_library_version); empty without MPI.");
  d.def("init", [] { without_gil_here([] { distributed::init(); return 0; }); },
        "Starts MPI, or adopts one already started (by mpi4py); idempotent.");
  d.def("is_initialized", &distributed::is_initialized);
  d.def("rank", &distributed::rank, "This process's rank: 0 before init().");
  d.def("world_size", &distributed::world_size, "The number of ranks: 1 before init().");
  d.def("barrier", [] { without_gil_here([] { distributed::barrier(); return 0; }); });
  d.def("finalize", &distributed::finalize, "Ends MPI if init() started it.");
  d.def("abort", [](int code) { distributed::abort(code); }, py::arg("code") = 1,
        "Ends every rank of the job at once (MPI_Abort) with this exit code.");
  d.def("all_reduce",
        [](Tensor& t, const std::string& op) {
          const auto reduce = reduce_op(op);
          without_gil_here([&] { distributed::all_reduce(t, reduce); return 0; });
        },
        py::arg("tensor"), py::arg("op") = "sum");
  d.def("all_reduce",
        [](py::array array, const std::string& op) {
          const auto reduce = reduce_op(op);
          const ArrayMemory memory = array_memory(array, "all_reduce");
          without_gil_here([&] {
            distributed::all_reduce(memory.data, memory.count, memory.dtype, reduce);
            return 0;
          });
        },
        py::arg("array"), py::arg("op") = "sum",
        "In place on every rank: the element-wise sum or mean over ranks.");
  d.def("broadcast",
        [](Tensor& t, int root) { without_gil_here([&] { distributed::broadcast(t, root); return 0; }); },
        py::arg("tensor"), py::arg("root") = 0);
  d.def("broadcast",
        [](py::array array, int root) {
          const ArrayMemory memory = array_memory(array, "broadcast");
          without_gil_here([&] {
            distributed::broadcast(memory.data, memory.count, memory.dtype, root);
            return 0;
          });
        },
        py::arg("array"), py::arg("root") = 0, "In place: root's values on every rank.");
}

}  // namespace juanji::bind
