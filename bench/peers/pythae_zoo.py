#!/usr/bin/env python3
"""Train Pythae's versions of vaelab's model families on MNIST, for a side-by-side benchmark.

Standalone: run it with the peer environment's interpreter (see bench/peers/README.md),
never with vaelab's; it does not import vaelab.

    /work/peers/pythae-venv/bin/python bench/peers/pythae_zoo.py --families vae,iwae
    /work/peers/pythae-venv/bin/python bench/peers/pythae_zoo.py --families vqvae \
        --epochs 1 --limit 2000 --n-samples 200          # a quick check, not a measurement

For each family it trains the Pythae model through ``pythae.pipelines.TrainingPipeline``
(Pythae's ``BaseTrainer``) on the MNIST training images (test set as Pythae's eval set),
with the fixed architecture below, then draws samples with Pythae's own samplers and
reconstructs the test set. Per family, under ``OUT/<family>/``:

    result.json              every number and the exact configuration (also on failure):
                             wall times (train, per epoch, eval, samplers, whole process),
                             Pythae's per-epoch train/eval losses, the final model's loss
                             parts on the test set, parameter counts, configs, errors
    samples_prior.npz        images uint8 (N, 1, 28, 28): NormalSampler / VAMPSampler /
                             PixelCNNSampler (vqvae) / HypersphereUniformSampler (svae) /
                             PoincareDiskSampler (pvae: its wrapped normal prior on the ball;
                             result.json records the codes' largest norm); for rae-l2 / rae-gp (no prior)
                             Pythae's NormalSampler draws N(0, I) all the same
    samples_gmm.npz          images: GaussianMixtureSampler (10 components) fit on the
                             training codes (Pythae's sampler cannot take vqvae's
                             (N, D, 7, 7) codes: recorded as "unsupported")
    recon_test.npz           images: the first 10,000 test images reconstructed through the
                             posterior mean (decoder(encoder mean); vqvae: decoder(quantised);
                             svae: the normalised direction; the flows: decoder(flow(mean)))
    recon_test_sampled.npz   images: Pythae's model.reconstruct() (one posterior sample)
    pythae/                  Pythae's own training folder (final_model/, training config)

and ``OUT/summary.json`` gathers every ``*/result.json`` found under OUT. Pixels are
``round(255 * clamp(x, 0, 1))``. A family that fails is recorded (status "failed", the
traceback in result.json) and the next one runs; the exit status is 1 if any failed.
For wall times run one family per process on a quiet machine.

Architectures (fixed, layer for layer reproducible; PyTorch default initialisation):
  MLP families (all but vqvae): encoder Linear(784, 400) - ReLU - two heads
  Linear(400, latent) for the mean and the log-variance (wae, rae-l2, rae-gp: the mean
  head only, their encoder is deterministic); decoder Linear(latent, 400) - ReLU - Linear(400, 784) -
  Sigmoid. This is the PyTorch examples VAE (there with latent 20); hamiltonian-vae's decoder
  ends without the Sigmoid while it trains (Pythae's HVAE reads logits), with it for images. aae: the same
  encoder with both heads (Pythae's Adversarial_AE reads the log-variance even with
  ``deterministic_posterior``, then multiplies its standard deviation by 0: that head
  is unused) and Pythae's default discriminator Linear(latent, 256) - ReLU -
  Linear(256, 1) - Sigmoid, trained by Pythae's AdversarialTrainer (its own Adam).
  svae: the same body with the mean-direction head and Linear(400, 1) for the concentration
  (Pythae's SVAE normalises the direction, kappa = softplus + 1); its reconstructions decode
  the normalised direction (Pythae's predict would decode the raw head, off the sphere); its
  GaussianMixtureSampler is fit on the raw head's codes, as Pythae does.
  pvae: the same body, the mean head mapped into the ball by exp_0 and the scale head
  softplus + 1e-5 (vaelab's pvae head; Pythae's PoincareVAE reads it as log_covariance = 2 log
  scale); the decoder reads the ball's coordinates. miwae, piwae, ciwae: the MLP body; piwae
  trains with Pythae's CoupledOptimizerTrainer (an encoder and a decoder Adam, --lr each).
  vqvae: encoder Conv2d(1, 32, 4, 2, 1) - ReLU - Conv2d(32, 64, 4, 2, 1) - ReLU -
  Conv2d(64, D, 1) -> (B, D, 7, 7); decoder Conv2d(D, 64, 1) - ReLU -
  ConvTranspose2d(64, 32, 4, 2, 1) - ReLU - ConvTranspose2d(32, 1, 4, 2, 1) - Sigmoid;
  codebook K x D.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

T_START = time.perf_counter()

FAMILY_NAMES = ["vae", "beta-vae", "beta-tcvae", "iwae", "wae", "infovae", "vamp", "vqvae", "factor-vae", "vaegan", "aae",
                "vae-planar", "vae-radial", "vae-iaf", "hamiltonian-vae", "svae",
                "rae-l2", "rae-gp", "miwae", "piwae", "ciwae", "pvae", "rhvae"]
DETERMINISTIC = ("wae", "rae-l2", "rae-gp")  # an encoder of one head: the code
# FactorVAE's discriminator optimiser (Kim & Mnih 2018; vaelab's model.factorvae defaults): Pythae's
# AdversarialTrainer defaults are lr 1e-4 with Adam's betas (0.9, 0.999).
DISC_LR, DISC_BETAS = 1e-4, [0.5, 0.9]
LOGIT_DECODER = ("hamiltonian-vae",)  # Pythae models whose "bce" reads the decoder's output as logits
NEEDS_GRAD = ("hamiltonian-vae", "rhvae")  # Pythae models whose forward takes gradients (their leapfrogs')
FLOWS = ("vae-planar", "vae-radial", "vae-iaf")  # posteriors z = flow(z0): their code for x is flow(mu)


def flow_of_mean(model, family: str, mu: torch.Tensor) -> torch.Tensor:
    """The flow's image of the base mean, flow(mu): the code a flow family's forward would decode for
    a zero noise draw, and the point vaelab's Flowed posterior calls its mean (its docstring says so)."""
    if family == "vae-iaf":
        return model.iaf_flow.inverse(mu).out  # Pythae's VAE_IAF forward samples through .inverse
    z = mu
    for layer in model.net:  # VAE_LinNF: the planar or radial steps, in order
        z = layer(z).out
    return z
