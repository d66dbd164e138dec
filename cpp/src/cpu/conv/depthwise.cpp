// The depthwise kernels: one filter per channel (groups = channels = filters, MobileNet's 3x3
// layers), a plane at a time, each plane laid out as one long row so that the vectors run across
// its rows: small planes (7x7, 14x14) fill whole vectors and blocks of them. Any kernel size,
// stride, dilation and padding.
#include <algorithm>
#include <array>
#include <numeric>
#include <optional>
#include <vector>

#include "cpu/conv/algorithms.hpp"
#include "cpu/workspace.hpp"

namespace juanji::cpu::conv {

// Rows up to a few hundred columns: the patterns of a plane's vectors (FlatPlane) take up to 32
// bytes per column and class; the direct kernel takes longer rows (conv1d of long signals).
constexpr std::int64_t kMaxColumns = 1024;

bool use_depthwise(const ConvGeometry& g) {
  return g.groups == g.C && g.K == g.C && std::max(g.W, g.Q) + g.dil_w * (g.S - 1) <= kMaxColumns;
}

namespace {

// a / b rounded down and up, for b > 0 and any a.
std::int64_t floor_div(std::int64_t a, std::int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return -floor_div(-a, b); }

// The layout of planes that cannot be read unpadded (see FlatPlane).
enum class Layout { padded, compact_if_possible };

// Planes of up to this many outputs (64x64) are read unpadded where they can be: their masks of
// lanes take 4 bytes per vector and tap, 9 KB for a 3x3 kernel. (8x128 planes of 56x56 past the
// former limit of 1024: weight gradient 813-823 -> 631-637 us, forward and data gradient the same.)
constexpr std::int64_t kMaxUnpaddedOutputs = 4096;

// One pass's correlation of a plane: output (p, q) of out_h x out_w, tap (r, s), reads the image
// at (p * stride_h + r * dil_h - top, q * stride_w + s * dil_w - left), zero outside it. The
// image is the source plane (src_h x src_w) spread by `up` (pixel (k, l) at (k * up_h, l * up_w),
// zeros between: the data gradient's error spread by the stride). The plane is laid out as the
// stride's phases, phase (a, b) holding the image's pixels (a + j * stride_h, b + c * stride_w)
// at row j, column c, in rows of `width` columns, one phase after another with rows of zeros
// around them: tap (r, s) reads phase (a_r, b_s) at (p + e_r, q + f_s), so that output
// i = p * width + q reads it at one offset per tap for the whole plane.
//
// Padded: rows end in zeros, as many as the taps reach past either end of a row; the outputs'
// columns past out_w are spare, squeezed out as the correlation stores them. Compact (for the
// weight gradient: its sums have no outputs to squeeze): rows of out_w columns, the phases'
// columns one row after another, each column of taps (a class) masked to the outputs whose reads
// stay in their row; a stride-1 plane's rows are then one run. It needs up to 3x3 taps, and every
// column a tap reaches past its output's (f_s > 0) within out_w.
// Unpadded (chosen over both for correlations of stride 1 whose source rows are as wide as the
// output's, on planes of up to kMaxUnpaddedOutputs): no layout at all, each tap reading the plane
// itself at one offset, its loads masked to the lanes whose reads fall inside the plane (64x128
// planes of 7x7, two threads: forward 122 -> 87 us, weight gradient 168 -> 120 us; of 28x28,
// weight gradient 441 -> 328 us).
class FlatPlane {
 public:
  FlatPlane(const ConvGeometry& g, Layout layout, std::int64_t src_h, std::int64_t src_w, std::int64_t up_h,
            std::int64_t up_w, std::int64_t top, std::int64_t left, std::int64_t out_h, std::int64_t out_w,
            std::int64_t stride_h, std::int64_t stride_w)
      : src_h_(src_h), src_w_(src_w), up_h_(up_h), up_w_(up_w), out_h_(out_h), out_w_(out_w),
        stride_h_(stride_h), stride_w_(stride_w) {
    if (up_h == 1 && up_w == 1 && stride_h == 1 && stride_w == 1 && src_w == out_w &&
        out_h * out_w <= kMaxUnpaddedOutputs) {
      unpadded_ = true;
      width_ = out_w;
      size_ = out_h * out_w;
      const std::int64_t lanes = cpu::active_kernels().direct_conv_lanes;
      for (std::int64_t s = 0; s < g.S; ++s)
        for (std::int64_t r = 0; r < g.R; ++r) {
          offsets_.push_back((r * g.dil_h - top) * src_w + s * g.dil_w - left);
          tap_order_.push_back(r * g.S + s);
        }
      for (std::int64_t v = 0; v * lanes < size_; ++v)
        for (std::int64_t s = 0; s < g.S; ++s)
          for (std::int64_t r = 0; r < g.R; ++r) {
            std::uint32_t lanes_read = 0;
            for (std::int64_t l = 0; l < lanes && v * lanes + l < size_; ++l) {
              const std::int64_t i = v * lanes + l, row = i / out_w + r * g.dil_h - top,
                                 column = i % out_w + s * g.dil_w - left;
              if (row >= 0 && row < src_h && column >= 0 && column < src_w) lanes_read |= std::uint32_t{1} << l;
            }
            lane_masks_.push_back(lanes_read);
          }
      // The correlation's kernel reads a tap's masks of consecutive vectors together.
      const std::int64_t taps = this->taps(), vectors = taps > 0 ? std::int64_t(lane_masks_.size()) / taps : 0;
      for (std::int64_t t = 0; t < taps; ++t)
        for (std::int64_t v = 0; v < vectors; ++v) tap_lane_masks_.push_back(lane_masks_[v * taps + t]);
      return;
    }
    // Where each tap row and column falls: phase and shift.
    std::vector<std::int64_t> row_phase, row_shift, col_phase, col_shift;
    std::int64_t e_min = 0, e_max = 0, f_min = 0, f_max = 0;
    for (std::int64_t r = 0; r < g.R; ++r) {
      const std::int64_t at = r * g.dil_h - top;
      row_shift.push_back(floor_div(at, stride_h));
      row_phase.push_back(at - row_shift.back() * stride_h);
      e_min = std::min(e_min, row_shift.back()), e_max = std::max(e_max, row_shift.back());
    }
    for (std::int64_t s = 0; s < g.S; ++s) {
      const std::int64_t at = s * g.dil_w - left;
      col_shift.push_back(floor_div(at, stride_w));
      col_phase.push_back(at - col_shift.back() * stride_w);
      f_min = std::min(f_min, col_shift.back()), f_max = std::max(f_max, col_shift.back());
    }
    const std::int64_t image_w = (src_w - 1) * up_w + 1, image_h = (src_h - 1) * up_h + 1;
    // Phase b's image columns.
    const auto phase_width = [&](std::int64_t b) {
      return std::max<std::int64_t>(ceil_div(image_w - b, stride_w), 0);
    };
    compact_ = layout == Layout::compact_if_possible && g.R <= cpu::kDepthwiseClassTaps &&
               g.S <= cpu::kDepthwiseMaxClasses;
    for (std::int64_t s = 0; s < g.S; ++s)
      compact_ = compact_ && (col_shift[s] <= 0 || phase_width(col_phase[s]) <= out_w);
    // The columns [0, phase_cols) of a row that hold the image (zeros past a phase's own).
    phase_cols_ = std::min(ceil_div(image_w, stride_w), out_w + f_max);
    width_ = compact_ ? out_w : std::max(phase_cols_ - f_min, out_w + f_max);
    if (compact_) phase_cols_ = std::min(phase_cols_, out_w);
    // Rows [first_row_, first_row_ + phase_rows) of each phase, zeros where the image has none,
    // and rows of zeros after them for a vector's worth of the rows' moves past a row's end.
    const std::int64_t lanes = cpu::active_kernels().direct_conv_lanes;
    first_row_ = e_min;
    const std::int64_t phase_rows = out_h + e_max - e_min;
    image_rows_ = std::min(ceil_div(image_h, stride_h), out_h + e_max);
    phase_size_ = (phase_rows + ceil_div(lanes, width_)) * width_;
    // Zeros before the first phase (reads of f_min < 0) and after the last, for whole vectors.
    front_ = std::max(width_, -f_min);
    size_ = front_ + stride_h * stride_w * phase_size_ + width_ + f_max + lanes;
    // The taps column by column (the weight gradient's classes), each column's window of output
    // columns: those whose reads stay in their row (compact), or the plane's (padded: one class).
    std::vector<std::int64_t> lo, hi;
    for (std::int64_t s = 0; s < g.S; ++s) {
      for (std::int64_t r = 0; r < g.R; ++r) {
        offsets_.push_back(phase_start(row_phase[r], col_phase[s]) + (row_shift[r] - first_row_) * width_ +
                           col_shift[s]);
        tap_order_.push_back(r * g.S + s);
      }
      lo.push_back(std::max<std::int64_t>(-col_shift[s], 0));
      hi.push_back(std::min(width_, phase_width(col_phase[s]) - col_shift[s]));
    }
    if (!compact_) lo.assign(1, 0), hi.assign(1, out_w);
    classes_ = std::int64_t(lo.size());
    // Patterns of vectors, which repeat every width / gcd(width, lanes) vectors: the windows as
    // masks, where some window leaves out a column, and the lanes of the plane's own columns.
    period_ = width_ / std::gcd(width_, lanes);
    bool cut = false;
    for (std::int64_t c = 0; c < classes_; ++c) cut = cut || lo[c] > 0 || hi[c] < width_;
    for (std::int64_t v = 0; v < period_ && cut; ++v)
      for (std::int64_t c = 0; c < classes_; ++c)
        for (std::int64_t l = 0; l < lanes; ++l) {
          const std::int64_t column = (v * lanes + l) % width_;
          masks_.push_back(lo[c] <= column && column < hi[c] ? -1 : 0);
        }
    for (std::int64_t v = 0; v < period_ && width_ > out_w; ++v) {
      std::int64_t kept = 0;
      for (std::int64_t l = 0; l < lanes; ++l)
        if ((v * lanes + l) % width_ < out_w) keep_.push_back(std::int32_t(l)), ++kept;
      keep_.resize((v + 1) * lanes, std::int32_t(lanes - 1));
      kept_.push_back(kept);
    }
  }

