#include "cpu/sgd.hpp"

#include "juanji/runtime.hpp"

namespace juanji::cpu {
namespace {

constexpr std::int64_t kParallelElements = 16384;

// Called inside sgd_update's parallel region (or outside any): the elements are split over the team.
template <class T>
void update(T* w, const T* g, T* v, std::int64_t n, const SgdSettings& s) {
  const T eta = static_cast<T>(s.lr), mu = static_cast<T>(s.momentum), wd = static_cast<T>(s.weight_decay);
  const bool nesterov = s.nesterov;
#pragma omp for schedule(static) nowait
  for (std::int64_t i = 0; i < n; ++i) {
    T d = g[i] + wd * w[i];
    if (v) {
      v[i] = mu * v[i] + d;
      d = nesterov ? d + mu * v[i] : v[i];
    }
    w[i] -= eta * d;
  }
}

}  // namespace

void sgd_update(const std::vector<SgdSlot>& slots, const SgdSettings& settings) {
  std::int64_t elements = 0;
  for (const SgdSlot& slot : slots)
    if (slot.value.device().is_cpu()) elements += slot.value.numel();
  // The parameters in one parallel region: each element is updated on its own, and LeNet's ten
  // parameters (62k elements) were too small to pay for a fork each.
#pragma omp parallel num_threads(::juanji::team_size()) if (elements > kParallelElements)
  for (const SgdSlot& slot : slots) {
    if (!slot.value.device().is_cpu()) continue;
    const Tensor& v = slot.velocity;
    if (slot.value.dtype() == DType::float32)
      update<float>(slot.value.data<float>(), slot.grad.data<float>(), v.defined() ? v.data<float>() : nullptr,
                    slot.value.numel(), settings);
    else
      update<double>(slot.value.data<double>(), slot.grad.data<double>(), v.defined() ? v.data<double>() : nullptr,
                     slot.value.numel(), settings);
  }
}

}  // namespace juanji::cpu
