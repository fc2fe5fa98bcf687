"""Samplers over the latent space: a registry of classes that fit once and draw codes.

``SAMPLERS[name](**params).fit(codes, labels)`` then ``.sample(n, cls=None, seed=0)``
returns latent codes (n, D); ``sample_images`` decodes them (with the right labels for a
conditional model). A fitted sampler saves itself as ``RUN/samplers/NAME.npz`` (arrays
only) plus ``NAME.json`` (parameters): nothing is pickled, so a stranger's run is safe to load.

- ``prior``: z ~ p(z) (or p(z|y) for a conditional model), the model's own prior.
- ``gmm``: a Gaussian mixture (scikit-learn) fit on the training codes.
- ``class-gaussian``: per class, N(mean_c, scale * cov_c) of that class's codes.
- ``class-gmm``: a Gaussian mixture per class.
- ``two-stage``: a second VAE fit on the training codes (Dai & Wipf 2019,
  ``vaelab.latent.two_stage``); its weights are ``NAME.safetensors`` instead of ``.npz``.
- ``maf``, ``iaf``: a masked / inverse autoregressive flow fit on the training codes
  (``vaelab.latent.flow_samplers``; saved as safetensors).
- ``sphere``: uniform on the unit hypersphere S^{D-1}, for models whose codes live there (the S-VAE).
Every sampler but the prior takes ``scale``: covariances are multiplied by it when
sampling, so a scale below 1 trades variety for fidelity.

``NAME.json`` also records the SHA-256 of the fitted file: one changed after it was fit (or
one that does not read: a pickle, a truncated file) is refused on load, and
``fitted_sampler`` fits the sampler again, with a one-line note.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from vaelab.config import is_whole
from vaelab.errors import ConfigError, DataError, VaelabError

if TYPE_CHECKING:
    import torch
from vaelab.io import file_sha256  # noqa: F401  (importable from here too)
from vaelab.latent.flow_samplers import IAFSampler, MAFSampler
from vaelab.latent.sampler_base import FittedSampler, Sampler
from vaelab.latent.two_stage import TwoStageOptions, TwoStageSampler  # noqa: F401  (TwoStageOptions: as above)
from vaelab.rundir import ID_FIELD


def _mixture_sample(weights: np.ndarray, means: np.ndarray, chols: np.ndarray, n: int,
                    rng: np.random.Generator) -> np.ndarray:
    """n draws from sum_k w_k N(mu_k, L_k L_k^T); means (K, D), chols (K, D, D)."""
    comp = rng.choice(len(weights), size=n, p=weights / weights.sum())
    eps = rng.standard_normal((n, means.shape[1]))
    return means[comp] + np.einsum("nij,nj->ni", chols[comp], eps)


def _chol(cov: np.ndarray) -> np.ndarray:
    """Cholesky factor with a small jitter for near-singular covariances (dead latent dims)."""
    d = cov.shape[-1]
    jitter = 1e-6 * max(float(np.trace(cov)) / d, 1e-12)
    return np.linalg.cholesky(cov + jitter * np.eye(d))


def _full_covariances(gm) -> np.ndarray:
    """scikit-learn's covariances in any covariance_type, as (K, D, D)."""
    k, d = gm.means_.shape
    c = gm.covariances_
    if gm.covariance_type == "full":
        return c
    if gm.covariance_type == "tied":
        return np.broadcast_to(c, (k, d, d)).copy()
    if gm.covariance_type == "diag":
        return np.stack([np.diag(v) for v in c])
    return np.stack([np.eye(d) * v for v in c])  # spherical




