// CPU pooling kernels. 1-D pooling is 2-D pooling with H = kernel_h = 1, so one set of kernels
// serves both. Forward kernels split the work over output rows (max pooling over runs of rows
// within a plane, as long as there are enough of them), backward kernels over planes:
// every output and every plane of grad_x is written by exactly one thread in a fixed order, so
// results are bit-identical for any thread count.
#include "cpu/pool.hpp"

#include <algorithm>
#include <type_traits>

#include "cpu/microkernels.hpp"
#include "cpu/op_support.hpp"
#include "cpu/vec_math.hpp"

namespace juanji::cpu {
namespace {

// Clipped window [lo, hi) of output index o along one dim, and its average-pool divisor extent.
struct Span {
  std::int64_t lo, hi, extent;
};

inline Span span(std::int64_t o, std::int64_t n, std::int64_t k, std::int64_t s, std::int64_t p,
                 bool include_pad) {
  const std::int64_t start = o * s - p;
  const std::int64_t end = std::min(start + k, n + p);
  const std::int64_t lo = std::max<std::int64_t>(start, 0);
  const std::int64_t hi = std::min(end, n);
  return {lo, hi, include_pad ? end - start : hi - lo};
}

std::int64_t plane_count(const PoolGeometry& g) { return g.N * g.C; }

// Folds v (at flat index i) into the running maximum: strictly greater wins, so the first
// maximum stays; a NaN wins over any number and the first NaN is kept. Branch-free selects.
template <class T>
inline void take_max(T v, std::int64_t i, T& best, std::int64_t& best_i) {
  const bool wins = !(v <= best) && best == best;
  best = wins ? v : best;
  best_i = wins ? i : best_i;
}

// The common 2x2 stride-2 unpadded window.
bool is_2x2_stride_2(const PoolGeometry& g) {
  return g.kernel_h == 2 && g.kernel_w == 2 && g.stride_h == 2 && g.stride_w == 2 && g.pad_h == 0 &&
         g.pad_w == 0;
}

// How many output rows from the first, and columns from the first of each such row, have a
// 2x2 stride-2 unpadded window inside the plane (none for other windows; ceil mode adds a
// partial last row and column).
std::int64_t plain_2x2_rows(const PoolGeometry& g) { return is_2x2_stride_2(g) ? std::min(g.P, g.H / 2) : 0; }
std::int64_t plain_2x2_columns(const PoolGeometry& g) { return is_2x2_stride_2(g) ? std::min(g.Q, g.W / 2) : 0; }

// The common 2x2 stride-2 unpadded window on the output rows [p, p + rows), which must be among
// plain_2x2_rows, and the columns whose windows lie inside the row; returns how many columns it
// did (the rest go through the general loop).
template <class T>
std::int64_t max_pool_2x2_rows(const PoolGeometry& g, const T* x, T* y, std::int64_t* arg,
                               std::int64_t p, std::int64_t rows) {
  const std::int64_t full = plain_2x2_columns(g);
  if constexpr (std::is_same_v<T, float>) {
    active_kernels().max_pool_2x2_f32({x + 2 * p * g.W, g.W, full, y + p * g.Q,
                                            arg ? arg + p * g.Q : nullptr, 2 * p * g.W, rows, g.Q});
    return full;
  }
  for (std::int64_t row = p; row < p + rows; ++row) {
    const T* r0 = x + 2 * row * g.W;
    const T* r1 = r0 + g.W;
    for (std::int64_t q = 0; q < full; ++q) {
      // Random data makes compare-and-branch code mispredict half the time; this picks the
      // winner with selects and integer arithmetic only. The largest value m (any NaN, if there
      // is one) is matched by the first element equal to it, or by the first NaN.
      const T a = r0[2 * q], b = r0[2 * q + 1], c = r1[2 * q], d = r1[2 * q + 1];
      const T ab = a > b ? a : b, cd = c > d ? c : d;
      const T m = ab > cd ? ab : cd;
      const bool any_nan = (a != a) | (b != b) | (c != c) | (d != d);
      const std::int64_t pick_a = any_nan ? (a != a) : (a == m);
      const std::int64_t pick_b = any_nan ? (b != b) : (b == m);
      const std::int64_t pick_c = any_nan ? (c != c) : (c == m);
      const std::int64_t offset = (1 - pick_a) * (pick_b + (1 - pick_b) * (g.W + 1 - pick_c));
      y[row * g.Q + q] = r0[2 * q + offset];
      if (arg) arg[row * g.Q + q] = 2 * row * g.W + 2 * q + offset;
    }
  }
  return full;
}

// x plane (H,W), y plane (P,Q) row p, columns [first, end); arg (P,Q) row p or null. First
// maximum in row-major window order wins; a NaN wins over any number and the first NaN is kept.
template <class T>
void max_pool_columns(const PoolGeometry& g, const T* x, T* y, std::int64_t* arg, std::int64_t p,
                      std::int64_t first, std::int64_t end) {
  if (first >= end) return;  // rows whose columns all lie inside: no division for their span
  const Span sh = span(p, g.H, g.kernel_h, g.stride_h, g.pad_h, true);
  for (std::int64_t q = first; q < end; ++q) {
    const Span sw = span(q, g.W, g.kernel_w, g.stride_w, g.pad_w, true);
    std::int64_t best_i = sh.lo * g.W + sw.lo;
    T best = x[best_i];
    for (std::int64_t h = sh.lo; h < sh.hi; ++h) {
      const T* row = x + h * g.W;
      for (std::int64_t w = sw.lo; w < sw.hi; ++w) take_max(row[w], h * g.W + w, best, best_i);
    }
    y[p * g.Q + q] = best;
    if (arg) arg[p * g.Q + q] = best_i;
  }
}

// Output row p, columns [begin, end), whose windows lie inside the plane (rows and columns): the
// same window order and rule as max_pool_columns, a block of outputs at a time, each tap of the
// window taken for the whole block, so that the compiler keeps a vector of outputs in flight
// (SqueezeNet's 3x3 stride-2 pooling of 64 planes of 111x111: 2.9 -> 0.4 ms on two threads).
template <class T, bool WithArg>
void max_pool_inside(const PoolGeometry& g, const T* x, T* y, std::int64_t* arg, std::int64_t p,
                     std::int64_t begin, std::int64_t end) {
  constexpr std::int64_t kBlock = 64;
  const std::int64_t top = p * g.stride_h - g.pad_h, sw = g.stride_w;
  for (std::int64_t q0 = begin; q0 < end; q0 += kBlock) {
    const std::int64_t count = std::min(kBlock, end - q0);
    const std::int64_t left = q0 * sw - g.pad_w;
    T best[kBlock];
    std::int64_t best_i[kBlock];
    for (std::int64_t j = 0; j < count; ++j) {
      best[j] = x[top * g.W + left + j * sw];
      if constexpr (WithArg) best_i[j] = top * g.W + left + j * sw;
    }
    for (std::int64_t h = top; h < top + g.kernel_h; ++h)
      for (std::int64_t w = 0; w < g.kernel_w; ++w) {
        if (h == top && w == 0) continue;
        const std::int64_t at = h * g.W + left + w;
        const T* src = x + at;
        for (std::int64_t j = 0; j < count; ++j) {
          const T v = src[j * sw];
          const bool wins = !(v <= best[j]) && best[j] == best[j];
          best[j] = wins ? v : best[j];
          if constexpr (WithArg) best_i[j] = wins ? at + j * sw : best_i[j];
        }
      }
    std::copy(best, best + count, y + p * g.Q + q0);
    if constexpr (WithArg) std::copy(best_i, best_i + count, arg + p * g.Q + q0);
  }
}

// The output columns [begin, end) whose windows lie inside the plane: q with pad_w <= q * stride_w
// and q * stride_w - pad_w + kernel_w <= W.
Span inside_columns(const PoolGeometry& g) {
  const std::int64_t begin = (g.pad_w + g.stride_w - 1) / g.stride_w;
  const std::int64_t end = g.W < g.kernel_w ? 0 : std::min(g.Q, (g.W - g.kernel_w + g.pad_w) / g.stride_w + 1);
  return {begin, end, end - begin};
}

// Output row p from column `first` on: the windows whose columns lie inside the plane a block at a
// time (without argmaxes, float32, a vector kernel that also takes rows clipped by the padding or
// ceil mode), those clipped at the sides window by window.
template <class T>
void max_pool_row(const PoolGeometry& g, const T* x, T* y, std::int64_t* arg, std::int64_t p, std::int64_t first) {
  const Span inside = inside_columns(g);
  const std::int64_t inside_begin = std::max(first, inside.lo), inside_end = inside.hi;
  if (inside_begin >= inside_end) return max_pool_columns(g, x, y, arg, p, first, g.Q);
  max_pool_columns(g, x, y, arg, p, first, inside_begin);
  const Span rows = span(p, g.H, g.kernel_h, g.stride_h, g.pad_h, true);
  std::int64_t done = inside_begin;
  if constexpr (std::is_same_v<T, float>) {
    if (!arg && rows.hi > rows.lo)
      done += active_kernels().max_pool_window_row_f32({x + rows.lo * g.W + inside_begin * g.stride_w - g.pad_w, g.W,
                                                        rows.hi - rows.lo, g.kernel_w, g.stride_w,
                                                        inside_end - inside_begin, y + p * g.Q + inside_begin, 1, 0, 0});
  }
  if (rows.hi - rows.lo < g.kernel_h)  // rows clipped by the padding or ceil mode
    max_pool_columns(g, x, y, arg, p, done, inside_end);
  else if (arg)
    max_pool_inside<T, true>(g, x, y, arg, p, done, inside_end);
  else
    max_pool_inside<T, false>(g, x, y, arg, p, done, inside_end);
  max_pool_columns(g, x, y, arg, p, inside_end, g.Q);
}

// Float32 rows [begin, end) of a plane without argmaxes whose windows lie inside it top to bottom,
// and their columns likewise, in one vector kernel call; the columns clipped at the sides window by
// window. Returns the rows it did: none where the kernel takes no such stride (a call a row cost
// more than the row's windows on small planes: SqueezeNet's 128 planes of 55x55, 3x3 stride 2,
// two threads: 89-95 -> 53-55 us; 256 planes of 27x27: 49-52 -> 38-41).
std::int64_t max_pool_inner_rows(const PoolGeometry& g, const float* x, float* y, std::int64_t begin,
                                 std::int64_t end) {
  const Span inside = inside_columns(g);
  const std::int64_t inside_begin = inside.lo, inside_end = inside.hi;
  if (begin >= end || inside_begin >= inside_end) return 0;
  const std::int64_t done = active_kernels().max_pool_window_row_f32(
      {x + (begin * g.stride_h - g.pad_h) * g.W + inside_begin * g.stride_w - g.pad_w, g.W, g.kernel_h, g.kernel_w,
       g.stride_w, inside_end - inside_begin, y + begin * g.Q + inside_begin, end - begin, g.stride_h * g.W, g.Q});
  if (done == 0) return 0;
  for (std::int64_t p = begin; p < end; ++p) {
    max_pool_columns(g, x, y, static_cast<std::int64_t*>(nullptr), p, 0, inside_begin);
    max_pool_columns(g, x, y, static_cast<std::int64_t*>(nullptr), p, inside_end, g.Q);
  }
  return end - begin;
}

// Rows [begin, end) of a plane: the plain 2x2 part in one kernel call, float32 rows inside the
// plane without argmaxes in another, the rest row by row.
template <class T>
void max_pool_rows(const PoolGeometry& g, const T* x, T* y, std::int64_t* arg, std::int64_t begin,
                   std::int64_t end) {
  const std::int64_t plain_end = std::min(end, plain_2x2_rows(g));
  const std::int64_t plain_columns =
      begin < plain_end ? max_pool_2x2_rows(g, x, y, arg, begin, plain_end - begin) : 0;
  std::int64_t p = begin;
  if constexpr (std::is_same_v<T, float>) {
    if (!arg && plain_end <= begin && g.H + g.pad_h >= g.kernel_h) {
      // Rows p with pad_h <= p * stride_h and p * stride_h - pad_h + kernel_h <= H.
      const std::int64_t inner_begin = std::clamp((g.pad_h + g.stride_h - 1) / g.stride_h, begin, end);
      const std::int64_t inner_end = std::clamp((g.H - g.kernel_h + g.pad_h) / g.stride_h + 1, inner_begin, end);
      for (; p < inner_begin; ++p) max_pool_row(g, x, y, arg, p, 0);
      p += max_pool_inner_rows(g, x, y, inner_begin, inner_end);
    }
  }
  for (; p < end; ++p) max_pool_row(g, x, y, arg, p, p < plain_end ? plain_columns : 0);
}

template <class T>
void avg_pool_row(const PoolGeometry& g, const T* x, T* y, std::int64_t p) {
  if constexpr (std::is_same_v<T, float>) {
    if (is_plain_2x2(g)) return active_kernels().avg_pool_2x2_f32(x + 2 * p * g.W, g.W, g.Q, y + p * g.Q);
  }
  const Span sh = span(p, g.H, g.kernel_h, g.stride_h, g.pad_h, g.count_include_pad);
  for (std::int64_t q = 0; q < g.Q; ++q) {
    const Span sw = span(q, g.W, g.kernel_w, g.stride_w, g.pad_w, g.count_include_pad);
    T sum = 0;
    for (std::int64_t h = sh.lo; h < sh.hi; ++h) {
      const T* row = x + h * g.W;
      for (std::int64_t w = sw.lo; w < sw.hi; ++w) sum += row[w];
    }
    y[p * g.Q + q] = sum / static_cast<T>(sh.extent * sw.extent);
  }
}

// gy plane (P,Q) -> gx plane (H,W), overwritten.
template <class T>
void avg_pool_backward_plane(const PoolGeometry& g, const T* gy, T* gx) {
  std::fill(gx, gx + g.H * g.W, T(0));
  if constexpr (std::is_same_v<T, float>) {
    if (is_plain_2x2(g)) {
      for (std::int64_t p = 0; p < g.P; ++p)
        active_kernels().avg_pool_2x2_backward_f32(gy + p * g.Q, g.Q, gx + 2 * p * g.W, g.W);
      return;
    }
  }
  for (std::int64_t p = 0; p < g.P; ++p) {
    const Span sh = span(p, g.H, g.kernel_h, g.stride_h, g.pad_h, g.count_include_pad);
    for (std::int64_t q = 0; q < g.Q; ++q) {
      const Span sw = span(q, g.W, g.kernel_w, g.stride_w, g.pad_w, g.count_include_pad);
      const T share = gy[p * g.Q + q] / static_cast<T>(sh.extent * sw.extent);
      for (std::int64_t h = sh.lo; h < sh.hi; ++h) {
        T* row = gx + h * g.W;
        for (std::int64_t w = sw.lo; w < sw.hi; ++w) row[w] += share;
      }
    }
  }
}

// Zeros in grad_x (H, W) past the first `rows` rows and `columns` columns of 2x2 windows, which a
// kernel writes whole.
template <class T>
void zero_past_windows(const PoolGeometry& g, std::int64_t rows, std::int64_t columns, T* grad_x) {
  if (2 * columns < g.W)
    for (std::int64_t h = 0; h < 2 * rows; ++h) std::fill(grad_x + h * g.W + 2 * columns, grad_x + (h + 1) * g.W, T(0));
  std::fill(grad_x + 2 * rows * g.W, grad_x + g.H * g.W, T(0));
}

}  // namespace

bool is_plain_2x2(const PoolGeometry& g) {
  return is_2x2_stride_2(g) && g.P == g.H / 2 && g.Q == g.W / 2;
}

template <class T>
void max_pool_plane(const PoolGeometry& g, const T* x, T* y, std::int64_t* argmax) {
  max_pool_rows(g, x, y, argmax, 0, g.P);
}

template <class T>
void scatter_max_pool_plane(const PoolGeometry& g, const T* grad_y, const std::int64_t* argmax,
                            const T* gate, T* grad_x) {
  const std::int64_t in_plane = g.H * g.W;
  // Plain 2x2 windows own their four elements: a vector kernel writes them all (0 + the share or
  // +0), without the branches on the gate (random after batch norm and ReLU) of the general loop,
  // on rows of at least half a vector of windows (fewer: the general loop is faster). An argmax
  // outside its window (the kernel API takes any) sends the plane to the general loop.
  std::int64_t plain_rows = 0, plain_columns = 0;
  if constexpr (std::is_same_v<T, float>) {
    const KernelSet& kernels = active_kernels();
    const std::int64_t rows = plain_2x2_rows(g), columns = plain_2x2_columns(g);
    if (2 * columns >= kernels.direct_conv_lanes) {
      if (kernels.max_pool_2x2_backward_f32({grad_y, argmax, gate, g.Q, grad_x, g.W, columns, rows})) {
        plain_rows = rows;
        plain_columns = columns;
      }
    }
  }
  // Zeros where the kernel wrote nothing, for the general loop to add to.
  zero_past_windows(g, plain_rows, plain_columns, grad_x);
  for (std::int64_t p = 0; p < g.P; ++p)
    for (std::int64_t q = p < plain_rows ? plain_columns : 0; q < g.Q; ++q) {
      const std::int64_t i = p * g.Q + q;
      const std::int64_t at = argmax[i];
      if (at >= 0 && at < in_plane && (!gate || gate[i] > T(0))) grad_x[at] += grad_y[i];
    }
}

void norm_relu_max_pool_scatter_plane(const PoolGeometry& g, const float* x, float scale, float shift,
                                      const float* grad_y, float* grad_x) {
  active_kernels().max_pool_2x2_scatter_f32({x, g.W, g.Q, g.P, scale, shift, grad_y, g.Q, grad_x});
  zero_past_windows(g, g.P, g.Q, grad_x);
}

template void max_pool_plane(const PoolGeometry&, const float*, float*, std::int64_t*);
template void max_pool_plane(const PoolGeometry&, const double*, double*, std::int64_t*);
template void scatter_max_pool_plane(const PoolGeometry&, const float*, const std::int64_t*,
                                     const float*, float*);
template void scatter_max_pool_plane(const PoolGeometry&, const double*, const std::int64_t*,
                                     const double*, double*);

// x (N,C,H,W), y (N,C,P,Q), argmax (N,C,P,Q) int64 or undefined.
void max_pool_forward(const PoolGeometry& g, const Tensor& x, Tensor& y, Tensor& argmax) {
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xd = x.data<T>();
    T* yd = y.data<T>();
    std::int64_t* ad = argmax.defined() ? argmax.data<std::int64_t>() : nullptr;
    const std::int64_t planes = plane_count(g);
    // In double: a huge window (kept within the padded input only) would overflow the product.
    const bool parallel = static_cast<double>(planes) * g.P * g.Q * g.kernel_h * g.kernel_w >= kParallelGrain;
    // Work items of whole planes where there are many, else of row ranges within planes, so the
    // threads share the work either way while the kernel gets as many rows per call as it can.
    constexpr std::int64_t kWorkItems = 64;
    const std::int64_t parts = std::clamp<std::int64_t>(kWorkItems / planes, 1, g.P);
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (parallel)
    for (std::int64_t item = 0; item < planes * parts; ++item) {
      const std::int64_t plane = item / parts, part = item % parts;
      max_pool_rows(g, xd + plane * g.H * g.W, yd + plane * g.P * g.Q,
                    ad ? ad + plane * g.P * g.Q : nullptr, part * g.P / parts,
                    (part + 1) * g.P / parts);
    }
  });
}

