// CPU kernels of the fully connected layer, through the packed GEMM. The operands are contiguous
// CPU tensors of one float dtype: x (N, in), w (out, in), b (out) or undefined, y (N, out);
// grad_x, grad_w, grad_b may each be undefined (not wanted). Same contracts as the CUDA kernels in
// cuda/ops.hpp.
#pragma once

#include "juanji/tensor.hpp"

namespace juanji::cpu {

// y = x w^T + b
void linear_forward(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y);
// grad_x = grad_y w, grad_w = grad_y^T x, grad_b = column sums of grad_y.
void linear_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w, Tensor& grad_x,
                     Tensor& grad_w, Tensor& grad_b);

}  // namespace juanji::cpu
