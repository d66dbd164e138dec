// Every member of every SIMD kernel set (cpu/microkernels.hpp) against plain loops written from
// the contract its header comment states, at every level this CPU runs, on sizes around the
// kernels' vector widths and block sizes (1, lanes - 1, lanes, lanes + 1, several blocks and a
// tail). Integer-valued data must come out bit for bit, uniform data within a tolerance; where a
// contract fixes every bit (copies, pooling, dropout, the sums' order) all data must. Outputs the
// contract leaves alone are filled with a sentinel that must survive.
#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "cpu/microkernels.hpp"
#include "kernel_check.hpp"

namespace {

using namespace kernel_check;
using juanji::SimdLevel;
using juanji::cpu::KernelSet;
using I = std::int64_t;

constexpr float kSentinel = -777.25f;
constexpr I kTail = 64;  // sentinel floats after each output, to catch writes past its end
constexpr Values kBothValues[] = {Values::integers, Values::uniform};
constexpr double kFloatTolerance = 1e-5, kDoubleTolerance = 1e-13;
const float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Level {
  SimdLevel level;
  const KernelSet& set;
  int lanes;  // floats per vector
};

const KernelSet& kernel_set(SimdLevel level) {
  switch (level) {
    case SimdLevel::avx512: return juanji::cpu::kernels_avx512();
    case SimdLevel::avx2: return juanji::cpu::kernels_avx2();
    case SimdLevel::portable: break;
  }
  return juanji::cpu::kernels_portable();
}

std::string describe(const Level& level, const char* format, ...) __attribute__((format(printf, 2, 3)));
std::string describe(const Level& level, const char* format, ...) {
  char text[256];
  va_list args;
  va_start(args, format);
  std::vsnprintf(text, sizeof(text), format, args);
  va_end(args);
  return std::string(juanji::simd_name(level.level)) + " " + text;
}

I round_up(I n, I step) { return (n + step - 1) / step * step; }

// The candidates of at least 1, each once (sizes around a vector's width coincide at narrow ones).
std::vector<I> sizes(std::initializer_list<I> candidates) {
  std::vector<I> out;
  for (I n : candidates)
    if (n >= 1 && std::find(out.begin(), out.end(), n) == out.end()) out.push_back(n);
  return out;
}

// An output buffer of n values and a tail, all sentinels, and what it must hold: the sentinels
// (magnitude 0: exactly) where must_hold names nothing else.
struct Output {
  std::vector<float> got;
  std::vector<double> want, magnitude;
  explicit Output(I n) : got(n + kTail, kSentinel), want(n + kTail, kSentinel), magnitude(n + kTail, 0.0) {}
  void must_hold(I i, double value, double size) {
    want[i] = value;
    magnitude[i] = size;
  }
};

// ---- GEMM ----------------------------------------------------------------------------------

template <class T>
void test_gemm_micro_kernel(const Level& level, const juanji::cpu::MicroKernelInfo<T>& kernel, Data& data) {
  const I mr = kernel.mr, nr = kernel.nr, lanes = nr / 2, ldc = nr + 3;
  for (I kc : {1, 2, 3, 8, 17})
    for (I rows = 1; rows <= mr; ++rows)
      for (I cols : sizes({1, lanes - 1, lanes, lanes + 1, nr - 1, nr}))
        for (bool accumulate : {false, true})
          for (Values values : kBothValues) {
            const auto a = data.make<T>(kc * mr, values), b = data.make<T>(kc * nr, values);
            std::vector<T> c = data.make<T>(mr * ldc, values);
            std::vector<double> want(c.begin(), c.end()), magnitude(c.size(), 0.0);
            for (I i = 0; i < rows; ++i)
              for (I j = 0; j < cols; ++j) {
                double sum = 0, size = 0;
                for (I k = 0; k < kc; ++k) {
                  sum += double(a[k * mr + i]) * b[k * nr + j];
                  size += std::fabs(double(a[k * mr + i]) * b[k * nr + j]);
                }
                want[i * ldc + j] = accumulate ? c[i * ldc + j] + sum : sum;
                magnitude[i * ldc + j] = size + (accumulate ? std::fabs(double(c[i * ldc + j])) : 0.0);
              }
            kernel.run(kc, a.data(), b.data(), c.data(), ldc, rows, cols, accumulate);
            expect_close(describe(level, "gemm_f%d kc=%ld rows=%ld cols=%ld accumulate=%d", int(8 * sizeof(T)), kc,
                                  rows, cols, accumulate),
                         c, want, magnitude, values, sizeof(T) == 4 ? kFloatTolerance : kDoubleTolerance);
          }
}

// out[k * nr + j] = src[j * row_stride + k] for j < cols, zero for cols <= j < nr.
void test_pack_transposed_panel(const Level& level, Data& data) {
  const I lanes = level.lanes, nr = level.set.gemm_f32.nr;
  for (I cols : sizes({1, lanes - 1, lanes, lanes + 1, nr - 1, nr}))
    for (I kc : sizes({1, 2, lanes - 1, lanes, lanes + 1, 3 * lanes + 2}))
      for (I gap : {0, 3}) {
        const I row_stride = kc + gap;
        std::vector<float> src = data.make(cols * row_stride, Values::uniform);
        for (I j = 0; j < cols; ++j)
          std::fill(src.begin() + j * row_stride + kc, src.begin() + (j + 1) * row_stride, kNaN);
        std::vector<float> got(kc * nr + kTail, kSentinel), want = got;
        for (I k = 0; k < kc; ++k)
          for (I j = 0; j < nr; ++j) want[k * nr + j] = j < cols ? src[j * row_stride + k] : 0.0f;
        level.set.pack_transposed_panel_f32(src.data(), row_stride, cols, kc, got.data());
        expect_same_bits(describe(level, "pack_transposed_panel cols=%ld kc=%ld row_stride=%ld", cols, kc, row_stride),
                         got, want);
      }
}

// ---- Direct convolution -------------------------------------------------------------------

struct Taps {
  I R, S, dil_h, dil_w;
};

// `count` taps as R x S: a row of taps, or the most square factoring on odd variants.
Taps as_rectangle(I count, int variant) {
  I R = 1;
  if (variant % 2)
    for (I r = 1; r * r <= count; ++r)
      if (count % r == 0) R = r;
  return {R, count / R, 1, 1};
}

void test_direct_conv(const Level& level, Data& data) {
  const I lanes = level.lanes;
  const Taps taps[] = {{1, 1, 1, 1}, {3, 3, 1, 1}, {2, 3, 2, 1}, {5, 5, 1, 1}, {3, 2, 1, 3}};
  int variant = 0;
  for (I out_channels : {1, 2, 3, 4, 5, 6, 7, 13})
    for (I out_w : sizes({1, lanes - 1, lanes, lanes + 1, 2 * lanes + 1, 16 * lanes + 1}))
      for (I out_h : {1, 2, 5, 17})
        for (Values values : kBothValues) {
          ++variant;
          const Taps t = taps[variant % 5];
          const I in_channels = 1 + variant % 3;
          const bool with_bias = variant % 2 == 0, relu = variant % 7 < 2, some_rows = variant % 4 == 1;
          const I src_w = round_up(out_w, lanes) + t.dil_w * (t.S - 1);
          const I src_h = std::max<I>(out_h, juanji::cpu::kDirectBlockRows) + t.dil_h * (t.R - 1);
          const I data_h = out_h + t.dil_h * (t.R - 1), data_w = out_w + t.dil_w * (t.S - 1);
          // With some_rows the rows outside [rows_begin, rows_end) are zeros the kernel may skip.
          const I rows_begin = some_rows ? 1 : 0, rows_end = some_rows ? std::max<I>(data_h - 1, 1) : src_h;
          std::vector<float> src(in_channels * src_h * src_w, 0.0f);
          const std::vector<float> fill = data.make(src.size(), values);
          for (I c = 0; c < in_channels; ++c)
            for (I h = rows_begin; h < std::min(data_h, rows_end); ++h)
              for (I v = 0; v < data_w; ++v) src[(c * src_h + h) * src_w + v] = fill[(c * src_h + h) * src_w + v];
          const auto weights = data.make(out_channels * in_channels * t.R * t.S, values);
          const auto bias = data.make(out_channels, values);
          Output out(out_channels * out_h * out_w);
          for (I k = 0; k < out_channels; ++k)
            for (I p = 0; p < out_h; ++p)
              for (I q = 0; q < out_w; ++q) {
                double sum = 0, size = with_bias ? std::fabs(bias[k]) : 0.0;
                for (I c = 0; c < in_channels; ++c)
                  for (I r = 0; r < t.R; ++r)
                    for (I s = 0; s < t.S; ++s) {
                      const double product = double(weights[((k * in_channels + c) * t.R + r) * t.S + s]) *
                                             src[(c * src_h + p + r * t.dil_h) * src_w + q + s * t.dil_w];
                      sum += product;
                      size += std::fabs(product);
                    }
                double value = (with_bias ? bias[k] : 0.0) + sum;
                if (relu && value < 0) value = 0;
                out.must_hold((k * out_h + p) * out_w + q, value, size);
              }
          level.set.direct_conv_f32({src.data(), in_channels, src_h, src_w, weights.data(), t.R, t.S, t.dil_h,
                                     t.dil_w, with_bias ? bias.data() : nullptr, out.got.data(), out_channels, out_h,
                                     out_w, relu, rows_begin, rows_end});
          expect_close(describe(level,
                                "direct_conv K=%ld C=%ld %ldx%ld dil %ldx%ld out %ldx%ld bias=%d relu=%d "
                                "rows [%ld, %ld)",
                                out_channels, in_channels, t.R, t.S, t.dil_h, t.dil_w, out_h, out_w, with_bias, relu,
                                rows_begin, rows_end),
                       out.got, out.want, out.magnitude, values, kFloatTolerance);
        }
}

void test_direct_weight_grad(const Level& level, Data& data) {
  const I lanes = level.lanes;
  int variant = 0;
  // Every tap count to past two blocks of taps (12 or 16 per block), in rows of taps or squares.
  for (I tap_count = 1; tap_count <= 33; ++tap_count)
    for (I out_w : sizes({1, lanes - 1, lanes, lanes + 1, 2 * lanes + 1, 3 * lanes}))
      for (Values values : kBothValues) {
        ++variant;
        Taps t = as_rectangle(tap_count, variant);
        t.dil_h = 1 + variant % 2;
        t.dil_w = 1 + variant / 2 % 2;
        const I out_h = variant % 3 == 0 ? 1 : 4, images = variant % 5 < 2 ? 1 : 3;
        const I out_stride = round_up(out_w, lanes);
        const I src_w = out_stride + t.dil_w * (t.S - 1) + variant % 2, src_h = out_h + t.dil_h * (t.R - 1);
        const I src_image_stride = src_h * src_w + 5, grad_out_image_stride = out_h * out_stride + 3;
        // NaN wherever the definition reads nothing: columns past every tap's reach and the gaps
        // between images. The masked last vector keeps them out of the sums.
        std::vector<float> src = data.make(images * src_image_stride, values);
        for (I image = 0; image < images; ++image) {
          float* plane = src.data() + image * src_image_stride;
          for (I h = 0; h < src_h; ++h)
            std::fill(plane + h * src_w + out_w + t.dil_w * (t.S - 1), plane + (h + 1) * src_w, kNaN);
          std::fill(plane + src_h * src_w, plane + src_image_stride, kNaN);
        }
        std::vector<float> grad_out = data.make(images * grad_out_image_stride, values);
        for (I image = 0; image < images; ++image) {
          float* plane = grad_out.data() + image * grad_out_image_stride;
          for (I p = 0; p < out_h; ++p) std::fill(plane + p * out_stride + out_w, plane + (p + 1) * out_stride, 0.0f);
          std::fill(plane + out_h * out_stride, plane + grad_out_image_stride, kNaN);
        }
        const auto start = data.make(t.R * t.S, values);
        Output out(t.R * t.S);
        std::copy(start.begin(), start.end(), out.got.begin());
        for (I r = 0; r < t.R; ++r)
          for (I s = 0; s < t.S; ++s) {
            double sum = 0, size = std::fabs(start[r * t.S + s]);
            for (I image = 0; image < images; ++image)
              for (I p = 0; p < out_h; ++p)
                for (I q = 0; q < out_w; ++q) {
                  const double product = double(grad_out[image * grad_out_image_stride + p * out_stride + q]) *
                                         src[image * src_image_stride + (p + r * t.dil_h) * src_w + q + s * t.dil_w];
                  sum += product;
                  size += std::fabs(product);
                }
            out.must_hold(r * t.S + s, start[r * t.S + s] + sum, size);
          }
        level.set.direct_weight_grad_f32({src.data(), src_w, grad_out.data(), out_h, out_w, out_stride, t.R, t.S,
                                          t.dil_h, t.dil_w, images, src_image_stride, grad_out_image_stride,
                                          out.got.data()});
        expect_close(describe(level, "direct_weight_grad %ldx%ld dil %ldx%ld out %ldx%ld images=%ld", t.R, t.S, t.dil_h,
                              t.dil_w, out_h, out_w, images),
                     out.got, out.want, out.magnitude, values, kFloatTolerance);
      }
}

// ---- Images in the lanes ------------------------------------------------------------------

void test_image_lane_conv(const Level& level, Data& data) {
  const I lanes = level.lanes;
  const Taps taps[] = {{1, 1, 1, 1}, {3, 3, 1, 1}, {5, 5, 1, 1}, {3, 3, 2, 2}, {2, 4, 1, 1}};
  int variant = 0;
  for (I out_channels : {1, 2, 3, 4, 5, 6, 7, 13})
    for (I out_w = 1; out_w <= 17; ++out_w)
      for (Values values : kBothValues) {
        ++variant;
        const Taps t = taps[variant % 5];
        const I in_channels = 1 + variant % 2, out_h = 1 + variant % 4;
        const I top = std::min<I>(variant % 3, t.dil_h * (t.R - 1));
        // Source rows past the bottom too, where the taps reach beyond src_h.
        const I src_h = std::max<I>(out_h + t.dil_h * (t.R - 1) - top - variant % 2, 1);
        const I src_w = out_w + t.dil_w * (t.S - 1) + variant / 2 % 2;
        const bool some_columns = variant % 3 == 1 && src_w > 2;
        const I cols_begin = some_columns ? 1 : 0, cols_end = some_columns ? src_w - 1 : src_w;
        const I row_begin = out_h > 1 && variant % 5 == 2 ? 1 : 0, row_end = out_h;
        std::vector<float> src = data.make(in_channels * src_h * src_w * lanes, values);
        for (I row = 0; row < in_channels * src_h; ++row)
          for (I v = 0; v < src_w; ++v)
            if (v < cols_begin || v >= cols_end) std::fill_n(src.begin() + (row * src_w + v) * lanes, lanes, 0.0f);
        const auto weights = data.make(out_channels * in_channels * t.R * t.S, values);
        Output out(out_channels * out_h * out_w * lanes);
        for (I c = 0; c < out_channels; ++c)
          for (I i = row_begin; i < row_end; ++i)
            for (I j = 0; j < out_w; ++j)
              for (I l = 0; l < lanes; ++l) {
                double sum = 0, size = 0;
                for (I k = 0; k < in_channels; ++k)
                  for (I r = 0; r < t.R; ++r) {
                    const I row = i + r * t.dil_h - top;
                    if (row < 0 || row >= src_h) continue;
                    for (I s = 0; s < t.S; ++s) {
                      const double product = double(weights[((c * in_channels + k) * t.R + r) * t.S + s]) *
                                             src[((k * src_h + row) * src_w + j + s * t.dil_w) * lanes + l];
                      sum += product;
                      size += std::fabs(product);
                    }
                  }
                out.must_hold(((c * out_h + i) * out_w + j) * lanes + l, sum, size);
              }
        level.set.image_lane_conv_f32({src.data(), in_channels, src_h, src_w, cols_begin, cols_end, weights.data(),
                                       t.R, t.S, t.dil_h, t.dil_w, top, out.got.data(), out_channels, out_h, out_w,
                                       row_begin, row_end});
        expect_close(describe(level,
                              "image_lane_conv K=%ld C=%ld %ldx%ld dil %ldx%ld top=%ld src %ldx%ld cols [%ld, %ld) "
                              "out %ldx%ld rows [%ld, %ld)",
                              out_channels, in_channels, t.R, t.S, t.dil_h, t.dil_w, top, src_h, src_w, cols_begin,
                              cols_end, out_h, out_w, row_begin, row_end),
                     out.got, out.want, out.magnitude, values, kFloatTolerance);
      }
}

void test_to_image_lanes(const Level& level, Data& data) {
  const I lanes = level.lanes;
  int variant = 0;
  for (I images : sizes({1, lanes / 2, lanes - 1, lanes}))
    for (I width : sizes({1, lanes - 1, lanes, lanes + 1, 2 * lanes + 1}))
      for (I planes : {1, 2}) {
        ++variant;
        const I rows = variant % 2 ? 1 : 3, top = variant % 3 == 0 ? 1 : 0, left = variant % 4 < 2 ? 0 : 2;
        const I out_h = top + rows + variant % 2, out_w = left + width + variant / 2 % 2;
        const I image_stride = planes * rows * width + 3;
        std::vector<float> src = data.make(images * image_stride, Values::uniform);
        for (I l = 0; l < images; ++l) std::fill_n(src.begin() + l * image_stride + planes * rows * width, 3, kNaN);
        src.resize((images - 1) * image_stride + planes * rows * width);
        std::vector<float> got(planes * out_h * out_w * lanes + kTail, kSentinel), want = got;
        std::fill(want.begin(), want.end() - kTail, 0.0f);
        for (I plane = 0; plane < planes; ++plane)
          for (I p = 0; p < rows; ++p)
            for (I q = 0; q < width; ++q)
              for (I l = 0; l < images; ++l)
                want[((plane * out_h + top + p) * out_w + left + q) * lanes + l] =
                    src[l * image_stride + (plane * rows + p) * width + q];
        level.set.to_image_lanes_f32({src.data(), image_stride, images, planes, rows, width, got.data(), top, left,
                                      out_h, out_w});
        expect_same_bits(describe(level,
                                  "to_image_lanes images=%ld planes=%ld rows=%ld width=%ld at (%ld, %ld) of %ldx%ld",
                                  images, planes, rows, width, top, left, out_h, out_w),
                         got, want);
      }
}

void test_from_image_lanes(const Level& level, Data& data) {
  const I lanes = level.lanes;
  for (I width = 1; width <= lanes; ++width)
    for (I images : sizes({1, lanes - 1, lanes}))
      for (I rows : {1, 3}) {
        const I image_stride = rows * width + 2;
        const auto src = data.make(rows * width * lanes, Values::uniform);
        std::vector<float> got(images * image_stride + kTail, kSentinel), want = got;
        for (I row = 0; row < rows; ++row)
          for (I j = 0; j < width; ++j)
            for (I l = 0; l < images; ++l)
              want[l * image_stride + row * width + j] = src[(row * width + j) * lanes + l];
        level.set.from_image_lanes_f32(src.data(), rows, width, images, image_stride, got.data());
        expect_same_bits(describe(level, "from_image_lanes rows=%ld width=%ld images=%ld", rows, width, images), got,
                         want);
      }
}

void test_image_lane_weight_grad(const Level& level, Data& data) {
  const I lanes = level.lanes;
  struct Filter {
    I in_channels, R, S;
  };
  int variant = 0;
  // Every count of (channel, r, s) taps to past the largest pass (30), over channels and squares.
  for (I filters : {1, 2, 3, 4, 5, 7})
    for (I tap_count = 1; tap_count <= 31; ++tap_count)
      for (Values values : kBothValues) {
        ++variant;
        const Filter f = tap_count % 9 == 0   ? Filter{tap_count / 9, 3, 3}
                         : tap_count % 4 == 0 ? Filter{tap_count / 4, 2, 2}
                         : variant % 2        ? Filter{1, 1, tap_count}
                                              : Filter{tap_count, 1, 1};
        const I k0 = variant % 2, out_channels = k0 + filters + 1;
        const I dil_h = 1 + variant % 3 / 2, dil_w = 1 + variant % 5 / 4;
        const I out_h = 1 + 2 * (variant % 3), out_w = 1 + 2 * (variant / 3 % 3);
        const I src_h = out_h + dil_h * (f.R - 1), src_w = out_w + dil_w * (f.S - 1);
        const auto src = data.make(f.in_channels * src_h * src_w * lanes, values);
        const auto grad_out = data.make(out_channels * out_h * out_w * lanes, values);
        const I taps = f.in_channels * f.R * f.S;
        Output out(out_channels * taps);
        for (I k = k0; k < k0 + filters; ++k)
          for (I c = 0; c < f.in_channels; ++c)
            for (I r = 0; r < f.R; ++r)
              for (I s = 0; s < f.S; ++s) {
                double sum = 0, size = 0;
                for (I p = 0; p < out_h; ++p)
                  for (I q = 0; q < out_w; ++q)
                    for (I l = 0; l < lanes; ++l) {
                      const double product = double(grad_out[((k * out_h + p) * out_w + q) * lanes + l]) *
                                             src[((c * src_h + p + r * dil_h) * src_w + q + s * dil_w) * lanes + l];
                      sum += product;
                      size += std::fabs(product);
                    }
                out.must_hold(k * taps + (c * f.R + r) * f.S + s, sum, size);
              }
        level.set.image_lane_weight_grad_f32({src.data(), f.in_channels, src_h, src_w, grad_out.data(), out_h, out_w,
                                              f.R, f.S, dil_h, dil_w, k0, filters, out.got.data()});
        expect_close(describe(level, "image_lane_weight_grad filters [%ld, %ld) C=%ld %ldx%ld dil %ldx%ld out %ldx%ld",
                              k0, k0 + filters, f.in_channels, f.R, f.S, dil_h, dil_w, out_h, out_w),
                     out.got, out.want, out.magnitude, values, kFloatTolerance);
      }
}

// ---- Filter blocks ------------------------------------------------------------------------

// A zero-padded image of C channels read by taps (c, r, s) at a stride: tap t = (c * R + r) * S + s
// of output pixel (p, q) reads src[tap_offsets[t] + p * row_step + q * col_step].
struct TapLayout {
  I C, R, S, out_h, out_w, height, width, row_step, col_step;
  std::vector<I> tap_offsets;
  TapLayout(I C_, I R_, I S_, I dil, I stride, I out_h_, I out_w_)
      : C(C_), R(R_), S(S_), out_h(out_h_), out_w(out_w_),
        height((out_h_ - 1) * stride + dil * (R_ - 1) + 1), width((out_w_ - 1) * stride + dil * (S_ - 1) + 1),
        row_step(stride * width), col_step(stride) {
    for (I c = 0; c < C; ++c)
      for (I r = 0; r < R; ++r)
        for (I s = 0; s < S; ++s) tap_offsets.push_back((c * height + r * dil) * width + s * dil);
  }
  I taps() const { return C * R * S; }
  I size() const { return C * height * width; }
  I at(I tap, I p, I q) const { return tap_offsets[tap] + p * row_step + q * col_step; }
};

void test_filter_block_conv(const Level& level, Data& data) {
  struct Shape {
    I C, R, S;
  };
  const Shape shapes[] = {{1, 1, 1}, {2, 3, 3}, {3, 1, 5}, {1, 5, 5}};
  int variant = 0;
  for (I out_channels : {1, 7, 8, 15, 16, 17, 33})
    for (I out_w : {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 33})
      for (I stride : {1, 2})
        for (Values values : kBothValues) {
          ++variant;
          const Shape f = shapes[variant % 4];
          // Rows of 3 to 7 pixels go several to a pass: up to 7 of them, in groups of unequal sizes.
          const I dil = 1 + variant % 5 / 4, out_h = out_w <= 7 ? 1 + variant % 7 : 1 + variant % 3;
          const bool with_bias = variant % 2 == 1, relu = variant % 7 < 3;
          const TapLayout layout(f.C, f.R, f.S, dil, stride, out_h, out_w);
          const I taps = layout.taps(), blocks = (out_channels + 15) / 16;
          const auto src = data.make(layout.size(), values);
          std::vector<float> weights = data.make(blocks * taps * 16, values);
          for (I b = 0; b < blocks; ++b)
            for (I t = 0; t < taps; ++t)
              for (I k = 0; k < 16; ++k)
                if (b * 16 + k >= out_channels) weights[(b * taps + t) * 16 + k] = 0.0f;
          const auto bias = data.make(out_channels, values);
          // Every other case writes its planes apart, as a job of some of the rows does; a third
          // of them write every out_col_step-th value of rows out_row_step apart, as a phase of a
          // strided layer's data gradient does (the values between stay as they were).
          const I out_col_step = 1 + variant % 3 / 2 * (1 + variant % 2);
          const I out_row_step = out_col_step == 1 ? out_w : out_col_step * out_w + variant % 5;
          const I out_plane = out_h * out_row_step + (variant % 2) * 5;
          Output out(out_channels * out_plane);
          for (I k = 0; k < out_channels; ++k)
            for (I p = 0; p < out_h; ++p)
              for (I q = 0; q < out_w; ++q) {
                double sum = 0, size = with_bias ? std::fabs(bias[k]) : 0.0;
                for (I t = 0; t < taps; ++t) {
                  const double product = double(weights[(k / 16 * taps + t) * 16 + k % 16]) * src[layout.at(t, p, q)];
                  sum += product;
                  size += std::fabs(product);
                }
                double value = (with_bias ? bias[k] : 0.0) + sum;
                if (relu && value < 0) value = 0;
                out.must_hold(k * out_plane + p * out_row_step + q * out_col_step, value, size);
              }
          level.set.filter_block_conv_f32({src.data(), layout.tap_offsets.data(), taps, layout.row_step,
                                           layout.col_step, weights.data(), blocks,
                                           with_bias ? bias.data() : nullptr, out.got.data(), out_channels, out_h,
                                           out_w, out_plane, out_row_step, out_col_step, relu, variant % 3 == 0,
                                           weights.data(), blocks});
          expect_close(describe(level,
                                "filter_block_conv K=%ld C=%ld %ldx%ld stride %ld dil %ld out %ldx%ld (every %ld-th, rows "
                                "%ld apart) bias=%d relu=%d",
                                out_channels, f.C, f.R, f.S, stride, dil, out_h, out_w, out_col_step, out_row_step,
                                with_bias, relu),
                       out.got, out.want, out.magnitude, values, kFloatTolerance);
        }
}

void test_filter_block_weight_grad(const Level& level, Data& data) {
  struct Shape {
    I C, R, S;
  };
  int variant = 0;
  // Every tap count to past two passes of the most taps per pass (12).
  for (I tap_count = 1; tap_count <= 25; ++tap_count)
    for (I out_w : {1, 3, 7})
      for (Values values : kBothValues) {
        ++variant;
        const Shape f = tap_count % 9 == 0 ? Shape{tap_count / 9, 3, 3}
                        : variant % 2      ? Shape{1, 1, tap_count}
                                           : Shape{tap_count, 1, 1};
        const I stride = 1 + variant % 2, out_h = 1 + variant % 3;
        const TapLayout layout(f.C, f.R, f.S, 1 + variant % 5 / 4, stride, out_h, out_w);
        const I taps = layout.taps();
        // One block of filters, two (summed together on AVX-512) or three (a pair, then one); one
        // image, two or three, with gaps between them.
        const I blocks = 1 + variant % 3, images = 1 + variant / 3 % 3, grad_block = taps * 16 + 3;
        const I out_image = out_h * out_w * 16 + variant % 2, out_block = images * out_image + 5;
        const I src_image = layout.size() + 7;
        const auto src = data.make(images * src_image, values);
        const auto grad_out = data.make(blocks * out_block, values);
        const auto start = data.make(blocks * grad_block, values);
        Output out(blocks * grad_block);
        std::copy(start.begin(), start.end(), out.got.begin());
        for (I b = 0; b < blocks; ++b) {
          for (I t = 0; t < taps; ++t)
            for (I k = 0; k < 16; ++k) {
              const I at = b * grad_block + t * 16 + k;
              double sum = 0, size = std::fabs(start[at]);
              for (I m = 0; m < images; ++m)
                for (I p = 0; p < out_h; ++p)
                  for (I q = 0; q < out_w; ++q) {
                    const double product = double(grad_out[b * out_block + m * out_image + (p * out_w + q) * 16 + k]) *
                                           src[m * src_image + layout.at(t, p, q)];
                    sum += product;
                    size += std::fabs(product);
                  }
              out.must_hold(at, start[at] + sum, size);
            }
          for (I j = taps * 16; j < grad_block; ++j) out.must_hold(b * grad_block + j, start[b * grad_block + j], 0.0);
        }
        level.set.filter_block_weight_grad_f32({src.data(), layout.tap_offsets.data(), taps, layout.row_step,
                                                layout.col_step, grad_out.data(), out_h, out_w, out.got.data(), blocks,
                                                out_block, grad_block, images, src_image, out_image});
        expect_close(describe(level, "filter_block_weight_grad taps=%ld blocks=%ld images=%ld stride %ld out %ldx%ld",
                              taps, blocks, images, stride, out_h, out_w),
                     out.got, out.want, out.magnitude, values, kFloatTolerance);
      }
}

// ---- Depthwise ----------------------------------------------------------------------------

// Taps of a plane read as one long row of outputs in rows of `width`: offsets spread over a few
// rows and columns either side of an output (some before it, as the padding's taps read), in
// classes with windows of columns (all of them, one side cut, both, or none) as masks repeating
// every width / gcd(width, lanes) vectors, or no masks; a source long enough for every read of
// whole vectors, NaN where no output in its class's window reads.
struct FlatTaps {
  std::vector<I> offsets, lo, hi;
  I classes, per_class, width, lanes, period;
  bool masked;
  std::vector<std::int32_t> masks;
  std::vector<float> src;
  FlatTaps(I classes_, I per_class_, I width_, I count, I lanes_, int variant, Data& data, Values values)
      : classes(classes_), per_class(per_class_), width(width_), lanes(lanes_), masked(variant % 6 != 0) {
    const I front = 2 * width + 3;
    I last = 0;
    for (I t = 0; t < classes * per_class; ++t) {
      offsets.push_back(front + (t * 7 + variant) % 5 * width / 2 - 2 * width + (t + variant) % 7 - 3);
      last = std::max(last, offsets.back());
    }
    for (I c = 0; c < classes; ++c) {
      const int kind = (variant + int(c)) % 5;
      lo.push_back(kind == 1 || kind == 3 ? 1 + c % 2 : kind == 4 ? width : 0);
      hi.push_back(kind == 2 || kind == 3 ? width - 1 - c % 2 : width);
    }
    period = width / std::gcd(width, lanes);
    for (I v = 0; v < period; ++v)
      for (I c = 0; c < classes; ++c)
        for (I l = 0; l < lanes; ++l) masks.push_back(inside(c, v * lanes + l) ? -1 : 0);
    const auto values_at = data.make(last + round_up(count, lanes), values);
    src.assign(values_at.size(), kNaN);
    for (I t = 0; t < classes * per_class; ++t)
      for (I i = 0; i < count; ++i)
        if (inside(t / per_class, i)) src[offsets[t] + i] = values_at[offsets[t] + i];
  }
  bool inside(I c, I i) const { return !masked || (lo[c] <= i % width && i % width < hi[c]); }
  juanji::cpu::DepthwiseTaps taps() const {
    return {offsets.data(), classes, per_class, masked ? masks.data() : nullptr, period};
  }
};

void test_depthwise_conv(const Level& level, Data& data) {
  const I lanes = level.lanes;
  int variant = 0;
  // Rows of one vector or less and of several, with spare columns to squeeze out (1, 2, 4: some
  // vectors keep none) or none; blocks of a few vectors and past one block (12 or 16 sums) into
  // near-equal ones, with tails; 1, 9 and 25 taps; one plane or seven (planes of up to half a
  // block come up to 4 to a block: whole groups, then the planes left over), with and without bias.
  for (I rows : {1, 2, 5, 23})
    for (I out_w : sizes({1, 3, lanes - 1, lanes + 1, 3 * lanes + 2}))
      for (I spare : {0, 1, 2, 4})
        for (I taps : {1, 9, 25}) {
          ++variant;
          const Values values = variant % 2 ? Values::integers : Values::uniform;
          const I width = out_w + spare, count = rows * width, planes = variant % 3 == 0 ? 7 : 1;
          const I out_count = rows * out_w, out_plane = out_count + variant % 2;
          // Each plane's source; the planes' sources one after another.
          std::vector<FlatTaps> layouts;
          for (I p = 0; p < planes; ++p)
            layouts.emplace_back(1, taps, width, count, lanes, 6 * variant, data, values);  // unmasked
          const I src_plane = I(layouts[0].src.size());
          std::vector<float> src;
          for (const FlatTaps& layout : layouts) src.insert(src.end(), layout.src.begin(), layout.src.end());
          const bool relu = variant % 7 < 3, with_bias = variant % 4 != 1;
          const auto weights = data.make(planes * taps, values);
          const auto bias = data.make(planes, values);
          // The squeezing pattern: each vector's lanes of the rows' first out_w columns.
          const I period = width / std::gcd(width, lanes);
          std::vector<std::int32_t> keep;
          std::vector<I> kept;
          for (I v = 0; v < period && spare > 0; ++v) {
            kept.push_back(0);
            for (I l = 0; l < lanes; ++l)
              if ((v * lanes + l) % width < out_w) keep.push_back(std::int32_t(l)), ++kept.back();
            keep.resize((v + 1) * lanes, std::int32_t(lanes - 1));
          }
          Output out(planes * out_plane);
          for (I p = 0; p < planes; ++p)
            for (I row = 0; row < rows; ++row)
              for (I q = 0; q < out_w; ++q) {
                const I i = row * width + q;
                double sum = 0, size = with_bias ? std::fabs(bias[p]) : 0.0;
                for (I t = 0; t < taps; ++t) {
                  const double product = double(weights[p * taps + t]) * src[p * src_plane + layouts[p].offsets[t] + i];
                  sum += product;
                  size += std::fabs(product);
                }
                double value = (with_bias ? bias[p] : 0.0) + sum;
                if (relu && value < 0) value = 0;
                out.must_hold(p * out_plane + (spare > 0 ? row * out_w + q : i), value, size);
              }
          level.set.depthwise_conv_f32({src.data(), src_plane, layouts[0].offsets.data(), weights.data(), taps,
                                        with_bias ? bias.data() : nullptr, relu, out.got.data(), out_plane, planes,
                                        count, spare > 0 ? keep.data() : nullptr, kept.data(), period, out_count});
          expect_close(describe(level, "depthwise_conv %ld planes of %ld rows of %ld + %ld spare, %ld taps, relu=%d",
                                planes, rows, out_w, spare, taps, relu),
                       out.got, out.want, out.magnitude, values, kFloatTolerance);
        }
}

// Random taps over an unpadded plane of rows x width (count outputs): each tap's offset reaches up
// to a row and a column past either side of an output; its masks of lanes (per vector and tap) keep
// the outputs whose reads fall inside the plane, some of them left out at random.
struct UnpaddedTaps {
  std::vector<I> offsets;
  std::vector<std::uint32_t> masks;
  I taps, lanes;
  UnpaddedTaps(I tap_count, I rows, I width, I lane_count, Data& data) : taps(tap_count), lanes(lane_count) {
    const I count = rows * width, vectors = (count + lanes - 1) / lanes;
    for (I t = 0; t < taps; ++t) offsets.push_back(I(data.below(3)) - 1 + (I(data.below(3)) - 1) * width);
    for (I v = 0; v < vectors; ++v)
      for (I t = 0; t < taps; ++t) {
        std::uint32_t lanes_read = 0;
        for (I l = 0; l < lanes; ++l) {
          const I i = v * lanes + l, at = i + offsets[t];
          if (i < count && at >= 0 && at < count && data.below(5) != 0) lanes_read |= std::uint32_t{1} << l;
        }
        masks.push_back(lanes_read);
      }
  }
  bool reads(I t, I i) const { return masks[(i / lanes) * taps + t] >> (i % lanes) & 1; }
  // The masks as (taps, vectors), the correlation's order.
  std::vector<std::uint32_t> by_tap() const {
    const I vectors = I(masks.size()) / taps;
    std::vector<std::uint32_t> out;
    for (I t = 0; t < taps; ++t)
      for (I v = 0; v < vectors; ++v) out.push_back(masks[v * taps + t]);
    return out;
  }
};

// Unpadded planes, one after another with nothing around them, read through UnpaddedTaps' masks:
// the lanes left out (in a neighbouring plane or outside the buffer) must stay unread
// (AddressSanitizer, and sums that would differ). Seven planes: blocks of several planes (up to
// 4 of small planes, 2 of up to 14 vectors at the AVX-512 level) and the planes left over.
void test_depthwise_conv_unpadded(const Level& level, Data& data) {
  const I lanes = level.lanes;
  int variant = 0;
  for (I rows : {1, 3, 7})
    for (I width : sizes({1, 2, 7, lanes - 1, lanes + 1, lanes + 11, 2 * lanes + 3}))
      for (I taps : {1, 9, 25}) {
        ++variant;
        const Values values = variant % 2 ? Values::integers : Values::uniform;
        const I count = rows * width, planes = variant % 3 == 0 ? 7 : 1;
        const auto src = data.make(planes * count, values);
        const UnpaddedTaps unpadded(taps, rows, width, lanes, data);
        const bool relu = variant % 7 < 3, with_bias = variant % 4 != 1;
        const auto weights = data.make(planes * taps, values);
        const auto bias = data.make(planes, values);
        const I out_plane = count + variant % 2;
        Output out(planes * out_plane);
        for (I p = 0; p < planes; ++p)
          for (I i = 0; i < count; ++i) {
            double sum = 0, size = with_bias ? std::fabs(bias[p]) : 0.0;
            for (I t = 0; t < taps; ++t)
              if (unpadded.reads(t, i)) {
                const double product = double(weights[p * taps + t]) * src[p * count + i + unpadded.offsets[t]];
                sum += product;
                size += std::fabs(product);
              }
            double value = (with_bias ? bias[p] : 0.0) + sum;
            if (relu && value < 0) value = 0;
            out.must_hold(p * out_plane + i, value, size);
          }
        juanji::cpu::DepthwiseConvArgs args{src.data(),     count,     unpadded.offsets.data(),
                                            weights.data(),  taps,      with_bias ? bias.data() : nullptr,
                                            relu,            out.got.data(), out_plane,
                                            planes,          count,     nullptr,
                                            nullptr,         1,         count};
        const std::vector<std::uint32_t> masks_by_tap = unpadded.by_tap();
        args.lane_masks = masks_by_tap.data();
        level.set.depthwise_conv_f32(args);
        expect_close(describe(level, "depthwise_conv unpadded: %ld planes of %ld rows of %ld, %ld taps, relu=%d", planes,
                              rows, width, taps, relu),
                     out.got, out.want, out.magnitude, values, kFloatTolerance);
      }
}

void test_depthwise_weight_grad(const Level& level, Data& data) {
  const I lanes = level.lanes;
  struct Shape {
    I classes, per_class;
  };
  std::vector<Shape> shapes;
  // One class: every tap count to past two blocks of taps (10 or 16 per block); more classes: up
  // to three taps each.
  for (I taps = 1; taps <= 33; ++taps) shapes.push_back({1, taps});
  for (I classes : {2, 3})
    for (I per_class = 1; per_class <= juanji::cpu::kDepthwiseClassTaps; ++per_class)
      shapes.push_back({classes, per_class});
  int variant = 0;
  for (const Shape& shape : shapes)
    for (I count : sizes({1, lanes - 1, lanes + 1, 5 * lanes + 3}))
      for (Values values : kBothValues) {
        ++variant;
        const I width = 1 + variant % 13, taps = shape.classes * shape.per_class;
        const I planes = variant % 3 == 0 ? 3 : 1, grad_plane = count + variant % 2;
        // Each plane's source, the sources one after another, the same taps and masks for all.
        std::vector<FlatTaps> layouts;
        for (I p = 0; p < planes; ++p)
          layouts.emplace_back(shape.classes, shape.per_class, width, count, lanes, variant, data, values);
        const I src_plane = I(layouts[0].src.size());
        std::vector<float> src;
        for (const FlatTaps& layout : layouts) src.insert(src.end(), layout.src.begin(), layout.src.end());
        // The errors, grad_plane floats apart: NaN between them and after the last.
        std::vector<float> grad_out(planes * grad_plane + kTail, kNaN);
        for (I p = 0; p < planes; ++p) {
          const std::vector<float> plane = data.make(count, values);
          std::copy(plane.begin(), plane.end(), grad_out.begin() + p * grad_plane);
        }
        // The error's sum after the taps, where asked for.
        const bool with_sum = variant % 3 != 1;
        Output out(taps + 1);
        if (with_sum) {
          double sum = 0, size = 0;
          for (I p = 0; p < planes; ++p)
            for (I i = 0; i < count; ++i) {
              sum += grad_out[p * grad_plane + i];
              size += std::fabs(grad_out[p * grad_plane + i]);
            }
          out.must_hold(taps, sum, size);
        }
        const FlatTaps& layout = layouts[0];
        for (I t = 0; t < taps; ++t) {
          double sum = 0, size = 0;
          for (I p = 0; p < planes; ++p)
            for (I i = 0; i < count; ++i) {
              if (!layout.inside(t / shape.per_class, i)) continue;
              const double product = double(grad_out[p * grad_plane + i]) * src[p * src_plane + layout.offsets[t] + i];
              sum += product;
              size += std::fabs(product);
            }
          out.must_hold(t, sum, size);
        }
        level.set.depthwise_weight_grad_f32({src.data(), src_plane, layout.taps(), grad_out.data(), grad_plane, count,
                                             planes, out.got.data(), with_sum ? out.got.data() + taps : nullptr});
        expect_close(
            describe(level, "depthwise_weight_grad %ld planes, taps %ldx%ld count %ld width %ld variant %d sum=%d",
                     planes, shape.classes, shape.per_class, count, width, variant, with_sum),
            out.got, out.want, out.magnitude, values, kFloatTolerance);
      }
}

// The weight gradient of unpadded planes, likewise (one class of taps, in blocks past one block's
// 10 or 16).
void test_depthwise_weight_grad_unpadded(const Level& level, Data& data) {
  const I lanes = level.lanes;
  int variant = 0;
  for (I rows : {1, 4})
    for (I width : sizes({1, 3, 7, lanes + 1, 2 * lanes + 3}))
      for (I taps : {1, 9, 25})
        for (Values values : kBothValues) {
          ++variant;
          const I count = rows * width, planes = variant % 3 == 0 ? 5 : 1;
          const I grad_plane = count + variant % 2;
          const auto src = data.make(planes * count, values);
          std::vector<float> grad_out(planes * grad_plane + kTail, kNaN);
          for (I p = 0; p < planes; ++p) {
            const std::vector<float> plane = data.make(count, values);
            std::copy(plane.begin(), plane.end(), grad_out.begin() + p * grad_plane);
          }
          const UnpaddedTaps unpadded(taps, rows, width, lanes, data);
          const bool with_sum = variant % 3 != 1;
          Output out(taps + 1);
          if (with_sum) {
            double sum = 0, size = 0;
            for (I p = 0; p < planes; ++p)
              for (I i = 0; i < count; ++i) {
                sum += grad_out[p * grad_plane + i];
                size += std::fabs(grad_out[p * grad_plane + i]);
              }
            out.must_hold(taps, sum, size);
          }
          for (I t = 0; t < taps; ++t) {
            double sum = 0, size = 0;
            for (I p = 0; p < planes; ++p)
              for (I i = 0; i < count; ++i)
                if (unpadded.reads(t, i)) {
                  const double product =
                      double(grad_out[p * grad_plane + i]) * src[p * count + unpadded.offsets[t] + i];
                  sum += product;
                  size += std::fabs(product);
                }
            out.must_hold(t, sum, size);
          }
          juanji::cpu::DepthwiseTaps one_class{unpadded.offsets.data(), 1, taps, nullptr, 1};
          one_class.lane_masks = unpadded.masks.data();
          level.set.depthwise_weight_grad_f32({src.data(), count, one_class, grad_out.data(), grad_plane, count, planes,
                                               out.got.data(), with_sum ? out.got.data() + taps : nullptr});
          expect_close(describe(level, "depthwise_weight_grad unpadded: %ld planes of %ld rows of %ld, %ld taps, sum=%d",
                                planes, rows, width, taps, with_sum),
                       out.got, out.want, out.magnitude, values, kFloatTolerance);
        }
}

// Rows into the depthwise layout: copied, split and spread, rows of less than a vector and of
// several with tails, into rows with spare columns or none; one plane or two. The `lanes` floats
// after each row's values may get zeros (the layouts keep zeros there).
void test_depthwise_rows(const Level& level, Data& data) {
  using juanji::cpu::DepthwiseRowMove;
  const I lanes = level.lanes;
  int variant = 0;
  for (I count : sizes({1, 2, lanes / 2 - 1, lanes / 2 + 1, lanes - 1, lanes, lanes + 1, 2 * lanes + 1, 4 * lanes + 3}))
    for (I rows : {1, 3})
      for (DepthwiseRowMove move : {DepthwiseRowMove::copy, DepthwiseRowMove::split, DepthwiseRowMove::spread}) {
        ++variant;
        const bool copy = move == DepthwiseRowMove::copy, split = move == DepthwiseRowMove::split;
        const I planes = 1 + variant % 2, src_stride = count + variant % 3, spare = variant % 2 * 2;
        const I written = split ? (count + 1) / 2 : copy ? count : 2 * count;
        const I out_stride = written + spare, odd_offset = split ? rows * out_stride + lanes + 1 : 0;
        const I src_plane = rows * src_stride + 1, out_plane = odd_offset + rows * out_stride + lanes + 1;
        const auto src = data.make(planes * src_plane, Values::uniform);
        Output out(planes * out_plane);
        // Where each row's values end (split: in each of its two rows), then the values themselves.
        for (I p = 0; p < planes; ++p)
          for (I r = 0; r < rows; ++r) {
            const I row = p * out_plane + r * out_stride;
            for (I j = 0; j < lanes; ++j) {
              out.must_hold(row + written + j, 0.0, kAnyValue);
              if (split) out.must_hold(odd_offset + row + count / 2 + j, 0.0, kAnyValue);
            }
          }
        for (I p = 0; p < planes; ++p)
          for (I r = 0; r < rows; ++r)
            for (I j = 0; j < count; ++j) {
              const I row = p * out_plane + r * out_stride;
              const I to = split ? row + (j % 2 ? odd_offset : 0) + j / 2 : row + (copy ? j : 2 * j);
              out.must_hold(to, src[p * src_plane + r * src_stride + j], 0.0);
              if (!copy && !split) out.must_hold(to + 1, 0.0, 0.0);
            }
        level.set.depthwise_rows_f32({src.data(), src_stride, rows, count, out.got.data(), out_stride, move,
                                      odd_offset, planes, src_plane, out_plane});
        expect_close(describe(level, "depthwise_rows count %ld rows %ld move %d spare %ld planes %ld", count, rows,
                              int(move), spare, planes),
                     out.got, out.want, out.magnitude, Values::uniform, kFloatTolerance);
      }
}

// Merge: two rows of column phases into one row, out[2c] from the even phase's row and out[2c + 1]
// from the odd one's (odd_offset floats on), nothing written past `count` (the sentinels stay).
void test_depthwise_rows_merge(const Level& level, Data& data) {
  const I lanes = level.lanes;
  int variant = 0;
  for (I count : sizes({1, 2, 3, lanes - 1, lanes, lanes + 1, 2 * lanes - 1, 2 * lanes, 2 * lanes + 1, 4 * lanes + 3}))
    for (I rows : {1, 3}) {
      ++variant;
      const I planes = 1 + variant % 2, src_stride = (count + 1) / 2 + variant % 3;
      const I odd_offset = rows * src_stride + 1 + variant % 2, src_plane = 2 * odd_offset + 2;
      const I out_stride = count + variant % 3, out_plane = rows * out_stride + 1;
      const auto src = data.make(planes * src_plane, Values::uniform);
      Output out(planes * out_plane);
      for (I p = 0; p < planes; ++p)
        for (I r = 0; r < rows; ++r)
          for (I j = 0; j < count; ++j)
            out.must_hold(p * out_plane + r * out_stride + j,
                          src[p * src_plane + r * src_stride + (j % 2 ? odd_offset : 0) + j / 2], 0.0);
      level.set.depthwise_rows_f32({src.data(), src_stride, rows, count, out.got.data(), out_stride,
                                    juanji::cpu::DepthwiseRowMove::merge, odd_offset, planes, src_plane, out_plane});
      expect_close(describe(level, "depthwise_rows merge count %ld rows %ld planes %ld", count, rows, planes),
                   out.got, out.want, out.magnitude, Values::uniform, 0.0);
    }
}

// ---- Winograd F(2x2, 3x3) -----------------------------------------------------------------

constexpr double kBT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
constexpr double kAT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};

