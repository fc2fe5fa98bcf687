"""Deprecated: ``vaelab.experiments`` is now ``vaelab.sweep.experiments`` (the old path goes in 0.3)."""

from vaelab._deprecated import alias_module
from vaelab.sweep import experiments as _new

alias_module(__name__, _new)
