"""Pictures of the latent space: ``PLOTS[kind](run, out, **options)`` saves a PNG.

Every picture has a title, axis labels and, where colours mean classes, a legend.
The computations (codes, projections, grids of codes) are plain functions returning
arrays; the figure functions draw them with matplotlib. Pictures that decode codes of
their own making (traverse, interpolate, basis) need a continuous latent space; a
conditional model decodes them under one class (``cls``, default: the class of the
image involved, else 0), and ``styles`` decodes one code under every class.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path

import numpy as np
import torch

from vaelab import distributions, plots
from vaelab.config import MAX_SEED, is_whole
from vaelab.distributions import kl_per_dim
from vaelab.errors import ConfigError
from vaelab.models import require


def codes_and_labels(run, split: str | None = None, n: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    data = run.split(split)
    idx = slice(0, min(n, len(data))) if n is not None else slice(None)
    x = data.batch(idx)
    y = data.y[idx] if data.y is not None else None
    z = run.encode(x, y).double().numpy()
    return z.reshape(len(z), -1), None if y is None else y.numpy()  # a code grid (VQ-VAE): its values, flat


def codes_name(run) -> str:
    """What ``codes_and_labels`` gives for this run, as picture titles name it: the posterior's
    means, a deterministic encoder's codes, or a VQ-VAE's quantised code grids laid flat."""
    caps = run.capabilities
    if "codebook" in caps:
        return "quantised code grids (flattened)"
    return "latent means" if "stochastic" in caps else "latent codes"


def _decode_class(run, cls, default: int | None = None) -> int | None:
    """The class a conditional model decodes a picture's codes under (None for other models)."""
    if not run.model.conditional:
        if cls is not None:
            raise ConfigError("--class applies to conditional models; this run's model is not conditional")
        return None
    c = int(cls if cls is not None else (default if default is not None else 0))
    k = run.model.cfg.num_classes
    if not 0 <= c < k:
        raise ConfigError(f"class {c} is not one this run's model was trained on (classes 0..{k - 1})")
    return c


def _class_names(run, labels: np.ndarray) -> dict[int, str]:
    names = run.splits().classes
    return {int(c): (names[int(c)] if names and int(c) < len(names) else str(int(c))) for c in np.unique(labels)}


def _scatter_by_class(ax, pts: np.ndarray, labels: np.ndarray | None, names: dict[int, str] | None) -> None:
    if labels is None:
        ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.5)
        return
    cmap = plots._plt().get_cmap("tab10" if len(np.unique(labels)) <= 10 else "tab20")
    for i, c in enumerate(np.unique(labels)):
        m = labels == c
        ax.scatter(pts[m, 0], pts[m, 1], s=3, alpha=0.6, color=cmap(i % cmap.N), label=names[int(c)] if names else str(c))
    ax.legend(markerscale=4, fontsize=8, loc="best", title="class")


def plot_scatter(run, out, split=None, n=None, dims=(0, 1), **_) -> Path:
    """The images' codes (``codes_name``) coloured by label, two dimensions at a time (--dims)."""
    z, y = codes_and_labels(run, split, n)
    d = z.shape[1]
    if d == 1:
        z = np.concatenate([z, np.zeros_like(z)], 1)
        dims = (0, 1)
    elif max(dims) >= d:
        raise ConfigError(f"--dims {dims} out of range for a {d}-D latent space")
    plt = plots._plt()
    fig, ax = plt.subplots(figsize=(7, 6), dpi=120)
    _scatter_by_class(ax, z[:, list(dims)], y, _class_names(run, y) if y is not None else None)
    ax.set_xlabel(f"z[{dims[0]}]")
    ax.set_ylabel(f"z[{dims[1]}]" if d > 1 else "")
    ax.set_title(f"{codes_name(run)} of {len(z):,} images" + (f" (dims {dims[0]}, {dims[1]} of {d})" if d > 2 else ""))
    return plots.save_figure(fig, out)


def plot_tsne(run, out, split=None, n=2000, seed=0, **_) -> Path:
    """t-SNE of the images' codes (``codes_name``), coloured by label."""
    from sklearn.manifold import TSNE

    z, y = codes_and_labels(run, split, 2000 if n is None else n)
    pts = z if z.shape[1] <= 2 else TSNE(2, init="pca", random_state=seed, perplexity=min(30, len(z) - 1)).fit_transform(z)
    plt = plots._plt()
    fig, ax = plt.subplots(figsize=(7, 6), dpi=120)
    _scatter_by_class(ax, pts, y, _class_names(run, y) if y is not None else None)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_title(f"t-SNE of the {codes_name(run)} ({len(z):,} images)")
    return plots.save_figure(fig, out)


