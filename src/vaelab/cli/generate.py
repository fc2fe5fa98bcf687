"""Commands to generate and explore: judge, sample, plot, eval-samples, fit-prior."""

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
from vaelab.config import MAX_SEED
from vaelab.errors import VaelabError


def _sampler_params(components, covariance, scale, **more) -> dict:
    return {"components": components, "covariance": covariance, "scale": scale, **more}


# The decoded images a command holds in memory at once, as float32: `sample` copies them a few
# times more to draw its grid; `eval-samples` keeps room for 50,000 64x64 RGB images (FID's usual count).
SAMPLE_MEMORY = {"sample": 2**30, "eval-samples": 4 * 2**30}


def _check_sampling(scale, seed) -> None:
    """The sampling options every sampler reads, refused in one line before any work."""
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise VaelabError(f"--scale must be a positive finite number (it multiplies the sampler's covariance; "
                          f"below 1 trades variety for fidelity), got {scale}")
    if not 0 <= seed <= MAX_SEED:
        raise VaelabError(f"--seed must be a whole number from 0 to {MAX_SEED:,} (numpy's and scikit-learn's "
                          f"seeds), got {seed}")


def _check_n_fits(run, n: int, command: str) -> None:
    """Refuse an ``--n`` whose decoded images would not fit the memory ``command`` allows them."""
    shape = tuple(run.config.model.input_shape)
    each = math.prod(shape) * 4  # bytes, float32
    budget = SAMPLE_MEMORY[command]
    most = budget // each
    if n > most:
        raise VaelabError(f"--n {n:,} is too many: {command} holds the images in memory at once, at most "
                          f"{budget / 2**30:g} GiB of them as float32, which is {most:,} of this run's "
                          f"{'x'.join(map(str, shape))} images (these would take {n * each / 2**30:,.1f} GiB); "
                          f"use --n {most:,} or fewer")


def _class_help() -> str:
    from vaelab.latent.sampling import SAMPLERS, Sampler

    always = [n for n, s in SAMPLERS.items() if s.conditional]
    maybe = [n for n, s in SAMPLERS.items() if not s.conditional and s.takes_class.__func__ is not Sampler.takes_class.__func__]
    return (f"Class to sample, by name or number: {', '.join(always)} need one; {', '.join(maybe)} take one when "
            "the model (or its prior) is class-conditional.")


_SAMPLERS = "vaelab.latent.sampling:SAMPLERS"
_SAMPLER_OPTIONS = [  # the sampler's own parameters; each help names the samplers that read it
    click.option("--components", type=int, cls=RegistryHelp,
                 help=lambda: f"Mixture components ({takers(_SAMPLERS, 'components')})."),
    click.option("--covariance", type=RegistryChoice("vaelab.latent.sampling:COVARIANCES"), cls=RegistryHelp,
                 help=lambda: f"GMM covariance type ({takers(_SAMPLERS, 'covariance')})."),
    click.option("--scale", type=float, cls=RegistryHelp,
                 help=lambda: f"Covariance scale, < 1 trades variety for fidelity ({takers(_SAMPLERS, 'scale')})."),
    click.option("--epochs", type=int, cls=RegistryHelp,
                 help=lambda: f"Epochs of fitting on the training codes ({takers(_SAMPLERS, 'epochs')})."),
    click.option("--lr", type=float, cls=RegistryHelp,
                 help=lambda: f"Adam's learning rate when fitting ({takers(_SAMPLERS, 'lr')})."),
    click.option("--batch-size", type=int, cls=RegistryHelp,
                 help=lambda: f"Batch size when fitting on the training codes ({takers(_SAMPLERS, 'batch_size')})."),
    click.option("--hidden", type=int, cls=RegistryHelp,
                 help=lambda: f"Units per hidden layer of the fitted network ({takers(_SAMPLERS, 'hidden')})."),
    click.option("--blocks", type=int, cls=RegistryHelp,
                 help=lambda: f"MADE blocks of the flow ({takers(_SAMPLERS, 'blocks')})."),
    click.option("--depth", type=int, cls=RegistryHelp,
                 help=lambda: f"Hidden layers of stage 2's encoder and of its decoder ({takers(_SAMPLERS, 'depth')})."),
    click.option("--latent", type=int, cls=RegistryHelp,
                 help=lambda: f"Size of stage 2's latent u, unset: the code size ({takers(_SAMPLERS, 'latent')})."),
    click.option("--codes", type=RegistryChoice("vaelab.latent.sampler_base:CODES"), cls=RegistryHelp,
                 help=lambda: "The training codes a sampler is fit on: the posterior means, or one posterior draw "
                              f"per image (a stochastic posterior only) ({takers(_SAMPLERS, 'codes')})."),
]


