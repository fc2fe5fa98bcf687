"""The Python API: train a run, load it, use it. The CLI is a thin layer over this.

    import vaelab
    run = vaelab.train("mlp-vae", "runs/mlp-vae-2ep", overrides=["train.epochs=2"])
    # a folder that holds a run is refused: resume=True continues it, overwrite=True replaces it
    run = vaelab.Run.load("runs/mlp-vae-2ep")
    z = run.encode(images)          # (N, latent_dim)
    x_hat = run.decode(z)           # (N, C, H, W) in [0, 1]
    run.evaluate(split="test")      # dict, as in eval.json (save=True writes it)

Conditional models take labels: ``run.encode(x, y)``, ``run.decode(z, y)``; without
them ``encode`` uses the most probable class and ``decode`` asks for one.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vaelab import distributions
from vaelab.config import DATA_DIR_SOURCES, RunConfig, flatten, is_whole
from vaelab.configure import build_config, config_from_dict
from vaelab.data import ImageSet, Splits, load_data
from vaelab.data.inputs import chunks, is_empty, read_codes, read_images, read_labels
from vaelab.errors import CheckpointMismatch, ConfigError, DataError, VaelabError
from vaelab.evaluation.evaluate import evaluate
from vaelab.io import write_json
from vaelab.rundir import ID_FIELD, RunDir
from vaelab.training import checkpoint
from vaelab.training.loggers import make_loggers
from vaelab.training.loop import fit
from vaelab.training.precision import resolve_device

DEFAULT_IW_SAMPLES = 50  # `vaelab eval` and Run.evaluate
TRAIN_IW_SAMPLES = 10  # the evaluation `train` runs at the end: 1 s instead of 4 s on MNIST
# ... over this many test images, chosen at random with the run's seed; nll_iw is then the
# difference estimate of the whole split's mean, with its standard error (evaluate's docstring).
# conv-vae's final evaluation in fp32: 17.9 s over all 10,000 test images, of which nll_iw is most;
# over 1,000 its standard error was about 0.05 nats (bench/README.md, issue 21). None: all of them.
TRAIN_IW_IMAGES = 1000


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def check_eval_args(iw_samples: int | None, iw_images: int | None) -> None:
    """The evaluation's own arguments, refused in one line before anything runs: importance
    samples (None or >= 0) and how many images estimate nll_iw (None for all, or >= 2)."""
    for name, value, least in (("iw_samples", iw_samples, 0), ("iw_images", iw_images, 2)):
        if value is not None and not (is_whole(value) and value >= least):
            raise ConfigError(f"{name} must be None or a whole number >= {least}, got {value!r}")


def _seed(seed) -> int:
    if not is_whole(seed):
        raise ConfigError(f"seed must be a whole number, got {seed!r}")
    return int(seed)


@dataclass
class Run:
    """A trained model and everything about it, backed by a run directory."""

    config: RunConfig
    model: torch.nn.Module
    run_dir: Path | None = None
    device: torch.device = torch.device("cpu")
    _splits: Splits | None = None
    _code_shape: tuple[int, ...] | None = field(default=None, repr=False)
    # The id of the weights this Run holds (Run.load and train record it); None: the weights file's now.
    _checkpoint_id: str | None = field(default=None, repr=False)

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto", data_dir: str | None = None,
             splits: Splits | None = None) -> Run:
        """A run from its folder. ``splits``: the images a run trained by ``vaelab.fit(config,
        splits=...)`` was given (its folder does not hold them), for ``split`` and ``evaluate``."""
        dev = resolve_device(device)
        config, model, loaded = checkpoint.load_model_and_id(run_dir, dev)
        if data_dir is not None:
            if config.data.name not in DATA_DIR_SOURCES:
                raise ConfigError(f"data.data_dir (--data-dir) is not read by data.name={config.data.name}, which "
                                  f"reads data.path ({config.data.path}); leave it out")
            config.data.data_dir = data_dir
        return cls(config=config, model=model, run_dir=Path(run_dir), device=dev, _splits=splits,
                   _checkpoint_id=loaded)

    @property
    def dir(self) -> RunDir:
        if self.run_dir is None:
            raise VaelabError("this run has no run directory")
        return RunDir(self.run_dir)

    @property
    def checkpoint_id(self) -> str | None:
        """The id (``vaelab.rundir.checkpoint_id``) of the weights this Run holds, which every file
        derived from them records: those it loaded or trained, even where the run's weights file has
        changed since (a training went on): what it derives then reads as stale, as it is. None
        without a run directory."""
        if self._checkpoint_id is not None:
            return self._checkpoint_id
        return self.dir.checkpoint_id() if self.run_dir is not None else None

    @property
    def capabilities(self) -> frozenset[str]:
        return self.model.capabilities

    # -------------------------------------------------------------- data
    def splits(self) -> Splits:
        if self._splits is None:
            if self.run_dir is not None and self.dir.summary.is_file() \
                    and json.loads(self.dir.summary.read_text()).get("data_given"):
                raise DataError(f"{self.run_dir} was trained on images given to vaelab.fit() in Python, which its "
                                f"folder does not hold (config.json's data section, {self.config.data.name}, is not "
                                f"them); pass them: vaelab.Run.load({str(self.run_dir)!r}, splits=...)")
            self._splits = load_data(self.config.data, seed=self.config.train.seed)
        return self._splits

    def split(self, name: str | None = None) -> ImageSet:
        """A split by name; None picks the default (test, else val, else train)."""
        return self.splits().get(name or self.default_split())

    def class_names(self) -> list[str] | None:
        """The classes' names by label number (folders, .npz string labels, MNIST's digits):
        summary.json's, recorded at training, else the data's."""
        if self.run_dir is not None and self.dir.summary.is_file():
            names = json.loads(self.dir.summary.read_text()).get("classes")
            if names is not None:
                return names
        return self.splits().classes

    def class_index(self, value: int | str | None, option: str = "--class") -> int | None:
        """A class given by name or number -> its label number, by ``data.classes``' rule: a name
        picks its class; a number picks the class of that name when there is one, else that label."""
        if value is None:
            return None
        from vaelab.data.load import resolve_classes

        return resolve_classes([value], self.class_names(), f"run {self.run_dir}" if self.run_dir else "this run",
                               option)[0]

    def default_split(self) -> str:
        s = self.splits()
        return "test" if s.test is not None else "val" if s.val is not None else "train"

    # -------------------------------------------------------------- model use
    # What a caller hands these methods is read once into what the model takes, by the data
    # layer's readers (vaelab.data.inputs: images in any layout and grey levels, codes, labels by
    # number or class name), each refusal in one line. The model is put in eval mode for the call
    # and given back in the mode the caller left it in.
    @contextmanager
    def _inference(self):
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.train(was)

    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _images(self, x, where: str = "x") -> torch.Tensor:
        return read_images(x, tuple(self.config.model.input_shape), self._dtype(), where)

    def code_shape(self) -> tuple[int, ...]:
        """The shape of one code, as ``encode`` returns it and ``decode`` takes it: (D,), or a
        feature map (D, h, w) for the VQ-VAE."""
        if self._code_shape is None:
            with self._inference():
                probe = torch.zeros(1, *self.config.model.input_shape, dtype=self._dtype(), device=self.device)
                self._code_shape = tuple(self.model.posterior(probe, self._labels_for(probe, None)).mean.shape[1:])
        return self._code_shape

    def _labels(self, y, n: int, where: str) -> torch.Tensor | None:
        """A conditional model reads them; the others take a split's labels as they are and do not read them."""
        return read_labels(y, n, where, self.class_index)

    def _y(self, y, a: int, b: int):
        return None if y is None else y[a:b].to(self.device)

    def _batches(self, x: torch.Tensor, y: torch.Tensor | None, batch_size: int):
        """Chunks of checked images on the model's device, each with the labels the model reads
        (None for a model without classes; a conditional one's most probable class without ``y``)."""
        for a, b in chunks(len(x), batch_size):
            xb = x[a:b].to(self.device)
            yield xb, self._labels_for(xb, self._y(y, a, b))

    def posterior(self, x, y=None, batch_size: int = 1000):
        """q(z|x, y) for images (N, C, H, W) in [0, 1], as one distribution on the CPU
        (``.mean``, ``.params()``; a conditional model without ``y`` uses the most probable class)."""
        x = self._images(x)
        y = self._labels(y, len(x), "y")
        with self._inference():
            return distributions.cat([distributions.to(self.model.posterior(xb, yb), "cpu")
                                      for xb, yb in self._batches(x, y, batch_size)])

    def encode(self, x, y=None, batch_size: int = 1000) -> torch.Tensor:
        """Latent codes (posterior means) (N, D) for images (N, C, H, W) in [0, 1] (or (N, H, W, C),
        uint8, bool: as ``vaelab.data.images.as_float_images`` reads them)."""
        if is_empty(x):
            return torch.empty(0, *self.code_shape())
        return self.posterior(x, y, batch_size).mean

    def draw_codes(self, x, y=None, seed: int = 0, batch_size: int = 1000) -> torch.Tensor:
        """One draw z ~ q(z|x, y) per image (N, D), seeded: the same seed gives the same draws.
        Drawn chunk by chunk on the model's device (a two-layer posterior draws z2 given its z1)."""
        from vaelab.models import require

        require(self.model, "stochastic", "drawing codes from the posterior")
        if is_empty(x):
            return torch.empty(0, *self.code_shape())
        x = self._images(x)
        y = self._labels(y, len(x), "y")
        with self._inference():
            g = torch.Generator(device=self.device).manual_seed(_seed(seed))
            return torch.cat([self.model.posterior(xb, yb).sample(generator=g).cpu()
                              for xb, yb in self._batches(x, y, batch_size)])

    def decode(self, z, y=None, batch_size: int = 1000) -> torch.Tensor:
        """Images in [0, 1] (N, C, H, W) from codes (N, D); a conditional model needs classes ``y``
        ((N,) labels, or one class by number or name), and a model without classes takes none."""
        if is_empty(z):
            return torch.empty(0, *self.config.model.input_shape)
        z = read_codes(z, self.code_shape(), self._dtype())
        if self.model.conditional and y is None:
            raise VaelabError("this run's model is conditional: decoding needs a class for every code "
                              f"(classes 0..{self.model.cfg.num_classes - 1})")
        if not self.model.conditional and y is not None:
            raise VaelabError("this run's model is not conditional: its decoder reads no class; leave y out")
        y = self._labels(y, len(z), "y")
        with self._inference():
            out = [self.model.decode(z[a:b].to(self.device), self._y(y, a, b)).cpu()
                   for a, b in chunks(len(z), batch_size)]
            return torch.cat(out)

    def reconstruct(self, x, y=None, batch_size: int = 1000) -> torch.Tensor:
        """Reconstructions (N, C, H, W) in [0, 1] through the posterior mean."""
        if is_empty(x):
            return torch.empty(0, *self.config.model.input_shape)
        x = self._images(x)
        y = self._labels(y, len(x), "y")
        with self._inference():
            return torch.cat([self.model.reconstruct(xb, yb).cpu() for xb, yb in self._batches(x, y, batch_size)])

    def _labels_for(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor | None:
        if not self.model.conditional:
            return None
        return y if y is not None else self.model.infer_labels(x)

    def sample_prior(self, n: int, seed: int = 0, y=None) -> torch.Tensor:
        """Images decoded from n prior draws; a conditional model draws for class ``y``
        (one class by number or name, or (n,) labels), or cycles through the classes when it is None."""
        from vaelab.models import require

        require(self.model, "prior", "sampling from the prior")
        if not (is_whole(n) and n >= 0):
            raise ConfigError(f"n must be a number of samples >= 0, got {n!r}")
        if not self.model.conditional and y is not None:
            raise VaelabError("this run's model is not conditional: its prior has no classes; leave y out")
        if n == 0:
            return torch.empty(0, *self.config.model.input_shape)
        if self.model.conditional and y is None:
            y = torch.arange(n) % self.model.cfg.num_classes
        yy = self._labels(y, n, "y")
        with self._inference():
            g = torch.Generator(device=self.device).manual_seed(_seed(seed))
            z = self.model.prior(None if yy is None else yy.to(self.device), n).sample(generator=g)
        return self.decode(z.cpu(), yy)

    # -------------------------------------------------------------- evaluation and figures
    def evaluate(self, split: str | None = None, iw_samples: int = DEFAULT_IW_SAMPLES, seed: int = 0,
                 save: bool = False, iw_images: int | None = None) -> dict:
        """The evaluation as a dict; ``save=True`` also writes ``RUN/eval.json``.
        ``iw_images``: estimate nll_iw from this many of the split's images (None: all of them)."""
        check_eval_args(iw_samples, iw_images)
        if self._dtype() != torch.float32:
            raise VaelabError(f"this run's model holds {self._dtype()} weights, and evaluate runs in float32 (its "
                              "numbers must not depend on a cast); call run.model.float() first")
        split = split or self.default_split()
        data = self.split(split)
        with self._inference():  # the caller's train/eval mode comes back afterwards
            result = evaluate(self.model, data.to(self.device), iw_samples=iw_samples, seed=_seed(seed),
                              batch_size=self.config.train.eval_batch_size, device=self.device, split=split,
                              iw_images=iw_images)
        # Honest numbers: say when the images were part of training (the Keras recipe
        # trains on train+test, so its "test" numbers are not held-out numbers).
        result["seen_in_training"] = split == "train" or (split == "test" and self.config.data.train_split == "train+test")
        if save:
            write_json(self.dir.eval, {**result, ID_FIELD: self.checkpoint_id})
        return result

    def history(self) -> list[dict]:
        path = self.dir.history if self.run_dir else None
        if path is None or not path.is_file():
            return []
        try:
            with open(path, newline="") as f:  # numbers as numbers; a value an epoch did not record is left out
                reader = csv.DictReader(f)
                rows = [{k: _number(v) for k, v in row.items() if k is not None and v not in (None, "")}
                        for row in reader]
                fields = reader.fieldnames or []
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"cannot read {path} as CSV ({e}); it is damaged") from None
        if "epoch" not in fields or any(not isinstance(r.get("epoch"), int) for r in rows):
            raise DataError(f"{path} is not a history vaelab wrote (an epoch column of whole numbers); it is damaged")
        return rows

    def figures(self, n: int = 16, seed: int = 0) -> list[Path]:
        """Write the standard figures into ``RUN/figures``: loss curves, reconstructions, prior samples."""
        from vaelab import plots

        rd = self.dir
        if self.checkpoint_id != rd.checkpoint_id():  # a figure in a run is stamped with the weights there now
            raise VaelabError(f"{rd.weights} holds other weights than this Run (checkpoint {rd.checkpoint_id()}, "
                              f"loaded {self.checkpoint_id}): load the run again, vaelab.Run.load({str(rd)!r})")
        paths = []
        history = self.history()
        if history:
            paths.append(plots.plot_history(history, rd.figure("loss"),
                                            title=f"{self.config.preset or 'run'}: loss per epoch"))
        data = self.split()
        x = data.batch(slice(0, n))
        y = None if data.y is None else data.y[:n]
        paths.append(plots.plot_reconstructions(x, self.reconstruct(x, y), rd.figure("reconstructions")))
        if "prior" in self.capabilities:
            k = self.model.cfg.num_classes if self.model.conditional else None
            title = (f"samples from the prior, one class per column (classes 0..{k - 1})" if k
                     else "samples from the prior N(0, I)" if self.config.model.prior == "normal"
                     else f"samples from the {self.config.model.prior} prior")
            nrow = min(k, 10) if k else 8
            paths.append(plots.plot_grid(self.sample_prior(nrow * 8, seed), rd.figure("samples_prior"),
                                         title=title, nrow=nrow))
        return paths


