"""Deprecated: ``vaelab.estimators`` is now ``vaelab.models.estimators`` (the old path goes in 0.3)."""

from vaelab._deprecated import alias_module
from vaelab.models import estimators as _new

alias_module(__name__, _new)
