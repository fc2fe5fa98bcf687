"""Deprecated: ``vaelab.viz`` is gone; ``vaelab.viz.plots`` is now ``vaelab.plots`` and
``vaelab.viz.report`` is now ``vaelab.report`` (the old paths go in 0.3)."""

from vaelab._deprecated import warn_moved

warn_moved(__name__, "vaelab.plots and vaelab.report", skip=1)
