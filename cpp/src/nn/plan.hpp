// A model's execution plan: its layers grouped into stages that the forward pass and the training
// step loop over. A stage runs its layers' kernels, several layers' in one pass where the device
// has a kernel for them, so that the model itself knows nothing of fusion. The plan depends on the
// layers and the device only: fused kernels that depend on more (the dtype, the problem's size)
// refuse at run time, and their stage then runs the layers one by one.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "juanji/nn/layers.hpp"

namespace juanji::nn::execution {

// A run of layers, computed forward from its input to its output and backward from its output's
// gradient to its input's.
class Stage {
 public:
  virtual ~Stage() = default;
  // The output, owned by one of the stage's layers: valid until that layer's next forward.
  virtual const Tensor& forward(const Tensor& x, bool training) = 0;
  // After a training-mode forward: the input's gradient (layer-owned), undefined unless
  // need_grad_x. Parameter gradients are overwritten, as by Layer::backward. With grad_y_spare
  // (grad_y is a layer's buffer that nothing else holds and the caller is done with) the stage may
  // write over grad_y and return it.
  virtual const Tensor& backward(const Tensor& grad_y, bool need_grad_x, bool grad_y_spare) = 0;
  // Its layers' types, "+" joining those computed in one pass: the forward passes, then, where
  // the backward passes group the layers otherwise, those after " | " (LeNet's first stage on the
  // CPU: "Conv2d+ReLU, MaxPool2d | Conv2d, ReLU+MaxPool2d").
  virtual std::string description() const = 0;
};

// Marks a training step's backward on this thread while it lives (Sequential::train_step): the
// CPU's fused passes then write a batch norm's input gradient over the convolution output it
// normalized, which no backward reads after the norm's, instead of into a buffer of its own, and
// each stage's layers drop what their forward kept once the stage's backward is done (see
// Plan::release_forward_tensors). A backward of one's own training loop keeps all that, so that it
// may go back twice.
class TrainingStepBackward {
 public:
  TrainingStepBackward() { ++depth_; }
  ~TrainingStepBackward() { --depth_; }
  TrainingStepBackward(const TrainingStepBackward&) = delete;
  TrainingStepBackward& operator=(const TrainingStepBackward&) = delete;
  static bool active() { return depth_ > 0; }

 private:
  static thread_local int depth_;
};

class Plan {
 public:
  // The stages for `layers` (which must outlive the plan) on `device`.
  Plan(const std::vector<std::shared_ptr<Layer>>& layers, Device device);
  // The same contracts as Stage's, for the whole run of layers. An inference_only forward (an
  // eval-mode one that no backward follows: a frozen model's) keeps only the last stages' tensors
  // where freed blocks serve later requests.
  const Tensor& forward(const Tensor& x, bool training, bool inference_only = false);
  // An inference_only forward whose last stage computes into `destination` (of the output's shape,
  // each image in one piece) where the stage's first layer is a convolution: the output, which
  // lies in destination only where it did.
  const Tensor& infer_into(const Tensor& x, const Tensor& destination);
  const Tensor& backward(const Tensor& grad_y, bool need_grad_x);
  // The same, calling after_stage(first) as each stage's backward ends, where `first` is the
  // index of the stage's first layer: from then on the gradients of the parameters of layers
  // first... are final (a distributed step starts sending them).
  const Tensor& backward(const Tensor& grad_y, bool need_grad_x,
                         const std::function<void(std::size_t first)>& after_stage);
  // Each stage's description, in order.
  std::vector<std::string> describe() const;

 private:
  // In a training step's backward, where freed blocks serve later requests, drops what the
  // forward kept for the layers of stage k once its backward is done: the memory of the later
  // stages' activations then holds the earlier stages' gradients.
  void release_forward_tensors(std::size_t k);
  // Stages [0, end) of an inference_only forward, each stage's tensors dropped once the stage after
  // it has read its output (where freed blocks serve later requests); returns the last output.
  const Tensor& infer_stages(const Tensor& x, std::size_t end);
  // Stage k's output `out` is ready, stage k's input was *input: drops stage k - 1's tensors where
  // stage k has read them and they are large, and moves input on to out.
  void inference_stage_done(std::size_t k, const Tensor& out, const Tensor*& input);
  // Drops what the forward kept in the layers of stage k (Layer::release_forward_tensors).
  void release_stage_tensors(std::size_t k);
  const std::vector<std::shared_ptr<Layer>>& layers_;
  Device device_;
  std::vector<std::size_t> first_layers_;  // of each stage; filled while stages_ is built
  std::vector<std::unique_ptr<Stage>> stages_;
};

}  // namespace juanji::nn::execution
