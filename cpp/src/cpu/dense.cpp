// CPU activations, softmax / log-softmax, dropout and batch normalization (linear layers live
// with the GEMM). Element-wise ops pick the activation once, outside the loop, so each loop body is
// a straight inline expression the compiler can vectorise. Reductions (softmax rows, batch-norm
// channels) are owned by one thread each and summed in double in a fixed order, so results do not
// depend on the thread count.
#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "cpu/microkernels.hpp"
#include "cpu/op_support.hpp"
#include "cpu/pool.hpp"
#include "cpu/vec_math.hpp"
#include "cpu/workspace.hpp"
#include "juanji/ops/dense.hpp"
#if JUANJI_WITH_CUDA
#include "cuda/ops.hpp"
#endif

namespace juanji {
namespace {

using cpu::check_float_operand;
using cpu::check_kernel_tensor;
using cpu::dispatch_float;

// out[i] = f(i) for i in [0, n).
template <class T, class F>
void for_each_index(std::int64_t n, T* out, const F& f) {
#pragma omp parallel num_threads(::juanji::team_size()) if (n >= cpu::kParallelGrain)
  {
    // A per-thread copy: the shared functor's captures could alias `out` as far as the compiler
    // knows, which stops it from vectorising (leaky ReLU ran 25x slower).
    const F local = f;
#pragma omp for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) out[i] = local(i);
  }
}

// float32 uses the vectorisable versions; float64 keeps libm's accuracy.
inline float exp_of(float v) { return cpu::exp_f32(v); }
inline double exp_of(double v) { return std::exp(v); }
inline float tanh_of(float v) { return cpu::tanh_f32(v); }
inline double tanh_of(double v) { return std::tanh(v); }
inline float sigmoid_of(float v) { return cpu::sigmoid_f32(v); }
inline double sigmoid_of(double v) {  // never overflows: exp of a non-positive number only
  const double e = std::exp(-std::abs(v));
  return v >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
}

// y = f(x), elementwise; x, y (n). NaN inputs give NaN outputs.
template <class T>
void activation_kernel(Activation kind, T slope, const T* x, T* y, std::int64_t n) {
  switch (kind) {
    case Activation::relu:
      for_each_index(n, y, [x](std::int64_t i) {
        const T v = x[i];
        return v < T(0) ? T(0) : v;
      });
      break;
    case Activation::leaky_relu:
      for_each_index(n, y, [x, slope](std::int64_t i) {
        const T v = x[i];
        return v > T(0) ? v : v * slope;
      });
      break;
    case Activation::sigmoid:
      for_each_index(n, y, [x](std::int64_t i) { return sigmoid_of(x[i]); });
      break;
    case Activation::tanh:
      for_each_index(n, y, [x](std::int64_t i) { return tanh_of(x[i]); });
      break;
  }
}

// grad_x = f'(x) * grad_y; relu/leaky read x, sigmoid/tanh read the forward output y (or
// recompute it from x when y is null). All (n); grad_x may alias grad_y.
template <class T>
void activation_backward_kernel(Activation kind, T slope, const T* gy, const T* x, const T* y,
                                T* gx, std::int64_t n) {
  switch (kind) {
    case Activation::relu:
      // Load gy unconditionally: a load under the condition cannot be vectorised, and the
      // branches it leaves mispredict on half of random data (25x slower).
      for_each_index(n, gx, [gy, x](std::int64_t i) {
        const T g = gy[i];
        return x[i] > T(0) ? g : T(0);
      });
      break;
    case Activation::leaky_relu:
      for_each_index(n, gx, [gy, x, slope](std::int64_t i) {
        const T g = gy[i];
        return x[i] > T(0) ? g : g * slope;
      });
      break;
    case Activation::sigmoid:
      if (y)
        for_each_index(n, gx, [gy, y](std::int64_t i) { return gy[i] * y[i] * (T(1) - y[i]); });
      else
        for_each_index(n, gx, [gy, x](std::int64_t i) {
          const T s = sigmoid_of(x[i]);
          return gy[i] * s * (T(1) - s);
        });
      break;
    case Activation::tanh:
      if (y)
        for_each_index(n, gx, [gy, y](std::int64_t i) { return gy[i] * (T(1) - y[i] * y[i]); });
      else
        for_each_index(n, gx, [gy, x](std::int64_t i) {
          const T t = tanh_of(x[i]);
          return gy[i] * (T(1) - t * t);
        });
      break;
  }
}

const char* activation_name(Activation kind) {
  switch (kind) {
    case Activation::relu: return "relu";
    case Activation::leaky_relu: return "leaky_relu";
    case Activation::sigmoid: return "sigmoid";
    case Activation::tanh: return "tanh";
  }
  return "activation";
}

// A softmax problem: x viewed as (outer, D, inner), reduced over D.
struct Lines {
  std::int64_t outer, D, inner;
};

Lines lines_of(const Shape& shape, std::int64_t dim) {
  Lines l{1, 1, 1};
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(shape.size()); ++i) {
    if (i < dim) l.outer *= shape[i];
    else if (i == dim) l.D = shape[i];
    else l.inner *= shape[i];
  }
  return l;
}

constexpr std::int64_t kLaneBlock = 64;  // columns handled together when the reduced dim is strided

// The four softmax-family computations, applied to one block of `lanes` columns whose D values
// sit `stride` apart (stride 1, lanes 1 for a contiguous row). x, g, out point at element d = 0.
enum class SoftmaxOp { softmax, log_softmax, softmax_backward, log_softmax_backward };

template <class T, SoftmaxOp Op>
void softmax_block(const T* x, const T* g, T* out, std::int64_t D, std::int64_t stride,
                   std::int64_t lanes) {
  double max_buf[kLaneBlock], sum_buf[kLaneBlock], dot_buf[kLaneBlock];
  for (std::int64_t j = 0; j < lanes; ++j) {
    max_buf[j] = x[j];
    sum_buf[j] = 0;
    dot_buf[j] = 0;
  }
  for (std::int64_t d = 1; d < D; ++d) {
    const T* xd = x + d * stride;
    for (std::int64_t j = 0; j < lanes; ++j) max_buf[j] = xd[j] > max_buf[j] ? xd[j] : max_buf[j];
  }
  // out holds exp(x - max) after this pass; the backward ops also need sum(g) or sum(g * e).
  for (std::int64_t d = 0; d < D; ++d) {
    const T* xd = x + d * stride;
    T* od = out + d * stride;
    for (std::int64_t j = 0; j < lanes; ++j) {
      const T e = exp_of(static_cast<T>(xd[j] - static_cast<T>(max_buf[j])));
      sum_buf[j] += e;
      od[j] = e;
      if constexpr (Op == SoftmaxOp::softmax_backward)
        dot_buf[j] += static_cast<double>(g[d * stride + j]) * e;
      else if constexpr (Op == SoftmaxOp::log_softmax_backward)
        dot_buf[j] += g[d * stride + j];
    }
  }
  for (std::int64_t d = 0; d < D; ++d) {
    const T* xd = x + d * stride;
    T* od = out + d * stride;
    for (std::int64_t j = 0; j < lanes; ++j) {
      const double sum = sum_buf[j];
      if constexpr (Op == SoftmaxOp::softmax) {
        od[j] = static_cast<T>(od[j] / sum);
      } else if constexpr (Op == SoftmaxOp::log_softmax) {
        od[j] = static_cast<T>(xd[j] - max_buf[j] - std::log(sum));
      } else if constexpr (Op == SoftmaxOp::softmax_backward) {
        // s * (g - sum(g * s)) with s = e / sum
        const double s = od[j] / sum;
        od[j] = static_cast<T>(s * (g[d * stride + j] - dot_buf[j] / sum));
      } else {
        // g - s * sum(g)
        od[j] = static_cast<T>(g[d * stride + j] - od[j] / sum * dot_buf[j]);
      }
    }
  }
}

// The same computations on one contiguous row x, g, out (D): elementwise loops and lane-split
// reductions that vectorise.
template <class T, SoftmaxOp Op>
void softmax_row(const T* x, const T* g, T* out, std::int64_t D) {
  const T m = cpu::max_lanes(x, D);
  for (std::int64_t d = 0; d < D; ++d) out[d] = exp_of(static_cast<T>(x[d] - m));
  const double sum = cpu::sum_lanes(D, [out](std::int64_t d) { return double(out[d]); });
  double dot = 0;
  if constexpr (Op == SoftmaxOp::softmax_backward)
    dot = cpu::sum_lanes(D, [g, out](std::int64_t d) { return double(g[d]) * double(out[d]); });
  if constexpr (Op == SoftmaxOp::log_softmax_backward)
    dot = cpu::sum_lanes(D, [g](std::int64_t d) { return double(g[d]); });
  if constexpr (Op == SoftmaxOp::softmax) {
    const T inv = static_cast<T>(1.0 / sum);
    for (std::int64_t d = 0; d < D; ++d) out[d] *= inv;
  } else if constexpr (Op == SoftmaxOp::log_softmax) {
    const T lse = static_cast<T>(std::log(sum));  // x - m is exact near the maximum
    for (std::int64_t d = 0; d < D; ++d) out[d] = (x[d] - m) - lse;
  } else if constexpr (Op == SoftmaxOp::softmax_backward) {
    const T inv = static_cast<T>(1.0 / sum);
    const T mean = static_cast<T>(dot / sum);
    for (std::int64_t d = 0; d < D; ++d) out[d] = out[d] * inv * (g[d] - mean);
  } else {
    const T inv = static_cast<T>(1.0 / sum);
    const T total = static_cast<T>(dot);
    for (std::int64_t d = 0; d < D; ++d) out[d] = g[d] - out[d] * inv * total;
  }
}

// x, g, out (outer, D, inner); g may be null for the forward ops.
template <class T, SoftmaxOp Op>
void softmax_kernel(const T* x, const T* g, T* out, const Lines& l) {
  if (l.D == 0) return;
  if (l.inner == 1) {
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (l.outer * l.D >= cpu::kParallelGrain)
    for (std::int64_t o = 0; o < l.outer; ++o)
      softmax_row<T, Op>(x + o * l.D, g ? g + o * l.D : nullptr, out + o * l.D, l.D);
    return;
  }
  const std::int64_t blocks = (l.inner + kLaneBlock - 1) / kLaneBlock;
  const std::int64_t tasks = l.outer * blocks;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (l.outer * l.D * l.inner >= cpu::kParallelGrain)
  for (std::int64_t t = 0; t < tasks; ++t) {
    const std::int64_t o = t / blocks;
    const std::int64_t j0 = (t % blocks) * kLaneBlock;
    const std::int64_t lanes = std::min(kLaneBlock, l.inner - j0);
    const std::int64_t base = o * l.D * l.inner + j0;
    softmax_block<T, Op>(x + base, g ? g + base : nullptr, out + base, l.D, l.inner, lanes);
  }
}

template <SoftmaxOp Op>
Tensor softmax_family(const Tensor& grad_out_in, const Tensor& x_in, std::int64_t dim,
                      const char* op) {
  check_float_operand(x_in, op, "x");
  const std::int64_t d = cpu::wrap_dim(dim, x_in.dim(), op, x_in.shape());
  Tensor grad_out;
  if constexpr (Op == SoftmaxOp::softmax_backward || Op == SoftmaxOp::log_softmax_backward) {
    check_float_operand(grad_out_in, op, "grad_out");
    check_same_dtype(grad_out_in, "grad_out", x_in, "x");
    check_same_device(grad_out_in, "grad_out", x_in, "x");
    check(grad_out_in.shape() == x_in.shape(), op, ": grad_out has shape ",
          shape_text(grad_out_in.shape()), " but x has shape ", shape_text(x_in.shape()));
    grad_out = grad_out_in.contiguous();
  }
  const Tensor x = x_in.contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  const Lines l = lines_of(x.shape(), d);
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) {
    const bool log = Op == SoftmaxOp::log_softmax || Op == SoftmaxOp::log_softmax_backward;
    cuda::softmax_lines(x, grad_out, out, l.outer, l.D, l.inner, log);
    return out;
  }
#endif
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    softmax_kernel<T, Op>(x.data<T>(), grad_out.defined() ? grad_out.data<T>() : nullptr,
                          out.data<T>(), l);
  });
  return out;
}

