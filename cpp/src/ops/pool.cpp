// Pooling: the arguments' checks, the geometry, and the choice of backend (cpu/pool.hpp or
// cuda/ops.hpp) for each op of juanji/ops/pool.hpp.
#include "juanji/ops/pool.hpp"

#include <algorithm>
#include <limits>

#include "core/checked_math.hpp"
#include "cpu/pool.hpp"
#include "ops/backend.hpp"
#include "ops/bfloat16_operands.hpp"
#include "ops/checks.hpp"

namespace juanji {
namespace {

using ops::check_float_operand;
using ops::check_kernel_tensor;

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

std::int64_t plane_count(const PoolGeometry& g) { return g.N * g.C; }

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

// The checks of max_pool_backward's and max_pool_relu_backward's operands (y: the gate).
void check_scatter_args(const PoolGeometry& g, const Tensor& grad_y, const Tensor& argmax,
                        const Tensor* gate, const Tensor& grad_x, const char* op) {
  check_pool_kernel_args(g, grad_x, "grad_x", grad_y, "grad_y", op);
  check_kernel_tensor(argmax, op, "argmax", DType::int64, plane_count(g) * g.P * g.Q);
  if (gate) check_kernel_tensor(*gate, op, "y", grad_x.dtype(), grad_y.numel());
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
  cpu::max_pool_forward(g, x, y, argmax);
}

// grad_y (N,C,P,Q), argmax (N,C,P,Q) int64 -> grad_x (N,C,H,W).
void max_pool_backward(const PoolGeometry& g, const Tensor& grad_y, const Tensor& argmax,
                       Tensor& grad_x) {
  if (plane_count(g) == 0) return;  // an empty batch or no channels: nothing to pool
#if JUANJI_WITH_CUDA
  if (grad_y.device().is_cuda()) return cuda::max_pool_backward(g, grad_y, argmax, grad_x);
#endif
  check_scatter_args(g, grad_y, argmax, nullptr, grad_x, "max_pool_backward");
  cpu::max_pool_backward(g, grad_y, argmax, nullptr, grad_x);
}

void max_pool_relu_backward(const PoolGeometry& g, const Tensor& grad_y, const Tensor& argmax,
                            const Tensor& y, Tensor& grad_x) {
  if (plane_count(g) == 0) return;  // an empty batch or no channels: nothing to pool
  check_scatter_args(g, grad_y, argmax, &y, grad_x, "max_pool_relu_backward");
  cpu::max_pool_backward(g, grad_y, argmax, &y, grad_x);
}

// x (N,C,H,W), y (N,C,P,Q).
void avg_pool_forward(const PoolGeometry& g, const Tensor& x, Tensor& y) {
  if (plane_count(g) == 0) return;  // an empty batch or no channels: nothing to pool
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) return cuda::avg_pool_forward(g, x, y);
#endif
  check_pool_kernel_args(g, x, "x", y, "y", "avg_pool_forward");
  cpu::avg_pool_forward(g, x, y);
}

// grad_y (N,C,P,Q) -> grad_x (N,C,H,W).
void avg_pool_backward(const PoolGeometry& g, const Tensor& grad_y, Tensor& grad_x) {
  if (plane_count(g) == 0) return;  // an empty batch or no channels: nothing to pool
#if JUANJI_WITH_CUDA
  if (grad_y.device().is_cuda()) return cuda::avg_pool_backward(g, grad_y, grad_x);
#endif
  check_pool_kernel_args(g, grad_x, "grad_x", grad_y, "grad_y", "avg_pool_backward");
  cpu::avg_pool_backward(g, grad_y, grad_x);
}

namespace {

// A pooling op on x (and grad_out for a backward), through float32 where they are bfloat16.
template <class Op>
Tensor pool_any(const char* op, const Tensor& grad_out, const Tensor& x, const Op& pool) {
  if (!ops::in_bfloat16(op, {{"grad_out", grad_out}, {"x", x}})) return pool(grad_out, x);
  return ops::narrowed(pool(ops::widened(grad_out), ops::widened(x)));
}

}  // namespace

Tensor max_pool2d(const Tensor& x, const PoolOptions& options) {
  return pool_any("max_pool2d", Tensor(), x,
                  [&](const Tensor&, const Tensor& in) { return max_pool_nd(in, options, 2, "max_pool2d"); });
}
Tensor max_pool1d(const Tensor& x, const PoolOptions& options) {
  return pool_any("max_pool1d", Tensor(), x,
                  [&](const Tensor&, const Tensor& in) { return max_pool_nd(in, options, 1, "max_pool1d"); });
}
Tensor avg_pool2d(const Tensor& x, const PoolOptions& options) {
  return pool_any("avg_pool2d", Tensor(), x,
                  [&](const Tensor&, const Tensor& in) { return avg_pool_nd(in, options, 2, "avg_pool2d"); });
}
Tensor avg_pool1d(const Tensor& x, const PoolOptions& options) {
  return pool_any("avg_pool1d", Tensor(), x,
                  [&](const Tensor&, const Tensor& in) { return avg_pool_nd(in, options, 1, "avg_pool1d"); });
}
Tensor max_pool2d_backward(const Tensor& grad_out, const Tensor& x, const PoolOptions& options) {
  return pool_any("max_pool2d_backward", grad_out, x, [&](const Tensor& g, const Tensor& in) {
    return max_pool_backward_nd(g, in, options, 2, "max_pool2d_backward");
  });
}
Tensor max_pool1d_backward(const Tensor& grad_out, const Tensor& x, const PoolOptions& options) {
  return pool_any("max_pool1d_backward", grad_out, x, [&](const Tensor& g, const Tensor& in) {
    return max_pool_backward_nd(g, in, options, 1, "max_pool1d_backward");
  });
}
Tensor avg_pool2d_backward(const Tensor& grad_out, const Tensor& x, const PoolOptions& options) {
  return pool_any("avg_pool2d_backward", grad_out, x, [&](const Tensor& g, const Tensor& in) {
    return avg_pool_backward_nd(g, in, options, 2, "avg_pool2d_backward");
  });
}
Tensor avg_pool1d_backward(const Tensor& grad_out, const Tensor& x, const PoolOptions& options) {
  return pool_any("avg_pool1d_backward", grad_out, x, [&](const Tensor& g, const Tensor& in) {
    return avg_pool_backward_nd(g, in, options, 1, "avg_pool1d_backward");
  });
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
  cpu::global_avg_pool2d(x, y);
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
  cpu::global_avg_pool2d_backward(grad_out, grad_x);
  return grad_x;
}

}  // namespace juanji
