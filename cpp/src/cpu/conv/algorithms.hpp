// The CPU's convolution algorithms, one file each (depthwise.cpp, direct.cpp, winograd.cpp,
// filter_blocks.cpp, phases.cpp, gemm.cpp), and what they share. Each algorithm says which
// problems it takes (the use_* conditions, which the tables in table.cpp turn into refusals) and
// runs on raw contiguous buffers of a checked problem. Private to the library.
#pragma once

#include <cstdint>

#include "cpu/microkernels.hpp"
#include "cpu/op_support.hpp"
#include "cpu/parallel.hpp"
#include "juanji/ops/conv.hpp"
#include "juanji/runtime.hpp"

namespace juanji::cpu::conv {

// ---- Shared (common.cpp) ----

// Zero-padded copy of planes: dst[c][i][j] = src[c][i - top][j - left], zero outside src.
// top/left may be negative (cropping).
void pad_planes(const float* src, std::int64_t planes, std::int64_t h, std::int64_t w, std::int64_t top,
                std::int64_t left, float* dst, std::int64_t dst_h, std::int64_t dst_w);

// A strided, dilated correlation of a batch of images in groups, with padding that may be negative
// (cropping): the shape of the forward pass and, at stride 1, of the data gradient (the seeds' full
// convolution of the error with the rotated kernel).
struct Correlation {
  std::int64_t N, groups;
  std::int64_t in_channels, in_h, in_w;
  std::int64_t out_channels, out_h, out_w;
  std::int64_t R, S, stride_h, stride_w, dil_h, dil_w, pad_top, pad_left;

