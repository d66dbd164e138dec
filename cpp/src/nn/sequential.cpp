#include "juanji/nn/sequential.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <iomanip>
#include <limits>
#include <sstream>

#include "juanji/distributed.hpp"
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

struct Sequential::Replicas {
  std::mutex mutex;
  std::vector<std::shared_ptr<Sequential>> idle;
  bool unavailable = false;
};

Sequential::Sequential() : replicas_(std::make_unique<Replicas>()) {}

// A throw leaves the layers taken so far to ~Container, which frees them.
Sequential::Sequential(std::vector<std::shared_ptr<Layer>> layers) : replicas_(std::make_unique<Replicas>()) {
  for (auto& layer : layers) add(std::move(layer));
}

struct Sequential::GradientBuckets {
  struct Bucket {
    std::vector<std::shared_ptr<Parameter>> parameters;
    DType dtype;
    std::int64_t count = 0;      // elements
    std::size_t first_layer = 0;  // the lowest index in layers_ of a layer with parameters here
    Tensor flat;                  // the gradients side by side, sent as one sum
  };
  std::vector<Bucket> buckets;  // last layer's parameters first
  distributed::PendingSums sums;
};

Sequential::~Sequential() = default;

void Sequential::add(std::shared_ptr<Layer> layer) {
  const Lock lock(*this);
  check_not_frozen("add");
  const std::string index = std::to_string(layers_.size());
  const std::shared_ptr<Layer> added = layer;
  adopt(index, std::move(layer), "Sequential: layer " + index);
  layers_.push_back(added);
  plan_.reset();
  const std::lock_guard<std::mutex> guard(replicas_->mutex);
  replicas_->idle.clear();
  replicas_->unavailable = false;
}

Json Sequential::config() const {
  Json layers = Json::array();
  for (const auto& layer : layers_) layers.push_back(entry_of(*layer));
  return Json::object({{"layers", layers}});
}

Shape Sequential::output_shape(const Shape& input) const {
  Shape shape = input;
  for (const auto& layer : layers_) shape = layer->output_shape(shape);
  return shape;
}

double Sequential::flops(const Shape& input) const {
  Shape shape = input;
  double total = 0;
  for (const auto& layer : layers_) {
    total += layer->flops(shape);
    shape = layer->output_shape(shape);
  }
  return total;
}

std::vector<Shape> Sequential::child_input_shapes(const Shape& input) const {
  std::vector<Shape> shapes;
  Shape shape = input;
  for (const auto& layer : layers_) {
    shapes.push_back(shape);
    shape = layer->output_shape(shape);
  }
  return shapes;
}

void Sequential::to(Device device) {
  const Lock lock(*this);
  check_not_frozen("to");
  move_parameters(parameters(), device);
  device_ = device;
}

