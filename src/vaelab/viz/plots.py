"""Deprecated: ``vaelab.viz.plots`` is now ``vaelab.plots`` (the old path goes in 0.3)."""

from vaelab import plots as _new
from vaelab._deprecated import alias_module

alias_module(__name__, _new)
