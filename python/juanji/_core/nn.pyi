"""
Layers, Sequential and losses
"""
from __future__ import annotations
import collections.abc
import juanji._core
import juanji._core.optim
import numpy
import typing
__all__: list[str] = ['Activation', 'AvgPool1d', 'AvgPool2d', 'BatchNorm2d', 'Concat', 'Container', 'Conv', 'Conv1d', 'Conv2d', 'CrossEntropyLoss', 'Dropout', 'Flatten', 'GlobalAvgPool2d', 'Identity', 'Layer', 'LeakyReLU', 'Linear', 'Loss', 'MSELoss', 'MaxPool1d', 'MaxPool2d', 'Parameter', 'Pool', 'ReLU', 'Residual', 'Sequential', 'Sigmoid', 'Softmax', 'Tanh']
class Parameter:
    """
    A named tensor of a layer; data and grad are NumPy views (no copy).
    """
    def __repr__(self) -> str:
        ...
    def numel(self) -> int:
        """
        The number of elements.
        """
    @property
    def data(self) -> numpy.ndarray:
        """
        The value as a NumPy view; assigning an array copies it in (same shape; cast to the dtype).
        """
    @data.setter
    def data(self, arg1: typing.Any) -> None:
        ...
    @property
    def device(self) -> str:
        ...
    @property
    def grad(self) -> typing.Any:
        """
        The gradient as a NumPy view (None for buffers); assigning an array copies it in.
        """
    @grad.setter
    def grad(self, arg1: typing.Any) -> None:
        ...
    @property
    def name(self) -> str:
        ...
    @property
    def shape(self) -> tuple:
        ...
    @property
    def tensor(self) -> juanji._core.Tensor:
        """
        The value as a juanji.Tensor (shares storage; on the model's device).
        """
    @property
    def trainable(self) -> bool:
        ...
class Layer:
    """
    The base of every layer. Subclass it in Python: call super().__init__(), declare parameters with self.add_parameter(name, array), define forward(self, x) and backward(self, grad_out) on NumPy arrays (backward sets each parameter's p.grad and returns the input's gradient), optionally get_config() (constructor arguments, for checkpoints), output_shape(self, shape), flops(self, shape) and extra_repr(). self.training tells forward the mode of the call.
    """
    def __call__(self, arg0: typing.Any) -> juanji._core.Tensor:
        ...
    def __init__(self) -> None:
        ...
    def __repr__(self) -> str:
        ...
    def add_parameter(self, name: str, value: typing.Any, trainable: bool = True) -> Parameter:
        """
        For layers written in Python: a parameter holding a copy of value (trainable: with a gradient; else a buffer saved with the model); returns the Parameter.
        """
    def backward(self, grad_out: typing.Any) -> juanji._core.Tensor:
        """
        After a training-mode forward: returns the input's gradient and adds every parameter's gradient to its p.grad (zero_grad() clears them).
        """
    def buffers(self) -> list:
        """
        Tensors saved with the model but not trained (batch-norm running statistics).
        """
    def config_json(self) -> str:
        """
        The constructor arguments as JSON, as a checkpoint stores them.
        """
    def eval(self) -> typing.Any:
        """
        train(False).
        """
    def forward(self, x: typing.Any, training: typing.Any = None) -> juanji._core.Tensor:
        """
        The output as a new tensor; training None means the layer's mode (train()/eval()). A training-mode forward keeps what backward needs.
        """
    def load_state_dict(self, state_dict: typing.Any, strict: bool = True) -> tuple[list[str], list[str]]:
        """
        Copies the arrays of a mapping (a state_dict; PyTorch's loads as {k: v.numpy()}) into the parameters and buffers of those names, all or none; num_batches_tracked is ignored. Shape mismatches, and with strict missing or unexpected names, raise ValueError listing them all. Returns (missing names, unexpected names).
        """
    def modules(self) -> list[Layer]:
        """
        This layer and every layer inside it, depth first (PyTorch's modules()): for instance [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)].
        """
    def named_parameters(self) -> list:
        """
        (name, Parameter) pairs of the trainable parameters, as PyTorch's named_parameters().
        """
    def output_shape(self, arg0: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]) -> tuple:
        ...
    def parameters(self) -> list:
        """
        The trainable parameters, named by their place ('3.body.0.weight').
        """
    def set_precision(self, precision: str) -> typing.Any:
        """
        Mixed precision for this layer and the layers inside it; returns the layer. 'bf16': convolutions and linear layers compute from their input, weights and output gradient rounded to bfloat16 with float32 sums, their outputs and input gradients rounded to bfloat16; weights, their gradients, optimizer state, the other layers and the loss stay float32. 'fp32' (the default): every layer computes in its parameters' dtype.
        """
    def state_dict(self) -> dict:
        """
        Every parameter and buffer by name, as NumPy views: PyTorch's state_dict names and layouts.
        """
    def to(self, target: typing.Any) -> typing.Any:
        """
        to('cpu'|'cuda'|'cuda:N') moves the parameters and gradients; to('float64') casts them. Returns the layer.
        """
    def train(self, mode: bool = True) -> typing.Any:
        """
        Sets the mode of this layer and the layers inside it; returns the layer.
        """
    def zero_grad(self) -> None:
        """
        Sets every parameter's gradient to zero.
        """
    @property
    def bias(self) -> typing.Any:
        ...
    @property
    def frozen(self) -> bool:
        """
        Whether the layer belongs to a frozen model (Sequential.freeze()): inference only.
        """
    @property
    def precision(self) -> str:
        """
        'fp32' or 'bf16' (see set_precision).
        """
    @property
    def training(self) -> bool:
        ...
    @property
    def type(self) -> str:
        ...
    @property
    def weight(self) -> typing.Any:
        ...
