#include "nn/plan.hpp"

#include <algorithm>
#include <utility>

#include "core/device.hpp"
#include "juanji/nn/containers.hpp"
#include "juanji/ops/conv.hpp"
#include "juanji/ops/dense.hpp"
#include "juanji/ops/pool.hpp"

namespace juanji::nn::execution {

thread_local int TrainingStepBackward::depth_ = 0;

namespace {

using Layers = std::vector<std::shared_ptr<Layer>>;

// The kernels of consecutive layers in one direction: a layer's own, or several layers' in one pass.
class Pass {
 public:
  explicit Pass(std::vector<const Layer*> layers) : layers_(std::move(layers)) {}
  virtual ~Pass() = default;
  std::size_t size() const { return layers_.size(); }
  // The layers' types joined by "+".
  std::string description() const {
    std::string text;
    for (const Layer* layer : layers_) text += (text.empty() ? "" : "+") + layer->type();
    return text;
  }

 private:
  std::vector<const Layer*> layers_;
};

class ForwardPass : public Pass {
 public:
  using Pass::Pass;
  virtual const Tensor& forward(const Tensor& x, bool training) = 0;
};

class BackwardPass : public Pass {
 public:
  using Pass::Pass;
  virtual const Tensor& backward(const Tensor& grad_y, bool need_grad_x, bool grad_y_spare) = 0;
};

class LayerForward final : public ForwardPass {
 public:
  explicit LayerForward(Layer& layer) : ForwardPass({&layer}), layer_(layer) {}
  const Tensor& forward(const Tensor& x, bool training) override { return layer_.forward(x, training); }

 private:
  Layer& layer_;
};

class LayerBackward final : public BackwardPass {
 public:
  explicit LayerBackward(Layer& layer) : BackwardPass({&layer}), layer_(layer) {}
  const Tensor& backward(const Tensor& grad_y, bool need_grad_x, bool) override {
    return layer_.backward(grad_y, need_grad_x);
  }

 private:
  Layer& layer_;
};

// Forward through steps (stages or passes) in order; backward in reverse, where only the first
// step's input gradient may go unwanted.
template <class Steps>
const Tensor& forward_through(Steps& steps, const Tensor& x, bool training) {
  const Tensor* y = &x;
  for (auto& step : steps) y = &step->forward(*y, training);
  return *y;
}

// Each step's input gradient is released (Layer::release_gradient) once the step before has
// used it, and is spare for that step (see Stage::backward) where no one else holds its storage;
// after_step(k) runs as step k's backward ends.
template <class Steps, class AfterStep>
const Tensor& backward_through(Steps& steps, const Tensor& grad_y, bool need_grad_x, bool grad_y_spare,
                               AfterStep after_step) {
  const Tensor* grad = &grad_y;
  for (std::size_t k = steps.size(); k-- > 0;) {
    const bool spare = grad == &grad_y ? grad_y_spare : grad->storage().use_count() == 1;
    const Tensor& grad_x = steps[k]->backward(*grad, k > 0 || need_grad_x, spare);
    if (grad != &grad_x) Layer::release_gradient(*grad, grad_y);
    grad = &grad_x;
    after_step(k);
  }
  return *grad;
}

template <class Steps>
const Tensor& backward_through(Steps& steps, const Tensor& grad_y, bool need_grad_x, bool grad_y_spare) {
  return backward_through(steps, grad_y, need_grad_x, grad_y_spare, [](std::size_t) {});
}

template <class Passes>
std::string describe(const Passes& passes) {
  std::string text;
  for (const auto& pass : passes) text += (text.empty() ? "" : ", ") + pass->description();
  return text;
}

// Layers that the forward passes and the backward passes both start at the first of and end at
// the last of: a fused pass in one direction may span layers that the other direction computes
// in several (LeNet: Conv2d+ReLU forward, then ReLU+MaxPool2d backward).
class Run final : public Stage {
 public:
  void add(std::unique_ptr<ForwardPass> pass) { forward_.push_back(std::move(pass)); }
  void add(std::unique_ptr<BackwardPass> pass) { backward_.push_back(std::move(pass)); }
  const Tensor& forward(const Tensor& x, bool training) override {
    return forward_through(forward_, x, training);
  }
  const Tensor& backward(const Tensor& grad_y, bool need_grad_x, bool grad_y_spare) override {
    return backward_through(backward_, grad_y, need_grad_x, grad_y_spare);
  }
  std::string description() const override {
    const std::string forward_passes = describe(forward_), backward_passes = describe(backward_);
    return forward_passes == backward_passes ? forward_passes : forward_passes + " | " + backward_passes;
  }

