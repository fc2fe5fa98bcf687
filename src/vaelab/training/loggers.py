"""Training loggers: TensorBoard and MLflow as training callbacks (``vaelab train --log``).

Each logger follows the trainer's callback protocol (``on_fit_start``, ``on_epoch_end``,
``on_evaluation``, ``on_artifacts``, ``on_fit_end``) and logs, from the main process only:

- every numeric value of each ``history.csv`` row (losses and their parts, lr, seconds) with
  the epoch as the step;
- the evaluation (``eval.json``'s numeric leaves, flattened: ``eval/nll_iw``);
- the figures (PNG) and ``eval.json``;
- the resolved config (TensorBoard: as text; MLflow: as params ``model.latent_dim``, ...).

``tensorboard`` writes event files into ``RUN/tensorboard/``. ``mlflow`` writes to a tracking
store, by default ``sqlite:///PARENT/mlflow.db`` beside the run directory (``runs/mlflow.db``
for ``runs/NAME``), artifacts in ``PARENT/mlartifacts``; the MLflow run is named after the run
directory and its id kept in ``RUN/mlflow.json``, so a resumed run continues the same MLflow
run. Neither library is imported before a logger is made (``import vaelab.training.loggers``
is cheap), and ``make_loggers`` opens everything it can before training starts: a bad
``--log`` or tracking URI costs nothing.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import math
import os
import re
import sqlite3
import sys
from contextlib import closing, contextmanager
from pathlib import Path

from vaelab.config import flatten
from vaelab.errors import ConfigError, Interrupted
from vaelab.io import write_json
from vaelab.rundir import RunDir
from vaelab.training.callbacks import Callback


def numeric(d: dict) -> dict[str, float]:
    """The numbers among ``d``'s values (no bools, no None, no strings) as floats."""
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _row_scalars(row: dict) -> dict[str, float]:
    """A history row's numbers except the epoch (it is the step)."""
    return {k: v for k, v in numeric(row).items() if k != "epoch"}


def _noted(method):
    """A logger's callback that fails (its store gone, a full disk) says so in one note and the
    logger logs no more; the training goes on (the run's own files hold every epoch). Only the
    main process logs."""

    @functools.wraps(method)
    def call(self, trainer, *args):
        if self.stopped or not trainer.main:
            return
        try:
            method(self, trainer, *args)
        except Exception as e:  # noqa: BLE001 -- any failure of the library or its store: logging is not training
            self.stopped = True
            getattr(trainer, "log", print)(f"note: --log {self.name} stopped ({_first_line(e)}); the training goes "
                                           "on and the run directory holds every epoch")

    return call


def _end_status(trainer) -> str:
    """MLflow's status for a fit that ended: KILLED by Ctrl-C, FAILED by an error, else FINISHED.
    The trainer says (``trainer.failed``); otherwise the exception propagating through its finally."""
    exc = getattr(trainer, "failed", None) or sys.exc_info()[1]
    if exc is None:
        return "FINISHED"
    return "KILLED" if isinstance(exc, (KeyboardInterrupt, Interrupted)) else "FAILED"


