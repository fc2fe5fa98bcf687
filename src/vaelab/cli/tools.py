"""Commands for using a trained run: ``inpaint``, ``detect``, ``anomaly-bench``, ``export``.

Thin, as the rest of the CLI: parse, call a function of vaelab.inpaint / vaelab.anomaly /
vaelab.export, print. Importing ``vaelab.cli`` adds these commands to its group.
"""

from __future__ import annotations

import math
from pathlib import Path

import click

from vaelab.cli.options import (
    RegistryChoice,
    RegistryHelp,
    _echo,
    data_dir_help,
    device_option,
    registry,
    run_data_dir_option,
    split_option,
    takers,
)
from vaelab.errors import VaelabError


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _score_help() -> str:
    """Which scores serve every model (and the image sizes they need), and which need a capability."""
    from vaelab.anomaly.scores import SCORES

    every = [k + (f" ({s.min_side}x{s.min_side} and larger)" if s.min_side > 1 else "")
             for k, s in SCORES.items() if s.needs is None]
    needs: dict[str, list[str]] = {}
    for k, s in SCORES.items():
        if s.needs is not None:
            needs.setdefault(s.needs, []).append(k)
    return "; ".join([f"{', '.join(every)} serve every model"]
                     + [f"{', '.join(names)} need a {need}" for need, names in needs.items()]) + "."


_METHODS = "vaelab.latent.inpaint:METHODS"


def _samples_help() -> str:
    from vaelab.anomaly.scores import SCORES

    drawn = [k for k, s in SCORES.items() if s.needs is not None]
    return f"Posterior samples K for the {', '.join(drawn)} scores (default 10)."


# ------------------------------------------------------------------------------ inpaint
@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--mask", default="center:10", show_default=True,
              help="center:K, center:HxW, random:K (one KxK patch per image), top, bottom, left, right, "
                   "or file:PATH.png (white = hidden).")
@click.option("--method", default="latent-opt", show_default=True, type=RegistryChoice("vaelab.latent.inpaint:METHODS"),
              help="latent-opt was the best in bench/ (93% judge accuracy on MNIST).")
@click.option("--n", type=int, default=1000, show_default=True, help="Inpaint the first N images of the split.")
@split_option
@click.option("--iterations", type=int, cls=RegistryHelp,
              help=lambda: f"Passes through the model ({takers(_METHODS, 'iterations')}).")
@click.option("--steps", type=int, cls=RegistryHelp, help=lambda: f"Adam steps ({takers(_METHODS, 'steps')}).")
@click.option("--lr", type=float, cls=RegistryHelp,
              help=lambda: f"Adam learning rate ({takers(_METHODS, 'lr')}).")
@click.option("--judge", "judge_dir", type=click.Path(file_okay=False),
              help="Judge folder (default: the cached judge for the data set; trained on first use).")
@click.option("--no-judge", is_flag=True, help="Skip the judge accuracies.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random masks.")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (default RUN/inpaint-METHOD).")
@run_data_dir_option
@device_option
def inpaint(run_dir, mask, method, n, split, iterations, steps, lr, judge_dir, no_judge, seed, out, data_dir,
            device) -> None:
    """Fill hidden pixels with the model; write inpaint_eval.json and inpaint.png."""
    import inspect

    from vaelab.api import Run
    from vaelab.latent.inpaint import METHODS, evaluate_inpainting, parse_mask

    if method not in METHODS:
        raise VaelabError(f"unknown inpainting method {method!r}; known: {', '.join(METHODS)}")
    if n < 1:
        raise VaelabError("--n must be at least 1")
    if no_judge and judge_dir is not None:
        raise VaelabError("--judge names the judge of the accuracies, and --no-judge skips them; give one of them")
    takes = inspect.signature(METHODS[method]).parameters  # the method's own options
    options = {k: v for k, v in (("iterations", iterations), ("steps", steps), ("lr", lr)) if k in takes}
    given = {k: v for k, v in (("--iterations", iterations), ("--steps", steps), ("--lr", lr)) if v is not None}
    unused = [k for k in given if k.lstrip("-") not in options]
    if unused:
        raise VaelabError(f"{', '.join(unused)} does not apply to --method {method}")
    for name, v in (("--iterations", iterations), ("--steps", steps)):
        if v is not None and v < 1:
            raise VaelabError(f"{name} must be at least 1, got {v} (leave it out for the method's default)")
    if lr is not None and not (math.isfinite(lr) and lr > 0):  # `lr <= 0` is False for NaN
        raise VaelabError(f"--lr must be positive and finite (Adam's step size; leave it out for the default), "
                          f"got {lr:g}")
    run = Run.load(run_dir, device=device, data_dir=data_dir)
    parse_mask(mask, run.config.model.input_shape)  # a bad mask fails before any data is read
    out = Path(out or Path(run_dir) / f"inpaint-{method}")
    result = evaluate_inpainting(run, mask=mask, n=n, method=method, split=split, judge=judge_dir,
                                 use_judge=not no_judge, seed=seed, out=out, log=_echo,
                                 **{k: v for k, v in options.items() if v is not None})
    for k in ("method", "mask", "n", "masked_mse", "masked_mse_input", "ssim", "ssim_input", "judge_accuracy",
              "judge_accuracy_masked", "judge_accuracy_original"):
        if k in result:
            _echo(f"  {k:<24} {_fmt(result[k])}")
    for k, why in result.get("not_applicable", {}).items():
        _echo(f"  ({k} not applicable: {why})")
    _echo(f"wrote {out / 'inpaint_eval.json'} and {out / 'inpaint.png'}")