class Conv(Layer):
    """
    Convolution layers' common base.
    """
class Conv2d(Conv):
    def __init__(self, in_channels: typing.Any, out_channels: typing.Any, kernel_size: typing.Any, stride: typing.Any = 1, padding: typing.Any = 0, dilation: typing.Any = 1, groups: typing.Any = 1, bias: bool = True, init: str = 'he') -> None:
        ...
class Conv1d(Conv):
    def __init__(self, in_channels: typing.Any, out_channels: typing.Any, kernel_size: typing.Any, stride: typing.Any = 1, padding: typing.Any = 0, dilation: typing.Any = 1, groups: typing.Any = 1, bias: bool = True, init: str = 'he') -> None:
        ...
class Linear(Layer):
    def __init__(self, in_features: typing.Any, out_features: typing.Any, bias: bool = True, init: str = 'he') -> None:
        ...
class Pool(Layer):
    """
    Pooling layers' common base.
    """
class MaxPool2d(Pool):
    def __init__(self, kernel_size: typing.Any, stride: typing.Any = None, padding: typing.Any = 0, ceil_mode: bool = False) -> None:
        ...
class MaxPool1d(Pool):
    def __init__(self, kernel_size: typing.Any, stride: typing.Any = None, padding: typing.Any = 0, ceil_mode: bool = False) -> None:
        ...
class AvgPool2d(Pool):
    def __init__(self, kernel_size: typing.Any, stride: typing.Any = None, padding: typing.Any = 0, ceil_mode: bool = False, count_include_pad: bool = True) -> None:
        ...
class AvgPool1d(Pool):
    def __init__(self, kernel_size: typing.Any, stride: typing.Any = None, padding: typing.Any = 0, ceil_mode: bool = False, count_include_pad: bool = True) -> None:
        ...
class GlobalAvgPool2d(Layer):
    def __init__(self) -> None:
        ...
class Activation(Layer):
    """
    Activation layers' common base.
    """
class ReLU(Activation):
    def __init__(self) -> None:
        ...
class Sigmoid(Activation):
    def __init__(self) -> None:
        ...
class Tanh(Activation):
    def __init__(self) -> None:
        ...
class LeakyReLU(Activation):
    def __init__(self, negative_slope: typing.SupportsFloat | typing.SupportsIndex = 0.01) -> None:
        ...
class Softmax(Layer):
    def __init__(self) -> None:
        ...
class Dropout(Layer):
    def __init__(self, p: typing.SupportsFloat | typing.SupportsIndex = 0.5) -> None:
        ...
class Flatten(Layer):
    def __init__(self) -> None:
        ...
class BatchNorm2d(Layer):
    def __init__(self, num_features: typing.Any, eps: typing.SupportsFloat | typing.SupportsIndex = 1e-05, momentum: typing.SupportsFloat | typing.SupportsIndex = 0.1, *, sync: bool = False) -> None:
        """
        Batch normalization per channel of (N, C, H, W). sync=True: in data-parallel training (juanji.distributed with several ranks) training-mode statistics are those of the global batch, summed over the ranks' shards; otherwise each rank's own.
        """
    @property
    def sync(self) -> bool:
        """
        Whether training-mode statistics are synchronized across data-parallel ranks.
        """
    @sync.setter
    def sync(self, arg1: bool) -> None:
        ...
class Loss:
    def __call__(self, output: typing.Any, target: typing.Any) -> float:
        """
        The mean loss as a float.
        """
    def __repr__(self) -> str:
        ...
    def forward_backward(self, output: typing.Any, target: typing.Any) -> tuple[float, juanji._core.Tensor]:
        """
        (mean loss as a float, d loss / d output as a Tensor of the output's shape): what model.backward takes.
        """
    @property
    def type(self) -> str:
        ...
