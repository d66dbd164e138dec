// Activations, softmax, dropout and batch normalization (with the fused batch norm + ReLU + max
// pooling): the arguments' checks and the choice of backend (cpu/dense.hpp or cuda/ops.hpp) for
// each op of juanji/ops/dense.hpp but the linear ones (ops/linear.cpp).
#include "juanji/ops/dense.hpp"

#include <cmath>

#include "cpu/dense.hpp"
#include "ops/backend.hpp"
#include "ops/bfloat16_operands.hpp"
#include "ops/checks.hpp"

namespace juanji {
namespace {

using ops::check_float_operand;
using ops::check_kernel_tensor;

cpu::SoftmaxLines lines_of(const Shape& shape, std::int64_t dim) {
  cpu::SoftmaxLines l{1, 1, 1};
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(shape.size()); ++i) {
    if (i < dim) l.outer *= shape[i];
    else if (i == dim) l.D = shape[i];
    else l.inner *= shape[i];
  }
  return l;
}

// x (any shape) -> softmax or log_softmax over dim; with backward, the gradient for grad_out.
Tensor softmax_family(const Tensor& grad_out_in, const Tensor& x_in, std::int64_t dim,
                      const char* op, bool backward, bool log) {
  check_float_operand(x_in, op, "x");
  const std::int64_t d = ops::wrap_dim(dim, x_in.dim(), op, x_in.shape());
  Tensor grad_out;
  if (backward) {
    check_float_operand(grad_out_in, op, "grad_out");
    check_same_dtype(grad_out_in, "grad_out", x_in, "x");
    check_same_device(grad_out_in, "grad_out", x_in, "x");
    check(grad_out_in.shape() == x_in.shape(), op, ": grad_out has shape ",
          shape_text(grad_out_in.shape()), " but x has shape ", shape_text(x_in.shape()));
    grad_out = grad_out_in.contiguous();
  }
  const Tensor x = x_in.contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  const cpu::SoftmaxLines l = lines_of(x.shape(), d);
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) {
    cuda::softmax_lines(x, grad_out, out, l.outer, l.D, l.inner, log);
    return out;
  }
#endif
  cpu::softmax_lines(x, grad_out, out, l, log);
  return out;
}

void check_channel_param(const Tensor& t, const char* name, std::int64_t C, DType dtype,
                         const char* op) {
  if (!t.defined()) return;
  check_kernel_tensor(t, op, name, dtype, C);
}

// The checks of a batch-norm forward's x and per-channel tensors.
void check_norm_forward(const char* op, const Tensor& x, const Tensor& gamma, const Tensor& beta,
                        const Tensor& running_mean, const Tensor& running_var, bool training,
                        double eps, const Tensor& save_mean, const Tensor& save_invstd,
                        bool sharded) {
  check_float(x, "x");
  check_dim(x, "x", 4, "(N, C, H, W)");
  const DType dtype = x.dtype();
  const std::int64_t C = x.size(1);
  check_kernel_tensor(x, op, "x", dtype, x.numel());
  check_channel_param(gamma, "gamma", C, dtype, op);
  check_channel_param(beta, "beta", C, dtype, op);
  check_channel_param(running_mean, "running_mean", C, dtype, op);
  check_channel_param(running_var, "running_var", C, dtype, op);
  check_channel_param(save_mean, "save_mean", C, dtype, op);
  check_channel_param(save_invstd, "save_invstd", C, dtype, op);
  check(eps > 0, op, ": eps must be positive, got ", eps);
  if (training && !sharded)  // else checked over the whole batch, which every shard sees
    check(x.size(0) * x.size(2) * x.size(3) > 1, op,
          ": training needs more than one value per channel, got x of shape ", shape_text(x.shape()));
  else
    check(running_mean.defined() && running_var.defined(), op,
          ": evaluation needs running_mean and running_var");
}

// The checks of a batch-norm backward's x, gradients and per-channel tensors.
void check_norm_backward(const char* op, const Tensor& x, const Tensor& gamma,
                         const Tensor& save_mean, const Tensor& save_invstd, const Tensor& grad_x,
                         const Tensor& grad_gamma, const Tensor& grad_beta,
                         const Tensor* grad_x_sums) {
  check(!grad_x_sums || grad_x.defined(), op, ": grad_x_sums needs grad_x");
  check_float(x, "x");
  check_dim(x, "x", 4, "(N, C, H, W)");
  const DType dtype = x.dtype();
  const std::int64_t C = x.size(1);
  check_kernel_tensor(x, op, "x", dtype, x.numel());
  if (grad_x.defined()) check_kernel_tensor(grad_x, op, "grad_x", dtype, x.numel());
  check_channel_param(gamma, "gamma", C, dtype, op);
  check_kernel_tensor(save_mean, op, "save_mean", dtype, C);
  check_kernel_tensor(save_invstd, op, "save_invstd", dtype, C);
  check_channel_param(grad_gamma, "grad_gamma", C, dtype, op);
  check_channel_param(grad_beta, "grad_beta", C, dtype, op);
  if (grad_x_sums) check_kernel_tensor(*grad_x_sums, op, "grad_x_sums", dtype, C);
}

