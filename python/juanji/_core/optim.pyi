"""
SGD and learning-rate schedules
"""
from __future__ import annotations
import collections.abc
import typing
__all__: list[str] = ['CosineLR', 'SGD', 'StepLR']
class SGD:
    def __init__(self, params: collections.abc.Iterable, lr: typing.SupportsFloat | typing.SupportsIndex, momentum: typing.SupportsFloat | typing.SupportsIndex = 0.0, nesterov: bool = False, weight_decay: typing.SupportsFloat | typing.SupportsIndex = 0.0) -> None:
        ...
    def step(self) -> None:
        ...
    @property
    def lr(self) -> float:
        """
        The learning rate; set it like the constructor's (finite, >= 0).
        """
    @lr.setter
    def lr(self, arg1: typing.SupportsFloat | typing.SupportsIndex) -> None:
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
class StepLR:
    def __init__(self, optimizer: SGD, step_size: typing.Any, gamma: typing.SupportsFloat | typing.SupportsIndex = 0.1) -> None:
        ...
    def step(self) -> None:
        ...
    @property
    def epoch(self) -> int:
        ...
class CosineLR:
    def __init__(self, optimizer: SGD, t_max: typing.Any, eta_min: typing.SupportsFloat | typing.SupportsIndex = 0.0) -> None:
        ...
    def step(self) -> None:
        ...
    @property
    def epoch(self) -> int:
        ...