class TensorBoardLogger(Callback):
    """TensorBoard event files in ``RUN/tensorboard/``: each epoch's numbers, the evaluation, the figures, the
    config (through torch's SummaryWriter)."""

    name = "tensorboard"
    stopped = False
    modules = ("tensorboard",)  # what torch.utils.tensorboard needs
    extra = "tensorboard"
    library = "TensorBoard"

    def __init__(self, run_dir: str | Path | None, tracking_uri: str | None = None, experiment: str | None = None):
        if run_dir is None:
            raise ConfigError("--log tensorboard writes into the run directory; give one (--out)")
        self.dir = RunDir(run_dir).path / RunDir.TENSORBOARD
        self._writer = None
        self._closed = False

    def writer(self, trainer):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # A resumed run: events an interrupted session wrote past the last checkpoint are dropped.
            purge = trainer.epoch + 1 if trainer.epoch else None
            self._writer = SummaryWriter(str(self.dir), purge_step=purge if not self._closed else None)
        return self._writer

    @_noted
    def on_fit_start(self, trainer) -> None:
        new = not any(self.dir.glob("events.out.tfevents.*"))
        w = self.writer(trainer)
        if new:  # a run resumed with --log for the first time: its earlier epochs too
            for row in getattr(trainer, "history", []):
                for k, v in _row_scalars(row).items():
                    w.add_scalar(k, v, row["epoch"])
        text = json.dumps(trainer.config.to_dict(), indent=2)
        w.add_text("config", "\n".join("    " + line for line in text.splitlines()), trainer.epoch)  # code block
        w.flush()

    @_noted
    def on_epoch_end(self, trainer, row: dict) -> None:
        w = self.writer(trainer)
        for k, v in _row_scalars(row).items():
            w.add_scalar(k, v, row["epoch"])
        w.flush()

    @_noted
    def on_evaluation(self, trainer, metrics: dict) -> None:
        w = self.writer(trainer)
        for k, v in numeric(flatten(metrics, "/", "eval", lists=True)).items():
            w.add_scalar(k, v, trainer.epoch)
        self._done_or_flush()

    @_noted
    def on_artifacts(self, trainer, paths: list) -> None:
        import numpy as np
        from PIL import Image

        w = self.writer(trainer)
        for p in map(Path, paths):
            if p.suffix.lower() == ".png":
                with Image.open(p) as im:
                    w.add_image(f"figures/{p.stem}", np.asarray(im.convert("RGB")), trainer.epoch, dataformats="HWC")
        self._done_or_flush()

    @_noted
    def on_fit_end(self, trainer) -> None:
        self.close()
        self._closed = True

    def _done_or_flush(self) -> None:
        """After the fit ended (evaluation and figures come later), close again; during it, flush."""
        if self._closed:
            self.close()
        elif self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class MlflowLogger(Callback):
    """An MLflow run (default store ``sqlite:///PARENT/mlflow.db``): the config as params, each epoch's numbers,
    the evaluation, the figures."""

    name = "mlflow"
    stopped = False
    modules = ("mlflow", "sqlalchemy", "alembic")  # the last two: the sqlite store
    extra = "mlflow"
    library = "MLflow"
    DEFAULT_EXPERIMENT = "vaelab"

    def __init__(self, run_dir: str | Path | None, tracking_uri: str | None = None, experiment: str | None = None):
        if tracking_uri is None:
            if run_dir is None:
                raise ConfigError("--log mlflow without --tracking-uri keeps its store beside the run directory; "
                                  "give one (--out) or a --tracking-uri")
            parent = Path(run_dir).absolute().parent
            parent.mkdir(parents=True, exist_ok=True)  # where the run will be: training would make it anyway
            tracking_uri = f"sqlite:///{parent / 'mlflow.db'}"
        self.uri = tracking_uri
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.experiment = experiment or self.DEFAULT_EXPERIMENT
        self.run_id: str | None = None
        self._open()

    def _fail(self, why: str) -> ConfigError:
        fix = ("check that the MLflow server runs there (mlflow server) and can be reached"
               if re.match(r"https?://", self.uri) else
               "give --tracking-uri sqlite:///PATH/mlflow.db with PATH a writable folder, or an http(s):// "
               "MLflow server")
        return ConfigError(f"--log mlflow: cannot open the MLflow tracking store {self.uri} ({why}); {fix}")

    def _open(self) -> None:
        """Open the store and find or create the experiment, or refuse in one line. MLflow retries a
        store it cannot reach for minutes (a sqlite file with backoff, a server 7 times): a sqlite
        file is opened here first, and a server is asked once, with a timeout."""
        m = re.match(r"sqlite:///(.+)$", self.uri)
        if m:
            db = Path(m.group(1))
            if not db.parent.is_dir():
                raise self._fail(f"no folder {db.parent}")
            if not os.access(db.parent, os.W_OK):
                raise self._fail(f"{db.parent} is not writable")
            try:
                with closing(sqlite3.connect(db)) as con:
                    con.execute("pragma schema_version")
            except sqlite3.Error as e:
                raise self._fail(f"{db}: {e}") from e
        elif self.uri.startswith("sqlite:"):
            raise self._fail("a sqlite URI is sqlite:///PATH, with PATH absolute or relative to here")
        for name in ("mlflow.store.db.utils", "alembic"):  # the store's set-up notes on stderr: not the user's concern
            logging.getLogger(name).setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        try:
            with _env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="30"):
                self.client = MlflowClient(tracking_uri=self.uri)
                exp = self.client.get_experiment_by_name(self.experiment)
                if exp is None:
                    # A local store: artifacts beside the database (MLflow's default is ./mlruns under the cwd).
                    where = (Path(m.group(1)).absolute().parent / "mlartifacts").as_uri() if m else None
                    self.experiment_id = self.client.create_experiment(self.experiment, artifact_location=where)
                elif exp.lifecycle_stage != "active":
                    raise ConfigError(f"--log mlflow: the experiment {self.experiment!r} in {self.uri} is deleted; "
                                      "restore it (mlflow experiments restore) or choose another --experiment")
                else:
                    self.experiment_id = exp.experiment_id
        except ConfigError:
            raise
        except Exception as e:  # MLflow, SQLAlchemy and requests raise many kinds; all mean this
            raise self._fail(_first_line(e)) from e

    # -------------------------------------------------------------------------- callbacks
    @_noted
    def on_fit_start(self, trainer) -> None:
        params = {k: v if isinstance(v, str) else json.dumps(v)
                  for k, v in flatten(trainer.config.to_dict(), ".").items()}
        self.run_id = self._resumed_run() if trainer.epoch else None
        if self.run_id is None:
            tags = {"vaelab.run_dir": str(self.run_dir.absolute())} if self.run_dir is not None else None
            name = self.run_dir.name if self.run_dir is not None else None
            self.run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
            self._log_params(params)
            for row in getattr(trainer, "history", []):  # a run resumed with --log for the first time
                self._log_metrics(_row_scalars(row), row["epoch"])
        else:
            # MLflow refuses to change a logged param: a value changed on resume goes into a tag.
            self.client.update_run(self.run_id, status="RUNNING")
            old = self.client.get_run(self.run_id).data.params
            self._log_params({k: v for k, v in params.items() if k not in old})
            for k, v in params.items():
                if k in old and old[k] != v:
                    self.client.set_tag(self.run_id, f"resumed.{k}", v)
        if self.run_dir is not None:
            write_json(self.run_dir / RunDir.MLFLOW, {"tracking_uri": self.uri, "experiment_id": self.experiment_id,
                                                  "run_id": self.run_id})

    def _resumed_run(self) -> str | None:
        """The MLflow run RUN/mlflow.json names, when it is in this store and not deleted."""
        from mlflow.exceptions import MlflowException

        if self.run_dir is None or not (self.run_dir / RunDir.MLFLOW).is_file():
            return None
        try:
            saved = json.loads((self.run_dir / RunDir.MLFLOW).read_text())
            if saved.get("tracking_uri") != self.uri:
                return None
            run = self.client.get_run(str(saved["run_id"]))
        except (OSError, ValueError, KeyError, AttributeError, MlflowException):  # unreadable, no such run: a new one
            return None
        return run.info.run_id if run.info.lifecycle_stage == "active" else None

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_metric_name(k), v, now, step) for k, v in values.items() if not math.isnan(v)]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    @_noted
    def on_epoch_end(self, trainer, row: dict) -> None:
        if self.run_id is not None:
            self._log_metrics(_row_scalars(row), row["epoch"])

    @_noted
    def on_evaluation(self, trainer, metrics: dict) -> None:
        if self.run_id is not None:
            self._log_metrics(numeric(flatten(metrics, "/", "eval", lists=True)), trainer.epoch)

    @_noted
    def on_artifacts(self, trainer, paths: list) -> None:
        if self.run_id is None:
            return
        for p in map(Path, paths):
            self.client.log_artifact(self.run_id, str(p), "figures" if p.suffix.lower() == ".png" else None)

    @_noted
    def on_fit_end(self, trainer) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=_end_status(trainer))


