#include <cmath>

#include "juanji/build_config.hpp"
#include "juanji/nn/layers.hpp"
#include "juanji/optim/sgd.hpp"
#include "juanji/runtime.hpp"
#if JUANJI_WITH_CUDA
#include "cuda/ops.hpp"
#endif

namespace juanji::optim {
namespace {

constexpr std::int64_t kParallelElements = 16384;

// Called inside SGD::step's parallel region (or outside any): the elements are split over the team.
template <class T>
void update(T* w, const T* g, T* v, std::int64_t n, double lr, double momentum, bool nesterov,
            double weight_decay) {
  const T eta = static_cast<T>(lr), mu = static_cast<T>(momentum), wd = static_cast<T>(weight_decay);
#pragma omp for schedule(static) nowait
  for (std::int64_t i = 0; i < n; ++i) {
    T d = g[i] + wd * w[i];
    if (v) {
      v[i] = mu * v[i] + d;
      d = nesterov ? d + mu * v[i] : v[i];
    }
    w[i] -= eta * d;
  }
}

}  // namespace

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
  std::int64_t cpu_elements = 0;
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    nn::Parameter& p = *parameters_[i];
    Tensor& v = velocity_[i];
    // The model may have changed dtype (fresh state) or device (the state moves along).
    if (v.defined() && v.dtype() != p.value.dtype())
      v = Tensor::zeros(p.value.shape(), p.value.dtype(), p.value.device());
    if (v.defined() && v.device() != p.value.device()) v = v.to(p.value.device());
#if JUANJI_WITH_CUDA
    if (p.value.device().is_cuda()) {
      cuda::sgd_update(p.value, p.grad, v, lr_, momentum_, nesterov_, weight_decay_);
      continue;
    }
#endif
    // Checked here: nothing may throw inside the parallel region below.
    check(p.grad.dtype() == p.value.dtype() && p.grad.shape() == p.value.shape(),
          "params: a gradient must match its parameter's dtype and shape, got ", shape_text(p.grad.shape()), " ",
          dtype_name(p.grad.dtype()), " for ", shape_text(p.value.shape()), " ", dtype_name(p.value.dtype()));
    cpu_elements += p.value.numel();
  }
  // The parameters on the CPU in one parallel region: each element is updated on its own, and
  // LeNet's ten parameters (62k elements) were too small to pay for a fork each.
#pragma omp parallel num_threads(::juanji::team_size()) if (cpu_elements > kParallelElements)
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    nn::Parameter& p = *parameters_[i];
    if (!p.value.device().is_cpu()) continue;
    Tensor& v = velocity_[i];
    if (p.value.dtype() == DType::float32)
      update<float>(p.value.data<float>(), p.grad.data<float>(), v.defined() ? v.data<float>() : nullptr,
                    p.value.numel(), lr_, momentum_, nesterov_, weight_decay_);
    else
      update<double>(p.value.data<double>(), p.grad.data<double>(), v.defined() ? v.data<double>() : nullptr,
                     p.value.numel(), lr_, momentum_, nesterov_, weight_decay_);
  }
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
