"""Optimizers (SGD with momentum/Nesterov, Adam, AdamW; all with max_grad_norm clipping) and
per-epoch or per-step learning-rate schedules with linear warm-up, in C++."""

from ._core.optim import SGD, Adam, AdamW, CosineLR, Optimizer, StepLR  # noqa: F401
