#include "juanji/nn/sequential.hpp"

#include <cmath>
#include <iomanip>
#include <limits>
#include <sstream>

#include "juanji/ops/loss.hpp"
#include "juanji/runtime.hpp"
#include "nn/plan.hpp"

namespace juanji::nn {

CrossEntropyLoss::CrossEntropyLoss(double label_smoothing) : label_smoothing_(label_smoothing) {
  check_label_smoothing(label_smoothing);
}

double CrossEntropyLoss::forward_backward(const Tensor& output, const Tensor& target, Tensor& grad,
                                          std::int64_t* correct) {
  return cross_entropy_mean_into(output, target, grad, correct, label_smoothing_);
}

double MSELoss::forward_backward(const Tensor& output, const Tensor& target, Tensor& grad,
                                 std::int64_t* correct) {
  check_float(target, "target");
  check_same_dtype(output, "output", target, "target");
  check(target.shape() == output.shape(), "target: expected the output's shape ",
        shape_text(output.shape()), ", got ", shape_text(target.shape()));
  grad.copy_(mse_loss_backward(output, target, Reduction::mean));
  if (correct && output.dim() == 2) {
    const Tensor z = output.to(Device{}).contiguous().to(DType::float64);
    const Tensor y = target.to(Device{}).contiguous().to(DType::float64);
    const std::int64_t N = z.size(0), C = z.size(1);
    const double* zd = z.data<double>();
    const double* yd = y.data<double>();
    *correct = 0;
    for (std::int64_t n = 0; n < N; ++n) {
      std::int64_t best_z = 0, best_y = 0;
      for (std::int64_t c = 1; c < C; ++c) {
        if (zd[n * C + c] > zd[n * C + best_z]) best_z = c;
        if (yd[n * C + c] > yd[n * C + best_y]) best_y = c;
      }
      *correct += best_z == best_y;
    }
  }
  return mse_loss(output, target, Reduction::mean).item();
}

Sequential::Sequential() = default;

Sequential::Sequential(std::vector<std::shared_ptr<Layer>> layers) {
  try {
    for (auto& layer : layers) add(std::move(layer));
  } catch (...) {
    // No destructor runs for a constructor that throws: free the layers taken so far.
    for (auto& layer : layers_) layer->owner_.store(nullptr);
    throw;
  }
}

// Nothing else can be using the model (no reference is left), though a layer may be in use on
// its own: only its owner changes.
Sequential::~Sequential() {
  for (auto& layer : layers_) layer->owner_.store(nullptr);
}

Sequential::Lock::Lock(const Sequential& model) : model_(*model.mutex_) {
  layers_.reserve(model.layers_.size());
  for (const auto& layer : model.layers_) layers_.emplace_back(layer->mutex());
}

void Sequential::add(std::shared_ptr<Layer> layer) {
  const std::lock_guard<std::recursive_mutex> lock(*mutex_);
  check(layer != nullptr, "Sequential: layer ", layers_.size(), " is None");
  const void* owner = nullptr;
  const bool taken = layer->owner_.compare_exchange_strong(owner, this);  // on failure: the owner
  check(taken, "Sequential: layer ", layers_.size(), " (", layer->type(), ") already ",
        owner == this ? "appears earlier in this model" : "belongs to another model",
        "; a layer can be in one model once (sharing weights is not supported): make a new one");
  // A parameter's full name is its layer's index and its own name, as in a checkpoint.
  {
    const std::lock_guard<std::recursive_mutex> layer_lock(layer->mutex());
    for (auto& p : layer->parameters()) p->name = std::to_string(layers_.size()) + "." + p->local_name;
  }
  layers_.push_back(std::move(layer));
  plan_.reset();
}

void Sequential::to(Device device) {
  const Lock lock(*this);
  move_parameters(parameters(), device);
  device_ = device;
  plan_.reset();
}

void Sequential::to(DType dtype) {
  const Lock lock(*this);
  for (auto& layer : layers_) layer->to(dtype);
}

const Tensor& Sequential::on_model_device(const Tensor& t, Tensor& staging) const {
  if (t.device() == device_) return t;
  if (!staging.defined() || staging.shape() != t.shape() || staging.dtype() != t.dtype() ||
      staging.device() != device_)
    staging = Tensor::empty(t.shape(), t.dtype(), device_);
  staging.copy_(t);
  return staging;
}

void Sequential::check_input(const Tensor& x) const {
  check(!layers_.empty(), "Sequential: the model has no layers");
  check_float(x, "x");
  check(x.dim() >= 2, "x: expected a batch (N, ...), got shape ", shape_text(x.shape()));
}

execution::Plan& Sequential::plan() {
  if (!plan_) plan_ = std::make_unique<execution::Plan>(layers_, device_);
  return *plan_;
}

std::vector<std::string> Sequential::describe_plan() {
  const Lock lock(*this);
  return plan().describe();
}

const Tensor& Sequential::forward(const Tensor& x, bool training) {
  const Lock lock(*this);
  const ConcurrentCaller caller;
  check_input(x);
  return plan().forward(on_model_device(x, input_staging_), training);
}

Tensor Sequential::forward_copy(const Tensor& x, bool training) {
  const Lock lock(*this);
  return forward(x, training).clone();
}

std::vector<Tensor> Sequential::activations(const Tensor& x) {
  const Lock lock(*this);
  const ConcurrentCaller caller;
  check_input(x);
  std::vector<Tensor> outputs;
  const Tensor* current = &on_model_device(x, input_staging_);
  for (auto& layer : layers_) {
    current = &layer->forward(*current, false);
    outputs.push_back(current->clone());
  }
  return outputs;
}

double Sequential::train_step(const Tensor& x, const Tensor& target, Loss& loss, optim::Optimizer& optimizer) {
  const Lock lock(*this);
  const ConcurrentCaller caller;
  check_defined(target, "target");
  check_input(x);
  check(x.size(0) > 0, "train_step: x is an empty batch, shape ", shape_text(x.shape()));
  const Tensor& output = forward(x, true);
  if (!grad_output_.defined() || grad_output_.shape() != output.shape() ||
      grad_output_.dtype() != output.dtype() || grad_output_.device() != output.device())
    grad_output_ = Tensor::empty(output.shape(), output.dtype(), output.device());
  const Tensor& device_target = on_model_device(target, target_staging_);
  const double value = loss.forward_backward(output, device_target, grad_output_, nullptr);
  plan().backward(grad_output_, false);
  optimizer.step();
  return value;
}

Evaluation Sequential::evaluate(const Tensor& x, const Tensor& target, Loss& loss, std::int64_t batch_size) {
  const Lock lock(*this);
  const ConcurrentCaller caller;
  check_input(x);
  check(x.size(0) > 0, "evaluate: x is an empty batch, shape ", shape_text(x.shape()));
  check(batch_size > 0, "batch_size: must be positive, got ", batch_size);
  check(target.dim() >= 1 && target.size(0) == x.size(0), "target: expected ", x.size(0),
        " rows to match x ", shape_text(x.shape()), ", got ", shape_text(target.shape()));
  const std::int64_t N = x.size(0);
  double loss_sum = 0;
  std::int64_t correct = 0;
  Tensor grad;
  for (std::int64_t begin = 0; begin < N; begin += batch_size) {
    const std::int64_t end = std::min(N, begin + batch_size);
    const Tensor& output = forward(x.slice(0, begin, end), false);
    if (!grad.defined() || grad.shape() != output.shape())
      grad = Tensor::empty(output.shape(), output.dtype(), output.device());
    std::int64_t batch_correct = 0;
    const Tensor target_rows = target.slice(0, begin, end);
    const Tensor& batch_target = on_model_device(target_rows, target_staging_);
    loss_sum += loss.forward_backward(output, batch_target, grad, &batch_correct) *
                static_cast<double>(end - begin);
    correct += batch_correct;
  }
  return {loss_sum / static_cast<double>(N), static_cast<double>(correct) / static_cast<double>(N)};
}

std::vector<std::shared_ptr<Parameter>> Sequential::parameters() const {
  const Lock lock(*this);
  std::vector<std::shared_ptr<Parameter>> all;
  for (const auto& layer : layers_)
    for (const auto& p : layer->parameters()) all.push_back(p);
  return all;
}

std::vector<std::shared_ptr<Parameter>> Sequential::trainable_parameters() const {
  std::vector<std::shared_ptr<Parameter>> trainable;
  for (auto& p : parameters())
    if (p->trainable()) trainable.push_back(p);
  return trainable;
}

std::string Sequential::summary(const Shape& input_shape) const {
  Shape shape{1};
  shape.insert(shape.end(), input_shape.begin(), input_shape.end());
  std::ostringstream out;
  out << std::left << std::setw(4) << "#" << std::setw(16) << "layer" << std::setw(22) << "output shape"
      << std::right << std::setw(12) << "params" << std::setw(14) << "FLOPs" << "\n";
  std::int64_t total_params = 0;
  double total_flops = 0;
  out << std::left << std::setw(4) << "" << std::setw(16) << "input" << std::setw(22) << shape_str(input_shape) << "\n";
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const Layer& layer = *layers_[i];
    const double flops = layer.flops(shape);
    shape = layer.output_shape(shape);
    std::int64_t params = 0;
    for (const auto& p : layer.parameters())
      if (p->trainable()) params += p->value.numel();
    total_params += params;
    total_flops += flops;
    const Shape per_sample(shape.begin() + 1, shape.end());
    // FLOPs print as the double they are: for a large input they pass int64's range, and their
    // column's width, so a space keeps them apart from the parameters.
    out << std::left << std::setw(4) << i << std::setw(16) << layer.type() << std::setw(22)
        << shape_str(per_sample) << std::right << std::setw(12) << params << ' ' << std::setw(13)
        << std::fixed << std::setprecision(0) << flops << "\n";
  }
  out << "total: " << total_params << " parameters, " << std::fixed << std::setprecision(2)
      << total_flops / 1e6 << " MFLOPs per sample (forward)\n";
  return out.str();
}

std::string Sequential::architecture_json() const {
  Json architecture = Json::array();
  for (const auto& layer : layers_)
    architecture.push_back(Json::object({{"type", layer->type()}, {"config", layer->config()}}));
  return architecture.dump(kArchitectureFormat);
}

}  // namespace juanji::nn
