// CPU losses: squared error and fused softmax cross-entropy. Totals are summed in double over
// fixed blocks (or per row) and the partial sums added in order, so a loss does not depend on the
// thread count. Cross-entropy subtracts each row's maximum before exponentiating: logits of
// +-1000 give finite, exact results.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/op_support.hpp"
#include "cpu/vec_math.hpp"
#include "juanji/ops/loss.hpp"
#if JUANJI_WITH_CUDA
#include "cuda/ops.hpp"
#endif

namespace juanji {
namespace {

using cpu::check_float_operand;
using cpu::dispatch_float;

// sum of term(i) for i in [0, n), in double; blocks are fixed, so the order is too.
template <class F>
double blocked_sum(std::int64_t n, F term) {
  constexpr std::int64_t block = 4096;
  const std::int64_t blocks = (n + block - 1) / block;
  std::vector<double> partial(blocks, 0.0);
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (n >= cpu::kParallelGrain)
  for (std::int64_t b = 0; b < blocks; ++b) {
    const std::int64_t begin = b * block;
    partial[b] = cpu::sum_lanes(std::min(n, begin + block) - begin,
                                [&term, begin](std::int64_t i) { return term(begin + i); });
  }
  double total = 0;
  for (double s : partial) total += s;
  return total;
}

Tensor scalar(double value, DType dtype) {
  Tensor t = Tensor::empty({}, dtype);
  t.fill_(value);
  return t;
}

void check_mse_args(const Tensor& z, const Tensor& y, const char* op) {
  check_float_operand(z, op, "z");
  check_float_operand(y, op, "y");
  check_same_dtype(z, "z", y, "y");
  check_same_device(z, "z", y, "y");
  check(z.shape() == y.shape(), op, ": z has shape ", shape_text(z.shape()), " but y has shape ",
        shape_text(y.shape()));
}

void check_logits(const Tensor& logits, const char* op) {
  check_float_operand(logits, op, "logits");
  check_dim(logits, "logits", 2, "(N, C)");
  check(logits.size(1) > 0, op, ": logits has no classes, shape ", shape_text(logits.shape()));
}

void check_ce_reduction(Reduction reduction, const char* op) {
  check(reduction != Reduction::half_sum, op,
        ": reduction must be 'mean', 'sum' or 'none', got 'half_sum'");
}

inline float exp_of(float v) { return cpu::exp_f32(v); }
inline double exp_of(double v) { return std::exp(v); }

// One row of logits x (C): returns logsumexp(x) - x[label]. scratch (C) receives
// (softmax(x) - onehot(label)) * scale; argmax, when not null, the first maximum.
template <class T>
double ce_row(const T* x, std::int64_t C, std::int64_t label, T* scratch, double scale,
              std::int64_t* argmax) {
  const T m = cpu::max_lanes(x, C);
  for (std::int64_t i = 0; i < C; ++i) scratch[i] = exp_of(static_cast<T>(x[i] - m));
  const double sum = cpu::sum_lanes(C, [scratch](std::int64_t i) { return double(scratch[i]); });
  const T factor = static_cast<T>(scale / sum);
  for (std::int64_t i = 0; i < C; ++i) scratch[i] *= factor;
  scratch[label] -= static_cast<T>(scale);
  if (argmax) {
    std::int64_t best = 0;
    while (best < C && !(x[best] == m)) ++best;
    *argmax = best < C ? best : 0;
  }
  return (static_cast<double>(m) - static_cast<double>(x[label])) + std::log(sum);
}

}  // namespace

Reduction parse_reduction(const std::string& text, const char* op, bool half_sum_allowed) {
  if (text == "mean") return Reduction::mean;
  if (text == "sum") return Reduction::sum;
  if (text == "none") return Reduction::none;
  if (text == "half_sum" && half_sum_allowed) return Reduction::half_sum;
  throw std::invalid_argument(detail::concat(op, ": reduction must be 'mean', 'sum', ",
                                             half_sum_allowed ? "'half_sum' " : "", "or 'none', got '", text, "'"));
}

// z, y (any shape, equal) -> 0-d, or (z - y)^2 elementwise for none.
Tensor mse_loss(const Tensor& z_in, const Tensor& y_in, Reduction reduction) {
  const char* op = "mse_loss";
  check_mse_args(z_in, y_in, op);
  const Tensor z = z_in.contiguous();
  const Tensor y = y_in.contiguous();
  const std::int64_t n = z.numel();
#if JUANJI_WITH_CUDA
  if (z.device().is_cuda()) {
    Tensor out = Tensor::empty(reduction == Reduction::none ? z.shape() : Shape{}, z.dtype(), z.device());
    cuda::mse_loss(z, y, reduction, out);
    return out;
  }
#endif
  return dispatch_float(z.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* zd = z.data<T>();
    const T* yd = y.data<T>();
    if (reduction == Reduction::none) {
      Tensor out = Tensor::empty(z.shape(), z.dtype());
      T* od = out.data<T>();
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (n >= cpu::kParallelGrain)
      for (std::int64_t i = 0; i < n; ++i) {
        const T d = zd[i] - yd[i];
        od[i] = d * d;
      }
      return out;
    }
    const double total = blocked_sum(n, [zd, yd](std::int64_t i) {
      const double d = static_cast<double>(zd[i]) - static_cast<double>(yd[i]);
      return d * d;
    });
    double value = total;
    if (reduction == Reduction::mean) value = total / static_cast<double>(n);
    if (reduction == Reduction::half_sum) value = 0.5 * total;
    return scalar(value, z.dtype());
  });
}