class PriorSampler(Sampler):
    """Draws from the model's prior; nothing to fit. Class-conditional when the model is."""

    name = "prior"
    needs = frozenset({"prior"})
    from_model = True

    @classmethod
    def takes_class(cls, run) -> bool:
        return bool(run.model.conditional)  # p(z|y) for a conditional model

    def __init__(self, model=None, run_dir=None, **params):  # run_dir: unused, the prior is the model's
        super().__init__(**params)
        if model is None:
            raise ConfigError("the prior sampler draws from a model's prior: build it with make_sampler(..., model=)")
        from vaelab.models import require

        require(model, "prior", "the prior sampler")
        self.model = model
        self.conditional = bool(model.conditional)

    def fit(self, codes, labels=None, seed=0):
        return self

    def save(self, folder):  # nothing fitted, nothing to save
        return None

    def sample(self, n, cls=None, seed=0):
        import torch

        if cls is not None and not self.conditional:
            raise ConfigError("this run's model is not conditional, so its prior is not; use class-gaussian or "
                              "class-gmm for --class")
        if cls is not None:
            self._check_model_class(cls)
        device = next(self.model.parameters()).device
        y = None if cls is None else torch.full((n,), int(cls), dtype=torch.long, device=device)
        g = torch.Generator(device=device).manual_seed(seed)
        with torch.no_grad():
            return self.model.prior(y, n).sample(generator=g).double().cpu().numpy()

    def _check_model_class(self, cls: int) -> None:
        k = self.model.cfg.num_classes
        if not 0 <= int(cls) < k:
            raise ConfigError(f"class {cls} is not one this run's model was trained on (classes 0..{k - 1})")


class PixelCNNSampler(Sampler):
    """Index grids from the run's fitted PixelCNN prior, through the VQ-VAE's codebook
    (``vaelab fit-prior RUN`` trains it); class-conditional when the prior is."""

    name = "pixelcnn"
    needs = frozenset({"codebook"})
    from_model = True
    # class-gaussian and class-gmm cannot serve a VQ-VAE: its class-conditional twin does
    no_class = ("this run's {name} prior is unconditional; for --class fit a class-conditional one: "
                "vaelab fit-prior {run} --class-conditional")

    @classmethod
    def missing(cls, run) -> str | None:
        from vaelab.latent import pixelcnn

        reason = super().missing(run)
        if reason is None and (run.run_dir is None or not (Path(run.run_dir) / "priors" / pixelcnn.FILE).is_file()):
            return "no PixelCNN prior was fit on its codes (`vaelab fit-prior RUN`)"
        stale = pixelcnn.stale(run.run_dir) if reason is None else None
        if stale is not None:
            return f"its PixelCNN prior is stale ({stale}): fit it again (`vaelab fit-prior RUN`)"
        return reason

    @classmethod
    def takes_class(cls, run) -> bool:
        from vaelab.latent import pixelcnn
        from vaelab.tensorfiles import read_metadata

        meta = read_metadata(Path(run.run_dir) / "priors" / pixelcnn.FILE)
        return json.loads(meta["info"])["config"]["num_classes"] is not None  # fit with --class-conditional

    def __init__(self, model=None, run_dir=None, **params):
        super().__init__(**params)
        from vaelab.latent import pixelcnn
        from vaelab.models import require

        if model is None or run_dir is None:
            raise ConfigError("the pixelcnn sampler needs a run: use fitted_sampler(run, 'pixelcnn')")
        require(model, "codebook", "the pixelcnn sampler")
        self.model = model
        self.net, self.info = pixelcnn.load(run_dir, next(model.parameters()).device)
        k = self.info["config"]["num_classes"]
        self.conditional = k is not None
        if k is not None:
            self.arrays = {"classes": np.arange(k)}

    def fit(self, codes, labels=None, seed=0):
        return self

    def save(self, folder):  # the prior is saved by `vaelab fit-prior`
        return None

    def sample(self, n, cls=None, seed=0):
        import torch

        if cls is not None and not self.conditional:
            raise ConfigError("this run's PixelCNN prior is not class-conditional; fit one with "
                              "`vaelab fit-prior RUN --class-conditional` to sample a class")
        if self.conditional and cls is None:
            raise ConfigError("this run's PixelCNN prior is class-conditional: pass --class C")
        device = next(self.model.parameters()).device
        y = None if cls is None else torch.full((n,), self._check_class(cls), dtype=torch.long, device=device)
        idx = self.net.sample(n, y, torch.Generator(device=device).manual_seed(seed))
        with torch.no_grad():
            return self.model.posterior_head.lookup(idx).double().cpu().numpy()


# scikit-learn's GaussianMixture covariance_type values (tests/test_sampling.py checks them against it).
COVARIANCES = ("full", "tied", "diag", "spherical")


