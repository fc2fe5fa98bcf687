"""The two-stage VAE sampler (Dai & Wipf 2019, "Diagnosing and enhancing VAE models", ICLR;
arXiv:1903.05789): a second, small VAE fit on a trained model's codes z, sampled as

    u ~ N(0, scale I)  ->  stage-2 decoder mean  ->  z  ->  the run's own decoder

Stage 2 is a VAE over R^D (D the code size) with a latent u of the same size by default,
a Gaussian decoder of one *learned* variance gamma (the paper's point: as gamma shrinks,
stage 2 fits the codes' distribution, where a stage-1 model's aggregate posterior is not
N(0, I)), and MLPs whose input is concatenated to their last hidden layer, as in the
authors' code (github.com/daib13/TwoStageVAE: ``second_depth`` 3 dense layers of
``second_dim`` 1024, ReLU). The defaults here are smaller (2 layers of 128, 20 epochs of
batch 128, Adam 1e-3): on 60,000 16-d codes that is about 9,400 steps of a 44k-parameter
network (about 0.3 TFLOP forward and backward, a CPU thread's work for seconds to tens of
seconds; not timed here), where the paper's width suits image-sized data sets on a GPU. Where this differs from the paper: the codes are standardised per dimension before
stage 2 (a fixed affine map, undone after sampling, so one learning rate serves codes of
any scale); it is fit on the posterior means, as every fitted sampler here is (the paper
draws z ~ q(z|x) from a stage-1 VAE; a deterministic autoencoder has only the mean); and it
trains through vaelab's one trainer (``vaelab.training.trainer.Trainer``) at a constant rate.

``fit_two_stage(codes, options, seed)`` returns the trained network; the sampler
(``TwoStageSampler``, below; ``SAMPLERS["two-stage"]`` in ``vaelab.latent.sampling``) keeps
its weights in ``RUN/samplers/two-stage.safetensors`` and its settings in ``two-stage.json``:
never a pickle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vaelab.distributions import DiagNormal, StandardNormal, kl_divergence
from vaelab.errors import CheckpointError, ConfigError, DataError
from vaelab.latent.sampler_base import FittedSampler
from vaelab.models.bodies import mlp
from vaelab.rundir import ID_FIELD


def _help(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class TwoStageOptions:
    """The two-stage sampler's settings (``fitted_sampler(run, "two-stage", epochs=...)``)."""

    epochs: int = _help(20, "epochs of stage 2 over the training codes")
    hidden: int = _help(128, "width of stage 2's hidden layers (the authors' code: 1024)")
    depth: int = _help(2, "hidden layers of stage 2's encoder and of its decoder (the authors' code: 3)")
    latent: int | None = _help(None, "size of stage 2's latent u (default: the code size, as in the paper)")
    batch_size: int = _help(128, "stage 2's batch size")
    lr: float = _help(1e-3, "stage 2's Adam learning rate (constant)")
    scale: float = _help(1.0, "variance of u when sampling: below 1 trades variety for fidelity")

    def __post_init__(self) -> None:
        for name in ("epochs", "hidden", "depth", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"sampler two-stage: {name} must be >= 1, got {getattr(self, name)}")
        if self.latent is not None and self.latent < 1:
            raise ConfigError(f"sampler two-stage: latent must be >= 1 (or unset: the code size), got {self.latent}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"sampler two-stage: lr must be positive, got {self.lr}")
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ConfigError(f"sampler two-stage: scale must be positive, got {self.scale}")


class TwoStageVAE(nn.Module):
    """Stage 2: a VAE over codes z (B, dim), latent u (B, latent), decoder variance exp(log_gamma).
    ``forward(z) -> {"loss", "recon", "kl"}`` per code (nats, in standardised-code space)."""

    def __init__(self, dim: int, latent: int, hidden: int, depth: int):
        super().__init__()
        self.dim, self.latent = dim, latent
        self.enc = nn.Sequential(*mlp([dim] + [hidden] * depth, "relu"))
        self.mu = nn.Linear(dim + hidden, latent)
        self.logvar = nn.Linear(dim + hidden, latent)
        self.dec = nn.Sequential(*mlp([latent] + [hidden] * depth, "relu"))
        self.out = nn.Linear(latent + hidden, dim)
        self.log_gamma = nn.Parameter(torch.zeros(()))  # the decoder's log-variance, learned
        self.register_buffer("shift", torch.zeros(dim))  # the codes' mean and std per dimension
        self.register_buffer("spread", torch.ones(dim))

    def posterior(self, zs: torch.Tensor) -> DiagNormal:
        h = torch.cat([zs, self.enc(zs)], 1)
        return DiagNormal(self.mu(h), self.logvar(h))

    def decode(self, u: torch.Tensor) -> torch.Tensor:
        """Codes z (B, dim) in the run's own scale: the decoder mean of u, standardising undone."""
        return self.out(torch.cat([u, self.dec(u)], 1)) * self.spread + self.shift

    def forward(self, z: torch.Tensor, y=None, **_) -> dict[str, torch.Tensor]:
        zs = (z - self.shift) / self.spread
        q = self.posterior(zs)
        u = q.rsample()
        zhat = self.out(torch.cat([u, self.dec(u)], 1))
        # -log N(zs; zhat, gamma I), summed over dimensions
        recon = 0.5 * ((zs - zhat).square().sum(1) * torch.exp(-self.log_gamma)
                       + self.dim * (self.log_gamma + math.log(2 * math.pi)))
        kl = kl_divergence(q, StandardNormal(self.latent, z.device, z.dtype))
        return {"loss": recon + kl, "recon": recon, "kl": kl}


def build(config: dict) -> TwoStageVAE:
    """The network a saved ``config`` (``network_config``) describes."""
    return TwoStageVAE(int(config["dim"]), int(config["latent"]), int(config["hidden"]), int(config["depth"]))


def config_of(tensors: dict[str, torch.Tensor]) -> dict:
    """The ``network_config`` a state dict's shapes imply (read before anything is allocated)."""
    try:
        dim, (latent, width) = tensors["shift"].numel(), tuple(tensors["mu.weight"].shape)
        depth = sum(1 for k in tensors if k.startswith("enc.") and k.endswith(".weight"))
    except (KeyError, ValueError) as e:
        raise DataError(f"not a two-stage network's weights ({type(e).__name__}: {e})") from None
    return {"dim": int(dim), "latent": int(latent), "hidden": int(width - dim), "depth": depth}


def network_config(dim: int, o: TwoStageOptions) -> dict:
    return {"dim": dim, "latent": o.latent or dim, "hidden": o.hidden, "depth": o.depth}


def fit_two_stage(codes: np.ndarray, o: TwoStageOptions, seed: int = 0) -> tuple[TwoStageVAE, dict]:
    """Stage 2 trained on ``codes`` (N, D) through the one trainer, on the CPU; (network, info:
    its config and the last epoch's losses). Torch's global random state is left as it was."""
    from vaelab.config import TrainConfig
    from vaelab.data import TensorSet
    from vaelab.training.trainer import Trainer

    if codes.ndim != 2:
        raise DataError(f"the two-stage sampler fits flat codes (N, D); this run's codes are {tuple(codes.shape)} "
                        "(a feature map: model.latent=conv); use a dense latent")
    if len(codes) < 2:
        raise DataError(f"the two-stage sampler needs at least 2 training codes, got {len(codes)}")
    z = torch.as_tensor(codes, dtype=torch.float32)
    config = network_config(z.shape[1], o)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build(config)
        net.shift.copy_(z.mean(0))
        net.spread.copy_(z.std(0).clamp_min(1e-6))  # a dead dimension: kept, not divided by 0
        settings = TrainConfig(epochs=o.epochs, batch_size=o.batch_size, lr=o.lr, seed=seed, precision="fp32",
                               device="cpu", progress=False)
        trainer = Trainer(net, TensorSet(z), settings, device="cpu", log=lambda *_: None).fit()
    net.eval()
    last = trainer.history[-1] if trainer.history else {}
    info = {"config": config, "train_loss": last.get("train_loss"), "train_recon": last.get("train_recon"),
            "train_kl": last.get("train_kl"), "gamma": float(net.log_gamma.detach().exp()), "n_codes": len(z)}
    return net, info


class NoiseToCode(nn.Module):
    """Standard-normal noise (B, U) -> codes (B, D): u = sqrt(scale) noise through stage 2's decoder
    mean, standardising undone (the sampler's draw, and its ONNX graph: ``onnx_codes``)."""

    def __init__(self, net: TwoStageVAE, scale: float = 1.0):
        super().__init__()
        self.net, self.root = net, math.sqrt(scale)
        self.noise_dim = int(net.latent)  # U: may differ from the code size D (--latent)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.net.decode(noise * self.root)


@torch.no_grad()
def sample_codes(net: TwoStageVAE, n: int, scale: float = 1.0, seed: int = 0) -> np.ndarray:
    """n codes (n, D) float64: u ~ N(0, scale I) through stage 2's decoder mean."""
    g = torch.Generator().manual_seed(seed)
    return NoiseToCode(net, scale)(torch.randn((n, net.latent), generator=g)).double().numpy()


class TwoStageSampler(FittedSampler):
    """A second VAE fit on the training codes, decoded from N(0, I) (Dai & Wipf 2019)."""

    name = "two-stage"
    suffix = ".safetensors"
    options = TwoStageOptions  # its settings, with help (`vaelab parts samplers`)

    def __init__(self, epochs: int = 20, hidden: int = 128, depth: int = 2, latent: int | None = None,
                 batch_size: int = 128, lr: float = 1e-3, scale: float = 1.0, codes: str = "mean", **params):
        self.check_params(params)  # one it does not take: refused in one line (Sampler.check_params) first
        o = TwoStageOptions(epochs=int(epochs), hidden=int(hidden), depth=int(depth),
                            latent=None if latent is None else int(latent), batch_size=int(batch_size),
                            lr=float(lr), scale=float(scale))
        super().__init__(codes=codes, **o.__dict__)
        self.opts, self.net, self.info = o, None, {}

    def fit(self, codes, labels=None, seed=0):
        self.net, self.info = fit_two_stage(codes, self.opts, seed)
        return self

    def sample(self, n, cls=None, seed=0):
        if cls is not None:
            raise ConfigError("the two-stage sampler is unconditional; use class-gmm for --class")
        return sample_codes(self.net, n, self.opts.scale, seed)

    def onnx_codes(self):
        """The ONNX sampler's first half: standard-normal noise (B, U) -> codes (B, D), U the
        stage-2 latent (``latent``, default D); ``noise_dim`` says U."""
        if self.net is None:
            raise ConfigError("the two-stage sampler is not fitted: use fitted_sampler(run, 'two-stage')")
        return NoiseToCode(self.net, self.opts.scale).eval()

    def _write(self, path: Path, checkpoint_id: str | None) -> dict:
        from vaelab.tensorfiles import save_tensors

        # the weights it was fit on in the file too (vaelab.rundir.recorded_id reads safetensors' metadata)
        save_tensors(path, self.net.state_dict(), {"sampler": self.name, ID_FIELD: checkpoint_id or ""})
        return {"stage2": self.info}

    def _read(self, path: Path, meta: dict) -> None:
        from vaelab.tensorfiles import load_tensors

        tensors, _ = load_tensors(path)  # safetensors only: a pickle is refused before it is parsed
        try:
            # the shapes of the weights, checked against the JSON, before a network is built
            config = config_of(tensors)
            if config != meta["stage2"]["config"]:
                raise RuntimeError(f"its weights are a network of {config}, its JSON says {meta['stage2']['config']}")
            net = build(config)
            net.load_state_dict(tensors)
        except (RuntimeError, DataError) as e:
            raise CheckpointError(f"{path} does not match its own settings: {str(e).splitlines()[0]}") from None
        self.net, self.info = net.eval(), meta["stage2"]


__all__ = ["NoiseToCode", "TwoStageOptions", "TwoStageSampler", "TwoStageVAE", "build", "config_of", "fit_two_stage", "network_config", "sample_codes"]
