// Register-blocked GEMM micro-kernels, one set per instruction set (kernels_<isa>.cpp, each
// compiled with its own flags). A micro-kernel multiplies a packed MR x kc panel of A by a packed
// kc x NR panel of B and writes or adds the MR x NR result into C.
#pragma once

#include <cstdint>

#include "juanji/runtime.hpp"

namespace juanji::cpu {

template <class T>
using MicroKernel = void (*)(std::int64_t kc, const T* a_panel, const T* b_panel, T* c,
                             std::int64_t ldc, std::int64_t rows, std::int64_t cols,
                             bool accumulate);

template <class T>
struct MicroKernelInfo {
  int mr, nr;
  MicroKernel<T> run;
};

// Direct stride-1 convolution of zero-padded planes, for layers with few channels where im2col
// traffic would cost more than the arithmetic:
//   out[k][p][q] = bias[k] + sum_{c,r,s} weights[k][c][r][s] * src[c][p + r*dil_h][q + s*dil_w]
// src rows are readable up to column round_up(out_w, lanes) + dil_w*(S-1), and src has
// max(out_h, kDirectBlockRows) + dil_h*(R-1) rows (zero slack).
constexpr std::int64_t kDirectBlockRows = 16;
struct DirectConvArgs {
  const float* src;  // (in_channels, src_h, src_w)
  std::int64_t in_channels, src_h, src_w;
  const float* weights;  // (out_channels, in_channels, R, S)
  std::int64_t R, S, dil_h, dil_w;
  const float* bias;  // (out_channels) or null
  float* out;         // (out_channels, out_h, out_w)
  std::int64_t out_channels, out_h, out_w;
  bool relu;          // store max(0, out) as the ReLU kernel computes it (v < 0 ? 0 : v)
  // src rows outside [rows_begin, rows_end) are zero padding that a block of output rows skips
  // when all of its rows would read there (the data gradient's padded error: by definition it has
  // no products there); [0, src_h) reads them all. Reading a zero adds +0 or -0 to a sum that
  // started at +0, which leaves it unchanged while the weights are finite.
  std::int64_t rows_begin, rows_end;
};
using DirectConv = void (*)(const DirectConvArgs& args);

// Weight gradient of the direct convolution, for one filter and one input channel over a run of
// images (lane partial sums carried across them, one horizontal sum at the end):
//   grad_weights[r][s] += sum_{image,p,q} grad_out[image][p][q] * src[image][p + r*dil_h][q + s*dil_w]
// grad_out rows are padded to a multiple of `lanes` columns with zeros (out_stride); src as for
// DirectConv. Lanes past out_w are masked out of the products, so a NaN in src reaches exactly
// the taps the definition says it does.
struct DirectWeightGradArgs {
  const float* src;  // (src_h, src_w) of one input channel
  std::int64_t src_w;
  const float* grad_out;  // (out_h, out_stride)
  std::int64_t out_h, out_w, out_stride;
  std::int64_t R, S, dil_h, dil_w;
  std::int64_t images, src_image_stride, grad_out_image_stride;
  float* grad_weights;  // (R, S), accumulated
};
using DirectWeightGrad = void (*)(const DirectWeightGradArgs& args);

// The direct correlation with images in the lanes: a vector holds one pixel of `lanes` images, for
// planes narrower than a vector, where lanes along a row would idle (LeNet's 14-wide data
// gradient used 10 of 16: its error rows are 10 wide):
//   out[c][i][j][l] = sum_{k,r,s} weights[c][k][r][s] * src[k][i + r*dil_h - top][j + s*dil_w][l]
// summed in (k, r, s) order over output rows [row_begin, row_end). Source rows outside
// [0, src_h) are skipped (they hold no products); columns are read from src's rows of src_w
// pixels (j + s*dil_w < src_w), zero outside [cols_begin, cols_end), where a block of pixels skips
// the taps that would read zeros only. Reading a zero adds +0 or -0 to a sum that started at +0,
// which leaves it unchanged while the weights are finite.
struct ImageLaneConvArgs {
  const float* src;  // (in_channels, src_h, src_w, lanes)
  std::int64_t in_channels, src_h, src_w, cols_begin, cols_end;
  const float* weights;  // (out_channels, in_channels, R, S)
  std::int64_t R, S, dil_h, dil_w, top;
  float* out;  // (out_channels, out_h, out_w, lanes)
  std::int64_t out_channels, out_h, out_w, row_begin, row_end;
};
using ImageLaneConv = void (*)(const ImageLaneConvArgs& args);

// Planes of `images` (<= lanes) images into the lanes, zero-padded: out[(plane * out_h + top + p)
// * out_w + left + q][l] = src[l * image_stride + (plane * rows + p) * width + q], zero in the
// other rows and columns of out's planes of out_h x out_w pixels and in the lanes past `images`.
struct ToImageLanesArgs {
  const float* src;
  std::int64_t image_stride, images, planes, rows, width;
  float* out;
  std::int64_t top, left, out_h, out_w;
};
using ToImageLanes = void (*)(const ToImageLanesArgs& args);
// And back: out[l * image_stride + row * width + j] = src[(row * width + j) * lanes + l] for rows
// of width (<= lanes) pixels and l < images.
using FromImageLanes = void (*)(const float* src, std::int64_t rows, std::int64_t width, std::int64_t images,
                                std::int64_t image_stride, float* out);

// Weight gradient of the direct correlation with images in the lanes, for filters [k0, k0 +
// filters) of one group of images, each lane summing its image's pixels in (p, q) order and the
// lanes then added in order:
//   out[k][c][r][s] = sum_{p,q,l} grad_out[k][p][q][l] * src[c][p + r*dil_h][q + s*dil_w][l]
struct ImageLaneWeightGradArgs {
  const float* src;  // (in_channels, src_h, src_w, lanes), zero-padded
  std::int64_t in_channels, src_h, src_w;
  const float* grad_out;  // (out_channels, out_h, out_w, lanes)
  std::int64_t out_h, out_w;
  std::int64_t R, S, dil_h, dil_w, k0, filters;
  float* out;  // (out_channels, in_channels, R, S): the block's filters written
};
using ImageLaneWeightGrad = void (*)(const ImageLaneWeightGradArgs& args);

// Direct convolution vectorised over filters, 16 per block, for small images whose layers have
// enough filters to fill vectors (LeNet's 6 -> 16 channels on 14x14): no im2col, no packing of
// the input, one broadcast multiply-add per tap and output pixel. With src zero-padded:
//   out[k][p][q] = bias[k] + sum_t weights[k/16][t][k%16] * src[tap_offsets[t] + p*row_step + q*col_step]
// Lanes hold filters, so every output is summed in tap order at every vector width.
constexpr int kFilterBlock = 16;
struct FilterBlockConvArgs {
  const float* src;                 // one image (and group), zero-padded
  const std::int64_t* tap_offsets;  // (taps): where tap t = (c, r, s) reads relative to an output pixel
  std::int64_t taps;
  std::int64_t row_step, col_step;  // src elements between output rows, between output columns
  const float* weights;             // (blocks, taps, 16): consecutive blocks of filters, zero past out_channels
  std::int64_t blocks;
  const float* bias;                // (out_channels) or null
  float* out;                       // output (p, q) of filter k: out[k * out_plane + p * out_row_step + q * out_col_step]
  std::int64_t out_channels, out_h, out_w;  // out_channels <= 16 * blocks: the filters of these blocks
  std::int64_t out_plane;                   // floats from one filter's output plane to the next's
  std::int64_t out_row_step, out_col_step;  // out_w and 1 for planes of whole rows; a phase of a plane otherwise
  bool relu;                                // as in DirectConvArgs
  bool fetch_next_pixels;                   // fetch each block of pixels' successor's source into L2 as it computes
  const float* next_weights;                // the next call's (next_blocks blocks), fetched into L2; or null
  std::int64_t next_blocks;
};
using FilterBlockConv = void (*)(const FilterBlockConvArgs& args);
// Rows of kFewestRowPixels to kMostRowPixels pixels (7x7 planes at batch 1) go several whole rows
// to a block of the forward kernel's pixels: as rows of 7 they took blocks of 7, and as one long row
// over the padded source the padding's columns too (61 pixels computed for 49). The rows a block
// takes for blocks of up to max_pixels pixels:
constexpr std::int64_t kFewestRowPixels = 3, kMostRowPixels = 7;
constexpr std::int64_t filter_block_rows_at_once(std::int64_t out_w, std::int64_t max_pixels) {
  return out_w >= kFewestRowPixels && out_w <= kMostRowPixels && max_pixels >= 2 * out_w ? max_pixels / out_w : 1;
}

// Its weight gradient for `images` images, accumulated tap by tap in image then pixel order, for
// `blocks` blocks of 16 filters (block b's grad_out and grad_weights grad_out_block and
// grad_weights_block floats on; image m's src and grad_out src_image and grad_out_image floats on):
//   grad_weights[t][k] += sum_{m,p,q} grad_out[m][p*out_w + q][k] * src[m][tap_offsets[t] + p*row_step + q*col_step]
// The accumulators stay in registers from image to image: a 4x4 output is 16 pixels a pass.
struct FilterBlockWeightGradArgs {
  const float* src;
  const std::int64_t* tap_offsets;
  std::int64_t taps;
  std::int64_t row_step, col_step;
  const float* grad_out;  // (out_h * out_w, 16) an image: the block's output gradient, pixel-major
  std::int64_t out_h, out_w;
  float* grad_weights;    // (taps, 16), accumulated
  std::int64_t blocks, grad_out_block, grad_weights_block;
  std::int64_t images, src_image, grad_out_image;
};
using FilterBlockWeightGrad = void (*)(const FilterBlockWeightGradArgs& args);

// Depthwise convolution (one filter per channel) of planes, each laid out as one long row: the
// caller lays a plane out (zero-padded, split into stride phases or spread by the stride as its
// pass needs) so that output i's tap t reads src[offsets[t] + i]. For each plane p (its layout at
// src + p * src_plane, its weights at weights + p * taps),
//   sum(i) = bias[p] + sum_t weights[t] * src[offsets[t] + i],   summed in t order,
// for i < count, stored as bias + sum (bias 0 where null), then ReLU if asked (v < 0 ? 0 : v), at
// out + p * out_plane. Where `kept` is null out[i] = that; else the rows' spare outputs are
// squeezed out as the vectors are stored: vector v (outputs v * lanes on) keeps kept[v % period]
// of them, its lane l taking the sum of its lane keep[(v % period) * lanes + l], and they follow
// the outputs kept before them in out, which receives out_count of them (count without
// squeezing). Whole vectors are read: src up to round_up(count, lanes) - 1 + offsets[t]; out is
// written up to out_count only.
// Where lane_masks is set (kept null), the planes are read where they lie, unpadded: output i's
// tap t reads src[offsets[t] + i] where bit i % lanes of lane_masks[t * vectors + i / lanes] is set
// (vectors: count / lanes rounded up) and 0 where it is not, and nothing else is read.
struct DepthwiseConvArgs {
  const float* src;
  std::int64_t src_plane;
  const std::int64_t* offsets;  // (taps)
  const float* weights;         // (planes, taps)
  std::int64_t taps;
  const float* bias;  // (planes) or null
  bool relu;
  float* out;
  std::int64_t out_plane, planes, count;
  const std::int32_t* keep;  // (period, lanes) or null
  const std::int64_t* kept;  // (period)
  std::int64_t period, out_count;
  const std::uint32_t* lane_masks = nullptr;  // (taps, vectors) or null
};
using DepthwiseConv = void (*)(const DepthwiseConvArgs& args);

// Its weight gradient: the taps come in classes of per_class taps (a kernel's columns); where
// masks is not null, class c's taps count for the outputs i whose mask(i, c) is set only (the
// others are spare, or would read another row's values: a plane's rows may follow one another
// without zeros between them). The masks repeat every `period` vectors:
// mask(i, c) = masks[((i / lanes) % period * classes + c) * lanes + i % lanes], all bits or none.
// Where lane_masks is set instead (one class), the planes are read where they lie, unpadded: tap t
// counts for output i where bit i % lanes of lane_masks[(i / lanes) * per_class + t] is set, and
// src[offsets[t] + i] is read there only.
constexpr std::int64_t kDepthwiseMaxClasses = 3;  // with up to kDepthwiseClassTaps taps each
constexpr std::int64_t kDepthwiseClassTaps = 3;   // (one class: any number)
struct DepthwiseTaps {
  const std::int64_t* offsets;  // (classes * per_class), class by class
  std::int64_t classes, per_class;
  const std::int32_t* masks;  // (period, classes, lanes) or null
  std::int64_t period;
  const std::uint32_t* lane_masks = nullptr;  // (vectors, per_class) or null
};
// The sums run over `planes` planes (plane p's layout at src + p * src_plane, its error at
// grad_out + p * grad_plane), each tap's products summed lane by lane, plane after plane in i
// order, and the lanes then added in order:
//   grad_weights[t] = sum_p sum_{i < count} mask(i, class of t) * grad_out_p[i] * src_p[offsets[t] + i]
// and, where grad_sum is not null, *grad_sum = the sum of every plane's grad_out[i < count] in the
// same order. One call sums a channel's planes of many images: the lanes are added once per call.
// Masked-out source values are read but left out of the products, so that a NaN there reaches no
// tap; nothing past a plane's count is read.
struct DepthwiseWeightGradArgs {
  const float* src;
  std::int64_t src_plane;
  DepthwiseTaps taps;
  const float* grad_out;  // (planes, grad_plane), count used of each
  std::int64_t grad_plane, count, planes;
  float* grad_weights;  // (taps), written
  float* grad_sum;      // or null
};
using DepthwiseWeightGrad = void (*)(const DepthwiseWeightGradArgs& args);

// Rows into the depthwise kernels' layout, for `planes` planes (plane p's rows from
// src + p * src_plane to out + p * out_plane): row r's floats in[r * src_stride + j] for j < count
// go to out[r * out_stride + j] (copy), or column pairs apart (split: the stride-2 phases, in[2c]
// to out[c] and in[2c + 1] to out[odd_offset + c]), or spread by 2 (spread: in[j] to out[2j] and
// 0 to out[2j + 1], the data gradient's error spread by a stride of 2). They are stored as whole
// vectors: the `lanes` floats after those a row receives (in each of split's two rows) may get
// zeros, which the caller's layout holds there, or rows stored after them. Merge undoes split: out
// columns j < count, out[2c] = in[c] and out[2c + 1] = in[odd_offset + c] (the two column phases
// of a stride-2 data gradient into its rows), and writes nothing past them.
enum class DepthwiseRowMove { copy, split, spread, merge };
struct DepthwiseRowsArgs {
  const float* src;
  std::int64_t src_stride, rows, count;
  float* out;
  std::int64_t out_stride;
  DepthwiseRowMove move;
  std::int64_t odd_offset, planes, src_plane, out_plane;
};
using DepthwiseRows = void (*)(const DepthwiseRowsArgs& args);

// Winograd F(2x2, 3x3) pieces (conv.cpp holds the algorithm), for blocks of 16 filters. Planes of
// the 16 transformed values e = 4a + b lie `stride` floats apart (a stride that is no multiple of
// 4 KiB keeps the 16 streams out of one cache set).
// The inputs of a run of tiles read where they lie in `planes` planes (the channels of an image),
// plane_stride floats apart: the zero-padded input's row r and column j (counted from the run's
// first tile's top left) are plane[(top + r) * row_stride + left + j] where 0 <= top + r < rows
// and 0 <= left + j < cols, else 0 (the padding, and what no output reads: a NaN there stays out
// of the sums). Nothing outside those rows and columns is read.
struct WinogradInputRows {
  const float* plane;
  std::int64_t row_stride, rows, cols;
  std::int64_t top, left;
  std::int64_t planes, plane_stride;
};
// Input transforms of one row of tiles of each plane p: tile t's 4x4 input d[a][b] = the inputs'
// (a, 2t + b), and v[p * v_plane + (4a + b) * stride + t] = (B^T d B)[a][b]. Whole vectors are
// written, so up to 15 floats past each of the 16 runs of v are overwritten too. Only the rows
// first_row <= a < end_row of the transforms are made: all four, or the top or bottom two (0 to 4,
// 0 to 2 or 2 to 4), each value as the full transform makes it.
using WinogradInputRow = void (*)(const WinogradInputRows& in, std::int64_t tiles, float* v, std::int64_t v_plane,
                                  std::int64_t stride, int first_row, int end_row);
// The same for two consecutive full rows of at most lanes / 2 tiles each (small images: one
// vector holds both): the second row's tiles read the inputs' rows from 2 on and go to v after
// the first's.
using WinogradInputRowPair = WinogradInputRow;
// The 16 elementwise products summed over channels in order, for `blocks` blocks of 16 filters
// (block b's u at u + b * u_block, its m at m + b * m_block):
//   m[e * m_stride + t * 16 + k] = sum_c u[(e * channels + c) * 16 + k] * v[e * v_stride + c * v_row + t]
struct WinogradProductArgs {
  const float* u;
  const float* v;
  std::int64_t channels, tiles, v_row, v_stride;
  float* m;
  std::int64_t m_stride, blocks, u_block, m_block;
};
using WinogradProducts = void (*)(const WinogradProductArgs& args);
// Output transforms of runs of tiles, each run's tiles in one row of tiles, plus bias (16 values)
// and ReLU (v < 0 ? 0 : v) if asked, stored to the output planes of `filters` filters. The runs'
// tiles follow each other in m: with tile t the u-th of run r, M[a][b] = m[(4a + b) * m_stride +
// t * 16 + k],
//   out[r.offset + k * plane + i * row + 2u + j] = bias[k] + (A^T M A)[i][j]
// for i < r.rows, 2u + j < r.columns.
struct WinogradOutputRun {
  std::int64_t offset, tiles, rows, columns;
};
struct WinogradOutputArgs {
  const float* m;
  std::int64_t m_stride;
  const WinogradOutputRun* runs;
  std::int64_t run_count;
  const float* bias;  // (16)
  bool relu;
  float* out;
  std::int64_t filters, plane, row;
};
using WinogradOutput = void (*)(const WinogradOutputArgs& args);

// The weight gradient's pieces. Output-gradient transforms of one run of tiles, lanes holding 16
// filters: tile t's 2x2 gradient d[i][j] = errors[(i * row + 2t + j) * 16 + k] (pixel-major,
// rows of `row` pixels), and z[e * stride + t * 16 + k] = (A d A^T)[e / 4][e % 4] for the rows
// first_row <= e / 4 < end_row (as for the input transforms).
using WinogradGradRow = void (*)(const float* errors, std::int64_t row, std::int64_t tiles, float* z,
                                 std::int64_t stride, int first_row, int end_row);
// One row of up to 16 planes, pixel-major: out[q * 16 + k] = src[k * plane_stride + q] for
// q < width and k < planes, zero for the rest of q < out_width.
using PixelMajorRow = void (*)(const float* src, std::int64_t plane_stride, std::int64_t planes, std::int64_t width,
                               std::int64_t out_width, float* out);
// A kc x nr panel of B for the float GEMM kernel (nr = gemm_f32.nr) from a transposed operand
// whose columns run along k: out[k * nr + j] = src[j * row_stride + k] for j < cols, zero for
// cols <= j < nr.
using PackTransposedPanel = void (*)(const float* src, std::int64_t row_stride, std::int64_t cols, std::int64_t kc,
                                     float* out);
// For one e and `blocks` blocks of 16 filters (block b's z and du z_block and du_block floats after
// block b - 1's), the products summed over tiles in order, every channel:
//   du[b][c * 16 + k] = (accumulate ? du[b][c * 16 + k] : 0) + sum_t z[b][t * 16 + k] * v[c * v_row + t]
struct WinogradWeightProductArgs {
  const float* z;
  const float* v;
  std::int64_t tiles, v_row, channels;
  float* du;
  bool accumulate;
  std::int64_t blocks, z_block, du_block;
};
using WinogradWeightProducts = void (*)(const WinogradWeightProductArgs& args);

// 2x2 stride-2 max pooling of `rows` output rows, row r from input rows row0 + 2r * width and the
// one below it (top and bottom): out[r * out_stride + q] = the first maximum of top[2q],
// top[2q+1], bottom[2q], bottom[2q+1] (a NaN wins, the first NaN is kept) and argmax[r *
// out_stride + q] its flat index arg_base + 2r * width + 2q + {0, 1, width, width + 1}, for
// q < count. With normalize, the windows hold max(v * scale + shift, 0) of the input's values v
// instead (batch norm and ReLU on the fly; the product rounded before the add, as outside the
// kernels, and NaN kept).
struct MaxPool2x2Args {
  const float* row0;
  std::int64_t width;
  std::int64_t count;
  float* out;
  std::int64_t* argmax;  // or null
  std::int64_t arg_base;
  std::int64_t rows, out_stride;
  bool normalize = false;
  float scale = 1.0f, shift = 0.0f;
};
using MaxPool2x2 = void (*)(const MaxPool2x2Args& args);

// Its backward on the first `rows` rows of windows of a plane, gated: window q of row r (top row
// grad_x + 2r * width, bottom row below it) gets 0 + grad_y[r * pooled_stride + q] at its argmax
// (a flat index in the plane: argmax[r * pooled_stride + q] - 2r * width - 2q is 0, 1, width or
// width + 1) where gate[r * pooled_stride + q] > 0 (everywhere when gate is null), +0 at its
// other elements; q < count.
// Returns false, leaving grad_x partly written, when an argmax lies outside its window.
struct MaxPool2x2BackwardArgs {
  const float* grad_y;
  const std::int64_t* argmax;
  const float* gate;  // or null
  std::int64_t pooled_stride;
  float* grad_x;
  std::int64_t width, count, rows;
};
using MaxPool2x2Backward = bool (*)(const MaxPool2x2BackwardArgs& args);

// The two in one, from the pooling's input and without argmaxes (batch norm, ReLU and 2x2 max
// pooling's backward on a plane): window q of row r gets 0 + grad_y[r * pooled_stride + q] at the
// element max_pool_2x2 with normalize picks where the window's maximum is above 0, +0 at its
// other elements; q < count. row0 and grad_x: the plane's input and gradient, rows of width.
struct MaxPool2x2ScatterArgs {
  const float* row0;
  std::int64_t width, count, rows;
  float scale, shift;
  const float* grad_y;
  std::int64_t pooled_stride;
  float* grad_x;
};
using MaxPool2x2Scatter = void (*)(const MaxPool2x2ScatterArgs& args);

// Max pooling of one output row's windows that lie inside the plane, for any window and a column
// stride of 1 or 2: out[j] = the first maximum in row-major window order of top_left[h * width +
// w + j * stride] (h < kernel_h, w < kernel_w; a NaN wins, the first NaN is kept) for j < count.
// Returns how many outputs it wrote: all, or 0 for other strides (the caller computes those).
// It does so for `rows` rows of windows, row r's windows in_row_step floats on from row r - 1's
// (top_left's) and its outputs out_row_step floats on.
struct MaxPoolWindowRowArgs {
  const float* top_left;
  std::int64_t width, kernel_h, kernel_w, stride, count;
  float* out;
  std::int64_t rows, in_row_step, out_row_step;
};
using MaxPoolWindowRow = std::int64_t (*)(const MaxPoolWindowRowArgs& args);

// 2x2 stride-2 average pooling of one output row, as the general loop computes it: out[q] =
// ((((0 + row0[2q]) + row0[2q+1]) + row1[2q]) + row1[2q+1]) / 4 for q < count (row1 = row0 + width).
using AvgPool2x2 = void (*)(const float* row0, std::int64_t width, std::int64_t count, float* out);
// Its gradient: the four inputs of window q get 0 + grad[q] / 4 (windows do not overlap).
using AvgPool2x2Backward = void (*)(const float* grad, std::int64_t count, float* row0, std::int64_t width);

// Inverted dropout of n float32 elements whose draws are numbered from `first`:
//   mask[i] = draw(seed, first + i) >= threshold ? keep : 0,   y[i] = x[i] * mask[i]
// with draw = dense.cpp's counter-based SplitMix64 output shifted to 53 bits (uniform_at without
// the scaling to [0, 1), threshold = ceil(p * 2^53)): the same masks as the scalar definition.
struct DropoutArgs {
  const float* x;
  float* mask;
  float* y;
  std::int64_t n;
  std::uint64_t seed, first, threshold;
  float keep;
};
using Dropout = void (*)(const DropoutArgs& args);

// Sums in double over kSumTerms interleaved partial sums combined in a fixed order (vec_math's
// sum_lanes), at vector speed. A batch norm's planes come as a grid: plane (image, k) of channel
// k < channels at first + image * image_stride + k * channel_stride, n terms each. Channel k's
// terms go to its own partial sums (partials + k * kSumTerms for one sum), term i of each plane to
// partial i % kSumTerms, the images in order: so a batch is read in memory order, a few channels
// at a time, and each channel's sum keeps the order of its planes read one after another.
// The kernels add into the partials: of v; of (v - centers[k])^2. The sums of products are
// contracted into FMAs at the AVX levels (-ffp-contract=fast), so they may differ from the
// portable level's in the last bits (integer-valued data stays exact); plain sums do not.
constexpr std::int64_t kSumTerms = 32;
template <class T>
struct ChannelPlanesOf {
  const T* first;
  std::int64_t image_stride, channel_stride;
  std::int64_t images, channels, n;
  const T* plane(std::int64_t image, std::int64_t k) const { return first + image * image_stride + k * channel_stride; }
};
using ChannelPlanes = ChannelPlanesOf<float>;
using SumIntoPartials = void (*)(const ChannelPlanes& v, double* partials);
using SquaredDeviationIntoPartials = void (*)(const ChannelPlanes& v, const double* centers, double* partials);
// Both of batch norm's backward sums in one read, channel k's at partials + 2k * kSumTerms: of g,
// then of g * (v - centers[k]); g's grid has v's images, channels and n.
using GradAndProductIntoPartials = void (*)(const ChannelPlanes& g, const ChannelPlanes& v, const double* centers,
                                            double* partials);

// Batch norm's passes of each channel's affine over a grid of planes, each output plane at its
// input plane's offset from `out`: y = x * scale[k] + shift[k], then y < 0 ? 0 : y where relu;
// grad_x = (a[k] * g + b[k] * x) + shift[k], g's planes at g's own offsets. Each product is
// rounded before its add (no FMA at any level): every level gives the portable level's bits.
struct NormalizeArgs {
  ChannelPlanes x;
  float* out;
  const float *scale, *shift;
  bool relu;
};
using NormalizePlanes = void (*)(const NormalizeArgs& args);
struct NormGradArgs {
  ChannelPlanes g, x;
  float* out;
  const float *a, *b, *shift;
};
using NormGradPlanes = void (*)(const NormGradArgs& args);

// Dot products of `count` rows of x (row i at x + i * length) with `rows` rows of w (row r at
// w + r * length): out[i * out_stride + r] = the sum over k < length of x_i[k] * w_r[k], term k
// added to partial sum k % kDotTerms, the partial sums then added in order 0, 1, ... (the same
// order at every level; FMAs at the AVX levels, so the last bits may differ from the portable
// level's, and integer-valued data stays exact). Each row of w is read from memory once.
constexpr std::int64_t kDotTerms = 32;
using DotRows = void (*)(const float* x, std::int64_t count, const float* w, std::int64_t rows,
                         std::int64_t length, float* out, std::int64_t out_stride);

// y[0, n) = x[0, n) rounded to bfloat16 (juanji/bfloat16.hpp), as float32; y may be x.
using RoundToBfloat16 = void (*)(const float* x, float* y, std::int64_t n);

struct KernelSet {
  MicroKernelInfo<float> gemm_f32;
  MicroKernelInfo<double> gemm_f64;
  DirectConv direct_conv_f32;
  DirectWeightGrad direct_weight_grad_f32;
  ImageLaneConv image_lane_conv_f32;
  ToImageLanes to_image_lanes_f32;
  FromImageLanes from_image_lanes_f32;
  ImageLaneWeightGrad image_lane_weight_grad_f32;
  FilterBlockConv filter_block_conv_f32;
  FilterBlockWeightGrad filter_block_weight_grad_f32;
  DepthwiseConv depthwise_conv_f32;
  DepthwiseWeightGrad depthwise_weight_grad_f32;
  DepthwiseRows depthwise_rows_f32;
  WinogradInputRow winograd_input_row_f32;
  WinogradInputRowPair winograd_input_row_pair_f32;
  WinogradProducts winograd_products_f32;
  WinogradOutput winograd_output_f32;
  WinogradGradRow winograd_grad_row_f32;
  PixelMajorRow pixel_major_row_f32;
  PackTransposedPanel pack_transposed_panel_f32;
  WinogradWeightProducts winograd_weight_products_f32;
  MaxPool2x2 max_pool_2x2_f32;
  MaxPool2x2Backward max_pool_2x2_backward_f32;
  MaxPool2x2Scatter max_pool_2x2_scatter_f32;
  MaxPoolWindowRow max_pool_window_row_f32;
  AvgPool2x2 avg_pool_2x2_f32;
  AvgPool2x2Backward avg_pool_2x2_backward_f32;
  Dropout dropout_f32;
  SumIntoPartials sum_f32;
  SquaredDeviationIntoPartials sum_squared_deviation_f32;
  GradAndProductIntoPartials sum_grad_and_product_f32;
  NormalizePlanes normalize_planes_f32;
  NormGradPlanes norm_grad_planes_f32;
  DotRows dot_rows_f32;
  RoundToBfloat16 round_to_bfloat16_f32;
  int direct_conv_lanes;  // columns per vector
  int filter_block_pixels;  // the most pixels filter_block_conv_f32 takes a pass, with two blocks or more
};

const KernelSet& kernels_portable();
const KernelSet& kernels_avx2();
const KernelSet& kernels_avx512();
// The set for the SIMD level in use (juanji::simd_level()).
const KernelSet& active_kernels();

}  // namespace juanji::cpu