// The row ranges of the transforms a caller may ask for: all four, the top two, the bottom two.
constexpr int kTransformRows[3][2] = {{0, 4}, {0, 2}, {2, 4}};

// (B^T d B)[a][b] for d[i][j] = tile(i, j), and its magnitude.
template <class Tile>
std::pair<double, double> input_transform(int a, int b, Tile tile) {
  double value = 0, size = 0;
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      value += kBT[a][i] * tile(i, j) * kBT[b][j];
      size += std::fabs(kBT[a][i] * tile(i, j) * kBT[b][j]);
    }
  return {value, size};
}

// Where a run of tiles' inputs lie in a plane: its first row and column there (negative: in the
// padding), and the plane's rows and columns read, fewer than it holds where cut (the rest must
// read as zeros).
struct InputWindow {
  I top, left, rows_cut, cols_cut;
};
constexpr InputWindow kInputWindows[] = {{0, 0, 0, 0}, {-1, -1, 0, 0}, {-1, -1, 1, 1}, {-2, 1, 0, 2}, {1, -3, 2, 0}};

// Planes (the channels of an image) for a run of `tiles` tiles (`tile_rows` rows of them) read
// through `window`: NaN in every float the kernel must not read (the rows and columns cut, the row
// ends, the floats between the planes and around them), so that reading one shows in the outputs.
struct InputPlanes {
  std::vector<float> floats;
  juanji::cpu::WinogradInputRows in;

