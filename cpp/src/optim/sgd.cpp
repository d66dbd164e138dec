#include <cmath>

#include "juanji/nn/layers.hpp"
#include "juanji/ops/optim.hpp"
#include "juanji/optim/sgd.hpp"
#include "juanji/runtime.hpp"

namespace juanji::optim {

SGD::SGD(std::vector<std::shared_ptr<nn::Parameter>> parameters, double lr, double momentum,
         bool nesterov, double weight_decay)
    : lr_(0.0), parameters_(std::move(parameters)), momentum_(momentum), weight_decay_(weight_decay),
      nesterov_(nesterov) {
  set_lr(lr);
  check(momentum >= 0 && momentum < 1, "momentum: must be in [0, 1), got ", momentum);
  check(weight_decay >= 0 && std::isfinite(weight_decay), "weight_decay: must be a finite non-negative number, got ",
        weight_decay);
  check(!nesterov || momentum > 0, "nesterov: needs momentum > 0");
  for (const auto& p : parameters_) {
    check(p && p->trainable(), "params: every parameter must be trainable (have a gradient)");
    velocity_.push_back(momentum > 0 ? Tensor::zeros(p->value.shape(), p->value.dtype(), p->value.device())
                                     : Tensor());
  }
}

void SGD::set_lr(double lr) {
  check(lr >= 0 && std::isfinite(lr), "lr: must be a finite non-negative number, got ", lr);
  lr_ = lr;
}

void SGD::step() {
  const std::lock_guard<std::mutex> lock(mutex_);
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    nn::Parameter& p = *parameters_[i];
    Tensor& v = velocity_[i];
    // The model may have changed dtype (fresh state) or device (the state moves along).
    if (v.defined() && v.dtype() != p.value.dtype())
      v = Tensor::zeros(p.value.shape(), p.value.dtype(), p.value.device());
    if (v.defined() && v.device() != p.value.device()) v = v.to(p.value.device());
    slots_.push_back({p.value, p.grad, v});
  }
  sgd_update(slots_, {lr_, momentum_, nesterov_, weight_decay_});
  slots_.clear();  // holds no tensor between steps
}

StepLR::StepLR(SGD& optimizer, std::int64_t step_size, double gamma)
    : optimizer_(optimizer), base_lr_(optimizer.lr()), step_size_(step_size), gamma_(gamma) {
  check(step_size > 0, "step_size: must be positive, got ", step_size);
  check(gamma > 0 && std::isfinite(gamma), "gamma: must be a finite positive number, got ", gamma);
}

void StepLR::step() {
  const double lr = base_lr_ * std::pow(gamma_, static_cast<double>((epoch_ + 1) / step_size_));
  check(std::isfinite(lr), "StepLR: gamma ", gamma_, " has taken the learning rate past the float range at epoch ",
        epoch_ + 1);
  optimizer_.set_lr(lr);
  ++epoch_;
}

CosineLR::CosineLR(SGD& optimizer, std::int64_t t_max, double eta_min)
    : optimizer_(optimizer), base_lr_(optimizer.lr()), t_max_(t_max), eta_min_(eta_min) {
  check(t_max > 0, "t_max: must be positive, got ", t_max);
  check(eta_min >= 0, "eta_min: must be non-negative, got ", eta_min);
}

void CosineLR::step() {
  ++epoch_;
  const double progress = static_cast<double>(std::min(epoch_, t_max_)) / static_cast<double>(t_max_);
  optimizer_.set_lr(eta_min_ + (base_lr_ - eta_min_) * (1 + std::cos(3.141592653589793 * progress)) / 2);
}

}  // namespace juanji::optim
