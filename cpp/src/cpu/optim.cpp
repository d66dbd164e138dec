#include "cpu/optim.hpp"

#include <algorithm>
#include <cmath>

#include "juanji/runtime.hpp"

namespace juanji::cpu {
namespace {

constexpr std::int64_t kParallelElements = 16384;
// The sums of squares' unit of work; a constant so the summation order is the same for any team.
constexpr std::int64_t kSquaresChunk = 8192;

const Tensor& value_of(const SgdSlot& slot) { return slot.value; }
const Tensor& value_of(const AdamSlot& slot) { return slot.value; }
const Tensor& value_of(const Tensor& t) { return t; }

// Calls work(item, float{} or double{}) for each item on the CPU, all in one parallel region;
// work splits its elements over the team (omp for nowait): each element is updated on its own,
// and LeNet's ten parameters (62k elements) were too small to pay for a fork each.
template <class Item, class Work>
void each_in_one_region(const std::vector<Item>& items, Work work) {
  std::int64_t elements = 0;
  for (const Item& item : items)
    if (value_of(item).device().is_cpu()) elements += value_of(item).numel();
#pragma omp parallel num_threads(::juanji::team_size()) if (elements > kParallelElements)
  for (const Item& item : items) {
    const Tensor& value = value_of(item);
    if (!value.device().is_cpu()) continue;
    if (value.dtype() == DType::float32)
      work(item, float{});
    else
      work(item, double{});
  }
}

template <class T>
T* optional_data(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

template <class T>
double sum_of_squares(const T* x, std::int64_t begin, std::int64_t end) {
  double sum = 0;
  for (std::int64_t i = begin; i < end; ++i) sum += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  return sum;
}

}  // namespace

void sgd_update(const std::vector<SgdSlot>& slots, const SgdSettings& settings) {
  each_in_one_region(slots, [&](const SgdSlot& slot, auto tag) {
    using T = decltype(tag);
    T* w = slot.value.data<T>();
    const T* g = slot.grad.data<T>();
    T* v = optional_data<T>(slot.velocity);
    const T eta = static_cast<T>(settings.lr), mu = static_cast<T>(settings.momentum),
            wd = static_cast<T>(settings.weight_decay);
    const bool nesterov = settings.nesterov;
    const std::int64_t n = slot.value.numel();
#pragma omp for schedule(static) nowait
    for (std::int64_t i = 0; i < n; ++i) {
      T d = g[i] + wd * w[i];
      if (v) {
        v[i] = mu * v[i] + d;
        d = nesterov ? d + mu * v[i] : v[i];
      }
      w[i] -= eta * d;
    }
  });
}

void adam_update(const std::vector<AdamSlot>& slots, const AdamSettings& settings) {
  each_in_one_region(slots, [&](const AdamSlot& slot, auto tag) {
    using T = decltype(tag);
    T* w = slot.value.data<T>();
    const T* g = slot.grad.data<T>();
    T* m = slot.exp_avg.data<T>();
    T* v = slot.exp_avg_sq.data<T>();
    const AdamStepFactors f = adam_step_factors(settings, slot.step);
    const T b1 = static_cast<T>(settings.beta1), b2 = static_cast<T>(settings.beta2),
            eps = static_cast<T>(settings.eps), step_size = static_cast<T>(f.step_size),
            bc2_sqrt = static_cast<T>(f.bias_correction2_sqrt), decay = static_cast<T>(f.decay),
            l2 = settings.decoupled_weight_decay ? T(0) : static_cast<T>(settings.weight_decay);
    const std::int64_t n = slot.value.numel();
#pragma omp for schedule(static) nowait
    for (std::int64_t i = 0; i < n; ++i) {
      const T d = g[i] + l2 * w[i];
      m[i] = b1 * m[i] + (T(1) - b1) * d;
      v[i] = b2 * v[i] + (T(1) - b2) * d * d;
      w[i] = decay * w[i] - step_size * (m[i] / (std::sqrt(v[i]) / bc2_sqrt + eps));
    }
  });
}

std::vector<double> sums_of_squares(const std::vector<Tensor>& tensors) {
  struct Chunk {
    std::size_t tensor;
    std::int64_t begin, end;
  };
  std::vector<Chunk> chunks;
  for (std::size_t t = 0; t < tensors.size(); ++t) {
    if (!tensors[t].device().is_cpu()) continue;
    const std::int64_t n = tensors[t].numel();
    for (std::int64_t begin = 0; begin < n; begin += kSquaresChunk)
      chunks.push_back({t, begin, std::min(n, begin + kSquaresChunk)});
  }
  std::vector<double> partials(chunks.size());
  const auto count = static_cast<std::int64_t>(chunks.size());
#pragma omp parallel for schedule(static) num_threads(::juanji::team_size()) \
    if (count * kSquaresChunk > kParallelElements)
  for (std::int64_t c = 0; c < count; ++c) {
    const Chunk& chunk = chunks[c];
    const Tensor& t = tensors[chunk.tensor];
    partials[c] = t.dtype() == DType::float32 ? sum_of_squares(t.data<float>(), chunk.begin, chunk.end)
                                              : sum_of_squares(t.data<double>(), chunk.begin, chunk.end);
  }
  std::vector<double> sums(tensors.size(), 0.0);
  for (std::size_t c = 0; c < chunks.size(); ++c) sums[chunks[c].tensor] += partials[c];
  return sums;
}

void scale(const std::vector<Tensor>& tensors, double factor) {
  each_in_one_region(tensors, [&](const Tensor& t, auto tag) {
    using T = decltype(tag);
    T* x = t.data<T>();
    const T f = static_cast<T>(factor);
    const std::int64_t n = t.numel();
#pragma omp for schedule(static) nowait
    for (std::int64_t i = 0; i < n; ++i) x[i] *= f;
  });
}

}  // namespace juanji::cpu