// The checks of a pooling geometry g for x (N,C,H,W) and the pooled tensor named `pooled`.
void check_pool_after_norm(const char* op, const PoolGeometry& g, const Tensor& x,
                           const Tensor& pooled, const char* pooled_name) {
  check(g.N == x.size(0) && g.C == x.size(1) && g.H == x.size(2) && g.W == x.size(3), op,
        ": the pooling is for input (", g.N, ", ", g.C, ", ", g.H, ", ", g.W, "), x has shape ",
        shape_text(x.shape()));
  check_kernel_tensor(pooled, op, pooled_name, x.dtype(), g.N * g.C * g.P * g.Q);
}

}  // namespace

const char* activation_name(Activation kind) {
  switch (kind) {
    case Activation::relu: return "relu";
    case Activation::leaky_relu: return "leaky_relu";
    case Activation::sigmoid: return "sigmoid";
    case Activation::tanh: return "tanh";
  }
  return "activation";
}

Tensor activation(Activation kind, const Tensor& x_in, double negative_slope) {
  const char* op = activation_name(kind);
  if (ops::in_bfloat16(op, {{"x", x_in}}))
    return ops::narrowed(activation(kind, ops::widened(x_in), negative_slope));
  check(std::isfinite(negative_slope), op, ": negative_slope must be finite, got ", negative_slope);
  check_float_operand(x_in, op, "x");
  const Tensor x = x_in.contiguous();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) {
    cuda::activation_forward(kind, negative_slope, x, y);
    return y;
  }
#endif
  cpu::activation_forward(kind, negative_slope, x, y);
  return y;
}

Tensor activation_backward(Activation kind, const Tensor& grad_out_in, const Tensor& x_in,
                           double negative_slope) {
  const char* op = activation_name(kind);
  if (ops::in_bfloat16(op, {{"grad_out", grad_out_in}, {"x", x_in}}))
    return ops::narrowed(activation_backward(kind, ops::widened(grad_out_in), ops::widened(x_in), negative_slope));
  check(std::isfinite(negative_slope), op, ": negative_slope must be finite, got ", negative_slope);
  check_float_operand(x_in, op, "x");
  check_float_operand(grad_out_in, op, "grad_out");
  check_same_dtype(grad_out_in, "grad_out", x_in, "x");
  check_same_device(grad_out_in, "grad_out", x_in, "x");
  check(grad_out_in.shape() == x_in.shape(), op, "_backward: grad_out has shape ",
        shape_text(grad_out_in.shape()), " but x has shape ", shape_text(x_in.shape()));
  const Tensor x = x_in.contiguous();
  const Tensor grad_out = grad_out_in.contiguous();
  Tensor grad_x = Tensor::empty(x.shape(), x.dtype(), x.device());
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) {
    cuda::activation_backward(kind, negative_slope, grad_out, x, false, grad_x);
    return grad_x;
  }
#endif
  cpu::activation_backward(kind, negative_slope, grad_out, x, nullptr, grad_x);
  return grad_x;
}

// x, y: same shape, contiguous.
void activation_forward_into(Activation kind, double negative_slope, const Tensor& x, Tensor& y) {
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) return cuda::activation_forward(kind, negative_slope, x, y);
#endif
  const char* op = "activation_forward_into";
  check_float(x, "x");
  check_kernel_tensor(x, op, "x", x.dtype(), x.numel());
  check_kernel_tensor(y, op, "y", x.dtype(), x.numel());
  cpu::activation_forward(kind, negative_slope, x, y);
}

void round_to_bfloat16_into(const Tensor& x, Tensor& y) {
  const char* op = "round_to_bfloat16_into";
  check(x.device().is_cpu(), op, ": CPU only, x is on ", x.device().str());
  check_kernel_tensor(x, op, "x", DType::float32, x.numel());
  check_kernel_tensor(y, op, "y", DType::float32, x.numel());
  check(y.shape() == x.shape(), op, ": x ", shape_text(x.shape()), " and y ", shape_text(y.shape()),
        " must have one shape");
  cpu::round_to_bfloat16(x, y);
}

