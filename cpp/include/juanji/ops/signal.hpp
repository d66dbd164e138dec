// Signal convolution (true convolution, the kernel is flipped) and correlation, with the exact
// semantics of numpy.convolve / numpy.correlate (1-D) and scipy.signal.convolve2d / correlate2d
// (2-D, zero fill). Classic image kernels for filtering demos.
#pragma once

#include <cstdint>
#include <string>

#include "juanji/tensor.hpp"

namespace juanji {

enum class SignalMode { full, same, valid };
SignalMode parse_signal_mode(const std::string& mode, const char* op);

Tensor convolve(const Tensor& f, const Tensor& g, SignalMode mode);
Tensor correlate(const Tensor& f, const Tensor& g, SignalMode mode);
Tensor convolve2d(const Tensor& a, const Tensor& k, SignalMode mode);
Tensor correlate2d(const Tensor& a, const Tensor& k, SignalMode mode);

namespace kernels {
Tensor box(std::int64_t n, DType dtype = DType::float32);  // n x n, each 1/n^2
Tensor gaussian(std::int64_t n, double sigma, DType dtype = DType::float32);  // sums to 1
Tensor laplacian(DType dtype = DType::float32);  // [[0,1,0],[1,-4,1],[0,1,0]]
Tensor sobel_x(DType dtype = DType::float32);    // [[-1,0,1],[-2,0,2],[-1,0,1]]
Tensor sobel_y(DType dtype = DType::float32);    // transpose of sobel_x
}  // namespace kernels

}  // namespace juanji
