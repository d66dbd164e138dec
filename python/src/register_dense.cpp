// Python bindings for the dense part: linear, activations, softmax / log-softmax, dropout and the
// losses.
#include <pybind11/stl.h>

#include "bind_util.hpp"
#include "juanji/ops/dense.hpp"
#include "juanji/ops/loss.hpp"

namespace juanji::bind {

namespace {

void def_activation(py::module_& m, const char* name, const char* backward_name, Activation kind,
                    const char* doc) {
  m.def(
      name, [kind](py::object x) { return activation(kind, tensor_arg(x, "x")); }, py::arg("x"),
      doc);
  m.def(
      backward_name,
      [kind](py::object grad_out, py::object x) {
        return activation_backward(kind, tensor_arg(grad_out, "grad_out"), tensor_arg(x, "x"));
      },
      py::arg("grad_out"), py::arg("x"), "grad_out times the derivative at x.");
}

using SoftmaxForward = Tensor (*)(const Tensor&, std::int64_t);
using SoftmaxBackward = Tensor (*)(const Tensor&, const Tensor&, std::int64_t);

}  // namespace

void register_dense(py::module_& m) {
  m.def(
      "linear",
      [](py::object x, py::object w, py::object b) {
        return linear(tensor_arg(x, "x"), tensor_arg(w, "w"), optional_tensor_arg(b, "b"));
      },
      py::arg("x"), py::arg("w"), py::arg("b") = py::none(),
      "Fully connected layer: x (N, in), w (out, in), b (out,) -> x w^T + b (N, out).");
  m.def(
      "linear_backward",
      [](py::object grad_out, py::object x, py::object w) {
        LinearGrads g = linear_backward(tensor_arg(grad_out, "grad_out"), tensor_arg(x, "x"),
                                        tensor_arg(w, "w"));
        return py::make_tuple(g.grad_x, g.grad_w, g.grad_b);
      },
      py::arg("grad_out"), py::arg("x"), py::arg("w"),
      "Gradients of linear: (grad_x = g w, grad_w = g^T x, grad_b = sum over rows of g).");

  def_activation(m, "relu", "relu_backward", Activation::relu, "max(x, 0); relu'(0) = 0.");
  def_activation(m, "sigmoid", "sigmoid_backward", Activation::sigmoid,
                 "1 / (1 + exp(-x)), without overflow for either sign.");
  def_activation(m, "tanh", "tanh_backward", Activation::tanh, "Hyperbolic tangent.");
  m.def(
      "leaky_relu",
      [](py::object x, double negative_slope) {
        return activation(Activation::leaky_relu, tensor_arg(x, "x"), negative_slope);
      },
      py::arg("x"), py::arg("negative_slope") = 0.01, "x for x > 0, else negative_slope * x.");
  m.def(
      "leaky_relu_backward",
      [](py::object grad_out, py::object x, double negative_slope) {
        return activation_backward(Activation::leaky_relu, tensor_arg(grad_out, "grad_out"),
                                   tensor_arg(x, "x"), negative_slope);
      },
      py::arg("grad_out"), py::arg("x"), py::arg("negative_slope") = 0.01,
      "grad_out times the derivative at x (negative_slope for x <= 0).");

  struct SoftmaxPair {
    const char* name;
    const char* backward_name;
    SoftmaxForward forward;
    SoftmaxBackward backward;
    const char* doc;
  };
  for (const SoftmaxPair& s :
       {SoftmaxPair{"softmax", "softmax_backward", &softmax, &softmax_backward,
                    "exp(x) / sum(exp(x)) along dim, with the maximum subtracted first."},
        SoftmaxPair{"log_softmax", "log_softmax_backward", &log_softmax, &log_softmax_backward,
                    "x - logsumexp(x) along dim, with the maximum subtracted first."}}) {
    const SoftmaxForward forward = s.forward;
    const SoftmaxBackward backward = s.backward;
    m.def(
        s.name, [forward](py::object x, py::handle dim) { return forward(tensor_arg(x, "x"), int_arg(dim, "dim")); },
        py::arg("x"), py::arg("dim") = -1, s.doc);
    m.def(
        s.backward_name,
        [backward](py::object grad_out, py::object x, py::handle dim) {
          return backward(tensor_arg(grad_out, "grad_out"), tensor_arg(x, "x"), int_arg(dim, "dim"));
        },
        py::arg("grad_out"), py::arg("x"), py::arg("dim") = -1,
        "Gradient w.r.t. x, recomputing the forward from x.");
  }

  m.def(
      "dropout",
      [](py::object x_obj, double p, bool training) -> py::tuple {
        const Tensor x = tensor_arg(x_obj, "x").contiguous();
        if (!training) return py::make_tuple(x.clone(), Tensor::full(x.shape(), 1.0, x.dtype(), x.device()));
        Tensor mask = Tensor::empty(x.shape(), x.dtype(), x.device());
        Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
        dropout_forward(x, p, mask, y);
        return py::make_tuple(y, mask);
      },
      py::arg("x"), py::arg("p"), py::arg("training") = true,
      "Inverted dropout: returns (y, mask) with mask 0 or 1/(1-p); draws from the seeded "
      "generator (juanji.manual_seed).");

  m.def(
      "mse_loss",
      [](py::object z, py::object y, const std::string& reduction) {
        return mse_loss(tensor_arg(z, "z"), tensor_arg(y, "y"),
                        parse_reduction(reduction, "mse_loss"));
      },
      py::arg("z"), py::arg("y"), py::arg("reduction") = "mean",
      "Squared error: 'mean', 'sum', 'half_sum' (1/2 sum (z - y)^2) or 'none' (elementwise).");
  m.def(
      "mse_loss_backward",
      [](py::object z, py::object y, const std::string& reduction) {
        return mse_loss_backward(tensor_arg(z, "z"), tensor_arg(y, "y"),
                                 parse_reduction(reduction, "mse_loss_backward"));
      },
      py::arg("z"), py::arg("y"), py::arg("reduction") = "mean",
      "d loss / d z; for 'none' every element's loss has weight 1.");
  m.def(
      "cross_entropy",
      [](py::object logits, py::object labels, const std::string& reduction, double label_smoothing) {
        return cross_entropy(tensor_arg(logits, "logits"), labels_arg(labels, "labels"),
                             parse_reduction(reduction, "cross_entropy", false), label_smoothing);
      },
      py::arg("logits"), py::arg("labels"), py::arg("reduction") = "mean", py::arg("label_smoothing") = 0.0,
      "Softmax cross-entropy of logits (N, C) against integer labels (N,) in [0, C): 'mean', "
      "'sum' or 'none'. Numerically stable. label_smoothing eps in [0, 1] (PyTorch's definition) "
      "compares with the target (1 - eps) * onehot + eps / C.");
  m.def(
      "cross_entropy_backward",
      [](py::object logits, py::object labels, const std::string& reduction, double label_smoothing) {
        return cross_entropy_backward(tensor_arg(logits, "logits"), labels_arg(labels, "labels"),
                                      parse_reduction(reduction, "cross_entropy_backward", false),
                                      label_smoothing);
      },
      py::arg("logits"), py::arg("labels"), py::arg("reduction") = "mean", py::arg("label_smoothing") = 0.0,
      "d loss / d logits = softmax(logits) - target (onehot(labels) unless smoothed), divided by N "
      "for 'mean'.");
}

}  // namespace juanji::bind
