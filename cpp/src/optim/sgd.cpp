#include "juanji/optim/sgd.hpp"

#include <cmath>

#include "juanji/nn/layers.hpp"
#include "juanji/runtime.hpp"

namespace juanji::optim {

SGD::SGD(std::vector<std::shared_ptr<nn::Parameter>> parameters, double lr, double momentum,
         bool nesterov, double weight_decay, std::optional<double> max_grad_norm)
    : Optimizer(std::move(parameters), lr, max_grad_norm), momentum_(momentum), weight_decay_(weight_decay),
      nesterov_(nesterov) {
  check(momentum >= 0 && momentum < 1, "momentum: must be in [0, 1), got ", momentum);
  check(weight_decay >= 0 && std::isfinite(weight_decay), "weight_decay: must be a finite non-negative number, got ",
        weight_decay);
  check(!nesterov || momentum > 0, "nesterov: needs momentum > 0");
  for (const auto& p : parameters_)
    velocity_.push_back(momentum > 0 ? Tensor::zeros(p->value.shape(), p->value.dtype(), p->value.device())
                                     : Tensor());
}

void SGD::update() {
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    Tensor& v = velocity_[i];
    if (v.defined()) follow_parameter(v, *parameters_[i]);
    slots_.push_back({parameters_[i]->value, parameters_[i]->grad, v});
  }
  sgd_update(slots_, {lr(), momentum_, nesterov_, weight_decay_});
  slots_.clear();  // holds no tensor between steps
}

}  // namespace juanji::optim