void add_into(const Tensor& a, const Tensor& b, Tensor& y, bool relu) {
#if JUANJI_WITH_CUDA
  if (a.device().is_cuda()) return cuda::add(a, b, y, relu);
#endif
  const char* op = "add_into";
  check_float(a, "a");
  check_kernel_tensor(a, op, "a", a.dtype(), a.numel());
  check_kernel_tensor(b, op, "b", a.dtype(), a.numel());
  check_kernel_tensor(y, op, "y", a.dtype(), a.numel());
  check(b.shape() == a.shape() && y.shape() == a.shape(), op, ": a ", shape_text(a.shape()), ", b ",
        shape_text(b.shape()), " and y ", shape_text(y.shape()), " must have one shape");
  cpu::add(a, b, y, relu);
}

// grad_y, x, y, grad_x: same shape, contiguous; relu/leaky need x, sigmoid/tanh need y.
void activation_backward_into(Activation kind, double negative_slope, const Tensor& grad_y,
                              const Tensor& x, const Tensor& y, Tensor& grad_x) {
  const bool uses_x = kind == Activation::relu || kind == Activation::leaky_relu;
#if JUANJI_WITH_CUDA
  if (grad_y.device().is_cuda())
    return cuda::activation_backward(kind, negative_slope, grad_y, uses_x ? x : y, !uses_x, grad_x);
#endif
  const char* op = "activation_backward_into";
  check_float(grad_y, "grad_y");
  const DType dtype = grad_y.dtype();
  const std::int64_t n = grad_y.numel();
  check_kernel_tensor(grad_y, op, "grad_y", dtype, n);
  check_kernel_tensor(grad_x, op, "grad_x", dtype, n);
  const Tensor& input = uses_x ? x : y;
  check_kernel_tensor(input, op, uses_x ? "x" : "y", dtype, n);
  cpu::activation_backward(kind, negative_slope, grad_y, input, uses_x ? nullptr : &input, grad_x);
}

Tensor softmax(const Tensor& x, std::int64_t dim) {
  return softmax_family(Tensor(), x, dim, "softmax", false, false);
}

Tensor log_softmax(const Tensor& x, std::int64_t dim) {
  return softmax_family(Tensor(), x, dim, "log_softmax", false, true);
}

Tensor softmax_backward(const Tensor& grad_out, const Tensor& x, std::int64_t dim) {
  return softmax_family(grad_out, x, dim, "softmax_backward", true, false);
}

Tensor log_softmax_backward(const Tensor& grad_out, const Tensor& x, std::int64_t dim) {
  return softmax_family(grad_out, x, dim, "log_softmax_backward", true, true);
}

// x, mask, y: same shape, contiguous. p = 1 drops everything (mask 0).
void dropout_forward(const Tensor& x, double p, Tensor& mask, Tensor& y) {
  const char* op = "dropout";
  check_float(x, "x");
  check(p >= 0 && p <= 1, op, ": p must lie in [0, 1], got ", p);
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) return cuda::dropout_forward(x, p, random_u64(), mask, y);
#endif
  const std::int64_t n = x.numel();
  check_kernel_tensor(x, op, "x", x.dtype(), n);
  check_kernel_tensor(mask, op, "mask", x.dtype(), n);
  check_kernel_tensor(y, op, "y", x.dtype(), n);
  cpu::dropout_forward(x, p, random_u64(), mask, y);
}

// grad_y, mask, grad_x: same shape, contiguous; grad_x may alias grad_y.
void dropout_backward(const Tensor& grad_y, const Tensor& mask, Tensor& grad_x) {
#if JUANJI_WITH_CUDA
  if (grad_y.device().is_cuda()) return cuda::dropout_backward(grad_y, mask, grad_x);
#endif
  const char* op = "dropout_backward";
  check_float(grad_y, "grad_y");
  const std::int64_t n = grad_y.numel();
  check_kernel_tensor(grad_y, op, "grad_y", grad_y.dtype(), n);
  check_kernel_tensor(mask, op, "mask", grad_y.dtype(), n);
  check_kernel_tensor(grad_x, op, "grad_x", grad_y.dtype(), n);
  cpu::dropout_backward(grad_y, mask, grad_x);
}

// x, y (N,C,H,W); gamma, beta, running_mean, running_var, save_mean, save_invstd (C). gamma/beta
// may be undefined (scale 1, shift 0), as may the running statistics in training mode.
void batch_norm2d_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                          Tensor& running_mean, Tensor& running_var, bool training,
                          double momentum, double eps, Tensor& y, Tensor& save_mean,
                          Tensor& save_invstd, bool relu, const ShardSum& shard_sum) {
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) {
    check(!relu, "batch_norm2d_forward: the fused ReLU is CPU-only; x is on ", x.device().str());
    check(!shard_sum, "batch_norm2d_forward: synchronized statistics are CPU-only; x is on ",
          x.device().str());
    return cuda::batch_norm2d_forward(x, gamma, beta, running_mean, running_var, training, momentum,
                                      eps, y, save_mean, save_invstd);
  }
