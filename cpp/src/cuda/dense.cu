// Activations, softmax / log-softmax, dropout and batch normalization on CUDA, with the CPU's
// formulas (cpu/dense.cpp). Reductions (softmax lines, batch-norm channels) are owned by one
// warp, thread or block each and summed in double in a fixed order: the same bits on every run.
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/ops.hpp"

namespace juanji::cuda {
namespace {

// ---- activations ------------------------------------------------------------------------

template <class T>
__global__ void activation_forward_kernel(Activation kind, T slope, const T* x, T* y, index_t n) {
  for (index_t i = global_thread(); i < n; i += global_stride()) y[i] = activate(kind, slope, x[i]);
}

// f'(.) * g for the CPU's formulas: relu/leaky read x; sigmoid/tanh read the forward output
// when from_output, else recompute it from x.
template <class T>
__device__ inline T activation_grad(Activation kind, T slope, T g, T v, bool from_output) {
  switch (kind) {
    case Activation::relu: return v > T(0) ? g : T(0);
    case Activation::leaky_relu: return v > T(0) ? g : g * slope;
    case Activation::sigmoid: {
      const T s = from_output ? v : sigmoid_of(v);
      return g * s * (T(1) - s);
    }
    case Activation::tanh: {
      const T t = from_output ? v : tanh_of(v);
      return g * (T(1) - t * t);
    }
  }
  return g;
}

template <class T>
__global__ void activation_backward_kernel(Activation kind, T slope, const T* gy, const T* input,
                                           bool from_output, T* gx, index_t n) {
  for (index_t i = global_thread(); i < n; i += global_stride())
    gx[i] = activation_grad(kind, slope, gy[i], input[i], from_output);
}

template <class T>
__global__ void add_kernel(const T* a, const T* b, T* y, bool relu, index_t n) {
  for (index_t i = global_thread(); i < n; i += global_stride()) {
    const T v = a[i] + b[i];
    y[i] = relu && v < T(0) ? T(0) : v;
  }
}

// ---- softmax family ---------------------------------------------------------------------

// One warp per contiguous row of D values (inner == 1). Each lane keeps the exponentials of its
// own elements in `out` between passes, so no barrier is needed.
template <class T, bool Log, bool Backward>
__global__ void softmax_rows(const T* x, const T* g, T* out, index_t rows, index_t D) {
  constexpr int kWarps = kBlockThreads / 32;
  const int lane = threadIdx.x % 32;
  for (index_t row = static_cast<index_t>(blockIdx.x) * kWarps + threadIdx.x / 32; row < rows;
       row += static_cast<index_t>(gridDim.x) * kWarps) {
    const T* xr = x + row * D;
    const T* gr = Backward ? g + row * D : nullptr;
    T* o = out + row * D;
    T lane_max = -INFINITY;
    for (index_t d = lane; d < D; d += 32) lane_max = xr[d] > lane_max ? xr[d] : lane_max;
    const T m = warp_max(lane_max);
    double sum = 0, dot = 0;
    for (index_t d = lane; d < D; d += 32) {
      const T e = exp_of(static_cast<T>(xr[d] - m));
      o[d] = e;
      sum += static_cast<double>(e);
      if constexpr (Backward)
        dot += Log ? static_cast<double>(gr[d]) : static_cast<double>(gr[d]) * static_cast<double>(e);
    }
    sum = warp_sum(sum);
    if constexpr (Backward) dot = warp_sum(dot);
    const T inv = static_cast<T>(1.0 / sum);
    if constexpr (!Backward && !Log) {
      for (index_t d = lane; d < D; d += 32) o[d] *= inv;
    } else if constexpr (!Backward) {
      const T lse = static_cast<T>(log(sum));  // x - m is exact near the maximum
      for (index_t d = lane; d < D; d += 32) o[d] = (xr[d] - m) - lse;
    } else if constexpr (!Log) {
      const T mean = static_cast<T>(dot / sum);  // s * (g - sum(g * s)), s = e / sum
      for (index_t d = lane; d < D; d += 32) o[d] = o[d] * inv * (gr[d] - mean);
    } else {
      const T total = static_cast<T>(dot);  // g - s * sum(g)
      for (index_t d = lane; d < D; d += 32) o[d] = gr[d] - o[d] * inv * total;
    }
  }
}

// One thread per line of a strided reduction (inner > 1): consecutive threads take adjacent
// lines, so every pass over D reads coalesced rows. The CPU's softmax_block formulas.
template <class T, bool Log, bool Backward>
__global__ void softmax_strided(const T* x, const T* g, T* out, index_t outer, index_t D, index_t inner) {
  for (index_t line = global_thread(); line < outer * inner; line += global_stride()) {
    const index_t o = div_nonneg(line, inner);
    const index_t base = o * D * inner + (line - o * inner);
    double m = x[base];
    for (index_t d = 1; d < D; ++d) {
      const T v = x[base + d * inner];
      m = v > m ? v : m;
    }
    double sum = 0, dot = 0;
    for (index_t d = 0; d < D; ++d) {
      const index_t at = base + d * inner;
      const T e = exp_of(static_cast<T>(x[at] - static_cast<T>(m)));
      out[at] = e;
      sum += e;
      if constexpr (Backward) dot += Log ? static_cast<double>(g[at]) : static_cast<double>(g[at]) * e;
    }
    for (index_t d = 0; d < D; ++d) {
      const index_t at = base + d * inner;
      if constexpr (!Backward && !Log) out[at] = static_cast<T>(out[at] / sum);
      else if constexpr (!Backward) out[at] = static_cast<T>(x[at] - m - log(sum));
      else if constexpr (!Log) out[at] = static_cast<T>(out[at] / sum * (g[at] - dot / sum));
      else out[at] = static_cast<T>(g[at] - out[at] / sum * dot);
    }
  }
}

template <class T, bool Log, bool Backward>
void launch_softmax(const T* x, const T* g, T* out, index_t outer, index_t D, index_t inner) {
  if (inner == 1) {
    softmax_rows<T, Log, Backward><<<grid_for(outer * 32), kBlockThreads>>>(x, g, out, outer, D);
  } else {
    softmax_strided<T, Log, Backward><<<grid_for(outer * inner), kBlockThreads>>>(x, g, out, outer, D, inner);
  }
  JUANJI_CUDA_CHECK_LAUNCH();
}

// ---- dropout ----------------------------------------------------------------------------

// The CPU's counter-based uniform draw in [0, 1): a function of (seed, i) only.
__device__ inline double uniform_at(std::uint64_t seed, std::uint64_t i) {
  std::uint64_t z = seed + (i + 1) * 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

template <class T>
__global__ void dropout_kernel(const T* x, double p, std::uint64_t seed, T keep, T* mask, T* y, index_t n) {
  for (index_t i = global_thread(); i < n; i += global_stride()) {
    const T m = uniform_at(seed, static_cast<std::uint64_t>(i)) >= p ? keep : T(0);
    mask[i] = m;
    y[i] = x[i] * m;
  }
}

template <class T>
__global__ void multiply_kernel(const T* a, const T* b, T* out, index_t n) {
  for (index_t i = global_thread(); i < n; i += global_stride()) out[i] = a[i] * b[i];
}

// ---- batch normalization ----------------------------------------------------------------

struct ChannelDims {
  index_t N, C, area;
};

// Element e of channel c (e over N * area) in an (N, C, area) tensor.
__device__ inline index_t channel_at(const ChannelDims& d, index_t c, index_t e) {
  const index_t n = div_nonneg(e, d.area);
  return (n * d.C + c) * d.area + (e - n * d.area);
}

// One block per channel: statistics (training) or running statistics (eval), then y.
template <class T>
__global__ void batch_norm_forward_kernel(ChannelDims d, const T* x, const T* gamma, const T* beta,
                                          T* running_mean, T* running_var, bool training,
                                          double momentum, double eps, T* y, T* save_mean,
                                          T* save_invstd) {
  __shared__ double buffer[kBlockThreads];
  const index_t count = d.N * d.area;
  for (index_t c = blockIdx.x; c < d.C; c += gridDim.x) {
    double mean, invstd;
    if (training) {
      double sum = 0;
      for (index_t e = threadIdx.x; e < count; e += kBlockThreads) sum += static_cast<double>(x[channel_at(d, c, e)]);
      mean = block_sum<kBlockThreads>(sum, buffer) / static_cast<double>(count);
      double sq = 0;  // second pass about the mean: no cancellation
      for (index_t e = threadIdx.x; e < count; e += kBlockThreads) {
        const double dev = static_cast<double>(x[channel_at(d, c, e)]) - mean;
        sq += dev * dev;
      }
      const double var = block_sum<kBlockThreads>(sq, buffer) / static_cast<double>(count);
      invstd = 1.0 / sqrt(var + eps);
      if (threadIdx.x == 0) {
        if (running_mean) running_mean[c] = static_cast<T>((1 - momentum) * running_mean[c] + momentum * mean);
        if (running_var)
          running_var[c] = static_cast<T>((1 - momentum) * running_var[c] +
                                          momentum * var * static_cast<double>(count) / static_cast<double>(count - 1));
      }
    } else {
      mean = running_mean[c];
      invstd = 1.0 / sqrt(static_cast<double>(running_var[c]) + eps);
    }
    if (threadIdx.x == 0) {
      if (save_mean) save_mean[c] = static_cast<T>(mean);
      if (save_invstd) save_invstd[c] = static_cast<T>(invstd);
    }
    const double scale = (gamma ? static_cast<double>(gamma[c]) : 1.0) * invstd;
    const T s = static_cast<T>(scale);
    const T shift = static_cast<T>((beta ? static_cast<double>(beta[c]) : 0.0) - mean * scale);
    for (index_t e = threadIdx.x; e < count; e += kBlockThreads) {
      const index_t at = channel_at(d, c, e);
      y[at] = x[at] * s + shift;
    }
  }
}

template <class T>
__global__ void batch_norm_backward_kernel(ChannelDims d, const T* gy, const T* x, const T* gamma,
                                           const T* save_mean, const T* save_invstd, T* gx,
                                           T* grad_gamma, T* grad_beta) {
  __shared__ double buffer[kBlockThreads];
  const index_t count = d.N * d.area;
  for (index_t c = blockIdx.x; c < d.C; c += gridDim.x) {
    const double mean = save_mean[c], invstd = save_invstd[c];
    double sum_g = 0, sum_g_dev = 0;
    for (index_t e = threadIdx.x; e < count; e += kBlockThreads) {
      const index_t at = channel_at(d, c, e);
      const double g = gy[at];
      sum_g += g;
      sum_g_dev += g * (static_cast<double>(x[at]) - mean);
    }
    sum_g = block_sum<kBlockThreads>(sum_g, buffer);
    const double sum_g_xhat = block_sum<kBlockThreads>(sum_g_dev, buffer) * invstd;
    if (threadIdx.x == 0) {
      if (grad_beta) grad_beta[c] = static_cast<T>(sum_g);
      if (grad_gamma) grad_gamma[c] = static_cast<T>(sum_g_xhat);
    }
    if (!gx) continue;
    // grad_x = gamma * invstd * (g - mean(g) - xhat * mean(g * xhat))
    const double k = (gamma ? static_cast<double>(gamma[c]) : 1.0) * invstd;
    const double mean_g = sum_g / static_cast<double>(count);
    const double mean_gx = sum_g_xhat / static_cast<double>(count);
    for (index_t e = threadIdx.x; e < count; e += kBlockThreads) {
      const index_t at = channel_at(d, c, e);
      const double xhat = (static_cast<double>(x[at]) - mean) * invstd;
      gx[at] = static_cast<T>(k * (static_cast<double>(gy[at]) - mean_g - xhat * mean_gx));
    }
  }
}

void check_channel_param(const Tensor& t, const char* op, const char* name, const Tensor& x, index_t C) {
  if (t.defined()) check_operand(t, op, name, x.device(), x.dtype(), C);
}

}  // namespace

void activation_forward(Activation kind, double negative_slope, const Tensor& x, Tensor& y) {
  const char* op = "activation_forward";
  check_float(x, "x");
  check_operand(x, op, "x", x.device(), x.dtype(), x.numel());
  check_operand(y, op, "y", x.device(), x.dtype(), x.numel());
  if (x.numel() == 0) return;
  use_device_of(x);
  with_float_type(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    activation_forward_kernel<T><<<grid_for(x.numel()), kBlockThreads>>>(
        kind, static_cast<T>(negative_slope), data_of<T>(x), data_of<T>(y), x.numel());
    JUANJI_CUDA_CHECK_LAUNCH();
  });
}

void add(const Tensor& a, const Tensor& b, Tensor& y, bool relu) {
  const char* op = "add_into";
  check_float(a, "a");
  check_operand(a, op, "a", a.device(), a.dtype(), a.numel());
  check_operand(b, op, "b", a.device(), a.dtype(), a.numel());
  check_operand(y, op, "y", a.device(), a.dtype(), a.numel());
  check(b.shape() == a.shape() && y.shape() == a.shape(), op, ": a ", shape_text(a.shape()), ", b ",
        shape_text(b.shape()), " and y ", shape_text(y.shape()), " must have one shape");
  if (a.numel() == 0) return;
  use_device_of(a);
  with_float_type(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    add_kernel<T><<<grid_for(a.numel()), kBlockThreads>>>(data_of<T>(a), data_of<T>(b), data_of<T>(y), relu,
                                                          a.numel());
    JUANJI_CUDA_CHECK_LAUNCH();
  });
}