 private:
  std::vector<std::unique_ptr<ForwardPass>> forward_;
  std::vector<std::unique_ptr<BackwardPass>> backward_;  // in layer order
};

template <class T>
T* layer_at(const Layers& layers, std::size_t index) {
  return index < layers.size() ? dynamic_cast<T*>(layers[index].get()) : nullptr;
}

bool is_relu(const ActivationLayer* activation) {
  return activation && activation->kind() == Activation::relu;
}

// Whether the activation's backward can work from its output alone, so that the layer before it
// may compute it and keep no input: sigmoid, tanh, and ReLU / leaky ReLU with a slope >= 0 (their
// output is positive exactly where their input is).
bool backward_works_from_output(const ActivationLayer& activation) {
  return activation.kind() != Activation::leaky_relu || activation.negative_slope() >= 0;
}

// The first rule's pass that fits at `index`; the last rule, a single layer's pass, always does.
template <class Rule, std::size_t N>
auto first_fit(const Rule (&rules)[N], const Layers& layers, std::size_t index, Device device) {
  decltype(rules[0](layers, index, device)) pass;
  for (Rule rule : rules)
    if ((pass = rule(layers, index, device))) break;
  return pass;
}

}  // namespace

// What the layers befriend (see layers.hpp): the fused passes, which work on the layers' buffers,
// and the rules that place them.
struct StageAccess {
  template <class L>
  class ActivationForward;
  class NormReluMaxPoolForward;
  class NormReluMaxPoolBackward;
  class ReluMaxPoolBackward;
  class ConvNormBackward;
  class ResidualReluBackward;
  class ActivationBackward;

  // Forward rules: the pass over the layers from `first` on, or null where they do not fit it.
  static std::unique_ptr<ForwardPass> norm_relu_max_pool_forward(const Layers& layers, std::size_t first,
                                                                 Device device);
  static std::unique_ptr<ForwardPass> activation_forward(const Layers& layers, std::size_t first, Device device);
  static std::unique_ptr<ForwardPass> layer_forward(const Layers& layers, std::size_t first, Device device);
  // Backward rules: the pass over the layers up to `last`, or null where they do not fit it.
  static std::unique_ptr<BackwardPass> norm_relu_max_pool_backward(const Layers& layers, std::size_t last,
                                                                   Device device);
  static std::unique_ptr<BackwardPass> relu_max_pool_backward(const Layers& layers, std::size_t last,
                                                              Device device);
  static std::unique_ptr<BackwardPass> conv_norm_backward(const Layers& layers, std::size_t last, Device device);
  static std::unique_ptr<BackwardPass> residual_relu_backward(const Layers& layers, std::size_t last,
                                                              Device device);
  static std::unique_ptr<BackwardPass> activation_backward(const Layers& layers, std::size_t last, Device device);
  static std::unique_ptr<BackwardPass> layer_backward(const Layers& layers, std::size_t last, Device device);

  // The stages, and the index of each one's first layer in first_layers.
  static std::vector<std::unique_ptr<Stage>> stages(const Layers& layers, Device device,
                                                    std::vector<std::size_t>& first_layers);

  // Whether layers[first...] are batch norm, ReLU and 2-d max pooling, which the CPU computes in
  // one pass over the norm's input that never stores the normalized tensor.
  static bool norm_relu_max_pool_at(const Layers& layers, std::size_t first, Device device) {
    const Pool* pool = layer_at<Pool>(layers, first + 2);
    return device.is_cpu() && layer_at<BatchNorm2d>(layers, first) &&
           is_relu(layer_at<ActivationLayer>(layers, first + 1)) && pool && pool->kind_ == Pool::Kind::max &&
           pool->spatial_dims_ == 2;
  }
  // The convolution at `index` if it has a bias, whose gradient a batch norm after it can sum
  // while it has each plane of its own input gradient in cache.
  static Conv* biased_conv_at(const Layers& layers, std::size_t index) {
    Conv* conv = layer_at<Conv>(layers, index);
    return conv && conv->bias_ ? conv : nullptr;
  }