def _sampler_options(f):
    for opt in reversed(_SAMPLER_OPTIONS):
        f = opt(f)
    return f


def _plot_help(param: str, text: str):
    """The help of a plot option: the kinds that read it (their function's ``param``), then ``text``."""
    def help_text() -> str:
        from vaelab.latent.pictures import PLOTS, plot_options

        return f"{'/'.join(k for k in PLOTS if param in plot_options(k))}: {text}"
    return help_text


def _only_used(name: str, params: dict) -> dict:
    """The options a sampler's constructor takes; one it does not take is an error (a --scale
    given to the prior sampler would otherwise be silently ignored)."""
    from vaelab.latent.sampling import SAMPLERS

    if name not in SAMPLERS:
        raise VaelabError(f"unknown sampler {name!r}; available: {', '.join(SAMPLERS)}")
    takes = set(SAMPLERS[name].settings())
    unused = [k for k, v in params.items() if v is not None and k not in takes]
    if unused:
        raise VaelabError(f"--{', --'.join(k.replace('_', '-') for k in unused)} does not apply to --sampler {name}"
                          + (f" (it takes {', '.join('--' + k.replace('_', '-') for k in sorted(takes & params.keys()))})"
                             if takes & params.keys() else ""))
    return {k: v for k, v in params.items() if v is not None}


@click.command()
@click.option("--data", default="mnist", show_default=True, type=RegistryChoice("vaelab.data:DATASETS"),
              help="Labelled data set.")
@click.option("--data-dir", cls=RegistryHelp, help=data_dir_help)
@click.option("--data-path", help="Image folder or .npz for --data folder/npz.")
@click.option("--out", type=click.Path(file_okay=False), help="Folder for the judge (default: the user cache).")
@click.option("--image-size", type=int, help="A folder: resize every image to this square size (as train's).")
@click.option("--set", "overrides", multiple=True, metavar="data.FIELD=VALUE",
              help="A data option, as train takes it (repeatable): data.crop=center:148, data.background=black, "
                   "data.channels=3, data.skip_bad=true. A run's own judge (eval-samples, inpaint, steer) uses "
                   "the run's.")
@click.option("--epochs", type=int, default=6, show_default=True)
@click.option("--retrain", is_flag=True, help="Train again even if a cached judge exists.")
def judge(data, data_dir, data_path, image_size, overrides, out, epochs, retrain) -> None:
    """Train (or reuse) the judge classifier; print and save its test accuracy."""
    from vaelab.config import DataConfig, apply_overrides
    from vaelab.data.download import cache_dir
    from vaelab.evaluation.judge import DATA_READ, get_judge, judge_key

    given = apply_overrides({"data": {"name": data, "data_dir": data_dir, "path": data_path,
                                      "image_size": image_size}}, overrides=list(overrides))
    if set(given) != {"data"}:
        raise VaelabError(f"vaelab judge reads data.* options only, not {', '.join(sorted(set(given) - {'data'}))}.*")
    cfg = DataConfig(**given["data"])
    if unread := sorted(set(given["data"]) - set(DATA_READ)):
        raise VaelabError(f"vaelab judge does not read data.{', data.'.join(unread)}: it trains on every class of "
                          f"the standard split; leave {'it' if len(unread) == 1 else 'them'} out")
    cfg.check_used()  # --data-path for mnist, --data-dir for a folder: refused, not ignored
    j = get_judge(cfg, out, retrain=retrain, log=_echo, epochs=epochs)
    folder = out or cache_dir() / "judge" / judge_key(cfg)
    _echo(f"judge for {j.meta['dataset']}: test accuracy {j.accuracy:.4f} ({j.meta['n_test']:,} images); {folder}/eval.json")


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--sampler", default="prior", show_default=True, type=RegistryChoice("vaelab.latent.sampling:SAMPLERS"),
              help="Where codes come from: the model's prior, or a density fit on the training codes.")
