"""`vaelab parts`: every registry's entries with one line of help and their options, and the
CLI help that names registry entries, built from the registries (nothing copied)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import cli_error, run_main

from vaelab.cli.parts import SECTIONS, parts_table


def registries() -> dict[str, dict]:
    """The registries themselves, imported here (not through parts.SECTIONS)."""
    from vaelab.anomaly.scores import SCORES
    from vaelab.data import DATASETS
    from vaelab.latent.pictures import PLOTS
    from vaelab.latent.sampling import SAMPLERS
    from vaelab.models import BODIES, LIKELIHOODS, MODELS, POSTERIORS, PRIORS
    from vaelab.objectives import OBJECTIVES
    from vaelab.training.loggers import LOGGERS

    return {"families": MODELS, "bodies": BODIES, "posteriors": POSTERIORS, "priors": PRIORS,
            "likelihoods": LIKELIHOODS, "objectives": OBJECTIVES, "samplers": SAMPLERS, "scores": SCORES,
            "data": DATASETS, "plots": PLOTS, "loggers": LOGGERS}


def sections_of(out: str) -> dict[str, list[str]]:
    """The printed listing: {section: [entry names]} (headings flush left, entries indented 2)."""
    found: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if not line.startswith(" "):
            current = line.split(" (")[0]
            found[current] = []
        elif not line.startswith("   "):
            found[current].append(line.split()[0])
    return found


def test_parts_lists_every_entry_of_every_registry_with_a_line_of_help(capsys):
    want = registries()
    assert list(SECTIONS) == list(want)
    table = parts_table()
    for section, registry in want.items():
        assert [r["name"] for r in table[section]] == list(registry), section
        missing = [r["name"] for r in table[section] if not r["help"]]
        assert not missing, f"{section}: no description or docstring for {missing}"
    rc, out, err = run_main(capsys, "parts")
    assert rc == 0, err
    assert sections_of(out) == {s: list(r) for s, r in want.items()}
    families = {r["name"]: r for r in table["families"]}
    for name, family in want["families"].items():  # a family names the parts it stands for
        details = families[name]["details"]
        assert (details["posterior"], details["prior"], details["objective"]) == (
            family.posterior, family.prior, family.objective)
        assert f"posterior {family.posterior}, prior {family.prior}, objective {family.objective}" in out


def test_one_section_and_a_samplers_options_are_its_constructors_defaults(capsys):
    from vaelab.latent.sampling import make_sampler

    rc, out, err = run_main(capsys, "parts", "samplers")
    assert rc == 0, err
    assert list(sections_of(out)) == ["samplers"]
    gmm = {r["name"]: r for r in parts_table(["samplers"])["samplers"]}["gmm"]
    made = make_sampler("gmm")  # its params leave out codes at its default, "mean" (saved fits stay current)
    assert {o["name"]: o["default"] for o in gmm["options"]} == {**made.params, "codes": made.codes}
    assert "components (int) = 10" in out


@dataclasses.dataclass
class FakeOptions:
    width: int = dataclasses.field(default=7, metadata={"help": "how wide the fake prior is"})
    spread: float = 0.25


class FakePrior:
    """A prior for this test only. More text that is not shown."""

    options = FakeOptions


def test_an_entry_that_declares_options_shows_their_names_defaults_and_help(monkeypatch, capsys):
    from vaelab.models import PRIORS

    monkeypatch.setitem(PRIORS, "fake", FakePrior)
    fake = {r["name"]: r for r in parts_table(["priors"])["priors"]}["fake"]
    assert fake["help"] == "A prior for this test only."
    assert fake["options"] == [{"name": "width", "type": "int", "default": 7, "help": "how wide the fake prior is"},
                               {"name": "spread", "type": "float", "default": 0.25, "help": ""}]
    rc, out, err = run_main(capsys, "parts", "priors")
    assert rc == 0, err
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split()[:1] == ["fake"])
    assert lines[at].split(None, 1)[1] == "A prior for this test only."
    assert lines[at + 1].split() == ["width", "(int)", "=", "7", "how", "wide", "the", "fake", "prior", "is"]
    assert lines[at + 2].split() == ["spread", "(float)", "=", "0.25"]


def test_json_round_trips(capsys):
    rc, out, err = run_main(capsys, "parts", "--json")
    assert rc == 0, err
    assert json.loads(out) == json.loads(json.dumps(parts_table()))
    rc, out, _ = run_main(capsys, "parts", "scores", "--json")
    scores = json.loads(out)
    assert list(scores) == ["scores"]
    assert {r["name"]: r["details"].get("needs") for r in scores["scores"]}["iwnll"] == "density"


def test_an_unknown_section_is_one_line(capsys):
    err = cli_error(capsys, "parts", "gizmos")
    assert "'gizmos' is not one of" in err and "'families'" in err and "'plots'" in err


# ----------------------------------------------------------------------------- help built from registries
def test_the_executor_help_is_built_from_the_executors(monkeypatch, capsys):
    from vaelab.sweep.executors import EXECUTORS

    def slurm(*args, **kwargs):
        """Jobs on a Slurm cluster (this test's own)."""

    monkeypatch.setitem(EXECUTORS, "slurm", slurm)
    rc, out, _ = run_main(capsys, "sweep", "--help")
    assert rc == 0
    text = " ".join(out.split())
    for name in EXECUTORS:
        assert f"{name}: " in text
    assert "slurm: Jobs on a Slurm cluster (this test's own)" in text


def test_sampler_and_score_help_name_every_entry_that_reads_them(capsys):
    from vaelab.anomaly.scores import SCORES
    from vaelab.latent.sampling import COVARIANCES, SAMPLERS

    rc, out, _ = run_main(capsys, "sample", "--help")
    text = " ".join(out.split()).replace("- ", "-")  # click wraps "class-gmm" after its hyphen
    assert f"[{'|'.join(COVARIANCES)}]" in text
    assert "Mixture components (gmm default 10, class-gmm default 3)" in text
    conditional = [n for n, s in SAMPLERS.items() if s.conditional]
    assert f"Class to sample, by name or number: {', '.join(conditional)} need one" in text
    rc, out, _ = run_main(capsys, "detect", "--help")
    text = " ".join(out.split())
    for name, score in SCORES.items():
        assert name in text.split("--score", 1)[1].split("--contamination")[0], name
    assert "elbo, iwnll need a density" in text


def test_each_plot_option_names_the_kinds_that_read_it(capsys):
    from vaelab.latent.pictures import PLOTS, plot_options

    rc, out, _ = run_main(capsys, "plot", "--help")
    text = " ".join(out.split()).replace("/ ", "/")
    for option, param in (("--n", "n"), ("--steps", "steps"), ("--between", "mode"), ("--class", "cls")):
        kinds = "/".join(k for k in PLOTS if param in plot_options(k))
        assert kinds and f"{option} " in text and f" {kinds}: " in text.split(f"{option} ", 1)[1][:120], option


@pytest.mark.parametrize("command, option, source", [
    ("explore", "--projection", "vaelab.explore.projection:PROJECTIONS"),
    ("fit-prior", "--prior", "vaelab.latent.pixelcnn:LEARNED_PRIORS"),
    ("sweep", "--executor", "vaelab.sweep.executors:EXECUTORS"),
    ("eval-samples", "--covariance", "vaelab.latent.sampling:COVARIANCES"),
    ("train", "--train-split", "vaelab.config:TRAIN_SPLITS"),
])
def test_choices_are_the_registry_keys(command, option, source):
    from vaelab.cli import cli
    from vaelab.cli.options import RegistryChoice, registry

    p = next(p for p in cli.commands[command].params if option in p.opts)
    assert isinstance(p.type, RegistryChoice) and p.type._source == source  # read from it, not copied
    assert list(p.type.choices) == list(registry(source))