#endif
  const char* op = "batch_norm2d";
  check_norm_forward(op, x, gamma, beta, running_mean, running_var, training, eps, save_mean,
                     save_invstd, static_cast<bool>(shard_sum));
  check_kernel_tensor(y, op, "y", x.dtype(), x.numel());
  cpu::batch_norm2d_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, y,
                            save_mean, save_invstd, relu, shard_sum);
}

void batch_norm2d_relu_max_pool_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                        Tensor& running_mean, Tensor& running_var, bool training,
                                        double momentum, double eps, const PoolGeometry& pool,
                                        Tensor& y, Tensor& affine, Tensor& save_mean,
                                        Tensor& save_invstd, const ShardSum& shard_sum) {
  const char* op = "batch_norm2d_relu_max_pool";
  check(x.device().is_cpu(), op, ": CPU only, x is on ", x.device().str());
  check_norm_forward(op, x, gamma, beta, running_mean, running_var, training, eps, save_mean,
                     save_invstd, static_cast<bool>(shard_sum));
  check_pool_after_norm(op, pool, x, y, "y");
  if (affine.defined()) check_kernel_tensor(affine, op, "affine", x.dtype(), 2 * x.size(1));
  cpu::batch_norm2d_relu_max_pool_forward(x, gamma, beta, running_mean, running_var, training,
                                          momentum, eps, pool, y, affine, save_mean, save_invstd,
                                          shard_sum);
}

// grad_y, x, grad_x (N,C,H,W); gamma, save_mean, save_invstd, grad_gamma, grad_beta (C). Uses the
// batch statistics saved by a training-mode forward; undefined outputs are skipped.
void batch_norm2d_backward(const Tensor& grad_y, const Tensor& x, const Tensor& gamma,
                           const Tensor& save_mean, const Tensor& save_invstd, Tensor& grad_x,
                           Tensor& grad_gamma, Tensor& grad_beta, Tensor* grad_x_sums,
                           const ShardSum& shard_sum) {
  const char* op = "batch_norm2d_backward";
  check(!grad_x_sums || x.device().is_cpu(), op, ": grad_x_sums is CPU-only; x is on ",
        x.device().str());
  check(!shard_sum || x.device().is_cpu(), op, ": synchronized statistics are CPU-only; x is on ",
        x.device().str());
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda())
    return cuda::batch_norm2d_backward(grad_y, x, gamma, save_mean, save_invstd, grad_x, grad_gamma,
                                       grad_beta);
#endif
  check_norm_backward(op, x, gamma, save_mean, save_invstd, grad_x, grad_gamma, grad_beta,
                      grad_x_sums);
  check_kernel_tensor(grad_y, op, "grad_y", x.dtype(), x.numel());
  Tensor no_sums;
  cpu::batch_norm2d_backward(grad_y, x, gamma, save_mean, save_invstd, grad_x, grad_gamma,
                             grad_beta, grad_x_sums ? *grad_x_sums : no_sums, shard_sum);
}

void batch_norm2d_relu_max_pool_backward(const PoolGeometry& pool, const Tensor& grad_y,
                                         const Tensor& affine, const Tensor& x, const Tensor& gamma,
                                         const Tensor& save_mean, const Tensor& save_invstd,
                                         Tensor& grad_x, Tensor& grad_gamma, Tensor& grad_beta,
                                         Tensor* grad_x_sums, const ShardSum& shard_sum) {
  const char* op = "batch_norm2d_relu_max_pool_backward";
  check(x.device().is_cpu(), op, ": CPU only, x is on ", x.device().str());
  check_norm_backward(op, x, gamma, save_mean, save_invstd, grad_x, grad_gamma, grad_beta,
                      grad_x_sums);
  check_pool_after_norm(op, pool, x, grad_y, "grad_y");
  check_kernel_tensor(affine, op, "affine", x.dtype(), 2 * x.size(1));
  Tensor no_sums;
  cpu::batch_norm2d_relu_max_pool_backward(pool, grad_y, affine, x, gamma, save_mean, save_invstd,
                                           grad_x, grad_gamma, grad_beta,
                                           grad_x_sums ? *grad_x_sums : no_sums, shard_sum);
}

}  // namespace juanji
