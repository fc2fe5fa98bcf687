"""Commands to steer codes with the label predictor: ``steer`` and ``steer-bench``.

Thin, as the rest of the CLI: parse, call a function of vaelab.steer, print. Importing
``vaelab.cli`` adds these commands to its group.
"""

from __future__ import annotations

import math
from pathlib import Path

import click

from vaelab.cli.options import _echo, device_option, run_data_dir_option, split_option
from vaelab.errors import VaelabError
from vaelab.latent.steer import (
    DEFAULT_FRAMES,
    DEFAULT_LR,
    DEFAULT_PRIOR_WEIGHT,
    DEFAULT_STEPS,
    DEFAULT_TEMPERATURE,
)
from vaelab.rundir import RunDir


def _check_options(steps: int, lr: float, prior_weight: float, temperature: float) -> None:
    """The steering objective's options, before any work. NaN and inf are refused by name: a
    comparison such as ``lr <= 0`` is False for NaN, which would reach Adam or the result."""
    if steps < 1:
        raise VaelabError(f"--steps must be at least 1, got {steps}")
    if not (math.isfinite(lr) and lr > 0):
        raise VaelabError(f"--lr must be positive and finite (Adam's step size, default {DEFAULT_LR:g}), got {lr:g}")
    if not (math.isfinite(prior_weight) and prior_weight >= 0):
        raise VaelabError(f"--prior-weight must be >= 0 and finite (0 turns the prior term off; default "
                          f"{DEFAULT_PRIOR_WEIGHT:g}), got {prior_weight:g}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise VaelabError(f"--temperature must be positive and finite (1 = the predictor's own probability; "
                          f"default {DEFAULT_TEMPERATURE:g}), got {temperature:g}")


def _check_frames(frames: int | None, steps: int) -> int:
    """``--frames``, checked against ``--steps``: a frame is the code after a whole number of
    steps (0..steps), so there are at most steps + 1 distinct ones. Not given: the default,
    or steps + 1 when that is fewer."""
    if frames is None:
        return min(DEFAULT_FRAMES, steps + 1)
    if frames < 2:
        raise VaelabError(f"--frames must be at least 2 (the start and the end), got {frames}")
    if frames > steps + 1:
        raise VaelabError(f"--frames {frames} is more than the {steps + 1} codes that --steps {steps} passes "
                          f"through (the start and one per step); give --frames {steps + 1} or fewer, or more --steps")
    return frames


_STEPS = click.option("--steps", type=int, default=DEFAULT_STEPS, show_default=True, help="Adam steps on the code.")
_LR = click.option("--lr", type=float, default=DEFAULT_LR, show_default=True, help="Adam step size.")
_PRIOR = click.option("--prior-weight", type=float, default=DEFAULT_PRIOR_WEIGHT, show_default=True,
                      help="Weight of the -0.5 |z|^2 prior term that keeps the code in the data region.")
_TEMP = click.option("--temperature", type=float, default=DEFAULT_TEMPERATURE, show_default=True,
                     help="Soften the predictor in the objective (1 = its own log-probability; > 1 keeps "
                          "pulling into the class after the predictor is sure).")


def _objective_options(command):
    """--steps, --lr, --prior-weight and --temperature: the steering objective, shared by both commands."""
    for option in (_TEMP, _PRIOR, _LR, _STEPS):
        command = option(command)
    return command


# ------------------------------------------------------------------------------ steer
@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--from", "index", type=int, required=True, help="Index of the image in the split.")
@click.option("--to", "target", required=True, help="Target class, by name or number.")
@_objective_options
@click.option("--frames", type=int,
              help=f"Images shown along the path (start and end included), at most --steps + 1 (default "
                   f"{DEFAULT_FRAMES}, or --steps + 1 when that is fewer).")
@split_option
@click.option("--out", type=click.Path(dir_okay=False), help="PNG strip (default RUN/figures/steer_INDEX_to_CLASS.png).")
@run_data_dir_option
@device_option
def steer(run_dir, index, target, steps, lr, prior_weight, temperature, frames, split, out, data_dir,
          device) -> None:
    """Move one image's code towards a class; save the decoded path as a PNG strip."""
    from vaelab.api import Run
    from vaelab.latent.steer import check_predictor, check_target, plot_examples
    from vaelab.latent.steer import steer as steer_fn

    _check_options(steps, lr, prior_weight, temperature)
    frames = _check_frames(frames, steps)
    run = Run.load(run_dir, device=device, data_dir=data_dir)
    target = run.class_index(target, "--to")  # names from summary.json: no data read for a run that has them
    check_target(target, check_predictor(run.model))  # before any data is read
    data = run.split(split)
    if not 0 <= index < len(data):
        raise VaelabError(f"--from {index} is out of range: the {split or run.default_split()} split has "
                          f"{len(data)} images (0..{len(data) - 1})")
    x = data.batch(slice(index, index + 1))
    r = steer_fn(run, x, target, steps=steps, lr=lr, prior_weight=prior_weight, temperature=temperature,
                 frames=frames)
    label = None if data.y is None else data.y[index:index + 1]
    path = out or run.dir.figure(f"steer_{index}_to_{target}")
    plot_examples(x, r, None, label, path, n=1,
                  title=f"image {index} steered to class {target}: p {r.start_prob[0]:.3f} -> {r.end_prob[0]:.3f}")
    _echo(f"predictor p(class {target}): {float(r.start_prob[0]):.4f} at the start -> "
          f"{float(r.end_prob[0]):.4f} after {steps} steps")
    _echo(f"wrote {path}")


# ------------------------------------------------------------------------------ steer-bench
@click.command("steer-bench")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--pairs", type=int, default=100, show_default=True,
              help="Random (image, other class) pairs to steer.")
@_objective_options
@click.option("--judge", "judge_dir", type=click.Path(file_okay=False),
              help="Judge folder: loaded if it holds one, else trained and saved there (default: the user cache).")
@split_option
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for drawing the pairs.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder for steer_eval.json and figures/steer_examples.png (default RUN).")
@run_data_dir_option
@device_option
def steer_bench(run_dir, pairs, steps, lr, prior_weight, temperature, judge_dir, split, seed, out, data_dir,
                device) -> None:
    """Steer random pairs to other classes; the judge decides the success rate."""
    from vaelab.api import Run
    from vaelab.latent.steer import check_predictor, steer_benchmark

    _check_options(steps, lr, prior_weight, temperature)
    if pairs < 1:
        raise VaelabError("--pairs must be at least 1")
    run = Run.load(run_dir, device=device, data_dir=data_dir)
    check_predictor(run.model)
    out = Path(out or run_dir)
    r = steer_benchmark(run, pairs=pairs, judge=judge_dir, seed=seed, split=split, steps=steps, lr=lr,
                        prior_weight=prior_weight, temperature=temperature, out=out, log=_echo)
    for k in ("pairs", "steps", "prior_weight", "temperature", "success_rate", "predictor_success_rate", "success_rate_start",
              "target_prob_start", "target_prob_end", "judge_accuracy_original"):
        v = r[k]
        _echo(f"  {k:<24} {v:.4f}" if isinstance(v, float) else f"  {k:<24} {v}")
    _echo(f"wrote {RunDir(out).steer_eval} and {RunDir(out).figure('steer_examples')}")
