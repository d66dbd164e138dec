// Stochastic gradient descent, the seeds' w <- w - eta * dE/dw, with PyTorch's momentum,
// Nesterov and weight-decay semantics.
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "juanji/ops/optim.hpp"
#include "juanji/optim/optimizer.hpp"

namespace juanji::optim {

class SGD : public Optimizer {
 public:
  SGD(std::vector<std::shared_ptr<nn::Parameter>> parameters, double lr, double momentum = 0.0,
      bool nesterov = false, double weight_decay = 0.0, std::optional<double> max_grad_norm = std::nullopt);
  double momentum() const { return momentum_; }
  bool nesterov() const { return nesterov_; }
  double weight_decay() const { return weight_decay_; }

 private:
  // d = g + weight_decay*w; v = momentum*v + d; d = nesterov ? d + momentum*v : v; w -= lr*d.
  void update() override;

  std::vector<Tensor> velocity_;
  std::vector<SgdSlot> slots_;  // update()'s, empty between steps but keeping its capacity
  double momentum_, weight_decay_;
  bool nesterov_;
};

}  // namespace juanji::optim
