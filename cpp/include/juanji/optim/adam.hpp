// Adam (Kingma & Ba) and AdamW (Loshchilov & Hutter) with PyTorch's semantics (no amsgrad).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "juanji/ops/optim.hpp"
#include "juanji/optim/optimizer.hpp"

namespace juanji::optim {

// Per parameter, at its t-th step: g += weight_decay*w (Adam) or w -= lr*weight_decay*w (AdamW);
// m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
// w -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps).
class Adam : public Optimizer {
 public:
  Adam(std::vector<std::shared_ptr<nn::Parameter>> parameters, double lr = 1e-3,
       std::pair<double, double> betas = {0.9, 0.999}, double eps = 1e-8, double weight_decay = 0.0,
       std::optional<double> max_grad_norm = std::nullopt);
  std::pair<double, double> betas() const { return {settings_.beta1, settings_.beta2}; }
  double eps() const { return settings_.eps; }
  double weight_decay() const { return settings_.weight_decay; }

 protected:
  Adam(std::vector<std::shared_ptr<nn::Parameter>> parameters, double lr, std::pair<double, double> betas,
       double eps, double weight_decay, std::optional<double> max_grad_norm, bool decoupled_weight_decay);

 private:
  void update() override;

  AdamSettings settings_;  // lr set at each update
  std::vector<Tensor> exp_avg_, exp_avg_sq_;
  std::vector<std::int64_t> steps_;  // per parameter: its moments restart with a dtype change
  std::vector<AdamSlot> slots_;      // update()'s, empty between steps but keeping its capacity
};

// Adam with decoupled weight decay (default 0.01).
class AdamW : public Adam {
 public:
  AdamW(std::vector<std::shared_ptr<nn::Parameter>> parameters, double lr = 1e-3,
        std::pair<double, double> betas = {0.9, 0.999}, double eps = 1e-8, double weight_decay = 0.01,
        std::optional<double> max_grad_norm = std::nullopt);
};

}  // namespace juanji::optim
