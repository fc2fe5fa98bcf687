"""README.md and bench/README.md against the code: the preset table against the preset files
and `vaelab presets`, every command, option and named choice against the CLI and the
registries, the family, plot, sampler and score lists against their registries.

Nothing here trains; the checks read the Markdown and the registries only."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import click
import pytest
from conftest import run_main

from vaelab.cli import cli
from vaelab.config import RunConfig, preset_names
from vaelab.configure import build_config
from vaelab.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BENCH_README = REPO / "bench" / "README.md"


# ----------------------------------------------------------------------------- Markdown pieces
@dataclasses.dataclass
class Block:
    """A fenced code block: its language, its text, whether `<!-- tour -->` precedes it, its line."""
    lang: str
    text: str
    tour: bool
    line: int


def code_blocks(md: str) -> list[Block]:
    blocks, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        prev = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        start, i = i, i + 1
        while i < len(lines) and not lines[i].startswith("```"):
            i += 1
        blocks.append(Block(m.group(1), "\n".join(lines[start + 1:i]), prev == "<!-- tour -->", start + 1))
        i += 1
    return blocks


def commands(block: Block) -> list[str]:
    """The shell commands of a block: a bash/sh block's lines, a console block's `$ ` lines;
    continuation lines joined, comments dropped."""
    out: list[str] = []
    pending = ""
    for raw in block.text.splitlines():
        if block.lang == "console" and not pending:
            if not raw.startswith("$ "):
                continue
            raw = raw[2:]
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        words = shlex.split(line, comments=True)
        if words:
            out.append(shlex.join(words))
    return out


def prose(md: str) -> str:
    """The Markdown outside fenced code blocks."""
    return re.sub(r"^```.*?^```", "", md, flags=re.DOTALL | re.MULTILINE)


def inline_code(md: str) -> list[str]:
    """Every `inline code` span of the prose, line breaks inside a span read as spaces."""
    return [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", prose(md))]


def table_after(md: str, header: str) -> list[dict[str, str]]:
    """The Markdown table whose header row starts with ``| header |``: one dict per row."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    cells = lambda line: [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
    cols = cells(lines[start])
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(cols, cells(line))))
    return rows


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# ----------------------------------------------------------------------------- the CLI
def resolve(words: list[str]) -> tuple[click.Command, list[str]] | None:
    """(the click command, its arguments) of ``vaelab ...`` / ``python -m vaelab ...`` /
    ``torchrun ... -m vaelab ...``; None for any other program."""
    if words[:1] == ["vaelab"]:
        rest = words[1:]
    elif "-m" in words and words[words.index("-m") + 1:words.index("-m") + 2] == ["vaelab"]:
        rest = words[words.index("-m") + 2:]
    else:
        return None
    command: click.Command = cli
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        assert sub is not None, f"`vaelab {rest[0]}` is no command of {command.name}: {shlex.join(words)}"
        command, rest = sub, rest[1:]
    return command, rest


def option(command: click.Command, name: str) -> click.Parameter | None:
    return next((p for p in command.params if name in getattr(p, "opts", ())), None)


def all_options(name: str) -> list[click.Parameter]:
    """Every option called ``name`` in any command."""
    found = []
    stack: list[click.Command] = [cli]
    while stack:
        c = stack.pop()
        if isinstance(c, click.Group):
            stack += list(c.commands.values())
        if (p := option(c, name)) is not None:
            found.append(p)
    return found


PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_.]*$|\||\.\.\.")  # RUN, N, DIR, a|b, ...


def check_value(name: str, value: str, params: list[click.Parameter], where: str) -> None:
    """``value`` of option ``name`` is one its parameters accept (presets: a preset name)."""
    if not value or PLACEHOLDER.search(value) or value.startswith("-"):
        return
    if name == "--preset":
        assert value in preset_names(), f"{where}: no preset {value!r} (presets: {', '.join(preset_names())})"
        return
    choices = [p.type.choices for p in params if isinstance(p.type, click.Choice)]
    if choices and len(choices) == len(params):
        allowed = set().union(*map(set, choices))
        assert value in allowed, f"{where}: {name} {value!r} is none of {sorted(allowed)}"


_CONFIG = build_config("mlp-vae")
FIELDS = {section: {f.name for f in dataclasses.fields(getattr(_CONFIG, section))} for section in ("data", "model", "train")}


FILE_SUFFIXES = {".safetensors", ".json", ".csv", ".png", ".npy", ".npz", ".yaml", ".py", ".html"}