void Sequential::to(DType dtype) {
  const Lock lock(*this);
  Layer::to(dtype);
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

execution::Plan& Sequential::plan(Device device) {
  if (!plan_ || plan_device_ != device) {
    plan_ = std::make_unique<execution::Plan>(layers_, device);
    plan_device_ = device;
  }
  return *plan_;
}

std::vector<std::string> Sequential::describe_plan() {
  const Lock lock(*this);
  return plan(device_).describe();
}

const Tensor& Sequential::forward(const Tensor& x, bool training) {
  const Lock lock(*this);
  const ConcurrentCaller caller;
  last_forward_inferred_ = false;
  return run_forward(x, training);
}

const Tensor& Sequential::run_forward(const Tensor& x, bool training) {
  check(!training || !frozen(), "Sequential.forward: a frozen model is for inference only (training must be "
        "false)");
  check_input(x);
  const Tensor& input = owner() ? x : on_model_device(x, input_staging_);
  return plan(input.device()).forward(input, training, frozen());
}

const Tensor& Sequential::infer_into(const Tensor& x, const Tensor& destination) {
  const Lock lock(*this);
  const ConcurrentCaller caller;
  last_forward_inferred_ = false;
  check_input(x);
  return plan(x.device()).infer_into(x, destination);
}

bool Sequential::backward_reads_output() const { return layers_.empty() || layers_.back()->backward_reads_output(); }

const Tensor& Sequential::backward(const Tensor& grad_y, bool need_grad_x) {
  const Lock lock(*this);
  const ConcurrentCaller caller;
  check(!last_forward_inferred_, "Sequential.backward: backward needs a training-mode forward (the last forward "
        "ran in eval mode)");
  check(plan_ != nullptr, "Sequential.backward: no forward to go back through (call forward first)");
  check_defined(grad_y, "grad_out");
  return plan_->backward(grad_y, need_grad_x);
}

Tensor Sequential::forward_copy(const Tensor& x, bool training) {
  if (!training) return infer(x);
  const Lock lock(*this);
  return forward(x, training).clone();
}

std::shared_ptr<Layer> Sequential::replicate() const {
  auto copy = std::make_shared<Sequential>();
  for (const auto& layer : layers_) {
    std::shared_ptr<Layer> replica = layer->replicate();
    if (!replica) return nullptr;
    copy->add(std::move(replica));
  }
  return copy;
}

std::shared_ptr<Sequential> Sequential::idle_replica() {
  {
    const std::lock_guard<std::mutex> guard(replicas_->mutex);
    if (replicas_->unavailable) return nullptr;
    if (!replicas_->idle.empty()) {
      std::shared_ptr<Sequential> replica = std::move(replicas_->idle.back());
      replicas_->idle.pop_back();
      return replica;
    }
  }
  auto replica = std::static_pointer_cast<Sequential>(replicate());
  if (!replica) {
    const std::lock_guard<std::mutex> guard(replicas_->mutex);
    replicas_->unavailable = true;
    return nullptr;
  }
  // For infer() alone, which no backward follows: frozen, its forward keeps no activations it is done with.
  for (const auto& layer : layers_within(replica)) layer->frozen_ = true;
  return replica;
}

namespace {

// Gives each layer inside `replica` the precision of its counterpart inside `source`.
void copy_precisions(const Layer& source, Layer& replica) {
  if (replica.precision() != source.precision()) replica.Layer::set_precision(source.precision());
  const auto* source_container = dynamic_cast<const Container*>(&source);
  if (!source_container) return;
  const auto& replica_children = dynamic_cast<const Container&>(replica).children();
  for (std::size_t i = 0; i < replica_children.size(); ++i)
    copy_precisions(*source_container->children()[i].layer, *replica_children[i].layer);
}

}  // namespace

void Sequential::share_state_with(Sequential& replica) const {
  const auto& source = parameters();
  const auto& copies = replica.parameters();
  for (std::size_t i = 0; i < copies.size(); ++i) {
    copies[i]->value = source[i]->value;
    copies[i]->packs = source[i]->packs;
  }
  replica.device_ = device_;
  copy_precisions(*this, replica);
}

std::shared_ptr<Sequential> Sequential::freeze() const {
  const Lock lock(*this);
  auto copy = std::static_pointer_cast<Sequential>(replicate());
  check(copy != nullptr, "freeze: a layer of the model has no copy for inference (a layer written in Python)");
  const auto& source = parameters();
  const auto& copies = copy->parameters();
  for (std::size_t i = 0; i < copies.size(); ++i) {
    Tensor value = source[i]->value.clone();
    value.storage()->read_only = true;
    copies[i]->value = value;
    copies[i]->grad = Tensor();
    copies[i]->packs = std::make_shared<PackedWeights>(value);
  }
  copy->device_ = device_;
  copy_precisions(*this, *copy);
  copy->eval();
  for (const auto& layer : layers_within(copy)) layer->frozen_ = true;
  return copy;
}

Tensor Sequential::infer(const Tensor& x) {
  {
    const SharedLock lock(*this);
    const ConcurrentCaller caller;
    last_forward_inferred_ = true;
    std::shared_ptr<Sequential> replica = device_.is_cpu() ? idle_replica() : nullptr;
    if (replica) {
      // Back to the idle ones however the call ends, holding no parameter of the model's.
      struct Lease {
        Sequential& model;
        std::shared_ptr<Sequential> replica;
        ~Lease() {
          for (const auto& p : replica->parameters()) {
            p->value = Tensor();
            p->packs = nullptr;
          }
          const std::lock_guard<std::mutex> guard(model.replicas_->mutex);
          model.replicas_->idle.push_back(std::move(replica));
        }
      } lease{*this, replica};
      share_state_with(*replica);
      return replica->run_forward(x, false).clone();  // the replica is this call's alone
    }
  }
  const Lock lock(*this);
  return forward(x, false).clone();
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
  const execution::TrainingStepBackward step_backward;
  if (buckets_ && distributed::world_size() > 1) {
    // Each bucket goes out as soon as the last stage holding its parameters has finished its
    // backward, so the sums travel while the earlier layers' backward runs.
    check(device_.is_cpu(), "train_step: a distributed model must stay on the CPU, it is on ", device_.str());
    std::size_t next = 0;
    auto& buckets = buckets_->buckets;
    plan_->backward(grad_output_, false, [&](std::size_t first) {
      for (; next < buckets.size() && buckets[next].first_layer >= first; ++next) sum_bucket(next, false);
      buckets_->sums.progress();
    });
    // Nothing is left to overlap with the buckets that the first layers fill.
    for (; next < buckets.size(); ++next) sum_bucket(next, true);
    finish_sums();
  } else {
    plan_->backward(grad_output_, false);
  }
  optimizer.step();
  return value;
}

namespace {

std::string describe_parameters(const std::vector<std::shared_ptr<Parameter>>& parameters) {
  std::string text;
  for (const auto& p : parameters)
    text += p->name + " " + dtype_name(p->value.dtype()) + " " + shape_str(p->value.shape()) +
            (p->trainable() ? "" : " buffer") + "\n";
  return text;
}

// The first line where a and b differ, for the error message.
std::pair<std::string, std::string> first_difference(const std::string& a, const std::string& b) {
  std::istringstream in_a(a), in_b(b);
  std::string line_a, line_b;
  while (true) {
    const bool more_a = static_cast<bool>(std::getline(in_a, line_a));
    const bool more_b = static_cast<bool>(std::getline(in_b, line_b));
    if (!more_a) line_a = "(nothing)";
    if (!more_b) line_b = "(nothing)";
    if (!more_a && !more_b) return {"", ""};
    if (line_a != line_b) return {line_a, line_b};
  }
}

}  // namespace

void Sequential::distribute(std::int64_t bucket_bytes) {
  const Lock lock(*this);
  check_not_frozen("distribute");
  check(bucket_bytes > 0, "distribute: bucket_bytes must be positive, got ", bucket_bytes);
  check(device_.is_cpu(), "distribute: the model must be on the CPU, it is on ", device_.str());
  const auto& all = parameters();
  // Every rank learns whether all match rank 0 before any raises, so that none waits for the others.
  const std::string mine = describe_parameters(all);
  const std::string reference = distributed::broadcast_string(mine, 0);
  std::int64_t mismatched = mine != reference ? 1 : 0;
  distributed::all_reduce(&mismatched, 1, DType::int64, distributed::ReduceOp::sum);
  if (mismatched > 0) {
    std::string detail;
    if (mine != reference) {
      const auto [here, there] = first_difference(mine, reference);
      detail = "; this rank (" + std::to_string(distributed::rank()) + ") has '" + here +
               "' where rank 0 has '" + there + "'";
    }
    throw std::invalid_argument(
        "distribute: the model's parameters differ between ranks (" + std::to_string(mismatched) +
        " of " + std::to_string(distributed::world_size()) + " ranks differ from rank 0)" + detail);
  }
  for (const auto& p : all) {
    check(p->value.is_contiguous(), "distribute: parameter ", p->name, " is not contiguous");
    distributed::broadcast(p->value, 0);
  }
  // Buckets in the order the backward finishes the gradients: last layer first.
  auto buckets = std::make_unique<GradientBuckets>();
  auto& list = buckets->buckets;
  for (std::size_t i = layers_.size(); i-- > 0;) {
    const auto& own = layers_[i]->parameters();
    for (auto it = own.rbegin(); it != own.rend(); ++it) {
      const auto& p = *it;
      if (!p->trainable()) continue;
      const std::int64_t n = p->value.numel();
      const DType dtype = p->value.dtype();
      if (list.empty() || list.back().dtype != dtype ||
          (list.back().count + n) * static_cast<std::int64_t>(dtype_size(dtype)) > bucket_bytes)
        list.push_back({{}, dtype, 0, i, {}});
      list.back().parameters.push_back(p);
      list.back().count += n;
      list.back().first_layer = i;
    }
  }
  buckets_ = std::move(buckets);
}

bool Sequential::is_distributed() const { return buckets_ != nullptr; }

void Sequential::sum_bucket(std::size_t index, bool blocking) {
  auto& bucket = buckets_->buckets[index];
  const DType dtype = bucket.parameters.front()->grad.dtype();
  if (!bucket.flat.defined() || bucket.flat.dtype() != dtype) bucket.flat = Tensor::empty({bucket.count}, dtype);
  const std::size_t element = dtype_size(dtype);
  char* flat = static_cast<char*>(bucket.flat.data_ptr());
  std::int64_t offset = 0;
  for (const auto& p : bucket.parameters) {
    const std::int64_t n = p->grad.numel();
    check(p->grad.is_contiguous() && p->grad.dtype() == dtype && p->grad.device().is_cpu(),
          "train_step: the gradient of ", p->name, " changed dtype or device since distribute()");
    std::memcpy(flat + offset * element, p->grad.data_ptr(), static_cast<std::size_t>(n) * element);
    offset += n;
  }
  if (blocking) distributed::all_reduce(flat, bucket.count, dtype, distributed::ReduceOp::sum);
  else buckets_->sums.start(flat, bucket.count, dtype);
}

namespace {
template <class T>
void copy_scaled(T* into, const T* from, std::int64_t n, double factor) {
  const T f = static_cast<T>(factor);
  for (std::int64_t i = 0; i < n; ++i) into[i] = from[i] * f;
}
}  // namespace

void Sequential::finish_sums() {
  buckets_->sums.wait();
  const double factor = 1.0 / distributed::world_size();
  for (auto& bucket : buckets_->buckets) {
    std::int64_t offset = 0;
    for (const auto& p : bucket.parameters) {
      const std::int64_t n = p->grad.numel();
      if (bucket.flat.dtype() == DType::float32)
        copy_scaled(p->grad.data<float>(), bucket.flat.data<float>() + offset, n, factor);
      else
        copy_scaled(p->grad.data<double>(), bucket.flat.data<double>() + offset, n, factor);
      offset += n;
    }
  }
}

namespace {

// x with its last axis reversed, contiguous, on the CPU.
Tensor mirrored(const Tensor& x) {
  const Tensor host = x.to(Device{}).contiguous();
  Tensor out = Tensor::empty(host.shape(), host.dtype());
  const std::int64_t width = host.size(-1), rows = width == 0 ? 0 : host.numel() / width;
  const std::size_t element = dtype_size(host.dtype());
  const char* in = static_cast<const char*>(host.data_ptr());
  char* into = static_cast<char*>(out.data_ptr());
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t w = 0; w < width; ++w)
      std::memcpy(into + static_cast<std::size_t>(r * width + w) * element,
                  in + static_cast<std::size_t>(r * width + width - 1 - w) * element, element);
  return out;
}

// (a + b) / 2, on the CPU in a's dtype.
Tensor mean_of(const Tensor& a, const Tensor& b) {
  const Tensor a64 = a.to(Device{}).to(DType::float64).contiguous();
  const Tensor b64 = b.to(Device{}).to(DType::float64).contiguous();
  Tensor mean = Tensor::empty(a64.shape(), DType::float64);
  const double* pa = a64.data<double>();
  const double* pb = b64.data<double>();
  double* pm = mean.data<double>();
  for (std::int64_t i = 0; i < mean.numel(); ++i) pm[i] = (pa[i] + pb[i]) / 2;
  return mean.to(a.dtype());
}

}  // namespace