// Counter-based uniform draw in [0, 1): the value for element i depends only on (seed, i), so
// dropout masks do not depend on the thread count.
inline double uniform_at(std::uint64_t seed, std::uint64_t i) {
  std::uint64_t z = seed + (i + 1) * 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

void check_channel_param(const Tensor& t, const char* name, std::int64_t C, DType dtype,
                         const char* op) {
  if (!t.defined()) return;
  check_kernel_tensor(t, op, name, dtype, C);
}

}  // namespace

Tensor activation(Activation kind, const Tensor& x_in, double negative_slope) {
  const char* op = activation_name(kind);
  check(std::isfinite(negative_slope), op, ": negative_slope must be finite, got ", negative_slope);
  check_float_operand(x_in, op, "x");
  const Tensor x = x_in.contiguous();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) {
    cuda::activation_forward(kind, negative_slope, x, y);
    return y;
  }
#endif
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    activation_kernel<T>(kind, static_cast<T>(negative_slope), x.data<T>(), y.data<T>(),
                         x.numel());
  });
  return y;
}

Tensor activation_backward(Activation kind, const Tensor& grad_out_in, const Tensor& x_in,
                           double negative_slope) {
  const char* op = activation_name(kind);
  check(std::isfinite(negative_slope), op, ": negative_slope must be finite, got ", negative_slope);
  check_float_operand(x_in, op, "x");
  check_float_operand(grad_out_in, op, "grad_out");
  check_same_dtype(grad_out_in, "grad_out", x_in, "x");
  check_same_device(grad_out_in, "grad_out", x_in, "x");
  check(grad_out_in.shape() == x_in.shape(), op, "_backward: grad_out has shape ",
        shape_text(grad_out_in.shape()), " but x has shape ", shape_text(x_in.shape()));
  const Tensor x = x_in.contiguous();
  const Tensor grad_out = grad_out_in.contiguous();
  Tensor grad_x = Tensor::empty(x.shape(), x.dtype(), x.device());
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) {
    cuda::activation_backward(kind, negative_slope, grad_out, x, false, grad_x);
    return grad_x;
  }
