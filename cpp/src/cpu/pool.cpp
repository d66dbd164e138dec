// CPU pooling. 1-D pooling is 2-D pooling with H = kernel_h = 1, so one set of kernels serves
// both. Forward kernels split the work over output rows (max pooling over runs of rows within a
// plane, as long as there are enough of them), backward kernels over planes:
// every output and every plane of grad_x is written by exactly one thread in a fixed order, so
// results are bit-identical for any thread count.
#include "juanji/ops/pool.hpp"

#include <algorithm>
#include <limits>
#include <type_traits>

#include "core/checked_math.hpp"
#include "cpu/microkernels.hpp"
#include "cpu/op_support.hpp"
#include "cpu/pool_planes.hpp"
#include "cpu/vec_math.hpp"
#if JUANJI_WITH_CUDA
#include "cuda/ops.hpp"
#endif

namespace juanji {
namespace {

using cpu::check_float_operand;
using cpu::check_kernel_tensor;
using cpu::dispatch_float;

std::vector<std::int64_t> per_dim(const std::vector<std::int64_t>& v, int dims, const char* op,
                                  const char* what) {
  check(v.size() == 1 || static_cast<int>(v.size()) == dims, op, ": ", what, " must be an int or ",
        dims, " ints, got ", shape_text(v));
  return v.size() == 1 ? std::vector<std::int64_t>(dims, v[0]) : v;
}

// a / b rounded down, for b > 0 (without -a + b - 1, which overflows for a huge b).
std::int64_t floor_div(std::int64_t a, std::int64_t b) { return a / b - (a % b < 0); }

// PyTorch's pooling_output_shape, floor((padded - k + (ceil_mode ? s - 1 : 0)) / s) + 1, with
// the quotient rounded up instead of s - 1 added, which overflows for a huge stride; with
// ceil_mode a last window starting in the right padding is dropped. padded = n + 2p is at most
// kMaxSpatialExtent, so (out - 1) * s < padded - k + s fits whatever the stride.
std::int64_t pooled_size(std::int64_t n, std::int64_t padded, std::int64_t k, std::int64_t s, std::int64_t p,
                         bool ceil_mode) {
  std::int64_t out = (ceil_mode ? -floor_div(k - padded, s) : floor_div(padded - k, s)) + 1;
  if (ceil_mode && out > 0 && (out - 1) * s >= n + p) --out;
  return out;
}

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
    cpu::active_kernels().max_pool_2x2_f32({x + 2 * p * g.W, g.W, full, y + p * g.Q,
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

// x plane (H,W), y plane (P,Q) row p from column `first` on; arg (P,Q) row p or null. First
// maximum in row-major window order wins; a NaN wins over any number and the first NaN is kept.
template <class T>
void max_pool_row_from(const PoolGeometry& g, const T* x, T* y, std::int64_t* arg, std::int64_t p,
                       std::int64_t first) {
  const Span sh = span(p, g.H, g.kernel_h, g.stride_h, g.pad_h, true);
  for (std::int64_t q = first; q < g.Q; ++q) {
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

// Rows [begin, end) of a plane: the plain 2x2 part in one kernel call, the rest window by window.
template <class T>
void max_pool_rows(const PoolGeometry& g, const T* x, T* y, std::int64_t* arg, std::int64_t begin,
                   std::int64_t end) {
  const std::int64_t plain_end = std::min(end, plain_2x2_rows(g));
  const std::int64_t plain_columns =
      begin < plain_end ? max_pool_2x2_rows(g, x, y, arg, begin, plain_end - begin) : 0;
  for (std::int64_t p = begin; p < end; ++p)
    max_pool_row_from(g, x, y, arg, p, p < plain_end ? plain_columns : 0);
}

template <class T>
void avg_pool_row(const PoolGeometry& g, const T* x, T* y, std::int64_t p) {
  if constexpr (std::is_same_v<T, float>) {
    if (cpu::is_plain_2x2(g)) return cpu::active_kernels().avg_pool_2x2_f32(x + 2 * p * g.W, g.W, g.Q, y + p * g.Q);
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
    if (cpu::is_plain_2x2(g)) {
      for (std::int64_t p = 0; p < g.P; ++p)
        cpu::active_kernels().avg_pool_2x2_backward_f32(gy + p * g.Q, g.Q, gx + 2 * p * g.W, g.W);
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

void check_pool_kernel_args(const PoolGeometry& g, const Tensor& x, const char* x_name,
                            const Tensor& y, const char* y_name, const char* op) {
  check_float(x, x_name);
  check_kernel_tensor(x, op, x_name, x.dtype(), plane_count(g) * g.H * g.W);
  check_kernel_tensor(y, op, y_name, x.dtype(), plane_count(g) * g.P * g.Q);
}

void check_grad_out(const Tensor& grad_out, const Tensor& x, const PoolGeometry& g,
                    const char* op) {
  check_float_operand(grad_out, op, "grad_out");
  check_same_dtype(grad_out, "grad_out", x, "x");
  check_same_device(grad_out, "grad_out", x, "x");
  check(grad_out.shape() == g.output_shape(), op, ": grad_out has shape ",
        shape_text(grad_out.shape()), " but the output for x ", shape_text(x.shape()), " has shape ",
        shape_text(g.output_shape()));
}

Tensor max_pool_nd(const Tensor& x_in, const PoolOptions& options, int dims, const char* op) {
  check_float_operand(x_in, op, "x");
  const PoolGeometry g = PoolGeometry::make(x_in.shape(), options, dims, op);
  const Tensor x = x_in.contiguous();
  Tensor y = Tensor::empty(g.output_shape(), x.dtype(), x.device());
  Tensor no_argmax;
  max_pool_forward(g, x, y, no_argmax);
  return y;
}

Tensor avg_pool_nd(const Tensor& x_in, const PoolOptions& options, int dims, const char* op) {
  check_float_operand(x_in, op, "x");
  const PoolGeometry g = PoolGeometry::make(x_in.shape(), options, dims, op);
  const Tensor x = x_in.contiguous();
  Tensor y = Tensor::empty(g.output_shape(), x.dtype(), x.device());
  avg_pool_forward(g, x, y);
  return y;
}

Tensor max_pool_backward_nd(const Tensor& grad_out, const Tensor& x_in,
                            const PoolOptions& options, int dims, const char* op) {
  check_float_operand(x_in, op, "x");
  const PoolGeometry g = PoolGeometry::make(x_in.shape(), options, dims, op);
  check_grad_out(grad_out, x_in, g, op);
  const Tensor x = x_in.contiguous();
  Tensor y = Tensor::empty(g.output_shape(), x.dtype(), x.device());
  Tensor argmax = Tensor::empty(g.output_shape(), DType::int64, x.device());
  max_pool_forward(g, x, y, argmax);
  Tensor grad_x = Tensor::empty(x.shape(), x.dtype(), x.device());
  max_pool_backward(g, grad_out.contiguous(), argmax, grad_x);
  return grad_x;
}

Tensor avg_pool_backward_nd(const Tensor& grad_out, const Tensor& x, const PoolOptions& options,
                            int dims, const char* op) {
  check_float_operand(x, op, "x");
  const PoolGeometry g = PoolGeometry::make(x.shape(), options, dims, op);
  check_grad_out(grad_out, x, g, op);
  Tensor grad_x = Tensor::empty(x.shape(), x.dtype(), x.device());
  avg_pool_backward(g, grad_out.contiguous(), grad_x);
  return grad_x;
}

}  // namespace

PoolGeometry PoolGeometry::make(const Shape& x, const PoolOptions& options, int spatial_dims,
                                const char* op) {
  check(spatial_dims == 1 || spatial_dims == 2, op, ": pooling is 1-d or 2-d, got ", spatial_dims,
        " spatial dims");
  const bool two_d = spatial_dims == 2;
  check(static_cast<int>(x.size()) == spatial_dims + 2, op, ": x: expected a ", spatial_dims + 2,
        "-d tensor ", two_d ? "(N, C, H, W)" : "(N, C, L)", ", got shape ", shape_text(x));
  check(!options.kernel.empty(), op, ": kernel_size is missing");
  const auto k = per_dim(options.kernel, spatial_dims, op, "kernel_size");
  const auto s = options.stride.empty() ? k : per_dim(options.stride, spatial_dims, op, "stride");
  const auto p = per_dim(options.padding, spatial_dims, op, "padding");
  for (int d = 0; d < spatial_dims; ++d) {
    check(k[d] >= 1, op, ": kernel_size must be positive, got ", shape_text(k));
    check(s[d] >= 1, op, ": stride must be positive, got ", shape_text(s));
    check(p[d] >= 0, op, ": padding must be non-negative, got ", shape_text(p));
    check(p[d] <= k[d] / 2, op, ": padding ", shape_text(p), " must be at most half of kernel_size ",
          shape_text(k));
  }
  PoolGeometry g;
  g.N = x[0];
  g.C = x[1];
  g.H = two_d ? x[2] : 1;
  g.W = x.back();
  g.kernel_h = two_d ? k[0] : 1;
  g.kernel_w = k.back();
  g.stride_h = two_d ? s[0] : 1;
  g.stride_w = s.back();
  g.pad_h = two_d ? p[0] : 0;
  g.pad_w = p.back();
  g.count_include_pad = options.count_include_pad;
  g.spatial_dims = spatial_dims;
  check(g.H <= kMaxSpatialExtent && g.W <= kMaxSpatialExtent, op, ": x: a spatial size of ", shape_text(x),
        " exceeds ", kMaxSpatialExtent);
  // 2p <= k fits; the padded sizes bound every window offset, and their product the average's
  // divisor (a window's area with count_include_pad).
  const MaybeSize padded_h = checked_add(g.H, 2 * g.pad_h), padded_w = checked_add(g.W, 2 * g.pad_w);
  const auto within_extent = [](MaybeSize size) { return size && *size <= kMaxSpatialExtent; };
  check(within_extent(padded_h) && within_extent(padded_w), op,
        ": padding ", shape_text(p), " pads x ", shape_text(x), " past ", kMaxSpatialExtent, " elements");
  check(checked_mul(padded_h, padded_w).has_value(), op, ": padding ", shape_text(p), " pads a plane of x ",
        shape_text(x), " past the int64 range");
  g.P = pooled_size(g.H, *padded_h, g.kernel_h, g.stride_h, g.pad_h, options.ceil_mode);
  g.Q = pooled_size(g.W, *padded_w, g.kernel_w, g.stride_w, g.pad_w, options.ceil_mode);
  check(g.P >= 1 && g.Q >= 1, op, ": kernel_size ", shape_text(k),
        " is larger than the padded input: x has shape ", shape_text(x), ", padding ", shape_text(p));
  // Along a dim with one output the stride moves no window: capped at the padded size it keeps
  // the kernels' window offsets (a start plus a stride) within int64.
  if (g.P == 1) g.stride_h = std::min(g.stride_h, *padded_h);
  if (g.Q == 1) g.stride_w = std::min(g.stride_w, *padded_w);
  check(allocatable_numel(g.output_shape()).has_value(), op, ": the output ", shape_text(g.output_shape()),
        " of x ", shape_text(x), " with kernel_size ", shape_text(k), ", stride ", shape_text(s),
        " and padding ", shape_text(p), " has too many elements");
  return g;
}

Shape PoolGeometry::output_shape() const {
  if (spatial_dims == 1) return {N, C, Q};
  return {N, C, P, Q};
}

namespace cpu {

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
    const cpu::KernelSet& kernels = cpu::active_kernels();
    const std::int64_t rows = plain_2x2_rows(g), columns = plain_2x2_columns(g);
    if (2 * columns >= kernels.direct_conv_lanes) {
      if (kernels.max_pool_2x2_backward_f32({grad_y, argmax, gate, g.Q, grad_x, g.W, columns, rows})) {
        plain_rows = rows;
        plain_columns = columns;
      }
    }
  }
  // Zeros where the kernel wrote nothing, for the general loop to add to.
  for (std::int64_t h = 0; h < 2 * plain_rows; ++h)
    std::fill(grad_x + h * g.W + 2 * plain_columns, grad_x + (h + 1) * g.W, T(0));
  std::fill(grad_x + 2 * plain_rows * g.W, grad_x + in_plane, T(0));
  for (std::int64_t p = 0; p < g.P; ++p)
    for (std::int64_t q = p < plain_rows ? plain_columns : 0; q < g.Q; ++q) {
      const std::int64_t i = p * g.Q + q;
      const std::int64_t at = argmax[i];
      if (at >= 0 && at < in_plane && (!gate || gate[i] > T(0))) grad_x[at] += grad_y[i];
    }
}

template void max_pool_plane(const PoolGeometry&, const float*, float*, std::int64_t*);
template void max_pool_plane(const PoolGeometry&, const double*, double*, std::int64_t*);
template void scatter_max_pool_plane(const PoolGeometry&, const float*, const std::int64_t*,
                                     const float*, float*);
template void scatter_max_pool_plane(const PoolGeometry&, const double*, const std::int64_t*,
                                     const double*, double*);

}  // namespace cpu

// x (N,C,H,W), y (N,C,P,Q), argmax (N,C,P,Q) int64 or undefined.
void max_pool_forward(const PoolGeometry& g, const Tensor& x, Tensor& y, Tensor& argmax) {
  if (plane_count(g) == 0) return;  // an empty batch or no channels: nothing to pool
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) return cuda::max_pool_forward(g, x, y, argmax);
#endif
  check_pool_kernel_args(g, x, "x", y, "y", "max_pool_forward");
  if (argmax.defined())
    check_kernel_tensor(argmax, "max_pool_forward", "argmax", DType::int64,
                        plane_count(g) * g.P * g.Q);
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xd = x.data<T>();
    T* yd = y.data<T>();
    std::int64_t* ad = argmax.defined() ? argmax.data<std::int64_t>() : nullptr;
    const std::int64_t planes = plane_count(g);
    // In double: a huge window (kept within the padded input only) would overflow the product.
    const bool parallel = static_cast<double>(planes) * g.P * g.Q * g.kernel_h * g.kernel_w >= cpu::kParallelGrain;
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

// grad_y (N,C,P,Q), argmax (N,C,P,Q) int64 -> grad_x (N,C,H,W).
namespace {

// grad_x = the pooled gradient scattered to each window's argmax, kept only where the gate (of
// the pooled shape) is > 0 when a gate is given.
void scatter_max_pool_gradient(const PoolGeometry& g, const Tensor& grad_y, const Tensor& argmax,
                               const Tensor* gate, Tensor& grad_x, const char* op) {
  if (plane_count(g) == 0) return;  // an empty batch or no channels: nothing to pool
  check_pool_kernel_args(g, grad_x, "grad_x", grad_y, "grad_y", op);
  check_kernel_tensor(argmax, op, "argmax", DType::int64, plane_count(g) * g.P * g.Q);
  if (gate) check_kernel_tensor(*gate, op, "y", grad_x.dtype(), grad_y.numel());
  dispatch_float(grad_x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* gy = grad_y.data<T>();
    const std::int64_t* ad = argmax.data<std::int64_t>();
    const T* gd = gate ? gate->data<T>() : nullptr;
    T* gx = grad_x.data<T>();
    const std::int64_t planes = plane_count(g);
    const std::int64_t in_plane = g.H * g.W;
    const std::int64_t out_plane = g.P * g.Q;
    const bool parallel = planes * (in_plane + out_plane) >= cpu::kParallelGrain;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (parallel)
    for (std::int64_t plane = 0; plane < planes; ++plane) {
      cpu::scatter_max_pool_plane(g, gy + plane * out_plane, ad + plane * out_plane,
                                  gd ? gd + plane * out_plane : nullptr, gx + plane * in_plane);
    }
  });
}

}  // namespace

void max_pool_backward(const PoolGeometry& g, const Tensor& grad_y, const Tensor& argmax,
                       Tensor& grad_x) {
  if (plane_count(g) == 0) return;  // an empty batch or no channels: nothing to pool
#if JUANJI_WITH_CUDA
  if (grad_y.device().is_cuda()) return cuda::max_pool_backward(g, grad_y, argmax, grad_x);
#endif
  scatter_max_pool_gradient(g, grad_y, argmax, nullptr, grad_x, "max_pool_backward");
}

void max_pool_relu_backward(const PoolGeometry& g, const Tensor& grad_y, const Tensor& argmax,
                            const Tensor& y, Tensor& grad_x) {
  scatter_max_pool_gradient(g, grad_y, argmax, &y, grad_x, "max_pool_relu_backward");
}

// x (N,C,H,W), y (N,C,P,Q).
void avg_pool_forward(const PoolGeometry& g, const Tensor& x, Tensor& y) {
  if (plane_count(g) == 0) return;  // an empty batch or no channels: nothing to pool
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) return cuda::avg_pool_forward(g, x, y);
#endif
  check_pool_kernel_args(g, x, "x", y, "y", "avg_pool_forward");
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xd = x.data<T>();
    T* yd = y.data<T>();
    const std::int64_t rows = plane_count(g) * g.P;
    const bool parallel = static_cast<double>(rows) * g.Q * g.kernel_h * g.kernel_w >= cpu::kParallelGrain;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (parallel)
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t plane = r / g.P;
      avg_pool_row(g, xd + plane * g.H * g.W, yd + plane * g.P * g.Q, r % g.P);
    }
  });
}

// grad_y (N,C,P,Q) -> grad_x (N,C,H,W).
void avg_pool_backward(const PoolGeometry& g, const Tensor& grad_y, Tensor& grad_x) {
  if (plane_count(g) == 0) return;  // an empty batch or no channels: nothing to pool
#if JUANJI_WITH_CUDA
  if (grad_y.device().is_cuda()) return cuda::avg_pool_backward(g, grad_y, grad_x);
#endif
  check_pool_kernel_args(g, grad_x, "grad_x", grad_y, "grad_y", "avg_pool_backward");
  dispatch_float(grad_x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* gy = grad_y.data<T>();
    T* gx = grad_x.data<T>();
    const std::int64_t planes = plane_count(g);
    const bool parallel =
        static_cast<double>(planes) * g.P * g.Q * g.kernel_h * g.kernel_w >= cpu::kParallelGrain;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (parallel)
    for (std::int64_t plane = 0; plane < planes; ++plane)
      avg_pool_backward_plane(g, gy + plane * g.P * g.Q, gx + plane * g.H * g.W);
  });
}

