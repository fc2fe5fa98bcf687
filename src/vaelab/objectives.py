"""Deprecated: ``vaelab.objectives`` is now ``vaelab.models.objectives`` (the old path goes in 0.3)."""

from vaelab._deprecated import alias_module
from vaelab.models import objectives as _new

alias_module(__name__, _new)
