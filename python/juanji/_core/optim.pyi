"""
SGD, Adam, AdamW and learning-rate schedules
"""
from __future__ import annotations
import collections.abc
import typing
__all__: list[str] = ['Adam', 'AdamW', 'CosineLR', 'LRSchedule', 'Optimizer', 'SGD', 'StepLR']
class Optimizer:
    """
    The base of SGD, Adam and AdamW.
    """
    def step(self) -> None:
        """
        Clips the gradients when max_grad_norm is set, then updates the parameters.
        """
    def zero_grad(self) -> None:
        """
        Sets every parameter's gradient to zero (model.backward adds to them).
        """
    @property
    def lr(self) -> float:
        """
        The learning rate; set it like the constructor's (finite, >= 0).
        """
    @lr.setter
    def lr(self, arg1: typing.SupportsFloat | typing.SupportsIndex) -> None:
        ...
    @property
    def max_grad_norm(self) -> float | None:
        ...
class SGD(Optimizer):
    def __init__(self, params: collections.abc.Iterable, lr: typing.SupportsFloat | typing.SupportsIndex, momentum: typing.SupportsFloat | typing.SupportsIndex = 0.0, nesterov: bool = False, weight_decay: typing.SupportsFloat | typing.SupportsIndex = 0.0, max_grad_norm: typing.SupportsFloat | typing.SupportsIndex | None = None) -> None:
        ...
    @property
    def momentum(self) -> float:
        ...
    @property
    def nesterov(self) -> bool:
        ...
    @property
    def weight_decay(self) -> float:
        ...
class Adam(Optimizer):
    """
    Adam with PyTorch's semantics; weight_decay is an L2 term added to the gradient.
    """
    def __init__(self, params: collections.abc.Iterable, lr: typing.SupportsFloat | typing.SupportsIndex = 0.001, betas: tuple[typing.SupportsFloat | typing.SupportsIndex, typing.SupportsFloat | typing.SupportsIndex] = (0.9, 0.999), eps: typing.SupportsFloat | typing.SupportsIndex = 1e-08, weight_decay: typing.SupportsFloat | typing.SupportsIndex = 0.0, max_grad_norm: typing.SupportsFloat | typing.SupportsIndex | None = None) -> None:
        ...
    @property
    def betas(self) -> tuple[float, float]:
        ...
    @property
    def eps(self) -> float:
        ...
    @property
    def weight_decay(self) -> float:
        ...
class AdamW(Adam):
    """
    Adam with decoupled weight decay (w -= lr * weight_decay * w), PyTorch's AdamW.
    """
    def __init__(self, params: collections.abc.Iterable, lr: typing.SupportsFloat | typing.SupportsIndex = 0.001, betas: tuple[typing.SupportsFloat | typing.SupportsIndex, typing.SupportsFloat | typing.SupportsIndex] = (0.9, 0.999), eps: typing.SupportsFloat | typing.SupportsIndex = 1e-08, weight_decay: typing.SupportsFloat | typing.SupportsIndex = 0.01, max_grad_norm: typing.SupportsFloat | typing.SupportsIndex | None = None) -> None:
        ...
class LRSchedule:
    """
    The base of StepLR and CosineLR.
    """
    def step(self) -> None:
        ...
    @property
    def epoch(self) -> int:
        ...
    @property
    def steps(self) -> int:
        ...
class StepLR(LRSchedule):
    def __init__(self, optimizer: Optimizer, step_size: typing.Any, gamma: typing.SupportsFloat | typing.SupportsIndex = 0.1, warmup_epochs: typing.Any = 0, steps_per_epoch: typing.Any = 1) -> None:
        ...
class CosineLR(LRSchedule):
    def __init__(self, optimizer: Optimizer, t_max: typing.Any, eta_min: typing.SupportsFloat | typing.SupportsIndex = 0.0, warmup_epochs: typing.Any = 0, steps_per_epoch: typing.Any = 1) -> None:
        ...