class CrossEntropyLoss(Loss):
    """
    Softmax cross-entropy on int64 labels; label_smoothing eps in [0, 1] (PyTorch's definition): the target is (1 - eps) * onehot + eps / C.
    """
    def __init__(self, label_smoothing: typing.SupportsFloat | typing.SupportsIndex = 0.0) -> None:
        ...
    def __repr__(self) -> str:
        ...
    @property
    def label_smoothing(self) -> float:
        ...
class MSELoss(Loss):
    def __init__(self) -> None:
        ...
class Container(Layer):
    """
    Layers made of layers' common base.
    """
class Residual(Container):
    """
    y = body(x) + shortcut(x); shortcut None is the identity, a projection shortcut any layer (typically a 1x1 Conv2d with a stride, then a BatchNorm2d).
    """
    def __init__(self, body: typing.Any, shortcut: typing.Any = None) -> None:
        ...
    @property
    def body(self) -> Layer:
        ...
    @property
    def shortcut(self) -> Layer:
        ...
class Concat(Container):
    """
    Runs each branch on the input and concatenates their outputs along the channels.
    """
    def __init__(self, *args) -> None:
        ...
    @property
    def branches(self) -> list[Layer]:
        ...
class Identity(Layer):
    def __init__(self) -> None:
        ...
class Sequential(Container):
    def __call__(self, x: typing.Any) -> juanji._core.Tensor:
        """
        Inference (eval mode, whatever train()/eval() say): the output as a new tensor.
        """
    def __getitem__(self, arg0: typing.Any) -> Layer:
        ...
    def __init__(self, *args) -> None:
        ...
    def __len__(self) -> int:
        ...
    def _plan(self) -> list[str]:
        """
        For tests: the stages that forward and train_step run on the model's device, each as its layers' types, '+' joining those one pass computes (forward | backward where they differ).
        """
    def activations(self, x: typing.Any) -> list[juanji._core.Tensor]:
        ...
    def append(self, layer: typing.Any) -> typing.Any:
        """
        Adds a layer at the end; returns the model.
        """
    def architecture_json(self) -> str:
        ...
    def distribute(self, bucket_mib: typing.SupportsFloat | typing.SupportsIndex = 25.0) -> Sequential:
        """
        Data-parallel training over the MPI ranks (juanji.distributed.init() first; every rank calls it): checks that all ranks have the same parameters and buffers, copies rank 0's values to all, and from then on train_step averages the gradients over the ranks before the update, in buckets of up to bucket_mib MiB. Returns the model.
        """
    def evaluate(self, x: typing.Any, target: typing.Any, loss: Loss = None, batch_size: typing.Any = 256, *, mirror: bool = False) -> tuple[float, float]:
        """
        (mean loss, accuracy) in eval mode. With mirror=True, of the mean of the outputs for each image and for its mirror image (the last axis reversed): test-time augmentation for a model trained with flips.
        """
    def export_onnx(self, path: typing.Any, input_shape: typing.Any) -> None:
        """
        Writes the model as an ONNX file (opset 17, IR version 8, a dynamic batch dimension N) for inputs of input_shape, with or without the batch dimension; needs the onnx package (pip install 'juanji[onnx]'). See juanji.onnx_io.export_onnx.
        """
    def forward(self, x: typing.Any, training: typing.Any = None) -> juanji._core.Tensor:
        ...
    def freeze(self) -> Sequential:
        """
        A copy of the model for inference, as torch.jit.freeze or an onnxruntime session makes: its own read-only copies of the parameters (no gradients), in eval mode, refusing training, backward, to() and load_state_dict with ValueError. The model itself is unchanged, and later changes to it do not reach the copy. Its convolutions lay their weights out for their kernels once, at the first call, instead of on every call (a fifth of a ResNet-50's time at batch 1); its outputs are the model's eval-mode outputs, bit for bit.
        """
    def save(self, path: typing.Any, metadata: typing.Any = None) -> None:
        """
        Writes a safetensors checkpoint; metadata (str -> str) goes into __metadata__.
        """
    def summary(self, input_shape: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]) -> str:
        """
        Prints (and returns) each layer's output shape, parameters and FLOPs for inputs of input_shape, with or without the batch dimension ((1, 28, 28) or (64, 1, 28, 28)).
        """
    def to(self, target: typing.Any) -> typing.Any:
        """
        to('cpu'|'cuda'|'cuda:N') moves every parameter and gradient (the optimizer's state follows on its next step); to('float64') casts them. Returns the model.
        """
    def train_step(self, x: typing.Any, target: typing.Any, loss: Loss, optimizer: juanji._core.optim.Optimizer) -> float:
        """
        Forward, loss, backward and the optimizer's update in C++; returns the batch's mean loss.
        """
    @property
    def device(self) -> str:
        ...
    @property
    def is_distributed(self) -> bool:
        ...
    @property
    def layers(self) -> list[Layer]:
        ...
