"""ONNX export of a trained run: encoder, decoder, anomaly scorer and sampler as .onnx files.

Each part is a small ``nn.Module`` around the model contract (``posterior``, ``decode``,
``reconstruct``, ``prior``), traced by torch.onnx's exporter (``torch.export``): the graph
is the code PyTorch runs, the conv layers' own forward included (maps flipped for
TensorFlow's 'same' padding, the bias added after the convolution). The batch dimension
is dynamic; everything else is fixed by the run's config.

- ``encoder``: image (B, C, H, W) float32 in [0, 1] [, label (B,) int64] -> the posterior's
  parameters, (B, D) each: ``mu`` and ``logvar`` for a Gaussian posterior; an autoencoder's
  point posterior has no variance, so its encoder outputs ``mu`` (the code) alone; a flow
  posterior (planar, radial, iaf) outputs ``code`` (the flow's image of the base mean) and
  its base Gaussian's ``base_mu``, ``base_logvar``, and the entry's ``note`` says so;
- ``decoder``: code (B, D) float32 [, label] -> image (B, C, H, W) in [0, 1];
- ``scorer``: image -> score (B,), the ``mse`` anomaly score (per-pixel mean squared error of
  the reconstruction through the posterior mean; higher = more anomalous), as
  ``vaelab.anomaly.scores.score_images(model, x, "mse")`` computes it: a conditional model
  reconstructs with the most probable class, so the scorer needs no label;
- ``sampler`` (models with a prior): noise (B, D) standard-normal draws [, label] -> image,
  the prior draw ``z = mean + std * noise`` decoded (the uniform prior on the sphere of an
  S-VAE: ``z = noise / |noise|``; the wrapped normal prior of a P-VAE: ``z = exp_0(sigma noise / 2)``).
  The caller brings the randomness, so
  the same noise gives the same images in every runtime. With ``sampler=`` (a fitted latent
  sampler that has ``onnx_codes()``: ``vaelab export --onnx DIR --sampler maf|iaf|two-stage``)
  the codes are that sampler's draws for the noise instead, on any model with a continuous
  latent; the noise then has the sampler's own size (``noise_dim`` of its module: the
  two-stage sampler's stage-2 latent, which may differ from the code size).

By default every part the model has is exported, and a part that cannot be (the sampler of a
VampPrior run: a mixture's draw is not a function of Gaussian noise) is left out with one
line to ``log`` and its reason in ``onnx.json``'s ``not_exported``; parts asked by name are all
exported or none is.

Conditional models take ``label`` (a class 0..K-1) wherever the PyTorch call takes one.
``DIR/onnx.json`` describes every file: inputs and outputs with dtypes and shapes ("batch"
for the dynamic dimension; ``image_input``: an image is [N, C, H, W] float32 in [0, 1]), the
id of the weights exported (``checkpoint_id``, also in each file's metadata_props), the opset, and the largest difference from PyTorch that
onnxruntime measured on random inputs at two batch sizes (files are only written when it
is within ``TOLERANCE``). All files are written beside each other first and moved into
``DIR`` once every part has exported and passed, so a failure leaves nothing half-done; part
files an earlier export listed in ``DIR/onnx.json`` and not exported now are removed.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vaelab.distributions import (
    DiagNormal,
    HypersphericalUniform,
    StandardNormal,
    WrappedNormal,
)
from vaelab.errors import VaelabError
from vaelab.evaluation import metrics
from vaelab.io import write_json
from vaelab.models import require
from vaelab.rundir import ID_FIELD, ID_TEXT

OPSET = 18  # onnxruntime >= 1.14 runs it
MANIFEST = "onnx.json"
TOLERANCE = 1e-4  # largest accepted |onnxruntime - PyTorch| on the check inputs
EXAMPLE_BATCH = 3  # the traced batch; not 0 or 1, which torch.export would fix as constants
CHECK_BATCHES = (1, 5)  # batch sizes run through each file before it is kept


# ------------------------------------------------------------------------------ the parts
class Encoder(nn.Module):
    """image [, label] -> the posterior's parameters (``Distribution.params()``, in its order)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.posterior(image, label).params().values())


