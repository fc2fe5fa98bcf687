"""Sweeps: train one run per point of a grid (or per listed trial), resumably, in parallel.

A sweep directory holds::

    sweep.json            what was swept (preset, base overrides, trials)
    trials/<id>/          one normal run directory per trial, plus trial.json (done | failed)
    results.csv, results.md   one row per trial: swept values, test metrics, size, time
    figures/              each metric against each swept value; the same test images
                          reconstructed by every trial

Re-running the same sweep skips finished trials, retries failed ones, and resumes a
trial that was killed mid-training from its last checkpoint. A failing trial is
recorded in its row and does not stop the others. A finished trial's trial.json records the
checkpoint id of the weights its numbers describe (``vaelab.rundir``); when the trial's weights
changed since (``vaelab train --resume`` on it), a re-run never reports the old numbers: it reads
them again from the trial's eval.json when that belongs to the current weights, else evaluates
the trial again, and says so in a note per trial.

Trials run in this process (one worker), in local worker processes (``workers > 1``,
torch threads split so that workers x threads <= cores), or as Ray tasks
(``executor="ray"``, locally or on a cluster that shares the sweep directory).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vaelab.config import merge, nested, parse_override, typed_value
from vaelab.configure import build_config, check_option_name
from vaelab.errors import ConfigError, VaelabError
from vaelab.io import write_json
from vaelab.rundir import ID_FIELD, RunDir
from vaelab.sweep import executors
from vaelab.sweep.results import METRICS, read_results, write_figures, write_results

__all__ = ["SweepSpec", "Trial", "expand_grid", "parse_grid", "read_results", "run_sweep", "trial_config"]

TRIAL_FILE = "trial.json"
LOCK = ".sweep.lock"


@dataclass
class Trial:
    id: str
    params: dict[str, Any]  # dotted key -> typed value, e.g. {"model.latent_dim": 2}
    preset: str | None = None  # this trial's preset, when it differs from the sweep's

    @property
    def dir(self) -> str:
        return f"trials/{self.id}"


@dataclass
class SweepSpec:
    """Everything that defines a sweep; saved as ``sweep.json``."""

    trials: list[Trial]
    preset: str | None = None
    config_file: str | None = None
    base: list[str] = field(default_factory=list)  # dotted overrides for every trial
    epochs: int | None = None
    name: str = "sweep"
    grid: bool = True  # trials are the cartesian product of the swept values
    iw_samples: int = 0  # importance samples for nll_iw in each trial's evaluation (0: skip)

    @property
    def params(self) -> list[str]:
        keys: list[str] = []
        for t in self.trials:
            keys += [k for k in t.params if k not in keys]
        return keys

    def settings(self) -> dict:
        """The parts that must match when a sweep directory is re-used."""
        return {"preset": self.preset, "config_file": self.config_file, "base": list(self.base),
                "epochs": self.epochs}

    def to_dict(self) -> dict:
        return {"name": self.name, **self.settings(), "grid": self.grid, "iw_samples": self.iw_samples,
                "params": self.params,
                "trials": [{**asdict(t), "dir": t.dir} for t in self.trials]}


# ------------------------------------------------------------------------------ grid
def split_values(text: str) -> list[str]:
    """Split ``1,2,4`` or ``[32],[512,128]`` at top-level commas (or at ``;`` when present)."""
    if ";" in text:
        return [v.strip() for v in text.split(";") if v.strip()]
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[(" and 1 or (-1 if ch in "])" else 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_grid(specs: list[str]) -> dict[str, list]:
    """``["model.latent_dim=1,2,4", "model.loss=bce,mse"]`` -> {key: [typed values]}."""
    grid: dict[str, list] = {}
    for spec in specs:
        if "=" not in spec:
            raise ConfigError(f"--grid {spec!r} must look like section.field=v1,v2,..., e.g. model.latent_dim=2,4,8")
        key, raw = spec.split("=", 1)
        key = key.strip()
        values = []
        for v in split_values(raw):
            section, name, value = parse_override(f"{key}={v}")
            check_option_name(section, name)  # model.nope: refused here, not in every trial
            values.append(typed_value(section, name, value))
        if not values:
            raise ConfigError(f"--grid {key} has no values; give them as {key}=v1,v2")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice; list all its values once")
        grid[key] = values
    return grid


def _value_text(v: Any) -> str:
    return "-".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)


def trial_id(params: dict[str, Any]) -> str:
    """A readable, filesystem-safe id: ``latent_dim=2,loss=bce``."""
    text = ",".join(f"{k.split('.', 1)[1]}={_value_text(v)}" for k, v in params.items())
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", text) or "default"


def expand_grid(grid: dict[str, list]) -> list[Trial]:
    keys = list(grid)
    trials = [Trial(trial_id(dict(zip(keys, combo))), dict(zip(keys, combo)))
              for combo in itertools.product(*(grid[k] for k in keys))]
    if len({t.id for t in trials}) != len(trials):
        raise ConfigError("two grid points give the same trial name; make the values distinct")
    return trials


def _extra(params: dict[str, Any]) -> dict:
    extra: dict = {}
    for key, value in params.items():  # model.PART.OPTION nests: {"model": {"PART": {"OPTION": value}}}
        extra = merge(extra, nested(key, value))
    return extra


def trial_config(spec: SweepSpec, trial: Trial, threads: int | None = None):
    """The RunConfig a trial trains: preset, config file, base overrides, swept values."""
    extra = _extra(trial.params)
    train = extra.setdefault("train", {})
    train["progress"] = False
    if spec.epochs is not None:
        train.setdefault("epochs", spec.epochs)
    if threads:
        train["threads"] = threads
    return build_config(trial.preset or spec.preset, spec.config_file, list(spec.base), extra)


# ------------------------------------------------------------------------------ one trial
def run_trial(spec: dict, trial: dict, out: str, threads: int | None = None) -> dict:
    """Train and evaluate one trial; return its results row. Never raises for a failed trial:
    the error is returned (and written to ``trial.json``) so the other trials go on.
    A top-level function taking plain dicts, so processes and Ray tasks can run it."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    s = _spec_from_dict(spec)
    t = Trial(trial["id"], trial["params"], trial.get("preset"))
    run_dir = Path(out) / t.dir
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    logfile = run_dir / "train.log"
    try:
        from vaelab import api

        with open(logfile, "a") as f:
            def log(msg: str) -> None:
                f.write(msg + "\n")
                f.flush()

            if RunDir(run_dir).resume.is_file() and RunDir(run_dir).config.is_file():
                # A trial killed mid-training continues from its last checkpoint.
                run = api.train(None, run_dir, resume=True, iw_samples=s.iw_samples, iw_images=None, log=log)
            else:
                run = api.train(trial_config(s, t, threads), run_dir, iw_samples=s.iw_samples, iw_images=None, log=log,
                                keep=(TRIAL_FILE, logfile.name))
        row = _row_from_run(run_dir, t)
        del run
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not isinstance(e, VaelabError):
            msg = f"{type(e).__name__}: {msg}"
        row = {"trial": t.id, **t.params, "status": "failed", "error": msg}
    row["seconds"] = round(time.perf_counter() - t0, 2)
    write_json(run_dir / TRIAL_FILE, row)
    return row