def check_field(setting: str, where: str) -> None:
    """``section.field=...``: a config field that exists, or a part's option (``model.PART.OPTION``,
    or its old flat name ``model.k``)."""
    from vaelab.configure import check_option_name

    key = setting.split("=", 1)[0]
    if key in ("section.field", "model.PART.OPTION"):  # the README's placeholders
        return
    section, _, field = key.partition(".")
    if section == "model" and field not in FIELDS[section]:
        try:
            check_option_name(section, field)
        except ConfigError as e:
            raise AssertionError(f"{where}: {e}") from None
        return
    assert section in FIELDS and field in FIELDS[section], f"{where}: no config field {key!r}"


def check_command(words: list[str], where: str) -> None:
    resolved = resolve(words)
    if resolved is None:
        return
    command, args = resolved
    i = 0
    while i < len(args):
        word = args[i].strip("[]")
        i += 1
        if not word.startswith("--"):
            continue
        name, _, inline = word.partition("=")
        p = option(command, name)
        assert p is not None, f"{where}: `vaelab {command.name}` has no option {name} ({shlex.join(words)})"
        if getattr(p, "is_flag", False) or inline:
            continue
        value = args[i].strip("[]") if i < len(args) else ""
        i += 1
        check_value(name, value, [p], where)
        if name in ("--set", "--grid"):
            check_field(value, where)


def doc_commands(path: Path) -> list[tuple[list[str], str]]:
    """Every command of every code block and every inline span that starts with ``vaelab``."""
    md = path.read_text()
    found = [(shlex.split(c), f"{path.relative_to(REPO)}:{b.line}") for b in code_blocks(md) for c in commands(b)]
    found += [(shlex.split(s), f"{path.relative_to(REPO)} `{s}`") for s in inline_code(md)
              if s.startswith("vaelab ") and "..." not in s]
    return found


# ----------------------------------------------------------------------------- the preset table
def preset_rows() -> dict[str, dict[str, str]]:
    rows = {ticked(r["preset"])[0]: r for r in table_after(README.read_text(), "preset")}
    # "as `NAME`" in a cell stands for that preset's cell; "as above" for the row above.
    names = list(rows)
    for i, name in enumerate(names):
        for col, cell in rows[name].items():
            if m := re.fullmatch(r"as `([\w-]+)`", cell):
                rows[name][col] = rows[m.group(1)][col]
            elif cell == "as above":
                rows[name][col] = rows[names[i - 1]][col]
    return rows


def number(text: str) -> float:
    return float(text.replace(",", ""))


def input_size(cfg: RunConfig) -> int:
    if cfg.data.name == "folder":
        return (cfg.data.channels or 3) * cfg.data.image_size ** 2
    return 28 * 28


def test_preset_table_lists_every_preset_file_once():
    rows = [ticked(r["preset"])[0] for r in table_after(README.read_text(), "preset")]
    files = sorted(p.stem for p in (REPO / "src" / "vaelab" / "presets").glob("*.yaml"))
    assert sorted(rows) == files == sorted(preset_names())
    assert len(rows) == len(set(rows))


