// juanji._core.optim: SGD and its learning-rate schedules.
#include <memory>
#include <string>
#include <vector>

#include "bind_util.hpp"
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

}  // namespace

void register_optim(py::module_& m) {
  auto optim_module = m.def_submodule("optim", "SGD and learning-rate schedules");

  py::class_<optim::SGD, std::shared_ptr<optim::SGD>>(optim_module, "SGD")
      .def(py::init([](py::iterable params, double lr, double momentum, bool nesterov, double weight_decay) {
             return std::make_shared<optim::SGD>(optimizer_parameters(params), lr, momentum, nesterov, weight_decay);
           }),
           py::arg("params"), py::arg("lr"), py::arg("momentum") = 0.0, py::arg("nesterov") = false,
           py::arg("weight_decay") = 0.0)
      .def_property("lr", &optim::SGD::lr, &optim::SGD::set_lr, "The learning rate; set it like the constructor's (finite, >= 0).")
      .def_property_readonly("momentum", &optim::SGD::momentum)
      .def_property_readonly("nesterov", &optim::SGD::nesterov)
      .def_property_readonly("weight_decay", &optim::SGD::weight_decay)
      .def("step", &optim::SGD::step, py::call_guard<py::gil_scoped_release>());
  // A schedule keeps a reference to its optimizer: keep_alive holds the SGD while it lives.
  py::class_<optim::StepLR>(optim_module, "StepLR")
      .def(py::init([](optim::SGD& optimizer, py::handle step_size, double gamma) {
             return optim::StepLR(optimizer, int_arg(step_size, "step_size"), gamma);
           }),
           py::arg("optimizer"), py::arg("step_size"), py::arg("gamma") = 0.1, py::keep_alive<1, 2>())
      .def("step", &optim::StepLR::step)
      .def_property_readonly("epoch", &optim::StepLR::epoch);
  py::class_<optim::CosineLR>(optim_module, "CosineLR")
      .def(py::init([](optim::SGD& optimizer, py::handle t_max, double eta_min) {
             return optim::CosineLR(optimizer, int_arg(t_max, "t_max"), eta_min);
           }),
           py::arg("optimizer"), py::arg("t_max"), py::arg("eta_min") = 0.0, py::keep_alive<1, 2>())
      .def("step", &optim::CosineLR::step)
      .def_property_readonly("epoch", &optim::CosineLR::epoch);
}

}  // namespace juanji::bind