def _pairs(spec) -> list[tuple[int, int]]:
    if isinstance(spec, (list, tuple)):
        return [tuple(p) for p in spec]
    try:
        return [tuple(int(v) for v in p.split("-")) for p in str(spec).split(",") if p]
    except ValueError:
        raise ConfigError(f"--pairs must look like 0-1,4-9, got {spec!r}") from None


def pca_spectrum(z: np.ndarray) -> np.ndarray:
    """Eigenvalues of the latent covariance, largest first."""
    return np.sort(np.linalg.eigvalsh(np.atleast_2d(np.cov(z, rowvar=False))))[::-1]


def _default_pairs(labels: np.ndarray) -> list[tuple[int, int]]:
    """0 vs 1 and 4 vs 9 (the classic MNIST pairs) when present, else the first classes."""
    present = set(np.unique(labels).tolist())
    classic = [p for p in ((0, 1), (4, 9)) if set(p) <= present]
    if classic:
        return classic
    ordered = sorted(present)
    return [tuple(ordered[i:i + 2]) for i in range(0, min(len(ordered), 4) - 1, 2)]


def plot_pca(run, out, split=None, n=None, pairs=None, **_) -> Path:
    """Eigenvalue spectrum of the latent covariance, and 2-D projections of class pairs."""
    z, y = codes_and_labels(run, split, n)
    pairs = ([] if y is None else _pairs(pairs) if pairs else _default_pairs(y))
    plt = plots._plt()
    fig, axes = plt.subplots(1, 1 + len(pairs), figsize=(5 * (1 + len(pairs)), 4.2), dpi=120, squeeze=False)
    ev = pca_spectrum(z)
    ax = axes[0, 0]
    ax.bar(np.arange(1, len(ev) + 1), ev)
    ax.set_yscale("log" if ev.min() > 0 and ev.max() / max(ev.min(), 1e-12) > 100 else "linear")
    ax.set_xlabel("principal component")
    ax.set_ylabel("eigenvalue (variance)")
    ax.set_title(f"spectrum of the latent covariance (D={z.shape[1]})")
    names = _class_names(run, y) if y is not None else {}
    for ax, (a, b) in zip(axes[0, 1:], pairs):
        m = np.isin(y, [a, b])
        if m.sum() < 3:
            raise ConfigError(f"classes {a} and {b} have too few images in this split for --pairs")
        zc = z[m] - z[m].mean(0)
        if zc.shape[1] == 1:
            p = np.concatenate([zc, np.zeros_like(zc)], 1)
        else:
            _, _, vt = np.linalg.svd(zc, full_matrices=False)
            p = zc @ vt[:2].T
        _scatter_by_class(ax, p, y[m], names)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.set_title(f"PCA of classes {names.get(a, a)} vs {names.get(b, b)}")
    return plots.save_figure(fig, out)


def _kl_per_dim(run, split=None, n=2000) -> np.ndarray | None:
    """Mean closed-form KL(q(z|x) || p(z)) per dimension over n images, or None without one."""
    if "prior" not in run.capabilities:
        return None
    data = run.split(split)
    k = min(n, len(data))
    y = data.y[:k] if data.y is not None else None
    q = run.posterior(data.batch(slice(0, k)), y)
    y_model = y.to(run.device) if run.model.conditional and y is not None else None
    with torch.no_grad():
        per_dim = kl_per_dim(distributions.to(q, run.device), run.model.prior(y_model, k))
    return None if per_dim is None else per_dim.cpu().mean(0).numpy()