@click.option("--n", type=int, default=100, show_default=True)
@click.option("--class", "cls", cls=RegistryHelp, help=_class_help)
@_sampler_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="PNG grid (default RUN/figures/samples_SAMPLER.png).")
@click.option("--npz", type=click.Path(dir_okay=False), help="Also save the images and codes as .npz.")
@device_option
def sample(run_dir, sampler, n, cls, components, covariance, scale, epochs, lr, batch_size, hidden, blocks, depth,
           latent, codes, seed, out, npz, device) -> None:
    """Decode samples from a latent sampler into a PNG grid (and optionally .npz)."""
    import numpy as np

    from vaelab import plots
    from vaelab.api import Run
    from vaelab.io import atomic_path, write_json
    from vaelab.latent.sampling import SAMPLERS, fitted_sampler, sample_images
    from vaelab.rundir import ID_FIELD, RunDir, refuse_run_file, sidecar

    if n < 1:
        raise VaelabError("--n must be at least 1")
    _check_sampling(scale, seed)
    if out:
        plots.check_figure_path(out)
    run = Run.load(run_dir, device=device)
    _check_n_fits(run, n, "sample")
    grid = Path(out) if out else run.dir.figure(f"samples_{sampler}")
    if npz:
        refuse_run_file(npz, "--npz")
    if npz and Path(npz).resolve() == grid.resolve():  # before anything is written: neither is lost
        raise VaelabError(f"--npz {npz} is the same file as the PNG grid ({'--out ' if out else 'the default --out, '}"
                          f"{grid}): the one would overwrite the other; give them different paths")
    asked_as, cls = cls, run.class_index(cls)
    if cls is None and not SAMPLERS[sampler].from_model and SAMPLERS[sampler].takes_class(run):
        raise VaelabError(f"sampler {sampler} is class-conditional: pass --class C")  # before it is fit
    s = fitted_sampler(run, sampler, seed=seed, log=_echo, **_only_used(sampler, _sampler_params(
        components, covariance, scale, epochs=epochs, lr=lr, batch_size=batch_size, hidden=hidden, blocks=blocks,
        depth=depth, latent=latent, codes=codes)))
    if s.conditional and cls is None and sampler != "prior":
        raise VaelabError(f"sampler {sampler} is class-conditional: pass --class C")
    images, asked, codes = sample_images(run, s, n, cls=cls, seed=seed)
    title = f"{sampler} samples" + (f" of class {asked_as}" if cls is not None else
                                    " (one class per position, cycling)" if asked is not None else "")
    path = plots.plot_grid(images, grid, title=title)
    _echo(f"wrote {path}")
    if npz:
        with atomic_path(npz) as tmp, open(tmp, "wb") as f:
            arrays = {"images": (images.numpy() * 255).round().astype(np.uint8), "codes": codes.numpy()}
            if asked is not None:
                arrays["labels"] = asked.numpy()
            np.savez_compressed(f, **arrays)
        if RunDir.owning(npz) is not None:  # inside a run: NPZ.json records the weights (vaelab.rundir)
            write_json(sidecar(npz), {"file": Path(npz).name, ID_FIELD: run.checkpoint_id})
        _echo(f"wrote {npz}")


