#include "juanji/nn/layers.hpp"

#include <cmath>
#include <utility>

#include "core/checked_math.hpp"
#include "core/device.hpp"
#include "juanji/build_config.hpp"
#include "juanji/distributed.hpp"
#include "juanji/nn/sequential.hpp"

namespace juanji::nn {
namespace {

Json ints_json(const std::vector<std::int64_t>& values) {
  return Json::array(Json::Array(values.begin(), values.end()));
}

Json padding_json(const PaddingSpec& padding) {
  switch (padding.kind) {
    case PaddingSpec::Kind::same: return "same";
    case PaddingSpec::Kind::valid: return "valid";
    case PaddingSpec::Kind::explicit_sizes: break;
  }
  return ints_json(padding.sizes);
}

Tensor initial_weight(const Shape& shape, double fan_in, double fan_out, Init init) {
  if (init == Init::he) {
    Tensor w = randn(shape, DType::float32);
    const float scale = static_cast<float>(std::sqrt(2.0 / fan_in));
    float* data = w.data<float>();
    for (std::int64_t i = 0, n = w.numel(); i < n; ++i) data[i] *= scale;
    return w;
  }
  const double bound = std::sqrt(6.0 / (fan_in + fan_out));
  return uniform(shape, -bound, bound, DType::float32);
}

void check_input(const Tensor& x, const Parameter& p, const std::string& layer) {
  check_float(x, "x");
  check_type(x.dtype() == p.value.dtype(), layer, ": input is ", dtype_name(x.dtype()),
             " but the layer's parameters are ", dtype_name(p.value.dtype()));
  check(x.device() == p.value.device(), layer, ": input ", shape_text(x.shape()), " is on ",
        x.device().str(), " but the layer's parameters are on ", p.value.device().str(),
        "; move one of them with .to()");
}

// A config value as Python writes it: True, None, 'same', 0.1, and a list of sizes as a tuple, or
// as its one item (a size given as an int).
std::string python_text(const Json& value) {
  switch (value.kind()) {
    case Json::Kind::null: return "None";
    case Json::Kind::boolean: return value.as_bool() ? "True" : "False";
    case Json::Kind::string: return "'" + value.as_string() + "'";
    case Json::Kind::array: {
      if (value.size() == 1) return python_text(value.at(0));
      std::string text = "(";
      for (std::size_t i = 0; i < value.size(); ++i) text += (i ? ", " : "") + python_text(value.at(i));
      return text + ")";
    }
    case Json::Kind::number:
    case Json::Kind::object: break;
  }
  return value.dump();
}

// Sizes per spatial dimension as PyTorch's convolutions show them: (1, 1), or (3,) in 1-d.
std::string sizes_text(std::vector<std::int64_t> sizes, int spatial_dims) {
  if (sizes.size() == 1) sizes.assign(static_cast<std::size_t>(spatial_dims), sizes[0]);
  std::string text = "(";
  for (std::size_t i = 0; i < sizes.size(); ++i) text += (i ? ", " : "") + std::to_string(sizes[i]);
  return text + (sizes.size() == 1 ? ",)" : ")");
}

bool all_equal_to(const std::vector<std::int64_t>& sizes, std::int64_t value) {
  for (const auto size : sizes)
    if (size != value) return false;
  return true;
}

}  // namespace

std::string Layer::extra_repr() const {
  std::string text;
  const Json config = this->config();
  for (const auto& [key, value] : config.as_object()) text += (text.empty() ? "" : ", ") + key + "=" + python_text(value);
  return text;
}

const Tensor& Layer::backward_accumulate(const Tensor& grad_y) {
  const Lock lock(*this);
  std::vector<std::pair<Parameter*, Tensor>> earlier;
  for (const auto& p : parameters_)
    if (p->trainable()) earlier.emplace_back(p.get(), p->grad.clone());
  try {
    const Tensor& grad_x = backward(grad_y, true);
    for (auto& [p, grad] : earlier) add_into(p->grad, grad, p->grad);
    return grad_x;
  } catch (...) {
    // A backward that failed part way leaves the gradients as they were.
    for (auto& [p, grad] : earlier) p->grad.copy_(grad);
    throw;
  }
}

void Layer::zero_grad() {
  const Lock lock(*this);
  for (const auto& p : parameters_)
    if (p->trainable()) p->grad.zero_();
}

void Layer::train(bool mode) {
  check(!mode || !frozen(), type(), ".train: a frozen model is for inference only (freeze() made it from a model "
        "that trains)");
  training_.store(mode);
}

void Layer::check_not_frozen(const char* call) const {
  check(!frozen(), call, ": the model is frozen (for inference only, its parameters read-only); change the model "
        "freeze() was called on and freeze it again");
}

void Layer::to(DType dtype) {
  check_not_frozen("to");
  check_type(dtype == DType::float32 || dtype == DType::float64, type(), ".to: parameters are float32 or float64, got ",
             dtype_name(dtype), dtype == DType::bfloat16 ? "; for bfloat16 compute, set_precision('bf16')" : "");
  for (auto& p : parameters_) {
    p->value = p->value.to(dtype);
    if (p->grad.defined()) p->grad = Tensor::zeros(p->value.shape(), dtype, p->value.device());
  }
}

void Layer::to(Device device) {
  check_not_frozen("to");
  move_parameters(parameters_, device);
}

void Layer::name_parameters(const std::string& prefix) {
  for (auto& p : parameters_) p->name = prefix + p->local_name;
}

void Layer::collect_mutexes(std::vector<LayerMutex*>& out) const { out.push_back(mutex_.get()); }

std::vector<LayerMutex*> Layer::mutexes_within(const Layer& layer) {
  std::vector<LayerMutex*> mutexes;
  layer.collect_mutexes(mutexes);
  return mutexes;
}

Layer::Lock::Lock(const Layer& layer) {
  for (auto* mutex : mutexes_within(layer)) locks_.emplace_back(*mutex);
}

Layer::SharedLock::SharedLock(const Layer& layer) {
  for (auto* mutex : mutexes_within(layer)) locks_.emplace_back(*mutex);
}

std::shared_ptr<Layer> Layer::replicate() const {
  try {
    return make_layer(type(), config());
  } catch (const std::invalid_argument&) {
    return nullptr;  // a type make_layer does not know
  }
}

void LayerMutex::lock() {
  std::unique_lock<std::mutex> guard(mutex_);
  const std::thread::id me = std::this_thread::get_id();
  if (depth_ > 0 && owner_ == me) {
    ++depth_;
    return;
  }
  ++writers_waiting_;
  released_.wait(guard, [&] { return depth_ == 0 && readers_ == 0; });
  --writers_waiting_;
  owner_ = me;
  depth_ = 1;
}

void LayerMutex::unlock() {
  std::unique_lock<std::mutex> guard(mutex_);
  release_owned(guard);
}

void LayerMutex::release_owned(std::unique_lock<std::mutex>& guard) {
  if (--depth_ == 0) {
    owner_ = std::thread::id();
    guard.unlock();
    released_.notify_all();
  }
}

void LayerMutex::lock_shared() {
  std::unique_lock<std::mutex> guard(mutex_);
  if (depth_ > 0 && owner_ == std::this_thread::get_id()) {
    ++depth_;
    return;
  }
  released_.wait(guard, [&] { return depth_ == 0 && writers_waiting_ == 0; });
  ++readers_;
}

void LayerMutex::unlock_shared() {
  std::unique_lock<std::mutex> guard(mutex_);
  if (depth_ > 0 && owner_ == std::this_thread::get_id()) {
    release_owned(guard);
    return;
  }
  if (--readers_ == 0) {
    guard.unlock();
    released_.notify_all();
  }
}

void move_parameters(const std::vector<std::shared_ptr<Parameter>>& parameters, Device device) {
  // Copies everything before replacing anything: a failed copy (no such device, out of memory)
  // leaves every parameter where it was.
  std::vector<std::pair<Tensor, Tensor>> moved;
  for (const auto& p : parameters)
    moved.emplace_back(p->value.to(device), p->grad.defined() ? p->grad.to(device) : Tensor());
  for (std::size_t i = 0; i < parameters.size(); ++i) {
    parameters[i]->value = std::move(moved[i].first);
    parameters[i]->grad = std::move(moved[i].second);
  }
}

std::shared_ptr<Parameter> Layer::add_parameter(const std::string& name, Tensor value, bool trainable) {
  auto p = std::make_shared<Parameter>();
  p->name = name;
  p->local_name = name;
  p->grad = trainable ? Tensor::zeros(value.shape(), value.dtype()) : Tensor();
  p->learned = trainable;
  p->value = std::move(value);
  parameters_.push_back(p);
  return p;
}

Tensor& Layer::ensure(Tensor& buffer, const Shape& shape, DType dtype, Device device) {
  if (!buffer.defined() || buffer.shape() != shape || buffer.dtype() != dtype || buffer.device() != device)
    buffer = Tensor::empty(shape, dtype, device);
  return buffer;
}

void Layer::release_gradient(const Tensor& gradient, const Tensor& passed) {
  // Those of devices whose freed blocks wait for no one stay with their layer: a step after the
  // first then takes no fresh memory either way.
  if (&gradient == &passed || !gradient.defined() || !device::freed_blocks_are_reused(gradient.device()))
    return;
  // Every backward returns a reference to a non-const member (see backward), so resetting it
  // through the reference is defined; a view of its storage handed on keeps the block alive.
  const_cast<Tensor&>(gradient) = Tensor();
}

void Layer::check_grad_output(const Tensor& grad_y, const Tensor& output) const {
  check(!frozen(), type(), ".backward: a frozen model is for inference only (it has no gradients)");
  check(output.defined(), type(), ".backward: there is no forward to go back through (call forward first; a "
        "training step's backward has used up what its forward kept)");
  check_defined(grad_y, "grad_out");
  check_type(grad_y.dtype() == output.dtype(), type(), ".backward: grad_out ", shape_text(grad_y.shape()), " is ",
             dtype_name(grad_y.dtype()), " but the last forward's output is ", dtype_name(output.dtype()));
  check(grad_y.device() == output.device(), type(), ".backward: grad_out is on ", grad_y.device().str(),
        " but the last forward's output is on ", output.device().str());
  check(grad_y.shape() == output.shape(), type(), ".backward: grad_out has shape ", shape_text(grad_y.shape()),
        " but the last forward's output has shape ", shape_text(output.shape()));
}

// ---- Conv ----

Conv::Conv(int spatial_dims, std::int64_t in_channels, std::int64_t out_channels,
           std::vector<std::int64_t> kernel_size, ConvOptions options, bool bias, Init init)
    : spatial_dims_(spatial_dims), in_channels_(in_channels), out_channels_(out_channels),
      kernel_size_(std::move(kernel_size)), options_(std::move(options)) {
  const char* name = spatial_dims == 1 ? "Conv1d" : "Conv2d";
  check(in_channels > 0 && out_channels > 0, name, ": in_channels ", in_channels,
        " and out_channels ", out_channels, " must be positive");
  check(options_.groups >= 1 && in_channels % options_.groups == 0 && out_channels % options_.groups == 0,
        name, ": groups=", options_.groups, " must divide in_channels ", in_channels,
        " and out_channels ", out_channels);
  check(kernel_size_.size() == 1 || static_cast<int>(kernel_size_.size()) == spatial_dims, name,
        ": kernel_size needs 1 or ", spatial_dims, " values, got ", shape_text(kernel_size_));
  if (kernel_size_.size() == 1) kernel_size_.assign(spatial_dims, kernel_size_[0]);
  for (auto k : kernel_size_) check(k > 0, name, ": kernel_size must be positive, got ", shape_text(kernel_size_));
  Shape wshape{out_channels, in_channels / options_.groups};
  wshape.insert(wshape.end(), kernel_size_.begin(), kernel_size_.end());
  check(allocatable_numel(wshape).has_value(), name, ": in_channels ", in_channels, ", out_channels ",
        out_channels, " and kernel_size ", shape_text(kernel_size_), " make a weight ", shape_text(wshape),
        " of too many elements");
  double receptive = 1;
  for (auto k : kernel_size_) receptive *= static_cast<double>(k);
  const double fan_in = static_cast<double>(in_channels / options_.groups) * receptive;
  const double fan_out = static_cast<double>(out_channels) * receptive;
  weight_ = add_parameter("weight", initial_weight(wshape, fan_in, fan_out, init), true);
  if (bias) bias_ = add_parameter("bias", Tensor::zeros({out_channels}), true);
  // Validates stride/padding/dilation now rather than at the first batch.
  Shape probe{1, in_channels};
  for (int d = 0; d < spatial_dims; ++d) probe.push_back(1 << 20);
  ConvGeometry::make(probe, wshape, options_, spatial_dims);
}

Json Conv::config() const {
  return Json::object({{"in_channels", in_channels_},
                       {"out_channels", out_channels_},
                       {"kernel_size", ints_json(kernel_size_)},
                       {"stride", ints_json(options_.stride)},
                       {"padding", padding_json(options_.padding)},
                       {"dilation", ints_json(options_.dilation)},
                       {"groups", options_.groups},
                       {"bias", bias_ != nullptr}});
}

std::string Conv::extra_repr() const {
  std::string text = std::to_string(in_channels_) + ", " + std::to_string(out_channels_) +
                     ", kernel_size=" + sizes_text(kernel_size_, spatial_dims_) +
                     ", stride=" + sizes_text(options_.stride, spatial_dims_);
  const PaddingSpec& padding = options_.padding;
  if (padding.kind != PaddingSpec::Kind::explicit_sizes)
    text += ", padding=" + python_text(padding_json(padding));
  else if (!all_equal_to(padding.sizes, 0))
    text += ", padding=" + sizes_text(padding.sizes, spatial_dims_);
  if (!all_equal_to(options_.dilation, 1)) text += ", dilation=" + sizes_text(options_.dilation, spatial_dims_);
  if (options_.groups != 1) text += ", groups=" + std::to_string(options_.groups);
  if (!bias_) text += ", bias=False";
  return text;
}

ConvGeometry Conv::geometry(const Shape& input) const {
  return ConvGeometry::make(input, weight_->value.shape(), options_, spatial_dims_);
}

Shape Conv::output_shape(const Shape& input) const { return geometry(input).output_shape(); }
double Conv::flops(const Shape& input) const { return geometry(input).flops(); }

void Conv::prepare_forward(const Tensor& x) {
  check_input(x, *weight_, type());
  geometry_ = geometry(x.shape());
  input_ = rounded_.prepare(precision(), x, *weight_, type());
  ensure(output_, geometry_.output_shape(), x.dtype(), x.device());
}

const Tensor& Conv::forward(const Tensor& x, bool) {
  prepare_forward(x);
  conv_forward(geometry_, input_, rounded_.weight(*weight_), bias_ ? bias_->value : Tensor(), output_,
               weight_->packs.get());
  rounded_.round(output_);
  return output_;
}

const Tensor& Conv::backward(const Tensor& grad_y, bool need_grad_x) {
  return backward_impl(grad_y, need_grad_x, true);
}

void Conv::release_forward_tensors() {
  input_ = Tensor();
  output_ = Tensor();
  rounded_.release();
}

bool Conv::bias_grad_from_norm() const {
  return bias_ && !rounded_.active() && conv_bias_grad_sums_planes(geometry_, input_.dtype(), input_.device());
}

const Tensor& Conv::backward_impl(const Tensor& grad_y, bool need_grad_x, bool bias_grad) {
  check_grad_output(grad_y, output_);
  const Tensor dy = rounded_.grad_output(grad_y);
  Tensor no_bias;
  conv_backward_weight(geometry_, dy, input_, weight_->grad, bias_ && bias_grad ? bias_->grad : no_bias);
  if (!need_grad_x) {
    grad_input_ = Tensor();
    return grad_input_;
  }
  ensure(grad_input_, input_.shape(), input_.dtype(), input_.device());
  conv_backward_data(geometry_, dy, rounded_.weight(*weight_), grad_input_);
  rounded_.round(grad_input_);
  return grad_input_;
}

// ---- Mixed precision ----

Precision precision_from_name(const std::string& name) {
  if (name == "fp32") return Precision::full;
  if (name == "bf16") return Precision::bf16;
  throw std::invalid_argument("precision: expected 'fp32' or 'bf16', got '" + name + "'");
}

const char* precision_name(Precision precision) { return precision == Precision::bf16 ? "bf16" : "fp32"; }

Tensor RoundedOperands::prepare(Precision precision, const Tensor& x, const Parameter& weight,
                                const std::string& layer) {
  active_ = precision == Precision::bf16;
  if (!active_) return x.contiguous();
  check_type(weight.value.dtype() == DType::float32, layer, ": bf16 precision computes from float32 ",
             "parameters, this layer's are ", dtype_name(weight.value.dtype()));
  check(weight.value.device().is_cpu(), layer, ": bf16 precision runs on the CPU, this layer is on ",
        weight.value.device().str());
  Layer::ensure(input_, x.shape(), DType::float32, x.device());
  round_to_bfloat16_into(x.contiguous(), input_);
  Layer::ensure(weight_, weight.value.shape(), DType::float32, weight.value.device());
  round_to_bfloat16_into(weight.value, weight_);
  return input_;
}

Tensor RoundedOperands::grad_output(const Tensor& grad_y) {
  if (!active_) return grad_y.contiguous();
  Layer::ensure(grad_output_, grad_y.shape(), DType::float32, grad_y.device());
  round_to_bfloat16_into(grad_y.contiguous(), grad_output_);
  return grad_output_;
}

void RoundedOperands::round(Tensor& t) const {
  if (active_) round_to_bfloat16_into(t, t);
}

void RoundedOperands::release() {
  active_ = false;
  input_ = Tensor();
  grad_output_ = Tensor();
}

// ---- Linear ----

Linear::Linear(std::int64_t in_features, std::int64_t out_features, bool bias, Init init)
    : in_features_(in_features), out_features_(out_features) {
  check(in_features > 0 && out_features > 0, "Linear: in_features ", in_features,
        " and out_features ", out_features, " must be positive");
  check(allocatable_numel({out_features, in_features}).has_value(), "Linear: in_features ", in_features,
        " and out_features ", out_features, " make a weight of too many elements");
  weight_ = add_parameter("weight",
                          initial_weight({out_features, in_features}, static_cast<double>(in_features),
                                         static_cast<double>(out_features), init),
                          true);
  if (bias) bias_ = add_parameter("bias", Tensor::zeros({out_features}), true);
}

Json Linear::config() const {
  return Json::object({{"in_features", in_features_}, {"out_features", out_features_}, {"bias", bias_ != nullptr}});
}

Shape Linear::output_shape(const Shape& input) const {
  check(input.size() == 2 && input[1] == in_features_, "Linear(", in_features_, ", ", out_features_,
        "): expected input (N, ", in_features_, "), got ", shape_text(input));
  return {input[0], out_features_};
}

double Linear::flops(const Shape& input) const {
  return 2.0 * static_cast<double>(output_shape(input)[0]) * in_features_ * out_features_;
}

void Linear::prepare_forward(const Tensor& x) {
  check_input(x, *weight_, type());
  const Shape out = output_shape(x.shape());
  input_ = rounded_.prepare(precision(), x, *weight_, type());
  ensure(output_, out, x.dtype(), x.device());
}

const Tensor& Linear::forward(const Tensor& x, bool) {
  prepare_forward(x);
  linear_forward(input_, rounded_.weight(*weight_), bias_ ? bias_->value : Tensor(), output_);
  rounded_.round(output_);
  return output_;
}

const Tensor& Linear::backward(const Tensor& grad_y, bool need_grad_x) {
  check_grad_output(grad_y, output_);
  if (need_grad_x) ensure(grad_input_, input_.shape(), input_.dtype(), input_.device());
  else grad_input_ = Tensor();
  Tensor no_bias;
  linear_backward_into(rounded_.grad_output(grad_y), input_, rounded_.weight(*weight_), grad_input_,
                       weight_->grad, bias_ ? bias_->grad : no_bias);
  if (grad_input_.defined()) rounded_.round(grad_input_);
  return grad_input_;
}

void Linear::release_forward_tensors() {
  input_ = Tensor();
  output_ = Tensor();
  rounded_.release();
}

// ---- Pooling ----

Pool::Pool(Kind kind, int spatial_dims, PoolOptions options)
    : kind_(kind), spatial_dims_(spatial_dims), options_(std::move(options)) {
  Shape probe{1, 1};
  for (int d = 0; d < spatial_dims; ++d) probe.push_back(1 << 20);
  PoolGeometry::make(probe, options_, spatial_dims, type().c_str());
}

void Pool::check_training_forward() const {
  check(kind_ == Kind::average || argmax_current_, type(),
        ": backward needs a training-mode forward (the last forward ran in eval mode)");
}

std::string Pool::type() const {
  return std::string(kind_ == Kind::max ? "MaxPool" : "AvgPool") + (spatial_dims_ == 1 ? "1d" : "2d");
}

Json Pool::config() const {
  // An empty stride is "equal to the kernel", written null.
  Json config = Json::object({{"kernel_size", ints_json(options_.kernel)},
                              {"stride", options_.stride.empty() ? Json() : ints_json(options_.stride)},
                              {"padding", ints_json(options_.padding)},
                              {"ceil_mode", options_.ceil_mode}});
  if (kind_ == Kind::average) config.set("count_include_pad", options_.count_include_pad);
  return config;
}

Shape Pool::output_shape(const Shape& input) const {
  return PoolGeometry::make(input, options_, spatial_dims_, type().c_str()).output_shape();
}

double Pool::flops(const Shape& input) const {
  const PoolGeometry g = PoolGeometry::make(input, options_, spatial_dims_, type().c_str());
  return static_cast<double>(g.N) * g.C * g.P * g.Q * g.kernel_h * g.kernel_w;
}

const Tensor& Pool::forward(const Tensor& x, bool training) {
  check_float(x, "x");
  fused_with_norm_ = false;
  geometry_ = PoolGeometry::make(x.shape(), options_, spatial_dims_, type().c_str());
  input_ = x.contiguous();
  ensure(output_, geometry_.output_shape(), x.dtype(), x.device());
  argmax_current_ = training && kind_ == Kind::max;
  if (kind_ == Kind::max) {
    Tensor none;
    max_pool_forward(geometry_, input_, output_,
                     training ? ensure(argmax_, geometry_.output_shape(), DType::int64, x.device()) : none);
  } else {
    avg_pool_forward(geometry_, input_, output_);
  }
  return output_;
}

const Tensor& Pool::backward(const Tensor& grad_y, bool need_grad_x) {
  check_grad_output(grad_y, output_);
  if (!need_grad_x) {
    grad_input_ = Tensor();
    return grad_input_;
  }
  check(!fused_with_norm_, type(), ": the last forward ran fused with the batch norm before it (in a ",
        "Sequential); its backward is Sequential.train_step's");
  check_training_forward();
  ensure(grad_input_, input_.shape(), input_.dtype(), input_.device());
  if (kind_ == Kind::max)
    max_pool_backward(geometry_, grad_y.contiguous(), argmax_, grad_input_);
  else
    avg_pool_backward(geometry_, grad_y.contiguous(), grad_input_);
  return grad_input_;
}

void Pool::release_forward_tensors() {
  input_ = Tensor();
  output_ = Tensor();
  argmax_ = Tensor();
  argmax_current_ = false;
  fused_with_norm_ = false;
}

// ---- GlobalAvgPool2d ----

Shape GlobalAvgPool2d::output_shape(const Shape& input) const {
  check(input.size() == 4, "GlobalAvgPool2d: expected input (N, C, H, W), got ", shape_text(input));
  return {input[0], input[1], 1, 1};
}

double GlobalAvgPool2d::flops(const Shape& input) const {
  return static_cast<double>(checked_numel(input));
}

const Tensor& GlobalAvgPool2d::forward(const Tensor& x, bool) {
  output_shape(x.shape());
  input_ = x;
  output_ = global_avg_pool2d(x);
  return output_;
}

const Tensor& GlobalAvgPool2d::backward(const Tensor& grad_y, bool need_grad_x) {
  check_grad_output(grad_y, output_);
  grad_input_ = need_grad_x ? global_avg_pool2d_backward(grad_y, input_) : Tensor();
  return grad_input_;
}

void GlobalAvgPool2d::release_forward_tensors() {
  input_ = Tensor();
  output_ = Tensor();
}

// ---- Activations ----

ActivationLayer::ActivationLayer(Activation kind, double negative_slope)
    : kind_(kind), negative_slope_(negative_slope) {
  check(std::isfinite(negative_slope), type(), ": negative_slope must be finite, got ", negative_slope);
}

std::string ActivationLayer::type() const {
  switch (kind_) {
    case Activation::relu: return "ReLU";
    case Activation::leaky_relu: return "LeakyReLU";
    case Activation::sigmoid: return "Sigmoid";
    case Activation::tanh: return "Tanh";
  }
  return "?";
}

Json ActivationLayer::config() const {
  if (kind_ != Activation::leaky_relu) return Json::object();
  return Json::object({{"negative_slope", negative_slope_}});
}

double ActivationLayer::flops(const Shape& input) const { return static_cast<double>(checked_numel(input)); }

const Tensor& ActivationLayer::forward(const Tensor& x, bool) {
  check_float(x, "x");
  if (adopted_) output_ = Tensor();  // that buffer belongs to the previous layer
  adopted_ = false;
  input_ = x.contiguous();
  ensure(output_, x.shape(), x.dtype(), x.device());
  activation_forward_into(kind_, negative_slope_, input_, output_);
  return output_;
}

const Tensor& ActivationLayer::backward(const Tensor& grad_y, bool need_grad_x) {
  check_grad_output(grad_y, output_);
  if (!need_grad_x) {
    grad_input_ = Tensor();
    return grad_input_;
  }
  backward_into(grad_y.contiguous(), ensure(grad_input_, output_.shape(), output_.dtype(), output_.device()));
  return grad_input_;
}

void ActivationLayer::release_forward_tensors() {
  input_ = Tensor();
  output_ = Tensor();
  adopted_ = false;
}

void ActivationLayer::backward_into(const Tensor& grad_y, Tensor& grad_x) const {
  // An adopted output stands in for the input: it has the input's sign (the plan lets layers
  // compute only such activations, see backward_works_from_output in plan.cpp).
  activation_backward_into(kind_, negative_slope_, grad_y, adopted_ ? output_ : input_, output_, grad_x);
}

// ---- Softmax ----

const Tensor& Softmax::forward(const Tensor& x, bool) {
  input_ = x;
  output_ = softmax(x, -1);
  return output_;
}

const Tensor& Softmax::backward(const Tensor& grad_y, bool need_grad_x) {
  check_grad_output(grad_y, output_);
  grad_input_ = need_grad_x ? softmax_backward(grad_y, input_, -1) : Tensor();
  return grad_input_;
}

void Softmax::release_forward_tensors() {
  input_ = Tensor();
  output_ = Tensor();
}

// ---- Dropout ----

Dropout::Dropout(double p) : p_(p) {
  check(p >= 0.0 && p < 1.0, "Dropout: p must be in [0, 1), got ", p);
}

Json Dropout::config() const { return Json::object({{"p", p_}}); }

const Tensor& Dropout::forward(const Tensor& x, bool training) {
  last_training_ = training && p_ > 0.0;
  if (!last_training_) {
    output_ = x;
    return output_;
  }
  const Tensor xc = x.contiguous();
  ensure(mask_, x.shape(), x.dtype(), x.device());
  ensure(output_, x.shape(), x.dtype(), x.device());
  dropout_forward(xc, p_, mask_, output_);
  return output_;
}

const Tensor& Dropout::backward(const Tensor& grad_y, bool need_grad_x) {
  check_grad_output(grad_y, output_);
  if (!need_grad_x) {
    grad_input_ = Tensor();
  } else if (!last_training_) {
    grad_input_ = grad_y;
  } else {
    ensure(grad_input_, grad_y.shape(), grad_y.dtype(), grad_y.device());
    dropout_backward(grad_y.contiguous(), mask_, grad_input_);
  }
  return grad_input_;
}

void Dropout::release_forward_tensors() {
  output_ = Tensor();
  mask_ = Tensor();
  last_training_ = false;
}

// ---- Flatten ----

Shape Flatten::output_shape(const Shape& input) const {
  check(input.size() >= 1, "Flatten: expected a batched input, got ", shape_text(input));
  const MaybeSize features = allocatable_numel(Shape(input.begin() + 1, input.end()));
  check(features.has_value(), "Flatten: input ", shape_text(input), " has too many features");
  return {input[0], *features};
}

const Tensor& Flatten::forward(const Tensor& x, bool) {
  input_shape_ = x.shape();
  output_ = x.reshape(output_shape(x.shape()));
  return output_;
}

const Tensor& Flatten::backward(const Tensor& grad_y, bool need_grad_x) {
  check_grad_output(grad_y, output_);
  grad_input_ = need_grad_x ? grad_y.reshape(input_shape_) : Tensor();
  return grad_input_;
}

void Flatten::release_forward_tensors() { output_ = Tensor(); }

void BatchNorm2d::release_forward_tensors() {
  input_ = Tensor();
  output_ = Tensor();
  save_mean_ = Tensor();
  save_invstd_ = Tensor();
  pool_affine_ = Tensor();
  last_training_ = false;
  input_overwritten_ = false;
}

// ---- BatchNorm2d ----

BatchNorm2d::BatchNorm2d(std::int64_t channels, double eps, double momentum, bool sync)
    : channels_(channels), eps_(eps), momentum_(momentum), sync_(sync) {
  check(channels > 0, "BatchNorm2d: channels must be positive, got ", channels);
  check(eps > 0, "BatchNorm2d: eps must be positive, got ", eps);
  check(momentum >= 0 && momentum <= 1, "BatchNorm2d: momentum must be in [0, 1], got ", momentum);
  gamma_ = add_parameter("weight", Tensor::full({channels}, 1.0), true);
  beta_ = add_parameter("bias", Tensor::zeros({channels}), true);
  running_mean_ = add_parameter("running_mean", Tensor::zeros({channels}), false);
  running_var_ = add_parameter("running_var", Tensor::full({channels}, 1.0), false);
}

std::string BatchNorm2d::extra_repr() const {
  return std::to_string(channels_) + ", eps=" + Json(eps_).dump() + ", momentum=" + Json(momentum_).dump() +
         (sync_ ? ", sync=True" : "");
}

Json BatchNorm2d::config() const {
  Json config = Json::object({{"channels", channels_}, {"eps", eps_}, {"momentum", momentum_}});
  if (sync_) config.set("sync", true);  // absent when false: configs from before sync read the same
  return config;
}

ShardSum BatchNorm2d::shard_sum() const {
  if (!sync_ || distributed::world_size() == 1) return {};
  return [](double* values, std::int64_t count) {
    distributed::all_reduce(values, count, DType::float64, distributed::ReduceOp::sum);
  };
}

Shape BatchNorm2d::output_shape(const Shape& input) const {
  check(input.size() == 4 && input[1] == channels_, "BatchNorm2d(", channels_,
        "): expected input (N, ", channels_, ", H, W), got ", shape_text(input));
  return input;
}

double BatchNorm2d::flops(const Shape& input) const { return 2.0 * static_cast<double>(checked_numel(input)); }

void BatchNorm2d::prepare_forward(const Tensor& x, bool training) {
  check(!training || !frozen(), type(), ".forward: a frozen model is for inference only (a training-mode forward "
        "would update its running statistics)");
  check_input(x, *gamma_, type());
  output_shape(x.shape());
  last_training_ = training;
  input_overwritten_ = false;
  input_ = x.contiguous();
  ensure(save_mean_, {channels_}, x.dtype(), x.device());
  ensure(save_invstd_, {channels_}, x.dtype(), x.device());
}

const Tensor& BatchNorm2d::normalize(const Tensor& x, bool training, bool relu) {
  prepare_forward(x, training);
  ensure(output_, x.shape(), x.dtype(), x.device());
  batch_norm2d_forward(input_, gamma_->value, beta_->value, running_mean_->value, running_var_->value,
                       training, momentum_, eps_, output_, save_mean_, save_invstd_, relu, shard_sum());
  return output_;
}

const Tensor& BatchNorm2d::forward(const Tensor& x, bool training) { return normalize(x, training, false); }

void BatchNorm2d::check_saved_input() const {
  check(last_training_, type(), ".backward: needs a training-mode forward (the last forward ran in eval mode)");
  check(!input_overwritten_, type(), ".backward: a training step's backward has used up what the last forward "
        "kept (run a training-mode forward first)");
}

Tensor& BatchNorm2d::grad_input_buffer(bool over_input) {
  if (!over_input) {
    // Left by a training step's backward, which wrote the gradient over the input.
    if (grad_input_.defined() && grad_input_.storage() == input_.storage()) grad_input_ = Tensor();
    return ensure(grad_input_, input_.shape(), input_.dtype(), input_.device());
  }
  grad_input_ = input_;
  input_overwritten_ = true;
  return grad_input_;
}

const Tensor& BatchNorm2d::run_backward(const Tensor& grad_y, Tensor* grad_input_sums, bool over_input) {
  check_grad_output(grad_y, output_);
  check_saved_input();
  batch_norm2d_backward(grad_y.contiguous(), input_, gamma_->value, save_mean_, save_invstd_,
                        grad_input_buffer(over_input), gamma_->grad, beta_->grad, grad_input_sums, shard_sum());
  return grad_input_;
}

const Tensor& BatchNorm2d::backward(const Tensor& grad_y, bool need_grad_x) {
  run_backward(grad_y, nullptr);
  if (!need_grad_x) grad_input_ = Tensor();
  return grad_input_;
}

}  // namespace juanji::nn
