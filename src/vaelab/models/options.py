"""Parts own their options: a registry entry declares them as a small dataclass.

A part (a body, posterior, prior, likelihood or objective: an entry of one of the
registries) may carry ``options``, a dataclass whose fields have defaults, types and
``metadata={"help": ...}``, and ``check(cfg)``, which sees the whole ModelConfig and
raises a ConfigError in one line. Its options live in the config's section named after
the part: ``--set model.factorvae.gamma=10``, YAML ``model: {factorvae: {gamma: 10}}``,
and the same nesting in a run's ``config.json``. ``resolve(cfg)`` (called when a config is
built) turns each chosen part's section into its dataclass (defaults filled in, types
checked) and refuses a section for a part the config does not use.
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
    text = hint if isinstance(hint, str) else getattr(hint, "__name__", str(hint))
    text = str(hint) if not isinstance(hint, type) else text
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"{where} must be set (it has no 'none'), got null")
    base = text.replace(" | None", "").replace("typing.", "").strip()
    try:
        if base == "bool":
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if isinstance(value, bool):
                return value
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
        raise ConfigError(f"{where} must be {base.replace('list[', 'a list of ').rstrip(']')}, got {value!r}") \
            from None
    return value


def build_options(entry, name: str, raw: Any):
    """The dataclass of ``entry``'s options from the section ``raw`` (a dict, or already one)."""
    cls = entry.options
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


def resolve(cfg, parts: dict[str, tuple[str, dict]]) -> None:
    """Fill ``cfg.options`` with the dataclass of every chosen part that has options, refuse a
    section of a part not chosen, then run each chosen part's ``check(cfg)``.

    ``parts``: role -> (the config field that chooses it, its registry), e.g.
    ``{"objective": ("objective", OBJECTIVES)}``."""
    chosen = {}
    for role, (field, registry) in parts.items():
        name = getattr(cfg, field)
        chosen[name] = (role, field, registry.get(name))
    for section in list(cfg.options):
        if section in chosen:
            continue
        for role, (field, registry) in parts.items():
            if section in registry:
                raise ConfigError(f"model.{section} holds options of the {role} {section}, and model.{field} is "
                                  f"{getattr(cfg, field)}; leave it out, or set model.{field}={section}")
        raise ConfigError(f"model.{section} is neither an option nor a part of this model; the parts with options "
                          f"here: {', '.join(n for n, (_, _, e) in chosen.items() if option_fields(e)) or 'none'}")
    for name, (_, _, entry) in chosen.items():
        if entry is not None and getattr(entry, "options", None) is not None:
            cfg.options[name] = build_options(entry, name, cfg.options.get(name))
        elif name in cfg.options and cfg.options[name]:
            raise ConfigError(f"model.{name} has no options; leave model.{name} out")
        else:
            cfg.options.pop(name, None)
    for name, (_, _, entry) in chosen.items():
        check = getattr(entry, "check", None)
        if check is not None:
            check(cfg)


__all__ = ["build_options", "option_fields", "resolve"]
