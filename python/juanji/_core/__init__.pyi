"""
juanji C++ core
"""
from __future__ import annotations
import numpy
import typing
import typing_extensions
from . import kernels
from . import optim
from . import nn
from . import data
from . import distributed
__all__: list[str] = ['SelftestRow', 'Tensor', 'arange', 'avg_pool1d', 'avg_pool1d_backward', 'avg_pool2d', 'avg_pool2d_backward', 'config_string', 'conv1d', 'conv1d_backward', 'conv2d', 'conv2d_backward', 'convolve', 'convolve2d', 'correlate', 'correlate2d', 'cross_entropy', 'cross_entropy_backward', 'cuda_compiled', 'cuda_device_count', 'cuda_synchronize', 'data', 'distributed', 'dropout', 'empty', 'from_dlpack', 'from_numpy', 'full', 'get_num_threads', 'global_avg_pool2d', 'global_avg_pool2d_backward', 'kernels', 'leaky_relu', 'leaky_relu_backward', 'linear', 'linear_backward', 'load', 'load_metadata', 'load_safetensors', 'load_with_metadata', 'log_softmax', 'log_softmax_backward', 'manual_seed', 'max_pool1d', 'max_pool1d_backward', 'max_pool2d', 'max_pool2d_backward', 'mse_loss', 'mse_loss_backward', 'nn', 'ones', 'optim', 'rand', 'randn', 'relu', 'relu_backward', 'save_safetensors', 'selftest_rows', 'set_num_threads', 'set_simd_level', 'set_winograd', 'sigmoid', 'sigmoid_backward', 'simd_detected', 'simd_level', 'softmax', 'softmax_backward', 'storage_allocations', 'tanh', 'tanh_backward', 'tensor', 'version', 'winograd_enabled', 'zeros']
class Tensor:
    """
    An n-d float32/float64/bfloat16/int64 array on the CPU or a CUDA device, backed by shared 64-byte
    aligned storage. Views (reshape, slicing, transpose) share storage. On the CPU it exports the
    buffer protocol and __array__, so np.asarray(t) and t.numpy() are zero-copy (bfloat16 tensors
    through __array__ alone, as ml_dtypes.bfloat16 arrays); __dlpack__ trades it with PyTorch, JAX
    or CuPy without copies.
    """
    def __array__(self, dtype: typing.Any = None, copy: typing.Any = None) -> numpy.ndarray:
        ...
    def __dlpack__(self, *, stream: typing.Any = None, max_version: typing.Any = None, dl_device: typing.Any = None, copy: typing.Any = None) -> typing_extensions.CapsuleType:
        ...
    def __dlpack_device__(self) -> tuple[int, int]:
        ...
    def __getitem__(self, arg0: typing.Any) -> Tensor:
        ...
    def __len__(self) -> int:
        ...
    def __repr__(self) -> str:
        ...
    def astype(self, arg0: typing.Any) -> Tensor:
        ...
    def clone(self) -> Tensor:
        ...
    def contiguous(self) -> Tensor:
        ...
    def fill_(self, arg0: typing.SupportsFloat | typing.SupportsIndex) -> Tensor:
        ...
    def is_contiguous(self) -> bool:
        ...
    def item(self) -> float:
        ...
    def numel(self) -> int:
        ...
    def numpy(self) -> numpy.ndarray:
        """
        A NumPy array sharing this tensor's memory (no copy); CPU tensors only. bfloat16 gives an ml_dtypes.bfloat16 array (ImportError without ml_dtypes).
        """
    def permute(self, *args) -> Tensor:
        ...
    def reshape(self, *args) -> Tensor:
        ...
    def to(self, target: typing.Any) -> Tensor:
        """
        to('cpu'|'cuda'|'cuda:N') moves; to('float64') converts (to 'bfloat16': rounded to nearest even).
        """
    def transpose(self, dim0: typing.Any, dim1: typing.Any) -> Tensor:
        ...
    @property
    def T(self) -> Tensor:
        ...
    @property
    def device(self) -> str:
        ...
    @property
    def dtype(self) -> numpy.dtype[typing.Any]:
        ...
    @property
    def ndim(self) -> int:
        ...
    @property
    def shape(self) -> tuple:
        ...
    @property
    def strides(self) -> tuple:
        """
        Strides in elements (NumPy's are in bytes).
        """
