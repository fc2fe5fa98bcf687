"""Learning-rate schedules: ``lr_at(schedule, base_lr, epoch, epochs, step_fraction)``.

A schedule is a pure function of where training is, so a resumed run needs no saved
scheduler state, and a rate changed on resume (``--resume RUN --lr 1e-4``) takes effect.

- ``constant``: the base rate throughout.
- ``cosine``: base * (1 + cos(pi t)) / 2 for t in [0, 1] over all steps (Loshchilov & Hutter).
- ``iwae``: Burda et al. (2016): stage i = 0, 1, 2, ... lasts 3^i epochs at base * 10^(-i/7);
  stages 0..7 are the paper's 3,280 epochs.
- ``exponential``: base * gamma^(epoch - 1), PyTorch's ExponentialLR stepped once per epoch
  (PyTorch-VAE's recipe: gamma 0.95).
"""

from __future__ import annotations

import math


def iwae_stage(epoch: int) -> int:
    """The stage i of 1-based ``epoch``: stages of 1, 3, 9, 27, ... epochs."""
    i, end = 0, 1
    while epoch > end:
        i += 1
        end += 3**i
    return i


def iwae_epochs(stages: int) -> int:
    """Epochs of the first ``stages`` stages: sum of 3^i for i < stages (8 stages: 3,280)."""
    return sum(3**i for i in range(stages))


def lr_at(schedule: str, base: float, epoch: int, epochs: int, step_fraction: float = 0.0,
          gamma: float = 0.95) -> float:
    """The learning rate for 1-based ``epoch`` of ``epochs``, ``step_fraction`` into it
    (``gamma``: the exponential schedule's factor per epoch)."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        t = min(1.0, ((epoch - 1) + step_fraction) / max(epochs, 1))
        return base * 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "iwae":
        return base * 10 ** (-iwae_stage(epoch) / 7)
    if schedule == "exponential":
        return base * gamma ** (epoch - 1)
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")


PER_STEP = {"cosine"}  # schedules that change within an epoch

__all__ = ["PER_STEP", "iwae_epochs", "iwae_stage", "lr_at"]
