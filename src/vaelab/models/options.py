"""Parts own their options: a registry entry declares them as a small dataclass.

A part (a body, posterior, prior, likelihood or objective: an entry of one of the
registries) may carry ``options``, a dataclass whose fields have defaults, types and
``metadata={"help": ...}``, and ``check(cfg)``, which sees the whole ModelConfig and
raises a ConfigError in one line. Its options live in the config's section named after
the part: ``--set model.factorvae.gamma=10``, YAML ``model: {factorvae: {gamma: 10}}``,
and the same nesting in a run's ``config.json``. ``resolve(cfg)`` (called when a config is
built) turns each chosen part's section into its dataclass (defaults filled in, types
checked) and refuses a section for a part the config does not use.

Options that were fields of the model section before parts owned them keep their old flat
names as aliases (``--set model.k=50`` is ``model.iwae.k=50``): a field declares its old
name as ``metadata["alias"]``, and ``fold`` moves such a key into the section of the chosen
part that answers to it.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from vaelab.errors import ConfigError


def option_fields(entry) -> list[dataclasses.Field]:
    """The option fields a registry entry declares (none when it declares no ``options``)."""
    cls = getattr(entry, "options", None)
    return list(dataclasses.fields(cls)) if cls is not None else []


def _typed(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the annotated type (YAML reads 1e-4 as a string; the CLI gives an int for 2)."""
    text = hint.__name__ if isinstance(hint, type) else str(hint)  # "float", "list[int]", "float | None"
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"{where} must be set (it has no 'none'), got null")
    base = text.replace(" | None", "").replace("typing.", "").strip()
    if " | " in base:  # "list[int] | int" (a conv's kernel_size): a list as the list, else one value
        whole, one = base.split(" | ", 1)
        return _typed(value, whole if isinstance(value, (list, tuple)) else one, where)
    try:
        if base == "bool":
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):  # the CLI reads "--set x=0" as the int 0
                return bool(value)
            raise TypeError
        if base == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(float(value)) if isinstance(value, str) else int(value)
        if base == "float":
            if isinstance(value, bool):
                raise TypeError
            v = float(value)
            if not math.isfinite(v):
                raise ValueError
            return v
        if base.startswith("list[") or base.startswith("tuple["):
            inner = base[base.index("[") + 1:-1].split(",")[0].strip()
            items = value if isinstance(value, (list, tuple)) else [value]
            out = [_typed(v, inner, where) for v in items]
            return tuple(out) if base.startswith("tuple[") else out
        if base == "str":
            if not isinstance(value, str):
                raise TypeError
            return value
    except (TypeError, ValueError):
        kind = "true or false" if base == "bool" else base.replace("list[", "a list of ").rstrip("]")
        raise ConfigError(f"{where} must be {kind}, got {value!r}") from None
    return value


def build_options(cls, name: str, raw: Any):
    """The options dataclass ``cls`` of the part ``name`` from its section ``raw`` (a dict, or already one)."""
    if isinstance(raw, cls):
        raw = dataclasses.asdict(raw)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"model.{name} must be a mapping of options, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown option(s) model.{name}.{unknown[0]}{' ...' if len(unknown) > 1 else ''} of "
                          f"{name}; its options: {', '.join(fields) or 'none'}")
    hints = typing.get_type_hints(cls)
    values = {k: _typed(v, hints[k], f"model.{name}.{k}") for k, v in raw.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.{name}: {e}") from None


def _chosen(cfg, parts: dict[str, tuple[str, dict]]) -> dict[str, list[tuple[str, str, Any]]]:
    """Part name -> [(role, config field, registry entry)]: one name may fill two roles (the
    posterior vq and the objective vq share the section model.vq and its options)."""
    chosen: dict[str, list[tuple[str, str, Any]]] = {}
    for role, (field, registry) in parts.items():
        name = getattr(cfg, field)
        chosen.setdefault(name, []).append((role, field, registry.get(name)))
    return chosen


def aliases(parts: dict[str, tuple[str, dict]]) -> dict[str, list[tuple[str, str, str, str]]]:
    """Old flat names of part options (``model.k``, a field's ``metadata["alias"]``) -> every
    (role, config field, part, option) that answers to it (``beta``: elbo's and tcvae's)."""
    out: dict[str, list[tuple[str, str, str, str]]] = {}
    for role, (field, registry) in parts.items():
        for name, entry in registry.items():
            for f in option_fields(entry):
                if "alias" in f.metadata and (role, field, name, f.name) not in out.get(f.metadata["alias"], []):
                    out.setdefault(f.metadata["alias"], []).append((role, field, name, f.name))
    return out


def fold(section: dict, chosen: dict[str, str], parts: dict[str, tuple[str, dict]]) -> dict:
    """A copy of the mapping ``section`` (the model section as read, or ``cfg.options``) with each
    old flat name that a chosen part answers to moved into that part's section
    (``{"k": 50}`` -> ``{"iwae": {"k": 50}}``). ``chosen``: config field -> the part it names.
    Flat names no chosen part reads are left where they are, for the caller to judge."""
    out = dict(section)
    table = aliases(parts)
    for key in [k for k in section if k in table and not isinstance(section[k], dict)]:
        owners = [(part, option) for _, field, part, option in table[key] if chosen.get(field) == part]
        if not owners:
            continue
        part, option = owners[0]
        raw = out.get(part)
        own = dataclasses.asdict(raw) if dataclasses.is_dataclass(raw) else dict(raw or {})
        if option in own and own[option] != section[key] and not dataclasses.is_dataclass(raw):
            raise ConfigError(f"model.{key} and model.{part}.{option} are both set ({section[key]!r}, "
                              f"{own[option]!r}); give model.{part}.{option} alone")
        own[option] = out.pop(key)
        out[part] = own
    return out


def resolve(cfg, parts: dict[str, tuple[str, dict]]) -> None:
    """Fill ``cfg.options`` with the dataclass of every chosen part that has options, refuse a
    section of a part not chosen, then run each chosen part's ``check(cfg)`` (once each).

    ``parts``: role -> (the config field that chooses it, its registry), e.g.
    ``{"objective": ("objective", OBJECTIVES)}``."""
    chosen = _chosen(cfg, parts)
    for section in list(cfg.options):
        if section in chosen:
            continue
        for role, (field, registry) in parts.items():
            if section in registry:
                raise ConfigError(f"model.{section} holds options of the {role} {section}, and model.{field} is "
                                  f"{getattr(cfg, field)}; leave it out, or set model.{field}={section} "
                                  f"(model.{section}=null clears a preset's)")
        with_options = [n for n, es in chosen.items() if any(option_fields(e) for _, _, e in es)]
        raise ConfigError(f"model.{section} is neither an option nor a part of this model; the parts with options "
                          f"here: {', '.join(with_options) or 'none'}")
    for name, entries in chosen.items():
        classes = {e.options for _, _, e in entries if e is not None and getattr(e, "options", None) is not None}
        if len(classes) > 1:  # a programming error: two parts of one name must share their options
            raise TypeError(f"the parts named {name} declare different options: {sorted(c.__name__ for c in classes)}")
        if classes:
            cfg.options[name] = build_options(next(iter(classes)), name, cfg.options.get(name))
        elif cfg.options.get(name):
            raise ConfigError(f"model.{name} has no options; leave model.{name} out")
        else:
            cfg.options.pop(name, None)
    done = set()
    for entries in chosen.values():
        for _, _, entry in entries:
            check = getattr(entry, "check", None)
            if check is not None and check not in done:
                done.add(check)
                check(cfg)


__all__ = ["aliases", "build_options", "fold", "option_fields", "resolve"]