class SelftestRow:
    """
    One op at one SIMD level in selftest_rows(): its worst error (the difference from the reference over the size of the terms behind the reference's value), the tolerance it was held to (0: bit for bit), whether it passed, and the first failed check (failure, empty if ok).
    """
    def __repr__(self) -> str:
        ...
    @property
    def failure(self) -> str:
        ...
    @property
    def level(self) -> str:
        ...
    @property
    def max_error(self) -> float:
        ...
    @property
    def ok(self) -> bool:
        ...
    @property
    def op(self) -> str:
        ...
    @property
    def tolerance(self) -> float:
        ...
def _conv_algorithms(pass_: str, x: typing.Any, weight: typing.Any, stride: typing.Any = 1, padding: typing.Any = 0, dilation: typing.Any = 1, groups: typing.Any = 1) -> list:
    """
    [(name, why it refuses or None, why the default choice passes it over or None)] for the pass, in the order the CPU tries them: the first with two Nones runs.
    """
def _set_conv_algorithm(pass_: str, name: typing.Any) -> str:
    """
    Forces the pass's CPU convolution algorithm (None: choose); returns the previous name ('' for none).
    """
def arange(start: typing.SupportsFloat | typing.SupportsIndex, stop: typing.Any = None, step: typing.SupportsFloat | typing.SupportsIndex = 1.0, dtype: typing.Any = None) -> Tensor:
    ...
def avg_pool1d(x: typing.Any, kernel_size: typing.Any, stride: typing.Any = None, padding: typing.Any = 0, ceil_mode: bool = False, count_include_pad: bool = True) -> Tensor:
    """
    1-D average pooling of x (N, C, L), PyTorch semantics; stride defaults to kernel_size.
    """
def avg_pool1d_backward(grad_out: typing.Any, x: typing.Any, kernel_size: typing.Any, stride: typing.Any = None, padding: typing.Any = 0, ceil_mode: bool = False, count_include_pad: bool = True) -> Tensor:
    """
    Gradient of the average pooling w.r.t. x: each output's gradient is spread evenly over its window.
    """
def avg_pool2d(x: typing.Any, kernel_size: typing.Any, stride: typing.Any = None, padding: typing.Any = 0, ceil_mode: bool = False, count_include_pad: bool = True) -> Tensor:
    """
    2-D average pooling of x (N, C, H, W), PyTorch semantics; stride defaults to kernel_size.
    """
def avg_pool2d_backward(grad_out: typing.Any, x: typing.Any, kernel_size: typing.Any, stride: typing.Any = None, padding: typing.Any = 0, ceil_mode: bool = False, count_include_pad: bool = True) -> Tensor:
    """
    Gradient of the average pooling w.r.t. x: each output's gradient is spread evenly over its window.
    """
def config_string() -> str:
    ...
def conv1d(x: typing.Any, weight: typing.Any, bias: typing.Any = None, stride: typing.Any = 1, padding: typing.Any = 0, dilation: typing.Any = 1, groups: typing.Any = 1) -> Tensor:
    """
    Cross-correlation of x (N, C, L) with weight (K, C/groups, kL), plus bias (K).
    """
def conv1d_backward(grad_out: typing.Any, x: typing.Any, weight: typing.Any, stride: typing.Any = 1, padding: typing.Any = 0, dilation: typing.Any = 1, groups: typing.Any = 1) -> tuple:
    """
    Returns (grad_x, grad_weight, grad_bias) for the same arguments as the forward.
    """
