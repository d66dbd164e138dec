// Plain-loop reference kernels, written from the textbook definitions: no blocking, no vectors,
// no threads, sums in the type T in the order the loops visit the terms. They are the oracle of
// the kernel tests and the last resort of the algorithm tables, not a fast path. Tensors are
// contiguous, in the layouts of the library's kernel API; "or null" marks optional operands.
#pragma once

#include <cstdint>

#include "juanji/ops/conv.hpp"
#include "juanji/ops/dense.hpp"
#include "juanji/ops/optim.hpp"
#include "juanji/ops/pool.hpp"

namespace juanji::cpu::ref {

// Convolution (cross-correlation) of x (N, C, H, W) with w (K, C/groups, R, S): filter k sees
// the input channels of its group, group(k) = k / (K/groups), and
//   y[n][k][p][q] = bias[k] + sum_{c,r,s} w[k][c][r][s] * x[n][group(k) * C/groups + c][h][v]
// with h = p*stride_h - pad_top + r*dil_h, v = q*stride_w - pad_left + s*dil_w; positions outside
// the input (the padding) are zeros. y is (N, K, P, Q).
template <class T>
void conv_forward(const ConvGeometry& g, const T* x, const T* w, const T* bias_or_null, T* y);
// Its gradients: grad_x = the transpose of the map x -> y applied to grad_y; grad_w[k][c][r][s]
// = sum_{n,p,q} grad_y[n][k][p][q] * x[n][...][h][v]; grad_b[k] = sum_{n,p,q} grad_y[n][k][p][q].
template <class T>
void conv_backward_data(const ConvGeometry& g, const T* grad_y, const T* w, T* grad_x);
template <class T>
void conv_backward_weight(const ConvGeometry& g, const T* grad_y, const T* x, T* grad_w, T* grad_b_or_null);

// Pooling of the N*C planes of x (H, W) into y (P, Q). Window (p, q) covers rows
// [p*stride_h - pad_h, + kernel_h) and columns [q*stride_w - pad_w, + kernel_w); the padding
// holds no elements. Max pooling takes the first maximum in row-major order, a NaN over any
// number and the first NaN; argmax (or null) gets its index h*W + v in the plane. Average pooling
// divides the window's sum by its element count, or with count_include_pad by its area clipped
// to the padded input [-pad, size + pad).
template <class T>
void max_pool_forward(const PoolGeometry& g, const T* x, T* y, std::int64_t* argmax_or_null);
// grad_x = 0, then grad_x[argmax] += grad_y window by window (indexes outside the plane skipped).
template <class T>
void max_pool_backward(const PoolGeometry& g, const T* grad_y, const std::int64_t* argmax, T* grad_x);
template <class T>
void avg_pool_forward(const PoolGeometry& g, const T* x, T* y);
// grad_x = 0, then each window's elements get grad_y / the window's divisor.
template <class T>
void avg_pool_backward(const PoolGeometry& g, const T* grad_y, T* grad_x);

// Batch normalization of x (N, C, H*W = area) per channel. Training: mean and (biased) variance
// of the channel's N*area values, y = (x - mean) / sqrt(var + eps) * gamma + beta, running_mean
// and running_var (or null) move by momentum towards the mean and the unbiased variance. Eval: the
// running statistics instead. gamma and beta may be null (1 and 0); save_mean and save_invstd (or
// null) get the mean and 1 / sqrt(var + eps) used.
template <class T>
void batch_norm_forward(std::int64_t N, std::int64_t C, std::int64_t area, const T* x, const T* gamma_or_null,
                        const T* beta_or_null, T* running_mean, T* running_var, bool training, double momentum,
                        double eps, T* y, T* save_mean, T* save_invstd);
// The training forward's gradients, from its save_mean and save_invstd: with xhat = (x - mean) *
// invstd, grad_beta = sum grad_y, grad_gamma = sum grad_y * xhat, and
// grad_x = gamma * invstd * (grad_y - mean(grad_y) - xhat * mean(grad_y * xhat)).
template <class T>
void batch_norm_backward(std::int64_t N, std::int64_t C, std::int64_t area, const T* grad_y, const T* x,
                         const T* gamma_or_null, const T* save_mean, const T* save_invstd, T* grad_x,
                         T* grad_gamma, T* grad_beta);

// C (M x N, row stride ldc) = A (M x K) * B (K x N), plus C's old values with accumulate (without,
// C is not read). Element (i, j) of A is a[i * a_row_stride + j * a_col_stride], and so for B:
// a transposed operand is the same data with its strides swapped.
template <class T>
void gemm(std::int64_t M, std::int64_t N, std::int64_t K, const T* a, std::int64_t a_row_stride,
          std::int64_t a_col_stride, const T* b, std::int64_t b_row_stride, std::int64_t b_col_stride, T* c,
          std::int64_t ldc, bool accumulate);

// ---- In double only: the self-test's oracles for the element-wise ops, losses and optimizers ----

// y = f(x) element-wise: ReLU x < 0 ? 0 : x, leaky ReLU x > 0 ? x : slope * x, sigmoid
// 1 / (1 + e^-x), tanh. Its gradient: ReLU x > 0 ? grad_y : 0, leaky ReLU x > 0 ? grad_y :
// slope * grad_y, sigmoid s (1 - s) grad_y, tanh (1 - tanh(x)^2) grad_y.
void activation_forward(Activation kind, double slope, const double* x, double* y, std::int64_t n);
void activation_backward(Activation kind, double slope, const double* grad_y, const double* x, double* grad_x,
                         std::int64_t n);

// Softmax (log: log-softmax) along the middle dim of x (outer, D, inner): p = e^x / sum e^x,
// log p = x - log sum e^x, each line's maximum subtracted first. Its gradient: softmax
// grad_x = p * (grad_y - sum grad_y * p), log-softmax grad_x = grad_y - p * sum grad_y.
void softmax_forward(bool log, std::int64_t outer, std::int64_t D, std::int64_t inner, const double* x, double* y);
void softmax_backward(bool log, std::int64_t outer, std::int64_t D, std::int64_t inner, const double* grad_y,
                      const double* x, double* grad_x);

// Cross-entropy of each row of logits (N, C) against q = (1 - eps) * onehot(label) + eps / C:
// loss[n] = -sum_c q[c] * log_softmax(row)[c], and grad (N, C) the gradient of each row's loss,
// softmax(row) - q.
void cross_entropy(std::int64_t N, std::int64_t C, const double* logits, const std::int64_t* labels,
                   double label_smoothing, double* loss, double* grad);

// One optimizer step on n elements, as optim.hpp defines it (Adam with its bias corrections at
// step `step`, AdamW's weight decay applied to w first).
void sgd_update(std::int64_t n, double* w, const double* g, double* velocity_or_null, const SgdSettings& settings);
void adam_update(std::int64_t n, double* w, const double* g, double* m, double* v, const AdamSettings& settings,
                 std::int64_t step);

}  // namespace juanji::cpu::ref