def _image_index(value: str | None, option: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise VaelabError(f"{option} {value!r}: with --between images it is an image's index, a number") from None


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--kind", required=True, type=RegistryChoice("vaelab.latent.pictures:PLOTS"))
@click.option("--out", type=click.Path(dir_okay=False), help="PNG path (default RUN/figures/KIND.png).")
@split_option
@click.option("--n", type=int, cls=RegistryHelp,
              help=_plot_help("n", "number of images (default all; tsne 2000, recon 16, styles 8)."))
@click.option("--dims", default="0,1", show_default=True, cls=RegistryHelp,
              help=_plot_help("dims", "latent dimensions to plot."))
@click.option("--pairs", cls=RegistryHelp,
              help=_plot_help("pairs", "class pairs to project (default 0-1,4-9 when present)."))
@click.option("--radius", type=float, cls=RegistryHelp,
              help=_plot_help("radius", "range [-r, r] (2-D grid default 1, rows default 3)."))
@click.option("--steps", type=int, cls=RegistryHelp, help=_plot_help("steps", "points per axis or path."))
@click.option("--index", type=int, cls=RegistryHelp,
              help=_plot_help("index", "vary around this image's code (default z = 0)."))
@click.option("--between", type=click.Choice(["class", "images"]), default="class", show_default=True,
              cls=RegistryHelp, help=_plot_help("mode", "between two class means or two images."))
@click.option("--from", "source", cls=RegistryHelp,
              help=_plot_help("source", "first class, by name or number (default 1 if present), or image index."))
@click.option("--to", "target", cls=RegistryHelp,
              help=_plot_help("target", "second class, by name or number (default 7 if present), or image index."))
@click.option("--scale", type=float, cls=RegistryHelp,
              help=_plot_help("scale", "length of the basis vectors (default 3)."))
@click.option("--class", "cls", cls=RegistryHelp,
              help=_plot_help("cls", "the class, by name or number, a conditional model decodes codes under (default: the image's "
                                     "class, else 0)."))
@click.option("--seed", type=int, default=0, show_default=True)
@device_option
def plot(run_dir, kind, out, split, n, dims, pairs, radius, steps, index, between, source, target, scale, cls, seed,
         device) -> None:
    """Pictures of a run: latent scatter, t-SNE, PCA, traversals, interpolations, basis, styles, recon, loss."""
    from click.core import ParameterSource

    from vaelab import plots
    from vaelab.api import Run
    from vaelab.latent.pictures import check_options, plot_options
    from vaelab.latent.pictures import plot as draw

    # Each kind reads some of the options: one given to a kind that does not read it is refused.
    takes = plot_options(kind)
    ctx = click.get_current_context()
    keyword = {"between": "mode"}  # option name -> the plot function's parameter
    skip = ("run_dir", "kind", "out", "device")
    given = [p for p in ctx.command.params if p.name not in skip
             and ctx.get_parameter_source(p.name) is not ParameterSource.DEFAULT]
    unused = [p.opts[0] for p in given if keyword.get(p.name, p.name) not in takes]
    if unused:
        raise VaelabError(f"{', '.join(unused)} does not apply to --kind {kind} (it reads "
                          f"{', '.join(sorted(takes)) or 'no options'})")
    if out:
        plots.check_figure_path(out)
    run = Run.load(run_dir, device=device)
    cls = run.class_index(cls)
    if between == "class":
        source, target = run.class_index(source, "--from"), run.class_index(target, "--to")
    else:
        source, target = (_image_index(v, o) for v, o in ((source, "--from"), (target, "--to")))
    options = {"split": split, "n": n, "dims": dims, "pairs": pairs, "radius": radius, "steps": steps,
               "index": index, "mode": between, "source": source, "target": target, "scale": scale, "cls": cls,
               "seed": seed}
    # every number in its range (one place: vaelab.latent.pictures), before any work
    options = check_options(run, kind, **{k: v for k, v in options.items() if k in takes})
    if kind == "tsne" and run.config.model.latent_dim > 2:
        from vaelab.progress import announce

        announce(_echo, f"t-SNE of {min(2000 if n is None else n, len(run.split(split))):,} codes onto a plane",
                 cost="this can take minutes on a CPU (a smaller --n is quicker)")
    path = draw(run, kind, out or run.dir.figure(kind), **options)
    if n is not None and n > len(run.split(split)):
        _echo(f"note: the {split or run.default_split()} split holds {len(run.split(split))} images; "
              f"plotted all of them, not {n}")
    _echo(f"wrote {path}")


@click.command("eval-samples")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--sampler", default="prior", show_default=True, type=RegistryChoice("vaelab.latent.sampling:SAMPLERS"))
@click.option("--n", type=int, default=10000, show_default=True)
@click.option("--judge", "judge_dir", type=click.Path(file_okay=False),
              help="Judge folder: loaded if it holds one, else trained and saved there (default: the user cache).")
@_sampler_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), help="Folder for samples_eval.json and figures (default RUN).")
@click.option("--features", cls=RegistryHelp,
              help=lambda: f"Also FID, KID and precision/recall on these features: "
                           f"{', '.join(registry('vaelab.evaluation.fid:FEATURES'))} (inception: comparable with "
                           "papers, needs torch-fidelity).")