  InputPlanes(Data& data, Values values, I planes, I tiles, I tile_rows, const InputWindow& window) {
    const I row_stride = 2 * tiles + 2 + 5;
    const I rows = 2 * tile_rows + 2 + window.top, cols = 2 * tiles + 2 + window.left;
    const I plane_stride = (rows + 3) * row_stride + 7, margin = 3 * row_stride + 64;
    floats.assign(2 * margin + planes * plane_stride, kNaN);
    const I read_rows = rows - window.rows_cut, read_cols = std::max<I>(cols - window.cols_cut, 0);
    in = {floats.data() + margin, row_stride, read_rows, read_cols, window.top, window.left, planes, plane_stride};
    for (I p = 0; p < planes; ++p) {
      const auto values_made = data.make(read_rows * read_cols, values);
      for (I i = 0; i < read_rows; ++i)
        for (I j = 0; j < read_cols; ++j)
          floats[margin + p * plane_stride + i * row_stride + j] = values_made[i * read_cols + j];
    }
  }

  // Plane p's zero-padded input at (r, j) from the run's top left.
  float at(I p, I r, I j) const {
    const I i = in.top + r, col = in.left + j;
    return i >= 0 && i < in.rows && col >= 0 && col < in.cols ? in.plane[p * in.plane_stride + i * in.row_stride + col]
                                                             : 0.0f;
  }
};