Evaluation Sequential::evaluate(const Tensor& x, const Tensor& target, Loss& loss, std::int64_t batch_size,
                                bool mirror) {
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
    const Tensor rows = x.slice(0, begin, end);
    const Tensor target_rows = target.slice(0, begin, end);
    Tensor averaged;
    if (mirror) {
      const Tensor plain = forward(rows, false).clone();  // the next forward overwrites the output
      averaged = mean_of(plain, forward(mirrored(rows), false));
    }
    const Tensor& output = mirror ? averaged : forward(rows, false);
    if (!grad.defined() || grad.shape() != output.shape() || grad.device() != output.device())
      grad = Tensor::empty(output.shape(), output.dtype(), output.device());
    std::int64_t batch_correct = 0;
    const Tensor batch_target = mirror ? target_rows.to(Device{}) : on_model_device(target_rows, target_staging_);
    loss_sum += loss.forward_backward(output, batch_target, grad, &batch_correct) *
                static_cast<double>(end - begin);
    correct += batch_correct;
  }
  return {loss_sum / static_cast<double>(N), static_cast<double>(correct) / static_cast<double>(N)};
}

std::vector<std::shared_ptr<Parameter>> Sequential::trainable_parameters() const {
  const Lock lock(*this);
  std::vector<std::shared_ptr<Parameter>> trainable;
  for (auto& p : parameters())
    if (p->trainable()) trainable.push_back(p);
  return trainable;
}

