// juanji._core.optim: SGD, Adam, AdamW and their learning-rate schedules.
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bind_util.hpp"
#include "juanji/optim/adam.hpp"
#include "juanji/optim/sgd.hpp"

namespace juanji::bind {
namespace {

std::vector<std::shared_ptr<nn::Parameter>> optimizer_parameters(py::iterable params) {
  std::vector<std::shared_ptr<nn::Parameter>> list;
  for (auto p : params) {
    if (!py::isinstance<nn::Parameter>(p))
      throw TypeError("params: expected the Parameters of a model (model.parameters()), got an item of type " +
                      type_name(p));
    list.push_back(p.cast<std::shared_ptr<nn::Parameter>>());
  }
  return list;
}

// Adam's and AdamW's constructor (they differ in weight_decay's default and meaning).
template <class Optimizer>
auto adam_init() {
  return py::init([](py::iterable params, double lr, std::pair<double, double> betas, double eps, double weight_decay,
                     std::optional<double> max_grad_norm) {
    return std::make_shared<Optimizer>(optimizer_parameters(params), lr, betas, eps, weight_decay, max_grad_norm);
  });
}

py::arg_v adam_betas() { return py::arg("betas") = std::pair<double, double>{0.9, 0.999}; }

}  // namespace

void register_optim(py::module_& m) {
  auto optim_module = m.def_submodule("optim", "SGD, Adam, AdamW and learning-rate schedules");

  py::class_<optim::Optimizer, std::shared_ptr<optim::Optimizer>>(optim_module, "Optimizer",
                                                                  "The base of SGD, Adam and AdamW.")
      .def_property("lr", &optim::Optimizer::lr, &optim::Optimizer::set_lr,
                    "The learning rate; set it like the constructor's (finite, >= 0).")
      .def_property_readonly("max_grad_norm", &optim::Optimizer::max_grad_norm)
      .def("step", &optim::Optimizer::step, py::call_guard<py::gil_scoped_release>(),
           "Clips the gradients when max_grad_norm is set, then updates the parameters.")
      .def("zero_grad", &optim::Optimizer::zero_grad, py::call_guard<py::gil_scoped_release>(),
           "Sets every parameter's gradient to zero (model.backward adds to them).");
  py::class_<optim::SGD, optim::Optimizer, std::shared_ptr<optim::SGD>>(optim_module, "SGD")
      .def(py::init([](py::iterable params, double lr, double momentum, bool nesterov, double weight_decay,
                       std::optional<double> max_grad_norm) {
             return std::make_shared<optim::SGD>(optimizer_parameters(params), lr, momentum, nesterov, weight_decay,
                                                 max_grad_norm);
           }),
           py::arg("params"), py::arg("lr"), py::arg("momentum") = 0.0, py::arg("nesterov") = false,
           py::arg("weight_decay") = 0.0, py::arg("max_grad_norm") = py::none())
      .def_property_readonly("momentum", &optim::SGD::momentum)
      .def_property_readonly("nesterov", &optim::SGD::nesterov)
      .def_property_readonly("weight_decay", &optim::SGD::weight_decay);
  py::class_<optim::Adam, optim::Optimizer, std::shared_ptr<optim::Adam>>(
      optim_module, "Adam", "Adam with PyTorch's semantics; weight_decay is an L2 term added to the gradient.")
      .def(adam_init<optim::Adam>(), py::arg("params"), py::arg("lr") = 1e-3, adam_betas(), py::arg("eps") = 1e-8,
           py::arg("weight_decay") = 0.0, py::arg("max_grad_norm") = py::none())
      .def_property_readonly("betas", &optim::Adam::betas)
      .def_property_readonly("eps", &optim::Adam::eps)
      .def_property_readonly("weight_decay", &optim::Adam::weight_decay);
  py::class_<optim::AdamW, optim::Adam, std::shared_ptr<optim::AdamW>>(
      optim_module, "AdamW", "Adam with decoupled weight decay (w -= lr * weight_decay * w), PyTorch's AdamW.")
      .def(adam_init<optim::AdamW>(), py::arg("params"), py::arg("lr") = 1e-3, adam_betas(), py::arg("eps") = 1e-8,
           py::arg("weight_decay") = 0.01, py::arg("max_grad_norm") = py::none());
  // A schedule keeps a reference to its optimizer: keep_alive holds the optimizer while it lives.
  // Both take warmup_epochs (linear warm-up) and steps_per_epoch (call step() per optimizer step).
  py::class_<optim::LRSchedule>(optim_module, "LRSchedule", "The base of StepLR and CosineLR.")
      .def("step", &optim::LRSchedule::step)
      .def_property_readonly("epoch", &optim::LRSchedule::epoch)
      .def_property_readonly("steps", &optim::LRSchedule::steps);
  py::class_<optim::StepLR, optim::LRSchedule>(optim_module, "StepLR")
      .def(py::init([](optim::Optimizer& optimizer, py::handle step_size, double gamma, py::handle warmup_epochs,
                       py::handle steps_per_epoch) {
             return std::make_unique<optim::StepLR>(optimizer, int_arg(step_size, "step_size"), gamma,
                                                    int_arg(warmup_epochs, "warmup_epochs"),
                                                    int_arg(steps_per_epoch, "steps_per_epoch"));
           }),
           py::arg("optimizer"), py::arg("step_size"), py::arg("gamma") = 0.1, py::arg("warmup_epochs") = 0,
           py::arg("steps_per_epoch") = 1, py::keep_alive<1, 2>());
  py::class_<optim::CosineLR, optim::LRSchedule>(optim_module, "CosineLR")
      .def(py::init([](optim::Optimizer& optimizer, py::handle t_max, double eta_min, py::handle warmup_epochs,
                       py::handle steps_per_epoch) {
             return std::make_unique<optim::CosineLR>(optimizer, int_arg(t_max, "t_max"), eta_min,
                                                      int_arg(warmup_epochs, "warmup_epochs"),
                                                      int_arg(steps_per_epoch, "steps_per_epoch"));
           }),
           py::arg("optimizer"), py::arg("t_max"), py::arg("eta_min") = 0.0, py::arg("warmup_epochs") = 0,
           py::arg("steps_per_epoch") = 1, py::keep_alive<1, 2>());
}

}  // namespace juanji::bind