@pytest.mark.parametrize("name", preset_names())
def test_preset_table_row_matches_the_preset_file(name):
    row = preset_rows()[name]
    cfg = build_config(name)
    m, d, t = cfg.model, cfg.data, cfg.train
    model, data, recipe = row["model"], row["data"], row["recipe"]
    assert ticked(row["kind/arch"]) == [f"{m.kind}/{m.arch}"], row["kind/arch"]

    # Layer sizes: an MLP's chain input-hidden-...-latent (two for two stochastic layers),
    # a conv body's channels, its Dense layer and latent size.
    chains = [[int(v) for v in c.split("-")] for c in re.findall(r"\b\d+(?:-\d+)+\b", model)]
    latent = re.search(r"latent (\d+)", model)
    body = m.opts(m.arch)
    if m.arch == "mlp":
        if m.kind == "hvae":
            two = m.opts("gaussian2")
            want = [[input_size(cfg), *body.hidden, two.latent_dims[0]], [two.latent_dims[0], *two.hidden2,
                                                                        two.latent_dims[1]]]
        else:
            want = [[input_size(cfg), *body.hidden, m.latent_dim]]
        assert chains[:len(want)] == want, f"{name}: the README says {model!r}"
        if body.decoder_hidden:
            assert re.search(r"decoder " + "-".join(map(str, body.decoder_hidden)) + r"\b", model), model
    else:
        conv = re.search(r"Conv (\d+(?:[/-]\d+)*)", model)
        assert conv, f"{name}: the README names no conv channels: {model!r}"
        assert [int(v) for v in re.split(r"[/-]", conv.group(1))] == list(body.channels), model
        dense = re.search(r"Dense (\d+)", model)
        assert (int(dense.group(1)) if dense else None) == (body.dense[0] if body.dense else None), model
        assert latent, f"{name}: the README gives no latent size: {model!r}"
    if latent:
        assert int(latent.group(1)) == m.latent_dim, model
    if "tanh output" in model:
        assert m.output_activation == "tanh"

    # Data: the set, the training split, the validation, binarisation.
    if "MNIST" in data:
        assert d.name == ("fashion-mnist" if "Fashion-MNIST" in data else "mnist"), data
        assert d.train_split == ("train+test" if "train+test" in data else "train"), data
    else:
        assert "your 64x64 RGB folder" in data, data
        assert (d.name, d.image_size, d.channels) == ("folder", 64, 3)
    val = {"test each epoch": "test", "no validation": "none", "a seeded 10% for validation": "0.1"}
    said = [v for k, v in val.items() if k in data]
    assert said == [d.val], f"{name}: data.val is {d.val!r}; the README says {data!r}"
    assert ("dynamically binarised" in data) == (d.binarize == "dynamic"), data

    # Recipe: loss, learning rate, Adam's epsilon, batch, epochs, beta.
    assert re.match(r"\w+", recipe).group(0) == m.loss, recipe
    assert number(re.search(r"Adam (\d[\d.e-]*)", recipe).group(1)) == t.lr, recipe
    eps = re.search(r"eps (\d[\d.e-]*)", recipe)
    if eps:
        assert number(eps.group(1)) == t.adam_eps, recipe
    else:
        assert t.adam_eps == 1e-8, f"{name}: Adam eps {t.adam_eps} is not in the README: {recipe!r}"
    assert int(re.search(r"batch (\d+)", recipe).group(1)) == t.batch_size, recipe
    assert int(number(re.search(r"([\d,]+) epochs\b", recipe).group(1))) == t.epochs, recipe
    beta = re.search(r"beta (\d[\d.e-]*)", recipe)
    kl_weight = getattr(m.options.get(m.objective), "beta", 1.0)  # elbo's and tcvae's option
    assert (number(beta.group(1)) if beta else 1.0) == kl_weight, recipe


def test_preset_table_parameters_and_kinds_match_vaelab_presets(capsys):
    rc, out, err = run_main(capsys, "presets")
    assert rc == 0, err
    listed = {}
    for line in out.strip().splitlines():
        name, kind_arch, params = line.split()[:3]
        listed[name] = (kind_arch, int(params.replace(",", "")))
    rows = preset_rows()
    assert set(listed) == set(rows)
    for name, (kind_arch, params) in listed.items():
        said = re.search(r"([\d,]+) params", rows[name]["model"])
        assert said, f"{name}: the README's table gives no parameter count"
        assert (ticked(rows[name]["kind/arch"])[0], int(number(said.group(1)))) == (kind_arch, params), name


def test_preset_descriptions_in_the_prose_match_the_preset_files():
    """"The `NAME` preset (784-400-20, ...)": the chain of layer sizes in the parenthesis."""
    seen = 0
    for path in (README, BENCH_README):
        text = " ".join(path.read_text().split())
        for name, inside in re.findall(r"`([\w-]+)` preset \(([^)]*)", text):
            cfg = build_config(name)
            for chain in re.findall(r"\b\d+(?:-\d+){2,}\b", inside):
                assert cfg.model.arch == "mlp", f"{path.relative_to(REPO)}: {name} is not an MLP: {inside!r}"
                want = "-".join(map(str, [input_size(cfg), *cfg.model.opts("mlp").hidden, cfg.model.latent_dim]))
                assert chain == want, f"{path.relative_to(REPO)}: the {name} preset is {want}, not {chain}"
                seen += 1
    assert seen >= 3  # mlp-vae, cvae, iwae-paper in bench/README.md


# ----------------------------------------------------------------------------- commands and options
def test_every_command_in_the_readmes_exists_with_its_options_and_choices():
    found = doc_commands(README) + doc_commands(BENCH_README)
    vaelab_commands = [w for w, _ in found if resolve(w) is not None]
    assert len(vaelab_commands) > 60
    for words, where in found:
        check_command(words, where)


