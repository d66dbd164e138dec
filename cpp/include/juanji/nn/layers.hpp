// Layers: each owns its parameters, its output and input-gradient buffers (reused while the batch
// shape stays the same, so training allocates nothing after the first step) and a pair of
// forward/backward functions. Rule, as in the functional kernels: backward overwrites parameter
// gradients and the returned input gradient; nothing accumulates across calls. Layers run on the
// device of their input (the CPU or a CUDA GPU), which must be their parameters' device; their
// buffers are allocated there.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "juanji/json.hpp"
#include "juanji/ops/conv.hpp"
#include "juanji/ops/dense.hpp"
#include "juanji/ops/pool.hpp"
#include "juanji/tensor.hpp"

namespace juanji::nn {

struct Parameter {
  // local_name, prefixed with the layer's place in the containers it is in: "3.body.0.weight"
  // (as PyTorch's state_dict names it)
  std::string name;
  std::string local_name;  // "weight", "bias", "running_mean"...
  Tensor value;
  Tensor grad;       // undefined for buffers that are not trained (running statistics)
  // A weight or bias, which the model learns (trainable() until it is frozen), not a buffer.
  bool learned = false;
  // A frozen model's (Sequential::freeze): the layouts its layer's kernels made of value, kept.
  std::shared_ptr<PackedWeights> packs;
  bool trainable() const { return grad.defined(); }
};

enum class Init { he, xavier };

namespace execution {
// The one type the layers befriend: the stages of a model's execution plan (cpp/src/nn/plan.cpp),
// which fuse the kernels of consecutive layers, working on their buffers.
struct StageAccess;
}  // namespace execution

// Moves parameters and their gradients to device, all or (on an error) none of them.
void move_parameters(const std::vector<std::shared_ptr<Parameter>>& parameters, Device device);

// Mixed precision (set_precision): full computes in the parameters' dtype; bf16 makes the
// convolutions and linear layers compute as bfloat16 hardware does, from their input, weights
// and output gradient rounded to bfloat16, accumulating in float32, their output and input
// gradient rounded to bfloat16 (kept in float32 tensors); the weights stay float32 masters,
// their gradients float32 sums; every other layer, the loss and the optimizer compute in float32.
enum class Precision : std::uint8_t { full, bf16 };
// "fp32" (full: float64 parameters compute in float64) and "bf16"; other names throw
// std::invalid_argument listing these.
Precision precision_from_name(const std::string& name);
const char* precision_name(Precision precision);

// A layer's lock. Exclusive (and recursive: its holder may take it again) for the calls that use
// the layer's buffers or change it; shared for eval-mode inference on replicas (Sequential::infer),
// which only reads the parameters, so that such calls run side by side. A waiting exclusive caller
// holds off new shared ones. A shared holder must not ask for it exclusively.
class LayerMutex {
 public:
  void lock();
  void unlock();
  // The exclusive holder's shared takes count as exclusive ones.
  void lock_shared();
  void unlock_shared();

