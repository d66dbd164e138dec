// The linear ops of juanji/ops/dense.hpp: the arguments' checks and the choice of backend
// (cpu/linear.hpp or cuda/ops.hpp).
#include "cpu/linear.hpp"
#include "juanji/ops/dense.hpp"
#include "ops/backend.hpp"
#include "ops/bfloat16_operands.hpp"
#include "ops/checks.hpp"

namespace juanji {
namespace {

void check_linear(const Tensor& x, const Tensor& w) {
  check_float(x, "x");
  check_float(w, "weight");
  check_same_dtype(x, "x", w, "weight");
  check_same_device(x, "x", w, "weight");
  ops::require_supported_device(x, "linear", "x");
  check_dim(x, "x", 2, "(N, in_features)");
  check_dim(w, "weight", 2, "(out_features, in_features)");
  check(x.size(1) == w.size(1), "weight: ", shape_text(w.shape()), " expects in_features = ",
        w.size(1), " but x ", shape_text(x.shape()), " has ", x.size(1));
  if (backend::kCudaCompiled)
    check(x.device().is_cpu() || (x.numel() > 0 && w.numel() > 0), "linear: empty operands x ",
          shape_text(x.shape()), ", weight ", shape_text(w.shape()), " are not supported on CUDA yet");
}

}  // namespace

void linear_forward(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y) {
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) return cuda::linear_forward(x, w, b, y);
#endif
  cpu::linear_forward(x, w, b, y);
}

bool linear_forward_activation(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y,
                               Activation kind, double negative_slope) {
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) {
    cuda::linear_forward(x, w, b, y, {true, kind, negative_slope});
    return true;
  }
#endif
  (void)x, (void)w, (void)b, (void)y, (void)kind, (void)negative_slope;
  return false;
}

void linear_backward_into(const Tensor& grad_y, const Tensor& x, const Tensor& w, Tensor& grad_x,
                          Tensor& grad_w, Tensor& grad_b) {
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) return cuda::linear_backward(grad_y, x, w, grad_x, grad_w, grad_b);
#endif
  cpu::linear_backward(grad_y, x, w, grad_x, grad_w, grad_b);
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  if (ops::in_bfloat16("linear", {{"x", x}, {"weight", w}, {"bias", b}}))
    return ops::narrowed(linear(ops::widened(x), ops::widened(w), ops::widened(b)));
  check_linear(x, w);
  if (b.defined()) {
    check_float(b, "bias");
    check_same_dtype(x, "x", b, "bias");
    check_same_device(x, "x", b, "bias");
    check(b.dim() == 1 && b.size(0) == w.size(0), "bias: expected shape (", w.size(0),
          ",) to match weight ", shape_text(w.shape()), ", got ", shape_text(b.shape()));
  }
  Tensor y = Tensor::empty({x.size(0), w.size(0)}, x.dtype(), x.device());
  linear_forward(x.contiguous(), w.contiguous(), b.defined() ? b.contiguous() : Tensor(), y);
  return y;
}

LinearGrads linear_backward(const Tensor& grad_out, const Tensor& x, const Tensor& w) {
  if (ops::in_bfloat16("linear_backward", {{"grad_out", grad_out}, {"x", x}, {"weight", w}})) {
    const LinearGrads grads = linear_backward(ops::widened(grad_out), ops::widened(x), ops::widened(w));
    return {ops::narrowed(grads.grad_x), ops::narrowed(grads.grad_w), ops::narrowed(grads.grad_b)};
  }
  check_linear(x, w);
  check_float(grad_out, "grad_out");
  check_same_dtype(grad_out, "grad_out", x, "x");
  check_same_device(grad_out, "grad_out", x, "x");
  const Shape expected{x.size(0), w.size(0)};
  check(grad_out.shape() == expected, "grad_out: expected shape ", shape_text(expected), " for x ",
        shape_text(x.shape()), " and weight ", shape_text(w.shape()), ", got ", shape_text(grad_out.shape()));
  LinearGrads grads{Tensor::empty(x.shape(), x.dtype(), x.device()),
                    Tensor::empty(w.shape(), w.dtype(), x.device()),
                    Tensor::empty({w.size(0)}, x.dtype(), x.device())};
  linear_backward_into(grad_out.contiguous(), x.contiguous(), w.contiguous(), grads.grad_x,
                       grads.grad_w, grads.grad_b);
  return grads;
}

}  // namespace juanji
