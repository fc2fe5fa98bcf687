"""vaelab: autoencoders and variational autoencoders on images.

The public Python API::

    import vaelab
    run = vaelab.train("mlp-vae", "runs/mlp-vae")      # train, evaluate, draw figures
    run = vaelab.Run.load("runs/mlp-vae")
    codes = run.encode(images); images = run.decode(codes)

Names are imported on first use (PEP 562), so ``import vaelab`` loads no feature module.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it
_API = {
    "AnomalyDetector": "vaelab.anomaly.estimator",
    "Run": "vaelab.api", "train": "vaelab.api",
    "DataConfig": "vaelab.config", "ModelConfig": "vaelab.config", "RunConfig": "vaelab.config",
    "TrainConfig": "vaelab.config", "build_config": "vaelab.configure", "preset_names": "vaelab.config",
    "ImageSet": "vaelab.data", "Splits": "vaelab.data", "load_data": "vaelab.data",
    "VaelabError": "vaelab.errors",
    "evaluate": "vaelab.evaluation.evaluate",
    "MODELS": "vaelab.models", "build_model": "vaelab.models",
    "fit": "vaelab.training.loop",
}

# The public names (README.md's Python API): import vaelab, then vaelab.<name>.
__all__ = [
    "MODELS", "AnomalyDetector", "DataConfig", "ImageSet", "ModelConfig", "Run", "RunConfig", "Splits", "TrainConfig",
    "VaelabError", "__version__", "build_config", "build_model", "evaluate", "fit", "load_data", "preset_names",
    "train",
]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'vaelab' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # cache: later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
