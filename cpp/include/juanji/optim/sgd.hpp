// Stochastic gradient descent, the seeds' w <- w - eta * dE/dw, with PyTorch's momentum,
// Nesterov and weight-decay semantics, and per-epoch learning-rate schedules.
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#include "juanji/ops/optim.hpp"
#include "juanji/tensor.hpp"

namespace juanji::nn {
struct Parameter;
}

namespace juanji::optim {

class SGD {
 public:
  SGD(std::vector<std::shared_ptr<nn::Parameter>> parameters, double lr, double momentum = 0.0,
      bool nesterov = false, double weight_decay = 0.0);
  // d = g + weight_decay*w; v = momentum*v + d; d = nesterov ? d + momentum*v : v; w -= lr*d.
  // Steps from several threads run one at a time.
  void step();
  double lr() const { return lr_; }
  // Checked as the constructor checks it: finite and non-negative.
  void set_lr(double lr);
  double momentum() const { return momentum_; }
  bool nesterov() const { return nesterov_; }
  double weight_decay() const { return weight_decay_; }
  const std::vector<std::shared_ptr<nn::Parameter>>& parameters() const { return parameters_; }

 private:
  double lr_;
  std::vector<std::shared_ptr<nn::Parameter>> parameters_;
  std::vector<Tensor> velocity_;
  std::vector<SgdSlot> slots_;  // step()'s, empty between steps but keeping its capacity
  std::mutex mutex_;
  double momentum_, weight_decay_;
  bool nesterov_;
};

// lr = base_lr * gamma^(epoch / step_size); step() once per epoch.
class StepLR {
 public:
  StepLR(SGD& optimizer, std::int64_t step_size, double gamma = 0.1);
  void step();
  std::int64_t epoch() const { return epoch_; }

 private:
  SGD& optimizer_;
  double base_lr_;
  std::int64_t step_size_, epoch_ = 0;
  double gamma_;
};

// lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / t_max)) / 2; step() once per epoch.
class CosineLR {
 public:
  CosineLR(SGD& optimizer, std::int64_t t_max, double eta_min = 0.0);
  void step();
  std::int64_t epoch() const { return epoch_; }

 private:
  SGD& optimizer_;
  double base_lr_;
  std::int64_t t_max_, epoch_ = 0;
  double eta_min_;
};

}  // namespace juanji::optim
