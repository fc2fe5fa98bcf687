"""The run directory: one object owns its file names.

    RUN/config.json              the full configuration (rebuilds the model)
    RUN/model.safetensors        weights (+ the config in the metadata)
    RUN/checkpoint.safetensors   weights + optimizer + training state, for --resume
    RUN/history.csv              one row per epoch
    RUN/summary.json             parameters, epochs, time, device
    RUN/eval.json                the evaluation (vaelab eval)
    RUN/samples_eval.json        scores of generated samples (vaelab eval-samples)
    RUN/steer_eval.json          the steering benchmark (vaelab steer-bench)
    RUN/figures/NAME.png         every figure a command draws
    RUN/samplers/                fitted latent samplers (arrays + JSON, never pickle)
"""

from __future__ import annotations

from pathlib import Path


class RunDir:
    CONFIG = "config.json"
    WEIGHTS = "model.safetensors"
    RESUME = "checkpoint.safetensors"
    HISTORY = "history.csv"
    SUMMARY = "summary.json"
    EVAL = "eval.json"
    SAMPLES_EVAL = "samples_eval.json"
    STEER_EVAL = "steer_eval.json"
    FIGURES = "figures"
    SAMPLERS = "samplers"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def weights(self) -> Path:
        return self.path / self.WEIGHTS

    @property
    def resume(self) -> Path:
        return self.path / self.RESUME

    @property
    def history(self) -> Path:
        return self.path / self.HISTORY

    @property
    def summary(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def eval(self) -> Path:
        return self.path / self.EVAL

    @property
    def samples_eval(self) -> Path:
        return self.path / self.SAMPLES_EVAL

    @property
    def steer_eval(self) -> Path:
        return self.path / self.STEER_EVAL

    @property
    def figures(self) -> Path:
        return self.path / self.FIGURES

    def figure(self, name: str) -> Path:
        """``RUN/figures/NAME.png`` (NAME without the suffix)."""
        return self.figures / f"{name}.png"

    @property
    def samplers(self) -> Path:
        return self.path / self.SAMPLERS

    def is_run(self) -> bool:
        return self.config.is_file()


__all__ = ["RunDir"]