#endif
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    activation_backward_kernel<T>(kind, static_cast<T>(negative_slope), grad_out.data<T>(),
                                  x.data<T>(), nullptr, grad_x.data<T>(), x.numel());
  });
  return grad_x;
}

// x, y: same shape, contiguous.
void activation_forward_into(Activation kind, double negative_slope, const Tensor& x, Tensor& y) {
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) return cuda::activation_forward(kind, negative_slope, x, y);
#endif
  const char* op = "activation_forward_into";
  check_float(x, "x");
  check_kernel_tensor(x, op, "x", x.dtype(), x.numel());
  check_kernel_tensor(y, op, "y", x.dtype(), x.numel());
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    activation_kernel<T>(kind, static_cast<T>(negative_slope), x.data<T>(), y.data<T>(),
                         x.numel());
  });
}

// grad_y, x, y, grad_x: same shape, contiguous; relu/leaky need x, sigmoid/tanh need y.
void activation_backward_into(Activation kind, double negative_slope, const Tensor& grad_y,
                              const Tensor& x, const Tensor& y, Tensor& grad_x) {
#if JUANJI_WITH_CUDA
  if (grad_y.device().is_cuda()) {
    const bool uses_x = kind == Activation::relu || kind == Activation::leaky_relu;
    return cuda::activation_backward(kind, negative_slope, grad_y, uses_x ? x : y, !uses_x, grad_x);
  }
#endif
  const char* op = "activation_backward_into";
  check_float(grad_y, "grad_y");
  const DType dtype = grad_y.dtype();
  const std::int64_t n = grad_y.numel();
  check_kernel_tensor(grad_y, op, "grad_y", dtype, n);
  check_kernel_tensor(grad_x, op, "grad_x", dtype, n);
  const bool needs_x = kind == Activation::relu || kind == Activation::leaky_relu;
  const Tensor& input = needs_x ? x : y;
  check_kernel_tensor(input, op, needs_x ? "x" : "y", dtype, n);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* in = input.data<T>();
    activation_backward_kernel<T>(kind, static_cast<T>(negative_slope), grad_y.data<T>(), in,
                                  needs_x ? nullptr : in, grad_x.data<T>(), n);
  });
}

