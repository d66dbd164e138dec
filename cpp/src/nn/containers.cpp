#include "juanji/nn/containers.hpp"

#include "core/checked_math.hpp"
#include "juanji/nn/sequential.hpp"
#include "juanji/ops/dense.hpp"

namespace juanji::nn {
namespace {

// A per-sample shape for messages: (N, 64, 14, 14) reads better than the batch size of the call.
std::string batched_text(const Shape& shape) {
  std::string text = "(N";
  for (std::size_t d = 1; d < shape.size(); ++d) text += ", " + std::to_string(shape[d]);
  return text + (shape.size() == 1 ? ",)" : ")");
}

}  // namespace

// ---- Container ----

// Nothing else can be using the container (no reference is left), though a layer in it may be in
// use on its own: only its owner changes.
std::vector<std::shared_ptr<Layer>> layers_within(const std::shared_ptr<Layer>& root) {
  std::vector<std::shared_ptr<Layer>> found{root};
  if (const auto* container = dynamic_cast<const Container*>(root.get()))
    for (const auto& child : container->children()) {
      auto inside = layers_within(child.layer);
      found.insert(found.end(), inside.begin(), inside.end());
    }
  return found;
}

Container::~Container() {
  for (auto& child : children_) child.layer->owner_.store(nullptr);
}

void Container::adopt(const std::string& key, std::shared_ptr<Layer> layer, const std::string& what) {
  check(layer != nullptr, what, " is None");
  check(layer.get() != this, what, " is the ", type(), " itself");
  check(owner() == nullptr, what, ": this ", type(),
        " is inside another container, which lists its parameters: add its layers before nesting it");
  const Layer* owner = nullptr;
  const bool taken = layer->owner_.compare_exchange_strong(owner, this);  // on failure: the owner
  check(taken, what, " (", layer->type(), ") already ",
        owner == this ? "appears earlier in this " + type() : std::string("belongs to another container"),
        "; a layer can be in one container once (sharing weights is not supported): make a new one");
  {
    const Lock lock(*layer);
    layer->name_parameters(key + ".");
    parameters_.insert(parameters_.end(), layer->parameters().begin(), layer->parameters().end());
  }
  children_.push_back({key, std::move(layer)});
}

Json Container::entry_of(const Layer& layer) {
  return Json::object({{"type", layer.type()}, {"config", layer.config()}});
}

void Container::name_parameters(const std::string& prefix) {
  for (auto& child : children_) child.layer->name_parameters(prefix + child.key + ".");
}

void Container::collect_mutexes(std::vector<LayerMutex*>& out) const {
  Layer::collect_mutexes(out);
  for (const auto& child : children_) child.layer->collect_mutexes(out);
}

void Container::train(bool mode) {
  Layer::train(mode);
  for (auto& child : children_) child.layer->train(mode);
}

void Container::set_precision(Precision precision) {
  Layer::set_precision(precision);
  for (auto& child : children_) child.layer->set_precision(precision);
}

void Container::release_forward_tensors() {
  for (auto& child : children_) child.layer->release_forward_tensors();
}

std::string repr(const Layer& layer) {
  std::string text = layer.type() + "(" + layer.extra_repr();
  const auto* container = dynamic_cast<const Container*>(&layer);
  if (!container || container->children().empty()) return text + ")";
  text += "\n";
  for (const auto& child : container->children()) {
    std::string inner = repr(*child.layer);
    for (std::size_t at = inner.find('\n'); at != std::string::npos; at = inner.find('\n', at + 1))
      inner.insert(at + 1, "  ");
    text += "  (" + child.key + "): " + inner + "\n";
  }
  return text + ")";
}

// ---- Residual ----

Residual::Residual(std::shared_ptr<Layer> body, std::shared_ptr<Layer> shortcut)
    : body_(body), shortcut_(shortcut) {
  adopt("body", std::move(body), "Residual: body");
  if (shortcut) adopt("shortcut", std::move(shortcut), "Residual: shortcut");
}

std::shared_ptr<Layer> Residual::replicate() const {
  std::shared_ptr<Layer> body = body_->replicate();
  std::shared_ptr<Layer> shortcut = shortcut_ ? shortcut_->replicate() : nullptr;
  if (!body || (shortcut_ && !shortcut)) return nullptr;
  return std::make_shared<Residual>(std::move(body), std::move(shortcut));
}

Json Residual::config() const {
  return Json::object({{"body", entry_of(*body_)}, {"shortcut", shortcut_ ? entry_of(*shortcut_) : Json()}});
}

Shape Residual::output_shape(const Shape& input) const {
  const Shape body = body_->output_shape(input);
  const Shape shortcut = shortcut_ ? shortcut_->output_shape(input) : input;
  check(body == shortcut, "Residual: the body's output ", batched_text(body), " and the shortcut's ",
        batched_text(shortcut), " cannot be added (input ", batched_text(input),
        "): give the shortcut a projection (a 1x1 convolution with the body's stride and channels)");
  return body;
}

double Residual::flops(const Shape& input) const {
  const double branches = body_->flops(input) + (shortcut_ ? shortcut_->flops(input) : 0.0);
  return branches + static_cast<double>(checked_numel(output_shape(input)));
}

std::vector<Shape> Residual::child_input_shapes(const Shape& input) const {
  return shortcut_ ? std::vector<Shape>{input, input} : std::vector<Shape>{input};
}

const Tensor& Residual::sum_forward(const Tensor& x, bool training, bool relu) {
  input_shape_ = x.shape();
  const Tensor& body = body_->forward(x, training);
  const Tensor& shortcut = shortcut_ ? shortcut_->forward(x, training) : x;
  check(body.shape() == shortcut.shape(), "Residual: the body's output ", batched_text(body.shape()),
        " and the shortcut's ", batched_text(shortcut.shape()), " cannot be added (input ",
        batched_text(x.shape()), "): give the shortcut a projection (a 1x1 convolution with the "
        "body's stride and channels)");
  check_type(body.dtype() == shortcut.dtype(), "Residual: the body's output is ", dtype_name(body.dtype()),
             " but the shortcut's is ", dtype_name(shortcut.dtype()));
  // Written over the body's output, the block keeps one tensor of its output's size fewer.
  if (!body_->backward_reads_output() && body.is_contiguous())
    output_ = body;
  else
    ensure(output_, body.shape(), body.dtype(), body.device());
  add_into(body.contiguous(), shortcut.contiguous(), output_, relu);
  return output_;
}

const Tensor& Residual::forward(const Tensor& x, bool training) { return sum_forward(x, training, false); }

const Tensor& Residual::backward(const Tensor& grad_y, bool need_grad_x) {
  return sum_backward(grad_y, need_grad_x, false);
}

void Residual::release_forward_tensors() {
  output_ = Tensor();
  Container::release_forward_tensors();
}

const Tensor& Residual::sum_backward(const Tensor& grad_y, bool need_grad_x, bool relu) {
  check_grad_output(grad_y, output_);
  Tensor contiguous;
  const Tensor* grad = &contiguous;
  if (relu) {
    // The branches' input gradients are summed over the ReLU's gradient, once both are done with
    // it, where the two have one shape (a block without a projection).
    Tensor& relu_grad = input_shape_ == output_.shape() ? grad_input_ : relu_grad_;
    ensure(relu_grad, output_.shape(), output_.dtype(), output_.device());
    // The ReLU's output stands in for its input: it is positive exactly where the input is.
    activation_backward_into(Activation::relu, 0.0, grad_y.contiguous(), output_, output_, relu_grad);
    grad = &relu_grad;
  } else {
    contiguous = grad_y.contiguous();
  }
  const Tensor& body = body_->backward(*grad, need_grad_x);
  const Tensor& shortcut = shortcut_ ? shortcut_->backward(*grad, need_grad_x) : *grad;
  if (!need_grad_x) {
    release_gradient(relu_grad_, grad_input_);
    return grad_input_ = Tensor();
  }
  ensure(grad_input_, body.shape(), body.dtype(), body.device());
  add_into(body.contiguous(), shortcut.contiguous(), grad_input_);
  release_gradient(body, *grad);
  release_gradient(shortcut, *grad);
  release_gradient(relu_grad_, grad_input_);
  return grad_input_;
}

// ---- Concat ----

Concat::Concat(std::vector<std::shared_ptr<Layer>> branches) {
  check(!branches.empty(), "Concat: expected at least one branch");
  for (std::size_t i = 0; i < branches.size(); ++i) {
    branches_.push_back(branches[i]);
    adopt(std::to_string(i), std::move(branches[i]), "Concat: branch " + std::to_string(i));
  }
}

std::shared_ptr<Layer> Concat::replicate() const {
  std::vector<std::shared_ptr<Layer>> branches;
  for (const auto& branch : branches_) {
    branches.push_back(branch->replicate());
    if (!branches.back()) return nullptr;
  }
  return std::make_shared<Concat>(std::move(branches));
}

Json Concat::config() const {
  Json branches = Json::array();
  for (const auto& branch : branches_) branches.push_back(entry_of(*branch));
  return Json::object({{"branches", branches}});
}

Shape Concat::concatenated(const std::vector<Shape>& shapes) {
  Shape out = shapes[0];
  check(out.size() >= 2, "Concat: branch 0's output ", shape_text(out), " has no channel dimension");
  for (std::size_t i = 1; i < shapes.size(); ++i) {
    const Shape& shape = shapes[i];
    bool fits = shape.size() == out.size();
    for (std::size_t d = 0; fits && d < shape.size(); ++d) fits = d == 1 || shape[d] == out[d];
    check(fits, "Concat: branch 0's output ", batched_text(shapes[0]), " and branch ", i, "'s ",
          batched_text(shape), " cannot be concatenated along the channels (dimension 1): the "
          "other dimensions must be equal");
    out[1] += shape[1];
  }
  return out;
}

std::vector<Shape> Concat::branch_output_shapes(const Shape& input) const {
  std::vector<Shape> shapes;
  for (const auto& branch : branches_) shapes.push_back(branch->output_shape(input));
  return shapes;
}

Shape Concat::output_shape(const Shape& input) const { return concatenated(branch_output_shapes(input)); }

double Concat::flops(const Shape& input) const {
  double total = 0;
  for (const auto& branch : branches_) total += branch->flops(input);
  return total;
}

std::vector<Shape> Concat::child_input_shapes(const Shape& input) const {
  return std::vector<Shape>(branches_.size(), input);
}

const Tensor& Concat::forward(const Tensor& x, bool training) {
  if (frozen()) return infer_into_output(x);
  // Each branch's output stays valid while the others run: it is owned by the branch's layers.
  std::vector<const Tensor*> outputs;
  std::vector<Shape> shapes;
  for (const auto& branch : branches_) {
    outputs.push_back(&branch->forward(x, training));
    shapes.push_back(outputs.back()->shape());
  }
  const Shape shape = concatenated(shapes);
  const Tensor& first = *outputs[0];
  for (std::size_t i = 1; i < outputs.size(); ++i)
    check_type(outputs[i]->dtype() == first.dtype(), "Concat: branch ", i, "'s output is ",
               dtype_name(outputs[i]->dtype()), " but branch 0's is ", dtype_name(first.dtype()));
  ensure(output_, shape, first.dtype(), first.device());
  channels_.clear();
  std::int64_t begin = 0;
  for (const Tensor* out : outputs) {
    const std::int64_t channels = out->size(1);
    output_.slice(1, begin, begin + channels).copy_(*out);
    channels_.push_back(channels);
    begin += channels;
  }
  return output_;
}

const Tensor& Concat::infer_into_output(const Tensor& x) {
  const std::vector<Shape> shapes = branch_output_shapes(x.shape());
  ensure(output_, concatenated(shapes), x.dtype(), x.device());
  channels_.clear();
  std::int64_t begin = 0;
  for (std::size_t i = 0; i < branches_.size(); ++i) {
    const std::int64_t channels = shapes[i][1];
    Tensor share = output_.slice(1, begin, begin + channels);
    // A branch's last convolution computes straight into its share of the output (each image's
    // share lies in one piece), and the copy is saved (frozen SqueezeNet, 2 threads: batch 1
    // 3.1 -> 2.8 ms, batch 8 23.8 -> 21.4).
    auto* chain = dynamic_cast<Sequential*>(branches_[i].get());
    const bool lend = chain && share.device().is_cpu();
    const Tensor& out = lend ? chain->infer_into(x, share) : branches_[i]->forward(x, false);
    check_type(out.dtype() == output_.dtype(), "Concat: branch ", i, "'s output is ", dtype_name(out.dtype()),
               " but the input is ", dtype_name(output_.dtype()));
    if (out.data_ptr() != share.data_ptr()) share.copy_(out);
    // No backward follows: the branch's tensors go now, and with them any view of the output.
    branches_[i]->release_forward_tensors();
    channels_.push_back(channels);
    begin += channels;
  }
  return output_;
}

const Tensor& Concat::backward(const Tensor& grad_y, bool need_grad_x) {
  check_grad_output(grad_y, output_);
  branch_grads_.resize(branches_.size());
  std::int64_t begin = 0;
  const Tensor* sum = nullptr;
  for (std::size_t i = 0; i < branches_.size(); ++i) {
    const Tensor share = grad_y.slice(1, begin, begin + channels_[i]);
    begin += channels_[i];
    ensure(branch_grads_[i], share.shape(), share.dtype(), share.device()).copy_(share);
    const Tensor& grad_x = branches_[i]->backward(branch_grads_[i], need_grad_x);
    if (!need_grad_x) continue;
    // The first branch's input gradient is its layers' until their next backward; the sum goes
    // into grad_input_ from the second on.
    if (!sum) {
      sum = &grad_x;
      continue;
    }
    ensure(grad_input_, grad_x.shape(), grad_x.dtype(), grad_x.device());
    add_into(sum->contiguous(), grad_x.contiguous(), grad_input_);
    if (sum != &grad_input_) release_gradient(*sum, branch_grads_[0]);
    release_gradient(grad_x, branch_grads_[i]);
    sum = &grad_input_;
  }
  if (!need_grad_x) {
    grad_input_ = Tensor();
    return grad_input_;
  }
  return *sum;
}

void Concat::release_forward_tensors() {
  output_ = Tensor();
  Container::release_forward_tensors();
}

// ---- Identity ----

const Tensor& Identity::forward(const Tensor& x, bool) {
  output_ = x;
  return output_;
}

const Tensor& Identity::backward(const Tensor& grad_y, bool need_grad_x) {
  check_grad_output(grad_y, output_);
  grad_input_ = need_grad_x ? grad_y : Tensor();
  return grad_input_;
}

void Identity::release_forward_tensors() { output_ = Tensor(); }

}  // namespace juanji::nn
