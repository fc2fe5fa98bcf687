"""vaelab: autoencoders and variational autoencoders on images.

The public Python API::

    import vaelab
    run = vaelab.train("mlp-vae", "runs/mlp-vae")      # train, evaluate, draw figures
    run = vaelab.Run.load("runs/mlp-vae")
    codes = run.encode(images); images = run.decode(codes)
"""

from vaelab.anomaly import AnomalyDetector
from vaelab.api import Run, train
from vaelab.config import DataConfig, ModelConfig, RunConfig, TrainConfig, build_config, preset_names
from vaelab.data import ImageSet, Splits, load_data
from vaelab.errors import VaelabError
from vaelab.evaluate import evaluate
from vaelab.models import AE, MODELS, VAE, build_model
from vaelab.training import fit

__version__ = "0.1.0"

__all__ = [
    "AE", "AnomalyDetector", "MODELS", "VAE", "DataConfig", "ImageSet", "ModelConfig", "Run", "RunConfig", "Splits",
    "TrainConfig", "VaelabError", "build_config", "build_model", "evaluate", "fit", "load_data",
    "preset_names", "train", "__version__",
]