def test_options_named_in_the_prose_exist_and_their_values_are_choices():
    """`--kind vae --objective iwae`, `--sampler prior`, `--score msssim`, `--set model.x=...`,
    `model.corrupt`: each option is some command's, each value one it accepts, each field real."""
    checked = 0
    for path in (README,):
        for span in inline_code(path.read_text()):
            if span.startswith("vaelab "):
                continue  # whole commands: the test above
            words = span.split()
            if words[0] in cli.commands:  # `plot --kind styles`: a command without its `vaelab`
                check_command(["vaelab", *shlex.split(span)], f"{path.relative_to(REPO)} `{span}`")
                checked += 1
                continue
            tokens = shlex.split(span) if span.startswith("--") else []
            for i, word in enumerate(tokens):
                if not word.startswith("--"):
                    continue
                name, _, inline = word.partition("=")
                params = all_options(name)
                assert params, f"{path.relative_to(REPO)}: no command has {name} (`{span}`)"
                checked += 1
                value = inline or (tokens[i + 1] if i + 1 < len(tokens) else "")
                if not getattr(params[0], "is_flag", False):
                    check_value(name, value, params, f"{path.relative_to(REPO)} `{span}`")
                    if name in ("--set", "--grid") and value:
                        check_field(value, f"{path.relative_to(REPO)} `{span}`")
            if re.fullmatch(r"(data|model|train)\.\w+(=\S*)?", span) and Path(span).suffix not in FILE_SUFFIXES:
                check_field(span, f"{path.relative_to(REPO)} `{span}`")
                checked += 1
    assert checked > 100


def test_the_train_flags_the_readme_lists_exist():
    text = " ".join(README.read_text().split())
    listed = re.search(r"Change anything with flags \(`([^`]+)`\)", text).group(1)
    names = re.findall(r"--[\w-]+", listed)
    assert len(names) >= 15
    missing = [n for n in names if option(cli.commands["train"], n) is None]
    assert not missing, f"`vaelab train` lacks {missing}"


def test_every_command_of_the_cli_is_in_the_readme():
    text = " ".join(README.read_text().split())
    for name, command in cli.commands.items():
        names = [f"{name} {sub}" for sub in command.commands] if isinstance(command, click.Group) else [name]
        for n in names:
            assert f"vaelab {n}" in text, f"`vaelab {n}` is not in README.md"


# ----------------------------------------------------------------------------- registries
def test_family_table_matches_vaelab_parts():
    """Every family `vaelab parts` lists has a row, every row names one of them, and the
    parts a row names are the family's."""
    from vaelab.cli.parts import parts_table

    families = {f["name"]: f["details"] for f in parts_table(["families"])["families"]}
    rows = table_after(README.read_text(), "`--kind`")
    named = [ticked(r["`--kind`"])[0] for r in rows]
    assert not set(families) - set(named), f"no README row for {sorted(set(families) - set(named))}"
    assert not set(named) - set(families), f"the README names no family {sorted(set(named) - set(families))}"
    assert named == list(families)  # in the registry's order, each once
    for r in rows:
        family = families[ticked(r["`--kind`"])[0]]
        cell = r["parts (posterior, prior, objective)"]
        while "(" in cell:  # drop the remarks in parentheses, innermost first
            cell = re.sub(r"\([^()]*\)", "", cell)
        parts = [p.strip() for p in cell.split(",")]
        assert parts == [family["posterior"], family["prior"], family["objective"]], r


def test_plot_kinds_samplers_and_scores_match_their_registries():
    from vaelab.anomaly.scores import SCORES
    from vaelab.latent.pictures import PLOTS
    from vaelab.latent.sampling import SAMPLERS

    md = README.read_text()
    kinds = [k for r in table_after(md, "kind") for k in ticked(r["kind"])]
    assert sorted(kinds) == sorted(PLOTS)
    text = " ".join(prose(md).split())
    samplers = re.findall(r"`([\w-]+)` \(", re.search(r"Samplers: (.*?)\. They work", text).group(1))
    assert sorted(samplers) == sorted(SAMPLERS)
    scores = ticked(re.search(r"Scores: (.*?)\. `detect`", text).group(1))
    assert sorted(scores) == sorted(SCORES)


def test_model_parts_listed_match_their_registries():
    from vaelab.models import BODIES, LIKELIHOODS, POSTERIORS, PRIORS

    text = " ".join(prose(README.read_text()).split())
    for field, registry in (("arch", BODIES), ("posterior", POSTERIORS), ("prior", PRIORS), ("loss", LIKELIHOODS)):
        listed = re.search(rf"\(`model\.{field}`: ([^)]*)\)", text).group(1)
        assert sorted(v.strip() for v in listed.split(",")) == sorted(registry), field