 private:
  // One of the owner's takes given back; the last wakes the waiting callers.
  void release_owned(std::unique_lock<std::mutex>& guard);
  std::mutex mutex_;
  std::condition_variable released_;
  std::thread::id owner_;
  int depth_ = 0;  // the owner's takes
  int readers_ = 0;
  int writers_waiting_ = 0;
};

class Layer {
 public:
  virtual ~Layer() = default;
  virtual std::string type() const = 0;
  // Constructor arguments as a JSON object: what make_layer (and so a checkpoint) rebuilds the
  // layer from.
  virtual Json config() const = 0;
  // Output shape for an input shape; throws std::invalid_argument naming the layer if it does not fit.
  virtual Shape output_shape(const Shape& input) const = 0;
  virtual double flops(const Shape& input) const { (void)input; return 0.0; }
  // The returned tensor is owned by the layer and valid until its next forward.
  virtual const Tensor& forward(const Tensor& x, bool training) = 0;
  // grad_y has the shape of the last forward's output. Returns grad_x (layer-owned: a tensor
  // member of this layer or of one inside it, which the caller may release_gradient once it has
  // used it) unless need_grad_x is false (first layer), in which case the result is undefined.
  virtual const Tensor& backward(const Tensor& grad_y, bool need_grad_x) = 0;
  // Drops the gradient a backward returned (a tensor some layer owns) once the caller is done with
  // it, unless it is `passed` (what the caller was given, which a backward may hand back as its
  // own result). Its block goes back to the allocator (the host arena), where the next request
  // that fits takes it: a backward pass then holds a few gradients at a time, not one per layer.
  static void release_gradient(const Tensor& gradient, const Tensor& passed);
  // Drops what the last forward kept for the backward, leaving the layer as before its first
  // forward (a backward then needs a new forward). A training step's backward calls it once it is
  // done with the layer, where freed blocks serve later requests (execution::Plan), so that this
  // memory serves the rest of that backward. A layer of one's own may keep its tensors.
  virtual void release_forward_tensors() {}
  // Whether backward reads the tensor the last forward returned, beyond its shape: where it does
  // not, a container may write over that tensor (Residual adds its shortcut into it).
  virtual bool backward_reads_output() const { return true; }
  std::vector<std::shared_ptr<Parameter>>& parameters() { return parameters_; }
  const std::vector<std::shared_ptr<Parameter>>& parameters() const { return parameters_; }
  // backward for a training loop of one's own: the parameter gradients are added to those in
  // p.grad (zero_grad() clears them), as PyTorch's backward() accumulates; returns grad_x
  // (layer-owned). Takes the Lock.
  const Tensor& backward_accumulate(const Tensor& grad_y);
  // Sets every trainable parameter's gradient to zero. Takes the Lock.
  void zero_grad();
  // The mode a caller's forward uses when it does not say (a fresh layer trains); a container
  // sets it for the layers inside it too. Layer::forward itself always takes the mode it is given.
  bool training() const { return training_.load(); }
  // A frozen layer (see frozen()) refuses train(true) with std::invalid_argument.
  virtual void train(bool mode = true);
  void eval() { train(false); }
  // Whether this layer belongs to a frozen model (Sequential::freeze, or the replicas that
  // Sequential::infer computes with): one for inference, whose parameters are read-only. It refuses
  // training-mode forwards, backward, train(true), to() and loading a state dict, each with
  // std::invalid_argument; its forward drops the activations it is done with.
  bool frozen() const { return frozen_.load(); }
  // Throws that std::invalid_argument for a frozen layer: `call` ("to") would change it.
  void check_not_frozen(const char* call) const;
  // The precision of this layer's next forward and its backward; a container sets it for the
  // layers inside it too.
  Precision precision() const { return precision_.load(); }
  virtual void set_precision(Precision precision) { precision_.store(precision); }
  // The arguments inside the parentheses of this layer's line in repr() ("1, 6, kernel_size=(5,
  // 5)..."), in PyTorch's wording where PyTorch has the layer; by default the config's entries.
  virtual std::string extra_repr() const;
  // Casts parameters to dtype (float32/float64); buffers follow on the next forward.
  void to(DType dtype);
  // Moves parameters and their gradients to device; buffers follow on the next forward.
  virtual void to(Device device);
  // A layer of this type and config with buffers of its own, for eval-mode calls that run side by
  // side with this layer's (Sequential::infer), which gives it this layer's parameter values
  // before each use; a container's holds replicas of its layers. Null where such a copy would
  // not compute what this layer does: a layer type that make_layer does not know, unless it
  // overrides this (as one that keeps state outside its parameters must, returning null).
  virtual std::shared_ptr<Layer> replicate() const;
  // Serializes the calls that use this layer's buffers; a container's calls also use its
  // layers'. Take it with a Layer::Lock (or SharedLock), which takes the layers' inside too.
  LayerMutex& mutex() const { return *mutex_; }
  // The container (Sequential, Residual, Concat) this layer is in, or null: a layer is in one
  // container at most.
  const Layer* owner() const { return owner_.load(); }

  // Holds the mutexes of a layer and of every layer inside it, in the order of a depth-first walk
  // from the outermost: every Lock follows that order, so two never deadlock. Calls on one model
  // (or any part of it) then run one at a time while different models run side by side.
  class Lock {
   public:
    explicit Lock(const Layer& layer);

   private:
    std::vector<std::unique_lock<LayerMutex>> locks_;
  };
  // The same mutexes in the same order, shared: what eval-mode inference on replicas holds.
  class SharedLock {
   public:
    explicit SharedLock(const Layer& layer);

   private:
    std::vector<std::shared_lock<LayerMutex>> locks_;
  };

 protected:
  std::shared_ptr<Parameter> add_parameter(const std::string& name, Tensor value, bool trainable);
  // Reuses `buffer` when it already has this shape, dtype and device.
  static Tensor& ensure(Tensor& buffer, const Shape& shape, DType dtype, Device device);
  // Every backward starts here: grad_y must match the last forward's output (shape, dtype,
  // device), since backward reads what that forward kept; a frozen layer has no backward.
  void check_grad_output(const Tensor& grad_y, const Tensor& output) const;
  std::vector<std::shared_ptr<Parameter>> parameters_;

