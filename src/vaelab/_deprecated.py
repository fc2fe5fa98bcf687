"""Old import paths of public names, kept working for one release with a DeprecationWarning.

A moved module keeps a shim at its old path (``vaelab/metrics.py``, ``vaelab/viz/``, ...) that
makes the old name an alias of the new module, the same module object, so every name in it is
the same object too. A name that left a package (``from vaelab.anomaly import score_images``)
is forwarded by the package's ``__getattr__`` through ``moved_name``. Both warn once, pointing
at the importer's line. Delete the shims, this module and the ``__getattr__`` entries in 0.3.
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings

REMOVED_IN = "0.3"


def _bootstrap(frame) -> bool:  # the frames warnings.warn leaves out when it counts stacklevel
    return "importlib" in frame.f_code.co_filename and "_bootstrap" in frame.f_code.co_filename


def _importer_level(skip: int) -> int:
    """``stacklevel`` (for the caller) of the first frame above its ``skip`` callers that is not the
    import machinery, so the warning points at the line that imported the old path."""
    level, frame = skip + 1, sys._getframe(skip + 1)
    while frame is not None and (_bootstrap(frame) or frame.f_code.co_filename == importlib.__file__):
        level += not _bootstrap(frame)
        frame = frame.f_back
    return level


def warn_moved(old: str, new: str, skip: int = 1) -> None:
    warnings.warn(f"{old} is now {new}; the old path goes in {REMOVED_IN}", DeprecationWarning,
                  stacklevel=_importer_level(skip + 1))


def alias_module(old: str, new: types.ModuleType) -> None:
    """Called by the shim module ``old``: warn, and let ``import old`` give the module ``new``."""
    warn_moved(old, new.__name__, skip=2)  # this function, then the shim's body
    sys.modules[old] = new  # the import system hands out what sys.modules holds once the shim has run


def moved_name(package: str, name: str, moved: dict[str, str]) -> object:
    """For ``package.__getattr__``: the value of a name that moved to the module ``moved[name]``."""
    if name not in moved:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    warn_moved(f"{package}.{name}", f"{moved[name]}.{name}", skip=2)  # this function, then __getattr__
    value = getattr(importlib.import_module(moved[name]), name)
    vars(sys.modules[package])[name] = value  # cached: `from P import n` asks twice, and warns once
    return value