# ------------------------------------------------------------------------------ detect
@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--input", "input_path", required=True, type=click.Path(),
              help="IDX images file (.gz or -ubyte; labels from the matching labels file), image folder, "
                   "or .npz/.npy array.")
@click.option("--score", default="mse", show_default=True, type=RegistryChoice("vaelab.anomaly.scores:SCORES"),
              cls=RegistryHelp, help=lambda: _score_help())
@click.option("--contamination", type=float, default=0.05, show_default=True,
              help="Fraction of the run's own TRAINING images above the threshold; the threshold is "
                   "their (1 - contamination) score quantile.")
@click.option("--samples", type=int, cls=RegistryHelp, help=lambda: _samples_help())
@click.option("--out", type=click.Path(dir_okay=False), default="scores.csv", show_default=True,
              help="CSV path; scores_hist.png and most_anomalous.png are written beside it.")
@click.option("--maps", is_flag=True,
              help="Also write per-pixel anomaly maps (squared error summed over channels): anomaly_maps.npy "
                   "(N, H, W) float32 and anomaly_maps.png (heat maps of the most anomalous images).")
@click.option("--smooth", type=float, metavar="SIGMA", help="With --maps: Gaussian smoothing of the maps, in pixels.")
@click.option("--skip-bad", is_flag=True,
              help="An --input folder: leave unreadable images out of the CSV (named in a note) instead of stopping.")
@click.option("--seed", type=int, help="Seed of the posterior draws of the elbo and iwnll scores (default 0).")
@click.option("--data-dir", help="Where the run's training data lives, if not where it was at training time.")
@device_option
def detect(run_dir, input_path, score, contamination, samples, out, maps, smooth, skip_bad, seed, data_dir,
           device) -> None:
    """Score images for anomalies; write a CSV (score, anomaly 0/1, label) and two figures (and maps)."""
    from vaelab.anomaly.scores import (
        SCORES,
        check_contamination,
        check_score,
        check_smoothing,
    )
    from vaelab.anomaly.scores import detect as detect_fn
    from vaelab.api import Run

    check_score(score)
    check_contamination(contamination)
    check_smoothing(maps, smooth)
    if samples is not None and SCORES[score].needs is None:
        raise VaelabError(f"--samples (posterior draws) applies to the elbo and iwnll scores, not to --score {score}")
    if seed is not None and SCORES[score].needs is None:  # mse, bce, ssim ...: nothing random to seed
        raise VaelabError(f"--seed seeds the posterior draws of the elbo and iwnll scores; --score {score} draws "
                          "nothing: leave it out")
    samples = 10 if samples is None else samples
    seed = 0 if seed is None else seed
    if samples < 1:
        raise VaelabError("--samples must be at least 1")
    if skip_bad and not Path(input_path).is_dir():
        raise VaelabError(f"--skip-bad applies to an --input folder of images, and {input_path} is not a folder")
    run = Run.load(run_dir, device=device, data_dir=data_dir)
    r = detect_fn(run, input_path, score=score, contamination=contamination, out=out, samples=samples, seed=seed,
                  maps=maps, smooth=smooth, skip_bad=skip_bad, log=_echo)
    _echo(f"{r['anomalies']} of {r['n']} images above the threshold {r['threshold']:.6g} "
          f"({score}; {contamination:g} of the training images lie above it)")
    parent = Path(out).parent
    _echo(f"wrote {out}, {parent / 'scores_hist.png'} and {parent / 'most_anomalous.png'}")
    if maps:
        _echo(f"wrote {r['maps']['npy']} ({r['n']} maps) and {r['maps']['png']}")


