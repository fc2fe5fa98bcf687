"""``vaelab parts``: every family, model part, sampler, score, data source, plot kind and logger,
each with one line of help and its options, read from the registries themselves.

``parts_table()`` builds the listing (tests and ``--json`` read it); nothing here repeats a
registry's contents. An entry's help is its ``description`` when it has one, else the first
sentence of its class's or function's docstring. Its options are the fields of the dataclass
it declares as ``options`` (name, type, default and ``metadata["help"]``), or, for samplers,
the parameters their constructor takes.
"""

from __future__ import annotations

import dataclasses
import json

import click

from vaelab.cli.options import _echo, describe, registry

# section -> (its registry, what chooses one of its entries)
SECTIONS: dict[str, tuple[str, str]] = {
    "families": ("vaelab.models:MODELS", "--kind, model.kind"),
    "bodies": ("vaelab.models:BODIES", "model.arch"),
    "posteriors": ("vaelab.models:POSTERIORS", "model.posterior"),
    "priors": ("vaelab.models:PRIORS", "--prior, model.prior"),
    "likelihoods": ("vaelab.models:LIKELIHOODS", "--loss, model.loss"),
    "objectives": ("vaelab.objectives:OBJECTIVES", "--objective, model.objective"),
    "samplers": ("vaelab.latent.sampling:SAMPLERS", "sample --sampler"),
    "scores": ("vaelab.anomaly.scores:SCORES", "detect --score"),
    "data": ("vaelab.data:DATASETS", "--data, data.name"),
    "plots": ("vaelab.latent.pictures:PLOTS", "plot --kind"),
    "loggers": ("vaelab.training.loggers:LOGGERS", "train --log"),
}



def _json_value(v):
    if isinstance(v, (frozenset, set)):
        return sorted(v)
    if isinstance(v, tuple):
        return list(v)
    return v if v is None or isinstance(v, (str, int, float, bool, list, dict)) else str(v)


def options(entry) -> list[dict]:
    """The options an entry declares: the fields of its ``options`` dataclass, or a sampler's
    constructor parameters; each {name, type, default, help}."""
    declared = getattr(entry, "options", None)
    if dataclasses.is_dataclass(declared):  # the type (its defaults), or an instance (its values)
        out = []
        for f in dataclasses.fields(declared):
            default = (getattr(declared, f.name) if not isinstance(declared, type)
                       else f.default if f.default is not dataclasses.MISSING
                       else f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            out.append({"name": f.name, "type": kind, "default": _json_value(default),
                        "help": f.metadata.get("help", "")})
        return out + [o for o in _sampler_settings(entry) if o["name"] not in {f.name for f in dataclasses.fields(declared)}]
    return _sampler_settings(entry)


def _sampler_settings(entry) -> list[dict]:
    """A sampler's constructor settings (with those of its bases: ``codes``), each {name, type, default, help}."""
    from vaelab.latent.sampling import Sampler

    if not (isinstance(entry, type) and issubclass(entry, Sampler)):
        return []
    return [{"name": p.name, "type": p.annotation if isinstance(p.annotation, str) else
             getattr(p.annotation, "__name__", ""), "default": _json_value(p.default), "help": ""}
            for p in entry.settings().values() if p.default is not p.empty]


def _details(entry) -> dict:
    """A dataclass entry's plain fields that say something (a family's parts, a score's needs):
    not its code, not None, not a field's own default."""
    if not dataclasses.is_dataclass(entry) or isinstance(entry, type):
        return {}
    out = {}
    for f in dataclasses.fields(entry):
        v = getattr(entry, f.name)
        if f.name in ("description", "options") or callable(v) or v is None or v == f.default or v == frozenset():
            continue  # said elsewhere, code, or nothing beyond the usual
        out[f.name] = _json_value(v)
    return out


def parts_table(sections: list[str] | None = None) -> dict[str, list[dict]]:
    """{section: [{name, help, details, options}, ...]} for ``sections`` (default: every one)."""
    table = {}
    for section in sections or list(SECTIONS):
        source, _ = SECTIONS[section]
        table[section] = [{"name": name, "help": describe(entry), "details": _details(entry),
                           "options": options(entry)} for name, entry in registry(source).items()]
    return table


def _show(v) -> str:
    return ", ".join(map(str, v)) if isinstance(v, list) else str(v)


@click.command()
@click.argument("section", required=False, metavar="[SECTION]", type=click.Choice(list(SECTIONS)))
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON.")
def parts(section, as_json) -> None:
    """List the model families, parts, samplers, scores, data sources and plot kinds, with
    one line of help and their options (SECTION: only that list)."""
    table = parts_table([section] if section else None)
    if as_json:
        _echo(json.dumps(table, indent=2))
        return
    for name, rows in table.items():
        _echo(f"{name} ({SECTIONS[name][1]})")
        width = max(len(r["name"]) for r in rows) + 2
        pad = " " * (width + 2)
        for r in rows:
            _echo(f"  {r['name']:<{width}}{r['help']}".rstrip())
            if r["details"]:
                _echo(pad + ", ".join(f"{k} {_show(v)}" for k, v in r["details"].items()))
            for o in r["options"]:
                kind = f" ({o['type']})" if o["type"] else ""
                text = f"  {o['help']}" if o["help"] else ""
                _echo(f"{pad}{o['name']}{kind} = {o['default']!r}{text}")
