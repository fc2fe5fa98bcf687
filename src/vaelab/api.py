"""The Python API: train a run, load it, use it. The CLI is a thin layer over this.

    import vaelab
    run = vaelab.train("mlp-vae", "runs/mlp-vae", overrides=["train.epochs=2"])
    run = vaelab.Run.load("runs/mlp-vae")
    z = run.encode(images)          # (N, latent_dim)
    x_hat = run.decode(z)           # (N, C, H, W) in [0, 1]
    run.evaluate(split="test")      # dict, as in eval.json
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from vaelab.training import checkpoint
from vaelab.config import RunConfig, apply_overrides, build_config
from vaelab.data import ImageSet, Splits, load_data
from vaelab.evaluation.evaluate import evaluate
from vaelab.io import write_json
from vaelab.training.loop import fit, resolve_device

DEFAULT_IW_SAMPLES = 50  # `vaelab eval` and Run.evaluate
TRAIN_IW_SAMPLES = 10  # the evaluation `train` runs at the end: 1 s instead of 4 s on MNIST


@dataclass
class Run:
    """A trained model and everything about it, backed by a run directory."""

    config: RunConfig
    model: torch.nn.Module
    run_dir: Path | None = None
    device: torch.device = torch.device("cpu")
    _splits: Splits | None = None

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto", data_dir: str | None = None) -> "Run":
        dev = resolve_device(device)
        config, model = checkpoint.load_model(run_dir, dev)
        if data_dir is not None:
            config.data.data_dir = data_dir
        return cls(config=config, model=model, run_dir=Path(run_dir), device=dev)

    # -------------------------------------------------------------- data
    def splits(self) -> Splits:
        if self._splits is None:
            self._splits = load_data(self.config.data)
        return self._splits

    def split(self, name: str | None = None) -> ImageSet:
        """A split by name; None picks the default (test, else val, else train)."""
        return self.splits().get(name or self.default_split())

    def default_split(self) -> str:
        s = self.splits()
        return "test" if s.test is not None else "val" if s.val is not None else "train"

    # -------------------------------------------------------------- model use
    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Latent codes (posterior means) for images (N, C, H, W) in [0, 1]."""
        return self._batched(lambda b: self.model.encode(b), x, batch_size)

    @torch.no_grad()
    def posterior(self, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor | None]:
        mus, lvs = [], []
        for i in range(0, len(x), batch_size):
            mu, lv = self.model.posterior(x[i:i + batch_size].to(self.device))
            mus.append(mu.cpu())
            lvs.append(None if lv is None else lv.cpu())
        return torch.cat(mus), (None if lvs[0] is None else torch.cat(lvs))

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Images in [0, 1] from codes (N, latent_dim)."""
        return self._batched(lambda b: self.model.decode(b), z, batch_size)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        return self._batched(lambda b: self.model.reconstruct(b), x, batch_size)

    @torch.no_grad()
    def sample_prior(self, n: int, seed: int = 0) -> torch.Tensor:
        z = torch.randn(n, self.config.model.latent_dim, generator=torch.Generator().manual_seed(seed))
        return self.decode(z)

    def _batched(self, fn: Callable, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        self.model.eval()
        return torch.cat([fn(x[i:i + batch_size].to(self.device)).cpu() for i in range(0, len(x), batch_size)])

    # -------------------------------------------------------------- evaluation and figures
    def evaluate(self, split: str | None = None, iw_samples: int = DEFAULT_IW_SAMPLES, seed: int = 0,
                 save: bool = True) -> dict:
        split = split or self.default_split()
        data = self.split(split)
        result = evaluate(self.model, data.to(self.device), iw_samples=iw_samples, seed=seed,
                          batch_size=self.config.train.eval_batch_size, device=self.device, split=split)
        # Honest numbers: say when the images were part of training (the Keras recipe
        # trains on train+test, so its "test" numbers are not held-out numbers).
        result["seen_in_training"] = split == "train" or (split == "test" and self.config.data.train_split == "train+test")
        if save and self.run_dir is not None:
            write_json(self.run_dir / "eval.json", result)
        return result

    def history(self) -> list[dict]:
        path = self.run_dir / "history.csv" if self.run_dir else None
        if path is None or not path.is_file():
            return []
        with open(path) as f:
            return list(csv.DictReader(f))

    def figures(self, n: int = 16, seed: int = 0) -> list[Path]:
        """Write the standard figures into ``RUN/figures``: loss curves, reconstructions, prior samples."""
        from vaelab.viz import plots

        out = self.run_dir / "figures"
        paths = []
        history = self.history()
        if history:
            paths.append(plots.plot_history(history, out / "loss.png",
                                            title=f"{self.config.preset or 'run'}: loss per epoch"))
        x = self.split().batch(slice(0, n))
        paths.append(plots.plot_reconstructions(x, self.reconstruct(x), out / "reconstructions.png"))
        if self.model.is_vae:
            paths.append(plots.plot_grid(self.sample_prior(64, seed), out / "samples_prior.png",
                                         title="samples from the prior N(0, I)"))
        return paths


def train(preset: str | RunConfig | None, run_dir: str | Path, overrides: list[str] | None = None,
          config_file: str | None = None, resume: bool = False, evaluate_after: bool = True,
          iw_samples: int = TRAIN_IW_SAMPLES, log: Callable[[str], None] = print, extra: dict | None = None) -> Run:
    """Train, then write ``eval.json`` and figures. ``preset`` may be a name or a RunConfig;
    ``extra`` holds typed values by section ({"train": {"epochs": 4}}), applied before ``overrides``."""
    if isinstance(preset, RunConfig):
        config = preset
    elif resume:
        config = RunConfig.from_dict(apply_overrides(checkpoint.load_config(run_dir).to_dict(), extra, overrides))
    else:
        config = build_config(preset, config_file, overrides, extra)
    result = fit(config, run_dir, resume=resume, log=log)
    run = Run(config=result.config, model=result.model, run_dir=Path(run_dir),
              device=next(result.model.parameters()).device, _splits=result.splits)
    if evaluate_after:
        run.evaluate(iw_samples=iw_samples, seed=config.train.seed)
        run.figures(seed=config.train.seed)
    return run
