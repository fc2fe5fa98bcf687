"""Deprecated: ``vaelab.metrics`` is now ``vaelab.evaluation.metrics`` (the old path goes in 0.3)."""

from vaelab._deprecated import alias_module
from vaelab.evaluation import metrics as _new

alias_module(__name__, _new)
