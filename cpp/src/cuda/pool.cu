// Pooling on CUDA with the CPU's semantics (cpu/pool.cpp): the same clipped windows, first
// maximum wins and NaN beats any number, average divisors with or without the padding. 1-D
// pooling is 2-D pooling with H = kernel_h = 1.
// Forward: one thread per output. Backward: one thread per input element gathering the outputs
// whose window holds it, in output order: no atomics, and the sums come out in the CPU's order.
#include "cuda/common.cuh"
#include "cuda/ops.hpp"

namespace juanji::cuda {
namespace {

// Plain copy of PoolGeometry for kernel arguments.
struct PoolDims {
  index_t planes, H, W, P, Q;
  index_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
  bool count_include_pad;
};

PoolDims dims_of(const PoolGeometry& g) {
  return {g.N * g.C, g.H, g.W, g.P, g.Q, g.kernel_h, g.kernel_w, g.stride_h, g.stride_w,
          g.pad_h, g.pad_w, g.count_include_pad};
}

// Clipped window [lo, hi) of output o along one dim, and its average-pool divisor extent.
struct Span {
  index_t lo, hi, extent;
};

__device__ inline Span span(index_t o, index_t n, index_t k, index_t s, index_t p, bool include_pad) {
  const index_t start = o * s - p;
  const index_t end = start + k < n + p ? start + k : n + p;
  const index_t lo = start > 0 ? start : 0;
  const index_t hi = end < n ? end : n;
  return {lo, hi, include_pad ? end - start : hi - lo};
}

// Outputs [first, last] along one dim whose (unclipped) window start o*s - p <= i < o*s - p + k.
__device__ inline void covering(index_t i, index_t n_out, index_t k, index_t s, index_t p,
                                index_t& first, index_t& last) {
  const index_t shifted = i + p;  // >= 0
  first = shifted - k + 1 <= 0 ? 0 : div_nonneg(shifted - k + 1 + s - 1, s);
  last = div_nonneg(shifted, s);
  if (last > n_out - 1) last = n_out - 1;
}

template <class T>
__global__ void max_pool_forward_kernel(PoolDims d, const T* x, T* y, index_t* argmax) {
  const index_t outputs = d.planes * d.P * d.Q;
  for (index_t o = global_thread(); o < outputs; o += global_stride()) {
    const index_t plane = div_nonneg(o, d.P * d.Q), pq = o - plane * d.P * d.Q;
    const index_t p = div_nonneg(pq, d.Q), q = pq - p * d.Q;
    const Span sh = span(p, d.H, d.kernel_h, d.stride_h, d.pad_h, true);
    const Span sw = span(q, d.W, d.kernel_w, d.stride_w, d.pad_w, true);
    const T* xp = x + plane * d.H * d.W;
    index_t best_i = sh.lo * d.W + sw.lo;
    T best = xp[best_i];
    for (index_t h = sh.lo; h < sh.hi; ++h)
      for (index_t w = sw.lo; w < sw.hi; ++w) {
        const T v = xp[h * d.W + w];
        // Strictly greater wins, so the first maximum stays; a NaN wins over any number and
        // the first NaN is kept (the CPU's take_max).
        const bool wins = !(v <= best) && best == best;
        best = wins ? v : best;
        best_i = wins ? h * d.W + w : best_i;
      }
    y[o] = best;
    if (argmax) argmax[o] = best_i;
  }
}

// grad_x[plane, h, w] = sum of grad_y over the outputs covering (h, w) whose winner it is.
template <class T>
__global__ void max_pool_backward_kernel(PoolDims d, const T* gy, const index_t* argmax, T* gx) {
  const index_t inputs = d.planes * d.H * d.W;
  for (index_t e = global_thread(); e < inputs; e += global_stride()) {
    const index_t plane = div_nonneg(e, d.H * d.W), hw = e - plane * d.H * d.W;
    const index_t h = div_nonneg(hw, d.W), w = hw - h * d.W;
    index_t p0, p1, q0, q1;
    covering(h, d.P, d.kernel_h, d.stride_h, d.pad_h, p0, p1);
    covering(w, d.Q, d.kernel_w, d.stride_w, d.pad_w, q0, q1);
    const index_t base = plane * d.P * d.Q;
    T sum = T(0);
    for (index_t p = p0; p <= p1; ++p)
      for (index_t q = q0; q <= q1; ++q)
        if (argmax[base + p * d.Q + q] == hw) sum += gy[base + p * d.Q + q];
    gx[e] = sum;
  }
}

template <class T>
__global__ void avg_pool_forward_kernel(PoolDims d, const T* x, T* y) {
  const index_t outputs = d.planes * d.P * d.Q;
  for (index_t o = global_thread(); o < outputs; o += global_stride()) {
    const index_t plane = div_nonneg(o, d.P * d.Q), pq = o - plane * d.P * d.Q;
    const index_t p = div_nonneg(pq, d.Q), q = pq - p * d.Q;
    const Span sh = span(p, d.H, d.kernel_h, d.stride_h, d.pad_h, d.count_include_pad);
    const Span sw = span(q, d.W, d.kernel_w, d.stride_w, d.pad_w, d.count_include_pad);
    const T* xp = x + plane * d.H * d.W;
    T sum = T(0);
    for (index_t h = sh.lo; h < sh.hi; ++h)
      for (index_t w = sw.lo; w < sw.hi; ++w) sum += xp[h * d.W + w];
    y[o] = sum / static_cast<T>(sh.extent * sw.extent);
  }
}

// grad_x[plane, h, w] = sum over the outputs covering (h, w) of grad_y / divisor.
template <class T>
__global__ void avg_pool_backward_kernel(PoolDims d, const T* gy, T* gx) {
  const index_t inputs = d.planes * d.H * d.W;
  for (index_t e = global_thread(); e < inputs; e += global_stride()) {
    const index_t plane = div_nonneg(e, d.H * d.W), hw = e - plane * d.H * d.W;
    const index_t h = div_nonneg(hw, d.W), w = hw - h * d.W;
    index_t p0, p1, q0, q1;
    covering(h, d.P, d.kernel_h, d.stride_h, d.pad_h, p0, p1);
    covering(w, d.Q, d.kernel_w, d.stride_w, d.pad_w, q0, q1);
    const T* gyp = gy + plane * d.P * d.Q;
    T sum = T(0);
    for (index_t p = p0; p <= p1; ++p) {
      const Span sh = span(p, d.H, d.kernel_h, d.stride_h, d.pad_h, d.count_include_pad);
      for (index_t q = q0; q <= q1; ++q) {
        const Span sw = span(q, d.W, d.kernel_w, d.stride_w, d.pad_w, d.count_include_pad);
        sum += gyp[p * d.Q + q] / static_cast<T>(sh.extent * sw.extent);
      }
    }
    gx[e] = sum;
  }
}

// y[plane] = mean of x's plane; one block per plane, fixed-order tree in double.
template <class T>
__global__ void plane_means(const T* x, index_t planes, index_t area, T* y) {
  __shared__ double buffer[kBlockThreads];
  for (index_t plane = blockIdx.x; plane < planes; plane += gridDim.x) {
    const T* xp = x + plane * area;
    double sum = 0;
    for (index_t i = threadIdx.x; i < area; i += kBlockThreads) sum += static_cast<double>(xp[i]);
    sum = block_sum<kBlockThreads>(sum, buffer);
    if (threadIdx.x == 0) y[plane] = static_cast<T>(sum / static_cast<double>(area));
  }
}

template <class T>
__global__ void spread_planes(const T* gy, index_t planes, index_t area, T* gx) {
  for (index_t e = global_thread(); e < planes * area; e += global_stride()) {
    const index_t plane = div_nonneg(e, area);
    gx[e] = gy[plane] / static_cast<T>(area);
  }
}

void check_pool(const PoolGeometry& g, const char* op, const Tensor& in, const char* in_name,
                const Tensor& out, const char* out_name) {
  check_float(in, in_name);
  check_operand(in, op, in_name, in.device(), in.dtype(), g.N * g.C * g.H * g.W);
  check_operand(out, op, out_name, in.device(), in.dtype(), g.N * g.C * g.P * g.Q);
}

}  // namespace

void max_pool_forward(const PoolGeometry& g, const Tensor& x, Tensor& y, Tensor& argmax) {
  const char* op = "max_pool_forward";
  check_pool(g, op, x, "x", y, "y");
  if (argmax.defined()) check_operand(argmax, op, "argmax", x.device(), DType::int64, y.numel());
  use_device_of(x);
  with_float_type(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    max_pool_forward_kernel<T><<<grid_for(y.numel()), kBlockThreads>>>(
        dims_of(g), data_of<T>(x), data_of<T>(y), optional_data_of<index_t>(argmax));
    JUANJI_CUDA_CHECK_LAUNCH();
  });
}