namespace {

struct SummaryRow {
  std::string name, type;
  Shape output;  // per sample
  std::int64_t parameters;
  double flops;
};

// The row of `layer` (named by its place) for a batch of one of `input`, then, indented under it,
// those of the layers inside it.
void add_summary_rows(const Layer& layer, const std::string& name, int depth, const Shape& input,
                      std::vector<SummaryRow>& rows) {
  const Shape output = layer.output_shape(input);
  std::int64_t parameters = 0;
  for (const auto& p : layer.parameters())
    if (p->learned) parameters += p->value.numel();
  rows.push_back({name, std::string(2 * static_cast<std::size_t>(depth), ' ') + layer.type(),
                  Shape(output.begin() + 1, output.end()), parameters, layer.flops(input)});
  const auto* container = dynamic_cast<const Container*>(&layer);
  if (!container) return;
  const std::vector<Shape> inputs = container->child_input_shapes(input);
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const Container::Child& child = container->children()[i];
    add_summary_rows(*child.layer, name + "." + child.key, depth + 1, inputs[i], rows);
  }
}

}  // namespace

Shape Sequential::sample_shape(const Shape& input_shape) const {
  const auto fits = [&](const Shape& sample) {
    Shape batch{1};
    batch.insert(batch.end(), sample.begin(), sample.end());
    output_shape(batch);
  };
  try {
    fits(input_shape);
    return input_shape;
  } catch (const std::invalid_argument&) {
    if (input_shape.size() < 2) throw;
    const std::exception_ptr without_batch = std::current_exception();
    const Shape sample(input_shape.begin() + 1, input_shape.end());
    try {
      fits(sample);
    } catch (const std::invalid_argument&) {
      std::rethrow_exception(without_batch);
    }
    return sample;
  }
}