@click.option("--reference", type=RegistryChoice("vaelab.latent.sample_eval:REFERENCES"),
              help="The real images --features compares samples with, the whole split (default: test).")
@click.option("--inception-weights", type=click.Path(dir_okay=False),
              help="A local copy of the Inception weights (default: downloaded once into torch.hub's cache).")
def eval_samples(run_dir, sampler, n, judge_dir, components, covariance, scale, epochs, lr, batch_size, hidden, blocks,
                 depth, latent, codes, seed, out, features, reference, inception_weights) -> None:
    """Score generated images: FCD vs its floor, class accuracy or coverage, nearest-neighbour distances;
    with --features, FID, KID and precision/recall."""
    from vaelab.api import Run
    from vaelab.evaluation.fid import FEATURES, InceptionFeatures, check_sizes
    from vaelab.evaluation.judge import FEATURES as JUDGE_FEATURES
    from vaelab.evaluation.judge import get_judge
    from vaelab.latent.sample_eval import _summary, evaluate_samples
    from vaelab.progress import announce
    from vaelab.rundir import RunDir

    if n < 2:
        raise VaelabError("--n must be at least 2")
    _check_sampling(scale, seed)
    if features is not None and features not in FEATURES:
        raise VaelabError(f"unknown --features {features!r}; available: {', '.join(FEATURES)}")
    if inception_weights and features != "inception":
        raise VaelabError("--inception-weights applies to --features inception only")
    if reference and features is None:
        raise VaelabError("--reference applies to --features only (FCD always uses the held-out split)")
    if features is not None:  # before the judge, which may train for minutes: fail fast
        check_sizes(InceptionFeatures.dim if features == "inception" else JUDGE_FEATURES, n)
    run = Run.load(run_dir, device="cpu")
    _check_n_fits(run, n, "eval-samples")  # before the judge, which may train for minutes
    extractor = None
    if features == "inception":  # likewise without torch-fidelity or the weights
        import os

        from vaelab.evaluation.fid import inception_extractor

        extractor = inception_extractor(inception_weights, progress=os.environ.get("VAELAB_NO_PROGRESS") != "1")
    j = get_judge(run.config.data, judge_dir, log=_echo)
    out_dir = Path(out or run_dir)
    if out:
        out_dir.mkdir(parents=True, exist_ok=True)
    announce(_echo, f"scoring {n:,} images drawn by the {sampler} sampler",
             why="the judge's features, class predictions and nearest training images",
             cost="this can take minutes on a CPU for 10,000 (a smaller --n is quicker)")
    result = evaluate_samples(run, sampler, j, n=n, seed=seed, out_dir=out_dir, features=features,
                              reference=reference or "test", inception_weights=inception_weights,
                              extractor=extractor, log=_echo,
                              **_only_used(sampler, _sampler_params(
                                  components, covariance, scale, epochs=epochs, lr=lr, batch_size=batch_size,
                                  hidden=hidden, blocks=blocks, depth=depth, latent=latent, codes=codes)))
    for k, v in _summary(result):
        _echo(f"  {k:<16} {v}")
    _echo(f"wrote {out_dir / RunDir.SAMPLES_EVAL}")