Tensor max_pool2d(const Tensor& x, const PoolOptions& options) {
  return max_pool_nd(x, options, 2, "max_pool2d");
}
Tensor max_pool1d(const Tensor& x, const PoolOptions& options) {
  return max_pool_nd(x, options, 1, "max_pool1d");
}
Tensor avg_pool2d(const Tensor& x, const PoolOptions& options) {
  return avg_pool_nd(x, options, 2, "avg_pool2d");
}
Tensor avg_pool1d(const Tensor& x, const PoolOptions& options) {
  return avg_pool_nd(x, options, 1, "avg_pool1d");
}
Tensor max_pool2d_backward(const Tensor& grad_out, const Tensor& x, const PoolOptions& options) {
  return max_pool_backward_nd(grad_out, x, options, 2, "max_pool2d_backward");
}
Tensor max_pool1d_backward(const Tensor& grad_out, const Tensor& x, const PoolOptions& options) {
  return max_pool_backward_nd(grad_out, x, options, 1, "max_pool1d_backward");
}
Tensor avg_pool2d_backward(const Tensor& grad_out, const Tensor& x, const PoolOptions& options) {
  return avg_pool_backward_nd(grad_out, x, options, 2, "avg_pool2d_backward");
}
Tensor avg_pool1d_backward(const Tensor& grad_out, const Tensor& x, const PoolOptions& options) {
  return avg_pool_backward_nd(grad_out, x, options, 1, "avg_pool1d_backward");
}

