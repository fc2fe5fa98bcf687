"""Deprecated: ``vaelab.latent.disentangle`` is now ``vaelab.latent.factors`` (the old path goes in 0.3)."""

from vaelab._deprecated import alias_module
from vaelab.latent import factors as _new

alias_module(__name__, _new)
