// Layers made of layers: Residual (y = body(x) + shortcut(x)), Concat (branches side by side along
// the channels) and, in sequential.hpp, Sequential. A container is a layer: containers nest, and
// their parameters are named by their place ("3.body.0.weight", as PyTorch's state_dict names
// them). Identity passes its input through (a residual block's shortcut, a placeholder).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "juanji/nn/layers.hpp"

namespace juanji::nn {

// Owns its layers (each layer is in one container at most), names their parameters "<key>.<name>"
// and lists them as its own, in the order of its layers.
class Container : public Layer {
 public:
  struct Child {
    std::string key;  // "0", "1"... in a Sequential or a Concat, "body" / "shortcut" in a Residual
    std::shared_ptr<Layer> layer;
  };
  ~Container() override;  // its layers may then join another container
  const std::vector<Child>& children() const { return children_; }
  // The input shape of each layer in children() for this container's input shape.
  virtual std::vector<Shape> child_input_shapes(const Shape& input) const = 0;
  // Sets the mode of this container and of every layer inside it.
  void train(bool mode = true) override;
  // Sets the precision of this container and of every layer inside it.
  void set_precision(Precision precision) override;
  // Those of every layer inside it.
  void release_forward_tensors() override;
  // Nothing: repr() shows the layers inside, one a line.
  std::string extra_repr() const override { return {}; }

 protected:
  // Takes `layer` as the child `key`. A layer that is in a container already (this one or
  // another) is refused with std::invalid_argument, `what` naming its place ("Sequential: layer
  // 3"): its parameters carry that container's names, and sharing weights between uses is not
  // supported. A container inside another takes no new layers: its owner lists its parameters.
  void adopt(const std::string& key, std::shared_ptr<Layer> layer, const std::string& what);
  // A {"type", "config"} object per child: what make_layer rebuilds each from.
  static Json entry_of(const Layer& layer);

 private:
  void name_parameters(const std::string& prefix) override;
  void collect_mutexes(std::vector<LayerMutex*>& out) const override;
  std::vector<Child> children_;
};

// root and every layer inside it, depth first in children() order (PyTorch's modules()).
std::vector<std::shared_ptr<Layer>> layers_within(const std::shared_ptr<Layer>& root);

// y = body(x) + shortcut(x), the shortcut being the identity when null (a projection shortcut is
// any layer: typically a 1x1 convolution with a stride and a batch norm). Backward: the output's
// gradient goes into both branches and their input gradients add.
class Residual : public Container {
 public:
  explicit Residual(std::shared_ptr<Layer> body, std::shared_ptr<Layer> shortcut = nullptr);
  std::string type() const override { return "Residual"; }
  Json config() const override;
  Shape output_shape(const Shape& input) const override;
  double flops(const Shape& input) const override;
  std::vector<Shape> child_input_shapes(const Shape& input) const override;
  const Tensor& forward(const Tensor& x, bool training) override;
  const Tensor& backward(const Tensor& grad_y, bool need_grad_x) override;
  void release_forward_tensors() override;
  std::shared_ptr<Layer> replicate() const override;  // of the body and the shortcut
  const std::shared_ptr<Layer>& body() const { return body_; }
  const std::shared_ptr<Layer>& shortcut() const { return shortcut_; }  // null: the identity

 private:
  friend struct execution::StageAccess;
  // The sum, with a ReLU applied as it is stored where relu (a ReLU after the block: one pass),
  // written over the body's output where the body's backward does not read it.
  const Tensor& sum_forward(const Tensor& x, bool training, bool relu);
  // The backward of sum_forward. With relu the branches go back from the ReLU's gradient, in a
  // buffer of the block's own, which then takes their input gradients' sum where it can.
  const Tensor& sum_backward(const Tensor& grad_y, bool need_grad_x, bool relu);
  std::shared_ptr<Layer> body_, shortcut_;
  Shape input_shape_;  // of the last forward
  Tensor output_, grad_input_, relu_grad_;
};

// Runs each branch on the input and concatenates their outputs along dimension 1 (the channels),
// as Inception's blocks do; backward splits the output's gradient by channel and adds the
// branches' input gradients.
class Concat : public Container {
 public:
  explicit Concat(std::vector<std::shared_ptr<Layer>> branches);
  std::string type() const override { return "Concat"; }
  Json config() const override;
  Shape output_shape(const Shape& input) const override;
  double flops(const Shape& input) const override;
  std::vector<Shape> child_input_shapes(const Shape& input) const override;
  const Tensor& forward(const Tensor& x, bool training) override;
  const Tensor& backward(const Tensor& grad_y, bool need_grad_x) override;
  void release_forward_tensors() override;
  std::shared_ptr<Layer> replicate() const override;  // of each branch

 private:
  // The output shape for the branches' output shapes; std::invalid_argument naming two that
  // cannot be concatenated.
  static Shape concatenated(const std::vector<Shape>& shapes);
  // Each branch's output shape for an input shape.
  std::vector<Shape> branch_output_shapes(const Shape& input) const;
  // A frozen block's forward: each branch's output goes into its channels of output_ as soon as it
  // is computed (straight from its last convolution where it can), and the branch's tensors are
  // dropped.
  const Tensor& infer_into_output(const Tensor& x);
  std::vector<std::shared_ptr<Layer>> branches_;
  std::vector<std::int64_t> channels_;  // of each branch's output, at the last forward
  std::vector<Tensor> branch_grads_;     // each branch's share of the output's gradient
  Tensor output_, grad_input_;
};

// y = x: the output is the input itself (no copy), and so is the input's gradient.
class Identity : public Layer {
 public:
  std::string type() const override { return "Identity"; }
  Json config() const override { return Json::object(); }
  Shape output_shape(const Shape& input) const override { return input; }
  const Tensor& forward(const Tensor& x, bool training) override;
  const Tensor& backward(const Tensor& grad_y, bool need_grad_x) override;
  void release_forward_tensors() override;

 private:
  Tensor output_, grad_input_;
};

}  // namespace juanji::nn