void test_winograd_input_row(const Level& level, Data& data) {
  const I lanes = level.lanes;
  for (I tiles : sizes({1, 2, 3, lanes - 1, lanes, lanes + 1, 2 * lanes + 1, 33}))
    for (I planes : {1, 3})
      for (const InputWindow& window : kInputWindows)
        for (Values values : kBothValues) {
          const InputPlanes input(data, values, planes, tiles, 1, window);
          const I stride = round_up(tiles, 16) + 16, v_plane = 16 * stride + 5;
          std::vector<float> full(planes * v_plane, kSentinel);
          level.set.winograd_input_row_f32(input.in, tiles, full.data(), v_plane, stride, 0, 4);
          for (const auto& range : kTransformRows) {
            Output out(planes * v_plane);
            for (I p = 0; p < planes; ++p)
              for (int e = 4 * range[0]; e < 4 * range[1]; ++e) {
                // Whole vectors are stored: up to 15 floats past each run may change.
                for (I t = tiles; t < tiles + 15; ++t) out.must_hold(p * v_plane + e * stride + t, 0, kAnyValue);
                for (I t = 0; t < tiles; ++t) {
                  const auto [value, size] =
                      input_transform(e / 4, e % 4, [&](int i, int j) { return input.at(p, i, 2 * t + j); });
                  out.must_hold(p * v_plane + e * stride + t, value, size);
                }
              }
            level.set.winograd_input_row_f32(input.in, tiles, out.got.data(), v_plane, stride, range[0], range[1]);
            const std::string what =
                describe(level, "winograd_input_row tiles=%ld planes=%ld window (%ld, %ld) cut (%ld, %ld) rows [%d, %d)",
                         tiles, planes, window.top, window.left, window.rows_cut, window.cols_cut, range[0], range[1]);
            expect_close(what, out.got, out.want, out.magnitude, values, kFloatTolerance);
            bool same_as_full = true;
            for (I p = 0; p < planes; ++p)
              for (int e = 4 * range[0]; e < 4 * range[1]; ++e)
                for (I t = 0; t < tiles; ++t) {
                  const I i = p * v_plane + e * stride + t;
                  same_as_full &= same_bits(out.got[i], full[i]);
                }
            expect(same_as_full, what + ": values as the full transform makes them");
          }
        }
}

