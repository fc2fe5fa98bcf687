"""Deprecated: ``vaelab.inpaint`` is now ``vaelab.latent.inpaint`` (the old path goes in 0.3)."""

from vaelab._deprecated import alias_module
from vaelab.latent import inpaint as _new

alias_module(__name__, _new)
