// Python bindings for signal convolution (numpy/scipy semantics) and the juanji.kernels constants.
#include "bind_util.hpp"
#include "juanji/ops/signal.hpp"

namespace juanji::bind {

namespace {

using SignalOp = Tensor (*)(const Tensor&, const Tensor&, SignalMode);

void def_signal(py::module_& m, const char* name, const char* a, const char* b,
                const char* default_mode, SignalOp op, const char* doc) {
  m.def(
      name,
      [op, name, a, b](py::object x, py::object y, const std::string& mode) {
        return op(tensor_arg(x, a), tensor_arg(y, b), parse_signal_mode(mode, name));
      },
      py::arg(a), py::arg(b), py::arg("mode") = default_mode, doc);
}

}  // namespace

void register_signal(py::module_& m) {
  def_signal(m, "convolve", "f", "g", "full", &convolve,
             "True 1-D convolution (kernel flipped), exactly numpy.convolve(f, g, mode).");
  def_signal(m, "correlate", "f", "g", "valid", &correlate,
             "1-D cross-correlation, exactly numpy.correlate(f, g, mode).");
  def_signal(m, "convolve2d", "a", "k", "full", &convolve2d,
             "True 2-D convolution, exactly scipy.signal.convolve2d(a, k, mode) with zero fill.");
  def_signal(m, "correlate2d", "a", "k", "full", &correlate2d,
             "2-D cross-correlation, exactly scipy.signal.correlate2d(a, k, mode) with zero fill.");

  py::module_ k = m.def_submodule("kernels", "Classic image-filter kernels as 2-D tensors.");
  k.def(
      "box", [](py::handle n, py::object dtype) { return kernels::box(int_arg(n, "n"), dtype_arg(dtype, "dtype")); },
      py::arg("n"), py::arg("dtype") = "float32", "n x n box blur, every entry 1/n^2.");
  k.def(
      "gaussian",
      [](py::handle n, double sigma, py::object dtype) {
        return kernels::gaussian(int_arg(n, "n"), sigma, dtype_arg(dtype, "dtype"));
      },
      py::arg("n"), py::arg("sigma"), py::arg("dtype") = "float32",
      "n x n sampled Gaussian centred at ((n-1)/2, (n-1)/2), normalised to sum 1.");
  k.def(
      "laplacian", [](py::object dtype) { return kernels::laplacian(dtype_arg(dtype, "dtype")); },
      py::arg("dtype") = "float32", "[[0, 1, 0], [1, -4, 1], [0, 1, 0]].");
  k.def(
      "sobel_x", [](py::object dtype) { return kernels::sobel_x(dtype_arg(dtype, "dtype")); },
      py::arg("dtype") = "float32", "[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]: horizontal gradient.");
  k.def(
      "sobel_y", [](py::object dtype) { return kernels::sobel_y(dtype_arg(dtype, "dtype")); },
      py::arg("dtype") = "float32", "Transpose of sobel_x: vertical gradient.");
  k.attr("__all__") = py::make_tuple("box", "gaussian", "laplacian", "sobel_x", "sobel_y");
}

}  // namespace juanji::bind
