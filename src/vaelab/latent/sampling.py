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

import hashlib
import json
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from vaelab.errors import CheckpointError, ConfigError, DataError, VaelabError

if TYPE_CHECKING:
    import torch
from vaelab.io import atomic_path, write_json
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


class Sampler:
    """Base: parameters in ``params`` (JSON), fitted state in ``arrays`` (npz)."""

    name = ""
    conditional = False  # takes a class (a fitted one needs labelled training codes)
    needs: frozenset[str] = frozenset({"continuous"})  # model capabilities it needs
    from_model = False  # draws from something the model holds (built with model=, run_dir=); nothing fit on codes

    @classmethod
    def missing(cls, run) -> str | None:
        """Why ``run`` cannot use this sampler (one phrase), or None when it can."""
        from vaelab.models import CAPABILITIES

        lacking = cls.needs - run.model.capabilities
        if lacking:
            return f"the model lacks {' and '.join(CAPABILITIES[c] for c in sorted(lacking))}"
        if cls.conditional and not cls.from_model and run.split("train").y is None:
            return "it is fit per class and the training images have no labels"
        return None

    @classmethod
    def takes_class(cls, run) -> bool:
        """Whether this sampler draws for a given class on ``run``."""
        return bool(cls.conditional)

    def __init__(self, **params):
        self.params = params
        self.arrays: dict[str, np.ndarray] = {}

    def fit(self, codes: np.ndarray, labels: np.ndarray | None = None, seed: int = 0) -> Sampler:
        return self

    def sample(self, n: int, cls: int | None = None, seed: int = 0) -> np.ndarray:
        raise NotImplementedError

    # -- persistence: arrays (or safetensors) + JSON, never pickle
    suffix = ".npz"  # the fitted state's file: NAME + suffix

    def _write(self, path: Path, checkpoint_id: str | None) -> dict:
        """Write the fitted state to ``path`` atomically; return what NAME.json should add."""
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **self.arrays)
        return {}

    def _read(self, path: Path, meta: dict) -> None:
        """Read the fitted state back from ``path`` (``meta``: NAME.json)."""
        with np.load(path, allow_pickle=False) as z:
            self.arrays = {k: z[k] for k in z.files}

    def save(self, folder: str | Path, checkpoint_id: str | None = None) -> Path:
        """``NAME.npz`` (arrays), then ``NAME.json``: parameters, seed, the id of the weights
        whose codes it was fit on and the file's SHA-256 (written last, so a half-saved pair is
        never reused)."""
        folder = Path(folder)
        path = folder / f"{self.name}{self.suffix}"
        extra = self._write(path, checkpoint_id)
        write_json(folder / f"{self.name}.json", {"sampler": self.name, "params": self.params,
                                                  "seed": getattr(self, "fit_seed", None), ID_FIELD: checkpoint_id,
                                                  "sha256": file_sha256(path), **extra})
        return path

    @classmethod
    def load(cls, folder: str | Path, name: str) -> Sampler:
        """The sampler ``name`` saved in ``folder``; a CheckpointError (one line) when its file
        changed since (its SHA-256 is not the one NAME.json records) or does not read."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / f"{name}.json").read_text())
            s = SAMPLERS[name](**meta["params"])
        except (OSError, ValueError, KeyError, TypeError, ConfigError) as e:
            raise CheckpointError(f"{folder / name}.json does not read as a {name} sampler's settings "
                                  f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        path = folder / f"{name}{s.suffix}"
        if not path.is_file():
            raise CheckpointError(f"{path} is missing")
        recorded = meta.get("sha256")  # absent in files saved before it was recorded
        if recorded is not None and file_sha256(path) != recorded:
            raise CheckpointError(f"{path} changed after it was fit (its SHA-256 is not the one {name}.json records)")
        try:
            s._read(path, meta)
        except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise CheckpointError(f"{path} does not read as a {name} sampler ({str(e).splitlines()[0]})") from None
        return s

    def _check_class(self, cls: int | None) -> int:
        classes = self.arrays["classes"].tolist()
        if cls is None:
            raise ConfigError(f"sampler {self.name} is class-conditional: pass --class C (one of {classes})")
        if cls not in classes:
            raise ConfigError(f"class {cls} was not in the training codes of sampler {self.name}; known: {classes}")
        return classes.index(cls)


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


class GMMSampler(Sampler):
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

    def _fit_gmm(self, codes: np.ndarray, seed: int):
        from sklearn.mixture import GaussianMixture

        k = min(self.params["components"], len(codes))
        gm = GaussianMixture(k, covariance_type=self.params["covariance"], random_state=seed, reg_covar=1e-5)
        gm.fit(codes.astype(np.float64))
        return gm.weights_, gm.means_, np.stack([_chol(c) for c in _full_covariances(gm)])

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


class ClassGaussianSampler(Sampler):
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
        k = self.params["components"]
        d = codes.shape[1]
        weights, means, chols = np.zeros((len(classes), k)), np.zeros((len(classes), k, d)), np.zeros((len(classes), k, d, d))
        for i, c in enumerate(classes):
            w, m, l = self._fit_gmm(codes[labels == c], seed)
            weights[i, :len(w)], means[i, :len(w)], chols[i, :len(w)] = w, m, l  # unused slots keep weight 0
        self.arrays = {"classes": np.array(classes), "weights": weights, "means": means, "chols": chols}
        return self

    def sample(self, n, cls=None, seed=0):
        i = self._check_class(cls)
        a = self.arrays
        return _mixture_sample(a["weights"][i], a["means"][i], a["chols"][i] * self._root_scale(), n,
                               np.random.default_rng(seed))


def _help(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class TwoStageOptions:
    """The two-stage sampler's settings (``fitted_sampler(run, "two-stage", epochs=...)``)."""

    epochs: int = _help(20, "epochs of stage 2 over the training codes")
    hidden: int = _help(128, "width of stage 2's hidden layers (the authors' code: 1024)")
    depth: int = _help(2, "hidden layers of stage 2's encoder and of its decoder (the authors' code: 3)")
    latent: int | None = _help(None, "size of stage 2's latent u (default: the code size, as in the paper)")
    batch_size: int = _help(128, "stage 2's batch size")
    lr: float = _help(1e-3, "stage 2's Adam learning rate (constant)")
    scale: float = _help(1.0, "variance of u when sampling: below 1 trades variety for fidelity")

    def __post_init__(self) -> None:
        for name in ("epochs", "hidden", "depth", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"sampler two-stage: {name} must be >= 1, got {getattr(self, name)}")
        if self.latent is not None and self.latent < 1:
            raise ConfigError(f"sampler two-stage: latent must be >= 1 (or unset: the code size), got {self.latent}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"sampler two-stage: lr must be positive, got {self.lr}")
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ConfigError(f"sampler two-stage: scale must be positive, got {self.scale}")


class TwoStageSampler(Sampler):
    """A second VAE fit on the training codes, decoded from N(0, I) (Dai & Wipf 2019)."""

    name = "two-stage"
    suffix = ".safetensors"
    options = TwoStageOptions  # its settings, with help (`vaelab parts samplers`)

    def __init__(self, epochs: int = 20, hidden: int = 128, depth: int = 2, latent: int | None = None,
                 batch_size: int = 128, lr: float = 1e-3, scale: float = 1.0):
        o = TwoStageOptions(epochs=int(epochs), hidden=int(hidden), depth=int(depth),
                            latent=None if latent is None else int(latent), batch_size=int(batch_size),
                            lr=float(lr), scale=float(scale))
        super().__init__(**o.__dict__)
        self.opts, self.net, self.info = o, None, {}

    def fit(self, codes, labels=None, seed=0):
        from vaelab.latent.two_stage import fit_two_stage

        self.net, self.info = fit_two_stage(codes, self.opts, seed)
        return self

    def sample(self, n, cls=None, seed=0):
        from vaelab.latent.two_stage import sample_codes

        if cls is not None:
            raise ConfigError("the two-stage sampler is unconditional; use class-gmm for --class")
        return sample_codes(self.net, n, self.opts.scale, seed)

    def onnx_codes(self):
        """The ONNX sampler's first half: standard-normal noise (B, U) -> codes (B, D), U the
        stage-2 latent (``latent``, default D); ``noise_dim`` says U."""
        from vaelab.latent.two_stage import NoiseToCode

        if self.net is None:
            raise ConfigError("the two-stage sampler is not fitted: use fitted_sampler(run, 'two-stage')")
        return NoiseToCode(self.net, self.opts.scale).eval()

    def _write(self, path: Path, checkpoint_id: str | None) -> dict:
        from vaelab.tensorfiles import save_tensors

        # the weights it was fit on in the file too (vaelab.rundir.recorded_id reads safetensors' metadata)
        save_tensors(path, self.net.state_dict(), {"sampler": self.name, ID_FIELD: checkpoint_id or ""})
        return {"stage2": self.info}

    def _read(self, path: Path, meta: dict) -> None:
        from vaelab.latent.two_stage import build, config_of
        from vaelab.tensorfiles import load_tensors

        tensors, _ = load_tensors(path)  # safetensors only: a pickle is refused before it is parsed
        try:
            # the shapes of the weights, checked against the JSON, before a network is built
            config = config_of(tensors)
            if config != meta["stage2"]["config"]:
                raise RuntimeError(f"its weights are a network of {config}, its JSON says {meta['stage2']['config']}")
            net = build(config)
            net.load_state_dict(tensors)
        except (RuntimeError, DataError) as e:
            raise CheckpointError(f"{path} does not match its own settings: {str(e).splitlines()[0]}") from None
        self.net, self.info = net.eval(), meta["stage2"]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


SAMPLERS: dict[str, type[Sampler]] = {
    s.name: s for s in (PriorSampler, GMMSampler, ClassGaussianSampler, ClassGMMSampler, PixelCNNSampler,
                        TwoStageSampler, SphereSampler)
}
import vaelab.latent.flow_samplers  # noqa: F401  (maf and iaf subclass Sampler, above, and join SAMPLERS)


def make_sampler(name: str, model=None, run_dir=None, **params) -> Sampler:
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; available: {', '.join(SAMPLERS)}")
    params = {k: v for k, v in params.items() if v is not None}
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
    or whose files changed since or do not read, is fit again, with a one-line note to ``log``."""
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
            return fitted_sampler(run, name, seed=meta.get("seed") or 0, log=log, **meta["params"])
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

    if sampler.conditional:
        classes = ([int(cls)] if cls is not None else
                   sampler.arrays["classes"].tolist() if "classes" in sampler.arrays
                   else list(range(run.model.cfg.num_classes)))
        per = math.ceil(n / len(classes))
        z = np.concatenate([sampler.sample(per, cls=c, seed=seed + k) for k, c in enumerate(classes)])[:n]
        asked = torch.tensor(classes).repeat_interleave(per)[:n]
    else:
        if cls is not None:
            raise ConfigError(f"sampler {sampler.name} is unconditional; use class-gaussian or class-gmm for --class")
        z, asked = sampler.sample(n, seed=seed), None
    y = asked
    if run.model.conditional and y is None:
        g = torch.Generator().manual_seed(seed)
        y = torch.multinomial(run.model.class_log_prior.exp().cpu(), n, replacement=True, generator=g)
    codes = torch.from_numpy(z).float()
    return Samples(run.decode(codes, y), asked, codes)