void max_pool_backward(const PoolGeometry& g, const Tensor& grad_y, const Tensor& argmax,
                       Tensor& grad_x) {
  const char* op = "max_pool_backward";
  check_pool(g, op, grad_x, "grad_x", grad_y, "grad_y");
  check_operand(argmax, op, "argmax", grad_x.device(), DType::int64, grad_y.numel());
  use_device_of(grad_x);
  with_float_type(grad_x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    max_pool_backward_kernel<T><<<grid_for(grad_x.numel()), kBlockThreads>>>(
        dims_of(g), data_of<T>(grad_y), data_of<index_t>(argmax), data_of<T>(grad_x));
    JUANJI_CUDA_CHECK_LAUNCH();
  });
}

void avg_pool_forward(const PoolGeometry& g, const Tensor& x, Tensor& y) {
  check_pool(g, "avg_pool_forward", x, "x", y, "y");
  use_device_of(x);
  with_float_type(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    avg_pool_forward_kernel<T><<<grid_for(y.numel()), kBlockThreads>>>(dims_of(g), data_of<T>(x),
                                                                        data_of<T>(y));
    JUANJI_CUDA_CHECK_LAUNCH();
  });
}

void avg_pool_backward(const PoolGeometry& g, const Tensor& grad_y, Tensor& grad_x) {
  check_pool(g, "avg_pool_backward", grad_x, "grad_x", grad_y, "grad_y");
  use_device_of(grad_x);
  with_float_type(grad_x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    avg_pool_backward_kernel<T><<<grid_for(grad_x.numel()), kBlockThreads>>>(
        dims_of(g), data_of<T>(grad_y), data_of<T>(grad_x));
    JUANJI_CUDA_CHECK_LAUNCH();
  });
}