  bool compact() const { return compact_; }
  bool unpadded() const { return unpadded_; }
  std::int64_t taps() const { return std::int64_t(offsets_.size()); }
  // Weight t of the kernels' order is weights[tap_order()[t]] of a filter.
  const std::int64_t* tap_order() const { return tap_order_.data(); }
  std::int64_t count() const { return out_h_ * width_; }
  std::int64_t size() const { return size_; }  // floats of a laid-out plane
  // Floats of a plane of outputs in rows of width, with room for the rows' moves past its end.
  std::int64_t rows_size() const { return count() + cpu::active_kernels().direct_conv_lanes; }

  // The correlation of `planes` planes, src_plane floats apart: laid out (src_plane is size()), or
  // where they lie (unpadded).
  cpu::DepthwiseConvArgs conv_args(const float* src, std::int64_t src_plane, const float* weights, const float* bias,
                                   bool relu, float* out, std::int64_t planes) const {
    const std::int32_t* keep = keep_.empty() ? nullptr : keep_.data();
    return {src,  src_plane, offsets_.data(), weights,      taps(),  bias,
            relu, out,       out_h_ * out_w_, planes,       count(), keep,
            kept_.data(), period_, out_h_ * out_w_, unpadded_ ? tap_lane_masks_.data() : nullptr};
  }
  cpu::DepthwiseTaps grad_taps() const {
    return {offsets_.data(), classes_, taps() / classes_, masks_.empty() ? nullptr : masks_.data(), period_,
            unpadded_ ? lane_masks_.data() : nullptr};
  }

