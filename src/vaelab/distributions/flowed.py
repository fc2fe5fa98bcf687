"""``Flowed``: a normalizing-flow posterior, z = flow(z0) with z0 from a ``DiagNormal``, which
keeps log q of its own draws (the flows themselves are vaelab.models.flows)."""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from vaelab.distributions.base import Distribution
from vaelab.distributions.euclidean import DiagNormal


def _wide(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class Flowed(Distribution):
    """A normalizing-flow posterior: z = flow(z0), z0 ~ ``base`` (a DiagNormal), for an
    invertible ``flow(z0, context) -> (z, log |det dz/dz0|)`` with per-item ``context`` tensors
    (B, ...) (vaelab.models.flows). Its density is the change of variables

        log q(z) = log base(z0) - log |det dz/dz0|,

    known where z0 is: at this object's own draws. ``rsample`` keeps log q of each draw, and
    ``log_prob(z)`` returns it for a tensor ``rsample`` returned (the flows have no cheap
    inverse, so log q of any other code is refused). No closed-form KL: ``kl_divergence``
    takes the Monte-Carlo estimate at the draw. ``mean`` is the flow's image of the base
    mean, flow(mu): the mean of q itself has no closed form. The flow runs in fp32 (or
    wider) even under autocast."""

    def __init__(self, base: DiagNormal, flow: Callable, context: tuple[torch.Tensor, ...] = ()):
        self.base, self.flow, self.context = base, flow, tuple(context)
        # id(z) -> (a weak reference to z, log q(z)) for each draw while the draw lives: a long
        # importance-sampled evaluation keeps no draws it has done with
        self._drawn: dict[int, tuple[weakref.ref, torch.Tensor]] = {}
        self._mean: torch.Tensor | None = None
        self._grad = torch.is_grad_enabled()  # the mean, computed when first asked, as if computed here

    def push(self, z0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(flow(z0), log |det|) for base codes z0 (..., B, D)."""
        with torch.autocast(z0.device.type, enabled=False):
            return self.flow(_wide(z0), tuple(_wide(c) for c in self.context))

    @property
    def mean(self) -> torch.Tensor:
        if self._mean is None:
            with torch.set_grad_enabled(self._grad):
                self._mean = self.push(self.base.mean)[0]
        return self._mean

    def rsample(self, sample_shape=(), generator=None) -> torch.Tensor:
        z0 = self.base.rsample(sample_shape, generator)
        z, log_det = self.push(z0)
        key, drawn = id(z), self._drawn

        def forget(ref: weakref.ref) -> None:  # z is gone: so is its entry (and not a newer one at its id)
            if drawn.get(key, (None,))[0] is ref:
                del drawn[key]

        drawn[key] = (weakref.ref(z, forget), self.base.log_prob(z0) - log_det)
        return z

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        ref, log_q = self._drawn.get(id(z), (None, None))
        if ref is not None and ref() is z:
            return log_q
        raise ValueError("a flow posterior's log q(z|x) is known only at its own draws (pass the tensor its "
                         "rsample returned): the flow is not inverted")

    def params(self) -> dict[str, torch.Tensor]:
        return {"code": self.mean, "base_mu": self.base.loc, "base_logvar": self.base.logvar}
