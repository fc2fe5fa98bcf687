"""The base of every latent sampler (``vaelab.latent.sampling`` lists them in ``SAMPLERS``):
parameters in JSON, fitted state in a file beside it (npz, or safetensors), the SHA-256 of that
file checked on load. It imports no sampler: the samplers import it.
"""

from __future__ import annotations

import inspect
import json
import zipfile
from pathlib import Path

import numpy as np

from vaelab.errors import CheckpointError, ConfigError
from vaelab.io import atomic_path, file_sha256, write_json
from vaelab.rundir import ID_FIELD


class Sampler:
    """Base: parameters in ``params`` (JSON), fitted state in ``arrays`` (npz)."""

    name = ""
    conditional = False  # takes a class (a fitted one needs labelled training codes)
    needs: frozenset[str] = frozenset({"continuous"})  # model capabilities it needs
    from_model = False  # draws from something the model holds (built with model=, run_dir=); nothing fit on codes
    # The refusal when an unconditional one is asked for a class: what serves --class instead
    # ({name}: the sampler's, {run}: the run's folder).
    no_class = "sampler {name} is unconditional; use class-gaussian or class-gmm for --class"

    @classmethod
    def settings(cls) -> dict[str, inspect.Parameter]:
        """The keyword settings its constructor takes, with those its bases' constructors take
        through ``**params`` (``codes``, from ``FittedSampler``): name -> parameter, the most
        derived class's default first. The CLI's sampler options and ``vaelab parts`` read this."""
        out: dict[str, inspect.Parameter] = {}
        for klass in cls.__mro__:
            if "__init__" not in vars(klass) or klass is object:
                continue
            for name, p in inspect.signature(klass.__init__).parameters.items():
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in ("self", "model", "run_dir"):
                    out.setdefault(name, p)
        return out

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

    @classmethod
    def not_taken(cls, params) -> list[str]:
        """The names in ``params`` that are none of this sampler's ``settings``."""
        takes = cls.settings()
        return [k for k in params if k not in takes]

    @classmethod
    def check_params(cls, params) -> None:
        """Refuse, in one line, a parameter this sampler does not take (``not_taken``), naming
        the ones it takes and the samplers that take it: stored in ``params`` (and
        RUN/samplers/NAME.json) it would be read by nothing."""
        takes, unknown = cls.settings(), cls.not_taken(params)
        if not unknown:
            return
        others = {k: sorted(c.name for c in _named_samplers() if c is not cls and k in c.settings()) for k in unknown}
        where = "; ".join(f"{k} is taken by {', '.join(v)}" for k, v in others.items() if v)
        raise ConfigError(f"sampler {cls.name} does not take {'the parameter' if len(unknown) == 1 else 'the parameters'} "
                          f"{', '.join(unknown)} (it takes {', '.join(takes) if takes else 'no parameters'}"
                          f"{'; ' + where if where else ''}): leave {'it' if len(unknown) == 1 else 'them'} out")

    def __init__(self, **params):
        type(self).check_params(params)
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

    @staticmethod
    def named(name: str) -> type[Sampler]:
        """The sampler class called ``name`` among those defined (``vaelab.latent.sampling``
        defines them all and lists them in ``SAMPLERS``); a KeyError when there is none."""
        for c in _named_samplers():
            if c.name == name:
                return c
        raise KeyError(name)

    @classmethod
    def load(cls, folder: str | Path, name: str) -> Sampler:
        """The sampler ``name`` saved in ``folder``; a CheckpointError (one line) when its file
        changed since (its SHA-256 is not the one NAME.json records) or does not read."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / f"{name}.json").read_text())
            s = Sampler.named(name)(**meta["params"])
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


def _named_samplers() -> list[type[Sampler]]:
    """Every sampler class with a name, the first to take each name: parents before their
    subclasses (``Sampler.named`` looks a name up here)."""
    out: dict[str, type[Sampler]] = {}
    todo = [Sampler]
    while todo:
        c = todo.pop(0)
        if c.name:
            out.setdefault(c.name, c)
        todo.extend(c.__subclasses__())
    return list(out.values())


# What a fitted sampler is fit on (``--codes``): the training images' posterior means, or one
# posterior draw per image.
CODES = ("mean", "draw")


class FittedSampler(Sampler):
    """Base of the samplers fit on a run's training codes (``fitted_sampler`` encodes them).

    ``codes`` says which codes: ``mean``, the posterior means (what ``encode`` gives; the default),
    or ``draw``, one posterior draw per training image, seeded by the fit's seed: a sample of the
    aggregate posterior q(z) = E_x q(z|x), the codes the decoder was trained on (Pythae's samplers
    fit on draws). The two agree where the posterior is narrow against the spread of the means;
    for a Poincaré VAE, whose means lie in a thin shell, they do not (bench/README.md)."""

    def __init__(self, codes: str = "mean", **params):
        if codes not in CODES:
            raise ConfigError(f"codes must be one of {', '.join(CODES)}, got {codes!r}")
        # "mean" is what every fit before the option used: it stays out of the parameters, so a fit
        # saved then still matches (and is reused) rather than being fit again
        super().__init__(**params, **({"codes": codes} if codes != "mean" else {}))

    @property
    def codes(self) -> str:
        return self.params.get("codes", "mean")


__all__ = ["CODES", "FittedSampler", "Sampler"]