@click.command("fit-prior")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--prior", type=RegistryChoice("vaelab.latent.pixelcnn:LEARNED_PRIORS"), default="pixelcnn",
              show_default=True,
              help="The learned prior over a VQ-VAE's code grid.")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--channels", type=int, default=64, show_default=True, help="Width of the gated layers.")
@click.option("--layers", type=int, default=8, show_default=True)
@click.option("--class-conditional", is_flag=True, help="Condition on the training labels (then sample --class C).")
@click.option("--seed", type=int, default=0, show_default=True)
@device_option
def fit_prior(run_dir, prior, epochs, batch_size, lr, channels, layers, class_conditional, seed, device) -> None:
    """Fit a learned prior (a gated PixelCNN) over a finished VQ-VAE run's codes; save it in RUN/priors/.

    Every epoch is checkpointed in RUN/priors/pixelcnn-fit/: a killed fit, asked again with the
    same settings, continues from its last epoch."""
    from vaelab.api import Run
    from vaelab.latent import pixelcnn

    for name, v in (("--epochs", epochs), ("--batch-size", batch_size), ("--channels", channels),
                    ("--layers", layers)):
        if v < 1:
            raise VaelabError(f"{name} must be at least 1")
    if not (math.isfinite(lr) and lr > 0):
        raise VaelabError(f"--lr must be positive and finite (Adam's step size), got {lr}")
    pixelcnn.check_finished(Path(run_dir))
    run = Run.load(run_dir, device=device)
    net, info = pixelcnn.LEARNED_PRIORS[prior](run, epochs=epochs, batch_size=batch_size, lr=lr, channels=channels,
                                               layers=layers, conditional=class_conditional, seed=seed, log=_echo)
    path = pixelcnn.save(net, info, run_dir)
    test = f"; test NLL {info['test_nll']:.2f} nats per code grid" if "test_nll" in info else ""
    _echo(f"wrote {path} (train NLL {info['train_nll']:.2f}{test}); sample with --sampler pixelcnn")


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--n", type=int, default=10000, show_default=True, help="Images scored (a random subset, seeded).")
@click.option("--metrics", default="mig,factorvae", show_default=True, cls=RegistryHelp,
              help=lambda: f"Comma-separated, of {', '.join(registry('vaelab.latent.disentangle:METRICS'))} (dci fits "
                           "gradient boosted trees: minutes).")
@click.option("--split", default="train", show_default=True, help="dSprites has only a training split.")
@click.option("--seed", type=int, default=0, show_default=True)
@run_data_dir_option
@device_option
def disentanglement(run_dir, n, metrics, split, seed, data_dir, device) -> None:
    """MIG, DCI and the FactorVAE score of a run's codes against its data's factors (dSprites)."""
    from vaelab.api import Run
    from vaelab.latent.factors import FILE, METRICS, score_disentanglement

    names = tuple(m.strip() for m in metrics.split(",") if m.strip())
    if not names:  # nothing to score, and the saved scores would be overwritten with none
        raise VaelabError(f"--metrics {metrics!r} names no score; give one or more of {', '.join(METRICS)}, "
                          "comma-separated")
    run = Run.load(run_dir, device=device, data_dir=data_dir)
    score_disentanglement(run, n=n, metrics=names, seed=seed, split=split, out=run_dir, log=_echo)
    _echo(f"wrote {Path(run_dir) / FILE}")
