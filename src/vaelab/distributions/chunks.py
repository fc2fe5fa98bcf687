"""``cat`` and ``to``: distributions of any kind concatenated along the batch (a split encoded
in chunks) and copied to a device."""

from __future__ import annotations

import copy

import torch

from vaelab.distributions.ball import WrappedNormal
from vaelab.distributions.base import Distribution
from vaelab.distributions.euclidean import Ancestral, DiagNormal, PointMass, Quantized
from vaelab.distributions.flowed import Flowed
from vaelab.distributions.sphere import VonMisesFisher


def _same_flow(a, b) -> bool:
    """One flow, or copies of one (``to`` copies a flow to the device of its codes): the same
    module type with equal weights."""
    if a is b:
        return True
    if not (isinstance(a, torch.nn.Module) and type(a) is type(b)):
        return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k].cpu(), sb[k].cpu())
                                          for k in sa)


def cat(dists: list[Distribution]) -> Distribution:
    """Concatenate distributions of one type along the batch (encode a split in chunks)."""
    first = dists[0]
    if isinstance(first, DiagNormal):
        return DiagNormal(torch.cat([d.loc for d in dists]), torch.cat([d.logvar for d in dists]))
    if isinstance(first, PointMass):
        return PointMass(torch.cat([d.value for d in dists]))
    if isinstance(first, Quantized):
        return Quantized(*(torch.cat([getattr(d, a) for d in dists]) for a in ("encoded", "quantized", "indices")))
    if isinstance(first, Ancestral):  # the chain's networks stay behind: keep the means of both layers
        return PointMass(torch.cat([d.mean for d in dists]))
    if isinstance(first, Flowed) and all(isinstance(d, Flowed) and _same_flow(d.flow, first.flow) for d in dists):
        base = DiagNormal(torch.cat([d.base.loc for d in dists]), torch.cat([d.base.logvar for d in dists]))
        return Flowed(base, first.flow, tuple(torch.cat(c) for c in zip(*(d.context for d in dists))))
    if isinstance(first, VonMisesFisher):
        return VonMisesFisher(torch.cat([d.loc for d in dists]), torch.cat([d.kappa for d in dists]),
                              first.correction)
    if isinstance(first, WrappedNormal) and all(isinstance(d, WrappedNormal) and d.c == first.c for d in dists):
        return WrappedNormal(torch.cat([d.loc for d in dists]),
                             torch.cat([d.scale.expand_as(d.loc) for d in dists]), first.c)
    raise TypeError(f"cannot concatenate {type(first).__name__} distributions")


def to(d: Distribution, device) -> Distribution:
    """A copy of ``d`` with its parameters on ``device``."""
    if isinstance(d, DiagNormal):
        return DiagNormal(d.loc.to(device), d.logvar.to(device))
    if isinstance(d, PointMass):
        return PointMass(d.value.to(device))
    if isinstance(d, Quantized):
        return Quantized(d.encoded.to(device), d.quantized.to(device), d.indices.to(device))
    if isinstance(d, Ancestral):
        return PointMass(d.mean.to(device))
    if isinstance(d, Flowed):
        flow = d.flow
        weights = list(flow.parameters()) if isinstance(flow, torch.nn.Module) else []
        if weights and weights[0].device != torch.device(device):  # a copy of the flow beside its codes
            flow = copy.deepcopy(flow).to(device)
        return Flowed(to(d.base, device), flow, tuple(c.to(device) for c in d.context))
    if isinstance(d, VonMisesFisher):
        return VonMisesFisher(d.loc.to(device), d.kappa.to(device), d.correction)
    if isinstance(d, WrappedNormal):
        return WrappedNormal(d.loc.to(device), d.scale.to(device), d.c)
    raise TypeError(f"cannot move a {type(d).__name__}")