void test_winograd_input_row_pair(const Level& level, Data& data) {
  const I lanes = level.lanes, stride = lanes + 5, v_plane = 16 * stride + 3;
  for (I tiles = 1; tiles <= lanes / 2; ++tiles)
    for (I planes : {1, 3})
      for (const InputWindow& window : kInputWindows)
        for (Values values : kBothValues)
          for (const auto& range : kTransformRows) {
            const InputPlanes input(data, values, planes, tiles, 2, window);
            Output out(planes * v_plane);
            for (I p = 0; p < planes; ++p)
              for (int e = 4 * range[0]; e < 4 * range[1]; ++e) {
                // Lanes past both rows' tiles may be overwritten.
                for (I t = 2 * tiles; t < lanes; ++t) out.must_hold(p * v_plane + e * stride + t, 0, kAnyValue);
                for (I t = 0; t < 2 * tiles; ++t) {
                  const I first_row = t < tiles ? 0 : 2, column = 2 * (t % tiles);
                  const auto [value, size] = input_transform(
                      e / 4, e % 4, [&](int i, int j) { return input.at(p, first_row + i, column + j); });
                  out.must_hold(p * v_plane + e * stride + t, value, size);
                }
              }
            level.set.winograd_input_row_pair_f32(input.in, tiles, out.got.data(), v_plane, stride, range[0], range[1]);
            expect_close(
                describe(level, "winograd_input_row_pair tiles=%ld planes=%ld window (%ld, %ld) cut (%ld, %ld) rows [%d, %d)",
                         tiles, planes, window.top, window.left, window.rows_cut, window.cols_cut, range[0], range[1]),
                out.got, out.want, out.magnitude, values, kFloatTolerance);
          }
}

// One block of filters, or two (the AVX-512 kernel sums a pair together) or three (a pair, then
// one alone), their u and m apart.
void test_winograd_products(const Level& level, Data& data) {
  int variant = 0;
  for (I channels : {1, 2, 5, 17})
    for (I tiles = 1; tiles <= 33; ++tiles)
      for (Values values : kBothValues) {
        ++variant;
        const I blocks = 1 + variant % 3, v_row = tiles + variant % 4, v_stride = channels * v_row + 3;
        const I m_stride = tiles * 16 + 5;
        const I u_block = 16 * channels * 16 + variant % 2, m_block = 16 * m_stride + 7;
        const auto u = data.make(blocks * u_block, values);
        const auto v = data.make(16 * v_stride, values);
        Output m(blocks * m_block);
        for (I b = 0; b < blocks; ++b)
          for (I e = 0; e < 16; ++e)
            for (I t = 0; t < tiles; ++t)
              for (I k = 0; k < 16; ++k) {
                double sum = 0, size = 0;
                for (I c = 0; c < channels; ++c) {
                  const double product =
                      double(u[b * u_block + (e * channels + c) * 16 + k]) * v[e * v_stride + c * v_row + t];
                  sum += product;
                  size += std::fabs(product);
                }
                m.must_hold(b * m_block + e * m_stride + t * 16 + k, sum, size);
              }
        level.set.winograd_products_f32(
            {u.data(), v.data(), channels, tiles, v_row, v_stride, m.got.data(), m_stride, blocks, u_block, m_block});
        expect_close(describe(level, "winograd_products channels=%ld tiles=%ld blocks=%ld", channels, tiles, blocks),
                     m.got, m.want, m.magnitude, values, kFloatTolerance);
      }
}