Tensor softmax(const Tensor& x, std::int64_t dim) {
  return softmax_family<SoftmaxOp::softmax>(Tensor(), x, dim, "softmax");
}

Tensor log_softmax(const Tensor& x, std::int64_t dim) {
  return softmax_family<SoftmaxOp::log_softmax>(Tensor(), x, dim, "log_softmax");
}

Tensor softmax_backward(const Tensor& grad_out, const Tensor& x, std::int64_t dim) {
  return softmax_family<SoftmaxOp::softmax_backward>(grad_out, x, dim, "softmax_backward");
}

Tensor log_softmax_backward(const Tensor& grad_out, const Tensor& x, std::int64_t dim) {
  return softmax_family<SoftmaxOp::log_softmax_backward>(grad_out, x, dim,
                                                         "log_softmax_backward");
}

// x, mask, y: same shape, contiguous. p = 1 drops everything (mask 0).
void dropout_forward(const Tensor& x, double p, Tensor& mask, Tensor& y) {
  const char* op = "dropout";
  check_float(x, "x");
  check(p >= 0 && p <= 1, op, ": p must lie in [0, 1], got ", p);
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) return cuda::dropout_forward(x, p, random_u64(), mask, y);
#endif
  const std::int64_t n = x.numel();
  check_kernel_tensor(x, op, "x", x.dtype(), n);
  check_kernel_tensor(mask, op, "mask", x.dtype(), n);
  check_kernel_tensor(y, op, "y", x.dtype(), n);
  const std::uint64_t seed = random_u64();
  const double scale = p < 1 ? 1.0 / (1.0 - p) : 0.0;
  if (x.dtype() == DType::float32) {
    // uniform_at(seed, i) >= p exactly when its 53-bit integer is >= ceil(p * 2^53).
    const auto threshold = static_cast<std::uint64_t>(std::ceil(p * 0x1p53));
    const cpu::Dropout kernel = cpu::active_kernels().dropout_f32;
    constexpr std::int64_t kChunk = 4096;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (n >= cpu::kParallelGrain)
    for (std::int64_t first = 0; first < n; first += kChunk)
      kernel({x.data<float>() + first, mask.data<float>() + first, y.data<float>() + first,
              std::min(kChunk, n - first), seed, static_cast<std::uint64_t>(first), threshold, static_cast<float>(scale)});
    return;
  }
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xd = x.data<T>();
    T* md = mask.data<T>();
    T* yd = y.data<T>();
    const T keep = static_cast<T>(scale);
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (n >= cpu::kParallelGrain)
    for (std::int64_t i = 0; i < n; ++i) {
      md[i] = uniform_at(seed, static_cast<std::uint64_t>(i)) >= p ? keep : T(0);
      yd[i] = xd[i] * md[i];
    }
  });
}