  // The layer's forward with the activation applied by its kernel as each output is stored, into
  // its output_; false, having computed nothing, where the kernel cannot for this problem.
  static bool forward_with_activation(Conv& conv, const Tensor& x, bool,
                                      const ActivationLayer& activation) {
    conv.prepare_forward(x);
    if (!conv_forward_activation(conv.geometry_, conv.input_, conv.rounded_.weight(*conv.weight_),
                                 conv.bias_ ? conv.bias_->value : Tensor(), conv.output_, activation.kind(),
                                 activation.negative_slope(), conv.weight_->packs.get()))
      return false;
    conv.rounded_.round(conv.output_);  // rounding keeps signs: ReLU(round(y)) = round(ReLU(y))
    return true;
  }
  static bool forward_with_activation(Linear& linear, const Tensor& x, bool,
                                      const ActivationLayer& activation) {
    linear.prepare_forward(x);
    if (!linear_forward_activation(linear.input_, linear.rounded_.weight(*linear.weight_),
                                   linear.bias_ ? linear.bias_->value : Tensor(), linear.output_,
                                   activation.kind(), activation.negative_slope()))
      return false;
    linear.rounded_.round(linear.output_);
    return true;
  }
  // Always fuses: the rule places it where it can (a ReLU, on the CPU).
  static bool forward_with_activation(BatchNorm2d& norm, const Tensor& x, bool training,
                                      const ActivationLayer&) {
    norm.normalize(x, training, true);
    return true;
  }
  // Where `layer` is a convolution at full precision, its next forward computes into
  // `destination` if it has the output's shape, dtype and device (Conv::prepare_forward keeps such
  // a buffer, whose images may lie apart: see conv_forward): Plan::infer_into.
  static void lend_output(Layer& layer, const Tensor& destination) {
    Conv* conv = dynamic_cast<Conv*>(&layer);
    if (conv && conv->precision() == Precision::full) conv->output_ = destination;
  }
  // Always fuses: the rule places it after a residual block's sum only where it is a ReLU.
  static bool forward_with_activation(Residual& block, const Tensor& x, bool training,
                                      const ActivationLayer&) {
    block.sum_forward(x, training, true);
    return true;
  }
};

// A layer and the activation after it, in one pass where the layer's kernel can apply the
// activation as it stores each output (see forward_with_activation), else one after the other.
template <class L>
class StageAccess::ActivationForward final : public ForwardPass {
 public:
  ActivationForward(L& layer, ActivationLayer& activation)
      : ForwardPass({&layer, &activation}), layer_(layer), activation_(activation) {}
  const Tensor& forward(const Tensor& x, bool training) override {
    if (!forward_with_activation(layer_, x, training, activation_))
      return activation_.forward(layer_.forward(x, training), training);
    // The activation's output is the layer's buffer; its backward works from it.
    activation_.adopted_ = true;
    activation_.input_ = Tensor();
    activation_.output_ = layer_.output_;
    return activation_.output_;
  }

 private:
  L& layer_;
  ActivationLayer& activation_;
};

class StageAccess::NormReluMaxPoolForward final : public ForwardPass {
 public:
  NormReluMaxPoolForward(BatchNorm2d& norm, ActivationLayer& relu, Pool& pool)
      : ForwardPass({&norm, &relu, &pool}), norm_(norm), pool_(pool) {}
  const Tensor& forward(const Tensor& x, bool training) override {
    norm_.prepare_forward(x, training);
    norm_.output_ = Tensor();  // the normalized tensor is never stored
    pool_.geometry_ = PoolGeometry::make(x.shape(), pool_.options_, pool_.spatial_dims_, pool_.type().c_str());
    const Shape& pooled = pool_.geometry_.output_shape();
    Layer::ensure(pool_.output_, pooled, x.dtype(), x.device());
    Tensor none;
    batch_norm2d_relu_max_pool_forward(
        norm_.input_, norm_.gamma_->value, norm_.beta_->value, norm_.running_mean_->value,
        norm_.running_var_->value, training, norm_.momentum_, norm_.eps_, pool_.geometry_, pool_.output_,
        training ? Layer::ensure(norm_.pool_affine_, {x.size(1), 2}, x.dtype(), x.device()) : none,
        norm_.save_mean_, norm_.save_invstd_, norm_.shard_sum());
    pool_.argmax_current_ = training;
    pool_.argmax_ = Tensor();
    pool_.input_ = Tensor();
    pool_.fused_with_norm_ = true;
    return pool_.output_;
  }

