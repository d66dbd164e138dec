// The dense part: linear layers, activations, softmax, dropout, batch normalization.
// Backward functions take grad_out first, then the forward's arguments.
#pragma once

#include <cstdint>
#include <functional>

#include "juanji/ops/pool.hpp"
#include "juanji/tensor.hpp"

namespace juanji {

enum class Activation { relu, leaky_relu, sigmoid, tanh };
// The functional op's name: "relu", "leaky_relu", "sigmoid", "tanh".
const char* activation_name(Activation kind);

// x (N, in), w (out, in), b (out) or undefined: y = x w^T + b.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b);
struct LinearGrads {
  Tensor grad_x, grad_w, grad_b;
};
LinearGrads linear_backward(const Tensor& grad_out, const Tensor& x, const Tensor& w);
// Kernel API: contiguous, preallocated outputs overwritten; undefined outputs are skipped.
void linear_forward(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y);
// linear_forward with the activation applied in the kernel's epilogue where one can (CUDA);
// returns false, having computed nothing, where none can (as conv_forward_activation).
bool linear_forward_activation(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y,
                               Activation kind, double negative_slope);
void linear_backward_into(const Tensor& grad_y, const Tensor& x, const Tensor& w, Tensor& grad_x,
                          Tensor& grad_w, Tensor& grad_b);

Tensor activation(Activation kind, const Tensor& x, double negative_slope = 0.01);
Tensor activation_backward(Activation kind, const Tensor& grad_out, const Tensor& x,
                           double negative_slope = 0.01);
// Kernel API: y = f(x); grad_x = f'(x) * grad_y, where `y` is the forward output (cheaper for
// sigmoid/tanh). Contiguous, same shapes; grad_x may alias grad_y.
void activation_forward_into(Activation kind, double negative_slope, const Tensor& x, Tensor& y);
void activation_backward_into(Activation kind, double negative_slope, const Tensor& grad_y,
                              const Tensor& x, const Tensor& y, Tensor& grad_x);

// Kernel API: y = a + b, with a ReLU applied where relu (a residual block's sum and the
// activation after it, in one pass). Contiguous, same shape, dtype and device; y may alias a or b.
void add_into(const Tensor& a, const Tensor& b, Tensor& y, bool relu = false);

// Kernel API (CPU): y = the bfloat16 nearest each element of x (round to nearest even), as the
// float32 it is exactly. x and y float32, contiguous, same shape; y may alias x.
void round_to_bfloat16_into(const Tensor& x, Tensor& y);

Tensor softmax(const Tensor& x, std::int64_t dim);
Tensor log_softmax(const Tensor& x, std::int64_t dim);
Tensor softmax_backward(const Tensor& grad_out, const Tensor& x, std::int64_t dim);
Tensor log_softmax_backward(const Tensor& grad_out, const Tensor& x, std::int64_t dim);

// Inverted dropout: keeps each element with probability 1-p and scales it by 1/(1-p); mask
// (same shape, same dtype) holds 0 or 1/(1-p). Random draws come from the seeded generator.
void dropout_forward(const Tensor& x, double p, Tensor& mask, Tensor& y);
void dropout_backward(const Tensor& grad_y, const Tensor& mask, Tensor& grad_x);

// Sums values[0, count) element-wise, in place, over the processes that each hold a shard of one
// batch: what makes a batch norm synchronized (the statistics of the whole batch). Every process
// calls it the same number of times with the same count. Empty: this process has the whole batch.
using ShardSum = std::function<void(double* values, std::int64_t count)>;

// Batch normalization over (N, H, W) per channel of (N, C, H, W). Training uses batch statistics
// and updates running_mean/running_var (unbiased variance) with `momentum`; eval uses the
// running ones. save_mean/save_invstd (C) keep what backward needs. relu (CPU only) stores
// ReLU(y) in the same pass, as the ReLU op computes it (v < 0 ? 0 : v). With shard_sum (CPU only)
// training uses the whole batch's statistics.
void batch_norm2d_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                          Tensor& running_mean, Tensor& running_var, bool training,
                          double momentum, double eps, Tensor& y, Tensor& save_mean,
                          Tensor& save_invstd, bool relu = false, const ShardSum& shard_sum = {});
// grad_x_sums (C, CPU only, optional) gets each channel's sum of grad_x, summed as a
// convolution's bias gradient is: exactly conv_backward_weight's bias gradient for grad_x, from
// planes still in cache. With shard_sum (CPU only), grad_x is the gradient, through the whole
// batch's statistics, of the sum of the losses whose gradient each shard's grad_y is; grad_gamma
// and grad_beta stay this shard's (data parallelism averages them). On the CPU grad_x may be x
// itself: each channel's sums are complete before its gradient is written.
void batch_norm2d_backward(const Tensor& grad_y, const Tensor& x, const Tensor& gamma,
                           const Tensor& save_mean, const Tensor& save_invstd, Tensor& grad_x,
                           Tensor& grad_gamma, Tensor& grad_beta, Tensor* grad_x_sums = nullptr,
                           const ShardSum& shard_sum = {});

// batch_norm2d_forward with relu, then max pooling `pool` of its output, without storing the
// normalized tensor (CPU only): y (N, C, P, Q) is max_pool_forward's of batch_norm2d_forward's
// output, bit for bit. affine (C, 2; may be undefined) takes each channel's scale and shift,
// relu(x * scale + shift) being the normalized output: what the backward needs to find each
// window's maximum again, in place of an argmax.
void batch_norm2d_relu_max_pool_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                        Tensor& running_mean, Tensor& running_var, bool training,
                                        double momentum, double eps, const PoolGeometry& pool,
                                        Tensor& y, Tensor& affine, Tensor& save_mean,
                                        Tensor& save_invstd, const ShardSum& shard_sum = {});
// Its backward (CPU only), from the affine of that forward: batch_norm2d_backward of
// max_pool_relu_backward(pool, grad_y, argmax, y) bit for bit, with grad_y, and the argmax and y
// of max_pool_forward, (N, C, P, Q) the pooled ones; grad_x may be x itself.
void batch_norm2d_relu_max_pool_backward(const PoolGeometry& pool, const Tensor& grad_y,
                                         const Tensor& affine, const Tensor& x, const Tensor& gamma,
                                         const Tensor& save_mean, const Tensor& save_invstd,
                                         Tensor& grad_x, Tensor& grad_gamma, Tensor& grad_beta,
                                         Tensor* grad_x_sums = nullptr,
                                         const ShardSum& shard_sum = {});

}  // namespace juanji