// grad_y (N,C,P,Q), argmax (N,C,P,Q) int64, gate (N,C,P,Q) or null -> grad_x (N,C,H,W).
void max_pool_backward(const PoolGeometry& g, const Tensor& grad_y, const Tensor& argmax,
                       const Tensor* gate, Tensor& grad_x) {
  dispatch_float(grad_x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* gy = grad_y.data<T>();
    const std::int64_t* ad = argmax.data<std::int64_t>();
    const T* gd = gate ? gate->data<T>() : nullptr;
    T* gx = grad_x.data<T>();
    const std::int64_t planes = plane_count(g);
    const std::int64_t in_plane = g.H * g.W;
    const std::int64_t out_plane = g.P * g.Q;
    const bool parallel = planes * (in_plane + out_plane) >= kParallelGrain;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (parallel)
    for (std::int64_t plane = 0; plane < planes; ++plane) {
      scatter_max_pool_plane(g, gy + plane * out_plane, ad + plane * out_plane,
                             gd ? gd + plane * out_plane : nullptr, gx + plane * in_plane);
    }
  });
}

// x (N,C,H,W), y (N,C,P,Q).
void avg_pool_forward(const PoolGeometry& g, const Tensor& x, Tensor& y) {
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xd = x.data<T>();
    T* yd = y.data<T>();
    const std::int64_t rows = plane_count(g) * g.P;
    const bool parallel = static_cast<double>(rows) * g.Q * g.kernel_h * g.kernel_w >= kParallelGrain;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (parallel)
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t plane = r / g.P;
      avg_pool_row(g, xd + plane * g.H * g.W, yd + plane * g.P * g.Q, r % g.P);
    }
  });
}