 private:
  friend class Container;
  friend class RoundedOperands;
  friend struct execution::StageAccess;
  // Names every parameter prefix + its local name; containers pass each layer inside its place.
  virtual void name_parameters(const std::string& prefix);
  // This layer's mutex and those of the layers inside it, outermost first (see Lock).
  virtual void collect_mutexes(std::vector<LayerMutex*>& out) const;
  // collect_mutexes' list for a Lock or SharedLock.
  static std::vector<LayerMutex*> mutexes_within(const Layer& layer);
  std::unique_ptr<LayerMutex> mutex_ = std::make_unique<LayerMutex>();
  std::atomic<const Layer*> owner_{nullptr};
  std::atomic<bool> training_{true};
  std::atomic<Precision> precision_{Precision::full};
  std::atomic<bool> frozen_{false};
  friend class Sequential;  // freeze() marks the layers of the frozen copy
};

// A convolution's or linear layer's operands under Precision::bf16: its input, weight and output
// gradient rounded to bfloat16, in float32 buffers of its own.
class RoundedOperands {
 public:
  // The input the forward computes with (x itself, contiguous, unless bf16), after checking that
  // bf16 has float32 CPU parameters; readies the weight the same way.
  Tensor prepare(Precision precision, const Tensor& x, const Parameter& weight, const std::string& layer);
  // Whether the last prepare() rounded (the backward follows its forward's precision).
  bool active() const { return active_; }
  const Tensor& weight(const Parameter& parameter) const { return active_ ? weight_ : parameter.value; }
  // grad_y as the backward uses it (contiguous; rounded where active).
  Tensor grad_output(const Tensor& grad_y);
  // Rounds an output or input gradient in place where active.
  void round(Tensor& t) const;
  // Drops the rounded input and output gradient (Layer::release_forward_tensors).
  void release();

 private:
  bool active_ = false;
  Tensor input_, weight_, grad_output_;
};

// The layer in PyTorch's nested style: "Sequential(\n  (0): Conv2d(1, 6, kernel_size=(5, 5), ...)\n...)".
std::string repr(const Layer& layer);

class Conv : public Layer {
 public:
  // spatial_dims 1 (Conv1d) or 2 (Conv2d)
  Conv(int spatial_dims, std::int64_t in_channels, std::int64_t out_channels,
       std::vector<std::int64_t> kernel_size, ConvOptions options, bool bias, Init init = Init::he);
  std::string type() const override { return spatial_dims_ == 1 ? "Conv1d" : "Conv2d"; }
  Json config() const override;
  std::string extra_repr() const override;
  Shape output_shape(const Shape& input) const override;
  double flops(const Shape& input) const override;
  const Tensor& forward(const Tensor& x, bool training) override;
  const Tensor& backward(const Tensor& grad_y, bool need_grad_x) override;
  void release_forward_tensors() override;
  bool backward_reads_output() const override { return false; }
  const Parameter& weight() const { return *weight_; }

 private:
  friend struct execution::StageAccess;
  ConvGeometry geometry(const Shape& input) const;
  // Checks x and readies geometry_, input_ and output_ for a forward.
  void prepare_forward(const Tensor& x);
  // backward, leaving the bias gradient alone unless bias_grad (a batch norm after this layer
  // may have written it).
  const Tensor& backward_impl(const Tensor& grad_y, bool need_grad_x, bool bias_grad);
  // Whether a batch norm after this layer may write its bias gradient: the sum of its own input
  // gradient, which bf16 would have rounded first, and which must have the bits of the layer's own
  // (conv_bias_grad_sums_planes). After a forward.
  bool bias_grad_from_norm() const;
  int spatial_dims_;
  std::int64_t in_channels_, out_channels_;
  std::vector<std::int64_t> kernel_size_;
  ConvOptions options_;
  std::shared_ptr<Parameter> weight_, bias_;
  ConvGeometry geometry_{};
  Tensor input_, output_, grad_input_;
  RoundedOperands rounded_;
};

class Linear : public Layer {
 public:
  Linear(std::int64_t in_features, std::int64_t out_features, bool bias, Init init = Init::he);
  std::string type() const override { return "Linear"; }
  Json config() const override;
  Shape output_shape(const Shape& input) const override;
  double flops(const Shape& input) const override;
  const Tensor& forward(const Tensor& x, bool training) override;
  const Tensor& backward(const Tensor& grad_y, bool need_grad_x) override;
  void release_forward_tensors() override;
  bool backward_reads_output() const override { return false; }