// d loss / d z (shape of z): half_sum z - y, sum and none 2(z - y), mean 2(z - y)/numel.
Tensor mse_loss_backward(const Tensor& z_in, const Tensor& y_in, Reduction reduction) {
  const char* op = "mse_loss_backward";
  check_mse_args(z_in, y_in, op);
  const Tensor z = z_in.contiguous();
  const Tensor y = y_in.contiguous();
  const std::int64_t n = z.numel();
  double factor = 2.0;
  if (reduction == Reduction::half_sum) factor = 1.0;
  if (reduction == Reduction::mean) factor = 2.0 / static_cast<double>(n);
  Tensor grad = Tensor::empty(z.shape(), z.dtype(), z.device());
#if JUANJI_WITH_CUDA
  if (z.device().is_cuda()) {
    cuda::mse_loss_backward(z, y, factor, grad);
    return grad;
  }
#endif
  dispatch_float(z.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* zd = z.data<T>();
    const T* yd = y.data<T>();
    T* gd = grad.data<T>();
    const T f = static_cast<T>(factor);
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (n >= cpu::kParallelGrain)
    for (std::int64_t i = 0; i < n; ++i) gd[i] = (zd[i] - yd[i]) * f;
  });
  return grad;
}

namespace {

// The checked, contiguous operands shared by cross_entropy and its backward.
struct CrossEntropyOperands {
  CrossEntropyOperands(const Tensor& logits_in, const Tensor& labels_in, Reduction reduction, const char* op) {
    check_logits(logits_in, op);
    check_ce_reduction(reduction, op);
    N = logits_in.size(0);
    C = logits_in.size(1);
    check_labels(labels_in, N, C);
    check_same_device(logits_in, "logits", labels_in, "labels");
    logits = logits_in.contiguous();
    labels = labels_in.contiguous();
  }
  Tensor logits, labels;
  std::int64_t N, C;
};

}  // namespace

// logits (N,C), labels (N) -> 0-d, or per-sample losses (N) for none.
Tensor cross_entropy(const Tensor& logits_in, const Tensor& labels_in, Reduction reduction) {
  const CrossEntropyOperands ops(logits_in, labels_in, reduction, "cross_entropy");
  const Tensor& logits = ops.logits;
  const std::int64_t N = ops.N, C = ops.C;
#if JUANJI_WITH_CUDA
  if (logits.device().is_cuda()) {
    Tensor out = Tensor::empty(reduction == Reduction::none ? Shape{N} : Shape{}, logits.dtype(), logits.device());
    cuda::cross_entropy(logits, ops.labels, reduction, out);
    return out;
  }
#endif
  const std::int64_t* lab = ops.labels.data<std::int64_t>();
  std::vector<double> losses(N);
  dispatch_float(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = logits.data<T>();
    cpu::RegionErrors errors;
#pragma omp parallel num_threads(::juanji::team_size()) if (N * C >= cpu::kParallelGrain)
    {
      std::vector<T> scratch;
      errors.guard([&] { scratch.resize(static_cast<std::size_t>(C)); });
      // After the barrier every thread sees the same verdict and skips the loop together.
#pragma omp barrier
#pragma omp for schedule(static)
      for (std::int64_t n = 0; n < (errors.failed() ? 0 : N); ++n)
        losses[n] = ce_row<T>(x + n * C, C, lab[n], scratch.data(), 0.0, nullptr);
    }
    errors.rethrow();
  });
  if (reduction == Reduction::none) {
    Tensor out = Tensor::empty({N}, logits.dtype());
    dispatch_float(logits.dtype(), [&](auto tag) {
      using T = decltype(tag);
      T* od = out.data<T>();
      for (std::int64_t n = 0; n < N; ++n) od[n] = static_cast<T>(losses[n]);
    });
    return out;
  }
  double total = 0;
  for (double l : losses) total += l;
  if (reduction == Reduction::mean) total /= static_cast<double>(N);
  return scalar(total, logits.dtype());
}