# PoincareVAE's posterior scale floor (the authors' Constants.eta, vaelab's models.poincare.MIN_SCALE) and the
# margin its encoder keeps inside the ball (vaelab's ball_project: float32's spacing)
PVAE_MIN_SCALE, BALL_MARGIN = 1e-5, 2.0 ** -23
IMQ_SCALES = [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]  # Pythae's default kernel scales


def family_table(latent_dim: int, codebook_size: int, code_dim: int) -> dict:
    """Family -> (Pythae model class, config class, config fields). Every field that matters
    is written out, Pythae's default or not; the non-defaults are marked."""
    return {
        "vae": ("VAE", "VAEConfig", {"reconstruction_loss": "bce"}),
        "beta-vae": ("BetaVAE", "BetaVAEConfig", {
            "reconstruction_loss": "bce",
            "beta": 4.0,  # Pythae's default 1.0 would make it the plain VAE
        }),
        "beta-tcvae": ("BetaTCVAE", "BetaTCVAEConfig", {
            "reconstruction_loss": "bce", "alpha": 1.0,
            "beta": 6.0,  # Pythae's default 1.0 weights the TC term like the plain ELBO
            "gamma": 1.0, "use_mss": True,
        }),
        "iwae": ("IWAE", "IWAEConfig", {"reconstruction_loss": "bce", "number_samples": 10}),
        "wae": ("WAE_MMD", "WAE_MMD_Config", {  # reconstruction is always MSE in Pythae
            "kernel_choice": "imq",
            # Pythae's default 0.03 leaves the codes far from N(0, I) (test MMD 2.8 against
            # 0.17 after one epoch on 20k images) and prior samples unusable; 10 is the WAE
            # paper's MNIST value.
            "reg_weight": 10.0,
            "kernel_bandwidth": 1.0,
            "scales": list(IMQ_SCALES), "reconstruction_loss_scale": 1.0,
        }),
        "aae": ("Adversarial_AE", "Adversarial_AE_Config", {
            "reconstruction_loss": "bce",
            "adversarial_loss_scale": 1.0,  # Pythae's default 0.5; vaelab's adversarial_weight default 1
            "reconstruction_loss_scale": 1.0,
            "deterministic_posterior": True,  # Pythae's default False (Gaussian); vaelab's aae: point
        }),
        "infovae": ("INFOVAE_MMD", "INFOVAE_MMD_Config", {
            "reconstruction_loss": "bce", "kernel_choice": "imq", "alpha": 0.0,
            # Pythae's default lbd=1e-3 gives the MMD term the weight alpha+lbd-1 = -0.999
            # (MMD maximised). The InfoVAE paper's MNIST lbd=1000 (weight 999) collapses the
            # posterior with Pythae's 7-scale IMQ kernel (test KL 0.09 nats after one epoch on
            # 20k images); lbd=10 (weight 9) keeps the codes (KL 13.2, MMD 0.18).
            "lbd": 10.0,
            "kernel_bandwidth": 1.0, "scales": list(IMQ_SCALES),
        }),
        "vamp": ("VAMP", "VAMPConfig", {
            "reconstruction_loss": "bce", "number_components": 50, "linear_scheduling_steps": 0,
        }),
        "factor-vae": ("FactorVAE", "FactorVAEConfig", {
            "reconstruction_loss": "bce",
            "gamma": 35.0,  # Pythae's default 2.0; 35 is its dSprites reproduction config's and vaelab's
            "uses_default_discriminator": True,  # 5 x 1000 leaky ReLU 0.2, 2 logits: vaelab's default
        }),
        "vqvae": ("VQVAE", "VQVAEConfig", {  # reconstruction is always MSE in Pythae
            "commitment_loss_factor": 0.25, "quantization_loss_factor": 1.0,
            "num_embeddings": codebook_size,  # Pythae's default 512
            "use_ema": False, "decay": 0.99,
        }),
        # Ghosh et al. 2020, at Pythae's MNIST configs (examples/scripts/configs/mnist/rae_*_config.json);
        # reconstruction is always a summed squared error in Pythae. RAE-L2's reg_weight is the decoder
        # Adam's weight decay (the gradient of reg_weight/2 ||theta||^2: vaelab's model.rae-l2.weight 5e-5).
        "rae-l2": ("RAE_L2", "RAE_L2_Config", {"embedding_weight": 1e-2, "reg_weight": 1e-4}),
        # Pythae's gradient penalty is of the reconstruction with respect to the input image
        # (vaelab's, as the paper's, with respect to the code: src/vaelab/models/rae.py).
        "rae-gp": ("RAE_GP", "RAE_GP_Config", {"embedding_weight": 1e-2, "reg_weight": 1e-4}),
        # Pythae's defaults, its own MLP discriminator (784-256-1, the feature loss on its last
        # layer) and its CoupledOptimizerAdversarialTrainer (three Adams, --gan-lr each).
        "vaegan": ("VAEGAN", "VAEGANConfig", {
            "reconstruction_loss": "bce", "adversarial_loss_scale": 0.5, "reconstruction_layer": -1,
            "equilibrium": 0.68, "margin": 0.4,
        }),
        # Normalizing-flow posteriors: vaelab's 10 steps (Pythae's default flows=["Planar", "Planar"]);
        # Pythae's flow parameters are shared by all images (vaelab's default: amortised).
        "vae-planar": ("VAE_LinNF", "VAE_LinNF_Config", {"reconstruction_loss": "bce", "flows": ["Planar"] * 10}),
        "vae-radial": ("VAE_LinNF", "VAE_LinNF_Config", {"reconstruction_loss": "bce", "flows": ["Radial"] * 10}),
        "vae-iaf": ("VAE_IAF", "VAE_IAF_Config", {  # Pythae's defaults, as vaelab's model.iaf
            "reconstruction_loss": "bce", "n_made_blocks": 2, "n_hidden_in_made": 3, "hidden_size": 128,
        }),
        # Pythae's HVAE with vaelab's zoo settings (Pythae's defaults: eps_lf 1e-3, nothing learned). Its
        # "bce" reads the decoder's output as logits: the decoder ends without its sigmoid (mlp-logits).
        "hamiltonian-vae": ("HVAE", "HVAEConfig", {
            "reconstruction_loss": "bce", "n_lf": 3, "eps_lf": 0.01, "beta_zero": 0.3,
            "learn_eps_lf": True, "learn_beta_zero": True,
        }),
        # The hyperspherical VAE: kappa = softplus + 1, as vaelab's model.vmf.kappa_floor; Pythae's
        # gradient is g_rep only (vaelab adds g_cor: model.vmf.correction=false matches Pythae).
        "svae": ("SVAE", "SVAEConfig", {"reconstruction_loss": "bce"}),
        # The Riemannian Hamiltonian VAE at Pythae's defaults but beta_zero: Pythae's RHVAE uses its beta_zero
        # as sqrt(beta_0) (its HVAE takes the root itself), so sqrt(0.3) here matches vaelab's model.rhvae.beta_zero
        # 0.3 (vaelab.models.rhvae's docstring); its metric keeps the last 100 batches (vaelab's centroids 12,800
        # at batch 128).
        "rhvae": ("RHVAE", "RHVAEConfig", {
            "reconstruction_loss": "bce", "n_lf": 3, "eps_lf": 0.001, "beta_zero": 0.3 ** 0.5,
            "temperature": 1.5, "regularization": 0.01,
        }),
        # Rainforth et al. 2018 at Pythae's config defaults, as vaelab's zoo rows. Pythae's MIWAE and PIWAE
        # normalise over the M axis: MIWAE(5, 10) is 10 groups of 5 draws (PYTHAE.md). PIWAE trains with
        # Pythae's CoupledOptimizerTrainer (its pipeline requires it): an encoder and a decoder Adam.
        "miwae": ("MIWAE", "MIWAEConfig", {"reconstruction_loss": "bce", "number_gradient_estimates": 5,
                                          "number_samples": 10}),
        "piwae": ("PIWAE", "PIWAEConfig", {"reconstruction_loss": "bce", "number_gradient_estimates": 5,
                                          "number_samples": 10}),
        "ciwae": ("CIWAE", "CIWAEConfig", {"reconstruction_loss": "bce", "number_samples": 10, "beta": 0.5}),
        # The Poincaré VAE, as vaelab's pvae: wrapped normal posterior and prior (Pythae's prior scale is 1, fixed:
        # vaelab's model.wrapped-normal-prior.sigma), ball of curvature -1 (Pythae's and vaelab's c = 1).
        "pvae": ("PoincareVAE", "PoincareVAEConfig", {
            "reconstruction_loss": "bce",  # Pythae's default "mse"
            "prior_distribution": "wrapped_normal", "posterior_distribution": "wrapped_normal", "curvature": 1.0,
        }),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default=",".join(FAMILY_NAMES),
                   help="comma-separated, from: " + ",".join(FAMILY_NAMES))
    p.add_argument("--data-dir", default="/work/shared/data",
                   help="folder holding mnist/{train,t10k}-images-idx3-ubyte.gz (or the mnist folder itself)")
    p.add_argument("--out", default="bench/out/pythae", help="output folder (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128, help="train and eval batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--latent-dim", type=int, default=16, help="MLP families' latent size")
    p.add_argument("--gan-lr", type=float, default=3e-4,
                   help="VAEGAN: the learning rate of its three Adams, betas (0.5, 0.999) (as vaelab's zoo row)")
    p.add_argument("--codebook-size", type=int, default=64, help="VQ-VAE codebook entries K")
    p.add_argument("--code-dim", type=int, default=16, help="VQ-VAE code vector size D")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="train on the first N training images only (quick checks)")
    p.add_argument("--eval", choices=["test", "none"], default="test",
                   help="Pythae's eval set, evaluated after every epoch (default: the test set)")
    p.add_argument("--use", choices=["last", "best"], default="last",
                   help="model that is sampled and reconstructs: the last epoch's, or Pythae's "
                        "'best' (lowest eval loss; what it saves as final_model)")
    p.add_argument("--n-samples", type=int, default=10000)
    p.add_argument("--n-recon", type=int, default=10000, help="first N test images reconstructed")
    p.add_argument("--gmm-components", type=int, default=10)
    p.add_argument("--pixelcnn-epochs", type=int, default=None,
                   help="epochs of the VQ-VAE's PixelCNN prior (default: --epochs)")
    p.add_argument("--pixelcnn-layers", type=int, default=10)
    p.add_argument("--pixelcnn-kernel", type=int, default=5)
    p.add_argument("--sample-batch", type=int, default=500, help="samplers' batch size (Pythae's default)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (also OMP/MKL/BLAS)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FAMILY.FIELD=VALUE",
                   help="override a Pythae model-config field, e.g. --set wae.reg_weight=10 "
                        "(VALUE parsed as JSON, else a string); repeatable")
    args = p.parse_args(argv)
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    bad = [f for f in args.families if f not in FAMILY_NAMES]
    if bad:
        p.error(f"unknown families {bad}; choose from {FAMILY_NAMES}")
    if args.pixelcnn_epochs is None:
        args.pixelcnn_epochs = args.epochs
    parsed = []
    for item in args.overrides:
        key, sep, value = item.partition("=")
        fam, dot, field = key.partition(".")
        if not sep or not dot or fam not in FAMILY_NAMES or not field:
            p.error(f"--set expects FAMILY.FIELD=VALUE, got {item!r}")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        parsed.append((fam, field, value))
    args.overrides = parsed
    return args


