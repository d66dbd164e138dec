// The optimizers' common part: the parameters, a writable learning rate, optional gradient-norm
// clipping, and the learning-rate schedules (with linear warm-up) that drive any optimizer.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "juanji/tensor.hpp"

namespace juanji::nn {
struct Parameter;
}

namespace juanji::optim {

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // Clips the gradients (with max_grad_norm) and updates the parameters with update().
  // Steps from several threads run one at a time.
  void step();
  // Sets every parameter's gradient to zero: what a training loop of one's own calls between
  // steps, since Layer::backward_accumulate adds to the gradients.
  void zero_grad();
  virtual double lr() const { return lr_; }
  // Checked as the constructors check it: finite and non-negative.
  virtual void set_lr(double lr);
  // When set, step() first scales all gradients by max_grad_norm / (norm + 1e-6) if that is
  // below 1, norm being the L2 norm of all gradients together (torch's clip_grad_norm_).
  const std::optional<double>& max_grad_norm() const { return max_grad_norm_; }
  const std::vector<std::shared_ptr<nn::Parameter>>& parameters() const { return parameters_; }

 protected:
  Optimizer(std::vector<std::shared_ptr<nn::Parameter>> parameters, double lr,
            std::optional<double> max_grad_norm);
  // One update of every parameter from its (clipped) gradient; step() holds the lock.
  virtual void update() = 0;
  // The state tensor kept for p (velocity, moments) made to follow p's dtype (fresh zeros; returns
  // true) and device (moved along).
  static bool follow_parameter(Tensor& state, const nn::Parameter& p);

  std::vector<std::shared_ptr<nn::Parameter>> parameters_;

 private:
  double lr_ = 0.0;
  std::optional<double> max_grad_norm_;
  std::vector<Tensor> grads_;  // step()'s, empty between steps
  std::mutex mutex_;
};

// A learning-rate schedule with an optional linear warm-up, PyTorch's
// SequentialLR([LinearLR(start_factor=1/(W+1), total_iters=W), main], milestones=[W]): with W the
// warm-up in steps, the s-th step() (s = 1, 2, ...) sets lr = base_lr * (s+1)/(W+1) while s < W,
// then the main schedule at its own step s - W (base_lr at s = W). Construction sets base_lr/(W+1)
// when W > 0. step() is called once per epoch, or once per optimizer step when steps_per_epoch > 1:
// the arguments counted in epochs (warm-up, step_size, t_max) are then multiplied by it.
class LRSchedule {
 public:
  virtual ~LRSchedule() = default;
  void step();
  std::int64_t epoch() const { return steps_ / steps_per_epoch_; }
  std::int64_t steps() const { return steps_; }

 protected:
  LRSchedule(Optimizer& optimizer, std::int64_t warmup_epochs, std::int64_t steps_per_epoch);
  // Sets the warm-up's first lr; called by the subclasses once their arguments are checked.
  void start();
  // The main schedule's lr after `steps` of its own steps (0: base_lr).
  virtual double main_lr(std::int64_t steps) const = 0;

  const double base_lr_;
  const std::int64_t steps_per_epoch_;

 private:
  Optimizer& optimizer_;
  std::int64_t warmup_epochs_, steps_ = 0;
};

// main lr = base_lr * gamma^floor(epoch / step_size).
class StepLR : public LRSchedule {
 public:
  StepLR(Optimizer& optimizer, std::int64_t step_size, double gamma = 0.1, std::int64_t warmup_epochs = 0,
         std::int64_t steps_per_epoch = 1);

 private:
  double main_lr(std::int64_t steps) const override;
  std::int64_t step_size_;
  double gamma_;
};

// main lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * min(epoch, t_max) / t_max)) / 2, epoch
// fractional between epochs when steps_per_epoch > 1.
class CosineLR : public LRSchedule {
 public:
  CosineLR(Optimizer& optimizer, std::int64_t t_max, double eta_min = 0.0, std::int64_t warmup_epochs = 0,
           std::int64_t steps_per_epoch = 1);

 private:
  double main_lr(std::int64_t steps) const override;
  std::int64_t t_max_;
  double eta_min_;
};

}  // namespace juanji::optim
