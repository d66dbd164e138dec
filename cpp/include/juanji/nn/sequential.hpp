// Sequential model: layers applied in order, with the whole training step (forward, loss,
// backward, optimizer update) in C++; it nests in containers as a layer. The model lives on one
// device (to() moves it); inputs and targets on another device are copied there once per call
// into reused staging buffers, and outputs stay on the model's device. On a GPU a training step
// reads back only the loss.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "juanji/checkpoint.hpp"
#include "juanji/json.hpp"
#include "juanji/nn/containers.hpp"
#include "juanji/optim/optimizer.hpp"

namespace juanji::nn {

namespace execution {
class Plan;
}  // namespace execution

// What a loss compares the output with, so that callers convert a target without knowing the loss.
enum class TargetKind {
  class_labels,  // int64 class indices, shape (N,)
  values,        // floats of the output's shape
};

class Loss {
 public:
  virtual ~Loss() = default;
  virtual std::string type() const = 0;
  virtual TargetKind target_kind() const = 0;
  // Mean loss over the batch; writes d loss / d output into grad (same shape as output) and,
  // when correct is not null, the number of correct predictions.
  virtual double forward_backward(const Tensor& output, const Tensor& target, Tensor& grad,
                                  std::int64_t* correct) = 0;
};

// Softmax cross-entropy on int64 labels (N,), fused and stable. label_smoothing eps in [0, 1] is
// PyTorch's: the target distribution is (1 - eps) * onehot + eps / C.
class CrossEntropyLoss : public Loss {
 public:
  explicit CrossEntropyLoss(double label_smoothing = 0.0);
  std::string type() const override { return "CrossEntropyLoss"; }
  TargetKind target_kind() const override { return TargetKind::class_labels; }
  double forward_backward(const Tensor& output, const Tensor& target, Tensor& grad,
                          std::int64_t* correct) override;
  double label_smoothing() const { return label_smoothing_; }

 private:
  double label_smoothing_;
};

// Mean squared error against a float target of the output's shape; correct counts argmax matches.
class MSELoss : public Loss {
 public:
  std::string type() const override { return "MSELoss"; }
  TargetKind target_kind() const override { return TargetKind::values; }
  double forward_backward(const Tensor& output, const Tensor& target, Tensor& grad,
                          std::int64_t* correct) override;
};

struct Evaluation {
  double loss;
  double accuracy;
};

// Layers applied in order: a model, and a layer that nests in any container. Every method may be
// called from any thread: the ones that run or change the layers hold a Lock (the mutexes of the
// model and of every layer in it, outermost first), so calls on one model run one at a time
// while different models run side by side. A reference a method returns (forward's output) stays
// valid only while the caller holds a Lock; forward_copy returns a copy taken under it.
class Sequential : public Container {
 public:
  Sequential();
  explicit Sequential(std::vector<std::shared_ptr<Layer>> layers);
  Sequential(const Sequential&) = delete;
  Sequential& operator=(const Sequential&) = delete;
  ~Sequential() override;
  // Appends a layer; one that already belongs to a container (this one or another) is refused
  // with std::invalid_argument, as is any layer once this Sequential is inside another container
  // (see Container::adopt). The constructor adds all of its layers or none.
  void add(std::shared_ptr<Layer> layer);

  const std::vector<std::shared_ptr<Layer>>& layers() const { return layers_; }

  std::string type() const override { return "Sequential"; }
  Json config() const override;  // {"layers": [{"type", "config"}...]}
  Shape output_shape(const Shape& input) const override;
  double flops(const Shape& input) const override;
  std::vector<Shape> child_input_shapes(const Shape& input) const override;

  // Moves every layer's parameters and gradients (optimizer state follows on its next step).
  void to(Device device) override;
  void to(DType dtype);
  Device device() const { return device_; }

