"""Flow samplers: a normalizing flow fit by maximum likelihood on a run's training codes.

``maf`` (Papamakarios et al. 2017, "Masked Autoregressive Flow for Density Estimation",
NeurIPS, arXiv:1705.07057) and ``iaf`` (Kingma et al. 2016, "Improved Variational Inference
with Inverse Autoregressive Flow", NeurIPS, arXiv:1606.04934) are the same affine
autoregressive step read in the two directions. With data x (a code, standardised) and
noise u ~ N(0, I), each MADE block (Germain et al. 2015; ``vaelab.models.flows.MADE``) gives
[m, s] and

    x = u * exp(s) + m,        u = (x - m) * exp(-s),        log |det du/dx| = -sum_i s_i.

- MAF: [m, s] = MADE(x) reads the data. The density is one pass per block (training is
  fast); sampling is sequential, D passes per block (x_i needs x_<i).
- IAF: [m, s] = MADE(u) reads the noise. Sampling is one pass per block; the density, which
  fitting by maximum likelihood needs, is the inverse: D passes per block, computed exactly
  (codes have D = 2..64 dimensions, so this is affordable, and it is what the fit costs).

A sequential pass is D applications of the block to the running estimate: after pass k the
first k variables in the block's order are exact, so after D passes all are, for every input
and every weight; the result (and so its gradient) is the inverse itself, not an
approximation. Blocks alternate the natural and the reversed variable order.

log p(z) = log N(u; 0, I) - sum_blocks sum_i s_i - sum_i log std_i: the codes are
standardised first (mean and std of the training codes, kept with the weights). ``scale``
multiplies the noise's variance when sampling (u ~ N(0, scale I)): below 1 trades variety
for fidelity, as the other samplers' ``scale`` does.

Fitting is Adam on the per-code negative log-likelihood through vaelab's trainer (the loop
every model trains with). Defaults and where they differ from Pythae's MAFSampler and
IAFSampler (clementchadebec/benchmark_VAE: src/pythae/samplers/{maf,iaf}_sampler, over
src/pythae/models/normalizing_flows/{maf,iaf,made}), which fit with their own trainer:

- ``blocks`` = 2 MADE blocks of ``layers`` = 3 hidden layers of ``hidden`` = 128 units, as
  Pythae's n_made_blocks, n_hidden_in_made and hidden_size. Pythae's MADE uses ReLU, ours
  (shared with the IAF posterior) ELU; here s starts at 0 (each block starts at the identity).
- ``epochs`` = 20 at ``lr`` = 1e-3, batches of 256: Pythae's trainer defaults to 100 epochs at
  1e-4, batches of 64, which is minutes to hours on a CPU for 60,000 codes; ``--epochs`` and
  ``--lr`` set them.
- Pythae fits on the raw codes; here on standardised ones (stored), so one learning rate
  suits any code scale. Pythae's optional batch norm between blocks is not offered.

Fitted flows save as ``RUN/samplers/NAME.safetensors`` (weights, standardisation, and in its
metadata the parameters and the checkpoint id) beside ``NAME.json`` (which records the file's
SHA-256, as for every fitted sampler): never a pickle. A file that changed since, is not
safetensors, is truncated, or disagrees with its NAME.json is refused when loaded
(``fitted_sampler`` then fits again, saying so in one line).

ONNX: ``onnx_codes()`` is noise (B, D) -> code (B, D). The IAF is one pass per block; the MAF
is its D passes per block unrolled (blocks * D MADE applications, weights stored once).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vaelab.errors import CheckpointError, ConfigError, DataError
from vaelab.latent.sampler_base import FittedSampler
from vaelab.models.flows import MADE
from vaelab.rundir import ID_FIELD
from vaelab.tensorfiles import load_tensors, save_tensors

LOG_2PI = math.log(2 * math.pi)


class AutoregressiveFlow(nn.Module):
    """``blocks`` affine autoregressive MADE blocks over D standardised dimensions; ``reads``
    says which side each MADE reads: "data" (MAF) or "noise" (IAF)."""

    def __init__(self, dim: int, blocks: int, hidden: int, layers: int, reads: str):
        super().__init__()
        if reads not in ("data", "noise"):
            raise ValueError(f"reads must be 'data' or 'noise', got {reads!r}")
        self.dim, self.reads = dim, reads
        natural = torch.arange(dim)
        self.blocks = nn.ModuleList(MADE(dim, [hidden] * layers, 0, natural if b % 2 == 0 else natural.flip(0))
                                    for b in range(blocks))
        for made in self.blocks:
            with torch.no_grad():
                made.out.bias[dim:].zero_()  # s = 0 at the start: exp(s) = 1, each block near the identity
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    # one block, in each direction: (output, sum_i s_i)
    def _to_noise(self, made: MADE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reads == "data":  # MAF: one pass
            m, s = made(x, None)
            return (x - m) * torch.exp(-s), s.sum(-1)
        u = torch.zeros_like(x)  # IAF: D passes, u_i needs u_<i
        for _ in range(self.dim):
            m, s = made(u, None)
            u = (x - m) * torch.exp(-s)
        return u, s.sum(-1)

    def _to_data(self, made: MADE, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reads == "noise":  # IAF: one pass
            m, s = made(u, None)
            return u * torch.exp(s) + m, s.sum(-1)
        x = torch.zeros_like(u)  # MAF: D passes, x_i needs x_<i
        for _ in range(self.dim):
            m, s = made(x, None)
            x = u * torch.exp(s) + m
        return x, s.sum(-1)

    def to_noise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, log |det du/dz|) for codes z (B, D) in the run's own units: the inverse of ``forward``."""
        x = (z - self.mean) / self.std
        log_det = -torch.log(self.std).sum().expand(x.shape[0])
        for made in self.blocks:
            x, s = self._to_noise(made, x)
            log_det = log_det - s
        return x, log_det

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) per code (B,), in nats: log N(u; 0, I) + log |det du/dz|."""
        u, log_det = self.to_noise(z)
        return -0.5 * (u.square().sum(-1) + self.dim * LOG_2PI) + log_det

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        """Codes (B, D) for noise u (B, D) (the blocks inverted, last to first)."""
        x = noise
        for made in reversed(self.blocks):
            x, _ = self._to_data(made, x)
        return x * self.std + self.mean


class _NLL(nn.Module):
    """The flow as the trainer trains a model: ``forward(z) -> {"loss": -log p(z) per code}``."""

    def __init__(self, flow: AutoregressiveFlow):
        super().__init__()
        self.flow = flow

    def forward(self, z: torch.Tensor, y=None, **_) -> dict[str, torch.Tensor]:
        return {"loss": -self.flow.log_prob(z)}


class _Noise(nn.Module):
    """noise (B, D) standard normal -> codes: u = sqrt(scale) noise through the flow (the ONNX graph)."""

    def __init__(self, flow: AutoregressiveFlow, scale: float):
        super().__init__()
        self.flow, self.root = flow, math.sqrt(scale)
        self.noise_dim = flow.dim  # the code size: a flow keeps the dimension

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.flow(noise * self.root)


class FlowSampler(FittedSampler):
    """Base of the flow samplers: ``reads`` names the side each MADE reads."""

    reads = ""
    suffix = ".safetensors"  # the weights file beside NAME.json
    log = staticmethod(lambda s: None)  # fitted_sampler sets its own: the fit's announcement
    device = "cpu"  # where the fit runs (fitted_sampler: the run's device); the fitted flow then lives on the CPU

    def __init__(self, blocks: int = 2, hidden: int = 128, layers: int = 3, epochs: int = 20, lr: float = 1e-3,
                 batch_size: int = 256, scale: float = 1.0, **params):
        for key, v in (("blocks", blocks), ("hidden", hidden), ("layers", layers), ("epochs", epochs),
                       ("batch_size", batch_size)):
            if int(v) < 1:
                raise ConfigError(f"{key} of the {self.name} sampler must be >= 1, got {v}")
        if not float(lr) > 0:
            raise ConfigError(f"lr of the {self.name} sampler must be positive, got {lr}")
        if not float(scale) > 0:
            raise ConfigError(f"scale must be positive, got {scale}")
        super().__init__(blocks=int(blocks), hidden=int(hidden), layers=int(layers), epochs=int(epochs),
                         lr=float(lr), batch_size=int(batch_size), scale=float(scale), **params)
        self.flow: AutoregressiveFlow | None = None
        self.train_nll: float | None = None

    def _build(self, dim: int) -> AutoregressiveFlow:
        p = self.params
        return AutoregressiveFlow(dim, p["blocks"], p["hidden"], p["layers"], self.reads)

    def fit(self, codes: np.ndarray, labels: np.ndarray | None = None, seed: int = 0) -> FlowSampler:
        from vaelab.config import TrainConfig
        from vaelab.data import TensorSet
        from vaelab.progress import announce
        from vaelab.training.trainer import Trainer

        codes = np.asarray(codes, dtype=np.float64)
        if codes.ndim != 2 or len(codes) < 2:
            raise DataError(f"the {self.name} sampler needs two or more codes (N, D) to fit, got shape {codes.shape}")
        if not np.isfinite(codes).all():
            raise DataError(f"the codes given to the {self.name} sampler hold NaN or inf values")
        p, (n, d) = self.params, codes.shape
        std = codes.std(0)
        std = np.where(std > 1e-8 * max(float(std.max()), 1e-12), std, 1.0)  # a dead dimension: left unscaled
        device = torch.device(self.device)
        torch.manual_seed(seed)
        flow = self._build(d)
        flow.mean.copy_(torch.from_numpy(codes.mean(0)).float())
        flow.std.copy_(torch.from_numpy(std).float())
        passes = "1 pass" if self.reads == "data" else f"{d} passes (about {d} times a maf's fit)"
        announce(self.log, f"fitting the {self.name} sampler on {n:,} codes of {d} dimensions",
                 why=f"maximum likelihood, Adam, on the {device.type.upper() if device.type != 'cpu' else 'CPU'}",
                 cost=f"{p['epochs']} epochs of {math.ceil(n / p['batch_size']):,} steps, {passes} per block "
                      "for the density (--epochs sets how many)")
        settings = TrainConfig(epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"], seed=seed,
                               device=str(device), progress=False, precision="fp32")
        trainer = Trainer(_NLL(flow.to(device)), TensorSet(torch.from_numpy(codes).float()).to(device), settings,
                          device=device, log=self.log).fit()
        self.train_nll = trainer.history[-1]["train_loss"] if trainer.history else None
        self.flow = flow.to("cpu").eval()
        return self

    def _fitted(self) -> AutoregressiveFlow:
        if self.flow is None:
            raise ConfigError(f"the {self.name} sampler is not fitted: use fitted_sampler(run, '{self.name}')")
        return self.flow

    def log_prob(self, codes: np.ndarray) -> np.ndarray:
        """log p(z) per code (N,), in nats, under the fitted flow."""
        with torch.no_grad():
            return self._fitted().log_prob(torch.as_tensor(codes, dtype=torch.float32)).double().numpy()

    def sample(self, n: int, cls: int | None = None, seed: int = 0) -> np.ndarray:
        if cls is not None:
            raise ConfigError(f"the {self.name} sampler is unconditional; use class-gaussian or class-gmm for --class")
        flow = self._fitted()
        noise = torch.randn((n, flow.dim), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            return _Noise(flow, self.params["scale"])(noise).double().numpy()

    def onnx_codes(self) -> nn.Module:
        """The ONNX sampler's first half: standard-normal noise (B, D) -> codes (B, D)."""
        return _Noise(self._fitted(), self.params["scale"]).eval()

    # -- persistence: safetensors (weights, standardisation) + JSON, never pickle; Sampler.save and
    # Sampler.load write and check the file's SHA-256 in NAME.json around these two
    def _write(self, path: Path, checkpoint_id: str | None) -> dict:
        flow = self._fitted()
        save_tensors(path, flow.state_dict(), {"sampler": self.name, "params": json.dumps(self.params),
                                               "dim": str(flow.dim), ID_FIELD: checkpoint_id or ""})
        return {"file": path.name, "train_nll": self.train_nll}

    def _read(self, path: Path, meta: dict) -> None:
        """The flow in ``path``; one that is not safetensors, is truncated or does not match its
        NAME.json (``meta``) is refused in one line (CheckpointError)."""
        tensors, info = load_tensors(path)
        try:
            params, dim = json.loads(info["params"]), int(info["dim"])
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{path} has no valid sampler settings in its metadata ({e})") from None
        if info.get("sampler") != self.name or params != meta.get("params") or info.get(ID_FIELD, "") != (
                meta.get(ID_FIELD) or ""):
            raise CheckpointError(f"{path} does not match {self.name}.json beside it (sampler, settings or checkpoint)")
        flow = self._build(dim)
        try:
            flow.load_state_dict(tensors)
        except RuntimeError as e:
            raise CheckpointError(f"{path} does not match its own settings: {str(e).splitlines()[0]}") from None
        if not all(bool(torch.isfinite(t).all()) for t in tensors.values()):
            raise CheckpointError(f"{path} holds NaN or inf weights")
        self.flow, self.train_nll = flow.eval(), meta.get("train_nll")


class MAFSampler(FlowSampler):
    """A masked autoregressive flow (Papamakarios et al. 2017) fit on the training codes: fast density, sequential sampling."""

    name = "maf"
    reads = "data"


class IAFSampler(FlowSampler):
    """An inverse autoregressive flow (Kingma et al. 2016) fit on the training codes: one-pass sampling, sequential density."""

    name = "iaf"
    reads = "noise"


__all__ = ["AutoregressiveFlow", "FlowSampler", "IAFSampler", "MAFSampler"]
