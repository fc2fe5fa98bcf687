"""Built-in experiments: the studies people run by hand, each a sweep with its report.

    vaelab experiment latent-dim [--quick]

Every experiment trains on the 60,000 MNIST training digits and reports metrics on
the 10,000 test digits (never seen in training), so the numbers are held-out numbers.
``--quick`` trains on a seeded random 10,000 of the digits for 2 epochs: a few minutes on two CPU
cores, enough to see the pipeline work, not to draw conclusions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vaelab.errors import ConfigError
from vaelab.sweep.runner import SweepSpec, Trial, expand_grid, run_sweep

# Train on the training split, measure on the held-out test split (the conv-vae preset
# itself trains on train+test, as the Keras tutorial does).
HELD_OUT = ["data.train_split=train", "data.val=test"]
QUICK = ["data.limit=10000"]
QUICK_EPOCHS = 2


@dataclass
class Experiment:
    name: str
    description: str
    preset: str
    trials: list[Trial]
    epochs: int
    base: list[str] = field(default_factory=list)
    grid: bool = True

    def spec(self, quick: bool = False, epochs: int | None = None, extra: list[str] | None = None) -> SweepSpec:
        base = HELD_OUT + self.base + (QUICK if quick else []) + list(extra or [])
        return SweepSpec(trials=self.trials, preset=self.preset, base=base,
                         epochs=epochs or (QUICK_EPOCHS if quick else self.epochs),
                         name=f"experiment {self.name}{' (quick)' if quick else ''}", grid=self.grid)


def _arch_trials() -> list[Trial]:
    ae = {"model.kind": "ae", "model.arch": "mlp", "model.latent_dim": 32}
    return [
        Trial("mlp-vae", {"model.kind": "vae", "model.arch": "mlp", "model.latent_dim": 16}, preset="mlp-vae"),
        Trial("conv-vae", {"model.kind": "vae", "model.arch": "conv", "model.latent_dim": 16}, preset="conv-vae"),
        Trial("ae-1-hidden", {**ae, "model.hidden": []}, preset="deep-ae"),
        Trial("ae-5-hidden", {**ae, "model.hidden": [512, 128]}, preset="deep-ae"),
        Trial("ae-9-hidden", {**ae, "model.hidden": [512, 256, 128, 64]}, preset="deep-ae"),
    ]


EXPERIMENTS: dict[str, Experiment] = {
    "latent-dim": Experiment(
        "latent-dim", "convolutional VAE (conv-vae) with latent dimension 1, 2, 4, 6, 8, 10",
        "conv-vae", expand_grid({"model.latent_dim": [1, 2, 4, 6, 8, 10]}), epochs=5),
    "depth": Experiment(
        "depth", "convolutional VAE with 1 to 4 conv layers (32; 32-64; 32-64-128; 32-64-128-256), latent 8",
        "conv-vae", expand_grid({"model.channels": [[32], [32, 64], [32, 64, 128], [32, 64, 128, 256]]}),
        epochs=5, base=["model.latent_dim=8"]),
    "loss": Experiment(
        "loss", "convolutional VAE, latent 8, with bce, mse and euclidean reconstruction losses",
        "conv-vae", expand_grid({"model.loss": ["bce", "mse", "euclidean"]}), epochs=5,
        base=["model.latent_dim=8"]),
    "architecture": Experiment(
        "architecture", "MLP vs convolutional VAE (latent 16), and dense autoencoders with 1, 5 and 9 "
        "hidden layers (32; 512-128-32-128-512; 512-256-128-64-32-64-128-256-512)",
        "deep-ae", _arch_trials(), epochs=5, grid=False),
}


def get(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; available: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def run_experiment(name: str, out: str | Path | None = None, quick: bool = False, epochs: int | None = None,
                   extra: list[str] | None = None, workers: int = 1, executor: str = "local",
                   ray_address: str | None = None, report: bool = True,
                   log: Callable[[str], None] = print) -> Path:
    """Run (or resume) an experiment; write its results, figures and ``report.html``; return its folder."""
    exp = get(name)
    out = Path(out or f"runs/experiments/{name}{'-quick' if quick else ''}")
    log(f"experiment {name}: {exp.description}")
    run_sweep(exp.spec(quick, epochs, extra), out, workers=workers, executor=executor,
              ray_address=ray_address, log=log)
    if report:
        from vaelab.report import write_report

        log(f"wrote {write_report(out)}")
    return out


__all__ = ["EXPERIMENTS", "Experiment", "get", "run_experiment"]