void global_avg_pool2d(const Tensor& x, Tensor& y) {
  const char* op = "global_avg_pool2d";
  check_float(x, "x");
  check(x.dim() == 4, op, ": x: expected (N, C, H, W), got ", shape_text(x.shape()));
  const index_t planes = x.size(0) * x.size(1), area = x.size(2) * x.size(3);
  check_operand(x, op, "x", x.device(), x.dtype(), planes * area);
  check_operand(y, op, "y", x.device(), x.dtype(), planes);
  use_device_of(x);
  with_float_type(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    plane_means<T><<<blocks_for(planes), kBlockThreads>>>(data_of<T>(x), planes, area, data_of<T>(y));
    JUANJI_CUDA_CHECK_LAUNCH();
  });
}

void global_avg_pool2d_backward(const Tensor& grad_y, Tensor& grad_x) {
  const char* op = "global_avg_pool2d_backward";
  check_float(grad_x, "grad_x");
  check(grad_x.dim() == 4, op, ": grad_x: expected (N, C, H, W), got ", shape_text(grad_x.shape()));
  const index_t planes = grad_x.size(0) * grad_x.size(1), area = grad_x.size(2) * grad_x.size(3);
  check_operand(grad_x, op, "grad_x", grad_x.device(), grad_x.dtype(), planes * area);
  check_operand(grad_y, op, "grad_y", grad_x.device(), grad_x.dtype(), planes);
  use_device_of(grad_x);
  with_float_type(grad_x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    spread_planes<T><<<grid_for(planes * area), kBlockThreads>>>(data_of<T>(grad_y), planes, area,
                                                                 data_of<T>(grad_x));
    JUANJI_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace juanji::cuda
