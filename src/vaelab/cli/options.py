"""Options and helpers shared by the command modules."""

from __future__ import annotations

import inspect
import re

import click

COMMON_FLAGS = {
    # flag name -> (section, field)
    "data": ("data", "name"), "data_dir": ("data", "data_dir"), "data_path": ("data", "path"),
    "train_split": ("data", "train_split"), "val": ("data", "val"), "image_size": ("data", "image_size"),
    "limit": ("data", "limit"), "latent_dim": ("model", "latent_dim"), "loss": ("model", "loss"),
    "kind": ("model", "kind"), "objective": ("model", "objective"), "prior": ("model", "prior"),
    "beta": ("model", "beta"), "epochs": ("train", "epochs"), "seed": ("train", "seed"),
    "batch_size": ("train", "batch_size"), "lr": ("train", "lr"), "device": ("train", "device"),
}


# Options of the commands that work on a saved run.
split_option = click.option("--split", help="train, val or test (default: test, else val, else train).")
run_data_dir_option = click.option("--data-dir", help="Where the data set lives, if not where it was at training time.")
device_option = click.option("--device", default="auto", show_default=True,
                             help="auto (CUDA when present), cpu, cuda, cuda:N.")


class RegistryChoice(click.Choice):
    """A choice among the keys of a registry (``"vaelab.latent.pictures:PLOTS"``), read each
    time it is needed: adding a registry entry needs no CLI edit, and ``vaelab --help`` does
    not import the registries' modules (torch among them)."""

    def __init__(self, source: str, case_sensitive: bool = True):
        self._source = source
        super().__init__((), case_sensitive)

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(registry(self._source))

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ assigns it; the registry decides
        pass


def registry(source: str):
    """The registry ``"module:NAME"`` (a dict, or a tuple of names), imported now."""
    import importlib

    module, name = source.split(":")
    return getattr(importlib.import_module(module), name)


class RegistryHelp(click.Option):
    """An option whose ``help`` may be a function, called when the help is shown: a help text
    that names a registry's entries is built from the registry, and ``vaelab --help`` still
    imports none of them."""

    def __init__(self, *args, help=None, **kwargs):  # help: click's own name
        self._help_fn = help if callable(help) else None
        super().__init__(*args, help=None if callable(help) else help, **kwargs)

    def get_help_record(self, ctx):
        if self._help_fn is not None:
            self.help = self._help_fn()
        return super().get_help_record(ctx)


def registry_help(source: str) -> str:
    """Each entry of a registry and its one line of help: ``"local: ...; ray: ..."``."""
    return "; ".join(f"{name}: {describe(entry).rstrip('.')}" for name, entry in registry(source).items()) + "."


def takers(source: str, param: str) -> str:
    """The entries of a registry whose function (a class: its constructor) takes keyword ``param``,
    each with its default: ``"gmm default 10, class-gmm default 3"``."""
    import inspect

    found = []
    for name, entry in registry(source).items():
        params = (entry.settings() if hasattr(entry, "settings") else  # a sampler: with its bases' settings
                  inspect.signature(entry.__init__ if isinstance(entry, type) else entry).parameters)
        p = params.get(param)
        if p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            found.append(name if p.default is p.empty else f"{name} default {p.default}")
    return ", ".join(found)


def data_dir_help(more: str = "") -> str:
    """--data-dir: the folder holding the downloadable data sets, each in its own sub-folder."""
    names = [f"{name}/" for name in registry("vaelab.data.download:SOURCES")]
    return f"Folder holding {', '.join(names[:-1])} and {names[-1]}{more}." if len(names) > 1 else \
        f"Folder holding {names[0]}{more}."


def _echo(msg: str) -> None:
    click.echo(msg)


def _print_eval(result: dict) -> None:
    """A table of ``result`` (eval.json, summary.json): a field without a value (None, from
    older files) is left out, and ``not_applicable`` ({field: reason}) is said in words after it;
    ``checkpoint_id`` (which weights made the file) is bookkeeping, not a result: left out."""
    rows = []
    flat = {}
    for k, v in result.items():  # a section (summary.json's timing) as section.field rows
        if isinstance(v, dict) and k != "not_applicable":
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            flat[k] = v
    for k, v in flat.items():
        if v is None or k in ("not_applicable", "checkpoint_id"):
            continue
        if k == "kl_per_dim":
            v = "[" + ", ".join(f"{x:.2f}" for x in v[:10]) + (", ...]" if len(v) > 10 else "]")
        elif isinstance(v, float):
            v = f"{v:.4f}"
        rows.append((k, str(v)))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        _echo(f"  {k:<{width}}  {v}")
    for k, why in result.get("not_applicable", {}).items():
        _echo(f"  ({k} not applicable: {why})")


_SENTENCE = re.compile(r"(.+?\.)(?=\s+[A-Z(`]|$)")  # up to a full stop before a capital ("et al. 2017" goes on)


def describe(entry) -> str:
    """One line about a registry entry: its ``description``, else the first sentence of its
    docstring (a class's or function's own, never one inherited or a container type's)."""
    if entry is None:  # an entry that leaves the part out (model.prior=none)
        return "nothing: the model goes without this part"
    text = getattr(entry, "description", None)
    if not isinstance(text, str):
        own = inspect.isclass(entry) or inspect.isroutine(entry)
        text = entry.__dict__.get("__doc__") if inspect.isclass(entry) else entry.__doc__ if own else None
    if not text:
        return ""
    paragraph = " ".join(inspect.cleandoc(text).split("\n\n")[0].split()).replace("``", "`")
    m = _SENTENCE.match(paragraph)
    return m.group(1) if m else paragraph
