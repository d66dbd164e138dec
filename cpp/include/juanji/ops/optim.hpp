// Optimizer updates (kernel API): each parameter's tensors updated in place on their device.
#pragma once

#include <vector>

#include "juanji/tensor.hpp"

namespace juanji {

// A parameter's value, its gradient and its velocity (undefined without momentum): one dtype,
// shape and device.
struct SgdSlot {
  Tensor value, grad, velocity;
};
struct SgdSettings {
  double lr, momentum;
  bool nesterov;
  double weight_decay;
};
// For each slot: d = g + weight_decay*w; v = momentum*v + d; d = nesterov ? d + momentum*v : v;
// w -= lr*d. A gradient that does not match its value is a std::invalid_argument before any
// update on the CPU.
void sgd_update(const std::vector<SgdSlot>& slots, const SgdSettings& settings);

}  // namespace juanji
