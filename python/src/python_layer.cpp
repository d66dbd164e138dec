#include "python_layer.hpp"

#include <pybind11/stl.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "juanji/nn/sequential.hpp"

namespace juanji::bind {
namespace {

// "module:qualname", which names nested classes unambiguously (as entry points do).
std::string class_path(py::handle cls) {
  return py::str(cls.attr("__module__")).cast<std::string>() + ":" +
         py::str(cls.attr("__qualname__")).cast<std::string>();
}

// The class a class_path names, imported.
py::object import_class(const std::string& path) {
  const auto colon = path.find(':');
  check(colon != std::string::npos && colon > 0 && colon + 1 < path.size(), "Python layer class '", path,
        "': expected 'module:ClassName'");
  try {
    py::object found = py::module_::import(path.substr(0, colon).c_str());
    std::string qualname = path.substr(colon + 1);
    for (std::size_t begin = 0; begin <= qualname.size();) {
      const auto end = std::min(qualname.find('.', begin), qualname.size());
      found = found.attr(qualname.substr(begin, end - begin).c_str());
      begin = end + 1;
    }
    return found;
  } catch (py::error_already_set& e) {
    throw std::invalid_argument("Python layer class '" + path + "' cannot be imported (" + e.what() +
                                "): import or define it before loading the model");
  }
}

py::object json_module() { return py::module_::import("json"); }

// A layer's Python object: the instance whose methods override the C++ ones (null while its
// __init__ has not returned).
py::handle python_self(const nn::Layer* layer) {
  return py::detail::get_object_handle(layer, py::detail::get_type_info(typeid(nn::Layer)));
}

}  // namespace

py::function PythonLayer::method(const char* name) const {
  return py::get_override(static_cast<const nn::Layer*>(this), name);
}

std::string PythonLayer::type() const {
  // Cached: error messages and plan descriptions ask for it, with or without the GIL.
  const py::gil_scoped_acquire gil;
  if (type_.empty()) {
    const py::handle self = python_self(this);
    if (!self) return "Layer";
    type_ = py::str(py::type::handle_of(self).attr("__name__")).cast<std::string>();
  }
  return type_;
}

Json PythonLayer::config() const {
  const py::gil_scoped_acquire gil;
  const py::handle self = python_self(this);
  check(static_cast<bool>(self), "a Python layer's config: the layer has no Python object");
  py::object arguments = py::dict();
  if (py::function get_config = method("get_config")) arguments = get_config();
  if (!py::isinstance<py::dict>(arguments))
    throw TypeError(type() + ".get_config(): expected a dict of constructor arguments, got " + type_name(arguments));
  std::string text;
  try {
    text = json_module().attr("dumps")(arguments, py::arg("allow_nan") = false).cast<std::string>();
  } catch (py::error_already_set& e) {
    throw TypeError(type() + ".get_config(): the constructor arguments must be JSON values (" + e.what() + ")");
  }
  Json parameters = Json::array();
  for (const auto& p : parameters_) {
    Json shape = Json::array();
    for (const auto size : p->value.shape()) shape.push_back(size);
    parameters.push_back(Json::object({{"name", p->local_name}, {"shape", shape}}));
  }
  return Json::object({{nn::kExternalClassKey, class_path(py::type::handle_of(self))},
                       {"arguments", parse_json(text)},
                       {"parameters", parameters}});
}

Shape PythonLayer::output_shape(const Shape& input) const {
  const py::gil_scoped_acquire gil;
  py::object shape;
  if (py::function declared = method("output_shape")) {
    shape = declared(py::tuple(py::cast(input)));
  } else {
    py::function forward = method("forward");
    if (!forward) throw TypeError(type() + ": a Python layer defines forward(self, x)");
    const DType dtype = parameters_.empty() ? DType::float32 : parameters_.front()->value.dtype();
    py::object zeros = py::module_::import("numpy").attr("zeros")(py::tuple(py::cast(input)), numpy_dtype(dtype));
    shape = py::module_::import("numpy").attr("shape")(forward(zeros));
  }
  try {
    return shape.cast<Shape>();
  } catch (const py::cast_error&) {
    throw TypeError(type() + ".output_shape: expected a tuple of ints, got " + type_name(shape));
  }
}

double PythonLayer::flops(const Shape& input) const {
  const py::gil_scoped_acquire gil;
  py::function declared = method("flops");
  return declared ? declared(py::tuple(py::cast(input))).cast<double>() : 0.0;
}

std::string PythonLayer::extra_repr() const {
  const py::gil_scoped_acquire gil;
  if (py::function declared = method("extra_repr")) return py::str(declared()).cast<std::string>();
  std::string text;
  if (py::function get_config = method("get_config"))
    for (const auto& [key, value] : py::dict(get_config()))
      text += (text.empty() ? "" : ", ") + py::str(key).cast<std::string>() + "=" + py::repr(value).cast<std::string>();
  return text;
}

Tensor& PythonLayer::result_tensor(py::handle result, const char* what, const Tensor& like, Tensor& buffer) const {
  const std::string name = type() + "." + what + "'s result";
  const Tensor value = tensor_arg(result, name.c_str()).to(Device{}).to(like.dtype());
  ensure(buffer, value.shape(), like.dtype(), Device{});
  buffer.copy_(value);
  return buffer;
}

const Tensor& PythonLayer::forward(const Tensor& x, bool training) {
  check_float(x, "x");
  check(x.device().is_cpu(), type(), ": a Python layer runs on the CPU, got an input on ", x.device().str());
  const py::gil_scoped_acquire gil;
  py::function forward = method("forward");
  if (!forward) throw TypeError(type() + ": a Python layer defines forward(self, x)");
  // self.training tells the Python code this call's mode.
  struct ModeForTheCall {
    nn::Layer& layer;
    bool kept;
    ~ModeForTheCall() { layer.Layer::train(kept); }
  } mode{*this, Layer::training()};
  Layer::train(training);
  const py::object result = forward(to_numpy(x.contiguous().clone(), py::none()));
  Tensor& output = result_tensor(result, "forward", x, output_);
  check(output.dim() >= 1 && output.size(0) == x.size(0), type(), ".forward: returned shape ",
        shape_text(output.shape()), " for the input ", shape_text(x.shape()), "; the batch size must stay ",
        x.size(0));
  input_shape_ = x.shape();
  return output;
}

const Tensor& PythonLayer::backward(const Tensor& grad_y, bool need_grad_x) {
  check_grad_output(grad_y, output_);
  const py::gil_scoped_acquire gil;
  py::function backward = method("backward");
  if (!backward) throw TypeError(type() + ": define backward(self, grad_out) to train a Python layer");
  for (const auto& p : parameters_)
    if (p->trainable()) p->grad.zero_();
  const py::object result = backward(to_numpy(grad_y.contiguous().clone(), py::none()));
  if (!need_grad_x) return grad_input_;
  if (result.is_none()) throw TypeError(type() + ".backward: returned None; it returns the input's gradient");
  Tensor& grad_x = result_tensor(result, "backward", grad_y, grad_input_);
  check(grad_x.shape() == input_shape_, type(), ".backward: returned shape ", shape_text(grad_x.shape()),
        " but the input had shape ", shape_text(input_shape_));
  return grad_x;
}

void PythonLayer::to(Device device) {
  check(device.is_cpu(), type(), ": a Python layer runs on the CPU; it cannot move to ", device.str());
  Layer::to(device);
}

std::shared_ptr<nn::Parameter> PythonLayer::declare_parameter(const std::string& name, const Tensor& value,
                                                              bool trainable) {
  const std::string what = type() + ".add_parameter('" + name + "')";
  check(!name.empty() && name.find('.') == std::string::npos, what, ": a parameter's name is not empty and has no '.'");
  for (const auto& p : parameters_) check(p->local_name != name, what, ": the layer has a parameter of that name");
  check(owner() == nullptr, what, ": the layer is in a container already, which lists its parameters: ",
        "declare them in __init__");
  check(value.device().is_cpu(), what, ": a Python layer's parameters are on the CPU");
  return add_parameter(name, value.contiguous().clone(), trainable);
}

std::shared_ptr<nn::Layer> layer_keeping_python_object(py::handle layer) {
  auto held = layer.cast<std::shared_ptr<nn::Layer>>();
  if (!dynamic_cast<PythonLayer*>(held.get())) return held;
  nn::Layer* raw = held.get();
  py::handle object = layer;
  object.inc_ref();
  // Released with the GIL, whichever thread drops the last reference to the layer.
  return std::shared_ptr<nn::Layer>(raw, [held = std::move(held), object](nn::Layer*) mutable {
    if (Py_IsInitialized()) {
      const py::gil_scoped_acquire gil;
      object.dec_ref();
    }
    held.reset();
  });
}

void register_python_layer_factory() {
  nn::set_external_layer_factory([](const Json& config) -> std::shared_ptr<nn::Layer> {
    const py::gil_scoped_acquire gil;
    const std::string path = config.at(nn::kExternalClassKey).as_string();
    const py::object cls = import_class(path);
    const py::handle layer_type = py::type::of<nn::Layer>();
    if (!py::isinstance<py::type>(cls) || !PyObject_IsSubclass(cls.ptr(), layer_type.ptr()))
      throw std::invalid_argument("Python layer class '" + path + "' is not a subclass of juanji.nn.Layer");
    const py::dict arguments = json_module().attr("loads")(config.at("arguments").dump());
    py::object layer;
    try {
      layer = cls(**arguments);
    } catch (py::error_already_set& e) {
      throw std::invalid_argument(path + "(**" + config.at("arguments").dump() + ") failed: " + e.what());
    }
    return layer_keeping_python_object(layer);
  });
}

}  // namespace juanji::bind