@contextmanager
def _env(**values: str):
    """Environment variables set for a block, where the user has not set them."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _metric_name(key: str) -> str:
    """MLflow accepts letters, digits, _ - . / and spaces in a metric name."""
    return re.sub(r"[^\w\-. /]", "_", key)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= 200 else line[:197] + "..."


LOGGERS: dict[str, type] = {"tensorboard": TensorBoardLogger, "mlflow": MlflowLogger}


def make_loggers(names: list[str] | str | None, run_dir: str | Path | None, tracking_uri: str | None = None,
                 experiment: str | None = None) -> list:
    """The loggers ``names`` asks for (``"tensorboard,mlflow"`` or a list), opened and ready, or a
    one-line ConfigError: an unknown name, a library not installed, a tracking store that cannot be
    opened, an MLflow option without ``mlflow``."""
    if isinstance(names, str):
        names = names.split(",")
    names = list(dict.fromkeys(n.strip() for n in names or [] if n.strip()))
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ConfigError(f"--log {unknown[0]}: no such logger; choose from {', '.join(LOGGERS)} "
                          "(several: --log tensorboard,mlflow)")
    if "mlflow" not in names:
        for option, value in (("--tracking-uri", tracking_uri), ("--experiment", experiment)):
            if value is not None:
                raise ConfigError(f"{option} is read by --log mlflow only; add mlflow to --log or leave it out")
    for n in names:
        cls = LOGGERS[n]
        if any(importlib.util.find_spec(m) is None for m in cls.modules):
            raise ConfigError(f"--log {n} needs {cls.library}: pip install 'vaelab[{cls.extra}]'")
    return [LOGGERS[n](run_dir, tracking_uri=tracking_uri, experiment=experiment) for n in names]


__all__ = ["LOGGERS", "MlflowLogger", "TensorBoardLogger", "make_loggers"]