def _row_from_run(run_dir: Path, trial: Trial) -> dict:
    """The results row of a trained trial, from its eval.json and summary.json. It records the
    checkpoint id of the weights its numbers describe (eval.json's) and the split they were
    measured on, so that a re-run of the sweep can tell when the trial's weights changed."""
    ev = json.loads(RunDir(run_dir).eval.read_text())
    summary = json.loads(RunDir(run_dir).summary.read_text())
    row: dict[str, Any] = {"trial": trial.id, **trial.params, "status": "done"}
    for m in METRICS:
        row[m] = ev.get(m)
    row["params"] = summary.get("params")
    row["train_seconds"] = summary.get("train_seconds")
    row["error"] = ""
    row[ID_FIELD] = ev.get(ID_FIELD)
    row["eval_split"] = ev.get("split")
    return row


def _spec_from_dict(d: dict) -> SweepSpec:
    trials = [Trial(t["id"], t["params"], t.get("preset")) for t in d["trials"]]
    return SweepSpec(trials=trials, preset=d.get("preset"), config_file=d.get("config_file"),
                     base=list(d.get("base") or []), epochs=d.get("epochs"), name=d.get("name", "sweep"),
                     grid=d.get("grid", True), iw_samples=d.get("iw_samples", 0))


def trial_status(out: Path, trial: Trial) -> dict | None:
    """The saved row of a finished or failed trial, or None when it has not finished."""
    path = out / trial.dir / TRIAL_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def weights_changed(out: Path, trial: Trial, saved: dict) -> str | None:
    """Why the numbers of a finished trial's ``trial.json`` (``saved``) may not describe the trial's
    weights now (one phrase), or None when they do: its weights changed since (a ``vaelab train
    --resume``, a file copied in) or it records no checkpoint id (made by an older vaelab)."""
    recorded = saved.get(ID_FIELD)
    current = RunDir(out / trial.dir).checkpoint_id()
    if not recorded:
        return "its trial.json records no checkpoint id (made by an older vaelab)"
    if current is None:
        return f"its {RunDir.WEIGHTS} is gone"
    if recorded != current:
        return f"its weights changed since the sweep recorded it (checkpoint {recorded}, now {current})"
    return None


