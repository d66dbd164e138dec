// Optimizer updates' ops layer: checks each parameter's tensors and updates them on their device.
#include "cpu/sgd.hpp"
#include "juanji/ops/optim.hpp"
#include "ops/backend.hpp"

namespace juanji {

void sgd_update(const std::vector<SgdSlot>& slots, const SgdSettings& settings) {
  for (const SgdSlot& slot : slots) {
#if JUANJI_WITH_CUDA
    if (slot.value.device().is_cuda()) {
      cuda::sgd_update(slot.value, slot.grad, slot.velocity, settings.lr, settings.momentum, settings.nesterov,
                       settings.weight_decay);
      continue;
    }
#endif
    // Checked here: nothing may throw inside the CPU's parallel region.
    check(slot.grad.dtype() == slot.value.dtype() && slot.grad.shape() == slot.value.shape(),
          "params: a gradient must match its parameter's dtype and shape, got ", shape_text(slot.grad.shape()), " ",
          dtype_name(slot.grad.dtype()), " for ", shape_text(slot.value.shape()), " ", dtype_name(slot.value.dtype()));
  }
  cpu::sgd_update(slots, settings);
}

}  // namespace juanji