void test_winograd_output(const Level& level, Data& data) {
  const I lanes = level.lanes;
  // Runs of tiles as (tiles, rows, odd): one alone, and runs that share a transpose (short ones
  // packed together, one that does not fit what is left, one longer than a transpose after them).
  std::vector<std::vector<std::array<I, 3>>> run_sets;
  for (I tiles : sizes({1, 2, lanes / 2, lanes / 2 + 1, lanes + 1, 9}))
    for (I rows : {1, 2})
      for (I odd : {0, 1}) run_sets.push_back({{tiles, rows, odd}});
  run_sets.push_back({{2, 2, 0}, {2, 2, 0}, {2, 2, 0}, {2, 2, 0}, {2, 2, 0}});
  run_sets.push_back({{4, 2, 1}, {4, 1, 1}, {4, 2, 0}});
  run_sets.push_back({{1, 2, 1}, {3, 2, 0}, {2, 1, 1}, {lanes / 2 + 1, 2, 1}, {2, 2, 0}});
  run_sets.push_back({{3, 1, 0}, {lanes + 1, 2, 1}, {1, 1, 1}, {9, 2, 0}});
  int variant = 0;
  // Up to 16 filters: the kernel's contract (16 biases, tiles 16 values apart in m).
  for (I filters : sizes({1, lanes - 1, std::min<I>(lanes, 16), std::min<I>(lanes + 1, 16), 15, 16}))
    for (const auto& set : run_sets)
      for (Values values : kBothValues) {
        ++variant;
        const bool relu = variant % 3 == 0;
        I tiles = 0, widest = 0;
        for (const auto& run : set) tiles += run[0], widest = std::max(widest, 2 * run[0]);
        // Each run in its own rows of the planes, with a gap after its columns and rows.
        const I row = widest + 2, run_area = 2 * row + 3, plane = I(set.size()) * run_area + 1;
        const I m_stride = tiles * 16 + 3;
        const auto m = data.make(16 * m_stride, values);
        const auto bias = data.make(16, values);
        Output out(filters * plane);
        std::vector<juanji::cpu::WinogradOutputRun> runs;
        I first_tile = 0;
        for (std::size_t r = 0; r < set.size(); ++r) {
          const auto [run_tiles, rows, odd] = set[r];
          const juanji::cpu::WinogradOutputRun run{I(r) * run_area + 1, run_tiles, rows, 2 * run_tiles - odd};
          runs.push_back(run);
          for (I k = 0; k < filters; ++k)
            for (I u = 0; u < run_tiles; ++u)
              for (I i = 0; i < rows; ++i)
                for (I j = 0; j < 2 && 2 * u + j < run.columns; ++j) {
                  const I t = first_tile + u;
                  double value = bias[k], size = std::fabs(bias[k]);
                  for (int a = 0; a < 4; ++a)
                    for (int b = 0; b < 4; ++b) {
                      const double term = kAT[i][a] * m[(4 * a + b) * m_stride + t * 16 + k] * kAT[j][b];
                      value += term;
                      size += std::fabs(term);
                    }
                  if (relu && value < 0) value = 0;
                  out.must_hold(run.offset + k * plane + i * row + 2 * u + j, value, size);
                }
          first_tile += run_tiles;
        }
        level.set.winograd_output_f32({m.data(), m_stride, runs.data(), I(runs.size()), bias.data(), relu,
                                       out.got.data(), filters, plane, row});
        expect_close(describe(level, "winograd_output filters=%ld runs=%ld first tiles=%ld relu=%d", filters,
                              I(runs.size()), set[0][0], relu),
                     out.got, out.want, out.magnitude, values, kFloatTolerance);
      }
}

void test_winograd_grad_row(const Level& level, Data& data) {
  const I lanes = level.lanes;
  for (I tiles : sizes({1, 2, 3, 7, lanes + 1}))
    for (I extra : {0, 1})
      for (Values values : kBothValues) {
        const I row = 2 * tiles + extra, stride = tiles * 16 + 7;
        const auto errors = data.make(2 * row * 16, values);
        std::vector<float> full(16 * stride, kSentinel);
        level.set.winograd_grad_row_f32(errors.data(), row, tiles, full.data(), stride, 0, 4);
        for (const auto& range : kTransformRows) {
          Output z(16 * stride);
          for (int e = 4 * range[0]; e < 4 * range[1]; ++e)
            for (I t = 0; t < tiles; ++t)
              for (I k = 0; k < 16; ++k) {
                double value = 0, size = 0;  // (A d A^T)[a][b] with A = (A^T)^T
                for (int i = 0; i < 2; ++i)
                  for (int j = 0; j < 2; ++j) {
                    const double term = kAT[i][e / 4] * errors[(i * row + 2 * t + j) * 16 + k] * kAT[j][e % 4];
                    value += term;
                    size += std::fabs(term);
                  }
                z.must_hold(e * stride + t * 16 + k, value, size);
              }
          level.set.winograd_grad_row_f32(errors.data(), row, tiles, z.got.data(), stride, range[0], range[1]);
          const std::string what =
              describe(level, "winograd_grad_row tiles=%ld row=%ld rows [%d, %d)", tiles, row, range[0], range[1]);
          bool same_as_full = true;
          for (int e = 4 * range[0]; e < 4 * range[1]; ++e)
            for (I i = 0; i < tiles * 16; ++i) same_as_full &= same_bits(z.got[e * stride + i], full[e * stride + i]);
          expect(same_as_full, what + ": values as the full transform makes them");
          // The transform negates errors, so a zero may come out as -0: its sign is no part of the
          // definition (and vanishes in the products' sums, which start at +0).
          for (float& v : z.got) v = v == 0.0f ? 0.0f : v;
          expect_close(what, z.got, z.want, z.magnitude, values, kFloatTolerance);
        }
      }
}

// out[q * 16 + k] = src[k * plane_stride + q] for q < width and k < planes, zero for the rest of
// q < out_width.
void test_pixel_major_row(const Level& level, Data& data) {
  const I lanes = level.lanes;
  for (I planes : sizes({1, 2, lanes - 1, lanes, lanes + 1, 15, 16}))
    for (I width : sizes({1, lanes - 1, lanes, lanes + 1, 2 * lanes + 3}))
      for (I out_width : sizes({width, width + 1, round_up(width, lanes) + 1})) {
        const I plane_stride = width + 2;
        std::vector<float> src = data.make(planes * plane_stride, Values::uniform);
        for (I k = 0; k < planes; ++k) std::fill_n(src.begin() + k * plane_stride + width, 2, kNaN);
        std::vector<float> got(out_width * 16 + kTail, kSentinel), want = got;
        for (I q = 0; q < out_width; ++q)
          for (I k = 0; k < 16; ++k) want[q * 16 + k] = q < width && k < planes ? src[k * plane_stride + q] : 0.0f;
        level.set.pixel_major_row_f32(src.data(), plane_stride, planes, width, out_width, got.data());
        expect_same_bits(
            describe(level, "pixel_major_row planes=%ld width=%ld out_width=%ld", planes, width, out_width), got, want);
      }
}

// One to three blocks (a pair, then one alone) with their z and du apart by a gap.
void test_winograd_weight_products(const Level& level, Data& data) {
  int variant = 0;
  for (I blocks = 1; blocks <= 3; ++blocks)
    for (I channels = 1; channels <= 25; ++channels)
      for (I tiles : {1, 3, 17})
        for (Values values : kBothValues) {
          ++variant;
          const bool accumulate = variant % 2 == 0;
          const I v_row = tiles + 2 * (variant % 3 == 0);
          const I z_block = tiles * 16 + 5, du_block = channels * 16 + 7;
          const auto z = data.make(blocks * z_block, values);
          std::vector<float> v = data.make(channels * v_row, values);
          for (I c = 0; c < channels; ++c) std::fill(v.begin() + c * v_row + tiles, v.begin() + (c + 1) * v_row, kNaN);
          const auto start = data.make(blocks * du_block, values);
          Output du(blocks * du_block);
          std::copy(start.begin(), start.end(), du.got.begin());
          for (I b = 0; b < blocks; ++b) {
            // The gaps between the blocks' gradients keep their values.
            for (I i = channels * 16; i < du_block; ++i) du.must_hold(b * du_block + i, start[b * du_block + i], 0.0);
            for (I c = 0; c < channels; ++c)
              for (I k = 0; k < 16; ++k) {
                const I at = b * du_block + c * 16 + k;
                double sum = 0, size = accumulate ? std::fabs(start[at]) : 0.0;
                for (I t = 0; t < tiles; ++t) {
                  const double product = double(z[b * z_block + t * 16 + k]) * v[c * v_row + t];
                  sum += product;
                  size += std::fabs(product);
                }
                du.must_hold(at, (accumulate ? start[at] : 0.0) + sum, size);
              }
          }
          level.set.winograd_weight_products_f32({z.data(), v.data(), tiles, v_row, channels, du.got.data(), accumulate,
                                                  blocks, z_block, du_block});
          expect_close(describe(level, "winograd_weight_products blocks=%ld channels=%ld tiles=%ld v_row=%ld accumulate=%d",
                                blocks, channels, tiles, v_row, accumulate),
                       du.got, du.want, du.magnitude, values, kFloatTolerance);
        }
}

// ---- Pooling ------------------------------------------------------------------------------

// Values with ties: small integers; or uniform ones with NaNs and zeros of both signs among them.
std::vector<float> pooling_values(Data& data, I n, Values values) {
  std::vector<float> out = data.make(n, values);
  if (values == Values::uniform)
    for (float& v : out) {
      const I pick = data.below(16);
      if (pick == 0) v = kNaN;
      if (pick == 1) v = 0.0f;
      if (pick == 2) v = -0.0f;
    }
  return out;
}

