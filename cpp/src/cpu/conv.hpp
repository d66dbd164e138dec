// The CPU's convolution: ops/conv.cpp's kernel API on contiguous CPU tensors of one float dtype,
// for problems whose sums have terms (N > 0 and C > 0; the ops layer answers the others). Each
// pass runs the first algorithm of its ranked table (cpu/conv/table.cpp) that takes the problem,
// or the one forced by name. Private to the library.
#pragma once

#include <string>
#include <vector>

#include "juanji/ops/conv.hpp"

namespace juanji::cpu {

// packs (or null) serves w: the algorithms that lay the weights out keep their layouts in it.
void conv_forward(const ConvGeometry& g, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y,
                  PackedWeights* packs);
// conv_forward with ReLU applied as each output is stored; false, having computed nothing, where
// the algorithm chosen cannot (GEMM, float64).
bool conv_forward_relu(const ConvGeometry& g, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y,
                       PackedWeights* packs);
void conv_backward_data(const ConvGeometry& g, const Tensor& grad_y, const Tensor& w, Tensor& grad_x);
// grad_b may be undefined (not wanted).
void conv_backward_weight(const ConvGeometry& g, const Tensor& grad_y, const Tensor& x, Tensor& grad_w,
                          Tensor& grad_b);
// grad_b (K) = the sums of the error's planes, for any batch (an empty one gives zeros).
void conv_bias_grad(const ConvGeometry& g, const Tensor& grad_y, Tensor& grad_b);
// Whether conv_backward_weight's bias gradient is conv_bias_grad's sums (each error plane summed,
// the plane sums added image by image in double), as every algorithm's is but the depthwise one's
// and the plain-loop reference's.
bool conv_bias_grad_sums_planes(const ConvGeometry& g, DType dtype);

// The table of a pass for a problem, each entry with why it refuses it (empty where it takes it);
// weights (float32, or null) let the data gradient's direct kernel check they are finite.
std::vector<ConvAlgorithmChoice> conv_algorithms(ConvPass pass, const ConvGeometry& g, DType dtype,
                                                 const float* weights);
// Forces a pass's algorithm by name ("" chooses by the table); returns the previous name.
std::string force_conv_algorithm(ConvPass pass, const std::string& name);

}  // namespace juanji::cpu