def train(preset: str | RunConfig | None, run_dir: str | Path, overrides: list[str] | None = None,
          config_file: str | None = None, resume: bool = False, evaluate_after: bool = True,
          iw_samples: int | None = None, log: Callable[[str], None] = print, extra: dict | None = None,
          overwrite: bool = False, iw_images: int | None = TRAIN_IW_IMAGES, keep: tuple[str, ...] = (), loggers: str | list[str] | None = None,
          tracking_uri: str | None = None, experiment: str | None = None) -> Run:
    """Train, then write ``eval.json`` and figures. ``preset`` may be a name or a RunConfig; either
    way ``config_file``, then ``extra`` (typed values by section, {"train": {"epochs": 4}}), then
    ``overrides`` go on top of it.
    ``iw_samples``: importance samples for the final nll_iw; None gives 10 for a model with a
    density and none for the others (an autoencoder's eval.json then has no nll_iw to explain).
    ``iw_images``: how many test images nll_iw is estimated from (default 1,000, chosen with the
    run's seed; eval.json then has ``nll_iw_stderr``); None estimates it from all of them.

    ``run_dir`` must be new, empty, or a run: a trained run there is refused in one line
    unless ``resume=True`` (continue it with its saved config, plus overrides) or
    ``overwrite=True`` (remove everything the old run wrote, then train afresh); a folder
    holding files vaelab did not write is refused either way (``RunDir.prepare_fresh``).
    ``keep``: names the caller owns in ``run_dir`` (a sweep's trial files), left alone.

    ``loggers``: "tensorboard", "mlflow" or both ("tensorboard,mlflow", or a list), with the
    MLflow store ``tracking_uri`` (default ``sqlite:///PARENT/mlflow.db`` beside ``run_dir``) and
    ``experiment`` (default "vaelab"); see ``vaelab.training.loggers``. They are opened before
    anything else happens (a bad name or store costs nothing) and log each epoch, the
    evaluation and the figures."""
    from vaelab.training import distributed

    if resume and overwrite:
        raise VaelabError("resume continues the run and overwrite replaces it: ask for one of them")
    check_eval_args(iw_samples, iw_images)
    if not evaluate_after and iw_samples is not None:
        raise VaelabError("iw_samples sets the final evaluation, and evaluate_after=False skips it; give one of them")
    changed: list[str] = []  # model options an override changed on resume
    if resume:
        if preset is not None or config_file is not None:
            raise VaelabError("resume continues a run with its saved config; give no preset or config file "
                              "(change settings with overrides, e.g. train.epochs=20)")
        saved = checkpoint.load_config(run_dir).to_dict()
        config = config_from_dict(saved, extra, overrides)
        was, now = flatten(saved, "."), flatten(config.to_dict(), ".")
        _check_more_epochs(run_dir, config.train.epochs, was, now)
        changed = [f"{k} {was.get(k)} -> {now.get(k)}" for k in sorted(was.keys() | now.keys())
                   if k.startswith("model.") and was.get(k) != now.get(k)]
    elif isinstance(preset, RunConfig) and not (config_file or extra or overrides):
        config = preset
    else:  # a preset name, or a RunConfig with a file, flags or overrides on top (none dropped)
        config = build_config(preset, config_file, overrides, extra)
    # Under torchrun rank 0 alone logs: the others make no logger (nor open the store at once).
    callbacks = make_loggers(loggers or [], run_dir, tracking_uri, experiment) if distributed.is_main() else []
    if not resume and distributed.is_main():  # a valid config first; under torchrun rank 0 checks and clears
        RunDir(run_dir).prepare_fresh(overwrite=overwrite, keep=keep)
    t_fit = time.perf_counter()
    try:
        result = fit(config, run_dir, resume=resume, log=log, callbacks=callbacks)
    except CheckpointMismatch:
        if resume and changed:  # an override reshaped the model
            raise CheckpointMismatch(f"{run_dir} cannot resume with {', '.join(changed)}: its saved weights have the "
                                     "old shapes; resume without that change, or train a new run (--out)") from None
        raise
    run = Run(config=result.config, model=result.model, run_dir=Path(run_dir),
              device=next(result.model.parameters()).device, _splits=result.splits,
              _checkpoint_id=RunDir(run_dir).checkpoint_id() if result.main else None)  # the weights just saved
    if evaluate_after and result.main:  # one process of a multi-process run evaluates and draws
        t_eval = time.perf_counter()
        if iw_samples is None:  # not asked for: nll_iw where the model has a density, else not at all
            iw_samples = TRAIN_IW_SAMPLES if "density" in run.capabilities else 0
        run.evaluate(iw_samples=iw_samples, seed=result.config.train.seed, save=True, iw_images=iw_images)
        t_figures = time.perf_counter()
        figures = run.figures(seed=result.config.train.seed)
        _add_timing(run.dir, t_fit, eval_s=t_figures - t_eval, figures_s=time.perf_counter() - t_figures)
        for cb in callbacks:  # eval.json as written (with its checkpoint id), then the files
            cb.on_evaluation(result.trainer, json.loads(run.dir.eval.read_text()))
            cb.on_artifacts(result.trainer, [*figures, run.dir.eval])
    elif result.main and run_dir is not None:
        _add_timing(run.dir, t_fit)
    return run