 private:
  BatchNorm2d& norm_;
  Pool& pool_;
};

// The backward of NormReluMaxPoolForward in one pass; a convolution with a bias before the norm
// gets its bias gradient from it (see biased_conv_at) and then runs the rest of its backward.
class StageAccess::NormReluMaxPoolBackward final : public BackwardPass {
 public:
  NormReluMaxPoolBackward(Conv* conv, BatchNorm2d& norm, ActivationLayer& relu, Pool& pool, bool after_conv)
      : BackwardPass(conv ? std::vector<const Layer*>{conv, &norm, &relu, &pool}
                          : std::vector<const Layer*>{&norm, &relu, &pool}),
        conv_(conv), norm_(norm), pool_(pool), after_conv_(after_conv) {}
  const Tensor& backward(const Tensor& grad_y, bool need_grad_x, bool) override {
    pool_.check_grad_output(grad_y, pool_.output_);
    pool_.check_training_forward();
    norm_.check_saved_input();
    if (conv_ || need_grad_x)
      norm_.grad_input_buffer(after_conv_ && TrainingStepBackward::active());
    else
      norm_.grad_input_ = Tensor();
    Tensor& grad_norm_input = norm_.grad_input_;
    const bool bias_from_norm = conv_ && conv_->bias_grad_from_norm();
    batch_norm2d_relu_max_pool_backward(pool_.geometry_, grad_y.contiguous(), norm_.pool_affine_, norm_.input_,
                                        norm_.gamma_->value, norm_.save_mean_, norm_.save_invstd_, grad_norm_input,
                                        norm_.gamma_->grad, norm_.beta_->grad,
                                        bias_from_norm ? &conv_->bias_->grad : nullptr, norm_.shard_sum());
    if (!conv_) return grad_norm_input;
    const Tensor& grad_x = conv_->backward_impl(grad_norm_input, need_grad_x, !bias_from_norm);
    Layer::release_gradient(grad_norm_input, grad_y);
    return grad_x;
  }

 private:
  Conv* conv_;
  BatchNorm2d& norm_;
  Pool& pool_;
  bool after_conv_;  // the norm's input is a convolution's output
};

// Max pooling's backward followed by the ReLU's before it, in one pass (CPU): the ReLU's output is
// the pooling's input, positive exactly where the ReLU's input is; at each window's argmax it is
// the pooling's output (a quarter of the reads for 2x2 windows).
class StageAccess::ReluMaxPoolBackward final : public BackwardPass {
 public:
  ReluMaxPoolBackward(ActivationLayer& relu, Pool& pool) : BackwardPass({&relu, &pool}), pool_(pool) {}
  // need_grad_x is always true: the rule places this pass after the model's first layer.
  const Tensor& backward(const Tensor& grad_y, bool, bool) override {
    pool_.check_grad_output(grad_y, pool_.output_);
    pool_.check_training_forward();
    const Tensor& relu_output = pool_.input_;
    Layer::ensure(pool_.grad_input_, relu_output.shape(), relu_output.dtype(), relu_output.device());
    max_pool_relu_backward(pool_.geometry_, grad_y.contiguous(), pool_.argmax_, pool_.output_,
                           pool_.grad_input_);
    return pool_.grad_input_;
  }