void activation_backward(Activation kind, double negative_slope, const Tensor& grad_y,
                         const Tensor& input, bool input_is_output, Tensor& grad_x) {
  const char* op = "activation_backward";
  check_float(grad_y, "grad_y");
  const index_t n = grad_y.numel();
  check_operand(grad_y, op, "grad_y", grad_y.device(), grad_y.dtype(), n);
  check_operand(input, op, input_is_output ? "y" : "x", grad_y.device(), grad_y.dtype(), n);
  check_operand(grad_x, op, "grad_x", grad_y.device(), grad_y.dtype(), n);
  if (n == 0) return;
  use_device_of(grad_y);
  with_float_type(grad_y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    activation_backward_kernel<T><<<grid_for(n), kBlockThreads>>>(
        kind, static_cast<T>(negative_slope), data_of<T>(grad_y), data_of<T>(input), input_is_output,
        data_of<T>(grad_x), n);
    JUANJI_CUDA_CHECK_LAUNCH();
  });
}

void softmax_lines(const Tensor& x, const Tensor& grad_out, Tensor& out, std::int64_t outer,
                   std::int64_t D, std::int64_t inner, bool log) {
  const char* op = log ? "log_softmax" : "softmax";
  check_float(x, "x");
  const index_t n = outer * D * inner;
  check_operand(x, op, "x", x.device(), x.dtype(), n);
  check_operand(out, op, "out", x.device(), x.dtype(), n);
  const bool backward = grad_out.defined();
  if (backward) check_operand(grad_out, op, "grad_out", x.device(), x.dtype(), n);
  if (n == 0) return;
  use_device_of(x);
  with_float_type(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xd = data_of<T>(x);
    const T* gd = optional_data_of<T>(grad_out);
    T* od = data_of<T>(out);
    if (log && backward) launch_softmax<T, true, true>(xd, gd, od, outer, D, inner);
    else if (log) launch_softmax<T, true, false>(xd, gd, od, outer, D, inner);
    else if (backward) launch_softmax<T, false, true>(xd, gd, od, outer, D, inner);
    else launch_softmax<T, false, false>(xd, gd, od, outer, D, inner);
  });
}