class GMMSampler(FittedSampler):
    """A Gaussian mixture (scikit-learn) fit on the training codes."""

    name = "gmm"

    def __init__(self, components: int = 10, covariance: str = "full", scale: float = 1.0, **params):
        if covariance not in COVARIANCES:
            raise ConfigError(f"covariance must be one of {', '.join(COVARIANCES)}, got {covariance!r}")
        if int(components) < 1:
            raise ConfigError(f"components must be >= 1, got {components}")
        if float(scale) <= 0:
            raise ConfigError(f"scale must be positive, got {scale}")
        super().__init__(components=int(components), covariance=covariance, scale=float(scale), **params)

    def _check_components(self, n_codes: int, of: str = "training codes") -> None:
        """Refuse more mixture components than the codes they are fit on (a mixture has at most
        one per code): fit with fewer, the recorded ``components`` would not be the mixture's."""
        k = self.params["components"]
        if k > n_codes:
            raise ConfigError(f"sampler {self.name}: components (--components) {k:,} is more than the {n_codes:,} "
                              f"{of} it is fit on (a mixture has at most one component per code); use {n_codes:,} "
                              "or fewer")

    def _fit_gmm(self, codes: np.ndarray, seed: int):
        from sklearn.mixture import GaussianMixture

        self._check_components(len(codes))
        gm = GaussianMixture(self.params["components"], covariance_type=self.params["covariance"],
                             random_state=seed, reg_covar=1e-5)
        gm.fit(codes.astype(np.float64))
        return gm.weights_, gm.means_, np.stack([_chol(c) for c in _full_covariances(gm)])

    def _read(self, path, meta):
        super()._read(path, meta)
        # A file fit before more components than codes were refused holds fewer than its settings
        # record (a class-gmm's unused slots have weight 0): refused, so it is fit again (and refused).
        w = self.arrays["weights"]
        fitted = len(w) if w.ndim == 1 else int((w > 0).sum(1).min())
        if fitted != self.params["components"]:
            raise ValueError(f"it holds {fitted} components, not the {self.params['components']} its settings "
                             "record")

    def fit(self, codes, labels=None, seed=0):
        w, m, l = self._fit_gmm(codes, seed)
        self.arrays = {"weights": w, "means": m, "chols": l}
        return self

    def sample(self, n, cls=None, seed=0):
        if cls is not None:
            raise ConfigError("the gmm sampler is unconditional; use class-gmm for --class")
        a = self.arrays
        return _mixture_sample(a["weights"], a["means"], a["chols"] * self._root_scale(), n, np.random.default_rng(seed))

    def _root_scale(self) -> float:
        # Each component's covariance times `scale`: its Cholesky factor times sqrt(scale).
        return float(np.sqrt(self.params.get("scale", 1.0)))


class ClassGaussianSampler(FittedSampler):
    """One full-covariance Gaussian per class, fit on that class's training codes."""

    name = "class-gaussian"
    conditional = True

    def __init__(self, scale: float = 1.0, **params):
        if float(scale) <= 0:
            raise ConfigError(f"scale must be positive, got {scale}")
        super().__init__(scale=float(scale), **params)

    def fit(self, codes, labels=None, seed=0):
        classes = _classes(labels)
        means, chols = [], []
        for c in classes:
            zc = codes[labels == c].astype(np.float64)
            means.append(zc.mean(0))
            cov = np.cov(zc, rowvar=False).reshape(codes.shape[1], codes.shape[1]) if len(zc) > 1 else np.eye(codes.shape[1])
            chols.append(_chol(cov))
        self.arrays = {"classes": np.array(classes), "means": np.stack(means), "chols": np.stack(chols)}
        return self

    def sample(self, n, cls=None, seed=0):
        i = self._check_class(cls)
        a, rng = self.arrays, np.random.default_rng(seed)
        # Scaling the covariance by s scales the Cholesky factor by sqrt(s).
        return a["means"][i] + rng.standard_normal((n, a["means"].shape[1])) @ (a["chols"][i] * np.sqrt(self.params["scale"])).T