// x (N,C,H,W) -> (N,C,1,1); each plane is summed in double by one thread, in a fixed order.
Tensor global_avg_pool2d(const Tensor& x_in) {
  const char* op = "global_avg_pool2d";
  check_float_operand(x_in, op, "x");
  check_dim(x_in, "x", 4, "(N, C, H, W)");
  const Shape& s = x_in.shape();
  const Tensor x = x_in.contiguous();
  Tensor y = Tensor::empty({s[0], s[1], 1, 1}, x.dtype(), x.device());
  if (y.numel() == 0) return y;
  if (x.numel() == 0) {  // the mean of an empty plane, as NumPy and torch give it
    y.fill_(std::numeric_limits<double>::quiet_NaN());
    return y;
  }
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) {
    cuda::global_avg_pool2d(x, y);
    return y;
  }
#endif
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xd = x.data<T>();
    T* yd = y.data<T>();
    const std::int64_t planes = s[0] * s[1];
    const std::int64_t area = s[2] * s[3];
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (planes * area >= cpu::kParallelGrain)
    for (std::int64_t plane = 0; plane < planes; ++plane) {
      const T* xp = xd + plane * area;
      const double sum = cpu::sum_elements(xp, area);
      yd[plane] = static_cast<T>(sum / static_cast<double>(area));
    }
  });
  return y;
}

