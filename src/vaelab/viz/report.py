"""Deprecated: ``vaelab.viz.report`` is now ``vaelab.report`` (the old path goes in 0.3)."""

from vaelab import report as _new
from vaelab._deprecated import alias_module

alias_module(__name__, _new)