def _check_more_epochs(run_dir: str | Path, epochs: int, saved: dict, now: dict) -> None:
    """A resume must have epochs to train, or resume as it is a run killed before it finished
    (its summary, its evaluation): fewer epochs than done, or settings changed where no epoch
    is left to train, would leave config.json describing no epoch of the weights. Refused in
    one line. ``saved``, ``now``: the saved and the resumed config, flat."""
    done = checkpoint.saved_epoch(run_dir)
    if done is None or epochs > done:
        return
    changed = [k for k in sorted(saved.keys() | now.keys()) if saved.get(k) != now.get(k)]
    if epochs < done or changed:
        why = f"train.epochs is {epochs}" if epochs < done else f"no epoch is left to train with {', '.join(changed)}"
        raise VaelabError(f"{run_dir} has trained {done} epochs and {why}: the run is left as it is; give --epochs "
                          f"above {done} to train more (vaelab eval {run_dir} scores it as it is)")


def _add_timing(rd: RunDir, t_fit: float, **parts: float) -> None:
    """Complete summary.json's ``timing`` (the training loop wrote its own parts): the
    evaluation's and the figures' seconds, the process's start-up (interpreter, imports,
    config: everything before the training loop) and its age now (``process_s``)."""
    if not rd.summary.is_file():
        return
    summary = json.loads(rd.summary.read_text())
    timing = summary.setdefault("timing", {})
    timing.update({k: round(v, 3) for k, v in parts.items()})
    age = _process_age()
    if age is not None:
        timing["startup_s"] = round(age - (time.perf_counter() - t_fit), 3)
        timing["process_s"] = round(age, 3)
    write_json(rd.summary, summary)


def _process_age() -> float | None:
    """Seconds since this process started, from /proc (Linux); None elsewhere."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
