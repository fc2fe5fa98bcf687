"""Commands for sweeps and built-in experiments: ``sweep``, ``experiment``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vaelab.cli.options import (
    RegistryChoice,
    RegistryHelp,
    _echo,
    data_dir_help,
    registry_help,
)
from vaelab.errors import VaelabError
from vaelab.rundir import RunDir

_PARALLEL = [
    click.option("--workers", type=int, default=1, show_default=True,
                 help="Trials run at once; torch threads are split so workers x threads <= cores."),
    click.option("--executor", type=RegistryChoice("vaelab.sweep.executors:EXECUTORS"), default="local",
                 show_default=True, cls=RegistryHelp, help=lambda: registry_help("vaelab.sweep.executors:EXECUTORS")),
    click.option("--ray-address", help="An existing Ray cluster (e.g. ray://head:10001); default: start one locally."),
]


def _parallel(f):
    for opt in reversed(_PARALLEL):
        f = opt(f)
    return f


def _base(overrides, data_dir, limit) -> list[str]:
    base = list(overrides)
    if data_dir:
        base.append(f"data.data_dir={data_dir}")
    if limit is not None:  # 0 too: data.limit refuses it, as train does
        base.append(f"data.limit={limit}")
    return base


def _finish(rows: list[dict], out: Path) -> None:
    _echo((out / "results.md").read_text().rstrip())
    _echo(f"wrote {out / 'results.csv'}, {out / 'results.md'} and {RunDir(out).figures}/")
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        click.echo(f"vaelab: error: {len(failed)} of {len(rows)} trials failed (see {out / 'results.md'}); "
                   "fix the cause and re-run the same command to retry only those", err=True)
        sys.exit(1)


@click.command()
@click.option("--preset", help="Base configuration for every trial (see `vaelab presets`).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Base YAML config file.")
@click.option("--grid", "grids", multiple=True, metavar="SECTION.FIELD=V1,V2,...",
              help="A swept field and its values, e.g. --grid model.latent_dim=2,4,8 (repeatable: the "
                   "trials are every combination). List values: --grid 'model.hidden=[512],[512,256]'.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
              help="Fixed override for every trial (repeatable).")
@click.option("--epochs", type=int, help="Epochs per trial (default: the preset's).")
@click.option("--data-dir", cls=RegistryHelp, help=data_dir_help)
@click.option("--limit", type=int, help="Use only N training images in every trial (a random subset, seeded by train.seed).")
@click.option("--iw-samples", type=int, default=0, show_default=True,
              help="Importance samples for nll_iw in each trial's evaluation (0 skips it).")
@click.option("--out", type=click.Path(file_okay=False), help="Sweep directory (default runs/sweep-PRESET).")
@_parallel
def sweep(preset, config_file, grids, overrides, epochs, data_dir, limit, iw_samples, out, workers, executor,
          ray_address) -> None:
    """Train one run per grid point; resumable; results.csv/md and comparison figures."""
    from vaelab.sweep.runner import SweepSpec, expand_grid, parse_grid, run_sweep

    if not grids:
        raise VaelabError("say what to sweep: --grid section.field=v1,v2 (e.g. --grid model.latent_dim=2,4,8)")
    if not preset and not config_file:
        raise VaelabError("give the base configuration: --preset NAME (see `vaelab presets`) or --config FILE.yaml")
    if iw_samples < 0:
        raise VaelabError("--iw-samples must be >= 0")
    if epochs is not None and epochs < 0:
        raise VaelabError("--epochs must be >= 0")
    spec = SweepSpec(trials=expand_grid(parse_grid(list(grids))), preset=preset, config_file=config_file,
                     base=_base(overrides, data_dir, limit), epochs=epochs,
                     name=f"sweep of {preset or Path(config_file).stem}", iw_samples=iw_samples)
    out = Path(out or f"runs/sweep-{preset or Path(config_file).stem}")
    rows = run_sweep(spec, out, workers=workers, executor=executor, ray_address=ray_address, log=_echo)
    _finish(rows, out)


@click.command()
@click.argument("name", required=False)
@click.option("--quick", is_flag=True, help="10,000 training digits, 2 epochs: minutes, not hours.")
@click.option("--list", "list_", is_flag=True, help="List the experiments and exit.")
@click.option("--epochs", type=int, help="Epochs per trial (default: 5, or 2 with --quick).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
              help="Extra override for every trial (repeatable).")
@click.option("--data-dir", help="Folder holding mnist/.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder (default runs/experiments/NAME, or NAME-quick).")
@click.option("--no-report", is_flag=True, help="Skip report.html.")
@_parallel
def experiment(name, quick, list_, epochs, overrides, data_dir, out, no_report, workers, executor,
               ray_address) -> None:
    """Run a built-in study with its report (--list names them)."""
    from vaelab.sweep.experiments import EXPERIMENTS, run_experiment
    from vaelab.sweep.runner import read_results

    if list_ or not name:
        for exp in EXPERIMENTS.values():
            _echo(f"{exp.name:<13} {len(exp.trials)} trials: {exp.description}")
        if not name and not list_:
            raise VaelabError("name an experiment: vaelab experiment NAME [--quick] (list above)")
        return
    if epochs is not None and epochs < 0:
        raise VaelabError("--epochs must be >= 0")
    out = run_experiment(name, out, quick=quick, epochs=epochs, extra=_base(overrides, data_dir, None),
                         workers=workers, executor=executor, ray_address=ray_address, report=not no_report,
                         log=_echo)
    _finish(read_results(out), out)
