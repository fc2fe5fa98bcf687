"""Building a run's config: where the config dataclasses (``vaelab.config``, which know no
model) meet the parts that judge them (``vaelab.models``).

Every config a run trains or loads is built here, and checked as it is built: a preset, a
YAML file, CLI flags and ``--set`` overrides (``build_config``); a run directory's
``config.json``, with overrides on resume (``config_from_dict``); a config assembled in
code (``resolve_run``, which ``fit`` calls). Building fills in the family's parts, types
each chosen part's options (the section ``model.PART``), runs each part's check and refuses
every pairing of parts that cannot train, each in one line.

Old flat names of part options (``model.k``, ``model.beta``, ...) are aliases: in each layer
(preset, file, flags and overrides) they move into the section of the part that reads them in
the merged config before the layers merge, so a later layer wins whichever spelling each uses.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from vaelab import config as _config
from vaelab.config import (
    _SECTIONS,
    RunConfig,
    _hints,
    _keys,
    apply_overrides,
    explicit_keys,
    flatten,
    load_preset,
    load_yaml,
    merge,
)
from vaelab.errors import ConfigError
from vaelab.models import (
    OBJECTIVES,
    PARTS,
    chosen_parts,
    fold_section,
    resolve_model,
    unread_fields,
)
from vaelab.models.options import aliases, build_options, option_fields


def _folded(layer: dict[str, Any], chosen: dict[str, str]) -> dict[str, Any]:
    model = layer.get("model")
    return {**layer, "model": fold_section(model, chosen)} if isinstance(model, dict) else layer


def _unused_defaults(layer: dict[str, Any], chosen: dict[str, str]) -> dict[str, Any]:
    """``layer`` (a preset, or a saved config.json) without the sections of parts the merged
    config does not use whose values are all their part's defaults: ``iwae-paper`` says
    ``iwae: {k: 5}``, and ``--set model.objective=elbo`` must still give its VAE. A section
    with another value is left, to be refused; so is every section a user gives."""
    model = layer.get("model")
    if not isinstance(model, dict):
        return layer
    keep = dict(model)
    for name, raw in model.items():
        entries = [(f, r[name]) for f, r in PARTS.values() if isinstance(raw, dict) and name in r]
        if not entries or any(chosen.get(f) == name for f, _ in entries):
            continue
        classes = {e.options for _, e in entries if getattr(e, "options", None) is not None}
        try:
            if classes and all(build_options(c, name, raw) == c() for c in classes):
                del keep[name]
        except ConfigError:
            pass  # a bad value: refused with the section itself
    return {**layer, "model": keep}


def _from_layers(layers: list[dict[str, Any]], extra: dict | None, overrides: list[str] | None,
                 explicit: set[str], strict: bool = True, fresh: bool = False) -> RunConfig:
    """``fresh``: a config being made (not a saved run's): its data paths become absolute."""
    update = apply_overrides({}, extra, overrides)  # flags and --set texts as one nested mapping
    merged = apply_overrides(functools.reduce(merge, layers), extra, overrides)
    model = merged.get("model")
    chosen = chosen_parts(model if isinstance(model, dict) else {})
    base = [_folded(x, chosen) for x in layers]
    base[0] = _unused_defaults(base[0], chosen)
    # The flags, then the --set texts, each folded on its own: a later one wins in either spelling.
    flags, texts = (_folded(apply_overrides({}, e, o), chosen) for e, o in ((extra, None), (None, overrides)))
    _refuse_clashes(flags, texts)
    if "model" in update:
        update = {**update, "model": merge(flags.get("model") or {}, texts.get("model") or {})}
    d = apply_overrides(functools.reduce(merge, base), update)
    config = RunConfig.from_dict(d)
    for key in ("path", "data_dir"):
        if fresh or f"data.{key}" in explicit:
            _absolute(config.data, key)
    return resolve_run(config, explicit, strict)


def _absolute(data, key: str) -> None:
    """A data path as the user gave it, made absolute against the folder they gave it in: a
    run's config.json then names the files it was trained on, wherever it is loaded from (a
    relative path would read another folder's file of that name, without a word)."""
    value = getattr(data, key)
    if value is not None and not os.path.isabs(os.path.expanduser(value)):
        setattr(data, key, os.path.abspath(value))
    elif value is not None:
        setattr(data, key, os.path.expanduser(value))


def _same(key: str, a: Any, b: Any) -> bool:
    section, _, name = key.partition(".")
    if a == b:
        return True
    try:  # "1e-3" given as text and 0.001 as a number are one value
        return _config.typed_value(section, name, a) == _config.typed_value(section, name, b)
    except (ConfigError, KeyError):
        return False


def _refuse_clashes(flags: dict[str, Any], texts: dict[str, Any]) -> None:
    """A field that a flag (or a sweep's grid value) and a --set text both give, with two
    values, is refused in one line: one of the two would be dropped without a word."""
    a, b = flatten(flags, "."), flatten(texts, ".")
    for key in sorted(a.keys() & b.keys()):
        if not _same(key, a[key], b[key]):
            raise ConfigError(f"{key} is given twice, as {a[key]!r} (a flag, or a sweep's grid value) and as "
                              f"{b[key]!r} (--set {key}=...); give it once")


def build_config(preset: str | RunConfig | None = None, config_file: str | None = None,
                 overrides: list[str] | None = None, extra: dict | None = None) -> RunConfig:
    """Preset (a name, or a RunConfig to start from), then YAML file, then ``extra`` (CLI flags),
    then dotted overrides, built and checked (``resolve_run``). An option the chosen parts do not
    read is refused; what the user set (not the preset) even where it equals its default."""
    base: dict[str, Any] = (preset.to_dict() if isinstance(preset, RunConfig)
                            else load_preset(preset) if preset else {})
    user = load_yaml(config_file) if config_file else {}
    return _from_layers([base, user], extra, overrides, explicit_keys(extra, overrides) | _keys(user), fresh=True)


def config_from_dict(d: dict[str, Any], extra: dict | None = None, overrides: list[str] | None = None,
                     strict: bool = True) -> RunConfig:
    """The config a mapping describes (a run's ``config.json``, of this version or an earlier
    one), with ``extra`` and ``overrides`` on top (resuming a run), built and checked.
    ``strict=False`` loads a saved run: options it was trained with that nothing reads (an
    older vaelab checked less) are dropped or left for training to refuse, not refused here."""
    if not isinstance(d, dict):
        raise ConfigError("a config must be a mapping with keys data, model, train")
    return _from_layers([d], extra, overrides, explicit_keys(extra, overrides), strict)


def config_from_layers(layers: list[dict[str, Any]], strict: bool = True) -> RunConfig:
    """The config of mappings merged in their order (a preset, then values a program sets),
    built and checked as ``config_from_dict`` builds one. Each layer is folded on its own, so a
    later layer wins whichever spelling each uses (``model.hidden`` or ``model.mlp.hidden``);
    merged into one mapping first, the two spellings would be one layer setting both."""
    if not layers or not all(isinstance(x, dict) for x in layers):
        raise ConfigError("a config must be a mapping with keys data, model, train")
    return _from_layers(list(layers), None, None, set(), strict, fresh=True)


def resolve_run(config: RunConfig, explicit: set[str] | frozenset[str] = frozenset(), strict: bool = True) -> RunConfig:
    """Check ``config`` and make it whole, in place (again on a built config: a no-op but for
    the checks), and return it: the model (``vaelab.models.resolve_model``), the KL warm-up in
    epochs as the fraction of training the objective reads, then every option the chosen parts
    and data source do not read (``check_options_used``). ``explicit``: the "section.field"
    keys a user set, refused where they are not read even at their defaults. ``strict=False``
    (a saved run) refuses nothing that is only unread (see ``config_from_dict``)."""
    m, t = config.model, config.train
    resolve_model(m, {k for k in explicit if k.startswith("model.")}, strict)
    o = m.options.get(m.objective)
    if t.kl_warmup_epochs or "train.kl_warmup_epochs" in explicit:
        if not hasattr(o, "kl_warmup"):
            if not strict:
                return config
            warm = [n for n, e in OBJECTIVES.items() if e.options is not None and
                    "kl_warmup" in getattr(e.options, "__dataclass_fields__", {})]
            raise ConfigError(f"train.kl_warmup_epochs={t.kl_warmup_epochs} is not used: model.objective={m.objective} "
                              f"has no KL weight to warm up ({', '.join(warm)} have); leave it out")
        if t.kl_warmup_epochs:
            # The objective sees progress as a fraction of training; warm-up in epochs becomes one.
            o.kl_warmup = t.kl_warmup_epochs / t.epochs if t.epochs else 1.0
            check = OBJECTIVES[m.objective].check
            if check is not None:
                check(m)
    if strict:
        check_options_used(config, explicit)
    return config


def unused_options(config: RunConfig) -> dict[str, str]:
    """The options the chosen parts and data source of ``config`` do not read: "section.field"
    -> why (``vaelab.config.unused_options``, with the model fields the parts declare they read)."""
    return _config.unused_options(config, unread_fields(config.model))


def check_options_used(config: RunConfig, explicit: set[str] | frozenset[str] = frozenset()) -> None:
    """Refuse, in one line, an option of ``unused_options`` that is set: when it differs from
    its default, or even at its default when ``explicit`` names it (a user set it)."""
    _config.check_options_used(config, explicit, unread_fields(config.model))


def check_option_name(section: str, name: str) -> None:
    """Refuse, in one line, ``section.name`` that names no option: for the model section a
    field, a part's option (``iwae.k``) or an old flat name of one (``k``). Values are not
    checked (a sweep names its keys before any config is built)."""
    if section not in _SECTIONS or name in _hints(_SECTIONS[section]):
        return
    part, _, option = name.partition(".")
    if section == "model" and option:
        entries = [registry[part] for _, registry in PARTS.values() if part in registry]
        if not entries:
            raise ConfigError(f"model.{part} is no part (model.{name}); the parts: "
                              f"{', '.join(sorted({n for _, r in PARTS.values() for n in r}))}")
        options = [f.name for e in entries for f in option_fields(e)]
        if option not in options:
            raise ConfigError(f"unknown option model.{name} of {part}; its options: {', '.join(options) or 'none'}")
        return
    if section == "model" and name in aliases(PARTS):
        return
    raise ConfigError(f"unknown option '{section}.{name}'; valid {section} options: "
                      f"{', '.join(sorted(_hints(_SECTIONS[section])))}"
                      + (", or a part's options as model.PART.OPTION" if section == "model" else ""))


__all__ = ["build_config", "check_option_name", "check_options_used", "config_from_dict", "config_from_layers",
           "resolve_run", "unused_options"]
