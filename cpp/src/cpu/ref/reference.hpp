// Plain-loop reference kernels, written from the textbook definitions: no blocking, no vectors,
// no threads, sums in the type T in the order the loops visit the terms. They are the oracle of
// the kernel tests and the last resort of the algorithm tables, not a fast path. Tensors are
// contiguous, in the layouts of the library's kernel API; "or null" marks optional operands.
#pragma once

#include <cstdint>

#include "juanji/ops/conv.hpp"
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

}  // namespace juanji::cpu::ref