// grad_y, mask, grad_x: same shape, contiguous; grad_x may alias grad_y.
void dropout_backward(const Tensor& grad_y, const Tensor& mask, Tensor& grad_x) {
#if JUANJI_WITH_CUDA
  if (grad_y.device().is_cuda()) return cuda::dropout_backward(grad_y, mask, grad_x);
#endif
  const char* op = "dropout_backward";
  check_float(grad_y, "grad_y");
  const std::int64_t n = grad_y.numel();
  check_kernel_tensor(grad_y, op, "grad_y", grad_y.dtype(), n);
  check_kernel_tensor(mask, op, "mask", grad_y.dtype(), n);
  check_kernel_tensor(grad_x, op, "grad_x", grad_y.dtype(), n);
  dispatch_float(grad_y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* gy = grad_y.data<T>();
    const T* md = mask.data<T>();
    for_each_index(n, grad_x.data<T>(), [gy, md](std::int64_t i) { return gy[i] * md[i]; });
  });
}

namespace {

// The checks of a batch-norm forward's x and per-channel tensors.
void check_norm_forward(const char* op, const Tensor& x, const Tensor& gamma, const Tensor& beta,
                        const Tensor& running_mean, const Tensor& running_var, bool training,
                        double eps, const Tensor& save_mean, const Tensor& save_invstd) {
  check_float(x, "x");
  check_dim(x, "x", 4, "(N, C, H, W)");
  const DType dtype = x.dtype();
  const std::int64_t C = x.size(1);
  check_kernel_tensor(x, op, "x", dtype, x.numel());
  check_channel_param(gamma, "gamma", C, dtype, op);
  check_channel_param(beta, "beta", C, dtype, op);
  check_channel_param(running_mean, "running_mean", C, dtype, op);
  check_channel_param(running_var, "running_var", C, dtype, op);
  check_channel_param(save_mean, "save_mean", C, dtype, op);
  check_channel_param(save_invstd, "save_invstd", C, dtype, op);
  check(eps > 0, op, ": eps must be positive, got ", eps);
  if (training)
    check(x.size(0) * x.size(2) * x.size(3) > 1, op,
          ": training needs more than one value per channel, got x of shape ", shape_text(x.shape()));
  else
    check(running_mean.defined() && running_var.defined(), op,
          ": evaluation needs running_mean and running_var");
}

// Asks for the cache lines of v[0, n): a channel's planes lie a whole image apart, and the
// hardware prefetcher restarts at each.
template <class T>
void prefetch(const T* v, std::int64_t n) {
  const char* bytes = reinterpret_cast<const char*>(v);
  for (std::int64_t at = 0; at < n * std::int64_t(sizeof(T)); at += 64) __builtin_prefetch(bytes + at);
}

// A checked batch-norm forward's operands, as each channel's work needs them.
template <class T>
struct NormForward {
  const T* x;
  const T *gamma, *beta;
  T *running_mean, *running_var, *save_mean, *save_invstd;
  std::int64_t N, C, area;
  bool training;
  double momentum, eps;

  NormForward(const Tensor& x_, const Tensor& gamma_, const Tensor& beta_, Tensor& running_mean_,
              Tensor& running_var_, bool training_, double momentum_, double eps_,
              Tensor& save_mean_, Tensor& save_invstd_)
      : x(x_.data<T>()),
        gamma(cpu::data_or_null<T>(gamma_)),
        beta(cpu::data_or_null<T>(beta_)),
        running_mean(cpu::data_or_null<T>(running_mean_)),
        running_var(cpu::data_or_null<T>(running_var_)),
        save_mean(cpu::data_or_null<T>(save_mean_)),
        save_invstd(cpu::data_or_null<T>(save_invstd_)),
        N(x_.size(0)),
        C(x_.size(1)),
        area(x_.size(2) * x_.size(3)),
        training(training_),
        momentum(momentum_),
        eps(eps_) {}

  const T* plane(std::int64_t n, std::int64_t c) const { return x + (n * C + c) * area; }