void dropout_forward(const Tensor& x, double p, std::uint64_t seed, Tensor& mask, Tensor& y) {
  const char* op = "dropout";
  check_float(x, "x");
  check(p >= 0 && p <= 1, op, ": p must lie in [0, 1], got ", p);
  const index_t n = x.numel();
  check_operand(x, op, "x", x.device(), x.dtype(), n);
  check_operand(mask, op, "mask", x.device(), x.dtype(), n);
  check_operand(y, op, "y", x.device(), x.dtype(), n);
  if (n == 0) return;
  use_device_of(x);
  const double scale = p < 1 ? 1.0 / (1.0 - p) : 0.0;
  with_float_type(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    dropout_kernel<T><<<grid_for(n), kBlockThreads>>>(data_of<T>(x), p, seed, static_cast<T>(scale),
                                                      data_of<T>(mask), data_of<T>(y), n);
    JUANJI_CUDA_CHECK_LAUNCH();
  });
}

void dropout_backward(const Tensor& grad_y, const Tensor& mask, Tensor& grad_x) {
  const char* op = "dropout_backward";
  check_float(grad_y, "grad_y");
  const index_t n = grad_y.numel();
  check_operand(grad_y, op, "grad_y", grad_y.device(), grad_y.dtype(), n);
  check_operand(mask, op, "mask", grad_y.device(), grad_y.dtype(), n);
  check_operand(grad_x, op, "grad_x", grad_y.device(), grad_y.dtype(), n);
  if (n == 0) return;
  use_device_of(grad_y);
  with_float_type(grad_y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    multiply_kernel<T><<<grid_for(n), kBlockThreads>>>(data_of<T>(grad_y), data_of<T>(mask),
                                                       data_of<T>(grad_x), n);
    JUANJI_CUDA_CHECK_LAUNCH();
  });
}