  // `planes` source planes (src_h x src_w each, src_plane floats apart) into their layouts, size()
  // floats apart, whose other floats hold zeros: the same floats for every plane, so that a
  // thread zeroes its layouts once per pass.
  void lay_out(const float* planes_in, std::int64_t src_plane, std::int64_t planes, float* out) const {
    using Move = cpu::DepthwiseRowMove;
    const cpu::KernelSet& kernels = cpu::active_kernels();
    if (up_h_ == 1 && up_w_ == 1 && stride_w_ <= 2) {
      // Phase a's rows j are the plane's rows a + j * stride_h; a compact stride-1 plane is one run.
      const bool one_run = stride_h_ == 1 && stride_w_ == 1 && width_ == src_w_ && phase_cols_ == src_w_;
      for (std::int64_t a = 0; a < stride_h_ && a < src_h_; ++a) {
        const std::int64_t rows = std::min(ceil_div(src_h_ - a, stride_h_), image_rows_);
        float* to = out + phase_start(a, 0) - first_row_ * width_;
        if (one_run)
          kernels.depthwise_rows_f32({planes_in, 0, 1, rows * src_w_, to, 0, Move::copy, 0, planes, src_plane, size_});
        else
          kernels.depthwise_rows_f32({planes_in + a * src_w_, stride_h_ * src_w_, rows,
                                      std::min(src_w_, stride_w_ * phase_cols_), to, width_,
                                      stride_w_ == 2 ? Move::split : Move::copy, phase_size_, planes, src_plane,
                                      size_});
      }
      return;
    }
    if (stride_h_ == 1 && stride_w_ == 1 && up_w_ == 2) {
      // Row k is image row k * up_h, its pixel l at column 2l.
      const std::int64_t rows = std::min(src_h_, ceil_div(image_rows_, up_h_));
      kernels.depthwise_rows_f32({planes_in, src_w_, rows, std::min(src_w_, ceil_div(phase_cols_, 2)),
                                  out + phase_start(0, 0) - first_row_ * width_, up_h_ * width_, Move::spread, 0,
                                  planes, src_plane, size_});
      return;
    }
    for (std::int64_t plane = 0; plane < planes; ++plane)
      for (std::int64_t k = 0; k < src_h_; ++k) {
        const std::int64_t y = k * up_h_, a = y % stride_h_, j = y / stride_h_;
        if (j >= image_rows_) break;
        const float* in = planes_in + plane * src_plane + k * src_w_;
        for (std::int64_t b = 0; b < stride_w_; ++b) {
          float* row = out + plane * size_ + phase_start(a, b) + (j - first_row_) * width_;
          if (up_w_ > 1) {  // stride 1: pixel l at column l * up_w
            for (std::int64_t l = 0; l < src_w_ && l * up_w_ < phase_cols_; ++l) row[l * up_w_] = in[l];
          } else {  // column c of phase b is pixel b + c * stride_w
            for (std::int64_t c = 0; c < phase_cols_ && b + c * stride_w_ < src_w_; ++c)
              row[c] = in[b + c * stride_w_];
          }
        }
      }
  }