class ClassGMMSampler(GMMSampler):
    """One Gaussian mixture per class, fit on that class's training codes."""

    name = "class-gmm"
    conditional = True

    def __init__(self, components: int = 3, covariance: str = "full", scale: float = 1.0, **params):
        super().__init__(components=components, covariance=covariance, scale=scale, **params)

    def fit(self, codes, labels=None, seed=0):
        classes = _classes(labels)
        counts = {c: int((labels == c).sum()) for c in classes}
        fewest = min(counts, key=counts.get)
        self._check_components(counts[fewest], f"training codes of class {fewest}, its smallest class,")
        k = self.params["components"]
        d = codes.shape[1]
        weights, means, chols = np.zeros((len(classes), k)), np.zeros((len(classes), k, d)), np.zeros((len(classes), k, d, d))
        for i, c in enumerate(classes):
            w, m, l = self._fit_gmm(codes[labels == c], seed)
            weights[i], means[i], chols[i] = w, m, l
        self.arrays = {"classes": np.array(classes), "weights": weights, "means": means, "chols": chols}
        return self

    def sample(self, n, cls=None, seed=0):
        i = self._check_class(cls)
        a = self.arrays
        return _mixture_sample(a["weights"][i], a["means"][i], a["chols"][i] * self._root_scale(), n,
                               np.random.default_rng(seed))


def _classes(labels: np.ndarray | None) -> list[int]:
    if labels is None:
        raise DataError("class-conditional samplers need labelled training data")
    return sorted(int(c) for c in np.unique(labels))


class SphereSampler(Sampler):
    """Uniform on the unit hypersphere S^{D-1} (an S-VAE's codes): normalised Gaussian draws; nothing to fit."""

    name = "sphere"
    needs = frozenset({"spherical"})
    from_model = True

    def __init__(self, model=None, run_dir=None, **params):  # run_dir: unused; the model gives D
        super().__init__(**params)
        if model is None:
            raise ConfigError("the sphere sampler needs the model's latent size: build it with make_sampler(..., model=)")
        from vaelab.models import require

        require(model, "spherical", "the sphere sampler")
        self.dim = int(model.cfg.latent_dim)

    def save(self, folder):  # nothing fitted, nothing to save
        return None

    def sample(self, n, cls=None, seed=0):
        if cls is not None:
            raise ConfigError("the sphere sampler draws uniformly on the sphere, for no class; leave out --class")
        g = np.random.default_rng(seed).standard_normal((n, self.dim))
        return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-300)


# Every sampler, in the order the CLI lists them; the base (vaelab.latent.sampler_base), the
# two-stage sampler and the flows live in their own modules, which import none of this one.
SAMPLERS: dict[str, type[Sampler]] = {
    s.name: s for s in (PriorSampler, GMMSampler, ClassGaussianSampler, ClassGMMSampler, PixelCNNSampler,
                        TwoStageSampler, SphereSampler, MAFSampler, IAFSampler)
}


def make_sampler(name: str, model=None, run_dir=None, **params) -> Sampler:
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; available: {', '.join(SAMPLERS)}")
    params = {k: v for k, v in params.items() if v is not None}  # None: unset (the CLI's options)
    SAMPLERS[name].check_params(params)  # one it does not take: refused in one line, before anything is built
    if SAMPLERS[name].from_model:
        params.update(model=model, run_dir=run_dir)
    try:
        return SAMPLERS[name](**params)
    except TypeError as e:
        raise ConfigError(f"sampler {name}: {e}") from None