// grad_out (N,C,1,1), x (N,C,H,W) -> grad_x (N,C,H,W).
Tensor global_avg_pool2d_backward(const Tensor& grad_out_in, const Tensor& x) {
  const char* op = "global_avg_pool2d_backward";
  check_float_operand(x, op, "x");
  check_dim(x, "x", 4, "(N, C, H, W)");
  check_float_operand(grad_out_in, op, "grad_out");
  check_same_dtype(grad_out_in, "grad_out", x, "x");
  check_same_device(grad_out_in, "grad_out", x, "x");
  const Shape& s = x.shape();
  const Shape expected{s[0], s[1], 1, 1};
  check(grad_out_in.shape() == expected, op, ": grad_out has shape ",
        shape_text(grad_out_in.shape()), " but the output for x ", shape_text(s), " has shape ",
        shape_text(expected));
  const Tensor grad_out = grad_out_in.contiguous();
  Tensor grad_x = Tensor::empty(s, x.dtype(), x.device());
  if (grad_x.numel() == 0) return grad_x;
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) {
    cuda::global_avg_pool2d_backward(grad_out, grad_x);
    return grad_x;
  }
#endif
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* gy = grad_out.data<T>();
    T* gx = grad_x.data<T>();
    const std::int64_t planes = s[0] * s[1];
    const std::int64_t area = s[2] * s[3];
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (planes * area >= cpu::kParallelGrain)
    for (std::int64_t plane = 0; plane < planes; ++plane) {
      const T share = gy[plane] / static_cast<T>(area);
      std::fill(gx + plane * area, gx + (plane + 1) * area, share);
    }
  });
  return grad_x;
}

}  // namespace juanji