  // `planes` planes of out_h x out_w (src_plane floats apart) into rows of width, rows_size()
  // floats apart, whose spare columns hold zeros as lay_out's do (padded).
  void spread_rows(const float* planes_in, std::int64_t src_plane, std::int64_t planes, float* rows) const {
    cpu::active_kernels().depthwise_rows_f32(
        {planes_in, out_w_, out_h_, out_w_, rows, width_, cpu::DepthwiseRowMove::copy, 0, planes, src_plane,
         rows_size()});
  }

 private:
  std::int64_t phase_start(std::int64_t a, std::int64_t b) const { return (a * stride_w_ + b) * phase_size_ + front_; }

  std::int64_t src_h_, src_w_, up_h_, up_w_, out_h_, out_w_, stride_h_, stride_w_;
  bool compact_ = false, unpadded_ = false;
  std::vector<std::uint32_t> lane_masks_;      // unpadded: (vectors, taps), the weight gradient's order
  std::vector<std::uint32_t> tap_lane_masks_;  // the same as (taps, vectors), the correlation's
  std::vector<std::int64_t> offsets_, tap_order_, kept_;
  std::int64_t classes_ = 1, period_ = 1;
  std::vector<std::int32_t> masks_, keep_;
  std::int64_t phase_cols_ = 0, width_ = 0, first_row_ = 0, image_rows_ = 0, phase_size_ = 0, front_ = 0, size_ = 0;
};

FlatPlane forward_plane(const ConvGeometry& g, Layout layout) {
  return {g, layout, g.H, g.W, 1, 1, g.pad_top, g.pad_left, g.P, g.Q, g.stride_h, g.stride_w};
}

// The seeds' rule: the input gradient is the full correlation of the error, spread by the
// stride, with the 180-degree rotated kernel.
FlatPlane data_grad_plane(const ConvGeometry& g) {
  return {g, Layout::padded, g.P, g.Q, g.stride_h, g.stride_w, g.dil_h * (g.R - 1) - g.pad_top,
          g.dil_w * (g.S - 1) - g.pad_left, g.H, g.W, 1, 1};
}

// A thread's scratch of `count` floats in `slot`, zeroed.
float* zeroed(cpu::WorkspaceSlot slot, std::int64_t count) {
  float* out = cpu::workspace<float>(slot, count);
  std::fill(out, out + count, 0.0f);
  return out;
}

// The filters in the kernels' tap order (rotated by 180 degrees for the data gradient), into out
// (C * taps floats).
void order_weights(const ConvGeometry& g, const FlatPlane& layout, const float* w, bool rotate, float* out) {
  const std::int64_t taps = g.R * g.S;
  for (std::int64_t c = 0; c < g.C; ++c)
    for (std::int64_t t = 0; t < taps; ++t) {
      const std::int64_t tap = layout.tap_order()[t];
      out[c * taps + t] = w[c * taps + (rotate ? taps - 1 - tap : tap)];
    }
}

// The same into the calling thread's workspace.
const float* ordered_weights(const ConvGeometry& g, const FlatPlane& layout, const float* w, bool rotate) {
  float* out = cpu::workspace<float>(cpu::WorkspaceSlot::phase_weights, g.C * g.R * g.S);
  order_weights(g, layout, w, rotate, out);
  return out;
}

// Planes laid out at once: up to 32 of a few KiB, so that they stay in L1 (a 7x7 plane's kernel
// calls cost as much as its arithmetic). A chunk holds consecutive channels of one image.
std::int64_t planes_per_chunk(const FlatPlane& layout, std::int64_t channels) {
  const std::int64_t fitting = (std::int64_t{16} << 10) / (layout.size() * std::int64_t{sizeof(float)});
  return std::clamp<std::int64_t>(fitting, 1, std::min<std::int64_t>(32, channels));
}

// out's plane (n, c) = the correlation of src's plane (n, c) with weights[c] (+ bias[c]).
void depthwise_correlate(const ConvGeometry& g, const FlatPlane& layout, std::int64_t src_plane, const float* src,
                         const float* weights, const float* bias, float* out, std::int64_t out_plane, bool relu) {
  const cpu::KernelSet& kernels = cpu::active_kernels();
  const std::int64_t chunk = planes_per_chunk(layout, g.C), chunks = (g.C + chunk - 1) / chunk;
  const std::int64_t jobs = g.N * chunks, taps = layout.taps();
  cpu::RegionErrors errors;
#pragma omp parallel num_threads(::juanji::team_size()) if (jobs > 1)
  {
    float* laid_out = nullptr;
    if (!layout.unpadded())
      errors.guard([&] { laid_out = zeroed(cpu::WorkspaceSlot::columns, chunk * layout.size()); });
#pragma omp for schedule(static)
    for (std::int64_t job = 0; job < jobs; ++job) {
      const std::int64_t n = job / chunks, c = job % chunks * chunk, planes = std::min(chunk, g.C - c);
      const std::int64_t first = n * g.C + c;
      const float* planes_in = src + first * src_plane;
      if (!layout.unpadded()) {
        if (!laid_out) continue;
        layout.lay_out(planes_in, src_plane, planes, laid_out);
      }
      kernels.depthwise_conv_f32(layout.conv_args(
          layout.unpadded() ? planes_in : laid_out, layout.unpadded() ? src_plane : layout.size(),
          weights + c * taps, bias ? bias + c : nullptr, relu, out + first * out_plane, planes));
    }
  }
  errors.rethrow();
}

// Images per chunk of the weight gradient: as many as lay out in 16 KiB (a chunk's layouts are
// written and read back at once), so that a 7x7 plane's few vectors do not each pay for adding
// the lanes; planes of 16 KiB and more one at a time, in memory order (56x56 planes two at a time
// ran 4% slower). Fixed by the problem, not by the thread count, as the sums' order must be.
std::int64_t images_per_chunk(const FlatPlane& layout, std::int64_t images) {
  const std::int64_t floats = layout.size() + (layout.compact() || layout.unpadded() ? 0 : layout.rows_size());
  return std::clamp<std::int64_t>((std::int64_t{16} << 10) / (floats * std::int64_t{sizeof(float)}), 1, images);
}

}  // namespace

void depthwise_forward(const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y,
                       bool relu) {
  const FlatPlane layout = forward_plane(g, Layout::padded);
  depthwise_correlate(g, layout, g.H * g.W, x, ordered_weights(g, layout, w, false), bias, y, g.P * g.Q, relu);
}

namespace {

// The data gradient of a stride-2 layer whose error planes are half its input's (even sizes):
// the spread error's zeros make three quarters of data_grad_plane's products. Each stride phase
// of dx (its pixels (2i + a, 2j + b)) is instead the stride-1 data gradient of a smaller
// convolution (phase_geometry), whose error is the layer's own, read where it lies (unpadded);
// its sums go to a scratch plane, and the four phases are merged into dx's rows. The products left
// out are the spread's and the padding's zeros times finite weights (the algorithm refuses
// others), which leave a sum's bits as they are: each value is the same sum, its taps in the
// same order.
class DataGradPhases {
 public:
  static bool applies(const ConvGeometry& g) {
    return g.stride_h == 2 && g.stride_w == 2 && g.H % 2 == 0 && g.W % 2 == 0 && g.P == g.H / 2 && g.Q == g.W / 2 &&
           g.P * g.Q <= kMaxUnpaddedOutputs;
  }

