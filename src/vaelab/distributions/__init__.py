"""The one home of vaelab's probability maths: distributions over latent codes, KL
divergences, log-densities, log-mean-exp and importance weights.

Models return these objects from ``posterior(x, y)`` and ``prior(y)``; objectives,
evaluation and every tool use them, and nothing else re-derives a Gaussian formula.
They follow torch.distributions' names (``mean``, ``rsample``, ``sample``,
``log_prob``, ``entropy``) but are written here for two reasons: every draw takes a
``torch.Generator`` (seeded evaluation gives the same numbers twice; torch's
``rsample`` takes none), and there is no per-call argument validation in the hot
path of training. The tests check every formula against torch.distributions and
against Monte-Carlo estimates.

Shapes: a distribution over D-dimensional codes has ``batch_shape`` (B,) and events
of size D; ``rsample((K,))`` returns (K, B, D) and ``log_prob(z)`` sums over the last
dimension, so ``log_prob`` of (K, B, D) codes is (K, B).

The modules, each importing only those before it in this list:
``base`` (``Distribution``, ``log_normal``, ``log_mean_exp``, ``importance_weights``),
``euclidean`` (``DiagNormal``, ``StandardNormal``, ``PointMass``, ``MixtureDiagNormal``,
``Quantized``, ``Ancestral``), ``flowed`` (``Flowed``: normalizing flows), ``sphere``
(``VonMisesFisher``, ``HypersphericalUniform``, the log-Bessel function), ``ball`` (the
Poincaré ball's maps and ``WrappedNormal``), ``kl`` (``KL_RULES``, ``KL_WHOLE``, ``kl_per_dim``,
``kl_divergence``) and ``chunks`` (``cat``, ``to``). Import the names from
``vaelab.distributions`` itself.
"""

from vaelab.distributions.ball import (
    WrappedNormal,
    ball_distance,
    ball_expmap,
    ball_expmap0,
    ball_logmap,
    ball_logmap0,
    ball_project,
    ball_transport,
    conformal_factor,
    gyration,
    gyroplane_distance,
    mobius_add,
)
from vaelab.distributions.base import (
    LOG_2PI,
    Distribution,
    importance_weights,
    log_mean_exp,
    log_normal,
)
from vaelab.distributions.chunks import cat, to
from vaelab.distributions.euclidean import (
    Ancestral,
    DiagNormal,
    MixtureDiagNormal,
    PointMass,
    Quantized,
    StandardNormal,
)
from vaelab.distributions.flowed import Flowed
from vaelab.distributions.kl import KL_RULES, KL_WHOLE, kl_divergence, kl_per_dim
from vaelab.distributions.sphere import (
    HypersphericalUniform,
    VonMisesFisher,
    log_bessel_iv,
    log_sphere_area,
    rejection_correction,
    vmf_mean_length,
)
from vaelab.distributions.sphere import (
    LogBesselIv as LogBesselIv,  # public in the old module, outside __all__
)

__all__ = [
    "KL_RULES",
    "KL_WHOLE",
    "LOG_2PI",
    "Ancestral",
    "DiagNormal",
    "Distribution",
    "Flowed",
    "HypersphericalUniform",
    "MixtureDiagNormal",
    "PointMass",
    "Quantized",
    "StandardNormal",
    "VonMisesFisher",
    "WrappedNormal",
    "ball_distance",
    "ball_expmap",
    "ball_expmap0",
    "ball_logmap",
    "ball_logmap0",
    "ball_project",
    "ball_transport",
    "cat",
    "conformal_factor",
    "gyration",
    "gyroplane_distance",
    "importance_weights",
    "kl_divergence",
    "kl_per_dim",
    "log_bessel_iv",
    "log_mean_exp",
    "log_normal",
    "log_sphere_area",
    "mobius_add",
    "rejection_correction",
    "to",
    "vmf_mean_length",
]
