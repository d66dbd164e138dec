// The CPU's optimizer updates. Private to the library.
#pragma once

#include <vector>

#include "juanji/ops/optim.hpp"

namespace juanji::cpu {

// sgd_update / adam_update of the slots on the CPU (the others are skipped), checked by the
// caller, each in one parallel region.
void sgd_update(const std::vector<SgdSlot>& slots, const SgdSettings& settings);
void adam_update(const std::vector<AdamSlot>& slots, const AdamSettings& settings);

// The sum of squares of each CPU tensor (0 for the others) in float64: fixed chunks summed in
// order, so the bits do not depend on the thread count.
std::vector<double> sums_of_squares(const std::vector<Tensor>& tensors);
// Multiplies the CPU tensors (float32 or float64, contiguous) by factor, in one parallel region.
void scale(const std::vector<Tensor>& tensors, double factor);

}  // namespace juanji::cpu
