// Optimizer updates' ops layer: checks each parameter's tensors and updates them on their device.
#include <cmath>

#include "cpu/optim.hpp"
#include "juanji/ops/optim.hpp"
#include "ops/backend.hpp"

namespace juanji {
namespace {

// Checked here for the CPU: nothing may throw inside its parallel regions.
void check_matches(const Tensor& t, const Tensor& value, const char* what) {
  check(t.dtype() == value.dtype() && t.shape() == value.shape(), "params: ", what,
        " must match its parameter's dtype and shape, got ", shape_text(t.shape()), " ", dtype_name(t.dtype()),
        " for ", shape_text(value.shape()), " ", dtype_name(value.dtype()));
}

}  // namespace

AdamStepFactors adam_step_factors(const AdamSettings& settings, std::int64_t step) {
  const double t = static_cast<double>(step);
  return {settings.lr / (1 - std::pow(settings.beta1, t)), std::sqrt(1 - std::pow(settings.beta2, t)),
          settings.decoupled_weight_decay ? 1 - settings.lr * settings.weight_decay : 1.0};
}

void sgd_update(const std::vector<SgdSlot>& slots, const SgdSettings& settings) {
  for (const SgdSlot& slot : slots) {
#if JUANJI_WITH_CUDA
    if (slot.value.device().is_cuda()) {
      cuda::sgd_update(slot.value, slot.grad, slot.velocity, settings.lr, settings.momentum, settings.nesterov,
                       settings.weight_decay);
      continue;
    }
#endif
    check_matches(slot.grad, slot.value, "a gradient");
  }
  cpu::sgd_update(slots, settings);
}

void adam_update(const std::vector<AdamSlot>& slots, const AdamSettings& settings) {
  for (const AdamSlot& slot : slots) {
#if JUANJI_WITH_CUDA
    if (slot.value.device().is_cuda()) {
      cuda::adam_update(slot, settings);
      continue;
    }
#endif
    check_matches(slot.grad, slot.value, "a gradient");
    check_matches(slot.exp_avg, slot.value, "a first moment");
    check_matches(slot.exp_avg_sq, slot.value, "a second moment");
  }
  cpu::adam_update(slots, settings);
}

double clip_grad_norm(const std::vector<Tensor>& grads, double max_norm) {
  // Per tensor in list order, so the sum's order does not depend on the devices either.
  std::vector<double> squares = cpu::sums_of_squares(grads);
  double sum = 0;
  for (std::size_t i = 0; i < grads.size(); ++i) {
#if JUANJI_WITH_CUDA
    if (grads[i].device().is_cuda()) squares[i] = cuda::sum_of_squares(grads[i]);
#endif
    sum += squares[i];
  }
  const double norm = std::sqrt(sum);
  const double factor = max_norm / (norm + 1e-6);
  if (factor < 1) {
#if JUANJI_WITH_CUDA
    for (const Tensor& g : grads)
      if (g.device().is_cuda()) cuda::scale(g, factor);
#endif
    cpu::scale(grads, factor);
  }
  return norm;
}

}  // namespace juanji