 private:
  Pool& pool_;
};

// A batch norm's backward, which also gives the convolution before it its bias gradient (see
// biased_conv_at) and, in a training step, writes its gradient over the convolution's output
// (TrainingStepBackward), then the rest of the convolution's backward: one pass less over the
// largest tensors, and one buffer less.
class StageAccess::ConvNormBackward final : public BackwardPass {
 public:
  ConvNormBackward(Conv& conv, BatchNorm2d& norm) : BackwardPass({&conv, &norm}), conv_(conv), norm_(norm) {}
  const Tensor& backward(const Tensor& grad_y, bool need_grad_x, bool) override {
    const bool bias_from_norm = conv_.bias_grad_from_norm();
    const Tensor& grad_conv_output = norm_.run_backward(grad_y, bias_from_norm ? &conv_.bias_->grad : nullptr,
                                                        TrainingStepBackward::active());
    const Tensor& grad_x = conv_.backward_impl(grad_conv_output, need_grad_x, !bias_from_norm);
    Layer::release_gradient(grad_conv_output, grad_y);
    return grad_x;
  }

 private:
  Conv& conv_;
  BatchNorm2d& norm_;
};

// A residual block's backward with the ReLU after it (Residual::sum_backward): the ReLU's
// gradient and the branches' sum share one buffer.
class StageAccess::ResidualReluBackward final : public BackwardPass {
 public:
  ResidualReluBackward(Residual& block, ActivationLayer& relu) : BackwardPass({&block, &relu}), block_(block) {}
  const Tensor& backward(const Tensor& grad_y, bool need_grad_x, bool) override {
    return block_.sum_backward(grad_y, need_grad_x, true);
  }

 private:
  Residual& block_;
};

// An activation's backward, written over its output's gradient where that is spare (see
// Stage::backward): one buffer fewer.
class StageAccess::ActivationBackward final : public BackwardPass {
 public:
  explicit ActivationBackward(ActivationLayer& activation) : BackwardPass({&activation}), activation_(activation) {}
  const Tensor& backward(const Tensor& grad_y, bool need_grad_x, bool grad_y_spare) override {
    if (!grad_y_spare || !need_grad_x || !grad_y.is_contiguous()) return activation_.backward(grad_y, need_grad_x);
    activation_.check_grad_output(grad_y, activation_.output_);
    Tensor grad = grad_y;  // the same storage
    activation_.backward_into(grad_y, grad);
    return grad_y;
  }