// logits (N,C), labels (N) -> (N,C): softmax - onehot, divided by N for mean.
Tensor cross_entropy_backward(const Tensor& logits_in, const Tensor& labels_in,
                              Reduction reduction) {
  const CrossEntropyOperands ops(logits_in, labels_in, reduction, "cross_entropy_backward");
  const Tensor& logits = ops.logits;
  const std::int64_t N = ops.N, C = ops.C;
  const double scale = reduction == Reduction::mean ? 1.0 / static_cast<double>(N) : 1.0;
  Tensor grad = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
#if JUANJI_WITH_CUDA
  if (logits.device().is_cuda()) {
    cuda::cross_entropy_backward(logits, ops.labels, scale, grad);
    return grad;
  }
#endif
  const std::int64_t* lab = ops.labels.data<std::int64_t>();
  dispatch_float(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = logits.data<T>();
    T* g = grad.data<T>();
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (N * C >= cpu::kParallelGrain)
    for (std::int64_t n = 0; n < N; ++n) ce_row<T>(x + n * C, C, lab[n], g + n * C, scale, nullptr);
  });
  return grad;
}

// logits, grad_logits (N,C) contiguous; labels (N) int64.
double cross_entropy_mean_into(const Tensor& logits, const Tensor& labels_in, Tensor& grad_logits,
                               std::int64_t* correct) {
  const char* op = "cross_entropy_mean_into";
  check_logits(logits, op);
  const std::int64_t N = logits.size(0), C = logits.size(1);
  check(N > 0, op, ": logits has no rows, shape ", shape_text(logits.shape()));
#if JUANJI_WITH_CUDA
  if (logits.device().is_cuda()) return cuda::cross_entropy_mean_into(logits, labels_in, grad_logits, correct);
#endif
  check_labels(labels_in, N, C);
  cpu::check_kernel_tensor(logits, op, "logits", logits.dtype(), N * C);
  cpu::check_kernel_tensor(grad_logits, op, "grad_logits", logits.dtype(), N * C);
  const Tensor labels = labels_in.contiguous();
  const std::int64_t* lab = labels.data<std::int64_t>();
  std::vector<double> losses(N);
  std::vector<std::int64_t> predicted(N);
  const double scale = 1.0 / static_cast<double>(N);
  dispatch_float(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = logits.data<T>();
    T* g = grad_logits.data<T>();
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (N * C >= cpu::kParallelGrain)
    for (std::int64_t n = 0; n < N; ++n)
      losses[n] = ce_row<T>(x + n * C, C, lab[n], g + n * C, scale, &predicted[n]);
  });
  double total = 0;
  std::int64_t hits = 0;
  for (std::int64_t n = 0; n < N; ++n) {
    total += losses[n];
    hits += predicted[n] == lab[n];
  }
  if (correct) *correct = hits;
  return total / static_cast<double>(N);
}

void check_labels(const Tensor& labels_in, std::int64_t n, std::int64_t classes) {
  check_defined(labels_in, "labels");
  check_type(labels_in.dtype() == DType::int64, "labels: expected int64 class labels, got a ",
             dtype_name(labels_in.dtype()), " tensor of shape ", shape_text(labels_in.shape()));
  cpu::require_supported_device(labels_in, "cross_entropy", "labels");
  check(labels_in.dim() == 1 && labels_in.size(0) == n, "labels: expected shape (", n,
        ",), one label per row of logits, got shape ", shape_text(labels_in.shape()));
  const Tensor labels = labels_in.to(Device{}).contiguous();
  const std::int64_t* lab = labels.data<std::int64_t>();
  for (std::int64_t i = 0; i < n; ++i)
    check(lab[i] >= 0 && lab[i] < classes, "labels: label ", lab[i], " at index ", i,
          " is out of range [0, ", classes, ")");
}

}  // namespace juanji