def fitted_sampler(run, name: str, seed: int = 0, refit: bool = False, log: Callable[[str], None] = print,
                   **params) -> Sampler:
    """The run's sampler ``name`` fit on its training codes, loaded from RUN/samplers when
    it was fit before with the same parameters on the same weights (fit once, reuse). One fit
    on other weights (the run was retrained or resumed), or by a vaelab that recorded none,
    or whose files changed since or do not read, or whose JSON records a parameter the sampler
    does not take (a file edited by hand), is fit again, with a one-line note to ``log``. A
    parameter of ``params`` the sampler does not take is refused (``Sampler.check_params``)."""
    sampler = make_sampler(name, model=run.model, run_dir=run.run_dir, **params)
    if sampler.from_model:
        return sampler
    require_continuous(run.model, f"the {name} sampler")
    folder = run.dir.samplers if run.run_dir else None
    current = run.checkpoint_id
    if folder and not refit and (folder / f"{name}.json").is_file():
        try:
            meta = json.loads((folder / f"{name}.json").read_text())
        except (OSError, ValueError):
            meta = None
            log(f"note: refitting the {name} sampler: {folder / name}.json does not read as JSON")
        if meta is not None and not (isinstance(meta, dict) and isinstance(meta.get("params"), dict)):
            log(f"note: refitting the {name} sampler: {folder / name}.json holds no sampler settings")
        elif meta is not None and SAMPLERS[name].not_taken(meta["params"]):
            log(f"note: refitting the {name} sampler: {folder / name}.json records a parameter it does not take "
                f"({', '.join(SAMPLERS[name].not_taken(meta['params']))})")
        elif meta is not None and meta["params"] == sampler.params and meta.get("seed") == seed:
            stale = run.dir.stale(folder / f"{name}.json", meta.get(ID_FIELD) or "")
            if stale is None:
                try:  # every sampler's file: its SHA-256 checked, then read by its own class
                    return SAMPLERS[name].load(folder, name)
                except (VaelabError, OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
                    log(f"note: refitting the {name} sampler: its saved file is refused ({e})")  # tampered, truncated
            else:
                log(f"note: refitting the {name} sampler: {folder / name}{sampler.suffix} is stale ({stale})")
    train = run.split("train")
    if getattr(sampler, "codes", "mean") == "draw":
        codes = run.draw_codes(train.float(), train.y, seed=seed).double().numpy()
    else:
        codes = run.encode(train.float(), train.y).double().numpy()
    labels = train.y.numpy() if train.y is not None else None
    sampler.log, sampler.device = log, run.device  # a long fit (the flows) announces itself, on the run's device
    sampler.fit(codes, labels, seed=seed)
    sampler.fit_seed = seed
    if folder:
        sampler.save(folder, current)
    return sampler


def last_fitted(run, name: str, log: Callable[[str], None] = print) -> Sampler:
    """The run's sampler ``name`` as it was last fit (the settings and seed its JSON records),
    fit again if it is stale or its file changed, and fit with its defaults if it never was."""
    path = run.dir.samplers / f"{name}.json" if run.run_dir else None
    if path is not None and path.is_file():
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            meta = None  # fitted_sampler says so, and fits it again
        if isinstance(meta, dict) and meta.get("sampler") == name and isinstance(meta.get("params"), dict):
            bad = SAMPLERS[name].not_taken(meta["params"])
            if not bad:
                return fitted_sampler(run, name, seed=meta.get("seed") or 0, log=log, **meta["params"])
            # a file edited by hand: its settings are not ones this sampler was fit with
            log(f"note: fitting the {name} sampler with its defaults: {path} records a parameter it does not take "
                f"({', '.join(bad)})")
            return fitted_sampler(run, name, refit=True, log=log)
    return fitted_sampler(run, name, log=log)


def require_continuous(model, what: str) -> None:
    from vaelab.models import require

    require(model, "continuous", what)


class Samples(NamedTuple):
    images: torch.Tensor  # (n, C, H, W) in [0, 1]
    labels: torch.Tensor | None  # (n,) the class each was drawn for, or None
    codes: torch.Tensor  # (n, D) the codes decoded


def sample_images(run, sampler: Sampler, n: int, cls: int | None = None, seed: int = 0) -> Samples:
    """Decoded samples: images, the class each was drawn for, and the codes.

    A class-conditional sampler (or a conditional model's prior) draws for ``cls``, or
    cycles through its classes when ``cls`` is None; a conditional model decodes each
    code with that class. An unconditional sampler on a conditional model gets classes
    drawn from the training label frequencies (seeded)."""
    import math

    import torch

    if not (is_whole(n) and n >= 1):
        raise ConfigError(f"n must be a number of samples >= 1, got {n!r}")

    if sampler.conditional:
        classes = ([int(cls)] if cls is not None else
                   sampler.arrays["classes"].tolist() if "classes" in sampler.arrays
                   else list(range(run.model.cfg.num_classes)))
        per = math.ceil(n / len(classes))
        z = np.concatenate([sampler.sample(per, cls=c, seed=seed + k) for k, c in enumerate(classes)])[:n]
        asked = torch.tensor(classes).repeat_interleave(per)[:n]
    else:
        if cls is not None:
            raise ConfigError(sampler.no_class.format(name=sampler.name, run=run.run_dir))
        z, asked = sampler.sample(n, seed=seed), None
    y = asked if run.model.conditional else None  # a class sampler on a model without classes: codes only
    if run.model.conditional and y is None:
        g = torch.Generator().manual_seed(seed)
        y = torch.multinomial(run.model.class_log_prior.exp().cpu(), n, replacement=True, generator=g)
    codes = torch.from_numpy(z).float()
    return Samples(run.decode(codes, y), asked, codes)
