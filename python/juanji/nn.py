"""Layers, Sequential and losses; all implemented in the C++ core."""

from ._core.nn import *  # noqa: F401,F403
from ._core.nn import (  # noqa: F401
    Activation,
    AvgPool1d,
    AvgPool2d,
    BatchNorm2d,
    Conv,
    Conv1d,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Flatten,
    GlobalAvgPool2d,
    Layer,
    LeakyReLU,
    Linear,
    MaxPool1d,
    MaxPool2d,
    MSELoss,
    Parameter,
    Pool,
    ReLU,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
)