  // Output of the last layer, owned by it: valid until the next forward. A model copies an input
  // on another device to its own; a Sequential inside a container takes its input as it comes.
  const Tensor& forward(const Tensor& x, bool training) override;
  // After a training-mode forward: the input's gradient (undefined unless need_grad_x), every
  // parameter's gradient overwritten.
  const Tensor& backward(const Tensor& grad_y, bool need_grad_x) override;
  bool backward_reads_output() const override;  // its last layer's
  // forward's output as a tensor of the caller's own: in eval mode (training false) infer's,
  // else copied under the model's lock.
  Tensor forward_copy(const Tensor& x, bool training);
  // The eval-mode forward(x, false), bit for bit, into a tensor of the caller's own; calls from
  // many threads run side by side. Each runs on a replica of the layers (Layer::replicate, kept
  // for the next call) that computes with the model's parameter values, holding a SharedLock of
  // the model: training steps and other changes wait for the calls in flight, and new calls for
  // them. Where a layer has no replica (a Python layer) or the model is on a GPU, the calls run
  // one at a time on the model itself.
  Tensor infer(const Tensor& x);
  // A Sequential of the layers' replicas; null where one has none.
  std::shared_ptr<Layer> replicate() const override;
  // A copy of the model for inference, as torch.jit.freeze and an onnxruntime session make: its
  // own copies of the parameters' values (read-only, no gradients), in eval mode, frozen (see
  // Layer::frozen); the model itself stays as it was, and later changes to it do not reach the
  // copy. Its convolutions keep the layouts their kernels make of the weights (PackedWeights)
  // from the first call on, instead of making them on every call. Its output is the model's
  // eval-mode output, bit for bit. std::invalid_argument where a layer has no copy (a Python
  // layer).
  std::shared_ptr<Sequential> freeze() const;
  // Every layer's output for x in eval mode (copies), for feature-map pictures.
  std::vector<Tensor> activations(const Tensor& x);
  double train_step(const Tensor& x, const Tensor& target, Loss& loss, optim::Optimizer& optimizer);
  // The mean loss and the accuracy over x in eval mode, batch_size images a forward. With mirror,
  // of the mean of the outputs for each image and for its mirror image (the last axis reversed):
  // test-time augmentation for a model trained on flipped images.
  Evaluation evaluate(const Tensor& x, const Tensor& target, Loss& loss, std::int64_t batch_size,
                      bool mirror = false);

  // Data-parallel training over the ranks of juanji/distributed.hpp (every rank calls it, after
  // distributed::init()): checks that every rank has the same parameters and buffers (names,
  // dtypes, shapes; std::invalid_argument on every rank otherwise), copies rank 0's values to
  // all ranks, and from then on train_step averages the trainable gradients over the ranks
  // before the update, so that a step on each rank's shard equals one on their concatenation.
  // Gradients travel in buckets of up to bucket_bytes (last layer first; a bucket holds one
  // dtype), each a non-blocking allreduce started as soon as the backward has finished the
  // layers in it, so the sums overlap the rest of the backward. The model must stay on the CPU.
  // With one rank it changes nothing.
  void distribute(std::int64_t bucket_bytes = std::int64_t{25} << 20);
  bool is_distributed() const;

  // Parameters (named by their place, see Parameter::name) that are trained.
  std::vector<std::shared_ptr<Parameter>> trainable_parameters() const;
  // Table of each layer's output shape, parameter count and FLOPs for one input of this shape,
  // given with or without the batch dimension, the layers inside containers indented under them.
  std::string summary(const Shape& input_shape) const;
  // JSON array of {"type": ..., "config": {...}}: what a checkpoint stores to rebuild the model,
  // laid out by kArchitectureFormat.
  std::string architecture_json() const;
  // The stages that forward and train_step run on the model's device, described by the layers'
  // types ("+" joining those computed in one pass, see cpp/src/nn/plan.hpp): for tests.
  std::vector<std::string> describe_plan();

  // Checkpoints in the safetensors layout: every parameter and buffer by name, the architecture
  // and `metadata` in __metadata__ (keys "format", "juanji_version", "architecture" are ours).
  void save(const std::string& path, const Metadata& metadata = {}) const;
  // Rebuilds the model from the architecture, having checked the file's tensor table against it
  // first (so no layer is built for tensors the file lacks): a missing, extra, mis-shaped or
  // mistyped tensor is a std::invalid_argument naming the file and the tensor.
  static std::shared_ptr<Sequential> load(const std::string& path, Metadata* metadata = nullptr);
  // The `metadata` a model checkpoint was saved with, from its header alone (no layer is built).
  static Metadata load_metadata(const std::string& path);