# ------------------------------------------------------------------------------ anomaly-bench
@click.command("anomaly-bench")
@click.option("--data", default="mnist", show_default=True, type=RegistryChoice("vaelab.data:DATASETS"),
              help="A labelled data set; a folder holds class sub-folders, with train/ and test/, or one set of "
                   "which a part of the normal class is held out.")
@click.option("--normal", default="all", show_default=True,
              help="Normal classes to run: all, or label numbers or class (folder) names, e.g. 3,5 or smileys-emotion.")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Folder for results.csv, results.md, results.json and roc.png.")
@click.option("--preset", help="Model preset (default: mlp-vae for 30 epochs; for --data folder the default of "
                               "bench/README.md's emoji table).")
@click.option("--epochs", type=int, help="Training epochs per class (default: the default recipe's, or the --preset's own).")
@click.option("--score", type=RegistryChoice("vaelab.anomaly.scores:SCORES"), cls=RegistryHelp,
              help=lambda: f"Anomaly score (default: the default recipe's). {_score_help()}")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE", help="Config override (repeatable).")
@click.option("--holdout", type=float,
              help="Without a test split: the fraction of the normal class held out (seeded by --seed) and scored "
                   "beside every image of the other classes (default 0.2).")
@click.option("--samples", type=int, cls=RegistryHelp, help=lambda: _samples_help())
@click.option("--limit", type=int, help="Use only N training images per class, a random subset seeded by --seed "
                                      "(quick checks).")
@click.option("--test-limit", type=int, help="Score only N test images, a random subset seeded by --seed "
                                           "(quick checks).")
@click.option("--data-dir", cls=RegistryHelp, help=data_dir_help)
@click.option("--data-path", help="Image folder (--data folder) or .npz file (--data npz).")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--keep-runs", is_flag=True, help="Keep each class's run directory under OUT/runs/.")
@click.option("--verbose", is_flag=True, help="Print every training epoch.")
def anomaly_bench(data, normal, out, preset, epochs, score, overrides, holdout, samples, limit, test_limit, data_dir,
                  data_path, seed, keep_runs, verbose) -> None:
    """One-class protocol: train on each normal class, AUROC against every other class."""
    from vaelab.anomaly.one_class import one_class_benchmark
    from vaelab.anomaly.scores import check_score

    if score:
        check_score(score)
    if normal.strip().lower() == "all":
        classes = None
    else:
        classes = [int(c) if c.strip().lstrip("-").isdigit() else c.strip() for c in normal.split(",") if c.strip()]
        if not classes:
            raise VaelabError("--normal names no class")
    for name, v in (("--epochs", epochs), ("--limit", limit), ("--test-limit", test_limit), ("--samples", samples)):
        if v is not None and v < 1:
            raise VaelabError(f"{name} must be at least 1")
    if holdout is not None and not 0 < holdout < 1:
        raise VaelabError(f"--holdout must be a fraction in (0, 1), got {holdout:g}")
    r = one_class_benchmark(data, classes, out=out, preset=preset, epochs=epochs, score=score,
                            overrides=list(overrides), data_dir=data_dir, data_path=data_path, limit=limit,
                            test_limit=test_limit, samples=samples, seed=seed, keep_runs=keep_runs, holdout=holdout,
                            log=_echo, verbose=verbose)
    _echo(f"mean AUROC {r['mean_auroc']:.4f} over {len(r['per_class'])} classes ({r['preset']}, score {r['score']}; "
          f"{r['seconds']:.0f}s)")
    _echo(f"wrote {Path(out) / 'results.csv'}, results.md, results.json and roc.png")


# ------------------------------------------------------------------------------ export
def _onnx_samplers() -> list[str]:
    """The prior, and the samplers fit on codes that have an ONNX form (``onnx_codes``)."""
    from vaelab.latent.sampling import SAMPLERS

    return ["prior", *(name for name, s in SAMPLERS.items() if hasattr(s, "onnx_codes"))]


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--what", type=RegistryChoice("vaelab.export.table:EXPORTS"),
              help="What to write as CSV (default: reconstructions).")
