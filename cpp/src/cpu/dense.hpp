// CPU kernels of activations, softmax, dropout and batch normalization (the fused batch norm +
// ReLU + max pooling included). The operands are checked by ops/dense.cpp: contiguous CPU
// tensors of one float dtype and the sizes each op documents in juanji/ops/dense.hpp. Same
// contracts as the CUDA kernels in cuda/ops.hpp where both exist.
#pragma once

#include <cstdint>

#include "juanji/ops/dense.hpp"
#include "juanji/ops/pool.hpp"
#include "juanji/tensor.hpp"

namespace juanji::cpu {

// y = f(x); grad_x = f'(x) * grad_y, where relu/leaky ReLU read x and sigmoid/tanh the forward
// output y, or recompute it from x when y is null. grad_x may alias grad_y.
void activation_forward(Activation kind, double negative_slope, const Tensor& x, Tensor& y);
void add(const Tensor& a, const Tensor& b, Tensor& y, bool relu);
// x, y float32, contiguous, same size; y may alias x.
void round_to_bfloat16(const Tensor& x, Tensor& y);
void activation_backward(Activation kind, double negative_slope, const Tensor& grad_y,
                         const Tensor& x, const Tensor* y, Tensor& grad_x);

// A softmax problem: x viewed as (outer, D, inner), reduced over D.
struct SoftmaxLines {
  std::int64_t outer, D, inner;
};

// Softmax family over the lines of x, out. grad_out undefined: the forward (softmax or
// log-softmax); defined: the backward, recomputing the forward from x.
void softmax_lines(const Tensor& x, const Tensor& grad_out, Tensor& out,
                   const SoftmaxLines& lines, bool log);

// Inverted dropout with counter-based draws: element i keeps when uniform(seed, i) >= p.
void dropout_forward(const Tensor& x, double p, std::uint64_t seed, Tensor& mask, Tensor& y);
void dropout_backward(const Tensor& grad_y, const Tensor& mask, Tensor& grad_x);

// Batch normalization and its fusions with ReLU and max pooling (contracts of ops/dense.hpp, but
// for grad_x_sums: an undefined tensor where not wanted, as the other optional outputs).
void batch_norm2d_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                          Tensor& running_mean, Tensor& running_var, bool training,
                          double momentum, double eps, Tensor& y, Tensor& save_mean,
                          Tensor& save_invstd, bool relu, const ShardSum& shard_sum);
void batch_norm2d_relu_max_pool_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                        Tensor& running_mean, Tensor& running_var, bool training,
                                        double momentum, double eps, const PoolGeometry& pool,
                                        Tensor& y, Tensor& affine, Tensor& save_mean,
                                        Tensor& save_invstd, const ShardSum& shard_sum);
void batch_norm2d_backward(const Tensor& grad_y, const Tensor& x, const Tensor& gamma,
                           const Tensor& save_mean, const Tensor& save_invstd, Tensor& grad_x,
                           Tensor& grad_gamma, Tensor& grad_beta, Tensor& grad_x_sums,
                           const ShardSum& shard_sum);
void batch_norm2d_relu_max_pool_backward(const PoolGeometry& pool, const Tensor& grad_y,
                                         const Tensor& affine, const Tensor& x, const Tensor& gamma,
                                         const Tensor& save_mean, const Tensor& save_invstd,
                                         Tensor& grad_x, Tensor& grad_gamma, Tensor& grad_beta,
                                         Tensor& grad_x_sums, const ShardSum& shard_sum);

}  // namespace juanji::cpu
