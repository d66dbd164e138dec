// conv1d / conv2d and their backward.
#include <pybind11/stl.h>

#include "bind_util.hpp"

namespace juanji::bind {
namespace {

py::tuple grads_tuple(ConvGrads grads) {
  return py::make_tuple(grads.grad_x, grads.grad_w, grads.grad_b);
}

}  // namespace

void register_conv(py::module_& m) {
  using Forward = Tensor (*)(const Tensor&, const Tensor&, const Tensor&, const ConvOptions&);
  using Backward = ConvGrads (*)(const Tensor&, const Tensor&, const Tensor&, const ConvOptions&);
  const struct {
    const char* name;
    const char* backward_name;
    Forward forward;
    Backward backward;
    const char* doc;
  } ops[] = {
      {"conv2d", "conv2d_backward", &conv2d, &conv2d_backward,
       "Cross-correlation of x (N, C, H, W) with weight (K, C/groups, R, S), plus bias (K). "
       "stride/dilation: int or pair; padding: int, pair, 'valid' or 'same' (TensorFlow's "
       "convention, asymmetric when it must be)."},
      {"conv1d", "conv1d_backward", &conv1d, &conv1d_backward,
       "Cross-correlation of x (N, C, L) with weight (K, C/groups, kL), plus bias (K)."},
  };
  for (const auto& op : ops) {
    const Forward forward = op.forward;
    const Backward backward = op.backward;
    m.def(op.name,
          [forward](py::handle x, py::handle w, py::handle bias, py::handle stride, py::handle padding,
                    py::handle dilation, std::int64_t groups) {
            return forward(tensor_arg(x, "x"), tensor_arg(w, "weight"), optional_tensor_arg(bias, "bias"),
                           conv_options(stride, padding, dilation, groups));
          },
          py::arg("x"), py::arg("weight"), py::arg("bias") = py::none(), py::arg("stride") = 1,
          py::arg("padding") = 0, py::arg("dilation") = 1, py::arg("groups") = 1, op.doc);
    m.def(op.backward_name,
          [backward](py::handle grad_out, py::handle x, py::handle w, py::handle stride,
                     py::handle padding, py::handle dilation, std::int64_t groups) {
            return grads_tuple(backward(tensor_arg(grad_out, "grad_out"), tensor_arg(x, "x"),
                                        tensor_arg(w, "weight"),
                                        conv_options(stride, padding, dilation, groups)));
          },
          py::arg("grad_out"), py::arg("x"), py::arg("weight"), py::arg("stride") = 1,
          py::arg("padding") = 0, py::arg("dilation") = 1, py::arg("groups") = 1,
          "Returns (grad_x, grad_weight, grad_bias) for the same arguments as the forward.");
  }
}

}  // namespace juanji::bind
