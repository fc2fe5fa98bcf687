"""Learning-rate schedules: ``lr_at(schedule, base_lr, epoch, epochs, step_fraction)``.

A schedule is a pure function of where training is, so a resumed run needs no saved
scheduler state, and a rate changed on resume (``--resume RUN --lr 1e-4``) takes effect.

- ``constant``: the base rate throughout.
- ``cosine``: base * (1 + cos(pi t)) / 2 for t in [0, 1] over all steps (Loshchilov & Hutter).
- ``iwae``: Burda et al. (2016): stage i = 0, 1, 2, ... lasts 3^i epochs at base * 10^(-i/7);
  stages 0..7 are the paper's 3,280 epochs.
- ``exponential``: base * gamma^(epoch - 1), PyTorch's ExponentialLR stepped once per epoch
  (PyTorch-VAE's recipe: gamma 0.95).
- ``onecycle``: Smith's 1cycle as PyTorch's ``OneCycleLR`` defaults it, per step: over the first
  30% of the steps up from base / 25 to base along a half cosine, then down to base / 25e4
  (Adam's beta1 stays fixed: PyTorch's version also cycles it between 0.95 and 0.85). The judge
  classifier trains with it.
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
    if schedule == "onecycle":
        t = min(1.0, ((epoch - 1) + step_fraction) / max(epochs, 1))
        low = base / 25
        if t < ONECYCLE_WARMUP:
            return _cosine_from(low, base, t / ONECYCLE_WARMUP)
        return _cosine_from(base, low / 1e4, (t - ONECYCLE_WARMUP) / (1 - ONECYCLE_WARMUP))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")


ONECYCLE_WARMUP = 0.3  # the share of the steps the 1cycle rate rises (OneCycleLR's pct_start)


def _cosine_from(start: float, end: float, t: float) -> float:
    """From ``start`` at t = 0 to ``end`` at t = 1 along a half cosine."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * t))


PER_STEP = {"cosine", "onecycle"}  # schedules that change within an epoch

__all__ = ["PER_STEP", "iwae_epochs", "iwae_stage", "lr_at"]