// grad_y (N,C,P,Q) -> grad_x (N,C,H,W).
void avg_pool_backward(const PoolGeometry& g, const Tensor& grad_y, Tensor& grad_x) {
  dispatch_float(grad_x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* gy = grad_y.data<T>();
    T* gx = grad_x.data<T>();
    const std::int64_t planes = plane_count(g);
    const bool parallel =
        static_cast<double>(planes) * g.P * g.Q * g.kernel_h * g.kernel_w >= kParallelGrain;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (parallel)
    for (std::int64_t plane = 0; plane < planes; ++plane)
      avg_pool_backward_plane(g, gy + plane * g.P * g.Q, gx + plane * g.H * g.W);
  });
}

// x (N,C,H,W) -> y (N,C,1,1); each plane is summed in double by one thread, in a fixed order.
void global_avg_pool2d(const Tensor& x, Tensor& y) {
  const Shape& s = x.shape();
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xd = x.data<T>();
    T* yd = y.data<T>();
    const std::int64_t planes = s[0] * s[1];
    const std::int64_t area = s[2] * s[3];
    // Blocks of planes summed by one call each, every plane as sum_elements sums it (a call per
    // 4x4 plane took 0.3 ms for a ResNet's 128x128 planes).
    constexpr std::int64_t kPlanesAtOnce = 64;
    const std::int64_t blocks = (planes + kPlanesAtOnce - 1) / kPlanesAtOnce;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (planes * area >= kParallelGrain)
    for (std::int64_t block = 0; block < blocks; ++block) {
      const std::int64_t first = block * kPlanesAtOnce, count = std::min(kPlanesAtOnce, planes - first);
      double partials[kPlanesAtOnce * kSumTerms] = {};
      sum_into_partials(ChannelPlanesOf<T>{xd + first * area, 0, area, 1, count, area}, partials);
      for (std::int64_t k = 0; k < count; ++k)
        yd[first + k] = static_cast<T>(combine_partial_sums(partials + k * kSumTerms) / static_cast<double>(area));
    }
  });
}

// grad_y (N,C,1,1) -> grad_x (N,C,H,W).
void global_avg_pool2d_backward(const Tensor& grad_y, Tensor& grad_x) {
  const Shape& s = grad_x.shape();
  dispatch_float(grad_x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* gy = grad_y.data<T>();
    T* gx = grad_x.data<T>();
    const std::int64_t planes = s[0] * s[1];
    const std::int64_t area = s[2] * s[3];
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (planes * area >= kParallelGrain)
    for (std::int64_t plane = 0; plane < planes; ++plane) {
      const T share = gy[plane] / static_cast<T>(area);
      std::fill(gx + plane * area, gx + (plane + 1) * area, share);
    }
  });
}

}  // namespace juanji::cpu
