#include "juanji/optim/adam.hpp"

#include <cmath>

#include "juanji/nn/layers.hpp"
#include "juanji/runtime.hpp"

namespace juanji::optim {

Adam::Adam(std::vector<std::shared_ptr<nn::Parameter>> parameters, double lr, std::pair<double, double> betas,
           double eps, double weight_decay, std::optional<double> max_grad_norm)
    : Adam(std::move(parameters), lr, betas, eps, weight_decay, max_grad_norm, false) {}

Adam::Adam(std::vector<std::shared_ptr<nn::Parameter>> parameters, double lr, std::pair<double, double> betas,
           double eps, double weight_decay, std::optional<double> max_grad_norm, bool decoupled_weight_decay)
    : Optimizer(std::move(parameters), lr, max_grad_norm),
      settings_{lr, betas.first, betas.second, eps, weight_decay, decoupled_weight_decay} {
  check(betas.first >= 0 && betas.first < 1, "betas: beta1 must be in [0, 1), got ", betas.first);
  check(betas.second >= 0 && betas.second < 1, "betas: beta2 must be in [0, 1), got ", betas.second);
  check(eps >= 0 && std::isfinite(eps), "eps: must be a finite non-negative number, got ", eps);
  check(weight_decay >= 0 && std::isfinite(weight_decay), "weight_decay: must be a finite non-negative number, got ",
        weight_decay);
  for (const auto& p : parameters_) {
    exp_avg_.push_back(Tensor::zeros(p->value.shape(), p->value.dtype(), p->value.device()));
    exp_avg_sq_.push_back(Tensor::zeros(p->value.shape(), p->value.dtype(), p->value.device()));
    steps_.push_back(0);
  }
}

void Adam::update() {
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    const nn::Parameter& p = *parameters_[i];
    // A new dtype restarts the parameter's moments and its bias corrections' count.
    const bool fresh = follow_parameter(exp_avg_[i], p);
    follow_parameter(exp_avg_sq_[i], p);
    if (fresh) steps_[i] = 0;
    slots_.push_back({p.value, p.grad, exp_avg_[i], exp_avg_sq_[i], steps_[i] + 1});
  }
  settings_.lr = lr();
  adam_update(slots_, settings_);
  slots_.clear();  // holds no tensor between steps
  for (std::int64_t& step : steps_) ++step;
}

AdamW::AdamW(std::vector<std::shared_ptr<nn::Parameter>> parameters, double lr, std::pair<double, double> betas,
             double eps, double weight_decay, std::optional<double> max_grad_norm)
    : Adam(std::move(parameters), lr, betas, eps, weight_decay, max_grad_norm, true) {}

}  // namespace juanji::optim
