// Pooling on (N,C,L) and (N,C,H,W): max and average, kernel/stride/padding, ceil_mode, with
// PyTorch's semantics (padding at most half the kernel; a ceil_mode window must start inside the
// input or the left padding). Max backward routes the gradient to the first maximum of each
// window; average backward spreads it evenly.
#pragma once

#include <cstdint>
#include <vector>

#include "juanji/tensor.hpp"

namespace juanji {

// Each vector holds one value for all spatial dims or one per spatial dim; empty stride = kernel.
struct PoolOptions {
  std::vector<std::int64_t> kernel;
  std::vector<std::int64_t> stride;
  std::vector<std::int64_t> padding{0};
  bool ceil_mode = false;
  bool count_include_pad = true;  // average pooling only
};

struct PoolGeometry {
  std::int64_t N, C, H, W;
  std::int64_t P, Q;
  std::int64_t kernel_h, kernel_w;
  std::int64_t stride_h, stride_w;
  std::int64_t pad_h, pad_w;
  bool count_include_pad;
  std::int64_t spatial_dims;

  // Padded sizes may be up to 2^61 - 1 and a padded plane's area must fit in int64; along a dim
  // with one output the stride is capped at the padded size.
  static PoolGeometry make(const Shape& x, const PoolOptions& options, int spatial_dims,
                           const char* op);
  Shape output_shape() const;
};

Tensor max_pool2d(const Tensor& x, const PoolOptions& options);
Tensor max_pool1d(const Tensor& x, const PoolOptions& options);
Tensor avg_pool2d(const Tensor& x, const PoolOptions& options);
Tensor avg_pool1d(const Tensor& x, const PoolOptions& options);
Tensor global_avg_pool2d(const Tensor& x);  // (N,C,H,W) -> (N,C,1,1)
Tensor max_pool2d_backward(const Tensor& grad_out, const Tensor& x, const PoolOptions& options);
Tensor max_pool1d_backward(const Tensor& grad_out, const Tensor& x, const PoolOptions& options);
Tensor avg_pool2d_backward(const Tensor& grad_out, const Tensor& x, const PoolOptions& options);
Tensor avg_pool1d_backward(const Tensor& grad_out, const Tensor& x, const PoolOptions& options);
Tensor global_avg_pool2d_backward(const Tensor& grad_out, const Tensor& x);

// Kernel API for layers: contiguous tensors, outputs preallocated and overwritten.
// argmax (int64, shape of y, may be undefined) records the flat index h*W+w of each winner.
void max_pool_forward(const PoolGeometry& g, const Tensor& x, Tensor& y, Tensor& argmax);
void max_pool_backward(const PoolGeometry& g, const Tensor& grad_y, const Tensor& argmax,
                       Tensor& grad_x);
// The same followed by the backward of a ReLU whose output the pooling took (CPU only), given
// the pooling's output y: the gradient passes where y > 0 (y holds the ReLU's output at each
// argmax) — relu_backward(max_pool_backward(...), relu output) in one pass.
void max_pool_relu_backward(const PoolGeometry& g, const Tensor& grad_y, const Tensor& argmax,
                            const Tensor& y, Tensor& grad_x);
void avg_pool_forward(const PoolGeometry& g, const Tensor& x, Tensor& y);
void avg_pool_backward(const PoolGeometry& g, const Tensor& grad_y, Tensor& grad_x);

}  // namespace juanji
