"""Deprecated: ``vaelab.sample_eval`` is now ``vaelab.latent.sample_eval`` (the old path goes in 0.3)."""

from vaelab._deprecated import alias_module
from vaelab.latent import sample_eval as _new

alias_module(__name__, _new)
