// CNN convolution (cross-correlation, no kernel flip): conv1d on (N,C,L), conv2d on (N,C,H,W),
// weights (K, C/groups, [R,] S), bias (K). conv1d is conv2d with H = R = 1.
// Output size per spatial dim: floor((n + pad_before + pad_after - d(f-1) - 1) / s) + 1.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "juanji/ops/dense.hpp"
#include "juanji/ops/packed_weights.hpp"
#include "juanji/tensor.hpp"

namespace juanji {

struct PaddingSpec {
  enum class Kind { explicit_sizes, same, valid };
  Kind kind = Kind::explicit_sizes;
  std::vector<std::int64_t> sizes;  // symmetric, one per spatial dim (or one for all)
  static PaddingSpec same() { return {Kind::same, {}}; }
  static PaddingSpec valid() { return {Kind::valid, {}}; }
  static PaddingSpec of(std::vector<std::int64_t> sizes) { return {Kind::explicit_sizes, std::move(sizes)}; }
};

// Each vector holds one value for all spatial dims or one per spatial dim.
struct ConvOptions {
  std::vector<std::int64_t> stride{1};
  PaddingSpec padding = PaddingSpec::of({0});
  std::vector<std::int64_t> dilation{1};
  std::int64_t groups = 1;
};

// A convolution problem fully resolved and validated; kernels take only this.
struct ConvGeometry {
  std::int64_t N, C, H, W;     // input
  std::int64_t K, R, S;        // weight: K filters of (C/groups, R, S)
  std::int64_t P, Q;           // output height, width
  std::int64_t stride_h, stride_w;  // at most the padded size along a dim with one output
  std::int64_t pad_top, pad_left;  // bottom/right padding is implied by P, Q
  std::int64_t dil_h, dil_w;
  std::int64_t groups;
  std::int64_t spatial_dims;   // 1 for conv1d, 2 for conv2d

  // Validates shapes and options (ValueError naming the argument) and resolves "same"/"valid".
  // Padded sizes and dilated kernels may span up to 2^61 - 1 elements, and the output must be
  // a shape a tensor can have.
  static ConvGeometry make(const Shape& x, const Shape& w, const ConvOptions& options,
                           int spatial_dims);
  Shape output_shape() const;
  double flops() const;  // 2 multiply-adds per weight tap per output
};

// Functional API: allocates the results. grad_b is always computed.
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const ConvOptions& options);
Tensor conv1d(const Tensor& x, const Tensor& w, const Tensor& bias, const ConvOptions& options);
struct ConvGrads {
  Tensor grad_x, grad_w, grad_b;
};
ConvGrads conv2d_backward(const Tensor& grad_out, const Tensor& x, const Tensor& w,
                          const ConvOptions& options);
ConvGrads conv1d_backward(const Tensor& grad_out, const Tensor& x, const Tensor& w,
                          const ConvOptions& options);

// Kernel API for layers: contiguous tensors of one dtype, outputs preallocated and overwritten.
// bias may be undefined (no bias); grad_b may be undefined (not wanted). packs (or null) keeps the
// CPU's layouts of w from call to call where it serves w (see PackedWeights). On the CPU the y of
// conv_forward and conv_forward_activation may also be a view whose images each lie in one piece
// (a Concat's share of its output), which the Winograd, filter-block and GEMM kernels write in
// place and the others through a buffer.
void conv_forward(const ConvGeometry& g, const Tensor& x, const Tensor& w, const Tensor& bias,
                  Tensor& y, PackedWeights* packs = nullptr);
// conv_forward with the activation applied as each output is stored, where a kernel for this
// problem can (CUDA: every activation; the CPU: ReLU, v < 0 ? 0 : v as the activation op, in
// float32 on every algorithm but GEMM); returns false, having computed nothing, where none can.
// The caller keeps only activations whose backward works from the output (see ActivationLayer).
bool conv_forward_activation(const ConvGeometry& g, const Tensor& x, const Tensor& w,
                             const Tensor& bias, Tensor& y, Activation kind, double negative_slope,
                             PackedWeights* packs = nullptr);
void conv_backward_data(const ConvGeometry& g, const Tensor& grad_y, const Tensor& w, Tensor& grad_x);

// The CPU's algorithms for each pass, in order of preference (direct, Winograd, filter blocks,
// strided phases, GEMM, then the plain-loop reference; GEMM takes every problem, so the reference
// runs only when forced). For tests and diagnostics: the list for a
// problem, each with why it refuses it (empty when it takes it; the data gradient's direct kernel
// also looks at the weights' values), and forcing one pass's algorithm by name (an error where
// it refuses a problem; "" chooses by the list; JUANJI_CONV_ALGO=name forces it for every pass
// at start-up).
enum class ConvPass { forward, data_grad, weight_grad };
struct ConvAlgorithmChoice {
  std::string name;
  std::string refusal;      // why it cannot take the problem; empty where it can
  std::string passed_over;  // why the default choice goes past it although it can; empty otherwise
};
std::vector<ConvAlgorithmChoice> conv_algorithms(ConvPass pass, const ConvGeometry& g, DType dtype,
                                                 const Tensor& weight);
std::string set_conv_algorithm(ConvPass pass, const std::string& name);  // returns the previous name
void conv_backward_weight(const ConvGeometry& g, const Tensor& grad_y, const Tensor& x,
                          Tensor& grad_w, Tensor& grad_b);
// Whether conv_backward_weight's bias gradient for this problem has the bits of the error planes'
// sums that a batch norm after the layer makes from its own input gradient (each plane summed, the
// plane sums added image by image): where it has, the norm may give the layer its bias gradient.
// Every CPU algorithm's has but the depthwise one's, which sums its errors as its kernel reads them,
// and the plain-loop reference's.
bool conv_bias_grad_sums_planes(const ConvGeometry& g, DType dtype, Device device);

}  // namespace juanji