 private:
  friend struct execution::StageAccess;
  // Checks x and readies input_ and output_ for a forward.
  void prepare_forward(const Tensor& x);
  std::int64_t in_features_, out_features_;
  std::shared_ptr<Parameter> weight_, bias_;
  Tensor input_, output_, grad_input_;
  RoundedOperands rounded_;
};

class Pool : public Layer {
 public:
  enum class Kind { max, average };
  Pool(Kind kind, int spatial_dims, PoolOptions options);
  std::string type() const override;
  Json config() const override;
  Shape output_shape(const Shape& input) const override;
  double flops(const Shape& input) const override;
  const Tensor& forward(const Tensor& x, bool training) override;
  const Tensor& backward(const Tensor& grad_y, bool need_grad_x) override;
  void release_forward_tensors() override;

 private:
  friend struct execution::StageAccess;
  // Max pooling's backward reads the argmax that only a training-mode forward keeps.
  void check_training_forward() const;
  Kind kind_;
  int spatial_dims_;
  PoolOptions options_;
  PoolGeometry geometry_{};
  Tensor input_, output_, argmax_, grad_input_;
  // The last forward was a training-mode one, whose argmax_ is kept (or, fused with the batch norm
  // before, whose windows' maxima that stage's backward finds again).
  bool argmax_current_ = false;
  // The last forward ran in one pass with the batch norm and ReLU before this layer (a stage of
  // a model's plan), which did not keep input_: only that stage can go back through it.
  bool fused_with_norm_ = false;
};

class GlobalAvgPool2d : public Layer {
 public:
  std::string type() const override { return "GlobalAvgPool2d"; }
  Json config() const override { return Json::object(); }
  Shape output_shape(const Shape& input) const override;
  double flops(const Shape& input) const override;
  const Tensor& forward(const Tensor& x, bool training) override;
  const Tensor& backward(const Tensor& grad_y, bool need_grad_x) override;
  void release_forward_tensors() override;

 private:
  Tensor input_, output_, grad_input_;
};

class ActivationLayer : public Layer {
 public:
  explicit ActivationLayer(Activation kind, double negative_slope = 0.01);
  std::string type() const override;
  Json config() const override;
  Shape output_shape(const Shape& input) const override { return input; }
  double flops(const Shape& input) const override;
  const Tensor& forward(const Tensor& x, bool training) override;
  const Tensor& backward(const Tensor& grad_y, bool need_grad_x) override;
  void release_forward_tensors() override;
  Activation kind() const { return kind_; }
  double negative_slope() const { return negative_slope_; }

 private:
  friend struct execution::StageAccess;
  // grad_x (may be grad_y itself) from grad_y and what the last forward kept.
  void backward_into(const Tensor& grad_y, Tensor& grad_x) const;
  Activation kind_;
  double negative_slope_;
  // output_ is y = f(x) computed by the previous layer's forward (a stage of a model's plan), its
  // buffer, and input_ was not kept.
  bool adopted_ = false;
  Tensor input_, output_, grad_input_;
};

class Softmax : public Layer {
 public:
  std::string type() const override { return "Softmax"; }
  Json config() const override { return Json::object(); }
  Shape output_shape(const Shape& input) const override { return input; }
  const Tensor& forward(const Tensor& x, bool training) override;
  const Tensor& backward(const Tensor& grad_y, bool need_grad_x) override;
  void release_forward_tensors() override;

 private:
  Tensor input_, output_, grad_input_;
};

class Dropout : public Layer {
 public:
  explicit Dropout(double p);
  std::string type() const override { return "Dropout"; }
  Json config() const override;
  Shape output_shape(const Shape& input) const override { return input; }
  const Tensor& forward(const Tensor& x, bool training) override;
  const Tensor& backward(const Tensor& grad_y, bool need_grad_x) override;
  void release_forward_tensors() override;

 private:
  double p_;
  bool last_training_ = false;
  Tensor output_, mask_, grad_input_;
};

class Flatten : public Layer {
 public:
  std::string type() const override { return "Flatten"; }
  Json config() const override { return Json::object(); }
  Shape output_shape(const Shape& input) const override;
  const Tensor& forward(const Tensor& x, bool training) override;
  const Tensor& backward(const Tensor& grad_y, bool need_grad_x) override;
  void release_forward_tensors() override;