def plot_traverse(run, out, split=None, radius=None, steps=None, index=None, cls=None, **_) -> Path:
    """Codes decoded along the latent axes: a grid for 2-D codes, else one row per dimension."""
    require(run.model, "continuous", "a latent traversal")
    d = run.config.model.latent_dim
    plt = plots._plt()
    data = run.split(split) if index is not None else None
    label = None if data is None or data.y is None else int(data.y[int(index)])
    c_dec = _decode_class(run, cls, label)
    if d == 2:
        # The Keras tutorial's manifold: decode a grid over [-r, r]^2.
        steps, radius = 30 if steps is None else steps, 1.0 if radius is None else radius
        grid = np.linspace(-radius, radius, steps)
        zz = torch.tensor([[xv, yv] for yv in grid[::-1] for xv in grid], dtype=torch.float32)
        img = plots.image_grid(run.decode(zz, c_dec), nrow=steps, pad=0)
        fig, ax = plt.subplots(figsize=(9, 9), dpi=120)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, extent=(-radius, radius, -radius, radius))
        ax.set_xlabel("z[0]")
        ax.set_ylabel("z[1]")
        ax.set_title(f"decoded latent grid over [-{radius:g}, {radius:g}]^2" + _under(c_dec))
        return plots.save_figure(fig, out)
    steps, radius = 11 if steps is None else steps, 3.0 if radius is None else radius
    if index is not None:
        base = run.encode(data.batch(slice(int(index), int(index) + 1)), data.y[int(index):int(index) + 1]
                          if data.y is not None else None)[0]
        where = f"around test image {index}"
    else:
        base = torch.zeros(d)
        where = "around z = 0"
    offsets = torch.linspace(-radius, radius, steps)
    z = base.repeat(d * steps, 1)
    for i in range(d):
        z[i * steps:(i + 1) * steps, i] = base[i] + offsets
    imgs = run.decode(z, c_dec)
    kl = _kl_per_dim(run, split)
    c = imgs.shape[1]
    fig, axes = plt.subplots(d, 1, figsize=(steps * 0.55 + 1.6, d * 0.6 + 0.8), dpi=120, squeeze=False)
    for i in range(d):
        ax = axes[i, 0]
        ax.imshow(plots.image_grid(imgs[i * steps:(i + 1) * steps], nrow=steps), cmap="gray" if c == 1 else None)
        ax.set_xticks([])
        ax.set_yticks([])
        label = f"z[{i}]" + (f"  KL {kl[i]:.2f}" + (" (dead)" if kl[i] < 0.01 else "") if kl is not None else "")
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    axes[-1, 0].set_xlabel(f"each row varies one dimension from -{radius:g} to +{radius:g} {where}")
    fig.suptitle("latent traversal" + (": rows labelled with KL per dimension" if kl is not None else "") + _under(c_dec),
                 fontsize=10)
    return plots.save_figure(fig, out)


def interpolation_codes(za: torch.Tensor, zb: torch.Tensor, steps: int) -> torch.Tensor:
    """Convex combinations (1 - t) za + t zb for t in [0, 1]: (steps, D)."""
    t = torch.linspace(0, 1, steps)[:, None]
    return (1 - t) * za[None] + t * zb[None]


def _under(cls: int | None) -> str:
    return "" if cls is None else f" (decoded as class {cls})"


def plot_interpolate(run, out, split=None, steps=None, source=None, target=None, mode="class", cls=None, **_) -> Path:
    """Decoded path between two class means or two images."""
    require(run.model, "continuous", "an interpolation")
    steps = 10 if steps is None else steps
    data = run.split(split)
    if mode == "class":
        if data.y is None:
            raise ConfigError("class interpolation needs labels; use --between images")
        present = sorted(data.y.unique().tolist())
        default = (1, 7) if {1, 7} <= set(present) else (present[0], present[-1])
        a = int(source if source is not None else default[0])
        b = int(target if target is not None else default[1])
        z = run.encode(data.float(), data.y)
        ends = []
        for c in (a, b):
            m = data.y == c
            if not m.any():
                raise ConfigError(f"class {c} has no images in the {data.name} split")
            ends.append(z[m].mean(0))
        title = f"decoded interpolation between the mean codes of classes {a} and {b}"
        first = a
    else:
        a, b = int(0 if source is None else source), int(1 if target is None else target)
        if max(a, b) >= len(data):
            raise ConfigError(f"image index out of range (the split has {len(data)} images)")
        ab = torch.tensor([a, b])
        ends = list(run.encode(data.batch(ab), None if data.y is None else data.y[ab]))
        title = f"decoded interpolation between images {a} and {b}"
        first = None if data.y is None else int(data.y[a])
    c_dec = _decode_class(run, cls, first)
    imgs = run.decode(interpolation_codes(ends[0], ends[1], steps), c_dec)
    return plots.plot_grid(imgs, out, title=title + _under(c_dec), nrow=steps)


def plot_basis(run, out, scale=None, cls=None, **_) -> Path:
    """Decoded standard basis vectors."""
    require(run.model, "continuous", "decoded basis vectors")
    d = run.config.model.latent_dim
    scale = 3.0 if scale is None else scale
    z = torch.eye(d) * scale
    c_dec = _decode_class(run, cls)
    imgs = run.decode(torch.cat([torch.zeros(1, d), z]), c_dec)
    return plots.plot_grid(imgs, out, title=f"decoded 0 (first) and standard basis vectors e_i x {scale:g}, "
                           f"i = 0..{d - 1}" + _under(c_dec), nrow=min(d + 1, 11))


