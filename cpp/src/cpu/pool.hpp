// CPU pooling kernels. The operands are checked by ops/pool.cpp: contiguous CPU tensors of one
// float dtype with the sizes of the geometry, which has at least one plane (N * C > 0). Same
// contracts as the CUDA kernels in cuda/ops.hpp.
#pragma once

#include <cstdint>

#include "juanji/ops/pool.hpp"
#include "juanji/tensor.hpp"

namespace juanji::cpu {

// x (N,C,H,W) -> y (N,C,P,Q) and argmax (N,C,P,Q int64, or undefined): the flat index h*W+w of
// each window's first maximum.
void max_pool_forward(const PoolGeometry& g, const Tensor& x, Tensor& y, Tensor& argmax);
// grad_x (N,C,H,W) = grad_y (N,C,P,Q) scattered to each window's argmax, kept only where the
// gate (N,C,P,Q: the output of a ReLU then max pooling) is > 0 when a gate is given.
void max_pool_backward(const PoolGeometry& g, const Tensor& grad_y, const Tensor& argmax,
                       const Tensor* gate, Tensor& grad_x);
void avg_pool_forward(const PoolGeometry& g, const Tensor& x, Tensor& y);
void avg_pool_backward(const PoolGeometry& g, const Tensor& grad_y, Tensor& grad_x);
// x (N,C,H,W) with H*W > 0 -> y (N,C,1,1); grad_y (N,C,1,1) -> grad_x (N,C,H,W); no empty outputs.
void global_avg_pool2d(const Tensor& x, Tensor& y);
void global_avg_pool2d_backward(const Tensor& grad_y, Tensor& grad_x);

// Max pooling one (H, W) plane at a time, for kernels that make or take the planes of a pooling's
// input themselves (batch norm, ReLU and max pooling in one pass: cpu/dense.cpp).

// The common 2x2 stride-2 unpadded window with every window inside the plane (floor mode).
bool is_plain_2x2(const PoolGeometry& g);

// x (H, W) -> y (P, Q) and argmax (P, Q, or null): the flat index h*W+w of each window's first
// maximum, as max_pool_forward.
template <class T>
void max_pool_plane(const PoolGeometry& g, const T* x, T* y, std::int64_t* argmax);

// grad_x (H, W) = grad_y (P, Q) added at each window's argmax where gate (P, Q) is > 0, or
// everywhere when gate is null; zero elsewhere.
template <class T>
void scatter_max_pool_plane(const PoolGeometry& g, const T* grad_y, const std::int64_t* argmax,
                            const T* gate, T* grad_x);

// The same, gated by the pooled values, for batch norm + ReLU + plain 2x2 max pooling (is_plain_2x2)
// from the pooling's input x: each window's first maximum of max(x * scale + shift, 0) found again
// (max_pool_plane's), with no argmax kept.
void norm_relu_max_pool_scatter_plane(const PoolGeometry& g, const float* x, float scale, float shift,
                                      const float* grad_y, float* grad_x);

}  // namespace juanji::cpu
