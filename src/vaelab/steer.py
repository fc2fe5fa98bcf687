"""Deprecated: ``vaelab.steer`` is now ``vaelab.latent.steer`` (the old path goes in 0.3)."""

from vaelab._deprecated import alias_module
from vaelab.latent import steer as _new

alias_module(__name__, _new)