def test_every_run_the_readme_reads_is_one_it_trains():
    """`vaelab sample runs/NAME ...` reads a run some README command makes (`--out runs/NAME`)."""
    made, read = set(), []
    for words, where in doc_commands(README):
        resolved = resolve(words)
        if resolved is None:
            continue
        command, args = resolved
        if "--out" in args and command.name in ("train", "sweep", "anomaly-bench", "experiment"):
            made.add(args[args.index("--out") + 1])
        positional = [p for p in command.params if isinstance(p, click.Argument)]
        if positional and positional[0].name in ("run_dir", "folder") and args and not args[0].startswith("-"):
            read.append((args[0], where))
    assert "runs/mlp-vae" in made and len(read) > 20
    for path, where in read:
        if PLACEHOLDER.search(path) or path.startswith("/"):
            continue
        assert any(path == m or path.startswith(m + "/") for m in made), f"{where}: no README command makes {path}"


def test_experiment_table_matches_the_experiments():
    from vaelab.sweep.experiments import EXPERIMENTS, QUICK, QUICK_EPOCHS

    md = README.read_text()
    rows = table_after(md, "experiment")
    assert [ticked(r["experiment"])[0] for r in rows] == list(EXPERIMENTS)
    text = " ".join(prose(md).split())
    epochs = int(re.search(r"\(held out\), (\d+) epochs per trial", text).group(1))
    assert {e.epochs for e in EXPERIMENTS.values()} == {epochs}
    digits, quick_epochs = re.search(r"`--quick` uses a seeded random ([\d,]+) of the training digits for (\d+) epochs",
                                     text).groups()
    assert (QUICK, QUICK_EPOCHS) == ([f"data.limit={digits.replace(',', '')}"], int(quick_epochs))
    for r in rows:
        exp = EXPERIMENTS[ticked(r["experiment"])[0]]
        for latent in re.findall(r"latent (\d+)", r["what it trains"]):
            assert f"latent {latent}" in exp.description, (r, exp.description)


def test_every_test_the_promises_name_exists():
    """The README's "What vaelab promises" table names the tests that hold each promise:
    each named file and test function exists, so a renamed test cannot leave a promise unheld."""
    text = README.read_text()
    section = text[text.index("## What vaelab promises"):text.index("## Errors")]
    named, current = [], None
    for m in re.finditer(r"`(tests/[\w/]+\.py)?(::\w+)?`", section):
        if m.group(1):
            current = m.group(1)
            assert (README.parent / current).is_file(), f"the promises name {current}, which does not exist"
        if m.group(2):
            named.append((current, m.group(2)[2:]))
    assert len(named) >= 10
    for path, test in named:
        assert re.search(rf"^def {test}\(", (README.parent / path).read_text(), re.MULTILINE), f"{path} has no {test}"


def script_options(path: Path) -> set[str]:
    """The option strings a bench script's argparse parser defines (read from its source:
    ``add_argument("--x", ...)``), so the check imports no script."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            found |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")}
    return found


def test_every_bench_script_the_docs_run_exists_with_its_options():
    """`python bench/X.py --opt ...` in the READMEs: the script is there and defines each option
    (a renamed option or an --out that moved would leave a command that fails as written)."""
    docs = [README, BENCH_README, REPO / "bench" / "peers" / "README.md", REPO / "bench" / "peers" / "PYTHAE.md"]
    checked = 0
    for md in docs:
        text = md.read_text()
        found = [(c, f"{md.relative_to(REPO)}:{b.line}") for b in code_blocks(text)
                 if b.lang in ("sh", "bash", "console") for c in commands(b)]
        found += [(s, f"{md.relative_to(REPO)} `{s}`") for s in inline_code(text) if re.search(r"bench/[\w/]+\.py", s)]
        for command, where in found:
            lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            tokens = list(lexer)
            starts = [0] + [i + 1 for i, w in enumerate(tokens) if w and set(w) <= set(";&|")]
            for begin, end in zip(starts, starts[1:] + [len(tokens) + 1]):
                words = tokens[begin:end - 1] if end <= len(tokens) else tokens[begin:]
                at = next((i for i, w in enumerate(words) if re.search(r"(^|/)bench/[\w/]+\.py$", w)), None)
                if at is None:
                    continue
                script = REPO / words[at][words[at].index("bench/"):]
                assert script.is_file(), f"{where}: no script {script.relative_to(REPO)}"
                options = script_options(script)
                for word in words[at + 1:]:
                    if word.startswith("--"):
                        name = word.split("=", 1)[0]
                        assert name in options, f"{where}: {script.relative_to(REPO)} has no option {name}"
                checked += 1
    assert checked > 100
