// The CPU's optimizer updates. Private to the library.
#pragma once

#include <vector>

#include "juanji/ops/optim.hpp"

namespace juanji::cpu {

// sgd_update of the slots on the CPU (the others are skipped), checked by the caller, in one
// parallel region.
void sgd_update(const std::vector<SgdSlot>& slots, const SgdSettings& settings);

}  // namespace juanji::cpu