  // Channel c's mean and inverse deviation (the batch's in training, which also updates the
  // running statistics; the running ones otherwise), saved for backward; returns the scale and
  // shift of y = x * scale + shift.
  std::pair<T, T> channel(std::int64_t c) const {
    double mean, invstd;
    if (training) {
      const double count = static_cast<double>(N * area);
      double sum = 0;
      for (std::int64_t n = 0; n < N; ++n) {
        if (n + 1 < N) prefetch(plane(n + 1, c), area);
        sum += cpu::sum_elements(plane(n, c), area);
      }
      mean = sum / count;
      double sq = 0;  // second pass about the mean: no cancellation
      for (std::int64_t n = 0; n < N; ++n) sq += cpu::sum_squared_deviation(plane(n, c), area, mean);
      const double var = sq / count;
      invstd = 1.0 / std::sqrt(var + eps);
      if (running_mean)
        running_mean[c] = static_cast<T>((1 - momentum) * running_mean[c] + momentum * mean);
      if (running_var)
        running_var[c] = static_cast<T>((1 - momentum) * running_var[c] +
                                        momentum * var * count / (count - 1));
    } else {
      mean = running_mean[c];
      invstd = 1.0 / std::sqrt(static_cast<double>(running_var[c]) + eps);
    }
    if (save_mean) save_mean[c] = static_cast<T>(mean);
    if (save_invstd) save_invstd[c] = static_cast<T>(invstd);
    const double scale = (gamma ? gamma[c] : 1.0) * invstd;
    return {static_cast<T>(scale), static_cast<T>((beta ? beta[c] : 0.0) - mean * scale)};
  }
};

template <class T>
void normalize_plane(const T* x, T* y, std::int64_t area, T scale, T shift, bool relu) {
  if (relu) {
    for (std::int64_t i = 0; i < area; ++i) {
      const T v = x[i] * scale + shift;
      y[i] = v < T(0) ? T(0) : v;
    }
  } else {
    for (std::int64_t i = 0; i < area; ++i) y[i] = x[i] * scale + shift;
  }
}

// The checks of a batch-norm backward's x, gradients and per-channel tensors.
void check_norm_backward(const char* op, const Tensor& x, const Tensor& gamma,
                         const Tensor& save_mean, const Tensor& save_invstd, const Tensor& grad_x,
                         const Tensor& grad_gamma, const Tensor& grad_beta,
                         const Tensor* grad_x_sums) {
  check(!grad_x_sums || grad_x.defined(), op, ": grad_x_sums needs grad_x");
  check_float(x, "x");
  check_dim(x, "x", 4, "(N, C, H, W)");
  const DType dtype = x.dtype();
  const std::int64_t C = x.size(1);
  check_kernel_tensor(x, op, "x", dtype, x.numel());
  if (grad_x.defined()) check_kernel_tensor(grad_x, op, "grad_x", dtype, x.numel());
  check_channel_param(gamma, "gamma", C, dtype, op);
  check_kernel_tensor(save_mean, op, "save_mean", dtype, C);
  check_kernel_tensor(save_invstd, op, "save_invstd", dtype, C);
  check_channel_param(grad_gamma, "grad_gamma", C, dtype, op);
  check_channel_param(grad_beta, "grad_beta", C, dtype, op);
  if (grad_x_sums) check_kernel_tensor(*grad_x_sums, op, "grad_x_sums", dtype, C);
}

// A checked batch-norm backward's operands, as each channel's work needs them.
template <class T>
struct NormBackward {
  const T* x;
  const T *gamma, *save_mean, *save_invstd;
  T *grad_x, *grad_gamma, *grad_beta, *grad_x_sums;
  std::int64_t N, C, area;

  NormBackward(const Tensor& x_, const Tensor& gamma_, const Tensor& save_mean_,
               const Tensor& save_invstd_, Tensor& grad_x_, Tensor& grad_gamma_,
               Tensor& grad_beta_, Tensor* grad_x_sums_)
      : x(x_.data<T>()),
        gamma(cpu::data_or_null<T>(gamma_)),
        save_mean(save_mean_.data<T>()),
        save_invstd(save_invstd_.data<T>()),
        grad_x(cpu::data_or_null<T>(grad_x_)),
        grad_gamma(cpu::data_or_null<T>(grad_gamma_)),
        grad_beta(cpu::data_or_null<T>(grad_beta_)),
        grad_x_sums(grad_x_sums_ ? grad_x_sums_->data<T>() : nullptr),
        N(x_.size(0)),
        C(x_.size(1)),
        area(x_.size(2) * x_.size(3)) {}

  // Channel c's gradients, from the planes grad_plane(n) of grad_y (each asked for twice).
  template <class GradPlane>
  void channel(std::int64_t c, const GradPlane& grad_plane) const {
    const double count = static_cast<double>(N * area);
    const double mean = save_mean[c];
    const double invstd = save_invstd[c];
    double sums[2] = {0, 0};  // of g, of g * (x - mean)
    for (std::int64_t n = 0; n < N; ++n)
      cpu::sum_grad_and_product(grad_plane(n), x + (n * C + c) * area, area, mean, sums);
    const double sum_g = sums[0], sum_g_xhat = sums[1] * invstd;
    if (grad_beta) grad_beta[c] = static_cast<T>(sum_g);
    if (grad_gamma) grad_gamma[c] = static_cast<T>(sum_g_xhat);
    if (!grad_x) return;
    // grad_x = gamma * invstd * (g - mean(g) - xhat * mean(g * xhat)), with xhat = (x - mean) *
    // invstd folded per channel into grad_x = a * g + b * x + c (in T: a vector loop).
    const double k = (gamma ? gamma[c] : 1.0) * invstd;
    const double mean_g = sum_g / count;
    const double mean_gx = sum_g_xhat / count;
    const T a = static_cast<T>(k), b = static_cast<T>(-k * invstd * mean_gx);
    const T shift = static_cast<T>(k * (mean * invstd * mean_gx - mean_g));
    double gx_sum = 0;
    for (std::int64_t n = 0; n < N; ++n) {
      const T* xp = x + (n * C + c) * area;
      const T* gp = grad_plane(n);
      T* gxp = grad_x + (n * C + c) * area;
      for (std::int64_t i = 0; i < area; ++i) gxp[i] = a * gp[i] + b * xp[i] + shift;
      if (grad_x_sums) gx_sum += cpu::sum_elements(gxp, area);  // as conv.cpp's bias_grad sums
    }
    if (grad_x_sums) grad_x_sums[c] = static_cast<T>(gx_sum);
  }
};

// The checks of a pooling geometry g for x (N,C,H,W) and the pooled tensor named `pooled`.
void check_pool_after_norm(const char* op, const PoolGeometry& g, const Tensor& x,
                           const Tensor& pooled, const char* pooled_name) {
  check(g.N == x.size(0) && g.C == x.size(1) && g.H == x.size(2) && g.W == x.size(3), op,
        ": the pooling is for input (", g.N, ", ", g.C, ", ", g.H, ", ", g.W, "), x has shape ",
        shape_text(x.shape()));
  check_kernel_tensor(pooled, op, pooled_name, x.dtype(), g.N * g.C * g.P * g.Q);
}

}  // namespace