void test_max_pool_2x2(const Level& level, Data& data) {
  const I lanes = level.lanes;
  int variant = 0;
  for (I count : sizes({1, lanes / 2, lanes - 1, lanes, lanes + 1, 2 * lanes - 1, 2 * lanes + 3}))
    for (I extra : {0, 1})
      for (bool normalize : {false, true})
        for (Values values : kBothValues) {
          ++variant;
          const I width = 2 * count + extra, rows = variant % 2 ? 1 : 3, out_stride = count + 2;
          const I arg_base = variant % 3 == 0 ? 1000 : 0;
          const bool with_argmax = variant % 4 != 1;
          const float scale = variant % 2 ? 0.5f : -1.25f, shift = 0.25f;
          const auto x = pooling_values(data, 2 * rows * width, values);
          std::vector<float> got(rows * out_stride + kTail, kSentinel), want = got;
          std::vector<I> got_argmax(rows * out_stride + kTail, -5), want_argmax = got_argmax;
          for (I r = 0; r < rows; ++r)
            for (I q = 0; q < count; ++q) {
              const I offsets[4] = {0, 1, width, width + 1};
              I best = -1;
              float best_value = 0;
              for (I offset : offsets) {
                float v = x[2 * r * width + 2 * q + offset];
                if (normalize) {
                  const float product = v * scale;
                  v = product + shift;
                  v = v < 0.0f ? 0.0f : v;
                }
                // The first maximum, a NaN over any number, the first NaN.
                if (best < 0 || (best_value == best_value && (v != v || v > best_value))) {
                  best = offset;
                  best_value = v;
                }
              }
              want[r * out_stride + q] = best_value;
              want_argmax[r * out_stride + q] = arg_base + 2 * r * width + 2 * q + best;
            }
          juanji::cpu::MaxPool2x2Args args{x.data(), width, count, got.data(),
                                           with_argmax ? got_argmax.data() : nullptr, arg_base, rows, out_stride};
          args.normalize = normalize;
          args.scale = scale;
          args.shift = shift;
          level.set.max_pool_2x2_f32(args);
          const std::string what = describe(level, "max_pool_2x2 count=%ld width=%ld rows=%ld normalize=%d (%s data)",
                                            count, width, rows, normalize, values_name(values));
          expect_same_bits(what, got, want);
          if (!with_argmax) std::fill(want_argmax.begin(), want_argmax.end(), -5);
          expect_same_bits(what + " argmax", got_argmax, want_argmax);
        }
}

// `rows` output rows of `count` windows, kernel_h x kernel_w at `stride`, the rows' tops row_step
// input rows apart, against the row-major first maximum (the first NaN over any number).
void check_max_pool_window_rows(const Level& level, Data& data, I stride, I kernel_h, I kernel_w, I count, I rows,
                                I row_step, Values values) {
  // The windows of `count` outputs fill the row's columns exactly: no slack after them.
  const I width = (count - 1) * stride + kernel_w, in_row_step = row_step * width, out_row_step = count + 3;
  // The last window ends the data: a read past it is out of bounds (AddressSanitizer).
  const auto x = pooling_values(data, (rows - 1) * in_row_step + kernel_h * width, values);
  std::vector<float> got((rows - 1) * out_row_step + count + kTail, kSentinel), want = got;
  juanji::cpu::MaxPoolWindowRowArgs args{x.data(), width,      kernel_h, kernel_w,    stride,
                                         count,    got.data(), rows,     in_row_step, out_row_step};
  const I done = level.set.max_pool_window_row_f32(args);
  const std::string what =
      describe(level, "max_pool_window_row stride=%ld kernel=%ldx%ld count=%ld rows=%ld row step=%ld (%s data)", stride,
               kernel_h, kernel_w, count, rows, row_step, values_name(values));
  expect(done == (stride > 2 ? 0 : count), what + ": outputs done");
  for (I r = 0; r < rows && done > 0; ++r)
    for (I j = 0; j < count; ++j) {
      const float* top = x.data() + r * in_row_step;
      float best = top[j * stride];
      for (I h = 0; h < kernel_h; ++h)
        for (I w = 0; w < kernel_w; ++w) {
          const float v = top[h * width + w + j * stride];
          if (best == best && (v != v || v > best)) best = v;
        }
      want[r * out_row_step + j] = best;
    }
  expect_same_bits(what, got, want);
}

void test_max_pool_window_row(const Level& level, Data& data) {
  const I lanes = level.lanes;
  // Rows whose windows overlap (row steps below the kernel's height) go through the ring of
  // horizontal maxima, of up to 8 rows (taller kernels: row by row), 256 columns a block at a time.
  for (I stride : {1, 2, 3})
    for (I kernel_h : {1, 2, 3, 4})
      for (I kernel_w : {1, 2, 3, 5})
        for (I count : sizes({1, lanes - 1, lanes, lanes + 1, 2 * lanes, 3 * lanes + 2}))
          for (I rows : {1, 5})
            for (I row_step : {1, 2, 3})
              for (Values values : kBothValues)
                check_max_pool_window_rows(level, data, stride, kernel_h, kernel_w, count, rows, row_step, values);
  for (I stride : {1, 2})
    for (Values values : kBothValues) {
      check_max_pool_window_rows(level, data, stride, 9, 3, 2 * lanes + 1, 4, 2, values);
      check_max_pool_window_rows(level, data, stride, 3, 3, 300, 4, 2, values);
      check_max_pool_window_rows(level, data, stride, 3, 2, 257, 3, 1, values);
    }
}

void test_max_pool_2x2_backward(const Level& level, Data& data) {
  const I lanes = level.lanes;
  int variant = 0;
  for (I count : sizes({1, lanes / 2, lanes - 1, lanes, lanes + 1, 2 * lanes + 1}))
    for (I extra : {0, 1})
      for (bool gated : {false, true})
        for (Values values : kBothValues) {
          ++variant;
          const I width = 2 * count + extra, rows = 1 + variant % 2, pooled_stride = count + 1;
          const auto grad_y = pooling_values(data, rows * pooled_stride, values);
          const auto gate = pooling_values(data, rows * pooled_stride, values);
          std::vector<I> argmax(rows * pooled_stride, -1);
          for (I r = 0; r < rows; ++r)
            for (I q = 0; q < count; ++q) {
              const I offsets[4] = {0, 1, width, width + 1};
              argmax[r * pooled_stride + q] = 2 * r * width + 2 * q + offsets[data.below(4)];
            }
          std::vector<float> got(2 * rows * width + kTail, kSentinel), want = got;
          for (I r = 0; r < rows; ++r)
            for (I q = 0; q < count; ++q) {
              const I window = 2 * r * width + 2 * q, i = r * pooled_stride + q;
              for (I offset : {I(0), I(1), width, width + 1}) want[window + offset] = 0.0f;
              if (!gated || gate[i] > 0.0f) want[argmax[i]] = 0.0f + grad_y[i];
            }
          const juanji::cpu::MaxPool2x2BackwardArgs args{grad_y.data(), argmax.data(), gated ? gate.data() : nullptr,
                                                         pooled_stride, got.data(), width, count, rows};
          const std::string what = describe(level,
                                            "max_pool_2x2_backward count=%ld width=%ld rows=%ld gated=%d (%s data)",
                                            count, width, rows, gated, values_name(values));
          expect(level.set.max_pool_2x2_backward_f32(args), what + " takes argmaxes inside their windows");
          expect_same_bits(what, got, want);
          // An argmax outside its window, in another row or past 32 bits: refused.
          for (I stray : {4 * width, I(1) << 32}) {
            std::vector<I> bad = argmax;
            bad[(rows - 1) * pooled_stride + data.below(count)] += stray;
            std::vector<float> scratch(2 * rows * width + kTail, kSentinel);
            juanji::cpu::MaxPool2x2BackwardArgs refused = args;
            refused.argmax = bad.data();
            refused.grad_x = scratch.data();
            expect(!level.set.max_pool_2x2_backward_f32(refused),
                   what + " refuses an argmax moved by " + std::to_string(stray));
          }
        }
}

void test_max_pool_2x2_scatter(const Level& level, Data& data) {
  const I lanes = level.lanes;
  int variant = 0;
  for (I count : sizes({1, lanes / 2, lanes - 1, lanes, lanes + 1, 2 * lanes + 1}))
    for (I extra : {0, 1})
      for (Values values : kBothValues) {
        ++variant;
        const I width = 2 * count + extra, rows = 1 + variant % 3, pooled_stride = count + 1;
        const float scale = variant % 2 ? 0.5f : -1.25f, shift = variant % 4 < 2 ? 0.25f : -0.5f;
        const auto x = pooling_values(data, 2 * rows * width, values);
        const auto grad_y = pooling_values(data, rows * pooled_stride, values);
        std::vector<float> got(2 * rows * width + kTail, kSentinel), want = got;
        for (I r = 0; r < rows; ++r)
          for (I q = 0; q < count; ++q) {
            const I window = 2 * r * width + 2 * q, offsets[4] = {0, 1, width, width + 1};
            I best = -1;
            float best_value = 0;
            for (I offset : offsets) {
              const float product = x[window + offset] * scale;
              float v = product + shift;
              v = v < 0.0f ? 0.0f : v;
              // The first maximum, a NaN over any number, the first NaN.
              if (best < 0 || (best_value == best_value && (v != v || v > best_value))) {
                best = offset;
                best_value = v;
              }
              want[window + offset] = 0.0f;
            }
            if (best_value > 0.0f) want[window + best] = 0.0f + grad_y[r * pooled_stride + q];
          }
        level.set.max_pool_2x2_scatter_f32(
            {x.data(), width, count, rows, scale, shift, grad_y.data(), pooled_stride, got.data()});
        expect_same_bits(describe(level, "max_pool_2x2_scatter count=%ld width=%ld rows=%ld (%s data)", count, width,
                                  rows, values_name(values)),
                         got, want);
      }
}

void test_avg_pool_2x2(const Level& level, Data& data) {
  const I lanes = level.lanes;
  for (I count : sizes({1, lanes - 1, lanes, lanes + 1, 2 * lanes + 3}))
    for (I extra : {0, 1})
      for (Values values : kBothValues) {
        const I width = 2 * count + extra;
        const auto x = pooling_values(data, 2 * width, values);
        std::vector<float> got(count + kTail, kSentinel), want = got;
        for (I q = 0; q < count; ++q)
          want[q] = ((((0.0f + x[2 * q]) + x[2 * q + 1]) + x[width + 2 * q]) + x[width + 2 * q + 1]) / 4.0f;
        level.set.avg_pool_2x2_f32(x.data(), width, count, got.data());
        expect_same_bits(describe(level, "avg_pool_2x2 count=%ld width=%ld (%s data)", count, width,
                                  values_name(values)),
                         got, want);

        const auto grad = pooling_values(data, count, values);
        std::vector<float> grad_x(2 * width + kTail, kSentinel), want_x = grad_x;
        for (I q = 0; q < count; ++q)
          for (I at : {2 * q, 2 * q + 1, width + 2 * q, width + 2 * q + 1}) want_x[at] = 0.0f + grad[q] / 4.0f;
        level.set.avg_pool_2x2_backward_f32(grad.data(), count, grad_x.data(), width);
        expect_same_bits(
            describe(level, "avg_pool_2x2_backward count=%ld width=%ld (%s data)", count, width, values_name(values)),
            grad_x, want_x);
      }
}

// ---- Dropout and the sums -----------------------------------------------------------------

// The 53-bit draw of element i: SplitMix64's output for the state seed + (i + 1) * golden gamma.
std::uint64_t dropout_draw(std::uint64_t seed, std::uint64_t i) {
  std::uint64_t z = seed + (i + 1) * 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return (z ^ (z >> 31)) >> 11;
}