def conv2d(x: typing.Any, weight: typing.Any, bias: typing.Any = None, stride: typing.Any = 1, padding: typing.Any = 0, dilation: typing.Any = 1, groups: typing.Any = 1) -> Tensor:
    """
    Cross-correlation of x (N, C, H, W) with weight (K, C/groups, R, S), plus bias (K). stride/dilation: int or pair; padding: int, pair, 'valid' or 'same' (TensorFlow's convention, asymmetric when it must be).
    """
def conv2d_backward(grad_out: typing.Any, x: typing.Any, weight: typing.Any, stride: typing.Any = 1, padding: typing.Any = 0, dilation: typing.Any = 1, groups: typing.Any = 1) -> tuple:
    """
    Returns (grad_x, grad_weight, grad_bias) for the same arguments as the forward.
    """
def convolve(f: typing.Any, g: typing.Any, mode: str = 'full') -> Tensor:
    """
    True 1-D convolution (kernel flipped), exactly numpy.convolve(f, g, mode).
    """
def convolve2d(a: typing.Any, k: typing.Any, mode: str = 'full') -> Tensor:
    """
    True 2-D convolution, exactly scipy.signal.convolve2d(a, k, mode) with zero fill.
    """
def correlate(f: typing.Any, g: typing.Any, mode: str = 'valid') -> Tensor:
    """
    1-D cross-correlation, exactly numpy.correlate(f, g, mode).
    """
def correlate2d(a: typing.Any, k: typing.Any, mode: str = 'full') -> Tensor:
    """
    2-D cross-correlation, exactly scipy.signal.correlate2d(a, k, mode) with zero fill.
    """
def cross_entropy(logits: typing.Any, labels: typing.Any, reduction: str = 'mean', label_smoothing: typing.SupportsFloat | typing.SupportsIndex = 0.0) -> Tensor:
    """
    Softmax cross-entropy of logits (N, C) against integer labels (N,) in [0, C): 'mean', 'sum' or 'none'. Numerically stable. label_smoothing eps in [0, 1] (PyTorch's definition) compares with the target (1 - eps) * onehot + eps / C.
    """
def cross_entropy_backward(logits: typing.Any, labels: typing.Any, reduction: str = 'mean', label_smoothing: typing.SupportsFloat | typing.SupportsIndex = 0.0) -> Tensor:
    """
    d loss / d logits = softmax(logits) - target (onehot(labels) unless smoothed), divided by N for 'mean'.
    """
def cuda_compiled() -> bool:
    ...
def cuda_device_count() -> int:
    ...
