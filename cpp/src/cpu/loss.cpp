// CPU losses: squared error and fused softmax cross-entropy. Totals are summed in double over
// fixed blocks (or per row) and the partial sums added in order, so a loss does not depend on the
// thread count. Cross-entropy subtracts each row's maximum before exponentiating: logits of
// +-1000 give finite, exact results.
#include "cpu/loss.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/op_support.hpp"
#include "cpu/vec_math.hpp"

namespace juanji::cpu {
namespace {

// sum of term(i) for i in [0, n), in double; blocks are fixed, so the order is too.
template <class F>
double blocked_sum(std::int64_t n, F term) {
  constexpr std::int64_t block = 4096;
  const std::int64_t blocks = (n + block - 1) / block;
  std::vector<double> partial(blocks, 0.0);
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (n >= kParallelGrain)
  for (std::int64_t b = 0; b < blocks; ++b) {
    const std::int64_t begin = b * block;
    partial[b] = sum_lanes(std::min(n, begin + block) - begin,
                           [&term, begin](std::int64_t i) { return term(begin + i); });
  }
  double total = 0;
  for (double s : partial) total += s;
  return total;
}

inline float exp_of(float v) { return exp_f32(v); }
inline double exp_of(double v) { return std::exp(v); }

// One row of logits x (C) against the target q = (1 - eps) * onehot(label) + eps / C: returns
// -sum q * log_softmax(x). scratch (C) receives (softmax(x) - q) * scale; argmax, when not null,
// the first maximum.
template <class T>
double ce_row(const T* x, std::int64_t C, std::int64_t label, double label_smoothing, T* scratch,
              double scale, std::int64_t* argmax) {
  const T m = max_lanes(x, C);
  for (std::int64_t i = 0; i < C; ++i) scratch[i] = exp_of(static_cast<T>(x[i] - m));
  const double sum = sum_lanes(C, [scratch](std::int64_t i) { return double(scratch[i]); });
  const T factor = static_cast<T>(scale / sum);
  // With eps = 0 the subtracted share is +0, which leaves every product bit for bit unchanged.
  const T share = static_cast<T>(scale * label_smoothing / static_cast<double>(C));
  for (std::int64_t i = 0; i < C; ++i) scratch[i] = scratch[i] * factor - share;
  scratch[label] -= static_cast<T>(scale * (1.0 - label_smoothing));
  if (argmax) {
    std::int64_t best = 0;
    while (best < C && !(x[best] == m)) ++best;
    *argmax = best < C ? best : 0;
  }
  const double max = static_cast<double>(m);
  const double nll = (max - static_cast<double>(x[label])) + std::log(sum);
  if (label_smoothing == 0) return nll;
  // -sum q log p = nll + eps * (x[label] - mean(x)); the mean is taken relative to m for range.
  const double mean_shifted =
      sum_lanes(C, [x, max](std::int64_t i) { return static_cast<double>(x[i]) - max; }) /
      static_cast<double>(C);
  return nll + label_smoothing * ((static_cast<double>(x[label]) - max) - mean_shifted);
}

}  // namespace

// z, y (any shape, equal) -> out: 0-d, or (z - y)^2 elementwise for none.
void mse_loss(const Tensor& z, const Tensor& y, Reduction reduction, Tensor& out) {
  const std::int64_t n = z.numel();
  dispatch_float(z.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* zd = z.data<T>();
    const T* yd = y.data<T>();
    if (reduction == Reduction::none) {
      T* od = out.data<T>();
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (n >= kParallelGrain)
      for (std::int64_t i = 0; i < n; ++i) {
        const T d = zd[i] - yd[i];
        od[i] = d * d;
      }
      return;
    }
    const double total = blocked_sum(n, [zd, yd](std::int64_t i) {
      const double d = static_cast<double>(zd[i]) - static_cast<double>(yd[i]);
      return d * d;
    });
    double value = total;
    if (reduction == Reduction::mean) value = total / static_cast<double>(n);
    if (reduction == Reduction::half_sum) value = 0.5 * total;
    out.fill_(value);
  });
}

// grad = factor * (z - y), all of z's shape.
void mse_loss_backward(const Tensor& z, const Tensor& y, double factor, Tensor& grad) {
  const std::int64_t n = z.numel();
  dispatch_float(z.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* zd = z.data<T>();
    const T* yd = y.data<T>();
    T* gd = grad.data<T>();
    const T f = static_cast<T>(factor);
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (n >= kParallelGrain)
    for (std::int64_t i = 0; i < n; ++i) gd[i] = (zd[i] - yd[i]) * f;
  });
}

// logits (N,C), labels (N) -> out: 0-d, or per-sample losses (N) for none.
void cross_entropy(const Tensor& logits, const std::int64_t* lab, Reduction reduction,
                   double label_smoothing, Tensor& out) {
  const std::int64_t N = logits.size(0), C = logits.size(1);
  std::vector<double> losses(N);
  dispatch_float(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = logits.data<T>();
    RegionErrors errors;
#pragma omp parallel num_threads(::juanji::team_size()) if (N * C >= kParallelGrain)
    {
      std::vector<T> scratch;
      errors.guard([&] { scratch.resize(static_cast<std::size_t>(C)); });
      // After the barrier every thread sees the same verdict and skips the loop together.
#pragma omp barrier
#pragma omp for schedule(static)
      for (std::int64_t n = 0; n < (errors.failed() ? 0 : N); ++n)
        losses[n] = ce_row<T>(x + n * C, C, lab[n], label_smoothing, scratch.data(), 0.0, nullptr);
    }
    errors.rethrow();
  });
  if (reduction == Reduction::none) {
    dispatch_float(logits.dtype(), [&](auto tag) {
      using T = decltype(tag);
      T* od = out.data<T>();
      for (std::int64_t n = 0; n < N; ++n) od[n] = static_cast<T>(losses[n]);
    });
    return;
  }
  double total = 0;
  for (double l : losses) total += l;
  if (reduction == Reduction::mean) total /= static_cast<double>(N);
  out.fill_(total);
}

// logits (N,C), labels (N) -> grad (N,C): (softmax - target) * scale.
void cross_entropy_backward(const Tensor& logits, const std::int64_t* lab, double scale,
                            double label_smoothing, Tensor& grad) {
  const std::int64_t N = logits.size(0), C = logits.size(1);
  dispatch_float(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = logits.data<T>();
    T* g = grad.data<T>();
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (N * C >= kParallelGrain)
    for (std::int64_t n = 0; n < N; ++n)
      ce_row<T>(x + n * C, C, lab[n], label_smoothing, g + n * C, scale, nullptr);
  });
}

// logits, grad_logits (N,C); labels (N).
double cross_entropy_mean_into(const Tensor& logits, const std::int64_t* lab,
                               double label_smoothing, Tensor& grad_logits, std::int64_t* correct) {
  const std::int64_t N = logits.size(0), C = logits.size(1);
  std::vector<double> losses(N);
  std::vector<std::int64_t> predicted(N);
  const double scale = 1.0 / static_cast<double>(N);
  dispatch_float(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = logits.data<T>();
    T* g = grad_logits.data<T>();
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (N * C >= kParallelGrain)
    for (std::int64_t n = 0; n < N; ++n)
      losses[n] = ce_row<T>(x + n * C, C, lab[n], label_smoothing, g + n * C, scale, &predicted[n]);
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

}  // namespace juanji::cpu
