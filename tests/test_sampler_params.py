"""A parameter a sampler does not take is refused in one line, from Python as from the CLI:
``fitted_sampler``, ``make_sampler`` and each sampler's constructor; a saved NAME.json that
records one (a file edited by hand) is fit again, never used with it."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import one_line, train_tiny

from vaelab.api import Run
from vaelab.errors import CheckpointError, ConfigError
from vaelab.latent.flow_samplers import MAFSampler
from vaelab.latent.sampler_base import Sampler
from vaelab.latent.sampling import (
    SAMPLERS,
    ClassGaussianSampler,
    GMMSampler,
    fitted_sampler,
    last_fitted,
    make_sampler,
)
from vaelab.latent.two_stage import TwoStageSampler

GMM_TAKES = "components, covariance, scale, codes"


@pytest.fixture(scope="module")
def tiny_run_dir(tmp_path_factory):
    """A 1-epoch VAE (mlp 784-8-2) on 64 labelled synthetic shapes."""
    return train_tiny(tmp_path_factory.mktemp("sampler-params"))


@pytest.fixture
def run(tiny_run_dir, tmp_path):
    """The tiny run, copied: these tests write into RUN/samplers."""
    shutil.copytree(tiny_run_dir, tmp_path / "run")
    return Run.load(tmp_path / "run", device="cpu")


def refused(call) -> str:
    with pytest.raises(ConfigError) as e:
        call()
    return one_line(e)


def test_fitted_sampler_refuses_a_parameter_no_sampler_takes_and_saves_nothing(run):
    msg = refused(lambda: fitted_sampler(run, "gmm", bogus=3, log=lambda *_: None))
    assert msg == f"sampler gmm does not take the parameter bogus (it takes {GMM_TAKES}): leave it out"
    assert not (run.dir.samplers / "gmm.json").exists()  # refused before anything was fit or written


def test_a_parameter_of_another_sampler_is_refused_naming_those_that_take_it(run):
    msg = refused(lambda: fitted_sampler(run, "gmm", epochs=3, log=lambda *_: None))
    assert msg == (f"sampler gmm does not take the parameter epochs (it takes {GMM_TAKES}; "
                   "epochs is taken by iaf, maf, two-stage): leave it out")
    msg = refused(lambda: fitted_sampler(run, "class-gaussian", components=3, log=lambda *_: None))
    assert msg == ("sampler class-gaussian does not take the parameter components (it takes scale, codes; "
                   "components is taken by class-gmm, gmm): leave it out")


def test_several_unknown_parameters_are_named_together(run):
    msg = refused(lambda: make_sampler("maf", components=2, covariance="full"))
    assert msg.startswith("sampler maf does not take the parameters components, covariance (it takes blocks, "
                          "hidden, layers, epochs, lr, batch_size, scale, codes; ")
    assert msg.endswith("): leave them out")


def test_a_sampler_that_takes_nothing_says_so(run):
    msg = refused(lambda: make_sampler("prior", model=run.model, scale=0.5))
    assert msg.startswith("sampler prior does not take the parameter scale (it takes no parameters; scale is taken by ")
    assert refused(lambda: make_sampler("sphere", model=run.model, bogus=1)).startswith(
        "sampler sphere does not take the parameter bogus (it takes no parameters)")


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_refuses_a_bogus_parameter_through_make_sampler(run, name):
    # checked before the sampler is built: pixelcnn (no prior fitted here) and sphere (not an
    # S-VAE) are refused for the parameter, not for what the run lacks
    msg = refused(lambda: make_sampler(name, model=run.model, run_dir=run.run_dir, bogus=1))
    takes = ", ".join(SAMPLERS[name].settings()) or "no parameters"
    assert msg == f"sampler {name} does not take the parameter bogus (it takes {takes}): leave it out"


@pytest.mark.parametrize("build, start", [
    (lambda: GMMSampler(bogus=1), "sampler gmm does not take the parameter bogus"),
    (lambda: ClassGaussianSampler(components=3), "sampler class-gaussian does not take the parameter components"),
    (lambda: TwoStageSampler(bogus=1), ("sampler two-stage does not take the parameter bogus (it takes epochs, "
                                       "hidden, depth, latent, batch_size, lr, scale, codes)")),
    (lambda: MAFSampler(covariance="full"), "sampler maf does not take the parameter covariance"),
])
def test_each_constructor_refuses_with_the_same_line(build, start):
    assert refused(build).startswith(start)  # a ConfigError, not a TypeError nor a stored parameter


def test_parameters_a_sampler_takes_are_kept_and_nothing_else(run):
    s = fitted_sampler(run, "gmm", components=2, scale=0.5, log=lambda *_: None)
    assert s.params == {"components": 2, "covariance": "full", "scale": 0.5}
    saved = json.loads((run.dir.samplers / "gmm.json").read_text())
    assert saved["params"] == {"components": 2, "covariance": "full", "scale": 0.5}
    s = fitted_sampler(run, "two-stage", epochs=1, hidden=8, log=lambda *_: None)  # the README's example
    assert s.params["epochs"] == 1 and s.params["hidden"] == 8 and s.opts.epochs == 1
    # None is "unset" (the CLI's options not given), never a parameter
    assert make_sampler("gmm", components=None).params == {"components": 10, "covariance": "full", "scale": 1.0}


def _tamper(run, name: str, **junk) -> None:
    path = run.dir.samplers / f"{name}.json"
    meta = json.loads(path.read_text())
    meta["params"].update(junk)
    path.write_text(json.dumps(meta))


def test_a_saved_json_with_a_parameter_the_sampler_does_not_take_is_refit(run):
    first = fitted_sampler(run, "gmm", components=2, log=lambda *_: None)
    _tamper(run, "gmm", bogus=3)
    notes: list[str] = []
    again = fitted_sampler(run, "gmm", components=2, log=notes.append)
    assert notes == [(f"note: refitting the gmm sampler: {run.dir.samplers / 'gmm'}.json records a parameter it "
                     "does not take (bogus)")]
    assert again.params == first.params == {"components": 2, "covariance": "full", "scale": 1.0}
    assert json.loads((run.dir.samplers / "gmm.json").read_text())["params"] == again.params  # rewritten clean
    assert (again.arrays["means"] == first.arrays["means"]).all()  # the same seed: the same fit


def test_loading_a_tampered_json_is_refused_in_one_line(run):
    fitted_sampler(run, "gmm", components=2, log=lambda *_: None)
    _tamper(run, "gmm", bogus=3)
    with pytest.raises(CheckpointError) as e:
        Sampler.load(run.dir.samplers, "gmm")
    msg = one_line(e)
    assert msg.startswith(f"{run.dir.samplers / 'gmm'}.json does not read as a gmm sampler's settings (ConfigError: "
                          "sampler gmm does not take the parameter bogus")


def test_last_fitted_fits_a_tampered_sampler_with_its_defaults(run):
    fitted_sampler(run, "gmm", components=2, seed=3, log=lambda *_: None)
    _tamper(run, "gmm", epochs=5)
    notes: list[str] = []
    s = last_fitted(run, "gmm", log=notes.append)
    assert notes == [(f"note: fitting the gmm sampler with its defaults: {run.dir.samplers / 'gmm.json'} records a "
                     "parameter it does not take (epochs)")]
    assert s.params == {"components": 10, "covariance": "full", "scale": 1.0} and s.fit_seed == 0
    assert json.loads((run.dir.samplers / "gmm.json").read_text())["params"] == s.params
    # an untampered file is reused as it was fit, with no note
    notes.clear()
    assert last_fitted(run, "gmm", log=notes.append).params == s.params and notes == []
