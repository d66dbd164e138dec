// The CPU's signal convolution kernels. Private to the library.
#pragma once

#include <cstdint>

#include "juanji/tensor.hpp"

namespace juanji::cpu {

// out (len) = the window [start, start + len) of the full convolution of f and g: 1-d contiguous
// CPU tensors of one float dtype (with correlation, g reversed).
void convolve_window(const Tensor& f, const Tensor& g, bool correlation, std::int64_t start, Tensor& out);
// out (rows, cols) = the window from (r0, c0) of the full 2-d convolution of a and k (with
// correlation, k turned by 180 degrees).
void convolve2d_window(const Tensor& a, const Tensor& k, bool correlation, std::int64_t r0, std::int64_t c0,
                       Tensor& out);

}  // namespace juanji::cpu