void test_dropout(const Level& level, Data& data) {
  const I lanes64 = level.lanes / 2;
  for (I n : sizes({1, lanes64 - 1, lanes64, lanes64 + 1, 37, 100}))
    for (double p : {0.0, 0.3, 1.0})
      for (std::uint64_t first : {std::uint64_t(0), std::uint64_t(5), std::uint64_t(1) << 40}) {
        const std::uint64_t seed = 0x1234567 + n, threshold = static_cast<std::uint64_t>(std::ceil(p * 0x1p53));
        const float keep = p < 1 ? static_cast<float>(1.0 / (1.0 - p)) : 0.0f;
        const auto x = data.make(n, Values::uniform);
        std::vector<float> mask(n + kTail, kSentinel), y = mask, want_mask = mask, want_y = mask;
        for (I i = 0; i < n; ++i) {
          want_mask[i] = dropout_draw(seed, first + i) >= threshold ? keep : 0.0f;
          want_y[i] = x[i] * want_mask[i];
        }
        level.set.dropout_f32({x.data(), mask.data(), y.data(), n, seed, first, threshold, keep});
        const std::string what = describe(level, "dropout n=%ld p=%g first=%llu", n, p, (unsigned long long)first);
        expect_same_bits(what + " mask", mask, want_mask);
        expect_same_bits(what + " y", y, want_y);
      }
}

// vec_math's order (add_to_partials): term i of a channel's plane goes to its partial sum i % 32,
// the images in order, from the partials' values before.
template <class Term>
std::vector<double> partials_in_order(const std::vector<double>& before, I images, I channels, I n, Term term) {
  std::vector<double> partials = before;
  for (I image = 0; image < images; ++image)
    for (I k = 0; k < channels; ++k)
      for (I i = 0; i < n; ++i) partials[k * juanji::cpu::kSumTerms + i % juanji::cpu::kSumTerms] += term(image, k, i);
  return partials;
}

// The AVX kernel files are compiled with -ffp-contract=fast, which fuses the products of the
// squared deviations and of g * (v - center) into their adds: the same order, other roundings.
// Those two sums are held to the order bit for bit at the portable level only.
void test_sums(const Level& level, Data& data) {
  using juanji::cpu::ChannelPlanes;
  using juanji::cpu::kSumTerms;
  const bool fused_products = level.level != SimdLevel::portable;
  const auto matches = [&](double got, double want, double magnitude, Values values) {
    return same_bits(got, want) ||
           (fused_products && values == Values::uniform && std::fabs(got - want) <= kDoubleTolerance * magnitude);
  };
  for (I images : {1, 3})
    for (I channels : {1, 2, 5})
      for (I n : {0, 1, 7, 8, 9, 16, 31, 32, 33, 49, 63, 64, 65, 100, 257})
        for (Values values : kBothValues) {
          // Planes with gaps between channels and between images, g's spaced otherwise.
          const I channel_stride = n + 5, image_stride = channels * channel_stride + 3;
          const I g_channel_stride = n + 2, g_image_stride = channels * g_channel_stride + 1;
          const auto v = data.make(images * image_stride, values), g = data.make(images * g_image_stride, values);
          const ChannelPlanes v_planes{v.data(), image_stride, channel_stride, images, channels, n};
          const ChannelPlanes g_planes{g.data(), g_image_stride, g_channel_stride, images, channels, n};
          std::vector<double> centers(channels), before(2 * channels * kSumTerms);
          for (I k = 0; k < channels; ++k) centers[k] = values == Values::integers ? double(k + 1) : 0.37 * double(k + 1);
          for (std::size_t j = 0; j < before.size(); ++j) before[j] = 0.25 * double(j % 7) - 0.5;
          const std::vector<double> single(before.begin(), before.begin() + channels * kSumTerms);
          const std::string what =
              describe(level, "images=%ld channels=%ld n=%ld (%s data)", images, channels, n, values_name(values));
          const auto x = [&](I image, I k, I i) { return double(v_planes.plane(image, k)[i]); };
          const auto gx = [&](I image, I k, I i) { return double(g_planes.plane(image, k)[i]); };
          const auto deviation = [&](I image, I k, I i) { return x(image, k, i) - centers[k]; };
          const auto sums = partials_in_order(single, images, channels, n, x);
          const auto squares = partials_in_order(single, images, channels, n, [&](I image, I k, I i) {
            return deviation(image, k, i) * deviation(image, k, i);
          });
          const auto square_sizes = partials_in_order(single, images, channels, n, [&](I image, I k, I i) {
            return std::fabs(deviation(image, k, i) * deviation(image, k, i));
          });
          // The pair's partials interleaved by channel: g's, then the products'.
          std::vector<double> pair_before_g, pair_before_products;
          for (I k = 0; k < channels; ++k) {
            pair_before_g.insert(pair_before_g.end(), before.begin() + 2 * k * kSumTerms,
                                 before.begin() + (2 * k + 1) * kSumTerms);
            pair_before_products.insert(pair_before_products.end(), before.begin() + (2 * k + 1) * kSumTerms,
                                        before.begin() + (2 * k + 2) * kSumTerms);
          }
          const auto grad_sums = partials_in_order(pair_before_g, images, channels, n, gx);
          const auto products = partials_in_order(pair_before_products, images, channels, n, [&](I image, I k, I i) {
            return gx(image, k, i) * deviation(image, k, i);
          });
          const auto product_sizes = partials_in_order(pair_before_products, images, channels, n, [&](I image, I k, I i) {
            return std::fabs(gx(image, k, i) * deviation(image, k, i));
          });
          std::vector<double> got_sums = single, got_squares = single, got_pair = before;
          level.set.sum_f32(v_planes, got_sums.data());
          level.set.sum_squared_deviation_f32(v_planes, centers.data(), got_squares.data());
          level.set.sum_grad_and_product_f32(g_planes, v_planes, centers.data(), got_pair.data());
          bool sums_ok = true, squares_ok = true, pair_ok = true;
          for (I k = 0; k < channels; ++k)
            for (I j = 0; j < kSumTerms; ++j) {
              const I at = k * kSumTerms + j;
              sums_ok = sums_ok && same_bits(got_sums[at], sums[at]);
              squares_ok = squares_ok && matches(got_squares[at], squares[at], square_sizes[at] + 0.5, values);
              pair_ok = pair_ok && same_bits(got_pair[2 * k * kSumTerms + j], grad_sums[at]) &&
                        matches(got_pair[(2 * k + 1) * kSumTerms + j], products[at], product_sizes[at] + 0.5, values);
            }
          expect(sums_ok, "sum " + what);
          expect(squares_ok, "sum_squared_deviation " + what);
          expect(pair_ok, "sum_grad_and_product " + what);
        }
}

// Batch norm's affine passes against the portable code's roundings (each product rounded before
// its add), bit for bit at every level: planes with gaps, whose bytes must stay untouched, and
// NaN, infinities and signed zeros among the values.
void test_norm_planes(const Level& level, Data& data) {
  using juanji::cpu::ChannelPlanes;
  const float sentinel = -1234.5f;
  for (I images : {1, 3})
    for (I channels : {1, 3})
      for (I n : {1, 7, 16, 17, 33, 100})
        for (Values values : kBothValues)
          for (bool relu : {false, true}) {
            const I channel_stride = n + 3, image_stride = channels * channel_stride + 2;
            const I g_channel_stride = n + 1, g_image_stride = channels * g_channel_stride + 5;
            auto x = data.make(images * image_stride, values);
            const auto g = data.make(images * g_image_stride, values);
            const float specials[] = {std::numeric_limits<float>::quiet_NaN(), -0.0f, 0.0f,
                                      std::numeric_limits<float>::infinity(), -3.0f};
            for (I j = 0; j < I(std::size(specials)) && j < I(x.size()); ++j) x[(j * 7) % x.size()] = specials[j];
            std::vector<float> scale(channels), shift(channels), a(channels), b(channels);
            for (I k = 0; k < channels; ++k) {
              const bool integers = values == Values::integers;
              scale[k] = integers ? float(k + 2) : 0.7f + 0.3f * float(k);
              shift[k] = integers ? float(-3 * k - 1) : -0.4f + 0.1f * float(k);
              a[k] = integers ? float(k - 1) : 1.3f - 0.2f * float(k);
              b[k] = integers ? float(2 * k + 1) : -0.6f + 0.25f * float(k);
            }
            const ChannelPlanes x_planes{x.data(), image_stride, channel_stride, images, channels, n};
            const ChannelPlanes g_planes{g.data(), g_image_stride, g_channel_stride, images, channels, n};
            std::vector<float> want_y(x.size(), sentinel), want_gx(x.size(), sentinel);
            for (I image = 0; image < images; ++image)
              for (I k = 0; k < channels; ++k)
                for (I i = 0; i < n; ++i) {
                  const I at = image * image_stride + k * channel_stride + i;
                  const volatile float product = x[at] * scale[k];
                  const float y = product + shift[k];
                  want_y[at] = relu && y < 0.0f ? 0.0f : y;
                  const volatile float pa = a[k] * g_planes.plane(image, k)[i], pb = b[k] * x[at];
                  want_gx[at] = (pa + pb) + shift[k];
                }
            std::vector<float> got_y(x.size(), sentinel), got_gx(x.size(), sentinel);
            level.set.normalize_planes_f32({x_planes, got_y.data(), scale.data(), shift.data(), relu});
            level.set.norm_grad_planes_f32({g_planes, x_planes, got_gx.data(), a.data(), b.data(), shift.data()});
            const std::string what = describe(level, "images=%ld channels=%ld n=%ld relu=%d (%s data)", images,
                                              channels, n, int(relu), values_name(values));
            expect_same_bits("normalize_planes " + what, got_y, want_y);
            expect_same_bits("norm_grad_planes " + what, got_gx, want_gx);
          }
}

void test_kernel_set(SimdLevel simd) {
  const KernelSet& set = kernel_set(simd);
  const int lanes = simd == SimdLevel::avx512 ? 16 : simd == SimdLevel::avx2 ? 8 : 4;
  const Level level{simd, set, lanes};
  expect(&juanji::cpu::active_kernels() == &set, describe(level, "is the active set at its level"));
  expect(set.direct_conv_lanes == lanes && set.gemm_f32.nr == 2 * lanes && set.gemm_f64.nr == lanes,
         describe(level, "has %d float lanes, GEMM panels of 2 vectors", lanes));
  Data data(1000 + static_cast<int>(simd));
  test_gemm_micro_kernel(level, set.gemm_f32, data);
  test_gemm_micro_kernel(level, set.gemm_f64, data);
  test_pack_transposed_panel(level, data);
  test_direct_conv(level, data);
  test_direct_weight_grad(level, data);
  test_image_lane_conv(level, data);
  test_to_image_lanes(level, data);
  test_from_image_lanes(level, data);
  test_image_lane_weight_grad(level, data);
  test_filter_block_conv(level, data);
  test_filter_block_weight_grad(level, data);
  test_depthwise_conv(level, data);
  test_depthwise_conv_unpadded(level, data);
  test_depthwise_weight_grad(level, data);
  test_depthwise_weight_grad_unpadded(level, data);
  test_depthwise_rows(level, data);
  test_depthwise_rows_merge(level, data);
  test_winograd_input_row(level, data);
  test_winograd_input_row_pair(level, data);
  test_winograd_products(level, data);
  test_winograd_output(level, data);
  test_winograd_grad_row(level, data);
  test_pixel_major_row(level, data);
  test_winograd_weight_products(level, data);
  test_max_pool_2x2(level, data);
  test_max_pool_window_row(level, data);
  test_max_pool_2x2_backward(level, data);
  test_max_pool_2x2_scatter(level, data);
  test_avg_pool_2x2(level, data);
  test_dropout(level, data);
  test_sums(level, data);
  test_norm_planes(level, data);
  std::printf("%s: every kernel checked\n", juanji::simd_name(simd));
}

}  // namespace

int main() {
  for (SimdLevel level : supported_levels()) {
    use_level(level);
    test_kernel_set(level);
  }
  return summary("juanji_kernel_sets_test");
}
