"""Commands on one run: train, eval, reconstruct, presets, info, download."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import click
from click.core import ParameterSource

from vaelab.cli.options import (
    COMMON_FLAGS,
    RegistryChoice,
    RegistryHelp,
    _echo,
    _print_eval,
    data_dir_help,
    device_option,
    registry_help,
    run_data_dir_option,
    split_option,
)
from vaelab.errors import DataError, Interrupted, VaelabError
from vaelab.rundir import RunDir


# ------------------------------------------------------------------------------ train
@click.command()
@click.option("--preset", help="Named configuration (see `vaelab presets`).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config file.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
              help="Override any config field, e.g. --set model.hidden=512,256 (repeatable).")
@click.option("--data", type=RegistryChoice("vaelab.data:DATASETS"), help="Data set.")
@click.option("--data-dir", cls=RegistryHelp,
              help=lambda: data_dir_help(" (default $VAELAB_DATA, then ~/.cache/vaelab)"))
@click.option("--data-path", help="Image folder or .npz/.npy file; without --data it names the source "
                                  "(.npz/.npy: npz, else folder).")
@click.option("--train-split", type=RegistryChoice("vaelab.config:TRAIN_SPLITS"))
@click.option("--val", help="Validation split: test, none, or a fraction such as 0.1.")
@click.option("--classes", help="Keep only these labels or class-folder names, e.g. 3,5 or cats.")
@click.option("--image-size", type=int, help="Resize folder images to this square size.")
@click.option("--limit", type=int, help="Use only N training images, a random subset seeded by --seed (every "
                                      "source: some, such as dsprites, are ordered).")
@click.option("--latent-dim", type=int)
@click.option("--kind", type=RegistryChoice("vaelab.models:MODELS"),
              help="Model family: the default posterior, prior, objective and conditioning.")
@click.option("--objective", type=RegistryChoice("vaelab.models.objectives:OBJECTIVES"), help="What the model minimises.")
@click.option("--prior", type=RegistryChoice("vaelab.models:PRIORS"), help="Prior p(z) (or p(z|y)).")
@click.option("--loss", type=RegistryChoice("vaelab.models:LIKELIHOODS"), help="Likelihood p(x|z) and its loss.")
@click.option("--beta", type=float, help="Weight of the KL term.")
@click.option("--epochs", type=int)
@click.option("--seed", type=int)
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--device", help="auto (CUDA when present), cpu, cuda, cuda:N.")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default runs/PRESET).")
@click.option("--resume", type=click.Path(file_okay=False), help="Continue the run in this directory.")
@click.option("--overwrite", is_flag=True, help="Replace the run in --out: everything it wrote (figures, samplers, "
                                                  "exports, reports) is removed first.")
@click.option("--iw-samples", type=int,
              help="Importance samples for nll_iw in the final evaluation [default: 10 for models with a "
                   "density, none otherwise].")
@click.option("--iw-images", metavar="N|all",
              help="Estimate the final nll_iw from N test images chosen with the run's seed (eval.json then "
                   "has nll_iw_stderr), or from all of them [default: 1000].")
@click.option("--no-eval", is_flag=True, help="Skip the final evaluation and figures.")
@click.option("--nproc", type=int, help="Train with N processes on this node (torchrun's launcher; at most one per "
                                        "CPU core or GPU); --batch-size stays the global batch.")
@click.option("--log", "log_to", metavar="NAMES", cls=RegistryHelp,
              help=lambda: f"Log the training ({registry_help('vaelab.training.loggers:LOGGERS')} Several: "
                           "--log tensorboard,mlflow).")
@click.option("--tracking-uri", metavar="URI", help="--log mlflow: the tracking store [default: sqlite:///PARENT/"
                                                    "mlflow.db, PARENT the folder holding the run].")
@click.option("--experiment", metavar="NAME", help="--log mlflow: the experiment [default: vaelab].")
@click.pass_context
def train(ctx, preset, config_file, overrides, out, resume, overwrite, iw_samples, iw_images, no_eval, classes, nproc,
          log_to, tracking_uri, experiment, **flags) -> None:
    """Train a model; write the run directory, eval.json and figures.

    Under torchrun (torchrun --nproc-per-node N -m vaelab train ...) each process trains on
    its share of every batch and rank 0 writes the run."""
    from vaelab import api
    from vaelab.training import distributed

    extra: dict = {}
    for name, value in flags.items():
        if value is not None:
            section, field = COMMON_FLAGS[name]
            extra.setdefault(section, {})[field] = value
    if classes:  # label numbers or class-folder names, resolved against the data by load_data
        names = [c.strip() for c in classes.split(",") if c.strip()]
        extra.setdefault("data", {})["classes"] = [int(c) if c.lstrip("-").isdigit() else c for c in names]
    # Flags travel as typed values (extra), never as text to be re-parsed.
    overrides = list(overrides)
    iw_given = iw_samples is not None
    if iw_given and iw_samples < 0:
        raise VaelabError("--iw-samples must be >= 0")
    if iw_given and no_eval:
        raise VaelabError("--iw-samples sets the final evaluation, and --no-eval skips it; give one of them")
    if iw_images is not None and no_eval:
        raise VaelabError("--iw-images sets the final evaluation, and --no-eval skips it; give one of them")
    from vaelab.api import TRAIN_IW_IMAGES

    images_given = iw_images is not None
    iw_images = TRAIN_IW_IMAGES if iw_images is None else _iw_images(iw_images)
    if images_given:
        _check_iw_images(iw_samples)
    if nproc is not None and "WORLD_SIZE" in os.environ:
        raise VaelabError("--nproc starts the processes itself; under torchrun leave it out")
    logging = {"loggers": log_to, "tracking_uri": tracking_uri, "experiment": experiment}
    if resume:
        if preset or config_file:
            raise VaelabError("--resume continues a run with its saved config; drop --preset/--config")
        run_dir = Path(resume)
        if nproc is not None:
            from vaelab.configure import config_from_dict
            from vaelab.training.checkpoint import load_config

            saved = config_from_dict(load_config(run_dir).to_dict(), extra, overrides)
            if _launched(ctx, nproc, saved.train.device, run_dir, prepare=lambda: _open_loggers(run_dir, **logging)):
                return
        with _resumable(run_dir):
            api.train(None, run_dir, overrides=overrides, extra=extra, resume=True, evaluate_after=not no_eval,
                      iw_samples=iw_samples, iw_images=iw_images, log=_echo, overwrite=overwrite, **logging)
    else:
        if not preset and not config_file and not overrides and not extra:
            raise VaelabError("say what to train: --preset NAME (see `vaelab presets`) or --config FILE.yaml")
        run_dir = Path(out or f"runs/{preset or Path(config_file or 'run').stem}")
        from vaelab.configure import build_config

        config = build_config(preset, config_file, overrides, extra)
        _check_iw_samples(iw_samples or 0, config.model)
        if images_given:
            _check_iw_images(iw_samples, config.model)
        # api.train checks the folder (an old run needs --resume or --overwrite); --nproc checks
        # and clears it here, with the same function, before the processes start.
        if nproc is not None and _launched(ctx, nproc, config.train.device, run_dir, prepare=lambda: (
                _open_loggers(run_dir, **logging), RunDir(run_dir).prepare_fresh(overwrite=overwrite))):
            return
        with _resumable(run_dir):
            api.train(config, run_dir, evaluate_after=not no_eval, iw_samples=iw_samples, iw_images=iw_images, log=_echo,
                      overwrite=overwrite, **logging)
    if not distributed.is_main():  # under torchrun: rank 0 reports
        return
    _echo(f"run saved in {run_dir}")
    if not no_eval and RunDir(run_dir).eval.exists():
        _print_eval(json.loads(RunDir(run_dir).eval.read_text()))


def _open_loggers(run_dir: Path, loggers, tracking_uri, experiment) -> None:
    """--nproc: open the loggers here, before the processes start (rank 0 opens them again)."""
    from vaelab.training.loggers import make_loggers

    if loggers or tracking_uri or experiment:
        make_loggers(loggers or [], run_dir, tracking_uri, experiment)


def _iw_images(value: str) -> int | None:
    """--iw-images: "all" (None) or a count of 2 or more."""
    if value.strip().lower() == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 2:
        raise VaelabError(f"--iw-images {value}: give a number of images, 2 or more (the estimate's standard "
                          "error needs two), or 'all'")
    return n


def _without_density(model) -> str | None:
    """The kind of ``model`` (a model or its ModelConfig) when it has no density, else None."""
    from vaelab.models import capabilities

    caps = capabilities(model) if not hasattr(model, "capabilities") else model.capabilities
    return None if "density" in caps else getattr(getattr(model, "cfg", model), "kind", "this")


def _check_iw_samples(iw_samples: int, model) -> None:
    """--iw-samples K > 0 given for a model without a density (nll_iw would be skipped) is an error."""
    kind = _without_density(model) if iw_samples > 0 else None
    if kind is not None:
        raise VaelabError(f"--iw-samples estimates nll_iw, and the {kind} model has no density to estimate; "
                          "leave it out (or give 0)")


def _check_iw_images(iw_samples: int | None, model=None) -> None:
    """--iw-images given where no nll_iw is estimated (--iw-samples 0; with ``model``, a model
    without a density) is an error: the option would be ignored."""
    if iw_samples == 0:
        raise VaelabError("--iw-images sets how many images nll_iw is estimated from, and --iw-samples 0 skips "
                          "nll_iw; give one of them")
    kind = _without_density(model) if model is not None else None
    if kind is not None:
        raise VaelabError(f"--iw-images sets nll_iw, and the {kind} model has no density to estimate; leave it out")


def _launched(ctx: click.Context, nproc: int, device: str, run_dir: Path, prepare=None) -> bool:
    """--nproc N: check N against the devices, then run this same command as N processes
    through torchrun's launcher (True); N = 1 trains here (False). ``prepare()`` runs just
    before the processes start."""
    from vaelab.training import distributed
    from vaelab.training.checkpoint import resume_note
    from vaelab.training.precision import resolve_device

    distributed.check_nproc(nproc, resolve_device(device))
    if nproc == 1:
        return False
    if prepare is not None:
        prepare()
    command = [sys.executable, "-m", "vaelab", "train", *_command_line(ctx, skip=("nproc",))]
    with _resumable(run_dir, f"vaelab train --nproc {nproc}"):
        distributed.launch(command, nproc, note=lambda: resume_note(run_dir, f"vaelab train --nproc {nproc}"))
    return True


@contextlib.contextmanager
def _resumable(run_dir: Path, command: str = "vaelab train") -> Iterator[None]:
    """Ctrl-C while training: say which epoch the run directory holds and how to continue."""
    try:
        yield
    except KeyboardInterrupt:
        from vaelab.training.checkpoint import saved_epoch

        epoch = saved_epoch(run_dir)
        if epoch is None:
            raise Interrupted(f"no epoch had finished, so {run_dir} holds no checkpoint") from None
        raise Interrupted(f"the last checkpoint (epoch {epoch}) is in {run_dir}: "
                          f"{command} --resume {run_dir} to continue") from None


def _command_line(ctx: click.Context, skip: tuple[str, ...]) -> list[str]:
    """The options this command was given, as arguments again (values as parsed)."""
    args: list[str] = []
    for p in ctx.command.params:
        value = ctx.params.get(p.name)
        if p.name in skip or value is None or ctx.get_parameter_source(p.name) is ParameterSource.DEFAULT:
            continue
        if getattr(p, "is_flag", False):
            args += [p.opts[0]] if value else []
        elif getattr(p, "multiple", False):
            for v in value:
                args += [p.opts[0], str(v)]
        else:
            args += [p.opts[0], str(value)]
    return args


# ------------------------------------------------------------------------------ eval
@click.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False))
@split_option
@click.option("--iw-samples", type=int, default=50, show_default=True,
              help="Importance samples K for nll_iw (models with a density); 0 skips it.")
@click.option("--iw-images", metavar="N|all", default="all", show_default=True,
              help="Estimate nll_iw from N of the split's images chosen with --seed (eval.json then has "
                   "nll_iw_stderr), or from all of them.")
@click.option("--seed", type=int, default=0, show_default=True)
@run_data_dir_option
@device_option
@click.pass_context
def eval_cmd(ctx, run_dir, split, iw_samples, iw_images, seed, data_dir, device) -> None:
    """Evaluate a run: print a table and write RUN/eval.json."""
    from vaelab.api import Run

    run = Run.load(run_dir, device=device, data_dir=data_dir)
    if iw_samples < 0:
        raise VaelabError("--iw-samples must be >= 0")
    iw_images = _iw_images(iw_images)
    if ctx.get_parameter_source("iw_samples") is not ParameterSource.DEFAULT:
        _check_iw_samples(iw_samples, run.model)
    if ctx.get_parameter_source("iw_images") is not ParameterSource.DEFAULT:
        _check_iw_images(iw_samples, run.model)
    name = split or run.default_split()
    n_split = len(run.split(name))
    if iw_images is not None and iw_images >= n_split:
        _echo(f"note: --iw-images {iw_images:,} is not fewer than the {n_split:,} {name} images: nll_iw is "
              "estimated from all of them")
        iw_images = None
    if iw_samples > 1 and "density" in run.capabilities:
        from vaelab.progress import announce

        m = n_split if iw_images is None else iw_images
        announce(_echo, f"evaluating {run_dir} on its {n_split:,} {name} images",
                 why=f"nll_iw decodes {iw_samples} posterior samples for each of {m:,} images",
                 # one pass: the loss over every image; nll_iw adds K decodes of m images
                 cost=f"about {1 + iw_samples * m / n_split:.2g} times the work of one pass "
                      "(a smaller --iw-samples or --iw-images is quicker)")
    _print_eval(run.evaluate(split=split, iw_samples=iw_samples, seed=seed, save=True, iw_images=iw_images))
    _echo(f"wrote {run.dir.eval}")


# ------------------------------------------------------------------------------ reconstruct
RECONSTRUCT_MAX = 256  # pairs in one figure: 16 to a row, 16 rows of originals over reconstructions
@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--n", type=int, default=16, show_default=True, help="Number of images.")
@split_option
@click.option("--out", type=click.Path(dir_okay=False), help="PNG path (default RUN/figures/reconstructions.png).")
@run_data_dir_option
@device_option
def reconstruct(run_dir, n, split, out, data_dir, device) -> None:
    """Save originals above their reconstructions as a PNG grid."""
    from vaelab import plots
    from vaelab.api import Run

    if n < 1:
        raise VaelabError("--n must be at least 1")
    run = Run.load(run_dir, device=device, data_dir=data_dir)
    data = run.split(split)
    if n > len(data):
        raise VaelabError(f"--n {n:,}: the {split or run.default_split()} split holds {len(data):,} images; "
                          f"give --n {len(data):,} or fewer")
    if n > RECONSTRUCT_MAX:
        raise VaelabError(f"--n {n:,}: a grid of more than {RECONSTRUCT_MAX:,} pairs is too tall to look at; "
                          "export the reconstructions with `vaelab export` instead")
    x = data.batch(slice(0, n))
    path = plots.plot_reconstructions(x, run.reconstruct(x, None if data.y is None else data.y[:n]),
                                      out or run.dir.figure("reconstructions"))
    _echo(f"wrote {path}")


# ------------------------------------------------------------------------------ info
@click.command()
def presets() -> None:
    """List the named configurations and their parameter counts."""
    from vaelab.config import preset_names
    from vaelab.configure import build_config
    from vaelab.models import build_model, count_params

    for name in preset_names():
        cfg = build_config(name)
        cfg.model.input_shape = cfg.model.input_shape or (
            [3, cfg.data.image_size, cfg.data.image_size] if cfg.data.name == "folder" else [1, 28, 28])
        if cfg.model.uses_labels and cfg.model.num_classes is None:
            cfg.model.num_classes = 10  # the MNIST digits, for the count
        params = count_params(build_model(cfg.model))
        _echo(f"{name:<15} {cfg.model.kind}/{cfg.model.arch:<5} {params:>11,} params  "
              f"{cfg.model.objective:<6} data={cfg.data.name}  epochs={cfg.train.epochs}")


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
def info(run_dir) -> None:
    """Show a run's config summary, training summary and evaluation."""
    from vaelab.training.checkpoint import load_config

    cfg = load_config(run_dir)
    m = cfg.model
    _echo(f"run {run_dir}: {m.kind}/{m.arch} ({m.posterior} posterior, {m.prior} prior, {m.objective} objective), "
          f"latent {m.latent_dim}, loss {m.loss}, data {cfg.data.name}")
    for name in (RunDir.SUMMARY, RunDir.EVAL):
        p = Path(run_dir) / name
        stale = RunDir(run_dir).stale(p) if name == RunDir.EVAL and p.is_file() else None
        old = RunDir(run_dir).summary_stale() if name == RunDir.SUMMARY else None
        if stale:
            _echo(f"{name}: not shown, {stale}; `vaelab eval {run_dir}` evaluates the weights there now")
        elif old:
            _echo(f"{name}: not shown, {old}")
        elif p.is_file():
            try:
                shown = json.loads(p.read_text())
            except (OSError, ValueError) as e:
                raise DataError(f"{p} does not read as JSON ({str(e).splitlines()[0]}); it is damaged: "
                                f"`vaelab eval {run_dir}` writes eval.json again, training writes summary.json") from None
            if not isinstance(shown, dict):
                raise DataError(f"{p} holds a JSON {type(shown).__name__}, not the mapping vaelab writes; it is "
                                "damaged")
            _echo(f"{name}:")
            _print_eval(shown)


@click.command()
@click.option("--data", default="mnist", show_default=True, type=RegistryChoice("vaelab.data.download:SOURCES"))
@click.option("--data-dir", help="Where to put it (default $VAELAB_DATA, then ~/.cache/vaelab).")
def download(data, data_dir) -> None:
    """Download a data set (SHA-256 checked) or confirm it is in place."""
    from vaelab.data.download import locate

    if data_dir is not None and not Path(data_dir).expanduser().exists():
        Path(data_dir).expanduser().mkdir(parents=True)  # where the user asked the download to go
    for stem, path in locate(data, data_dir).items():
        _echo(f"{stem:<24} {path}")