 private:
  friend class Concat;
  // A frozen Concat's branch (Concat::infer_into_output): the eval-mode forward, its last stage
  // computing into `destination` (of the output's shape, each image in one piece) where its first
  // layer is a convolution; the output, which lies in destination only where it did.
  const Tensor& infer_into(const Tensor& x, const Tensor& destination);
  void check_input(const Tensor& x) const;
  // forward without the lock: for the caller that holds it, or that alone has this model.
  const Tensor& run_forward(const Tensor& x, bool training);
  // One sample's shape: input_shape itself when the layers take a batch of it, else input_shape
  // without its first (batch) dimension when they take that; else the first attempt's error.
  Shape sample_shape(const Shape& input_shape) const;
  // t itself when it is on the model's device, else a copy of it in `staging` there.
  const Tensor& on_model_device(const Tensor& t, Tensor& staging) const;
  // The execution plan for the layers on `device`, built at the first use there after add
  // dropped it (a dtype does not change it).
  execution::Plan& plan(Device device);
  std::vector<std::shared_ptr<Layer>> layers_;
  Device device_;
  Tensor grad_output_, input_staging_, target_staging_;
  std::unique_ptr<execution::Plan> plan_;
  Device plan_device_;
  // Whether infer ran after the last forward: backward then has nothing to go back through.
  std::atomic<bool> last_forward_inferred_{false};
  // infer's replicas not in use, and whether the layers have them (a Python layer has not).
  struct Replicas;
  std::unique_ptr<Replicas> replicas_;
  // An idle replica, or a new one; null where a layer has none.
  std::shared_ptr<Sequential> idle_replica();
  // Readies a replica to compute what this model does: its parameters take this model's values
  // (sharing their storage), its device and each layer's precision this model's.
  void share_state_with(Sequential& replica) const;
  // Set by distribute(): the gradient buckets averaged over the ranks in train_step.
  struct GradientBuckets;
  std::unique_ptr<GradientBuckets> buckets_;
  // A distributed train_step's: pack bucket `index`'s gradients and sum them over the ranks,
  // started (non-blocking) while the backward runs, at once (blocking: MPI's tuned algorithms)
  // after it; wait for all the sums and write the means back into the gradients.
  void sum_bucket(std::size_t index, bool blocking);
  void finish_sums();
};

// A layer from its type name and constructor arguments (as Layer::config gives them).
std::shared_ptr<Layer> make_layer(const std::string& type, const Json& config);

// What load_state_dict did not match: names of the layer's parameters and buffers that the
// mapping lacks, and names in the mapping that the layer does not have.
struct StateDictReport {
  std::vector<std::string> missing, unexpected;
};

// Copies `tensors` (PyTorch's state_dict names and layouts: "3.body.0.weight", "1.running_var")
// into the parameters and buffers of `layer` with those names, cast to their dtype and copied to
// their device, in place: all of them or, on an error, none. Names ending in "num_batches_tracked"
// (PyTorch's batch-norm counter) are ignored. A shape mismatch or a non-float tensor is a
// std::invalid_argument listing every one; with `strict`, so are missing and unexpected names.
StateDictReport load_state_dict(Layer& layer, const std::vector<NamedTensor>& tensors, bool strict);

// Layers defined outside the library (Python subclasses of Layer) write a config of the form
// {"python_class": "module.Class", "arguments": {...}, "parameters": [{"name", "shape"}...]}: the
// parameters let load() check a checkpoint's tensors before building the layer, which the
// bindings do with the factory they register here (the Python module being loaded). Without one,
// such a layer cannot be loaded.
inline constexpr const char* kExternalClassKey = "python_class";
using ExternalLayerFactory = std::function<std::shared_ptr<Layer>(const Json& config)>;
void set_external_layer_factory(ExternalLayerFactory factory);

// The text layout of architectures and layer configs: the one checkpoints have always had
// (Python's json.dumps separators, doubles to 17 digits), kept so that a model saves to the same
// bytes as before.
inline constexpr JsonFormat kArchitectureFormat{", ", ": ", 17};

}  // namespace juanji::nn