def refresh_trial(spec: SweepSpec, out: Path, trial: Trial, saved: dict, why: str) -> tuple[dict, str]:
    """The row of a finished trial whose weights changed (``weights_changed``), and one note line
    saying what was done: its numbers read again from its eval.json when that belongs to the
    current weights (and measures the same split), else the trial evaluated again as the sweep
    evaluates (``iw_samples``, the run's seed; eval.json and its figures rewritten). A trial that
    cannot be evaluated is failed, with the reason, rather than shown with the old numbers."""
    rd = RunDir(out / trial.dir)
    split = saved.get("eval_split")
    how = ""
    try:
        ev = json.loads(rd.eval.read_text()) if rd.eval.is_file() else None
    except (OSError, ValueError):
        ev = None
    try:
        if rd.weights.is_file() and isinstance(ev, dict) and rd.stale(rd.eval) is None and (
                split is None or ev.get("split") == split):
            how = f"numbers read again from its {rd.EVAL} (of the current weights)"
        else:
            from vaelab.api import Run

            run = Run.load(rd.path)
            run.evaluate(split=split, iw_samples=spec.iw_samples, seed=run.config.train.seed, save=True)
            run.figures(seed=run.config.train.seed)
            how = f"evaluated again ({rd.EVAL} did not belong to the current weights)"
            del run
        row = _row_from_run(rd.path, trial)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not isinstance(e, VaelabError):
            msg = f"{type(e).__name__}: {msg}"
        row = {"trial": trial.id, **trial.params, "status": "failed",
               "error": f"{why}, and evaluating it failed: {msg}; to train this trial again, remove {rd.path} "
                        "and re-run the sweep"}
        write_json(rd.path / TRIAL_FILE, row)
        return row, f"note: trial {trial.id}: {row['error']}"
    if "seconds" in saved:
        row["seconds"] = saved["seconds"]
    write_json(rd.path / TRIAL_FILE, row)
    numbers = ", ".join(f"{k} {row[k]:.4g}" for k in ("loss", "ssim") if isinstance(row.get(k), float))
    was = f" (was loss {saved['loss']:.4g})" if isinstance(saved.get("loss"), float) else ""
    return row, f"note: trial {trial.id}: {why}; {how}: {numbers}{was}"


