"""Deprecated: ``vaelab.one_class`` is now ``vaelab.anomaly.one_class`` (the old path goes in 0.3)."""

from vaelab._deprecated import alias_module
from vaelab.anomaly import one_class as _new

alias_module(__name__, _new)
