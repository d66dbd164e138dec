"""SGD (momentum, Nesterov, weight decay) and per-epoch learning-rate schedules, in C++."""

from ._core.optim import SGD, CosineLR, StepLR  # noqa: F401