# ------------------------------------------------------------------------------ the sweep
def cpu_cores() -> int:
    """Cores this process may use (respects CPU affinity and container limits on Linux)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_threads(workers: int, cores: int | None = None) -> int:
    """Torch threads per worker so that workers x threads never exceeds the cores."""
    return max(1, (cores or cpu_cores()) // max(1, workers))


def run_sweep(spec: SweepSpec, out: str | Path, workers: int = 1, executor: str = "local",
              ray_address: str | None = None, log: Callable[[str], None] = print) -> list[dict]:
    """Run every unfinished trial of ``spec`` into ``out``; write results and figures; return the rows."""
    out = Path(out)
    if executor not in executors.EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(executors.EXECUTORS)}, got {executor!r}")
    if ray_address is not None and executor != "ray":
        raise ConfigError(f"--ray-address applies to --executor ray, not to --executor {executor}")
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if not spec.trials:
        raise ConfigError("the sweep has no trials; give at least one --grid section.field=v1,v2")
    # Validate every trial's config up front: a typo fails here, before hours of training.
    for t in spec.trials:
        trial_config(spec, t)
    if out.exists() and not (out / "sweep.json").is_file() and any(p.name != LOCK for p in out.iterdir()):
        raise VaelabError(f"{out} exists and is not a sweep directory; choose another --out")
    with _exclusive(out):
        _claim(out, spec)
        return _run(spec, out, workers, executor, ray_address, log)


@contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """One sweep process per folder: a second one would train the same trials twice."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        yield
        return
    with open(out / LOCK, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise VaelabError(f"another vaelab sweep is running in {out}; let it finish or stop it, "
                              "then run this command again") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(spec: SweepSpec, out: Path, workers: int, executor: str, ray_address: str | None,
         log: Callable[[str], None]) -> list[dict]:
    rows: dict[str, dict] = {}
    pending = []
    changed: list[tuple[Trial, dict, str]] = []  # finished trials whose weights changed since
    for t in spec.trials:
        saved = trial_status(out, t)
        if saved is not None and saved.get("status") == "done":
            why = weights_changed(out, t, saved)
            if why is None:
                rows[t.id] = saved
            else:
                changed.append((t, saved, why))
        else:
            pending.append(t)
    for t, saved, why in changed:  # never the old numbers for other weights
        rows[t.id], note = refresh_trial(spec, out, t, saved, why)
        log(note)
    skipped = len(spec.trials) - len(pending)
    cores = cpu_cores()
    if executor == "local" and workers > cores:
        log(f"note: {workers} workers on {cores} cores; using {cores}")
        workers = cores
    workers = min(workers, max(1, len(pending)))
    threads = worker_threads(workers, cores)
    if executor == "local" and workers == 1:
        import torch

        threads = torch.get_num_threads()  # one trial at a time, in this process, as configured
    log(f"sweep {out}: {len(spec.trials)} trials, {skipped} already done, {len(pending)} to run "
        f"({executor}, {workers} worker{'s' * (workers > 1)} x {threads} thread{'s' * (threads > 1)})")

    done_count = [skipped]

    def record(row: dict) -> None:
        rows[row["trial"]] = row
        done_count[0] += 1
        # the scores a trial has (no ssim for images under 11x11: its eval leaves it out)
        what = (", ".join(f"{k} {row[k]:.4g}" for k in ("loss", "ssim") if isinstance(row.get(k), float))
                if row["status"] == "done" else f"FAILED: {row['error']}")
        log(f"[{done_count[0]}/{len(spec.trials)}] {row['trial']}: {what} ({row.get('seconds', 0):.1f} s)")

    d = spec.to_dict()
    by_id = {t.id: t for t in pending}

    def lost(key: str, reason: str) -> dict:
        t = by_id[key]
        row = {"trial": t.id, **t.params, "status": "failed", "error": reason}
        write_json(out / t.dir / TRIAL_FILE, row)
        return row

    if executor == "local" and workers == 1:
        for t in pending:
            record(run_trial(d, _trial_dict(t), str(out), None))
    else:
        # Ray: the sweep folder must be visible to every Ray node (a shared file system), by
        # an absolute path; results come back with the task, so results.csv does not depend on it.
        folder = str(out.resolve()) if executor == "ray" else str(out)
        jobs = [(t.id, (d, _trial_dict(t), folder, threads)) for t in pending]
        executors.EXECUTORS[executor](run_trial, jobs, workers, threads, record, lost, address=ray_address)

    ordered = [rows.get(t.id) or {"trial": t.id, **t.params, "status": "pending"} for t in spec.trials]
    write_results(out, spec, ordered)
    write_figures(out, spec, ordered, log)
    return ordered


def _trial_dict(t: Trial) -> dict:
    return {"id": t.id, "params": t.params, "preset": t.preset}


def _claim(out: Path, spec: SweepSpec) -> None:
    """Write sweep.json, or check that an existing sweep directory was made with the same settings."""
    path = out / "sweep.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise VaelabError(f"{path} is not valid JSON; remove it or choose another --out") from None
        old_settings = {k: old.get(k) for k in spec.settings()}
        if old_settings != spec.settings():
            diff = ", ".join(f"{k}: {old_settings[k]!r} -> {v!r}" for k, v in spec.settings().items()
                             if old_settings[k] != v)
            raise VaelabError(f"{out} holds a sweep made with other settings ({diff}); "
                              "choose another --out to start a new sweep")
        trials = {t["id"]: t for t in old.get("trials", [])}
        # Trials of earlier runs of this sweep stay listed: their directories are still here.
        for t in spec.to_dict()["trials"]:
            trials[t["id"]] = t
        merged = {**spec.to_dict(), "trials": list(trials.values())}
        merged["params"] = _spec_from_dict(merged).params
        write_json(path, merged)
    else:
        write_json(path, spec.to_dict())