@split_option
@click.option("--n", type=int, help="First N images (default: 100 reconstructions, every latent code).")
@click.option("--out", type=click.Path(dir_okay=False), help="CSV path (default RUN/WHAT.csv).")
@click.option("--decimals", type=int, help="Digits after the decimal point (default 4 for pixels, 6 for codes).")
@click.option("--chunk-size", type=int, help="Images per written chunk (default 1000).")
@click.option("--onnx", "onnx_dir", type=click.Path(file_okay=False),
              help="Instead of a CSV: write the model as ONNX files into this folder, with onnx.json.")
@click.option("--parts", cls=RegistryHelp,
              help=lambda: f"With --onnx: comma-separated, of {', '.join(registry('vaelab.export.onnx:PARTS'))} "
                           "(default: every part the model has).")
@click.option("--sampler", cls=RegistryHelp,
              help=lambda: "With --onnx: the sampler part decodes draws of this sampler fit on the training codes "
                           f"(of {', '.join(_onnx_samplers())}; default prior).")
@run_data_dir_option
@device_option
def export(run_dir, what, split, n, out, decimals, chunk_size, onnx_dir, parts, sampler, data_dir, device) -> None:
    """Write reconstructions (row_id, orig_px0, recon_px0, ...) or latent codes as CSV, or the
    encoder, decoder, anomaly scorer and sampler as ONNX (--onnx DIR)."""
    from vaelab.api import Run

    if onnx_dir is not None:
        csv_only = [name for name, v in (("--what", what), ("--split", split), ("--n", n), ("--out", out),
                                         ("--decimals", decimals), ("--chunk-size", chunk_size),
                                         ("--data-dir", data_dir)) if v is not None]
        if csv_only:
            raise VaelabError(f"{', '.join(csv_only)} applies to CSV exports, not to --onnx")
        from vaelab.export.onnx import export_onnx
        from vaelab.latent.sampling import last_fitted

        names = [p.strip() for p in parts.split(",") if p.strip()] if parts is not None else None
        if names == []:
            raise VaelabError(f"--parts {parts!r} names no part; give a comma-separated list of "
                              f"{', '.join(registry('vaelab.export.onnx:PARTS'))}, or leave --parts out for every "
                              "part the model has")
        if sampler is not None and sampler not in _onnx_samplers():
            raise VaelabError(f"--sampler {sampler} cannot be exported to ONNX; exportable: "
                              f"{', '.join(_onnx_samplers())}")
        if sampler is not None and names is not None and "sampler" not in names:
            raise VaelabError(f"--sampler {sampler} chooses what the sampler part decodes, and --parts {parts} "
                              "leaves the sampler part out; add sampler to --parts, or drop --sampler")
        run = Run.load(run_dir, device="cpu")
        # a sampler fit on the codes: the run's own, as last fit (its settings and seed), fit now if need be
        fitted = last_fitted(run, sampler, log=_echo) if sampler not in (None, "prior") else None
        r = export_onnx(run, onnx_dir, parts=names, log=_echo, sampler=fitted)
        checked = r["checked"]
        if isinstance(checked, dict):
            worst = max(p["max_abs_diff"] for p in r["parts"].values())
            _echo(f"checked with {checked['runtime']} at batch sizes "
                  f"{', '.join(map(str, checked['batch_sizes']))}: max abs difference {worst:.2g}")
        else:
            _echo(checked)
        _echo(f"wrote {', '.join(p['file'] for p in r['parts'].values())} and onnx.json to {onnx_dir}")
        return
    if parts is not None or sampler is not None:
        raise VaelabError(f"{'--parts' if parts is not None else '--sampler'} applies to --onnx exports")
    what = what or "reconstructions"
    chunk_size = 1000 if chunk_size is None else chunk_size
    from vaelab.export.table import export as export_fn

    if n is not None and n < 1:
        raise VaelabError("--n must be at least 1")
    if chunk_size < 1:
        raise VaelabError("--chunk-size must be at least 1")
    if decimals is not None and not 0 <= decimals <= 12:
        raise VaelabError("--decimals must be between 0 and 12")
    run = Run.load(run_dir, device=device, data_dir=data_dir)
    out = out or Path(run_dir) / f"{what}.csv"
    kw = {"decimals": decimals} if decimals is not None else {}
    r = export_fn(run, what, out, split=split, n=n, chunk_size=chunk_size, **kw)
    data, name = run.split(split), split or run.default_split()
    if n is not None and r["rows"] < n:
        _echo(f"note: the {name} split holds {len(data)} images; exported all {r['rows']}, not {n}")
    if what == "latents" and data.y is None:
        _echo(f"note: the {name} split has no labels; the label column is empty")
    _echo(f"wrote {r['rows']} rows x {r['columns']} columns to {out}")