def style_grid(run, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """For each image, its code z ~ q(z|x, y) decoded under every class: (N, K, C, H, W)."""
    k = run.model.cfg.num_classes
    z = run.encode(x, y)  # (N, D): the "style", what the code holds beside the label
    zz = z.repeat_interleave(k, 0)  # (N * K, D)
    yy = torch.arange(k).repeat(len(x))
    return run.decode(zz, yy).unflatten(0, (len(x), k))


def plot_styles(run, out, split=None, n=None, **_) -> Path:
    """One row per test image: the image, then its code decoded under every class (one
    handwriting style, every digit), the classic picture of a conditional VAE."""
    require(run.model, "labels", "plot styles")
    data = run.split(split)
    if data.y is None:
        raise ConfigError("plot styles encodes images with their labels, and this split has none")
    m = min(8 if n is None else n, len(data))
    x, y = data.batch(slice(0, m)), data.y[:m]
    grid = style_grid(run, x, y)
    names = _class_names(run, np.arange(run.model.cfg.num_classes))
    rows = [(f"image {i} ({names[int(y[i])]})", torch.cat([x[i:i + 1], grid[i]])) for i in range(m)]
    return plots.plot_image_rows(rows, out, title="each image's code decoded under every class: "
                                 + ", ".join(names[c] for c in range(len(names))) + " (left: the image)")


def plot_recon(run, out, split=None, n=None, **_) -> Path:
    """Originals above their reconstructions."""
    data = run.split(split)
    m = min(16 if n is None else n, len(data))
    x = data.batch(slice(0, m))
    return plots.plot_reconstructions(x, run.reconstruct(x, None if data.y is None else data.y[:m]), out)


def plot_loss(run, out, **_) -> Path:
    """Loss curves per epoch (history.csv)."""
    history = run.history()
    if not history:
        raise ConfigError(f"{run.run_dir} has no history.csv to plot")
    return plots.plot_history(history, out, title=f"{run.config.preset or 'run'}: loss per epoch")


PLOTS = {
    "scatter": plot_scatter, "tsne": plot_tsne, "pca": plot_pca, "traverse": plot_traverse,
    "interpolate": plot_interpolate, "basis": plot_basis, "styles": plot_styles, "recon": plot_recon,
    "loss": plot_loss,
}


def plot_options(kind: str) -> frozenset[str]:
    """The options plot ``kind`` reads (its function's keyword parameters)."""
    import inspect

    if kind not in PLOTS:
        raise ConfigError(f"unknown plot kind {kind!r}; available: {', '.join(PLOTS)}")
    params = inspect.signature(PLOTS[kind]).parameters.values()
    return frozenset(p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in ("run", "out"))


# The ranges of the options whose size the picture grows with (see ``check_options``).
MAX_STEPS = 100  # decoded images per traversal row or interpolation path (the 2-D grid decodes steps x steps)
MAX_N = {"styles": 100, "recon": 1000}  # styles: one figure row per image; recon: two rows per 16 images
MIN_N = {"tsne": 2, "pca": 2}  # a projection, a covariance: two codes at least
MAX_PAIRS = 10  # one 5-inch panel per pair, side by side
_FLAG = {"source": "--from", "target": "--to", "mode": "--between", "cls": "--class"}  # parameter -> CLI option


def _flag(name: str) -> str:
    return _FLAG.get(name, f"--{name}")


def _whole(name: str, value, low: int, high: int | None = None, why: str = "") -> int:
    if not is_whole(value) or value < low or (high is not None and value > high):
        span = f"from {low:,} to {high:,}" if high is not None else f"at least {low:,}"
        raise ConfigError(f"{_flag(name)} must be a whole number {span}{why}, got {value!r}")
    return int(value)


def _positive(name: str, value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{_flag(name)} must be a positive finite number ({what}), got {value!r}")
    return float(value)


def _dims(spec) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in (spec.split(",") if isinstance(spec, str) else spec))
    except (TypeError, ValueError):
        raise ConfigError(f"--dims must look like 0,1 (two latent dimensions), got {spec!r}") from None


def check_options(run, kind: str, **options) -> dict:
    """The options of plot ``kind`` checked in one place, before any picture is computed: each
    number in its range, with an upper bound where the picture grows with it (a refusal is one
    line naming the option, its range and why); ``--dims`` and ``--pairs`` parsed. Returns the
    options, parsed. The data is loaded (for ``--index``, image ``--from``/``--to``, ``--pairs``)."""
    o = dict(options)
    given = {k: v for k, v in o.items() if v is not None}
    if "n" in given:
        low, high = MIN_N.get(kind, 1), MAX_N.get(kind)
        why = {"tsne": " (t-SNE needs two codes)", "pca": " (a covariance needs two codes)",
               "styles": " (the figure has a row per image)", "recon": " (the figure has two rows per 16 images)"}
        why = why.get(kind, "")
        _whole("n", given["n"], low, high, why)
    if "steps" in given:
        _whole("steps", given["steps"], 2, MAX_STEPS,
               f" (images per {'row' if kind == 'traverse' else 'path'}, both ends included: more are too small to "
               "tell apart, and a 2-D latent's grid decodes steps x steps)")
    if "radius" in given:
        _positive("radius", given["radius"], "codes run from -radius to +radius")
    if "scale" in given:
        _positive("scale", given["scale"], "the length of the decoded basis vectors")
    if "seed" in given:
        _whole("seed", given["seed"], 0, MAX_SEED, " (numpy's and scikit-learn's seeds)")
    if "dims" in o:
        dims = _dims("0,1" if o["dims"] is None else o["dims"])
        d = math.prod(run.code_shape())
        if len(dims) != 2:
            raise ConfigError(f"--dims needs two latent dimensions, as 0,1, got {len(dims)} ({o['dims']!r})")
        if d == 1 and dims != (0, 1):
            raise ConfigError("--dims: this run's latent space is 1-D, so the scatter draws z[0] against 0; "
                              "leave --dims out")
        if d > 1 and (dims[0] == dims[1] or min(dims) < 0 or max(dims) >= d):
            raise ConfigError(f"--dims {dims[0]},{dims[1]} out of range: give two different dimensions of the "
                              f"{d}-D latent space, 0..{d - 1}")
        o["dims"] = dims
    data = run.split(o.get("split")) if {"index", "pairs", "source", "target"} & set(given) or \
        kind == "interpolate" else None
    where = f"the {data.name} split" if data is not None else ""
    if "index" in given:
        _whole("index", given["index"], 0, len(data) - 1, f" (an image of {where}, which holds {len(data):,})")
    if kind == "interpolate":
        if o.get("mode", "class") == "images":
            for k in ("source", "target"):
                if given.get(k) is not None:
                    _whole(k, given[k], 0, len(data) - 1, f" (an image of {where}, which holds {len(data):,})")
            ends = (0 if o.get("source") is None else o["source"], 1 if o.get("target") is None else o["target"])
        else:
            if data.y is None:
                raise ConfigError(f"class interpolation needs labels, and {where} has none; use --between images")
            present = sorted(data.y.unique().tolist())
            for k in ("source", "target"):
                if given.get(k) is not None and given[k] not in present:
                    raise ConfigError(f"{_flag(k)}: class {given[k]} has no images in {where}; it has classes "
                                      f"{', '.join(str(c) for c in present)}")
            ends = (given.get("source"), given.get("target"))
        if ends[0] is not None and ends[0] == ends[1]:
            raise ConfigError(f"--from and --to are the same ({ends[0]}): the path would not move; give two "
                              "different ones")
    if "pairs" in given:
        if data.y is None:
            raise ConfigError(f"--pairs projects pairs of classes, and {where} has no labels; leave --pairs out")
        pairs = _pairs(given["pairs"])
        names = run.class_names()
        known = list(range(len(names))) if names else sorted(data.y.unique().tolist())
        if not 1 <= len(pairs) <= MAX_PAIRS:
            raise ConfigError(f"--pairs needs 1 to {MAX_PAIRS} class pairs (one 5-inch panel each), got {len(pairs)}")
        for p in pairs:
            if len(p) != 2 or p[0] == p[1]:
                raise ConfigError(f"--pairs: {'-'.join(map(str, p))} is not a pair of two different classes, as 4-9")
            for c in p:
                if c not in known:
                    raise ConfigError(f"--pairs {p[0]}-{p[1]}: class {c} is not one of this run's classes "
                                      f"({', '.join(map(str, known))})")
        o["pairs"] = pairs
    return o


def plot(run, kind: str, out: str | Path, **options) -> Path:
    """Draw plot ``kind``; an option it does not read (not None) is an error, not ignored, and
    each one it reads is checked (``check_options``) before anything is drawn."""
    takes = plot_options(kind)
    unused = sorted(k for k, v in options.items() if v is not None and k not in takes)
    if unused:
        raise ConfigError(f"plot {kind} does not use {', '.join(unused)}; it reads {', '.join(sorted(takes)) or 'none'}")
    plots.check_figure_path(out)
    return PLOTS[kind](run, out, **check_options(run, kind, **options))