 private:
  Shape input_shape_;
  Tensor output_, grad_input_;
};

// sync: in data-parallel training (distributed::world_size() > 1) a training-mode forward
// normalizes with the statistics of the global batch, summed over the ranks' shards, and its
// backward follows them; otherwise each rank uses its own shard's (the default, as in PyTorch).
class BatchNorm2d : public Layer {
 public:
  BatchNorm2d(std::int64_t channels, double eps = 1e-5, double momentum = 0.1, bool sync = false);
  std::string type() const override { return "BatchNorm2d"; }
  bool sync() const { return sync_; }
  void set_sync(bool sync) { sync_ = sync; }
  Json config() const override;
  std::string extra_repr() const override;
  Shape output_shape(const Shape& input) const override;
  double flops(const Shape& input) const override;
  const Tensor& forward(const Tensor& x, bool training) override;
  const Tensor& backward(const Tensor& grad_y, bool need_grad_x) override;
  void release_forward_tensors() override;
  bool backward_reads_output() const override { return false; }

 private:
  friend struct execution::StageAccess;
  // Checks x and readies input_, the saved statistics' buffers and last_training_ for a forward.
  void prepare_forward(const Tensor& x, bool training);
  // Checks x, readies the buffers and normalizes (with ReLU applied to the output if relu).
  const Tensor& normalize(const Tensor& x, bool training, bool relu);
  // Checks grad_y against the last forward (a training-mode one); grad_input_, and its channel
  // sums into *grad_input_sums when given. With over_input, grad_input_ is written over input_
  // (see execution::TrainingStepBackward), which no later backward can then read.
  const Tensor& run_backward(const Tensor& grad_y, Tensor* grad_input_sums, bool over_input = false);
  // Checks that the last forward was a training-mode one whose input no backward has overwritten.
  void check_saved_input() const;
  // grad_input_ for a backward: written over input_ where over_input.
  Tensor& grad_input_buffer(bool over_input);
  // The sum over the ranks' shards where statistics are synchronized now, else empty.
  ShardSum shard_sum() const;
  std::int64_t channels_;
  double eps_, momentum_;
  bool sync_;
  std::shared_ptr<Parameter> gamma_, beta_, running_mean_, running_var_;
  Tensor input_, output_, save_mean_, save_invstd_, grad_input_;
  // Each channel's scale and shift (C, 2) where the last forward ran fused with a ReLU and max
  // pooling (a stage of a model's plan): that stage's backward finds the windows' maxima again.
  Tensor pool_affine_;
  bool last_training_ = false;  // backward needs the batch statistics of a training-mode forward
  bool input_overwritten_ = false;  // by a backward's gradient, since the last forward
};

// Named layers: the general classes above with their kind fixed, so that each layer has a type
// of its own (in Python too: isinstance(layer, nn.ReLU)).
class Conv1d : public Conv {
 public:
  Conv1d(std::int64_t in_channels, std::int64_t out_channels, std::vector<std::int64_t> kernel_size,
         ConvOptions options, bool bias = true, Init init = Init::he)
      : Conv(1, in_channels, out_channels, std::move(kernel_size), std::move(options), bias, init) {}
};
class Conv2d : public Conv {
 public:
  Conv2d(std::int64_t in_channels, std::int64_t out_channels, std::vector<std::int64_t> kernel_size,
         ConvOptions options, bool bias = true, Init init = Init::he)
      : Conv(2, in_channels, out_channels, std::move(kernel_size), std::move(options), bias, init) {}
};
class MaxPool1d : public Pool {
 public:
  explicit MaxPool1d(PoolOptions options) : Pool(Kind::max, 1, std::move(options)) {}
};
class MaxPool2d : public Pool {
 public:
  explicit MaxPool2d(PoolOptions options) : Pool(Kind::max, 2, std::move(options)) {}
};
class AvgPool1d : public Pool {
 public:
  explicit AvgPool1d(PoolOptions options) : Pool(Kind::average, 1, std::move(options)) {}
};
class AvgPool2d : public Pool {
 public:
  explicit AvgPool2d(PoolOptions options) : Pool(Kind::average, 2, std::move(options)) {}
};
class ReLU : public ActivationLayer {
 public:
  ReLU() : ActivationLayer(Activation::relu) {}
};
class LeakyReLU : public ActivationLayer {
 public:
  explicit LeakyReLU(double negative_slope = 0.01) : ActivationLayer(Activation::leaky_relu, negative_slope) {}
};
class Sigmoid : public ActivationLayer {
 public:
  Sigmoid() : ActivationLayer(Activation::sigmoid) {}
};
class Tanh : public ActivationLayer {
 public:
  Tanh() : ActivationLayer(Activation::tanh) {}
};

}  // namespace juanji::nn
