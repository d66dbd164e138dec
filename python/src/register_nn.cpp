// juanji._core.nn: layers, Sequential and losses.
#include <pybind11/stl.h>

#include <algorithm>
#include <variant>

#include "bind_util.hpp"
#include "juanji/nn/sequential.hpp"
#include "python_layer.hpp"
#include "juanji/runtime.hpp"

namespace juanji::bind {
namespace {

using nn::Layer;
using nn::Parameter;

nn::Init init_arg(const std::string& init) {
  if (init == "he") return nn::Init::he;
  if (init == "xavier") return nn::Init::xavier;
  throw std::invalid_argument("init: expected 'he' or 'xavier', got '" + init + "'");
}

// Runs f with the GIL released and then the layer's Lock (its mutex and those of the layers inside
// it) held: a thread waiting for a lock must not hold the GIL, which the lock's holder may need (to
// release a NumPy array it no longer uses). The caller counts as one of the threads running work
// at once (see ConcurrentCaller). The Sequential's methods take their locks themselves: call them
// with the GIL released.
template <class F>
auto locked(const Layer& layer, F&& f) {
  py::gil_scoped_release release;
  const Layer::Lock lock(layer);
  const ConcurrentCaller caller;
  return f();
}

template <class F>
auto without_gil(F&& f) {
  py::gil_scoped_release release;
  return f();
}

// A layer whose to() takes its lock (move_or_cast calls it without the GIL).
struct LockedLayer {
  Layer& layer;
  template <class Target>
  void to(Target target) {
    const Layer::Lock lock(layer);
    layer.to(target);
  }
};

std::string config_json(const Layer& layer) { return layer.config().dump(nn::kArchitectureFormat); }

// Python callers get their own copy, taken under the lock: the layer reuses its output buffer on
// the next call. training None: the layer's mode (train()/eval()).
Tensor layer_forward(Layer& layer, py::handle x, py::handle training) {
  const Tensor input = tensor_arg(x, "x");
  const bool mode = training.is_none() ? layer.training() : training.cast<bool>();
  return locked(layer, [&] { return layer.forward(input, mode).clone(); });
}

// The trainable parameters (trainable true) or the buffers (false) of a layer, under its lock.
std::vector<std::shared_ptr<Parameter>> parameters_of(const Layer& layer, bool trainable) {
  std::vector<std::shared_ptr<Parameter>> selected;
  for (const auto& p : locked(layer, [&] { return layer.parameters(); }))
    if (p->trainable() == trainable) selected.push_back(p);
  return selected;
}

// Copies `value` into `into` (a parameter's value or gradient), whose shape it must have.
void assign(Tensor& into, py::handle value, const Parameter& p, const char* what) {
  const Tensor source = tensor_arg(value, what);
  check(source.shape() == into.shape(), "Parameter ", p.name, ": ", what, " must keep the shape ",
        shape_text(into.shape()), ", got ", shape_text(source.shape()));
  without_gil([&] { into.copy_(source.to(into.device()).to(into.dtype())); });
}

py::list parameter_list(const std::vector<std::shared_ptr<Parameter>>& params) {
  py::list out;
  for (const auto& p : params) out.append(py::cast(p));
  return out;
}

// NumPy views keep the viewed storage itself alive (not the Parameter, whose tensor to() may
// replace), so a view taken before a move stays valid, holding the values it had.
py::object parameter_view(py::handle layer, const char* name) {
  for (const auto& p : layer.cast<Layer&>().parameters()) {
    const auto dot = p->name.rfind('.');
    if ((dot == std::string::npos ? p->name : p->name.substr(dot + 1)) == name)
      return to_numpy(p->value, py::none());
  }
  return py::none();
}

// A device moves, a dtype casts (see device_or_dtype_arg). Read with the GIL, then carried out
// without it (the target takes its locks).
template <class Target>
void move_or_cast(Target&& target, py::handle where) {
  const std::variant<Device, DType> to = device_or_dtype_arg(where);
  without_gil([&] { std::visit([&](auto device_or_dtype) { target.to(device_or_dtype); }, to); });
}

std::shared_ptr<Layer> layer_arg(py::handle layer, const std::string& what) {
  if (!py::isinstance<Layer>(layer)) throw TypeError(what + ": expected a layer, got " + type_name(layer));
  return layer_keeping_python_object(layer);
}

// Joining a container takes each layer's lock, which a thread running the layer may hold while it
// waits for the GIL: build containers without it.
std::vector<std::shared_ptr<Layer>> layer_list(const py::args& layers, const std::string& what) {
  std::vector<std::shared_ptr<Layer>> list;
  for (auto layer : layers) list.push_back(layer_arg(layer, what + " " + std::to_string(list.size())));
  return list;
}

template <class ConvLayer>
void def_conv(py::module_& m, const char* name) {
  py::class_<ConvLayer, nn::Conv, std::shared_ptr<ConvLayer>>(m, name)
      .def(py::init([](py::handle in, py::handle out, py::handle kernel, py::handle stride, py::handle padding,
                       py::handle dilation, py::handle groups, bool bias, const std::string& init) {
             return std::make_shared<ConvLayer>(int_arg(in, "in_channels"), int_arg(out, "out_channels"),
                                                ints_arg(kernel, "kernel_size"),
                                                conv_options(stride, padding, dilation, int_arg(groups, "groups")), bias, init_arg(init));
           }),
           py::arg("in_channels"), py::arg("out_channels"), py::arg("kernel_size"), py::arg("stride") = 1,
           py::arg("padding") = 0, py::arg("dilation") = 1, py::arg("groups") = 1, py::arg("bias") = true,
           py::arg("init") = "he");
}

template <class PoolLayer>
void def_max_pool(py::module_& m, const char* name) {
  py::class_<PoolLayer, nn::Pool, std::shared_ptr<PoolLayer>>(m, name)
      .def(py::init([](py::handle kernel, py::handle stride, py::handle padding, bool ceil_mode) {
             return std::make_shared<PoolLayer>(pool_options(kernel, stride, padding, ceil_mode, true));
           }),
           py::arg("kernel_size"), py::arg("stride") = py::none(), py::arg("padding") = 0,
           py::arg("ceil_mode") = false);
}

template <class PoolLayer>
void def_avg_pool(py::module_& m, const char* name) {
  py::class_<PoolLayer, nn::Pool, std::shared_ptr<PoolLayer>>(m, name)
      .def(py::init([](py::handle kernel, py::handle stride, py::handle padding, bool ceil_mode,
                       bool count_include_pad) {
             return std::make_shared<PoolLayer>(pool_options(kernel, stride, padding, ceil_mode, count_include_pad));
           }),
           py::arg("kernel_size"), py::arg("stride") = py::none(), py::arg("padding") = 0,
           py::arg("ceil_mode") = false, py::arg("count_include_pad") = true);
}

}  // namespace

void register_nn(py::module_& m) {
  auto nn_module = m.def_submodule("nn", "Layers, Sequential and losses");
  register_python_layer_factory();

  py::class_<Parameter, std::shared_ptr<Parameter>>(nn_module, "Parameter",
                                                    "A named tensor of a layer; data and grad are NumPy views (no copy).")
      .def_readonly("name", &Parameter::name)
      .def_property(
          "data", [](const Parameter& p) { return to_numpy(p.value, py::none()); },
          [](Parameter& p, py::handle value) { assign(p.value, value, p, "data"); },
          "The value as a NumPy view; assigning an array copies it in (same shape; cast to the dtype).")
      .def_property(
          "grad",
          [](const Parameter& p) -> py::object {
            if (!p.grad.defined()) return py::none();
            return to_numpy(p.grad, py::none());
          },
          [](Parameter& p, py::handle value) {
            if (!p.trainable()) throw TypeError("Parameter " + p.name + " is a buffer: it has no gradient");
            assign(p.grad, value, p, "grad");
          },
          "The gradient as a NumPy view (None for buffers); assigning an array copies it in.")
      .def("numel", [](const Parameter& p) { return p.value.numel(); }, "The number of elements.")
      .def_property_readonly("tensor", [](const Parameter& p) { return p.value; },
                             "The value as a juanji.Tensor (shares storage; on the model's device).")
      .def_property_readonly("device", [](const Parameter& p) { return p.value.device().str(); })
      .def_property_readonly("shape", [](const Parameter& p) { return py::tuple(py::cast(p.value.shape())); })
      .def_property_readonly("trainable", &Parameter::trainable)
      .def("__repr__", [](const Parameter& p) {
        return "Parameter(" + p.name + ", shape=" + shape_str(p.value.shape()) + ")";
      });

  py::class_<Layer, PythonLayer, std::shared_ptr<Layer>>(
      nn_module, "Layer",
      "The base of every layer. Subclass it in Python: call super().__init__(), declare parameters with "
      "self.add_parameter(name, array), define forward(self, x) and backward(self, grad_out) on NumPy arrays "
      "(backward sets each parameter's p.grad and returns the input's gradient), optionally get_config() "
      "(constructor arguments, for checkpoints), output_shape(self, shape), flops(self, shape) and "
      "extra_repr(). self.training tells forward the mode of the call.")
      .def(py::init<>())
      .def_property_readonly("type", &Layer::type)
      .def("config_json", &config_json, "The constructor arguments as JSON, as a checkpoint stores them.")
      .def("forward", &layer_forward, py::arg("x"), py::arg("training") = py::none(),
           "The output as a new tensor; training None means the layer's mode (train()/eval()). A training-mode "
           "forward keeps what backward needs.")
      .def("__call__", [](Layer& l, py::handle x) { return layer_forward(l, x, py::bool_(false)); })
      .def("backward",
           [](Layer& l, py::handle grad_y) {
             const Tensor grad = tensor_arg(grad_y, "grad_out");
             return locked(l, [&] { return l.backward_accumulate(grad).clone(); });
           },
           py::arg("grad_out"),
           "After a training-mode forward: returns the input's gradient and adds every parameter's gradient "
           "to its p.grad (zero_grad() clears them).")
      .def("zero_grad", [](Layer& l) { without_gil([&] { l.zero_grad(); }); },
           "Sets every parameter's gradient to zero.")
      .def("train",
           [](py::object self, bool mode) {
             self.cast<Layer&>().train(mode);
             return self;
           },
           py::arg("mode") = true, "Sets the mode of this layer and the layers inside it; returns the layer.")
      .def("eval",
           [](py::object self) {
             self.cast<Layer&>().eval();
             return self;
           },
           "train(False).")
      .def_property_readonly("training", &Layer::training)
      .def_property_readonly("frozen", &Layer::frozen,
                             "Whether the layer belongs to a frozen model (Sequential.freeze()): inference only.")
      .def("set_precision",
           [](py::object self, const std::string& precision) {
             self.cast<Layer&>().set_precision(nn::precision_from_name(precision));
             return self;
           },
           py::arg("precision"),
           "Mixed precision for this layer and the layers inside it; returns the layer. 'bf16': convolutions "
           "and linear layers compute from their input, weights and output gradient rounded to bfloat16 with "
           "float32 sums, their outputs and input gradients rounded to bfloat16; weights, their gradients, "
           "optimizer state, the other layers and the loss stay float32. 'fp32' (the default): every layer "
           "computes in its parameters' dtype.")
      .def_property_readonly("precision", [](const Layer& l) { return nn::precision_name(l.precision()); },
                             "'fp32' or 'bf16' (see set_precision).")
      .def("add_parameter",
           [](Layer& self, const std::string& name, py::handle value, bool trainable) {
             auto* python_layer = dynamic_cast<PythonLayer*>(&self);
             if (!python_layer) throw TypeError("add_parameter: only layers written in Python declare parameters");
             return python_layer->declare_parameter(name, tensor_arg(value, "value"), trainable);
           },
           py::arg("name"), py::arg("value"), py::arg("trainable") = true,
           "For layers written in Python: a parameter holding a copy of value (trainable: with a gradient; "
           "else a buffer saved with the model); returns the Parameter.")
      .def("output_shape",
           [](const Layer& l, const Shape& s) { return py::tuple(py::cast(without_gil([&] { return l.output_shape(s); }))); })
      .def("parameters", [](const Layer& l) { return parameter_list(parameters_of(l, true)); },
           "The trainable parameters, named by their place ('3.body.0.weight').")
      .def("named_parameters",
           [](const Layer& l) {
             py::list named;
             for (const auto& p : parameters_of(l, true)) named.append(py::make_tuple(p->name, p));
             return named;
           },
           "(name, Parameter) pairs of the trainable parameters, as PyTorch's named_parameters().")
      .def("modules", &nn::layers_within,
           "This layer and every layer inside it, depth first (PyTorch's modules()): for instance "
           "[m for m in model.modules() if isinstance(m, nn.BatchNorm2d)].")
      .def("buffers", [](const Layer& l) { return parameter_list(parameters_of(l, false)); },
           "Tensors saved with the model but not trained (batch-norm running statistics).")
      .def("state_dict",
           [](const Layer& l) {
             py::dict state;
             for (const auto& p : locked(l, [&] { return l.parameters(); }))
               state[py::str(p->name)] = to_numpy(p->value, py::none());
             return state;
           },
           "Every parameter and buffer by name, as NumPy views: PyTorch's state_dict names and layouts.")
      .def("load_state_dict",
           [](Layer& l, py::handle state, bool strict) {
             // torch's batch-norm counters are int64 tensors that load_state_dict ignores: not converted.
             py::dict kept;
             if (py::isinstance<py::dict>(state))
               for (auto [key, value] : py::reinterpret_borrow<py::dict>(state))
                 if (!(py::isinstance<py::str>(key) && key.attr("endswith")("num_batches_tracked").cast<bool>()))
                   kept[key] = value;
             const std::vector<NamedTensor> tensors =
                 named_tensors_arg(py::isinstance<py::dict>(state) ? kept : state, "load_state_dict");
             const nn::StateDictReport report = without_gil([&] { return nn::load_state_dict(l, tensors, strict); });
             return py::make_tuple(report.missing, report.unexpected);
           },
           py::arg("state_dict"), py::arg("strict") = true,
           "Copies the arrays of a mapping (a state_dict; PyTorch's loads as {k: v.numpy()}) into the "
           "parameters and buffers of those names, all or none; num_batches_tracked is ignored. Shape "
           "mismatches, and with strict missing or unexpected names, raise ValueError listing them all. "
           "Returns (missing names, unexpected names).")
      .def_property_readonly("weight", [](py::object self) { return parameter_view(self, "weight"); })
      .def_property_readonly("bias", [](py::object self) { return parameter_view(self, "bias"); })
      .def("to",
           [](py::object self, py::object target) {
             move_or_cast(LockedLayer{self.cast<Layer&>()}, target);
             return self;
           },
           py::arg("target"),
           "to('cpu'|'cuda'|'cuda:N') moves the parameters and gradients; to('float64') casts them. "
           "Returns the layer.")
      .def("__repr__", [](const Layer& l) { return nn::repr(l); });

  py::class_<nn::Conv, Layer, std::shared_ptr<nn::Conv>>(nn_module, "Conv", "Convolution layers' common base.");
  def_conv<nn::Conv2d>(nn_module, "Conv2d");
  def_conv<nn::Conv1d>(nn_module, "Conv1d");

  py::class_<nn::Linear, Layer, std::shared_ptr<nn::Linear>>(nn_module, "Linear")
      .def(py::init([](py::handle in, py::handle out, bool bias, const std::string& init) {
             return std::make_shared<nn::Linear>(int_arg(in, "in_features"), int_arg(out, "out_features"), bias,
                                                 init_arg(init));
           }),
           py::arg("in_features"), py::arg("out_features"), py::arg("bias") = true, py::arg("init") = "he");

  py::class_<nn::Pool, Layer, std::shared_ptr<nn::Pool>>(nn_module, "Pool", "Pooling layers' common base.");
  def_max_pool<nn::MaxPool2d>(nn_module, "MaxPool2d");
  def_max_pool<nn::MaxPool1d>(nn_module, "MaxPool1d");
  def_avg_pool<nn::AvgPool2d>(nn_module, "AvgPool2d");
  def_avg_pool<nn::AvgPool1d>(nn_module, "AvgPool1d");

  py::class_<nn::GlobalAvgPool2d, Layer, std::shared_ptr<nn::GlobalAvgPool2d>>(nn_module, "GlobalAvgPool2d")
      .def(py::init<>());
  py::class_<nn::ActivationLayer, Layer, std::shared_ptr<nn::ActivationLayer>>(nn_module, "Activation",
                                                                              "Activation layers' common base.");
  py::class_<nn::ReLU, nn::ActivationLayer, std::shared_ptr<nn::ReLU>>(nn_module, "ReLU").def(py::init<>());
  py::class_<nn::Sigmoid, nn::ActivationLayer, std::shared_ptr<nn::Sigmoid>>(nn_module, "Sigmoid").def(py::init<>());
  py::class_<nn::Tanh, nn::ActivationLayer, std::shared_ptr<nn::Tanh>>(nn_module, "Tanh").def(py::init<>());
  py::class_<nn::LeakyReLU, nn::ActivationLayer, std::shared_ptr<nn::LeakyReLU>>(nn_module, "LeakyReLU")
      .def(py::init<double>(), py::arg("negative_slope") = 0.01);
  py::class_<nn::Softmax, Layer, std::shared_ptr<nn::Softmax>>(nn_module, "Softmax").def(py::init<>());
  py::class_<nn::Dropout, Layer, std::shared_ptr<nn::Dropout>>(nn_module, "Dropout")
      .def(py::init<double>(), py::arg("p") = 0.5);
  py::class_<nn::Flatten, Layer, std::shared_ptr<nn::Flatten>>(nn_module, "Flatten").def(py::init<>());
  py::class_<nn::BatchNorm2d, Layer, std::shared_ptr<nn::BatchNorm2d>>(nn_module, "BatchNorm2d")
      .def(py::init([](py::handle features, double eps, double momentum, bool sync) {
             return std::make_shared<nn::BatchNorm2d>(int_arg(features, "num_features"), eps, momentum, sync);
           }),
           py::arg("num_features"), py::arg("eps") = 1e-5, py::arg("momentum") = 0.1, py::kw_only(),
           py::arg("sync") = false,
           "Batch normalization per channel of (N, C, H, W). sync=True: in data-parallel training "
           "(juanji.distributed with several ranks) training-mode statistics are those of the global "
           "batch, summed over the ranks' shards; otherwise each rank's own.")
      .def_property("sync", &nn::BatchNorm2d::sync, &nn::BatchNorm2d::set_sync,
                    "Whether training-mode statistics are synchronized across data-parallel ranks.");

  py::class_<nn::Loss, std::shared_ptr<nn::Loss>>(nn_module, "Loss")
      .def_property_readonly("type", &nn::Loss::type)
      .def("__call__",
           [](nn::Loss& loss, py::handle output, py::handle target) {
             const Tensor out = tensor_arg(output, "output").contiguous();
             const Tensor tgt = loss_target_arg(loss, target);
             Tensor grad = Tensor::empty(out.shape(), out.dtype(), out.device());
             return without_gil([&] { return loss.forward_backward(out, tgt, grad, nullptr); });
           },
           py::arg("output"), py::arg("target"), "The mean loss as a float.")
      .def("forward_backward",
           [](nn::Loss& loss, py::handle output, py::handle target) {
             const Tensor out = tensor_arg(output, "output").contiguous();
             const Tensor tgt = loss_target_arg(loss, target);
             Tensor grad = Tensor::empty(out.shape(), out.dtype(), out.device());
             const double value = without_gil([&] { return loss.forward_backward(out, tgt, grad, nullptr); });
             return py::make_tuple(value, grad);
           },
           py::arg("output"), py::arg("target"),
           "(mean loss as a float, d loss / d output as a Tensor of the output's shape): what "
           "model.backward takes.")
      .def("__repr__", [](const nn::Loss& loss) { return loss.type() + "()"; });
  py::class_<nn::CrossEntropyLoss, nn::Loss, std::shared_ptr<nn::CrossEntropyLoss>>(
      nn_module, "CrossEntropyLoss",
      "Softmax cross-entropy on int64 labels; label_smoothing eps in [0, 1] (PyTorch's definition): "
      "the target is (1 - eps) * onehot + eps / C.")
      .def(py::init<double>(), py::arg("label_smoothing") = 0.0)
      .def_property_readonly("label_smoothing", &nn::CrossEntropyLoss::label_smoothing)
      .def("__repr__", [](const nn::CrossEntropyLoss& loss) {
        const auto eps = py::repr(py::float_(loss.label_smoothing())).cast<std::string>();
        return "CrossEntropyLoss(label_smoothing=" + eps + ")";
      });
  py::class_<nn::MSELoss, nn::Loss, std::shared_ptr<nn::MSELoss>>(nn_module, "MSELoss").def(py::init<>());

  py::class_<nn::Container, Layer, std::shared_ptr<nn::Container>>(nn_module, "Container",
                                                                  "Layers made of layers' common base.");
  py::class_<nn::Residual, nn::Container, std::shared_ptr<nn::Residual>>(
      nn_module, "Residual",
      "y = body(x) + shortcut(x); shortcut None is the identity, a projection shortcut any layer "
      "(typically a 1x1 Conv2d with a stride, then a BatchNorm2d).")
      .def(py::init([](py::handle body, py::handle shortcut) {
             auto body_layer = layer_arg(body, "Residual: body");
             auto shortcut_layer = shortcut.is_none() ? nullptr : layer_arg(shortcut, "Residual: shortcut");
             return without_gil([&] { return std::make_shared<nn::Residual>(body_layer, shortcut_layer); });
           }),
           py::arg("body"), py::arg("shortcut") = py::none())
      .def_property_readonly("body", &nn::Residual::body)
      .def_property_readonly("shortcut", &nn::Residual::shortcut);
  py::class_<nn::Concat, nn::Container, std::shared_ptr<nn::Concat>>(
      nn_module, "Concat", "Runs each branch on the input and concatenates their outputs along the channels.")
      .def(py::init([](py::args branches) {
        auto list = layer_list(branches, "Concat: branch");
        return without_gil([&] { return std::make_shared<nn::Concat>(std::move(list)); });
      }))
      .def_property_readonly("branches", [](const nn::Concat& c) {
        std::vector<std::shared_ptr<Layer>> branches;
        for (const auto& child : c.children()) branches.push_back(child.layer);
        return branches;
      });
  py::class_<nn::Identity, Layer, std::shared_ptr<nn::Identity>>(nn_module, "Identity").def(py::init<>());

  py::class_<nn::Sequential, nn::Container, std::shared_ptr<nn::Sequential>>(nn_module, "Sequential")
      .def(py::init([](py::args layers) {
        auto list = layer_list(layers, "Sequential: layer");
        return without_gil([&] { return std::make_shared<nn::Sequential>(std::move(list)); });
      }))
      .def("__call__",
           [](nn::Sequential& s, py::handle x) {
             const Tensor input = tensor_arg(x, "x");
             return without_gil([&] { return s.forward_copy(input, false); });
           },
           py::arg("x"), "Inference (eval mode, whatever train()/eval() say): the output as a new tensor.")
      .def("forward",
           [](nn::Sequential& s, py::handle x, py::object training) {
             const Tensor input = tensor_arg(x, "x");
             const bool mode = training.is_none() ? s.training() : training.cast<bool>();
             return without_gil([&] { return s.forward_copy(input, mode); });
           },
           py::arg("x"), py::arg("training") = py::none())
      .def("to",
           [](py::object self, py::object target) {
             move_or_cast(self.cast<nn::Sequential&>(), target);
             return self;
           },
           py::arg("target"),
           "to('cpu'|'cuda'|'cuda:N') moves every parameter and gradient (the optimizer's state "
           "follows on its next step); to('float64') casts them. Returns the model.")
      .def_property_readonly("device", [](const nn::Sequential& s) { return s.device().str(); })
      .def("freeze", [](const nn::Sequential& s) { return without_gil([&] { return s.freeze(); }); },
           "A copy of the model for inference, as torch.jit.freeze or an onnxruntime session makes: its own "
           "read-only copies of the parameters (no gradients), in eval mode, refusing training, backward, to() "
           "and load_state_dict with ValueError. The model itself is unchanged, and later changes to it do not "
           "reach the copy. Its convolutions lay their weights out for their kernels once, at the first call, "
           "instead of on every call (a fifth of a ResNet-50's time at batch 1); its outputs are the model's "
           "eval-mode outputs, bit for bit.")
      .def("train_step",
           [](nn::Sequential& s, py::handle x, py::handle target, nn::Loss& loss, optim::Optimizer& opt) {
             const Tensor xt = tensor_arg(x, "x");
             const Tensor tt = loss_target_arg(loss, target);
             return without_gil([&] { return s.train_step(xt, tt, loss, opt); });
           },
           py::arg("x"), py::arg("target"), py::arg("loss"), py::arg("optimizer"),
           "Forward, loss, backward and the optimizer's update in C++; returns the batch's mean loss.")
      .def("distribute",
           [](nn::Sequential& s, double bucket_mib) {
             check(bucket_mib > 0, "bucket_mib: must be positive, got ", bucket_mib);
             const auto bytes = static_cast<std::int64_t>(bucket_mib * 1024 * 1024);
             without_gil([&] { s.distribute(std::max<std::int64_t>(bytes, 1)); return 0; });
             return &s;
           },
           py::arg("bucket_mib") = 25.0, py::return_value_policy::reference,
           "Data-parallel training over the MPI ranks (juanji.distributed.init() first; every rank "
           "calls it): checks that all ranks have the same parameters and buffers, copies rank 0's "
           "values to all, and from then on train_step averages the gradients over the ranks before "
           "the update, in buckets of up to bucket_mib MiB. Returns the model.")
      .def_property_readonly("is_distributed", &nn::Sequential::is_distributed)
      .def("evaluate",
           [](nn::Sequential& s, py::handle x, py::handle target, std::shared_ptr<nn::Loss> loss,
              py::handle batch_size_arg, bool mirror) {
             const std::int64_t batch_size = int_arg(batch_size_arg, "batch_size");
             if (!loss) loss = std::make_shared<nn::CrossEntropyLoss>();
             const Tensor xt = tensor_arg(x, "x");
             const Tensor tt = loss_target_arg(*loss, target);
             const nn::Evaluation e = without_gil([&] { return s.evaluate(xt, tt, *loss, batch_size, mirror); });
             return py::make_tuple(e.loss, e.accuracy);
           },
           py::arg("x"), py::arg("target"), py::arg("loss") = nullptr, py::arg("batch_size") = 256,
           py::kw_only(), py::arg("mirror") = false,
           "(mean loss, accuracy) in eval mode. With mirror=True, of the mean of the outputs for each "
           "image and for its mirror image (the last axis reversed): test-time augmentation for a "
           "model trained with flips.")
      .def("activations",
           [](nn::Sequential& s, py::handle x) {
             const Tensor input = tensor_arg(x, "x");
             return without_gil([&] { return s.activations(input); });
           },
           py::arg("x"))
      .def("summary",
           [](const nn::Sequential& s, const Shape& shape) {
             const std::string text = without_gil([&] { return s.summary(shape); });
             py::print(text, py::arg("end") = "");
             return text;
           },
           py::arg("input_shape"),
           "Prints (and returns) each layer's output shape, parameters and FLOPs for inputs of input_shape, "
           "with or without the batch dimension ((1, 28, 28) or (64, 1, 28, 28)).")
      .def("architecture_json", &nn::Sequential::architecture_json)
      .def("_plan", [](nn::Sequential& s) { return without_gil([&] { return s.describe_plan(); }); },
           "For tests: the stages that forward and train_step run on the model's device, each as its "
           "layers' types, '+' joining those one pass computes (forward | backward where they differ).")
      .def("save",
           [](const nn::Sequential& s, py::object path, py::object metadata) {
             const Metadata meta = metadata_arg(metadata, "save");
             const std::string file = path_arg(path, "path");
             without_gil([&] { s.save(file, meta); });
           },
           py::arg("path"), py::arg("metadata") = py::none(),
           "Writes a safetensors checkpoint; metadata (str -> str) goes into __metadata__.")
      // Written in Python (juanji/onnx_io.py, with the onnx package); bound here so that every
      // Sequential has it, also one that juanji.load returns before juanji.nn is imported.
      .def("export_onnx",
           [](py::object self, py::object path, py::object input_shape) {
             py::module_::import("juanji.onnx_io").attr("export_onnx")(self, path, input_shape);
           },
           py::arg("path"), py::arg("input_shape"),
           "Writes the model as an ONNX file (opset 17, IR version 8, a dynamic batch dimension N) for "
           "inputs of input_shape, with or without the batch dimension; needs the onnx package "
           "(pip install 'juanji[onnx]'). See juanji.onnx_io.export_onnx.")
      .def("append",
           [](py::object self, py::handle layer) {
             auto added = layer_arg(layer, "Sequential.append: layer");
             without_gil([&] { self.cast<nn::Sequential&>().add(added); });
             return self;
           },
           py::arg("layer"), "Adds a layer at the end; returns the model.")
      .def_property_readonly("layers", [](const nn::Sequential& s) { return s.layers(); })
      .def("__len__", [](const nn::Sequential& s) { return s.layers().size(); })
      .def("__getitem__", [](const nn::Sequential& s, py::handle index) {
        const std::int64_t i = int_arg(index, "index");
        const auto n = static_cast<std::int64_t>(s.layers().size());
        if (i < -n || i >= n) throw py::index_error("layer index out of range");
        return s.layers()[static_cast<std::size_t>(i < 0 ? i + n : i)];
      });
}

}  // namespace juanji::bind
