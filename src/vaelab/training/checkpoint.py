"""Checkpoints that are safe to load from strangers.

A run directory holds ``model.safetensors`` (weights, with the config that rebuilds
the model in its metadata), ``config.json``, and ``checkpoint.safetensors`` (weights,
optimizer state and the training state as JSON metadata) used to resume. Nothing is
ever unpickled: a pickle, or any file that is not safetensors, is refused unread.
``load_model`` refuses a ``config.json`` whose model section is not the one embedded in the
weights (an edit that keeps the tensors' shapes, ``loss`` say, would load and give wrong numbers).
All writes are atomic, and the resume checkpoint is one file, so weights, optimizer
and epoch counter can never disagree after a crash.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from vaelab.config import RunConfig, flatten
from vaelab.configure import config_from_dict
from vaelab.errors import CheckpointError, CheckpointMismatch, ConfigError
from vaelab.rundir import RunDir, checkpoint_id
from vaelab.tensorfiles import check_safetensors, load_tensors, save_tensors

WEIGHTS, RESUME, CONFIG = RunDir.WEIGHTS, RunDir.RESUME, RunDir.CONFIG
FORMAT = "vaelab-2"  # vaelab-1: before the model contract (heads named mu/logvar/head at the top level)

# vaelab-1 weight names -> today's: the posterior heads moved into one part.
V1_RENAMES = (("mu.", "posterior_head.mu."), ("logvar.", "posterior_head.logvar."), ("head.", "posterior_head.linear."))


_save, _load = save_tensors, load_tensors  # the names the tests and older code use


def save_weights(run_dir: str | Path, model: torch.nn.Module, config: RunConfig) -> None:
    _save(Path(run_dir) / WEIGHTS, model.state_dict(), {"config": config.to_json(), "format": FORMAT})


def _optimizers(optimizer) -> dict[str, torch.optim.Optimizer]:
    """One optimizer (a model's only one, named "model") or several by name."""
    return optimizer if isinstance(optimizer, dict) else {"model": optimizer}


def _prefix(i: int, name: str) -> tuple[str, str]:
    """Tensor-name and metadata-key prefixes of the i-th optimizer: the first keeps the names of
    checkpoints written before models had several (``optim.``), the others carry their name."""
    return ("optim.", "") if i == 0 else (f"optim-{name}.", f"-{name}")


def save_resume(run_dir: str | Path, model: torch.nn.Module, optimizer, state: dict[str, Any]) -> None:
    """One file: weights, every optimizer's state (one, or a dict name -> optimizer), and
    ``state`` (epoch, history, ...) as JSON."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    meta = {"state": json.dumps(state), "format": FORMAT}
    opts = _optimizers(optimizer)
    for i, (name, opt) in enumerate(opts.items()):
        tprefix, mkey = _prefix(i, name)
        sd = opt.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for idx, st in sd["state"].items():
            for key, value in st.items():
                if torch.is_tensor(value):
                    tensors[f"{tprefix}{idx}.{key}"] = value
                else:
                    scalars.setdefault(str(idx), {})[key] = value
        meta[f"param_groups{mkey}"] = json.dumps(sd["param_groups"])
        meta[f"optim_scalars{mkey}"] = json.dumps(scalars)
    meta["optimizers"] = json.dumps(list(opts))
    _save(Path(run_dir) / RESUME, tensors, meta)


def load_resume(run_dir: str | Path, model: torch.nn.Module, optimizer) -> dict[str, Any]:
    """Load weights and every optimizer's state from the resume file; return ``state``."""
    tensors, meta = _load(Path(run_dir) / RESUME)
    try:
        model.load_state_dict(migrate({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, meta))
        opts = _optimizers(optimizer)
        saved = json.loads(meta.get("optimizers", '["model"]'))
        if len(saved) != len(opts) or saved[1:] != list(opts)[1:]:
            raise ValueError(f"it holds the state of the optimizers {saved}, this model trains {list(opts)}")
        for i, (name, opt) in enumerate(opts.items()):
            tprefix, mkey = _prefix(i, name)
            state: dict[int, dict[str, Any]] = {}
            for k, v in tensors.items():
                if k.startswith(tprefix):
                    idx, key = k[len(tprefix):].split(".", 1)
                    state.setdefault(int(idx), {})[key] = v
            for idx, d in json.loads(meta[f"optim_scalars{mkey}"]).items():
                state.setdefault(int(idx), {}).update(d)
            opt.load_state_dict({"state": state, "param_groups": json.loads(meta[f"param_groups{mkey}"])})
        return json.loads(meta["state"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointMismatch(f"{Path(run_dir) / RESUME} does not match this model: {_torch_reason(e)}") from None


def saved_epoch(run_dir: str | Path) -> int | None:
    """The epoch of the resume checkpoint in ``run_dir`` (its header alone is read), or None."""
    path = Path(run_dir) / RESUME
    if not path.is_file():
        return None
    try:
        check_safetensors(path)
        with safe_open(str(path), framework="pt") as f:
            return int(json.loads((f.metadata() or {})["state"])["epoch"])
    except (CheckpointError, SafetensorError, OSError, KeyError, ValueError, TypeError):
        return None


def resume_note(run_dir: str | Path | None, command: str = "vaelab train") -> str:
    """"; the last checkpoint (epoch E) is in RUN: continue with ..." for a stopped run."""
    if run_dir is None:
        return ""
    epoch = saved_epoch(run_dir)
    if epoch is None:
        return f"; no epoch had finished, so {run_dir} holds no checkpoint"
    return f"; the last checkpoint (epoch {epoch}) is in {run_dir}: continue with `{command} --resume {run_dir}`"


def migrate(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> dict[str, torch.Tensor]:
    """Weights saved by an older vaelab, renamed to today's parameter names."""
    if meta.get("format") != "vaelab-1":
        return tensors
    out = {}
    for k, v in tensors.items():
        for old, new in V1_RENAMES:
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v
    return out


def _torch_reason(e: Exception) -> str:
    """torch's load_state_dict message on one line: what is missing or mismatched."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    detail = "; ".join(lines[1:3]) if len(lines) > 1 else lines[0] if lines else type(e).__name__
    return detail[:400]


def load_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / CONFIG
    if Path(run_dir).exists() and not Path(run_dir).is_dir():
        raise CheckpointError(f"{run_dir} is a file, not a run directory; pass the run's folder (the one holding "
                              f"{CONFIG} and {WEIGHTS})")
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a vaelab run (no {CONFIG}); train one with `vaelab train`")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not a valid run config: {e}") from None
    if isinstance(raw, dict) and not isinstance(raw.get("model"), dict):
        what = "has no model section" if raw.get("model") is None else "has a model section that is not a mapping"
        raise CheckpointError(f"{path} {what}; restore the file (every run's {CONFIG} has one, and {WEIGHTS} "
                              "cannot be rebuilt without it) or train the run again")
    try:
        return config_from_dict(raw, strict=False)  # training it again checks all
    except ConfigError as e:
        raise CheckpointError(f"{path} is not a valid run config: {e}") from None


def saved_model_config(meta: dict[str, str], config: RunConfig) -> dict[str, Any] | None:
    """The model section of the config a weights file embeds (``save_weights``), built through
    the same loading as ``config`` (the run's config.json) and with its data and training
    sections, so both have today's defaults and layout, and what the model section derives from
    training (``elbo.kl_warmup`` from ``train.kl_warmup_epochs``) is derived alike. None when the
    file embeds none (an older or a foreign writer) or one this vaelab cannot build."""
    text = meta.get("config")
    if text is None:
        return None
    try:
        saved = json.loads(text)
    except ValueError:
        return None
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        return None
    for d in ({**config.to_dict(), "model": saved["model"]}, saved):  # with its own sections if not with these
        try:
            return config_from_dict(d, strict=False).to_dict()["model"]
        except ConfigError:
            pass
    return None


def config_difference(config: RunConfig, meta: dict[str, str]) -> tuple[str, object, object] | None:
    """The first model option on which ``config`` (config.json) and the config embedded in the
    weights' metadata differ, as (key, config.json's value, the weights'), or None (they agree,
    or the weights embed none)."""
    saved = saved_model_config(meta, config)
    if saved is None:
        return None
    now, was = flatten(config.to_dict()["model"], ".", "model"), flatten(saved, ".", "model")
    for key in [*now, *(k for k in was if k not in now)]:
        a, b = now.get(key, "(unset)"), was.get(key, "(unset)")
        if a != b:
            return key, a, b
    return None


def check_config_matches(run_dir: str | Path, config: RunConfig, meta: dict[str, str]) -> None:
    """Refuse, in one line, a ``config.json`` whose model section is not the one the weights were
    saved with: an edit that keeps the tensors' shapes (``loss``, ``input_shape``, an output
    activation) would load and then give wrong numbers. Only the model section is compared: the
    data and training sections (data paths, say) may be edited."""
    diff = config_difference(config, meta)
    if diff is not None:
        key, a, b = diff
        raise CheckpointError(
            f"{Path(run_dir) / CONFIG} does not match the config {WEIGHTS} was saved with: {key} is {a!r} "
            f"in {CONFIG} but {b!r} in {WEIGHTS}; set it back to {b!r} (restore {CONFIG}) or train a new run "
            "with the change")


def load_model_and_id(run_dir: str | Path, device: str | torch.device = "cpu"):
    """``load_model``, with the checkpoint id of the very weights it read: (RunConfig, model,
    id). The file is hashed before and after the read; one replaced meanwhile (a training saving
    its next epoch there) is read again, so the id never names other weights than the model's."""
    weights = Path(run_dir) / WEIGHTS
    for _ in range(3):
        before = checkpoint_id(weights) if weights.is_file() else None
        config, model = load_model(run_dir, device)
        if before is not None and weights.is_file() and checkpoint_id(weights) == before:
            return config, model, before
    raise CheckpointError(f"{weights} was replaced while it was read, three times over: a training is saving "
                          "there; load the run when it has finished")


def load_model(run_dir: str | Path, device: str | torch.device = "cpu"):
    """Rebuild a trained model from a run directory: (RunConfig, model in eval mode). A
    ``config.json`` whose model section is not the one the weights were saved with (embedded in
    ``model.safetensors``) is refused, even where the tensors' shapes agree."""
    from vaelab.models import build_model

    config = load_config(run_dir)
    try:
        model = build_model(config.model)
    except ConfigError as e:
        raise CheckpointError(f"{Path(run_dir) / CONFIG} does not rebuild the run's model ({e}); restore the file "
                              "or train the run again") from None
    if not (Path(run_dir) / WEIGHTS).is_file() and RunDir(run_dir).resume.is_file():
        raise CheckpointError(f"{run_dir} has no {WEIGHTS}: its training stopped before it saved them (its resume "
                              f"checkpoint is there); continue it: vaelab train --resume {run_dir}")
    tensors, meta = _load(Path(run_dir) / WEIGHTS)
    try:
        model.load_state_dict(migrate(tensors, meta))
    except RuntimeError as e:  # the tensors' shapes: and, where the weights record their config, which edit
        diff = config_difference(config, meta)
        edited = f"; {CONFIG} has {diff[0]}={diff[1]!r} where they were saved with {diff[2]!r}" if diff else ""
        raise CheckpointError(f"{Path(run_dir) / WEIGHTS} does not match {CONFIG}: {_torch_reason(e)}{edited}; "
                              f"restore {CONFIG} or train the run again") from None
    check_config_matches(run_dir, config, meta)
    return config, model.to(device).eval()
