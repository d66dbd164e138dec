// Python bindings for pooling: max/avg 1-D and 2-D, global average, and their backward passes.
#include "bind_util.hpp"
#include "juanji/ops/pool.hpp"

namespace juanji::bind {

namespace {

using Forward = Tensor (*)(const Tensor&, const PoolOptions&);
using Backward = Tensor (*)(const Tensor&, const Tensor&, const PoolOptions&);

void def_max(py::module_& m, const char* name, const char* backward_name, Forward forward,
             Backward backward, const char* doc) {
  m.def(
      name,
      [forward](py::object x, py::object kernel_size, py::object stride, py::object padding,
                bool ceil_mode) {
        return forward(tensor_arg(x, "x"),
                       pool_options(kernel_size, stride, padding, ceil_mode, true));
      },
      py::arg("x"), py::arg("kernel_size"), py::arg("stride") = py::none(),
      py::arg("padding") = 0, py::arg("ceil_mode") = false, doc);
  m.def(
      backward_name,
      [backward](py::object grad_out, py::object x, py::object kernel_size, py::object stride,
                 py::object padding, bool ceil_mode) {
        return backward(tensor_arg(grad_out, "grad_out"), tensor_arg(x, "x"),
                        pool_options(kernel_size, stride, padding, ceil_mode, true));
      },
      py::arg("grad_out"), py::arg("x"), py::arg("kernel_size"), py::arg("stride") = py::none(),
      py::arg("padding") = 0, py::arg("ceil_mode") = false,
      "Gradient of the max pooling w.r.t. x: each output's gradient goes to the first maximum "
      "of its window.");
}

void def_avg(py::module_& m, const char* name, const char* backward_name, Forward forward,
             Backward backward, const char* doc) {
  m.def(
      name,
      [forward](py::object x, py::object kernel_size, py::object stride, py::object padding,
                bool ceil_mode, bool count_include_pad) {
        return forward(tensor_arg(x, "x"),
                       pool_options(kernel_size, stride, padding, ceil_mode, count_include_pad));
      },
      py::arg("x"), py::arg("kernel_size"), py::arg("stride") = py::none(),
      py::arg("padding") = 0, py::arg("ceil_mode") = false, py::arg("count_include_pad") = true,
      doc);
  m.def(
      backward_name,
      [backward](py::object grad_out, py::object x, py::object kernel_size, py::object stride,
                 py::object padding, bool ceil_mode, bool count_include_pad) {
        return backward(tensor_arg(grad_out, "grad_out"), tensor_arg(x, "x"),
                        pool_options(kernel_size, stride, padding, ceil_mode, count_include_pad));
      },
      py::arg("grad_out"), py::arg("x"), py::arg("kernel_size"), py::arg("stride") = py::none(),
      py::arg("padding") = 0, py::arg("ceil_mode") = false, py::arg("count_include_pad") = true,
      "Gradient of the average pooling w.r.t. x: each output's gradient is spread evenly over "
      "its window.");
}

}  // namespace

void register_pool(py::module_& m) {
  def_max(m, "max_pool2d", "max_pool2d_backward", &max_pool2d, &max_pool2d_backward,
          "2-D max pooling of x (N, C, H, W), PyTorch semantics; stride defaults to kernel_size.");
  def_max(m, "max_pool1d", "max_pool1d_backward", &max_pool1d, &max_pool1d_backward,
          "1-D max pooling of x (N, C, L), PyTorch semantics; stride defaults to kernel_size.");
  def_avg(m, "avg_pool2d", "avg_pool2d_backward", &avg_pool2d, &avg_pool2d_backward,
          "2-D average pooling of x (N, C, H, W), PyTorch semantics; stride defaults to "
          "kernel_size.");
  def_avg(m, "avg_pool1d", "avg_pool1d_backward", &avg_pool1d, &avg_pool1d_backward,
          "1-D average pooling of x (N, C, L), PyTorch semantics; stride defaults to "
          "kernel_size.");
  m.def(
      "global_avg_pool2d", [](py::object x) { return global_avg_pool2d(tensor_arg(x, "x")); },
      py::arg("x"), "Mean of each channel: (N, C, H, W) -> (N, C, 1, 1).");
  m.def(
      "global_avg_pool2d_backward",
      [](py::object grad_out, py::object x) {
        return global_avg_pool2d_backward(tensor_arg(grad_out, "grad_out"), tensor_arg(x, "x"));
      },
      py::arg("grad_out"), py::arg("x"), "Gradient of global_avg_pool2d w.r.t. x.");
}

}  // namespace juanji::bind
