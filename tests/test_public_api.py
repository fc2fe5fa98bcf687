"""The public names (README.md and every ``__all__``) import, and the old paths of moved public
names still work for one release, with a DeprecationWarning, giving the same objects."""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys
import warnings
from pathlib import Path

import pytest

import vaelab

README = Path(__file__).resolve().parent.parent / "README.md"

# old module path -> new one, and a public name both must give as the same object
MOVED_MODULES = [
    ("vaelab.metrics", "vaelab.evaluation.metrics", "ms_ssim"),
    ("vaelab.experiments", "vaelab.sweep.experiments", "run_experiment"),
    ("vaelab.steer", "vaelab.latent.steer", "steer_benchmark"),
    ("vaelab.one_class", "vaelab.anomaly.one_class", "one_class_benchmark"),
    ("vaelab.inpaint", "vaelab.latent.inpaint", "evaluate_inpainting"),
    ("vaelab.sample_eval", "vaelab.latent.sample_eval", "evaluate_samples"),
    ("vaelab.viz.report", "vaelab.report", "write_report"),
    ("vaelab.viz.plots", "vaelab.plots", "plot_grid"),
    ("vaelab.anomaly.detector", "vaelab.anomaly.scores", "score_images"),
    ("vaelab.objectives", "vaelab.models.objectives", "OBJECTIVES"),
    ("vaelab.latent.disentangle", "vaelab.latent.factors", "score_disentanglement"),
    ("vaelab.estimators", "vaelab.models.estimators", "tc_decomposition"),
]
# old modules whose names now live in two modules: the shim holds them (the same objects)
MOVED_SPLIT = {"vaelab.anomaly.detector": {"AnomalyDetector": "vaelab.anomaly.estimator",
                                           "detect": "vaelab.anomaly.scores", "SCORES": "vaelab.anomaly.scores"}}
# (package, name): names that left a package for one of its modules
MOVED_NAMES = [
    ("vaelab.anomaly", "AnomalyDetector", "vaelab.anomaly.estimator"),
    ("vaelab.anomaly", "score_images", "vaelab.anomaly.scores"),
    ("vaelab.anomaly", "SCORES", "vaelab.anomaly.scores"),
    ("vaelab.anomaly", "one_class_benchmark", "vaelab.anomaly.one_class"),
    ("vaelab.export", "export_latents", "vaelab.export.table"),
    ("vaelab.export", "EXPORTS", "vaelab.export.table"),
    ("vaelab.sweep", "trial_config", "vaelab.sweep.runner"),
    ("vaelab.config", "build_config", "vaelab.configure"),
]
SHIMS = {old for old, _, _ in MOVED_MODULES} | {"vaelab.viz"}


def ours(caught) -> list[str]:
    return [str(w.message) for w in caught if "the old path goes in" in str(w.message)]


@pytest.mark.parametrize("old,new,name", MOVED_MODULES, ids=[m[0] for m in MOVED_MODULES])
def test_an_old_module_path_warns_and_is_the_new_module(old, new, name):
    sys.modules.pop(old, None)  # imported before (another test): import it afresh
    with pytest.warns(DeprecationWarning) as caught:  # (vaelab.viz.* also warns about vaelab.viz)
        module = importlib.import_module(old)
    assert f"{old} is now {new}; the old path goes in 0.3" in ours(caught)
    assert module is importlib.import_module(new) or old in MOVED_SPLIT
    for other, where in MOVED_SPLIT.get(old, {}).items():
        assert getattr(module, other) is getattr(importlib.import_module(where), other)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning) as caught:  # the from-import form
        exec(f"from {old} import {name} as value", ns := {})  # noqa: S102 (the import lines themselves)
    assert f"{old} is now {new}; the old path goes in 0.3" in ours(caught)
    assert ns["value"] is getattr(importlib.import_module(new), name)


@pytest.mark.parametrize("package,name,new", MOVED_NAMES, ids=[f"{p}.{n}" for p, n, _ in MOVED_NAMES])
def test_a_name_that_left_a_package_warns_and_is_the_same_object(package, name, new):
    pkg = importlib.import_module(package)
    vars(pkg).pop(name, None)  # cached by an earlier lookup
    with pytest.warns(DeprecationWarning, match=re.escape(f"{package}.{name} is now {new}.{name}")) as caught:
        exec(f"from {package} import {name} as value", ns := {})  # noqa: S102 (the import lines themselves)
    assert ns["value"] is getattr(importlib.import_module(new), name)
    assert len(ours(caught)) == 1  # `from P import n` looks the name up twice: one warning
    assert name not in pkg.__all__


def test_the_warning_points_at_the_importing_line(tmp_path):
    import subprocess

    script = tmp_path / "user.py"
    script.write_text("import vaelab\nimport vaelab.metrics\nfrom vaelab.anomaly import score_images\n")
    err = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stderr
    # Shown by Python's default filters (they show DeprecationWarnings raised in __main__), at the user's line.
    assert f"{script}:2: DeprecationWarning: vaelab.metrics is now vaelab.evaluation.metrics" in err
    assert f"{script}:3: DeprecationWarning: vaelab.anomaly.score_images is now" in err


def test_unknown_names_are_still_attribute_errors():
    import vaelab.anomaly
    import vaelab.export

    for pkg in (vaelab.anomaly, vaelab.export, importlib.import_module("vaelab.sweep")):
        with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
            pkg.no_such_name  # noqa: B018


def _modules() -> list[str]:
    names = ["vaelab"]
    for info in pkgutil.walk_packages(vaelab.__path__, "vaelab."):
        if info.name not in SHIMS and not info.name.startswith(tuple(s + "." for s in SHIMS)) \
                and info.name != "vaelab.__main__":
            names.append(info.name)
    return names


def test_every_name_in_every_all_imports_without_a_deprecation():
    checked = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for modname in _modules():
            module = importlib.import_module(modname)
            for name in getattr(module, "__all__", ()):
                exec(f"from {modname} import {name}", {})  # a name or a submodule  # noqa: S102 (the import lines themselves)
                checked += 1
    assert not ours(caught)
    assert checked > 150


def test_the_readme_names_are_in_their_modules_all():
    checked = 0
    for line in _readme_imports():
        m = re.match(r"from (vaelab\S*) import (.+?)\s*(#.*)?$", line)
        if m:
            module = importlib.import_module(m.group(1))
            for name in (n.strip() for n in m.group(2).split(",")):
                assert name in module.__all__, (m.group(1), name)
                checked += 1
    assert checked >= 12


def _readme_imports() -> list[str]:
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", README.read_text(), flags=re.DOTALL):
        lines += [ln.strip() for ln in block.splitlines() if re.match(r"\s*(import vaelab|from vaelab\S* import )", ln)]
    return lines


def test_every_import_line_in_the_readme_runs():
    lines = _readme_imports()
    assert len(lines) >= 10 and "import vaelab" in lines
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for line in lines:
            exec(line, {})  # noqa: S102 (the import lines themselves)
    assert not ours(caught)  # the README shows the new paths


def test_import_vaelab_lists_its_public_names():
    assert set(dir(vaelab)) == set(vaelab.__all__) and "train" in vaelab.__all__ and "Run" in vaelab.__all__
    assert set(vaelab.__all__) == set(vaelab._API) | {"__version__"}  # every lazy name listed, nothing else
    for name in vaelab.__all__:
        assert getattr(vaelab, name) is not None