 private:
  ActivationLayer& activation_;
};

std::unique_ptr<ForwardPass> StageAccess::norm_relu_max_pool_forward(const Layers& layers, std::size_t first,
                                                                     Device device) {
  if (!norm_relu_max_pool_at(layers, first, device)) return nullptr;
  return std::make_unique<NormReluMaxPoolForward>(*layer_at<BatchNorm2d>(layers, first),
                                                  *layer_at<ActivationLayer>(layers, first + 1),
                                                  *layer_at<Pool>(layers, first + 2));
}

// Convolution and linear layers with an activation whose backward works from its output (CUDA:
// any such; the CPU: ReLU after some float32 convolutions), batch norm with a ReLU on the CPU, a
// residual block's sum with a ReLU.
std::unique_ptr<ForwardPass> StageAccess::activation_forward(const Layers& layers, std::size_t first,
                                                             Device device) {
  ActivationLayer* activation = layer_at<ActivationLayer>(layers, first + 1);
  if (!activation) return nullptr;
  if (backward_works_from_output(*activation)) {
    if (Conv* conv = layer_at<Conv>(layers, first))
      return std::make_unique<ActivationForward<Conv>>(*conv, *activation);
    if (Linear* linear = layer_at<Linear>(layers, first))
      return std::make_unique<ActivationForward<Linear>>(*linear, *activation);
  }
  BatchNorm2d* norm = layer_at<BatchNorm2d>(layers, first);
  if (norm && device.is_cpu() && is_relu(activation))
    return std::make_unique<ActivationForward<BatchNorm2d>>(*norm, *activation);
  if (Residual* block = layer_at<Residual>(layers, first); block && is_relu(activation))
    return std::make_unique<ActivationForward<Residual>>(*block, *activation);
  return nullptr;
}

std::unique_ptr<ForwardPass> StageAccess::layer_forward(const Layers& layers, std::size_t first, Device) {
  return std::make_unique<LayerForward>(*layers[first]);
}

std::unique_ptr<BackwardPass> StageAccess::norm_relu_max_pool_backward(const Layers& layers, std::size_t last,
                                                                       Device device) {
  // The same layers as norm_relu_max_pool_forward's, which the forward rules always give them.
  if (last < 2 || !norm_relu_max_pool_at(layers, last - 2, device)) return nullptr;
  return std::make_unique<NormReluMaxPoolBackward>(last >= 3 ? biased_conv_at(layers, last - 3) : nullptr,
                                                   *layer_at<BatchNorm2d>(layers, last - 2),
                                                   *layer_at<ActivationLayer>(layers, last - 1),
                                                   *layer_at<Pool>(layers, last),
                                                   last >= 3 && layer_at<Conv>(layers, last - 3));
}

std::unique_ptr<BackwardPass> StageAccess::relu_max_pool_backward(const Layers& layers, std::size_t last,
                                                                  Device device) {
  // The ReLU's input gradient is wanted: the ReLU is not the model's first layer.
  if (last < 2 || !device.is_cpu()) return nullptr;
  ActivationLayer* relu = layer_at<ActivationLayer>(layers, last - 1);
  Pool* pool = layer_at<Pool>(layers, last);
  if (!is_relu(relu) || !pool || pool->kind_ != Pool::Kind::max) return nullptr;
  return std::make_unique<ReluMaxPoolBackward>(*relu, *pool);
}

std::unique_ptr<BackwardPass> StageAccess::conv_norm_backward(const Layers& layers, std::size_t last,
                                                              Device device) {
  BatchNorm2d* norm = layer_at<BatchNorm2d>(layers, last);
  Conv* conv = norm && last >= 1 && device.is_cpu() ? layer_at<Conv>(layers, last - 1) : nullptr;
  if (!conv) return nullptr;
  return std::make_unique<ConvNormBackward>(*conv, *norm);
}

// The layers of activation_forward's residual block and ReLU.
std::unique_ptr<BackwardPass> StageAccess::residual_relu_backward(const Layers& layers, std::size_t last, Device) {
  Residual* block = last >= 1 ? layer_at<Residual>(layers, last - 1) : nullptr;
  if (!block || !is_relu(layer_at<ActivationLayer>(layers, last))) return nullptr;
  return std::make_unique<ResidualReluBackward>(*block, *layer_at<ActivationLayer>(layers, last));
}

std::unique_ptr<BackwardPass> StageAccess::activation_backward(const Layers& layers, std::size_t last, Device) {
  ActivationLayer* activation = layer_at<ActivationLayer>(layers, last);
  return activation ? std::make_unique<ActivationBackward>(*activation) : nullptr;
}

std::unique_ptr<BackwardPass> StageAccess::layer_backward(const Layers& layers, std::size_t last, Device) {
  return std::make_unique<LayerBackward>(*layers[last]);
}

std::vector<std::unique_ptr<Stage>> StageAccess::stages(const Layers& layers, Device device,
                                                        std::vector<std::size_t>& first_layers) {
  // The fusion rules, preferred first.
  using ForwardRule = std::unique_ptr<ForwardPass> (*)(const Layers&, std::size_t, Device);
  using BackwardRule = std::unique_ptr<BackwardPass> (*)(const Layers&, std::size_t, Device);
  static constexpr ForwardRule forward_rules[] = {norm_relu_max_pool_forward, activation_forward, layer_forward};
  static constexpr BackwardRule backward_rules[] = {norm_relu_max_pool_backward, relu_max_pool_backward,
                                                    conv_norm_backward, residual_relu_backward,
                                                    activation_backward, layer_backward};
  // Forward passes placed from the first layer on, backward ones from the last layer back, as
  // each direction runs: a batch norm after a convolution takes it into its backward pass only
  // where a ReLU and max pooling after it have not taken the norm first.
  std::vector<std::unique_ptr<ForwardPass>> forward;
  for (std::size_t first = 0; first < layers.size(); first += forward.back()->size())
    forward.push_back(first_fit(forward_rules, layers, first, device));
  std::vector<std::unique_ptr<BackwardPass>> backward;
  for (std::size_t end = layers.size(); end > 0; end -= backward.back()->size())
    backward.push_back(first_fit(backward_rules, layers, end - 1, device));
  std::reverse(backward.begin(), backward.end());

  // Each stage takes passes, whichever direction's ends first, until both directions end at the
  // same layer.
  std::vector<std::unique_ptr<Stage>> stages;
  std::size_t forward_end = 0, backward_end = 0;
  auto next_forward = forward.begin();
  auto next_backward = backward.begin();
  while (next_forward != forward.end()) {
    first_layers.push_back(forward_end);
    auto run = std::make_unique<Run>();
    do {
      if (forward_end <= backward_end) {
        forward_end += (*next_forward)->size();
        run->add(std::move(*next_forward++));
      } else {
        backward_end += (*next_backward)->size();
        run->add(std::move(*next_backward++));
      }
    } while (forward_end != backward_end);
    stages.push_back(std::move(run));
  }
  return stages;
}

Plan::Plan(const Layers& layers, Device device)
    : layers_(layers), device_(device), first_layers_(), stages_(StageAccess::stages(layers, device, first_layers_)) {}

// Activations smaller than this stay in cache between calls anyway: their blocks are kept, and
// the calls of a small model at batch 1 pay no allocator round trips.
constexpr std::size_t kReleasedActivationBytes = std::size_t{64} << 10;

const Tensor& Plan::forward(const Tensor& x, bool training, bool inference_only) {
  return inference_only ? infer_stages(x, stages_.size()) : forward_through(stages_, x, training);
}

// Each stage's tensors are dropped once the stage after it has read its output, and the allocator
// hands the freed blocks to the next stages' outputs. The outputs then go to memory that a stage or
// two before had just used, still in cache, where each layer's own buffers had sent every output
// to lines no layer had touched since the last call (frozen, 2 threads: SqueezeNet at batch 8
// 28.0-28.1 -> 22.2-23.0 ms, ResNet-50 at batch 1 29.7-30.4 -> 27.4-28.6 ms).
const Tensor& Plan::infer_stages(const Tensor& x, std::size_t end) {
  const Tensor* y = &x;
  for (std::size_t k = 0; k < end; ++k) inference_stage_done(k, stages_[k]->forward(*y, false), y);
  return *y;
}

void Plan::inference_stage_done(std::size_t k, const Tensor& out, const Tensor*& input) {
  const bool large = input->numel() * std::int64_t(dtype_size(input->dtype())) >=
                     std::int64_t(kReleasedActivationBytes);
  if (k > 0 && &out != input && large && device::freed_blocks_are_reused(device_)) release_stage_tensors(k - 1);
  input = &out;
}

const Tensor& Plan::infer_into(const Tensor& x, const Tensor& destination) {
  if (stages_.empty()) return x;
  const std::size_t last = stages_.size() - 1;
  const Tensor* y = &infer_stages(x, last);
  StageAccess::lend_output(*layers_[first_layers_[last]], destination);
  inference_stage_done(last, stages_[last]->forward(*y, false), y);
  return *y;
}

const Tensor& Plan::backward(const Tensor& grad_y, bool need_grad_x) {
  return backward_through(stages_, grad_y, need_grad_x, false, [&](std::size_t k) { release_forward_tensors(k); });
}

const Tensor& Plan::backward(const Tensor& grad_y, bool need_grad_x,
                             const std::function<void(std::size_t first)>& after_stage) {
  return backward_through(stages_, grad_y, need_grad_x, false, [&](std::size_t k) {
    release_forward_tensors(k);
    after_stage(first_layers_[k]);
  });
}

void Plan::release_forward_tensors(std::size_t k) {
  if (TrainingStepBackward::active() && device::freed_blocks_are_reused(device_)) release_stage_tensors(k);
}

void Plan::release_stage_tensors(std::size_t k) {
  const std::size_t end = k + 1 < first_layers_.size() ? first_layers_[k + 1] : layers_.size();
  for (std::size_t i = first_layers_[k]; i < end; ++i) layers_[i]->release_forward_tensors();
}

std::vector<std::string> Plan::describe() const {
  std::vector<std::string> descriptions;
  for (const auto& stage : stages_) descriptions.push_back(stage->description());
  return descriptions;
}

}  // namespace juanji::nn::execution