void batch_norm2d_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                          Tensor& running_mean, Tensor& running_var, bool training,
                          double momentum, double eps, Tensor& y, Tensor& save_mean,
                          Tensor& save_invstd) {
  const char* op = "batch_norm2d";
  check_float(x, "x");
  check_dim(x, "x", 4, "(N, C, H, W)");
  const ChannelDims d{x.size(0), x.size(1), x.size(2) * x.size(3)};
  check_operand(x, op, "x", x.device(), x.dtype(), x.numel());
  check_operand(y, op, "y", x.device(), x.dtype(), x.numel());
  check_channel_param(gamma, op, "gamma", x, d.C);
  check_channel_param(beta, op, "beta", x, d.C);
  check_channel_param(running_mean, op, "running_mean", x, d.C);
  check_channel_param(running_var, op, "running_var", x, d.C);
  check_channel_param(save_mean, op, "save_mean", x, d.C);
  check_channel_param(save_invstd, op, "save_invstd", x, d.C);
  check(eps > 0, op, ": eps must be positive, got ", eps);
  if (training)
    check(d.N * d.area > 1, op, ": training needs more than one value per channel, got x of shape ",
          shape_text(x.shape()));
  else
    check(running_mean.defined() && running_var.defined(), op,
          ": evaluation needs running_mean and running_var");
  if (d.C == 0) return;
  use_device_of(x);
  with_float_type(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    batch_norm_forward_kernel<T><<<blocks_for(d.C), kBlockThreads>>>(
        d, data_of<T>(x), optional_data_of<T>(gamma), optional_data_of<T>(beta),
        optional_data_of<T>(running_mean), optional_data_of<T>(running_var), training, momentum, eps,
        data_of<T>(y), optional_data_of<T>(save_mean), optional_data_of<T>(save_invstd));
    JUANJI_CUDA_CHECK_LAUNCH();
  });
}