class Decoder(nn.Module):
    """code [, label] -> image in [0, 1]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, code: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.decode(code, label)


class Scorer(nn.Module):
    """image -> the per-image ``mse`` anomaly score (B,)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # What score_images does for unlabelled images (vaelab.anomaly sits beside this
        # package, so its score function is not imported: this line is its "mse").
        label = self.model.infer_labels(image) if self.model.conditional else None
        return metrics.mse(self.model.reconstruct(image, label), image)


# Prior distribution type -> the draw for given standard-normal noise (B, D): the
# reparameterisation its rsample uses, with the noise as an input instead of a generator.
NOISE_TO_CODE: dict[type, Callable[[object, torch.Tensor], torch.Tensor]] = {
    StandardNormal: lambda p, noise: noise,
    DiagNormal: lambda p, noise: p.mean + p.std * noise,
    HypersphericalUniform: lambda p, noise: noise / torch.linalg.vector_norm(noise, dim=-1, keepdim=True),
    WrappedNormal: lambda p, noise: p.from_noise(noise),
}


class Sampler(nn.Module):
    """noise [, label] -> image: a prior draw, or ``codes(noise)`` (a fitted sampler's draw), decoded."""

    def __init__(self, model: nn.Module, codes: nn.Module | None = None):
        super().__init__()
        self.model, self.codes = model, codes
        self.noise_dim = getattr(codes, "noise_dim", None)  # None: the code size

    def forward(self, noise: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        if self.codes is not None:
            return self.model.decode(self.codes(noise), label)
        p = self.model.prior(label, noise.shape[0])
        return self.model.decode(NOISE_TO_CODE[type(p)](p, noise), label)


@dataclass(frozen=True)
class Part:
    graph: type[nn.Module]
    first_input: str  # image, code or noise; conditional models add label (except the scorer)
    takes_label: bool
    needs: str | None  # model capability (vaelab.models.CAPABILITIES)
    what: str


# Registry: part name -> how to build and describe it. Default export: every part the model has.
PARTS: dict[str, Part] = {
    "encoder": Part(Encoder, "image", True, None, "the posterior's parameters"),
    "decoder": Part(Decoder, "code", True, None, "images in [0, 1]"),
    "scorer": Part(Scorer, "image", False, None,
                   "the mse anomaly score: mean squared error per pixel of the reconstruction through the posterior "
                   "mean, per image; higher = more anomalous"),
    "sampler": Part(Sampler, "noise", True, "prior",
                    "images in [0, 1] decoded from prior draws z = mean + std * noise (noise: standard-normal draws; "
                    "a uniform prior on the sphere: z = noise / |noise|; a wrapped normal prior on the Poincaré "
                    "ball: z = exp_0(sigma noise / 2))"),
}


def available_parts(model) -> list[str]:
    return [name for name, p in PARTS.items() if p.needs is None or p.needs in model.capabilities]


def resolve_parts(model, parts: list[str] | None, fitted: bool = False) -> list[str]:
    """The parts to export (None: every part the model has), checked: unknown names, parts the
    model lacks and an empty list end in one line. ``fitted``: the sampler part decodes a fitted
    sampler's draws (no prior needed)."""
    if parts is not None and not list(parts):
        raise VaelabError(f"the list of ONNX parts is empty; name some of {', '.join(PARTS)}, or pass None for "
                          "every part the model has")
    if parts is None:
        names = available_parts(model)
        return names + ["sampler"] if fitted and "sampler" not in names else names
    for name in parts:
        if name not in PARTS:
            raise VaelabError(f"unknown ONNX part {name!r}; known: {', '.join(PARTS)}")
        if PARTS[name].needs is not None and not (name == "sampler" and fitted):
            require(model, PARTS[name].needs, f"the ONNX {name}")
    if "sampler" in parts and not fitted:
        problem = prior_problem(model)
        if problem:
            raise VaelabError(problem)
    return list(dict.fromkeys(parts))


def prior_problem(model) -> str | None:
    """Why the prior's draws cannot be an ONNX sampler (one phrase), or None."""
    p = model.prior(_labels(model, 1), 1)
    if type(p) in NOISE_TO_CODE:
        return None
    return (f"the ONNX sampler needs a Gaussian prior draw per label; the {model.cfg.prior} prior of "
            f"{model.describe()} is a {type(p).__name__} (--sampler maf, iaf or two-stage exports a sampler fit on "
            "the codes instead)")


# ------------------------------------------------------------------------------ inputs and outputs
def _labels(model, n: int) -> torch.Tensor | None:
    return torch.arange(n) % model.cfg.num_classes if model.conditional else None


def _inputs(model, part: Part, n: int, gen: torch.Generator, dim: int | None = None) -> dict[str, torch.Tensor]:
    """Named example inputs of a part for a batch of n (images uniform in [0, 1], codes and noise
    normal, of ``dim`` values when the graph says: a fitted sampler's noise)."""
    if part.first_input == "image":
        first = torch.rand((n, *model.cfg.input_shape), generator=gen)
    else:
        first = torch.randn((n, dim or model.cfg.latent_dim), generator=gen)
    out = {part.first_input: first}
    if part.takes_label and model.conditional:
        out["label"] = _labels(model, n)
    return out


def _output_names(model, name: str, example: dict[str, torch.Tensor]) -> list[str]:
    if name == "encoder":
        return list(model.posterior(*example.values()).params())
    return {"decoder": ["image"], "scorer": ["score"], "sampler": ["image"]}[name]


def _spec(name: str, t: torch.Tensor) -> dict:
    return {"name": name, "dtype": str(t.dtype).removeprefix("torch."), "shape": ["batch", *t.shape[1:]]}


# ------------------------------------------------------------------------------ export
def export_onnx(run, out_dir: str | Path, parts: list[str] | None = None, check: bool = True,
                log: Callable[[str], None] = lambda s: None, sampler=None) -> dict:
    """Write ``parts`` (default: every part the run's model has) of ``run`` (a ``vaelab.api.Run``)
    as ONNX into ``out_dir``, with ``onnx.json``; returns that description.

    ``check``: run each file with onnxruntime (when installed) on random inputs at two batch
    sizes and refuse to write it when it differs from PyTorch by more than ``TOLERANCE``.
    ``sampler``: a fitted latent sampler (``vaelab.latent.sampling``) with ``onnx_codes()``,
    whose draws the sampler part decodes instead of the prior's (``parts`` must then include the sampler)."""
    model = copy.deepcopy(run.model).to("cpu").float().eval()
    codes = None
    if sampler is not None:
        if not hasattr(sampler, "onnx_codes"):
            raise VaelabError(f"the {sampler.name} sampler has no ONNX form (its draws are not a function of "
                              "Gaussian noise); export the prior's or one fit on the codes (--sampler maf, iaf or "
                              "two-stage)")
        codes = copy.deepcopy(sampler.onnx_codes()).to("cpu").float().eval()
    names = resolve_parts(model, parts, fitted=codes is not None)
    if sampler is not None and "sampler" not in names:  # fit for nothing: say so, not drop it
        raise VaelabError(f"a {sampler.name} sampler was given for the ONNX sampler part, and the parts asked for "
                          f"({', '.join(names)}) leave that part out; add sampler to the parts, or give no sampler")
    _need_exporter()
    ort = _onnxruntime() if check else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    manifest = {
        "format": "vaelab-onnx-1", "opset": OPSET, "torch": torch.__version__,
        "model": model.describe().removeprefix("this run's model ").strip("()"),
        "input_shape": list(cfg.input_shape), "latent_dim": int(cfg.latent_dim),
        "num_classes": int(cfg.num_classes) if model.conditional else None,
        "images": "float32 (batch, C, H, W) in [0, 1], as the run's data (C = 1 grey, 3 RGB)",
        # What an image input takes, exactly: a (N, H, W) array is refused by onnxruntime ("Invalid rank").
        "image_input": {"shape": ["N", *map(int, cfg.input_shape)], "dtype": "float32", "range": [0.0, 1.0]},
        ID_FIELD: run.checkpoint_id,  # the weights exported (vaelab.rundir): a re-export follows new weights
        "checked": None if ort is None else {"runtime": f"onnxruntime {ort.__version__}",
                                             "batch_sizes": list(CHECK_BATCHES), "tolerance": TOLERANCE},
        "parts": {},
    }
    if sampler is not None:
        manifest["sampler"] = sampler.name
    if check and ort is None:
        manifest["checked"] = "not checked: onnxruntime is not installed"
    tmp = Path(tempfile.mkdtemp(prefix=".onnx-", dir=out_dir))
    try:
        for name in names:
            try:
                problem = prior_problem(model) if name == "sampler" and codes is None else None
                if problem:  # only by default: resolve_parts refused it when asked for by name
                    raise VaelabError(problem)
                manifest["parts"][name] = _export_part(model, name, tmp, ort, manifest[ID_FIELD],
                                                       codes if name == "sampler" else None)
            except VaelabError as e:
                if parts:  # asked for by name: all or nothing
                    raise
                (tmp / f"{name}.onnx").unlink(missing_ok=True)  # written, then failed its check: not moved in
                manifest.setdefault("not_exported", {})[name] = str(e)
                log(f"not exported: the {name}: {e}")
                continue
            if name == "sampler" and codes is not None:
                manifest["parts"][name]["what"] = (f"images in [0, 1] decoded from the {sampler.name} sampler's draws "
                                                   "(fit on the training codes) for noise: standard-normal draws")
            log(f"exported the {name}: {_signature(manifest['parts'][name])}")
        if not manifest["parts"]:
            raise VaelabError(f"no part of {model.describe()} could be exported to ONNX: "
                              + "; ".join(manifest.get("not_exported", {}).values()))
        old = _old_files(out_dir)
        (out_dir / MANIFEST).unlink(missing_ok=True)  # no description while the files change
        for f in sorted(tmp.iterdir()):  # every part passed: move them in, then the description
            f.replace(out_dir / f.name)
        for f in old - {p["file"] for p in manifest["parts"].values()}:
            (out_dir / f).unlink(missing_ok=True)  # a part of an earlier export not exported now
        write_json(out_dir / MANIFEST, manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _old_files(out_dir: Path) -> set[str]:
    """The part files an earlier export's onnx.json lists in ``out_dir`` (only those are ever removed)."""
    try:
        parts = json.loads((out_dir / MANIFEST).read_text()).get("parts", {})
        return {Path(p["file"]).name for p in parts.values() if str(p.get("file", "")).endswith(".onnx")}
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return set()


def _export_part(model, name: str, folder: Path, ort, checkpoint_id: str | None = None,
                 codes: nn.Module | None = None) -> dict:
    part = PARTS[name]
    graph = (part.graph(model) if codes is None else Sampler(model, codes)).eval()
    gen = torch.Generator().manual_seed(0)
    example = _inputs(model, part, EXAMPLE_BATCH, gen, getattr(graph, "noise_dim", None))
    outputs = _output_names(model, name, example)
    batch = torch.export.Dim("batch")
    path = folder / f"{name}.onnx"
    with torch.no_grad(), _quiet():
        try:
            program = torch.onnx.export(graph, tuple(example.values()), None, input_names=list(example),
                                        output_names=outputs, dynamic_shapes=tuple({0: batch} for _ in example),
                                        opset_version=OPSET, dynamo=True, verbose=False)
        except Exception as e:  # a model part torch.export cannot trace: say which, in one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise VaelabError(f"the {name} of {model.describe()} could not be exported to ONNX: {first[:300]}") from e
        fixed = [i.name for i in program.model_proto.graph.input if i.type.tensor_type.shape.dim[0].dim_param == ""]
        if fixed:  # torch.export fixed the batch size instead of failing: say so rather than ship it
            raise VaelabError(f"the {name} of {model.describe()} could not be exported for any batch size: "
                              f"torch.export fixed the batch of its input {', '.join(fixed)} at the {EXAMPLE_BATCH} "
                              "images it was traced with; nothing was written")
        if checkpoint_id:  # the weights it was made from, inside the file too (vaelab.rundir.ID_TEXT)
            program.model.metadata_props[ID_TEXT] = checkpoint_id
        program.save(path)
        ref = graph(*example.values())
    ref = ref if isinstance(ref, tuple) else (ref,)
    entry = {"file": path.name, "inputs": [_spec(k, v) for k, v in example.items()],
             "outputs": [_spec(k, v) for k, v in zip(outputs, ref)], "what": part.what}
    if name == "encoder" and "stochastic" not in model.capabilities:
        entry["note"] = "a point posterior (autoencoder): mu is the code itself; there is no posterior variance"
    if name == "encoder" and getattr(model.posterior_head, "export_note", None):
        entry["note"] = model.posterior_head.export_note  # a flow posterior: what its outputs are, and are not
    if name in ("encoder", "decoder", "sampler") and model.conditional:
        entry["label"] = f"int64 class 0..{model.cfg.num_classes - 1}"
    if name == "scorer" and model.conditional:
        entry["note"] = "a conditional model: each image is reconstructed with its most probable class"
    if ort is not None:
        entry["max_abs_diff"] = _check(model, name, graph, path, ort, gen)
    return entry


def _check(model, name: str, graph: nn.Module, path: Path, ort, gen: torch.Generator) -> float:
    """Largest |onnxruntime - PyTorch| over every output, at each of CHECK_BATCHES."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for n in CHECK_BATCHES:
        inputs = _inputs(model, PARTS[name], n, gen, getattr(graph, "noise_dim", None))
        with torch.no_grad():
            ref = graph(*inputs.values())
        ref = ref if isinstance(ref, tuple) else (ref,)
        try:
            got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        except Exception as e:  # onnxruntime's own errors (shapes, unsupported ops): one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise VaelabError(f"the exported {name} does not run in onnxruntime at batch size {n}: {first[:300]}; "
                              "nothing was written") from e
        for r, g in zip(ref, got):
            if tuple(g.shape) != tuple(r.shape):
                raise VaelabError(f"the exported {name} returned shape {g.shape} for a batch of {n}, "
                                  f"PyTorch {tuple(r.shape)}; nothing was written")
            worst = max(worst, float(np.abs(g - r.numpy()).max()) if g.size else 0.0)
    if not worst <= TOLERANCE:
        raise VaelabError(f"the exported {name} differs from PyTorch by {worst:.3g} on random inputs "
                          f"(tolerance {TOLERANCE:g}); nothing was written")
    return worst


def _signature(entry: dict) -> str:
    return f"{', '.join(i['name'] for i in entry['inputs'])} -> {', '.join(o['name'] for o in entry['outputs'])}"


def _need_exporter() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401  (torch.onnx's exporter builds the graph with it)
    except ImportError as e:
        raise VaelabError(f"ONNX export needs the onnx and onnxscript packages ({e.name} is missing): "
                          "pip install 'vaelab[onnx]'") from None


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


@contextlib.contextmanager
def _quiet():
    """The exporter's progress lines (stdout), warnings and log records stay out of the user's output."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


__all__ = ["MANIFEST", "NOISE_TO_CODE", "OPSET", "PARTS", "TOLERANCE", "available_parts", "export_onnx",
           "prior_problem", "resolve_parts"]
