"""Deprecated: ``vaelab.anomaly.detector`` is now ``vaelab.anomaly.scores`` (the old path goes in 0.3)."""

from vaelab._deprecated import alias_module
from vaelab.anomaly import scores as _new

alias_module(__name__, _new)