// x, y (N,C,H,W); gamma, beta, running_mean, running_var, save_mean, save_invstd (C). gamma/beta
// may be undefined (scale 1, shift 0), as may the running statistics in training mode.
void batch_norm2d_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                          Tensor& running_mean, Tensor& running_var, bool training,
                          double momentum, double eps, Tensor& y, Tensor& save_mean,
                          Tensor& save_invstd, bool relu) {
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) {
    check(!relu, "batch_norm2d_forward: the fused ReLU is CPU-only; x is on ", x.device().str());
    return cuda::batch_norm2d_forward(x, gamma, beta, running_mean, running_var, training, momentum,
                                      eps, y, save_mean, save_invstd);
  }
#endif
  const char* op = "batch_norm2d";
  check_norm_forward(op, x, gamma, beta, running_mean, running_var, training, eps, save_mean,
                     save_invstd);
  check_kernel_tensor(y, op, "y", x.dtype(), x.numel());
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const NormForward<T> norm(x, gamma, beta, running_mean, running_var, training, momentum, eps,
                              save_mean, save_invstd);
    T* yd = y.data<T>();
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (x.numel() >= cpu::kParallelGrain)
    for (std::int64_t c = 0; c < norm.C; ++c) {
      const auto [scale, shift] = norm.channel(c);
      for (std::int64_t n = 0; n < norm.N; ++n)
        normalize_plane(norm.plane(n, c), yd + (n * norm.C + c) * norm.area, norm.area, scale, shift,
                        relu);
    }
  });
}

// Each plane is normalized in the pooling kernel (plain 2x2 windows, float32) or into a per-thread
// scratch and pooled from there: the normalized tensor, the largest of the three layers'
// outputs, is neither written nor read back.
void batch_norm2d_relu_max_pool_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                        Tensor& running_mean, Tensor& running_var, bool training,
                                        double momentum, double eps, const PoolGeometry& pool,
                                        Tensor& y, Tensor& argmax, Tensor& save_mean,
                                        Tensor& save_invstd) {
  const char* op = "batch_norm2d_relu_max_pool";
  check(x.device().is_cpu(), op, ": CPU only, x is on ", x.device().str());
  check_norm_forward(op, x, gamma, beta, running_mean, running_var, training, eps, save_mean,
                     save_invstd);
  check_pool_after_norm(op, pool, x, y, "y");
  if (argmax.defined())
    check_kernel_tensor(argmax, op, "argmax", DType::int64, pool.N * pool.C * pool.P * pool.Q);
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const NormForward<T> norm(x, gamma, beta, running_mean, running_var, training, momentum, eps,
                              save_mean, save_invstd);
    T* yd = y.data<T>();
    std::int64_t* ad = cpu::data_or_null<std::int64_t>(argmax);
    const std::int64_t pooled_area = pool.P * pool.Q;
    // Plain 2x2 windows normalize in the pooling kernel's registers (float32).
    const bool in_kernel = std::is_same_v<T, float> && cpu::is_plain_2x2(pool);
    const cpu::KernelSet& kernels = cpu::active_kernels();
    cpu::RegionErrors errors;
#pragma omp parallel num_threads(::juanji::team_size()) if (x.numel() >= cpu::kParallelGrain)
    {
      T* normalized = nullptr;
      if (!in_kernel) errors.guard([&] { normalized = cpu::workspace<T>(cpu::WorkspaceSlot::norm_planes, norm.area); });
      // After the barrier every thread sees the same verdict and skips the loop together.
#pragma omp barrier
#pragma omp for schedule(static)
      for (std::int64_t c = 0; c < (errors.failed() ? 0 : norm.C); ++c) {
        const auto [scale, shift] = norm.channel(c);
        for (std::int64_t n = 0; n < norm.N; ++n) {
          const std::int64_t at = (n * norm.C + c) * pooled_area;
          std::int64_t* plane_argmax = ad ? ad + at : nullptr;
          if constexpr (std::is_same_v<T, float>) {
            if (in_kernel) {
              kernels.max_pool_2x2_f32({norm.plane(n, c), pool.W, pool.Q, yd + at, plane_argmax, 0, pool.P, pool.Q,
                                        true, scale, shift});
              continue;
            }
          }
          normalize_plane(norm.plane(n, c), normalized, norm.area, scale, shift, true);
          cpu::max_pool_plane(pool, normalized, yd + at, plane_argmax);
        }
      }
    }
    errors.rethrow();
  });
}