void batch_norm2d_backward(const Tensor& grad_y, const Tensor& x, const Tensor& gamma,
                           const Tensor& save_mean, const Tensor& save_invstd, Tensor& grad_x,
                           Tensor& grad_gamma, Tensor& grad_beta) {
  const char* op = "batch_norm2d_backward";
  check_float(x, "x");
  check_dim(x, "x", 4, "(N, C, H, W)");
  const ChannelDims d{x.size(0), x.size(1), x.size(2) * x.size(3)};
  check_operand(x, op, "x", x.device(), x.dtype(), x.numel());
  check_operand(grad_y, op, "grad_y", x.device(), x.dtype(), x.numel());
  if (grad_x.defined()) check_operand(grad_x, op, "grad_x", x.device(), x.dtype(), x.numel());
  check_channel_param(gamma, op, "gamma", x, d.C);
  check_operand(save_mean, op, "save_mean", x.device(), x.dtype(), d.C);
  check_operand(save_invstd, op, "save_invstd", x.device(), x.dtype(), d.C);
  check_channel_param(grad_gamma, op, "grad_gamma", x, d.C);
  check_channel_param(grad_beta, op, "grad_beta", x, d.C);
  if (d.C == 0) return;
  use_device_of(x);
  with_float_type(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    batch_norm_backward_kernel<T><<<blocks_for(d.C), kBlockThreads>>>(
        d, data_of<T>(grad_y), data_of<T>(x), optional_data_of<T>(gamma), data_of<T>(save_mean),
        data_of<T>(save_invstd), optional_data_of<T>(grad_x), optional_data_of<T>(grad_gamma),
        optional_data_of<T>(grad_beta));
    JUANJI_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace juanji::cuda
