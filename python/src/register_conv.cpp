// conv1d / conv2d and their backward.
#include <pybind11/stl.h>

#include <string>

#include "bind_util.hpp"

namespace juanji::bind {
namespace {

ConvPass conv_pass_arg(const std::string& pass) {
  if (pass == "forward") return ConvPass::forward;
  if (pass == "data_grad") return ConvPass::data_grad;
  if (pass == "weight_grad") return ConvPass::weight_grad;
  throw std::invalid_argument("pass_: expected 'forward', 'data_grad' or 'weight_grad', got '" + pass + "'");
}

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
                    py::handle dilation, py::handle groups) {
            return forward(tensor_arg(x, "x"), tensor_arg(w, "weight"), optional_tensor_arg(bias, "bias"),
                           conv_options(stride, padding, dilation, int_arg(groups, "groups")));
          },
          py::arg("x"), py::arg("weight"), py::arg("bias") = py::none(), py::arg("stride") = 1,
          py::arg("padding") = 0, py::arg("dilation") = 1, py::arg("groups") = 1, op.doc);
    m.def(op.backward_name,
          [backward](py::handle grad_out, py::handle x, py::handle w, py::handle stride,
                     py::handle padding, py::handle dilation, py::handle groups) {
            return grads_tuple(backward(tensor_arg(grad_out, "grad_out"), tensor_arg(x, "x"),
                                        tensor_arg(w, "weight"),
                                        conv_options(stride, padding, dilation, int_arg(groups, "groups"))));
          },
          py::arg("grad_out"), py::arg("x"), py::arg("weight"), py::arg("stride") = 1,
          py::arg("padding") = 0, py::arg("dilation") = 1, py::arg("groups") = 1,
          "Returns (grad_x, grad_weight, grad_bias) for the same arguments as the forward.");
  }

  // Private hooks for the tests: which CPU algorithm takes a problem, and forcing one.
  m.def("_conv_algorithms",
        [](const std::string& pass, py::handle x, py::handle w, py::handle stride, py::handle padding,
           py::handle dilation, py::handle groups) {
          const Tensor xt = tensor_arg(x, "x"), wt = tensor_arg(w, "weight");
          const ConvGeometry g = ConvGeometry::make(xt.shape(), wt.shape(),
                                                    conv_options(stride, padding, dilation, int_arg(groups, "groups")),
                                                    static_cast<int>(xt.dim()) - 2);
          py::list out;
          const auto text_or_none = [](const std::string& text) {
            return text.empty() ? py::object(py::none()) : py::object(py::str(text));
          };
          for (const auto& choice : conv_algorithms(conv_pass_arg(pass), g, xt.dtype(), wt.contiguous()))
            out.append(py::make_tuple(choice.name, text_or_none(choice.refusal), text_or_none(choice.passed_over)));
          return out;
        },
        py::arg("pass_"), py::arg("x"), py::arg("weight"), py::arg("stride") = 1, py::arg("padding") = 0,
        py::arg("dilation") = 1, py::arg("groups") = 1,
        "[(name, why it refuses or None, why the default choice passes it over or None)] for the pass, in "
        "the order the CPU tries them: the first with two Nones runs.");
  m.def("_set_conv_algorithm",
        [](const std::string& pass, py::object name) {
          return set_conv_algorithm(conv_pass_arg(pass), name.is_none() ? "" : name.cast<std::string>());
        },
        py::arg("pass_"), py::arg("name"),
        "Forces the pass's CPU convolution algorithm (None: choose); returns the previous name ('' for none).");
}

}  // namespace juanji::bind