  DataGradPhases(const ConvGeometry& g, const float* w) {
    for (std::int64_t a = 0; a < 2; ++a)
      for (std::int64_t b = 0; b < 2; ++b) {
        const StridePhase rows = stride_phase(g.H, g.R, 2, g.dil_h, g.pad_top, a);
        const StridePhase cols = stride_phase(g.W, g.S, 2, g.dil_w, g.pad_left, b);
        const ConvGeometry sub = phase_geometry(g, rows, cols);
        Phase& phase = phases_[2 * rows.first + cols.first];
        phase.layout.emplace(data_grad_plane(sub));
        std::vector<float> kernel(g.C * sub.R * sub.S);
        for (std::int64_t c = 0; c < g.C; ++c)
          for (std::int64_t r = 0; r < sub.R; ++r)
            for (std::int64_t s = 0; s < sub.S; ++s) kernel[(c * sub.R + r) * sub.S + s] = phase_tap(g, w, rows, cols, c, r, s);
        phase.weights.resize(kernel.size());
        order_weights(sub, *phase.layout, kernel.data(), true, phase.weights.data());
      }
  }

  void run(const ConvGeometry& g, const float* dy, float* dx) const {
    const cpu::KernelSet& kernels = cpu::active_kernels();
    const std::int64_t half = g.P * g.Q, plane = g.H * g.W;
    // Planes at once: the four phases' scratch in 32 KiB.
    const std::int64_t chunk = std::clamp<std::int64_t>((std::int64_t{8} << 10) / plane, 1, std::min<std::int64_t>(32, g.C));
    const std::int64_t chunks = (g.C + chunk - 1) / chunk, jobs = g.N * chunks;
    cpu::RegionErrors errors;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (jobs > 1)
    for (std::int64_t job = 0; job < jobs; ++job) errors.guard([&] {
      const std::int64_t n = job / chunks, c = job % chunks * chunk, planes = std::min(chunk, g.C - c);
      const std::int64_t first = n * g.C + c;
      // The planes of the phase of dx's rows a and columns b at scratch + (2a + b) * chunk * half.
      float* scratch = cpu::workspace<float>(cpu::WorkspaceSlot::batch_out, 4 * chunk * half);
      for (std::int64_t p = 0; p < 4; ++p) {
        const FlatPlane& layout = *phases_[p].layout;
        kernels.depthwise_conv_f32(layout.conv_args(dy + first * half, half, phases_[p].weights.data() + c * layout.taps(),
                                                    nullptr, false, scratch + p * chunk * half, planes));
      }
      for (std::int64_t a = 0; a < 2; ++a)
        kernels.depthwise_rows_f32({scratch + 2 * a * chunk * half, g.Q, g.P, g.W, dx + first * plane + a * g.W, 2 * g.W,
                                    cpu::DepthwiseRowMove::merge, chunk * half, planes, half, plane});
    });
    errors.rethrow();
  }

