// Layers written in Python: a subclass of juanji.nn.Layer defines forward(x) and backward(grad_out)
// on NumPy arrays; this trampoline is the C++ layer that models, containers and the training step
// run, taking the GIL only around the calls into Python.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include "bind_util.hpp"
#include "juanji/nn/layers.hpp"

namespace juanji::bind {

class PythonLayer : public nn::Layer {
 public:
  std::string type() const override;  // the Python class's name
  // {"python_class", "arguments" (get_config()), "parameters"}: see nn::kExternalClassKey.
  Json config() const override;
  // The Python method output_shape(shape) when the class has one, else the output of a forward
  // in eval mode on zeros of that shape.
  Shape output_shape(const Shape& input) const override;
  double flops(const Shape& input) const override;  // the Python method flops(shape), or 0
  const Tensor& forward(const Tensor& x, bool training) override;
  // Zeroes the parameter gradients, then calls the Python backward, which sets them.
  const Tensor& backward(const Tensor& grad_y, bool need_grad_x) override;
  std::string extra_repr() const override;  // the Python method extra_repr() when the class has one
  void to(Device device) override;           // the CPU only
  // None: the Python object may keep state of its own, so a model with this layer runs its
  // eval-mode calls one at a time.
  std::shared_ptr<nn::Layer> replicate() const override { return nullptr; }
  // A parameter (trainable: with a gradient) or buffer named `name`, a copy of `value`.
  std::shared_ptr<nn::Parameter> declare_parameter(const std::string& name, const Tensor& value, bool trainable);

 private:
  // The Python method `name` the subclass defines, or None.
  py::function method(const char* name) const;
  // A Python method's result as a tensor like `like` (dtype), copied into `buffer`.
  Tensor& result_tensor(py::handle result, const char* what, const Tensor& like, Tensor& buffer) const;
  Shape input_shape_;
  Tensor output_, grad_input_;
  mutable std::once_flag type_once_;
  mutable std::string type_;
};

// What a container keeps of `layer`: a Python subclass's object stays alive (with its __dict__
// and methods) as long as a container holds the layer, whatever Python does with its own names.
std::shared_ptr<nn::Layer> layer_keeping_python_object(py::handle layer);

// Lets juanji.load build the Python layers a checkpoint names (see nn::set_external_layer_factory).
void register_python_layer_factory();

}  // namespace juanji::bind