def cuda_synchronize(device: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
    """
    Waits for the GPU's queued work (for timing); ValueError without CUDA or a visible GPU.
    """
def dropout(x: typing.Any, p: typing.SupportsFloat | typing.SupportsIndex, training: bool = True) -> tuple:
    """
    Inverted dropout: returns (y, mask) with mask 0 or 1/(1-p); draws from the seeded generator (juanji.manual_seed).
    """
def empty(*args, dtype: typing.Any = None, device: typing.Any = None) -> Tensor:
    ...
def from_dlpack(x: typing.Any) -> Tensor:
    """
    Imports any object with __dlpack__ (PyTorch, NumPy, JAX, CuPy) or a DLPack capsule without copying.
    """
def from_numpy(a: numpy.ndarray) -> Tensor:
    """
    Wraps a NumPy array. C-contiguous, aligned float32/float64/ml_dtypes.bfloat16 arrays are shared without copying (writes show on both sides; a read-only array gives a read-only tensor); other layouts (Fortran order, slices, byte-swapped arrays) are copied.
    """
def full(shape: typing.Any, fill_value: typing.SupportsFloat | typing.SupportsIndex, dtype: typing.Any = None, device: typing.Any = None) -> Tensor:
    ...
def get_num_threads() -> int:
    ...
def global_avg_pool2d(x: typing.Any) -> Tensor:
    """
    Mean of each channel: (N, C, H, W) -> (N, C, 1, 1).
    """
def global_avg_pool2d_backward(grad_out: typing.Any, x: typing.Any) -> Tensor:
    """
    Gradient of global_avg_pool2d w.r.t. x.
    """
def leaky_relu(x: typing.Any, negative_slope: typing.SupportsFloat | typing.SupportsIndex = 0.01) -> Tensor:
    """
    x for x > 0, else negative_slope * x.
    """
def leaky_relu_backward(grad_out: typing.Any, x: typing.Any, negative_slope: typing.SupportsFloat | typing.SupportsIndex = 0.01) -> Tensor:
    """
    grad_out times the derivative at x (negative_slope for x <= 0).
    """
def linear(x: typing.Any, w: typing.Any, b: typing.Any = None) -> Tensor:
    """
    Fully connected layer: x (N, in), w (out, in), b (out,) -> x w^T + b (N, out).
    """
def linear_backward(grad_out: typing.Any, x: typing.Any, w: typing.Any) -> tuple[Tensor, Tensor, Tensor]:
    """
    Gradients of linear: (grad_x = g w, grad_w = g^T x, grad_b = sum over rows of g).
    """
def load(path: typing.Any) -> nn.Sequential:
    """
    Rebuilds a model saved with Sequential.save; corrupt or mismatched files raise ValueError.
    """
def load_metadata(path: typing.Any) -> dict:
    """
    The user metadata a model checkpoint was saved with (read from its header alone).
    """
def load_safetensors(path: typing.Any) -> tuple[dict, dict]:
    """
    Read a safetensors checkpoint (F32, F64, BF16 and I64 tensors) into CPU tensors.

    Returns (tensors, metadata): dict name -> juanji.Tensor in file order, and the header's
    "__metadata__" as dict str -> str. Every size in the header is checked against the file
    before any data is read; a malformed or truncated file raises ValueError naming the file and
    the entry at fault. A missing or unreadable file raises OSError.
    """
def load_with_metadata(path: typing.Any) -> tuple[nn.Sequential, dict]:
    """
    (load(path), load_metadata(path)) from one reading of the file: what a caller that needs both uses, so that the two cannot come from different files.
    """
def log_softmax(x: typing.Any, dim: typing.Any = -1) -> Tensor:
    """
    x - logsumexp(x) along dim, with the maximum subtracted first.
    """
def log_softmax_backward(grad_out: typing.Any, x: typing.Any, dim: typing.Any = -1) -> Tensor:
    """
    Gradient w.r.t. x, recomputing the forward from x.
    """
def manual_seed(seed: typing.Any) -> None:
    """
    Seeds the one generator behind rand, randn, dropout and initialisation.
    """
def max_pool1d(x: typing.Any, kernel_size: typing.Any, stride: typing.Any = None, padding: typing.Any = 0, ceil_mode: bool = False) -> Tensor:
    """
    1-D max pooling of x (N, C, L), PyTorch semantics; stride defaults to kernel_size.
    """
def max_pool1d_backward(grad_out: typing.Any, x: typing.Any, kernel_size: typing.Any, stride: typing.Any = None, padding: typing.Any = 0, ceil_mode: bool = False) -> Tensor:
    """
    Gradient of the max pooling w.r.t. x: each output's gradient goes to the first maximum of its window.
    """
def max_pool2d(x: typing.Any, kernel_size: typing.Any, stride: typing.Any = None, padding: typing.Any = 0, ceil_mode: bool = False) -> Tensor:
    """
    2-D max pooling of x (N, C, H, W), PyTorch semantics; stride defaults to kernel_size.
    """
def max_pool2d_backward(grad_out: typing.Any, x: typing.Any, kernel_size: typing.Any, stride: typing.Any = None, padding: typing.Any = 0, ceil_mode: bool = False) -> Tensor:
    """
    Gradient of the max pooling w.r.t. x: each output's gradient goes to the first maximum of its window.
    """
def mse_loss(z: typing.Any, y: typing.Any, reduction: str = 'mean') -> Tensor:
    """
    Squared error: 'mean', 'sum', 'half_sum' (1/2 sum (z - y)^2) or 'none' (elementwise).
    """
def mse_loss_backward(z: typing.Any, y: typing.Any, reduction: str = 'mean') -> Tensor:
    """
    d loss / d z; for 'none' every element's loss has weight 1.
    """
def ones(*args, dtype: typing.Any = None, device: typing.Any = None) -> Tensor:
    """
    ones(*shape, dtype=None, device=None)
    """
def rand(*args, dtype: typing.Any = None) -> Tensor:
    """
    Uniform [0, 1) from the seeded generator; in bfloat16 the float32 draws truncated (rounding could give 1).
    """
def randn(*args, dtype: typing.Any = None) -> Tensor:
    """
    Standard normal from the seeded generator; in bfloat16 the float64 draws rounded to nearest.
    """
def relu(x: typing.Any) -> Tensor:
    """
    max(x, 0); relu'(0) = 0.
    """
def relu_backward(grad_out: typing.Any, x: typing.Any) -> Tensor:
    """
    grad_out times the derivative at x.
    """
def save_safetensors(path: typing.Any, tensors: typing.Any, metadata: typing.Any = None) -> None:
    """
    Write tensors to a checkpoint in the safetensors layout.

    path: str, bytes or os.PathLike; written under a temporary name beside it and renamed, so an
    existing checkpoint is replaced whole or not at all.
    tensors: dict name -> juanji.Tensor or NumPy array, saved in dict order. float32, float64,
    bfloat16 (BF16; ml_dtypes.bfloat16 arrays too) and int64 tensors keep their dtype; other
    integer arrays are saved as int64.
    metadata: optional dict str -> str, stored as the header's "__metadata__".
    """
def selftest_rows() -> list[SelftestRow]:
    """
    Runs every op forward and backward against the plain-loop references at every SIMD level this CPU has (see juanji.selftest, which prints them) and returns a row per op and level. Changes the SIMD level, the thread count, the forced convolution algorithms and the Winograd setting while it runs, and restores them.
    """
def set_num_threads(n: typing.Any) -> None:
    """
    Threads of every parallel region, process-wide: 1 to 4 per hardware thread (at least 64).
    """
def set_simd_level(level: str) -> str:
    """
    Caps the SIMD level (never above the detected one); returns the one in use.
    """
def set_winograd(enabled: bool) -> bool:
    """
    Turns Winograd F(2x2, 3x3) for stride-1 3x3 float32 CPU convolutions on or off; returns the previous setting.
    """
def sigmoid(x: typing.Any) -> Tensor:
    """
    1 / (1 + exp(-x)), without overflow for either sign.
    """
def sigmoid_backward(grad_out: typing.Any, x: typing.Any) -> Tensor:
    """
    grad_out times the derivative at x.
    """
def simd_detected() -> str:
    ...
def simd_level() -> str:
    ...
def softmax(x: typing.Any, dim: typing.Any = -1) -> Tensor:
    """
    exp(x) / sum(exp(x)) along dim, with the maximum subtracted first.
    """
def softmax_backward(grad_out: typing.Any, x: typing.Any, dim: typing.Any = -1) -> Tensor:
    """
    Gradient w.r.t. x, recomputing the forward from x.
    """
def storage_allocations() -> int:
    """
    Tensor storages that took fresh memory so far (a CPU block that an earlier tensor gave back does not count); a training step after the first adds none.
    """
def tanh(x: typing.Any) -> Tensor:
    """
    Hyperbolic tangent.
    """
def tanh_backward(grad_out: typing.Any, x: typing.Any) -> Tensor:
    """
    grad_out times the derivative at x.
    """
def tensor(data: typing.Any, dtype: typing.Any = None, device: typing.Any = None) -> Tensor:
    """
    A new tensor holding a copy of data (a sequence, NumPy array or Tensor). Python ints and floats give float32 unless dtype says otherwise; integer NumPy arrays need dtype=.
    """
def version() -> str:
    ...
def winograd_enabled() -> bool:
    ...
def zeros(*args, dtype: typing.Any = None, device: typing.Any = None) -> Tensor:
    """
    zeros(*shape, dtype=None, device=None)
    """
