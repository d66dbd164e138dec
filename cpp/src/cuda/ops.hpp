// Host entry points of the CUDA op kernels, callable from plain C++ translation units (the op
// files in ops/ route here when their tensors live on a CUDA device). Every function checks its
// operands (defined, contiguous, dtype, element count, all on one device: a clear
// std::invalid_argument naming the argument otherwise), makes that device current, launches on
// the default stream and checks the launch. Nothing synchronises with the host except the
// functions that return a host value (the fused cross-entropy) and synchronize().
#pragma once

#include <cstdint>

#include "juanji/ops/conv.hpp"
#include "juanji/ops/dense.hpp"
#include "juanji/ops/loss.hpp"
#include "juanji/ops/optim.hpp"
#include "juanji/ops/pool.hpp"
#include "juanji/tensor.hpp"

namespace juanji::cuda {

// Waits for all work queued on the device; surfaces asynchronous kernel errors.
void synchronize(int device_index);

// An activation applied in the epilogue of a forward kernel, after the bias: one pass over the
// output instead of two.
struct FusedActivation {
  bool enabled = false;
  Activation kind = Activation::relu;
  double negative_slope = 0.01;
};

// Convolution as implicit GEMM (same layouts and contracts as the kernel API in ops/conv.hpp).
void conv_forward(const ConvGeometry& g, const Tensor& x, const Tensor& w, const Tensor& bias,
                  Tensor& y, FusedActivation activation = {});
void conv_backward_data(const ConvGeometry& g, const Tensor& grad_y, const Tensor& w, Tensor& grad_x);
void conv_backward_weight(const ConvGeometry& g, const Tensor& grad_y, const Tensor& x,
                          Tensor& grad_w, Tensor& grad_b);

// Pooling (contracts of ops/pool.hpp's kernel API).
void max_pool_forward(const PoolGeometry& g, const Tensor& x, Tensor& y, Tensor& argmax);
void max_pool_backward(const PoolGeometry& g, const Tensor& grad_y, const Tensor& argmax,
                       Tensor& grad_x);
void avg_pool_forward(const PoolGeometry& g, const Tensor& x, Tensor& y);
void avg_pool_backward(const PoolGeometry& g, const Tensor& grad_y, Tensor& grad_x);
// x (N,C,H,W) contiguous -> y (N,C,1,1); grad_y (N,C,1,1) -> grad_x (N,C,H,W).
void global_avg_pool2d(const Tensor& x, Tensor& y);
void global_avg_pool2d_backward(const Tensor& grad_y, Tensor& grad_x);

// Linear layer through the tiled GEMM (contracts of ops/dense.hpp's kernel API).
void linear_forward(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y,
                    FusedActivation activation = {});
void linear_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w, Tensor& grad_x,
                     Tensor& grad_w, Tensor& grad_b);

// y = f(x); grad_x = f'(.) * grad_y where `input` is x for relu/leaky ReLU and the forward output
// for sigmoid/tanh when input_is_output, else x. grad_x may alias grad_y.
void activation_forward(Activation kind, double negative_slope, const Tensor& x, Tensor& y);
void add(const Tensor& a, const Tensor& b, Tensor& y, bool relu);
void activation_backward(Activation kind, double negative_slope, const Tensor& grad_y,
                         const Tensor& input, bool input_is_output, Tensor& grad_x);

// Softmax family over lines of x viewed as (outer, D, inner), reduced over D. grad_out undefined:
// the forward (softmax or log-softmax); defined: the backward, recomputing the forward from x.
void softmax_lines(const Tensor& x, const Tensor& grad_out, Tensor& out, std::int64_t outer,
                   std::int64_t D, std::int64_t inner, bool log);

// Inverted dropout with the CPU's counter-based draws: element i keeps when uniform(seed, i) >= p.
void dropout_forward(const Tensor& x, double p, std::uint64_t seed, Tensor& mask, Tensor& y);
void dropout_backward(const Tensor& grad_y, const Tensor& mask, Tensor& grad_x);

// Batch normalization (contracts of ops/dense.hpp).
void batch_norm2d_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                          Tensor& running_mean, Tensor& running_var, bool training,
                          double momentum, double eps, Tensor& y, Tensor& save_mean,
                          Tensor& save_invstd);
void batch_norm2d_backward(const Tensor& grad_y, const Tensor& x, const Tensor& gamma,
                           const Tensor& save_mean, const Tensor& save_invstd, Tensor& grad_x,
                           Tensor& grad_gamma, Tensor& grad_beta);

// Losses. z, y contiguous, same shape; out has z's shape for Reduction::none, else is 0-d.
void mse_loss(const Tensor& z, const Tensor& y, Reduction reduction, Tensor& out);
// grad = factor * (z - y)
void mse_loss_backward(const Tensor& z, const Tensor& y, double factor, Tensor& grad);
// logits (N,C) contiguous, labels int64 (N,) on the same device and already range-checked;
// label_smoothing eps in [0, 1] (checked): the target is (1 - eps) * onehot(labels) + eps / C.
// out is (N,) for Reduction::none, else 0-d.
void cross_entropy(const Tensor& logits, const Tensor& labels, Reduction reduction,
                   double label_smoothing, Tensor& out);
// grad = (softmax(logits) - target) * scale
void cross_entropy_backward(const Tensor& logits, const Tensor& labels, double scale,
                            double label_smoothing, Tensor& grad);
// The fused training kernel: mean loss (returned; the one host read-back), its gradient into
// grad_logits and, when correct is not null, the number of correct argmax predictions. Labels are
// range-checked on the device; a bad one is a std::invalid_argument after the kernel.
double cross_entropy_mean_into(const Tensor& logits, const Tensor& labels,
                               double label_smoothing, Tensor& grad_logits, std::int64_t* correct);

// One fused SGD step (semantics of optim::SGD::step) on a parameter; velocity may be undefined
// (no momentum).
void sgd_update(const Tensor& weight, const Tensor& grad, const Tensor& velocity, double lr,
                double momentum, bool nesterov, double weight_decay);
// One fused Adam / AdamW step (semantics of juanji::adam_update) on a CUDA parameter.
void adam_update(const AdamSlot& slot, const AdamSettings& settings);
// The sum of t's squares in float64: fixed blocks (a function of the size only) summed on the host
// in order, the same bits on every run.
double sum_of_squares(const Tensor& t);
// t *= factor (float32 or float64, contiguous).
void scale(const Tensor& t, double factor);

}  // namespace juanji::cuda