 private:
  struct Phase {
    std::optional<FlatPlane> layout;
    std::vector<float> weights;  // in the layout's tap order
  };
  std::array<Phase, 4> phases_;
};

}  // namespace

void depthwise_backward_data(const ConvGeometry& g, const float* dy, const float* w, float* dx) {
  if (DataGradPhases::applies(g)) return DataGradPhases(g, w).run(g, dy, dx);
  const FlatPlane layout = data_grad_plane(g);
  depthwise_correlate(g, layout, g.P * g.Q, dy, ordered_weights(g, layout, w, true), nullptr, dx, g.H * g.W, false);
}

// Each channel's tap sums over a chunk of images into partials, then the chunks added in order:
// the same sums in the same order for any thread count. db (or null) gets the bias gradient: each
// chunk's errors summed by the kernel as it reads them (in float, as the taps), the chunks' sums
// added in double (bias_grad's own pass, in double throughout, cost as much as the weight
// gradient on 7x7 planes).
void depthwise_backward_weight(const ConvGeometry& g, const float* dy, const float* x, float* dw, float* db) {
  const cpu::KernelSet& kernels = cpu::active_kernels();
  const FlatPlane layout = forward_plane(g, Layout::compact_if_possible);
  const cpu::DepthwiseTaps taps = layout.grad_taps();
  const std::int64_t tap_count = layout.taps(), HW = g.H * g.W, PQ = g.P * g.Q;
  const std::int64_t chunk = images_per_chunk(layout, g.N), chunks = (g.N + chunk - 1) / chunk;
  const std::int64_t jobs = g.C * chunks;
  float* partials = cpu::workspace<float>(cpu::WorkspaceSlot::partials, jobs * tap_count);
  float* chunk_sums = db ? cpu::workspace<float>(cpu::WorkspaceSlot::plane_sums, jobs) : nullptr;
  cpu::RegionErrors errors;
#pragma omp parallel num_threads(::juanji::team_size())
  {
    // Unpadded planes are read where they lie; the others are laid out, their errors spread into
    // rows of the layout's width unless it is compact.
    float *laid_out = nullptr, *error_rows = nullptr;
    errors.guard([&] {
      if (layout.unpadded()) return;
      laid_out = zeroed(cpu::WorkspaceSlot::columns, chunk * layout.size());
      error_rows = layout.compact() ? laid_out : zeroed(cpu::WorkspaceSlot::batch_out, chunk * layout.rows_size());
    });
    // Job k * C + c: channel c's images of chunk k (chunk by chunk, the planes in memory order).
    // Its sums go to partials[c * chunks + k].
#pragma omp for schedule(static)
    for (std::int64_t job = 0; job < jobs; ++job) {
      if (!layout.unpadded() && !error_rows) continue;
      const std::int64_t c = job % g.C, k = job / g.C, n = k * chunk, images = std::min(chunk, g.N - n);
      const float* source = x + (n * g.C + c) * HW;
      std::int64_t source_plane = g.C * HW;
      if (!layout.unpadded()) {
        layout.lay_out(source, source_plane, images, laid_out);
        source = laid_out;
        source_plane = layout.size();
      }
      const float* grad = dy + (n * g.C + c) * PQ;
      std::int64_t grad_plane = g.C * PQ;
      if (!layout.compact() && !layout.unpadded()) {
        layout.spread_rows(grad, grad_plane, images, error_rows);
        grad = error_rows;
        grad_plane = layout.rows_size();
      }
      kernels.depthwise_weight_grad_f32({source, source_plane, taps, grad, grad_plane, layout.count(), images,
                                         partials + (c * chunks + k) * tap_count,
                                         chunk_sums ? chunk_sums + c * chunks + k : nullptr});
    }
    // After a failed allocation (and the barrier above) every thread skips the sums, which would
    // read partials no thread wrote.
#pragma omp for schedule(static)
    for (std::int64_t c = 0; c < (errors.failed() ? 0 : g.C); ++c) {
      const float* channel = partials + c * chunks * tap_count;
      for (std::int64_t t = 0; t < tap_count; ++t) {
        float sum = channel[t];
        for (std::int64_t k = 1; k < chunks; ++k) sum += channel[k * tap_count + t];
        dw[c * tap_count + layout.tap_order()[t]] = sum;
      }
      if (db) {
        double bias = 0;
        for (std::int64_t k = 0; k < chunks; ++k) bias += chunk_sums[c * chunks + k];
        db[c] = static_cast<float>(bias);
      }
    }
  }
  errors.rethrow();
}

}  // namespace juanji::cpu::conv