ARGS = parse_args() if __name__ == "__main__" else parse_args([])  # imported (gmm_cross.py): the defaults
# Threads first: the environment before numpy/torch/sklearn load their thread pools.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = str(ARGS.threads)
import torch  # noqa: E402

torch.set_num_threads(ARGS.threads)

import contextlib  # noqa: E402
import gzip  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import traceback  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import pythae.models as pm  # noqa: E402
from arrays import to_uint8  # the peer scripts' shared uint8 conversion
from pythae.data.datasets import DatasetOutput  # noqa: E402
from pythae.models.base.base_utils import ModelOutput  # noqa: E402
from pythae.models.nn import BaseDecoder, BaseEncoder  # noqa: E402
from pythae.models.pvae.pvae_utils import PoincareBall  # noqa: E402
from pythae.pipelines import TrainingPipeline  # noqa: E402
from pythae.samplers import (  # noqa: E402
    GaussianMixtureSampler, GaussianMixtureSamplerConfig, HypersphereUniformSampler, NormalSampler, PixelCNNSampler,
    PixelCNNSamplerConfig, PoincareDiskSampler, VAMPSampler,
)
from pythae.trainers import (  # noqa: E402
    AdversarialTrainerConfig,
    BaseTrainerConfig,
    CoupledOptimizerAdversarialTrainerConfig,
    CoupledOptimizerTrainerConfig,
)
from pythae.trainers.training_callbacks import TrainingCallback  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - T_START