  std::int64_t in_per_group() const { return in_channels / groups; }
  std::int64_t out_per_group() const { return out_channels / groups; }
  std::int64_t taps() const { return in_per_group() * R * S; }
  std::int64_t blocks() const { return (out_per_group() + cpu::kFilterBlock - 1) / cpu::kFilterBlock; }
};
Correlation forward_correlation(const ConvGeometry& g);
Correlation data_grad_correlation(const ConvGeometry& g);

// Whether padding and dilation are small beside the image, so that padded planes stay small (the
// float32 paths copy the input or the error into padded planes).
bool padding_is_modest(const ConvGeometry& g);
bool all_finite(const float* values, std::int64_t count);

constexpr std::int64_t kL2Bytes = std::int64_t{1} << 20;

// ---- Depthwise (depthwise.cpp): one filter per channel, any kernel, stride and dilation ----
bool use_depthwise(const ConvGeometry& g);
void depthwise_forward(const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y,
                       bool relu);
void depthwise_backward_data(const ConvGeometry& g, const float* dy, const float* w, float* dx);
void depthwise_backward_weight(const ConvGeometry& g, const float* dy, const float* x, float* dw, float* db);

// ---- Direct (direct.cpp): stride 1, few channels per group ----
bool use_direct(const ConvGeometry& g, std::int64_t in_channels_per_group);
bool use_direct_data_grad(const ConvGeometry& g);
void direct_forward(const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y,
                    bool relu);
void direct_backward_data(const ConvGeometry& g, const float* dy, const float* w, float* dx);
void direct_backward_weight(const ConvGeometry& g, const float* dy, const float* x, float* dw);

// ---- Filter blocks (filter_blocks.cpp): 8+ filters per group ----
bool use_filter_blocks(const Correlation& c);
// packs (or null) keeps the weights' layout from call to call; y_image: floats from one image's
// output to the next's (K * P * Q where they lie one after another).
void filter_block_forward(const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y,
                          bool relu, PackedWeights* packs, std::int64_t y_image);
void filter_block_backward_data(const ConvGeometry& g, const float* dy, const float* w, float* dx);
void filter_block_backward_weight(const ConvGeometry& g, const float* dy, const float* x, float* dw,
                                  float* db);
// One phase of a strided layer's data gradient (phases.cpp) for the filter-block kernel: its
// stride-1 correlation of the error, its weights packed as filter_block_backward_data packs a
// layer's, and the dx row and column of its first output (the others lie the layer's stride apart).
struct FilterBlockPhase {
  Correlation c;
  const float* packed;
  std::int64_t first_row, first_col;
};
// dx from every phase (dx's pixels that no phase writes are left as they are), a job per image,
// group and range of blocks of channels: the error padded once for all the phases, and each
// phase's values stored by the kernel straight into dx's rows, the stride apart.
void filter_block_phases_backward_data(const ConvGeometry& g, const float* dy, const FilterBlockPhase* phases,
                                       std::int64_t count, float* dx);

// ---- Winograd F(2x2, 3x3) (winograd.cpp): stride-1 undilated 3x3, 16+ channels ----
bool use_winograd(const Correlation& c);
// packs (or null) keeps the transformed filters from call to call; y_image as filter_block_forward's.
void winograd_forward(const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y, bool relu,
                      PackedWeights* packs, std::int64_t y_image);
void winograd_backward_data(const ConvGeometry& g, const float* dy, const float* w, float* dx);
void winograd_backward_weight(const ConvGeometry& g, const float* dy, const float* x, float* dw, float* db);

// ---- Stride phases (phases.cpp): the data gradient of strided layers ----
// The data gradient of a strided convolution by phases. Input row h receives the error only
// through the taps r for which h + pad_top - r*dil_h is a multiple of stride_h: for the rows of
// one residue a = (h + pad_top) mod stride_h, the taps with r*dil_h = a (mod stride_h), i.e.
// every step-th tap (step = stride_h / gcd(stride_h, dil_h)) from the first such one, r0. Row
// h = first + i*stride_h then gets sum_j dy[i + padding - j*dilation] * w[r0 + j*step], with
// dilation = dil_h / gcd and padding = (first + pad_top - r0*dil_h) / stride_h: the stride-1
// data gradient of a smaller convolution, whose kernel is the phase's taps.
struct StridePhase {
  std::int64_t first, count;  // the phase's rows: first + i * stride for i < count
  std::int64_t first_tap, taps, tap_step, dilation, padding;
};
StridePhase stride_phase(std::int64_t size, std::int64_t kernel, std::int64_t stride, std::int64_t dil,
                         std::int64_t pad, std::int64_t residue);
// The stride-1 convolution whose data gradient gives one (row, column) phase.
ConvGeometry phase_geometry(const ConvGeometry& g, const StridePhase& rows, const StridePhase& cols);
// Tap (r, s) of a phase's kernel kc is tap (first_tap + r * tap_step, ...) of kernel kc, that
// tap's index in a kernel's R x S taps.
std::int64_t phase_tap_index(const ConvGeometry& g, const StridePhase& rows, const StridePhase& cols, std::int64_t r,
                             std::int64_t s);
float phase_tap(const ConvGeometry& g, const float* w, const StridePhase& rows, const StridePhase& cols,
                std::int64_t kc, std::int64_t r, std::int64_t s);
void strided_backward_data(const ConvGeometry& g, const float* dy, const float* w, float* dx);
// A stride-1 float32 data gradient by the algorithm the table picks for it (never a forced one).
void default_data_grad_f32(const ConvGeometry& g, const float* dy, const float* w, float* dx);

// ---- im2col + GEMM (gemm.cpp): every problem, float32 or float64 ----
bool pointwise_data_grad_by_gemm(const ConvGeometry& g);
bool pointwise_forward_by_gemm(const ConvGeometry& g);
// The bias and (relu) the ReLU are applied as each output tile completes; y_image as
// filter_block_forward's (0: K * P * Q).
template <class T>
void gemm_forward(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y, bool relu = false,
                  std::int64_t y_image = 0);
template <class T>
void gemm_backward_data(const ConvGeometry& g, const T* dy, const T* w, T* dx);
// db (or null) gets the bias gradient by bias_grad's own pass over the error.
template <class T>
void gemm_backward_weight(const ConvGeometry& g, const T* dy, const T* x, T* dw, T* db);
// db[k] = the sum of the error plane of filter k over the batch.
template <class T>
void bias_grad(const ConvGeometry& g, const T* dy, T* db);

}  // namespace juanji::cpu::conv