// grad_y, x, grad_x (N,C,H,W); gamma, save_mean, save_invstd, grad_gamma, grad_beta (C). Uses the
// batch statistics saved by a training-mode forward; undefined outputs are skipped.
void batch_norm2d_backward(const Tensor& grad_y, const Tensor& x, const Tensor& gamma,
                           const Tensor& save_mean, const Tensor& save_invstd, Tensor& grad_x,
                           Tensor& grad_gamma, Tensor& grad_beta, Tensor* grad_x_sums) {
  const char* op = "batch_norm2d_backward";
  check(!grad_x_sums || x.device().is_cpu(), op, ": grad_x_sums is CPU-only; x is on ",
        x.device().str());
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda())
    return cuda::batch_norm2d_backward(grad_y, x, gamma, save_mean, save_invstd, grad_x, grad_gamma,
                                       grad_beta);
#endif
  check_norm_backward(op, x, gamma, save_mean, save_invstd, grad_x, grad_gamma, grad_beta,
                      grad_x_sums);
  check_kernel_tensor(grad_y, op, "grad_y", x.dtype(), x.numel());
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const NormBackward<T> norm(x, gamma, save_mean, save_invstd, grad_x, grad_gamma, grad_beta,
                               grad_x_sums);
    const T* gy = grad_y.data<T>();
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (x.numel() >= cpu::kParallelGrain)
    for (std::int64_t c = 0; c < norm.C; ++c)
      norm.channel(c, [&](std::int64_t n) { return gy + (n * norm.C + c) * norm.area; });
  });
}

// Each channel's planes of grad_y are scattered from the pooled gradient into a per-thread
// scratch (N planes: the sums and grad_x each read them) instead of a tensor of x's size.
void batch_norm2d_relu_max_pool_backward(const PoolGeometry& pool, const Tensor& grad_y,
                                         const Tensor& argmax, const Tensor& y, const Tensor& x,
                                         const Tensor& gamma, const Tensor& save_mean,
                                         const Tensor& save_invstd, Tensor& grad_x,
                                         Tensor& grad_gamma, Tensor& grad_beta,
                                         Tensor* grad_x_sums) {
  const char* op = "batch_norm2d_relu_max_pool_backward";
  check(x.device().is_cpu(), op, ": CPU only, x is on ", x.device().str());
  check_norm_backward(op, x, gamma, save_mean, save_invstd, grad_x, grad_gamma, grad_beta,
                      grad_x_sums);
  check_pool_after_norm(op, pool, x, grad_y, "grad_y");
  check_pool_after_norm(op, pool, x, y, "y");
  check_kernel_tensor(argmax, op, "argmax", DType::int64, pool.N * pool.C * pool.P * pool.Q);
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const NormBackward<T> norm(x, gamma, save_mean, save_invstd, grad_x, grad_gamma, grad_beta,
                               grad_x_sums);
    const T* gy = grad_y.data<T>();
    const T* yd = y.data<T>();
    const std::int64_t* ad = argmax.data<std::int64_t>();
    const std::int64_t pooled_area = pool.P * pool.Q;
    cpu::RegionErrors errors;
#pragma omp parallel num_threads(::juanji::team_size()) if (x.numel() >= cpu::kParallelGrain)
    {
      T* scattered = nullptr;
      errors.guard([&] { scattered = cpu::workspace<T>(cpu::WorkspaceSlot::norm_planes, norm.N * norm.area); });
      // After the barrier every thread sees the same verdict and skips the loop together.
#pragma omp barrier
#pragma omp for schedule(static)
      for (std::int64_t c = 0; c < (errors.failed() ? 0 : norm.C); ++c) {
        for (std::int64_t n = 0; n < norm.N; ++n) {
          const std::int64_t at = (n * norm.C + c) * pooled_area;
          cpu::scatter_max_pool_plane(pool, gy + at, ad + at, yd + at, scattered + n * norm.area);
        }
        norm.channel(c, [&](std::int64_t n) { return scattered + n * norm.area; });
      }
    }
    errors.rethrow();
  });
}

}  // namespace juanji