# ----------------------------------------------------------------------------- helpers

def process_seconds() -> float | None:
    """Seconds since this process started (Linux /proc; includes interpreter start-up)."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat(5): starttime, in clock ticks
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, IndexError):
        return None


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def ver(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "pythae": ver("pythae"), "torch": torch.__version__, "numpy": np.__version__,
        "scikit-learn": ver("scikit-learn"), "pydantic": ver("pydantic"),
        "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
    }


def loadavg() -> list | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_mnist(data_dir: str):
    root = Path(data_dir)
    if (root / "mnist").is_dir():
        root = root / "mnist"
    names = {"train": "train-images-idx3-ubyte.gz", "test": "t10k-images-idx3-ubyte.gz"}
    missing = [n for n in names.values() if not (root / n).is_file()]
    if missing:
        sys.exit(f"MNIST files missing in {root}: {', '.join(missing)}")
    out = {}
    for split, name in names.items():
        x = read_idx(root / name)
        out[split] = (x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return out["train"], out["test"], str(root)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- networks

class MLPEncoder(BaseEncoder):
    """Linear(784, 400) - ReLU - Linear(400, latent) mean [+ Linear(400, latent) log-variance]."""

    def __init__(self, latent_dim: int, variational: bool = True):
        BaseEncoder.__init__(self)
        self.fc1 = nn.Linear(784, 400)
        self.fc_mu = nn.Linear(400, latent_dim)
        self.fc_logvar = nn.Linear(400, latent_dim) if variational else None

    def forward(self, x):
        h = F.relu(self.fc1(x.reshape(x.shape[0], -1)))
        out = ModelOutput(embedding=self.fc_mu(h))
        if self.fc_logvar is not None:
            out["log_covariance"] = self.fc_logvar(h)
        return out


class SphereMLPEncoder(MLPEncoder):
    """MLPEncoder's body for Pythae's SVAE: the mean direction (unnormalised: SVAE normalises it)
    and one raw concentration, Linear(400, 1), as Pythae's Encoder_SVAE_MLP and vaelab's vmf head."""

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim, variational=False)
        self.fc_kappa = nn.Linear(400, 1)

    def forward(self, x):
        h = F.relu(self.fc1(x.reshape(x.shape[0], -1)))
        return ModelOutput(embedding=self.fc_mu(h), log_concentration=self.fc_kappa(h))


class BallMLPEncoder(MLPEncoder):
    """MLPEncoder's body for Pythae's PoincareVAE, with vaelab's wrapped-normal head: the mean exp_0(W h + b),
    in the ball (as Pythae's MNIST reproduction encoder and the authors' EncWrapped; kept BALL_MARGIN
    inside as vaelab's ball_project, which acts only where tanh rounds to 1), and the scale
    sigma = softplus(w h + b) + 1e-5 per dimension, handed to Pythae as log_covariance = 2 log sigma
    (PoincareVAE takes std = exp(log_covariance / 2))."""

    def __init__(self, latent_dim: int, curvature: float):
        super().__init__(latent_dim, variational=False)
        self.fc_scale = nn.Linear(400, latent_dim)
        self.manifold = PoincareBall(dim=latent_dim, c=curvature)

    def forward(self, x):
        h = F.relu(self.fc1(x.reshape(x.shape[0], -1)))
        c = self.manifold.c
        mu = self.manifold.expmap0(self.fc_mu(h))
        norm, limit = mu.norm(dim=-1, keepdim=True), (1 - BALL_MARGIN) / c ** 0.5
        mu = torch.where(norm > limit, mu / norm * limit, mu)
        sigma = F.softplus(self.fc_scale(h)) + PVAE_MIN_SCALE
        return ModelOutput(embedding=mu, log_covariance=2 * torch.log(sigma))


class MLPDecoder(BaseDecoder):
    """Linear(latent, 400) - ReLU - Linear(400, 784) - Sigmoid, shaped (B, 1, 28, 28).
    ``logits``: without the sigmoid (Pythae's HVAE trains on logits); set it to False after
    training for images (reconstructions, samples)."""

    def __init__(self, latent_dim: int, logits: bool = False):
        BaseDecoder.__init__(self)
        self.fc3 = nn.Linear(latent_dim, 400)
        self.fc4 = nn.Linear(400, 784)
        self.logits = logits

    def forward(self, z):
        h = self.fc4(F.relu(self.fc3(z)))
        return ModelOutput(reconstruction=(h if self.logits else torch.sigmoid(h)).reshape(-1, 1, 28, 28))


class ConvEncoder(BaseEncoder):
    """Conv2d(1,32,4,2,1) - ReLU - Conv2d(32,64,4,2,1) - ReLU - Conv2d(64,D,1): (B, D, 7, 7)."""

    def __init__(self, code_dim: int):
        BaseEncoder.__init__(self)
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(64, code_dim, 1),
        )

    def forward(self, x):
        return ModelOutput(embedding=self.net(x))


class ConvDecoder(BaseDecoder):
    """Conv2d(D,64,1) - ReLU - ConvT(64,32,4,2,1) - ReLU - ConvT(32,1,4,2,1) - Sigmoid."""

    def __init__(self, code_dim: int):
        BaseDecoder.__init__(self)
        self.net = nn.Sequential(
            nn.Conv2d(code_dim, 64, 1), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(32, 1, 4, 2, 1), nn.Sigmoid(),
        )

    def forward(self, z):
        return ModelOutput(reconstruction=self.net(z))


ARCH_TEXT = {
    "mlp": "encoder Linear(784,400)-ReLU-[Linear(400,L) mean, Linear(400,L) log-variance]; "
           "decoder Linear(L,400)-ReLU-Linear(400,784)-Sigmoid",
    "mlp-logits": "encoder Linear(784,400)-ReLU-[Linear(400,L) mean, Linear(400,L) log-variance]; "
                  "decoder Linear(L,400)-ReLU-Linear(400,784) (logits in training; the sigmoid for images)",
    "mlp-ball": "encoder Linear(784,400)-ReLU-[exp_0(Linear(400,L)) mean in the ball, softplus(Linear(400,L)) + 1e-5 "
                "scale]; decoder Linear(L,400)-ReLU-Linear(400,784)-Sigmoid on the ball's coordinates",
    "mlp-deterministic": "encoder Linear(784,400)-ReLU-Linear(400,L); "
                         "decoder Linear(L,400)-ReLU-Linear(400,784)-Sigmoid",
    "conv": "encoder Conv2d(1,32,4,2,1)-ReLU-Conv2d(32,64,4,2,1)-ReLU-Conv2d(64,D,1) -> (D,7,7); "
            "decoder Conv2d(D,64,1)-ReLU-ConvTranspose2d(64,32,4,2,1)-ReLU-"
            "ConvTranspose2d(32,1,4,2,1)-Sigmoid; codebook K x D",
}


class Recorder(TrainingCallback):
    """Per-epoch losses and times: train steps (epoch start -> eval start) and the rest
    (eval pass, Pythae's best-model copy, logging)."""

    def __init__(self):
        self.history = []
        self._t0 = self._t_eval = None

    def on_epoch_begin(self, training_config, **kwargs):
        self._t0, self._t_eval = time.perf_counter(), None

    def on_eval_step_begin(self, training_config, **kwargs):
        self._t_eval = time.perf_counter()

    def on_log(self, training_config, logs, **kwargs):
        now = time.perf_counter()
        t_train_end = self._t_eval if self._t_eval is not None else now
        self.history.append({
            "epoch": kwargs.get("global_step"),
            "train_loss": logs.get("train_epoch_loss"),
            "eval_loss": logs.get("eval_epoch_loss"),
            "train_seconds": round(t_train_end - self._t0, 4),
            "eval_seconds": round(now - self._t_eval, 4) if self._t_eval is not None else None,
            "epoch_seconds": round(now - self._t0, 4),
        })


# ----------------------------------------------------------------------------- one family

def build_model(family: str, args):
    table = family_table(args.latent_dim, args.codebook_size, args.code_dim)
    model_name, config_name, fields = table[family]
    fields = dict(fields)
    for fam, field, value in args.overrides:
        if fam == family:
            fields[field] = value
    config_cls = getattr(pm, config_name)
    if family == "vqvae":
        config = config_cls(input_dim=(1, 28, 28), latent_dim=args.code_dim, **fields)
        encoder, decoder, arch = ConvEncoder(args.code_dim), ConvDecoder(args.code_dim), "conv"
    else:
        config = config_cls(input_dim=(1, 28, 28), latent_dim=args.latent_dim, **fields)
        variational = family not in DETERMINISTIC
        encoder = (SphereMLPEncoder(args.latent_dim) if family == "svae"
                   else BallMLPEncoder(args.latent_dim, config.curvature) if family == "pvae"
                   else MLPEncoder(args.latent_dim, variational=variational))
        logits = family in LOGIT_DECODER
        if logits:  # its "bce" is torch's Bernoulli(logits).log_prob, which validates x as 0/1: the grey
            torch.distributions.Distribution.set_default_validate_args(False)  # levels, as every other "bce"
        decoder = MLPDecoder(args.latent_dim, logits=logits)
        arch = ("mlp-logits" if logits else "mlp-ball" if family == "pvae" else "mlp" if variational
                else "mlp-deterministic")
    model = getattr(pm, model_name)(config, encoder=encoder, decoder=decoder)
    return model, config, arch


@torch.no_grad()
def reconstruct(model, family: str, x: np.ndarray, batch: int):
    """(posterior-mean reconstructions, Pythae's model.reconstruct()) as uint8."""
    model.eval()
    mean, sampled = [], []
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(x[i:i + batch])
        if family == "vqvae":  # BaseAE.predict would decode the unquantised encoder output
            rec = model(DatasetOutput(data=xb)).recon_x
        elif family == "svae":  # predict would decode the unnormalised direction, off the sphere
            loc = model.encoder(xb).embedding
            rec = model.decoder(loc / loc.norm(dim=-1, keepdim=True))["reconstruction"]
        elif family in FLOWS:  # predict would decode the base mean mu, a code the decoder never sees in training
            rec = model.decoder(flow_of_mean(model, family, model.encoder(xb).embedding))["reconstruction"]
        else:
            rec = model.predict(xb).recon_x
        mean.append(to_uint8(rec))
        if family in NEEDS_GRAD:  # HVAE's reconstruct runs its flow: autograd on, the decoder's logits
            model.decoder.logits = True
            with torch.enable_grad():
                rec = torch.sigmoid(model.reconstruct(xb)).detach()
            model.decoder.logits = False
        else:
            with torch.enable_grad() if family == "rae-gp" else contextlib.nullcontext():  # its forward differentiates
                rec = model.reconstruct(xb)
        sampled.append(to_uint8(rec.detach()))
    return np.concatenate(mean), np.concatenate(sampled)


def loss_parts(model, x: np.ndarray, batch: int, grad: bool = False) -> dict:
    """Every scalar of the model's forward output (loss, recon_loss, reg_loss / mmd_loss /
    vq_loss), averaged over the batches of x in order, as Pythae's eval pass averages them.
    ``grad``: the forward takes gradients (HVAE, RAE-GP's penalty), so it runs with autograd on
    (as Pythae's eval pass falls back to)."""
    model.eval()
    sums, n, counts = {}, 0, None
    for i in range(0, len(x), batch):
        with torch.set_grad_enabled(grad):
            out = model(DatasetOutput(data=torch.from_numpy(x[i:i + batch])), dataset_size=len(x))
        for k, v in out.items():
            if torch.is_tensor(v) and v.numel() == 1:
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        if "quantized_indices" in out:  # VQ-VAE: codebook usage
            c = torch.bincount(out["quantized_indices"].flatten(), minlength=model.quantizer.num_embeddings)
            counts = c if counts is None else counts + c
        n += 1
    parts = {k: v / n for k, v in sums.items()}
    if counts is not None:
        p = counts.double() / counts.sum()
        parts["codes_used"] = int((counts > 0).sum())
        parts["code_perplexity"] = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
    return parts


def run_family(family: str, args, train_x, test_x, data_root, out_root: Path) -> dict:
    fam_dir = out_root / family
    fam_dir.mkdir(parents=True, exist_ok=True)
    for name in ("samples_prior.npz", "samples_gmm.npz", "recon_test.npz", "recon_test_sampled.npz"):
        (fam_dir / name).unlink(missing_ok=True)
    shutil.rmtree(fam_dir / "pythae", ignore_errors=True)  # Pythae's training folders of an earlier run

    res = {
        "family": family, "status": "running", "argv": sys.argv, "machine": machine_info(),
        "loadavg_before": loadavg(), "data_dir": data_root, "seed": args.seed,
        "n_train": int(len(train_x)), "n_eval": int(len(test_x)) if args.eval == "test" else 0,
        "eval_set": args.eval, "used_model": args.use, "timings": {"import_seconds": round(IMPORT_SECONDS, 3)},
        "errors": {},
    }
    t_family = time.perf_counter()
    try:
        seed_all(args.seed)
        t = time.perf_counter()
        model, config, arch = build_model(family, args)
        res["timings"]["build_seconds"] = round(time.perf_counter() - t, 4)
        res["pythae_model"] = model.model_name
        res["architecture"] = {"kind": arch, "text": ARCH_TEXT[arch], "latent_dim": args.latent_dim,
                               "code_dim": args.code_dim if family == "vqvae" else None,
                               "modules": repr(model)}
        extra = n_params(model) - n_params(model.encoder) - n_params(model.decoder)
        res["params"] = {"total": n_params(model), "encoder": n_params(model.encoder),
                         "decoder": n_params(model.decoder), "other": extra}

        common = {"output_dir": str(fam_dir / "pythae"), "num_epochs": args.epochs,
                  "per_device_train_batch_size": args.batch_size, "per_device_eval_batch_size": args.batch_size,
                  "seed": args.seed, "no_cuda": True, "steps_saving": None, "steps_predict": None}
        if family == "factor-vae":  # Pythae trains it with its AdversarialTrainer: two optimisers
            train_config = AdversarialTrainerConfig(
                **common, autoencoder_optimizer_cls="Adam", autoencoder_learning_rate=args.lr,
                discriminator_optimizer_cls="Adam", discriminator_learning_rate=DISC_LR,
                discriminator_optimizer_params={"betas": DISC_BETAS})
        elif family == "vaegan":  # Pythae's VAEGAN needs its three-optimizer trainer
            adam = {"betas": (0.5, 0.999)}
            train_config = CoupledOptimizerAdversarialTrainerConfig(
                **common, encoder_optimizer_cls="Adam", decoder_optimizer_cls="Adam",
                discriminator_optimizer_cls="Adam", encoder_optimizer_params=adam, decoder_optimizer_params=adam,
                discriminator_optimizer_params=adam, encoder_learning_rate=args.gan_lr,
                decoder_learning_rate=args.gan_lr, discriminator_learning_rate=args.gan_lr)
        elif family == "aae":  # Pythae's pipeline requires its AdversarialTrainer: two Adams, one rate here
            train_config = AdversarialTrainerConfig(
                **common, autoencoder_optimizer_cls="Adam", autoencoder_learning_rate=args.lr,
                discriminator_optimizer_cls="Adam", discriminator_learning_rate=args.lr)
        elif family == "piwae":  # Pythae's pipeline requires its CoupledOptimizerTrainer (as its reproduction
            # script trains it): an encoder Adam and a decoder Adam, one rate
            train_config = CoupledOptimizerTrainerConfig(
                **common, encoder_optimizer_cls="Adam", encoder_learning_rate=args.lr,
                decoder_optimizer_cls="Adam", decoder_learning_rate=args.lr)
        elif family == "rae-l2":  # Pythae's pipeline requires its CoupledOptimizerTrainer and sets the
            # decoder's weight decay to the config's reg_weight; the encoder has none
            train_config = CoupledOptimizerTrainerConfig(
                **common, encoder_optimizer_cls="Adam", encoder_learning_rate=args.lr,
                encoder_optimizer_params={"weight_decay": 0.0}, decoder_optimizer_cls="Adam",
                decoder_learning_rate=args.lr, decoder_optimizer_params={"weight_decay": config.reg_weight})
        else:
            train_config = BaseTrainerConfig(**common, optimizer_cls="Adam", learning_rate=args.lr)
        recorder = Recorder()
        pipeline = TrainingPipeline(model=model, training_config=train_config)
        t = time.perf_counter()
        pipeline(train_data=train_x, eval_data=test_x if args.eval == "test" else None, callbacks=[recorder])
        res["timings"]["train_seconds"] = round(time.perf_counter() - t, 3)
        trainer = pipeline.trainer
        res["model_config"] = config.to_dict()
        res["training_config"] = train_config.to_dict()
        res["pythae_training_dir"] = str(trainer.training_dir)
        res["history"] = recorder.history
        res["timings"]["train_steps_seconds"] = round(sum(h["train_seconds"] for h in recorder.history), 3)
        res["timings"]["eval_seconds"] = round(sum(h["eval_seconds"] or 0 for h in recorder.history), 3)
        if recorder.history:
            res["final_train_loss"] = recorder.history[-1]["train_loss"]
            res["final_eval_loss"] = recorder.history[-1]["eval_loss"]
        key = "eval_loss" if args.eval == "test" else "train_loss"
        losses = [h[key] for h in recorder.history]
        res["best_epoch"] = int(np.argmin(losses)) + 1 if losses else None

        model = trainer.model if args.use == "last" else trainer._best_model
        model.eval()
        seed_all(args.seed)
        t = time.perf_counter()
        res["test_loss_parts"] = loss_parts(model, test_x, args.batch_size,
                                            grad=family in NEEDS_GRAD or family == "rae-gp")
        if family in LOGIT_DECODER:
            model.decoder.logits = False  # images from here on: reconstructions and samples
        res["timings"]["test_loss_parts_seconds"] = round(time.perf_counter() - t, 3)

        # Reconstructions of the first n-recon test images.
        t = time.perf_counter()
        rec_mean, rec_sampled = reconstruct(model, family, test_x[:args.n_recon], args.sample_batch)
        np.savez_compressed(fam_dir / "recon_test.npz", images=rec_mean)
        np.savez_compressed(fam_dir / "recon_test_sampled.npz", images=rec_sampled)
        res["timings"]["recon_seconds"] = round(time.perf_counter() - t, 3)
        res["recon"] = {"n": int(len(rec_mean)), "test_indices": [0, int(len(rec_mean))]}

        # Samples from the prior with the family's Pythae sampler.
        seed_all(args.seed + 1)
        t = time.perf_counter()
        try:
            if family == "vamp":
                sampler, kind = VAMPSampler(model), "VAMPSampler"
            elif family == "svae":
                sampler, kind = HypersphereUniformSampler(model), "HypersphereUniformSampler"
            elif family == "pvae":  # the model's own wrapped normal prior on the ball
                sampler, kind = PoincareDiskSampler(model), "PoincareDiskSampler"
            elif family == "vqvae":
                pcfg = PixelCNNSamplerConfig(n_layers=args.pixelcnn_layers, kernel_size=args.pixelcnn_kernel)
                sampler, kind = PixelCNNSampler(model, pcfg), "PixelCNNSampler"
                pixel_train_cfg = BaseTrainerConfig(
                    output_dir=str(fam_dir / "pythae" / "pixelcnn"), num_epochs=args.pixelcnn_epochs,
                    per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
                    optimizer_cls="Adam", learning_rate=args.lr, seed=args.seed, no_cuda=True,
                )
                sampler.fit(train_data=train_x, eval_data=None, training_config=pixel_train_cfg)
                res["timings"]["prior_fit_seconds"] = round(time.perf_counter() - t, 3)
                res["pixelcnn"] = {"sampler_config": pcfg.to_dict(),
                                   "model_config": sampler.pixelcnn_model.model_config.to_dict(),
                                   "training_config": pixel_train_cfg.to_dict(),
                                   "params": n_params(sampler.pixelcnn_model)}
            else:
                sampler, kind = NormalSampler(model), "NormalSampler"
            t_s = time.perf_counter()
            imgs = to_uint8(sampler.sample(num_samples=args.n_samples, batch_size=args.sample_batch))
            res["timings"]["prior_sample_seconds"] = round(time.perf_counter() - t_s, 3)
            np.savez_compressed(fam_dir / "samples_prior.npz", images=imgs)
            res["samples_prior"] = {"sampler": kind, "n": int(len(imgs))}
            if family == "pvae":  # where the prior's codes lie: inside the ball of radius 1/sqrt(c)
                codes = sampler.gen_distribution.rsample(torch.Size([args.n_samples])).reshape(args.n_samples, -1)
                res["samples_prior"].update(ball_radius=model.latent_manifold.c ** -0.5,
                                            code_norm_max=float(codes.norm(dim=-1).max()),
                                            code_norm_mean=float(codes.norm(dim=-1).mean()))
        except Exception as e:  # noqa: BLE001 - record and go on to the next sampler
            res["errors"]["samples_prior"] = f"{type(e).__name__}: {e}"
            res["errors"]["samples_prior_traceback"] = traceback.format_exc()
        res["timings"]["prior_total_seconds"] = round(time.perf_counter() - t, 3)

        # Samples from a Gaussian mixture fit on the training codes.
        seed_all(args.seed + 2)
        t = time.perf_counter()
        try:
            gcfg = GaussianMixtureSamplerConfig(n_components=args.gmm_components)
            gsampler = GaussianMixtureSampler(model, gcfg)
            gsampler.fit(train_data=train_x)
            res["timings"]["gmm_fit_seconds"] = round(time.perf_counter() - t, 3)
            t_s = time.perf_counter()
            imgs = to_uint8(gsampler.sample(num_samples=args.n_samples, batch_size=args.sample_batch))
            res["timings"]["gmm_sample_seconds"] = round(time.perf_counter() - t_s, 3)
            np.savez_compressed(fam_dir / "samples_gmm.npz", images=imgs)
            res["samples_gmm"] = {"sampler": "GaussianMixtureSampler", "n": int(len(imgs)),
                                  "sampler_config": gcfg.to_dict(),
                                  "gmm_converged": bool(gsampler.gmm.converged_),
                                  "gmm_n_iter": int(gsampler.gmm.n_iter_)}
        except Exception as e:  # noqa: BLE001
            if family == "vqvae" and isinstance(e, ValueError) and "dim 4" in str(e):
                # Pythae's GaussianMixtureSampler hands the (N, D, 7, 7) quantised codes to
                # sklearn as they are: a limitation of Pythae, recorded, not a failed run.
                res["unsupported"] = {"samples_gmm": f"{type(e).__name__}: {e}"}
            else:
                res["errors"]["samples_gmm"] = f"{type(e).__name__}: {e}"
                res["errors"]["samples_gmm_traceback"] = traceback.format_exc()
        res["timings"]["gmm_total_seconds"] = round(time.perf_counter() - t, 3)

        res["status"] = "ok" if not res["errors"] else "partial"
    except Exception as e:  # noqa: BLE001 - a failed family is recorded; the others still run
        res["status"] = "failed"
        res["errors"]["family"] = f"{type(e).__name__}: {e}"
        res["errors"]["family_traceback"] = traceback.format_exc()
    res["timings"]["family_seconds"] = round(time.perf_counter() - t_family, 3)
    res["timings"]["process_seconds_at_end"] = process_seconds()
    res["loadavg_after"] = loadavg()
    res["files"] = sorted(p.name for p in fam_dir.iterdir())
    with open(fam_dir / "result.json", "w") as f:
        json.dump(res, f, indent=1, default=str)
    return res


def write_summary(out_root: Path) -> None:
    rows = {}
    for path in sorted(out_root.glob("*/result.json")):
        with open(path) as f:
            r = json.load(f)
        rows[r["family"]] = {
            k: r.get(k) for k in ("status", "params", "final_train_loss", "final_eval_loss",
                                  "best_epoch", "n_train", "seed", "timings", "errors",
                                  "unsupported")
        }
        if rows[r["family"]]["errors"]:
            rows[r["family"]]["errors"] = {k: v for k, v in r["errors"].items() if not k.endswith("traceback")}
    with open(out_root / "summary.json", "w") as f:
        json.dump(rows, f, indent=1)


def main() -> int:
    args = ARGS
    out_root = Path(args.out).resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    train_x, test_x, data_root = load_mnist(args.data_dir)
    if args.limit is not None:
        train_x = train_x[:args.limit]
    data_seconds = round(time.perf_counter() - t, 3)
    print(f"pythae_zoo: {len(train_x)} train / {len(test_x)} test images from {data_root} "
          f"({data_seconds}s); threads {torch.get_num_threads()}; out {out_root}", flush=True)
    results = {}
    for family in args.families:
        print(f"pythae_zoo: === {family} ===", flush=True)
        r = run_family(family, args, train_x, test_x, data_root, out_root)
        r["timings"]["data_seconds"] = data_seconds
        with open(out_root / family / "result.json", "w") as f:
            json.dump(r, f, indent=1, default=str)
        results[family] = r
        errs = {k: v for k, v in r["errors"].items() if not k.endswith("traceback")}
        print(f"pythae_zoo: {family}: {r['status']}  train {r['timings'].get('train_seconds')}s  "
              f"final train/eval loss {r.get('final_train_loss')}/{r.get('final_eval_loss')}"
              + (f"  errors {errs}" if errs else ""), flush=True)
    write_summary(out_root)
    print(f"pythae_zoo: done in {process_seconds()}s (whole process)", flush=True)
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
