// Optimizer updates (kernel API): each parameter's tensors updated in place on their device.
#pragma once

#include <cstdint>
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

// A parameter's value, gradient and moments (one dtype, shape and device), and the number of
// this update (t = 1 for the first).
struct AdamSlot {
  Tensor value, grad, exp_avg, exp_avg_sq;
  std::int64_t step;
};
struct AdamSettings {
  double lr, beta1, beta2, eps, weight_decay;
  bool decoupled_weight_decay;  // AdamW's w -= lr*weight_decay*w instead of Adam's g += weight_decay*w
};
// The scalars of an update at step t, shared by the CPU and CUDA kernels: lr/(1-b1^t),
// sqrt(1-b2^t), and AdamW's factor 1 - lr*weight_decay (1 for Adam).
struct AdamStepFactors {
  double step_size, bias_correction2_sqrt, decay;
};
AdamStepFactors adam_step_factors(const AdamSettings& settings, std::int64_t step);
// For each slot: the weight decay (see AdamSettings); m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
// w -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps). Mismatched tensors are a
// std::invalid_argument before any update on the CPU.
void adam_update(const std::vector<AdamSlot>& slots, const AdamSettings& settings);

// The L2 norm of all the gradients together, summed in float64 in a fixed order (the same bits
// for any thread count); when max_norm / (norm + 1e-6) is below 1 every gradient is scaled by it
// (torch's clip_grad_norm_). Returns the norm before clipping.
double clip_grad_norm(const std::vector<Tensor>& grads, double max_norm);

}  // namespace juanji