std::string Sequential::summary(const Shape& shape_given) const {
  const Lock lock(*this);
  const Shape input_shape = sample_shape(shape_given);
  Shape shape{1};
  shape.insert(shape.end(), input_shape.begin(), input_shape.end());
  std::vector<SummaryRow> rows;
  std::int64_t total_params = 0;
  double total_flops = 0;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const std::size_t first = rows.size();
    add_summary_rows(*layers_[i], std::to_string(i), 0, shape, rows);
    total_params += rows[first].parameters;
    total_flops += rows[first].flops;
    shape = layers_[i]->output_shape(shape);
  }
  // The columns of a flat model's table, wider where names or nested types need it.
  std::size_t name_width = 4, type_width = 16;
  for (const auto& row : rows) {
    name_width = std::max(name_width, row.name.size() + 2);
    type_width = std::max(type_width, row.type.size() + 2);
  }
  std::ostringstream out;
  out << std::left << std::setw(static_cast<int>(name_width)) << "#" << std::setw(static_cast<int>(type_width))
      << "layer" << std::setw(22) << "output shape" << std::right << std::setw(12) << "params" << std::setw(14)
      << "FLOPs" << "\n";
  out << std::left << std::setw(static_cast<int>(name_width)) << "" << std::setw(static_cast<int>(type_width))
      << "input" << std::setw(22) << shape_str(input_shape) << "\n";
  for (const auto& row : rows) {
    // FLOPs print as the double they are: for a large input they pass int64's range, and their
    // column's width, so a space keeps them apart from the parameters.
    out << std::left << std::setw(static_cast<int>(name_width)) << row.name
        << std::setw(static_cast<int>(type_width)) << row.type << std::setw(22) << shape_str(row.output)
        << std::right << std::setw(12) << row.parameters << ' ' << std::setw(13) << std::fixed
        << std::setprecision(0) << row.flops << "\n";
  }
  out << "total: " << total_params << " parameters, " << std::fixed << std::setprecision(2)
      << total_flops / 1e6 << " MFLOPs per sample (forward)\n";
  return out.str();
}

std::string Sequential::architecture_json() const {
  Json architecture = Json::array();
  for (const auto& layer : layers_) architecture.push_back(entry_of(*layer));
  return architecture.dump(kArchitectureFormat);
}

}  // namespace juanji::nn
