#include "juanji/optim/optimizer.hpp"

#include <algorithm>
#include <cmath>

#include "juanji/nn/layers.hpp"
#include "juanji/ops/optim.hpp"
#include "juanji/runtime.hpp"

namespace juanji::optim {

Optimizer::Optimizer(std::vector<std::shared_ptr<nn::Parameter>> parameters, double lr,
                     std::optional<double> max_grad_norm)
    : parameters_(std::move(parameters)), max_grad_norm_(max_grad_norm) {
  set_lr(lr);
  check(!max_grad_norm || (*max_grad_norm > 0 && std::isfinite(*max_grad_norm)),
        "max_grad_norm: must be a finite positive number, got ", max_grad_norm.value_or(0.0));
  for (const auto& p : parameters_)
    check(p && p->trainable(), "params: every parameter must be trainable (have a gradient)");
}

void Optimizer::set_lr(double lr) {
  check(lr >= 0 && std::isfinite(lr), "lr: must be a finite non-negative number, got ", lr);
  lr_ = lr;
}

void Optimizer::step() {
  const std::lock_guard<std::mutex> lock(mutex_);
  // Checked before any update: the update kernels' parallel regions take float32 and float64 only
  // (a model cast to bfloat16 must be refused here, not inside them).
  for (const auto& p : parameters_) check_float(p->value, ("params: '" + p->name + "'").c_str());
  if (max_grad_norm_) {
    for (const auto& p : parameters_) grads_.push_back(p->grad);
    clip_grad_norm(grads_, *max_grad_norm_);
    grads_.clear();  // holds no tensor between steps
  }
  update();
}

void Optimizer::zero_grad() {
  const std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& p : parameters_) p->grad.zero_();
}

bool Optimizer::follow_parameter(Tensor& state, const nn::Parameter& p) {
  if (state.dtype() != p.value.dtype()) {
    state = Tensor::zeros(p.value.shape(), p.value.dtype(), p.value.device());
    return true;
  }
  if (state.device() != p.value.device()) state = state.to(p.value.device());
  return false;
}

LRSchedule::LRSchedule(Optimizer& optimizer, std::int64_t warmup_epochs, std::int64_t steps_per_epoch)
    : base_lr_(optimizer.lr()), steps_per_epoch_(steps_per_epoch), optimizer_(optimizer),
      warmup_epochs_(warmup_epochs) {
  check(warmup_epochs >= 0, "warmup_epochs: must be non-negative, got ", warmup_epochs);
  check(steps_per_epoch > 0, "steps_per_epoch: must be positive, got ", steps_per_epoch);
}

void LRSchedule::start() {
  if (warmup_epochs_ > 0)
    optimizer_.set_lr(base_lr_ / (static_cast<double>(warmup_epochs_) * steps_per_epoch_ + 1));
}

void LRSchedule::step() {
  const std::int64_t steps = steps_ + 1;
  // steps < warmup_epochs * steps_per_epoch without the product (it may not fit).
  if (steps / steps_per_epoch_ < warmup_epochs_)
    optimizer_.set_lr(base_lr_ * static_cast<double>(steps + 1) /
                      (static_cast<double>(warmup_epochs_) * steps_per_epoch_ + 1));
  else
    optimizer_.set_lr(main_lr(steps - warmup_epochs_ * steps_per_epoch_));
  steps_ = steps;
}

StepLR::StepLR(Optimizer& optimizer, std::int64_t step_size, double gamma, std::int64_t warmup_epochs,
               std::int64_t steps_per_epoch)
    : LRSchedule(optimizer, warmup_epochs, steps_per_epoch), step_size_(step_size), gamma_(gamma) {
  check(step_size > 0, "step_size: must be positive, got ", step_size);
  check(gamma > 0 && std::isfinite(gamma), "gamma: must be a finite positive number, got ", gamma);
  start();
}

double StepLR::main_lr(std::int64_t steps) const {
  const std::int64_t epoch = steps / steps_per_epoch_;
  const double lr = base_lr_ * std::pow(gamma_, static_cast<double>(epoch / step_size_));
  check(std::isfinite(lr), "StepLR: gamma ", gamma_, " has taken the learning rate past the float range at epoch ",
        epoch);
  return lr;
}

CosineLR::CosineLR(Optimizer& optimizer, std::int64_t t_max, double eta_min, std::int64_t warmup_epochs,
                   std::int64_t steps_per_epoch)
    : LRSchedule(optimizer, warmup_epochs, steps_per_epoch), t_max_(t_max), eta_min_(eta_min) {
  check(t_max > 0, "t_max: must be positive, got ", t_max);
  check(eta_min >= 0, "eta_min: must be non-negative, got ", eta_min);
  start();
}

double CosineLR::main_lr(std::int64_t steps) const {
  const double total = static_cast<double>(t_max_) * static_cast<double>(steps_per_epoch_);
  const double progress = std::min(static_cast<double>(steps), total) / total;
  return eta_min_ + (base_lr_ - eta_min_) * (1 + std::cos(3.141592653589793 * progress)) / 2;
}

}  // namespace juanji::optim
