"""Samplers: fit, sample, persistence without pickle, conditional semantics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vaelab.errors import ConfigError, DataError
from vaelab.latent.sampling import COVARIANCES, SAMPLERS, Sampler, make_sampler


def clustered(n=600, d=3, seed=0):
    """Three well separated Gaussian classes in d dimensions with known means."""
    rng = np.random.default_rng(seed)
    means = np.array([[0.0] * d, [8.0] + [0.0] * (d - 1), [0.0, 8.0] + [0.0] * (d - 2)])
    y = np.arange(n) % 3
    z = means[y] + rng.standard_normal((n, d)) * np.array([1.0, 0.5, 2.0])[:d]
    return z, y, means


def test_registry_names():
    assert {"prior", "gmm", "class-gaussian", "class-gmm"} <= set(SAMPLERS)  # more may be added
    for name, cls in SAMPLERS.items():  # every entry is a Sampler under its own name
        assert issubclass(cls, Sampler) and cls.name == name
        assert Sampler.named(name) is cls  # what Sampler.load(folder, name) builds
    with pytest.raises(KeyError):
        Sampler.named("flow")
    with pytest.raises(ConfigError, match="unknown sampler"):
        make_sampler("flow")


def test_prior_draws_from_the_models_prior(trained_run):
    s = make_sampler("prior", model=trained_run.model)
    draws = s.sample(20000, seed=1)
    assert draws.shape == (20000, 4)  # the run's N(0, I) over its 4 latent dimensions
    assert np.abs(draws.mean(0)).max() < 0.05
    assert np.abs(draws.std(0) - 1).max() < 0.05
    np.testing.assert_array_equal(draws, s.sample(20000, seed=1))
    with pytest.raises(ConfigError, match="not conditional"):
        s.sample(5, cls=1)
    with pytest.raises(ConfigError, match="model's prior"):
        make_sampler("prior")


def test_an_autoencoder_has_no_prior_to_sample(tmp_path, tiny_config):
    from vaelab.errors import VaelabError
    from vaelab.models import build_model

    cfg = tiny_config("model.kind=ae").model
    cfg.input_shape = [1, 28, 28]
    with pytest.raises(VaelabError, match="the prior sampler needs a prior"):
        make_sampler("prior", model=build_model(cfg))


def test_class_gaussian_matches_class_statistics_and_scale():
    z, y, means = clustered()
    s = make_sampler("class-gaussian").fit(z, y)
    draws = s.sample(20000, cls=1, seed=0)
    assert np.abs(draws.mean(0) - z[y == 1].mean(0)).max() < 0.05
    np.testing.assert_allclose(np.cov(draws, rowvar=False), np.cov(z[y == 1], rowvar=False), atol=0.08)
    shrunk = make_sampler("class-gaussian", scale=0.25).fit(z, y).sample(20000, cls=1, seed=0)
    # Scaling the covariance by 0.25 halves the standard deviation.
    np.testing.assert_allclose(shrunk.std(0), draws.std(0) / 2, rtol=0.05)
    with pytest.raises(ConfigError, match="class-conditional"):
        s.sample(5)
    with pytest.raises(ConfigError, match="not in the training codes"):
        s.sample(5, cls=9)


def test_gmm_recovers_clusters_and_class_gmm_stays_in_class():
    z, y, means = clustered()
    g = make_sampler("gmm", components=3).fit(z, y, seed=0)
    draws = g.sample(6000, seed=0)
    # Every draw lands near one of the three true means, in roughly equal shares.
    nearest = np.argmin(((draws[:, None, :] - means[None]) ** 2).sum(-1), 1)
    assert np.all(np.bincount(nearest, minlength=3) > 1600)
    cg = make_sampler("class-gmm", components=2).fit(z, y, seed=0)
    d2 = cg.sample(3000, cls=2, seed=0)
    assert np.mean(np.argmin(((d2[:, None, :] - means[None]) ** 2).sum(-1), 1) == 2) > 0.97


def test_mixture_scale_shrinks_each_component():
    z, y, means = clustered()
    full = make_sampler("class-gmm", components=1).fit(z, y, seed=0)
    half = make_sampler("class-gmm", components=1, scale=0.25).fit(z, y, seed=0)
    a, b = full.sample(20000, cls=2, seed=0), half.sample(20000, cls=2, seed=0)
    np.testing.assert_allclose(b.std(0), a.std(0) / 2, rtol=0.05)
    np.testing.assert_allclose(b.mean(0), a.mean(0), atol=0.05)
    g = make_sampler("gmm", components=3, scale=0.25).fit(z, y, seed=0).sample(6000, seed=0)
    nearest = means[np.argmin(((g[:, None, :] - means[None]) ** 2).sum(-1), 1)]
    spread = np.abs(g - nearest).mean(0)
    base = make_sampler("gmm", components=3).fit(z, y, seed=0).sample(6000, seed=0)
    spread_base = np.abs(base - means[np.argmin(((base[:, None, :] - means[None]) ** 2).sum(-1), 1)]).mean(0)
    np.testing.assert_allclose(spread, spread_base / 2, rtol=0.1)


def test_the_covariance_types_are_scikit_learns():
    from sklearn.mixture import GaussianMixture

    (accepted,) = GaussianMixture._parameter_constraints["covariance_type"]
    assert set(COVARIANCES) == set(accepted.options)


@pytest.mark.parametrize("cov", COVARIANCES)
def test_gmm_covariance_types(cov):
    z, y, _ = clustered(300)
    draws = make_sampler("gmm", components=3, covariance=cov).fit(z, y).sample(500, seed=0)
    assert draws.shape == (500, 3) and np.isfinite(draws).all()


def test_bad_parameters():
    with pytest.raises(ConfigError, match="covariance"):
        make_sampler("gmm", covariance="banana")
    with pytest.raises(ConfigError, match="scale"):
        make_sampler("class-gaussian", scale=0)
    with pytest.raises(DataError, match="labelled"):
        make_sampler("class-gmm").fit(np.zeros((10, 2)), None)


@pytest.mark.parametrize("name", ["gmm", "class-gaussian", "class-gmm"])
def test_save_load_round_trip_without_pickle(tmp_path, name):
    z, y, _ = clustered(300)
    s = make_sampler(name).fit(z, y, seed=0)
    s.save(tmp_path)
    meta = json.loads((tmp_path / f"{name}.json").read_text())
    assert meta["sampler"] == name
    with np.load(tmp_path / f"{name}.npz", allow_pickle=False) as f:  # loads only if nothing is pickled
        assert set(f.files) == set(s.arrays)
    t = Sampler.load(tmp_path, name)
    cls = 1 if s.conditional else None
    np.testing.assert_array_equal(s.sample(50, cls=cls, seed=3), t.sample(50, cls=cls, seed=3))


def test_same_seed_same_samples_different_seed_different():
    z, y, _ = clustered(300)
    s = make_sampler("gmm", components=3).fit(z, y, seed=0)
    np.testing.assert_array_equal(s.sample(10, seed=1), s.sample(10, seed=1))
    assert not np.allclose(s.sample(10, seed=1), s.sample(10, seed=2))


def test_fitted_sampler_is_reused_from_the_run(trained_run):
    from vaelab.latent.sampling import fitted_sampler

    s1 = fitted_sampler(trained_run, "class-gaussian", scale=0.5)
    stamp = (trained_run.run_dir / "samplers" / "class-gaussian.npz").stat().st_mtime_ns
    s2 = fitted_sampler(trained_run, "class-gaussian", scale=0.5)
    assert (trained_run.run_dir / "samplers" / "class-gaussian.npz").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(s1.sample(5, cls=0), s2.sample(5, cls=0))
    s3 = fitted_sampler(trained_run, "class-gaussian", scale=0.2)  # new parameters: refit
    assert s3.params["scale"] == 0.2
    codes = trained_run.encode(trained_run.split("train").float()).double().numpy()
    labels = trained_run.split("train").y.numpy()
    np.testing.assert_allclose(s3.arrays["means"][0], codes[labels == 0].mean(0), rtol=1e-5, atol=1e-6)
    assert torch.is_tensor(trained_run.decode(torch.from_numpy(s3.sample(4, cls=1)).float()))


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """The session's trained VAE in a folder of its own (fits saved here touch no other test)."""
    import shutil

    from vaelab.api import Run

    shutil.copytree(trained_run.run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("samplers"))
    return Run.load(tmp_path / "run", device="cpu")


def test_posterior_draws_are_seeded_and_spread_as_the_posterior_says(run_copy):
    x = run_copy.split("train").float()
    q = run_copy.posterior(x)
    a, b = run_copy.draw_codes(x, seed=3), run_copy.draw_codes(x, seed=3)
    torch.testing.assert_close(a, b)  # the same seed, the same draws
    assert not torch.equal(a, run_copy.draw_codes(x, seed=4))
    # oracle: (z - mu) / sigma is standard normal for a diagonal Gaussian posterior
    r = ((a - q.mean) / q.std).flatten()
    assert abs(float(r.mean())) < 0.1 and abs(float(r.std()) - 1) < 0.1


def test_a_mixture_fit_on_draws_has_the_aggregate_posteriors_spread(run_copy):
    """codes=draw fits on one posterior draw per image: a one-component full Gaussian then has the
    aggregate posterior's covariance, cov(mu) + E[diag sigma^2] (the law of total variance), where
    the fit on means has cov(mu) alone."""
    from vaelab.latent.sampling import fitted_sampler

    x = run_copy.split("train").float()
    q = run_copy.posterior(x)
    mu, var = q.mean.double().numpy(), (q.std.double() ** 2).numpy()
    on_means = fitted_sampler(run_copy, "gmm", components=1, log=lambda m: None)
    on_draws = fitted_sampler(run_copy, "gmm", components=1, codes="draw", seed=1, log=lambda m: None)
    cov = lambda s: s.arrays["chols"][0] @ s.arrays["chols"][0].T
    # one full component is the codes' own covariance: the means', and the seeded draws'
    np.testing.assert_allclose(cov(on_means), np.cov(mu, rowvar=False, bias=True), atol=1e-4)
    draws = run_copy.draw_codes(x, seed=1).double().numpy()
    np.testing.assert_allclose(cov(on_draws), np.cov(draws, rowvar=False, bias=True), atol=1e-4)
    # and the draws spread as the aggregate posterior: the total variance adds E[sigma^2]
    total = np.trace(np.cov(mu, rowvar=False, bias=True)) + var.mean(0).sum()
    assert abs(np.trace(cov(on_draws)) - total) < 0.1 * total
    assert np.trace(cov(on_draws)) > np.trace(cov(on_means)) + 0.5 * var.mean(0).sum()
    # the fit records what it was fit on; asked again it is reused, and a fit on means is another fit
    meta = json.loads((run_copy.run_dir / "samplers" / "gmm.json").read_text())
    assert meta["params"]["codes"] == "draw"
    again = fitted_sampler(run_copy, "gmm", components=1, codes="draw", seed=1,
                           log=lambda m: pytest.fail(f"refit: {m}"))
    np.testing.assert_array_equal(again.arrays["chols"], on_draws.arrays["chols"])


def test_a_fit_saved_before_codes_existed_is_still_reused(run_copy):
    """Fits saved before the option have no "codes" in their parameters: they were fit on means,
    which is the default, so they match and are reused, not fit again."""
    from vaelab.latent.sampling import fitted_sampler

    first = fitted_sampler(run_copy, "gmm", components=2, log=lambda m: None)
    path = run_copy.run_dir / "samplers" / "gmm.json"
    assert "codes" not in json.loads(path.read_text())["params"]
    stamp = (run_copy.run_dir / "samplers" / "gmm.npz").stat().st_mtime_ns
    again = fitted_sampler(run_copy, "gmm", components=2, codes="mean", log=lambda m: pytest.fail(f"refit: {m}"))
    assert (run_copy.run_dir / "samplers" / "gmm.npz").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again.arrays["means"], first.arrays["means"])


def test_codes_from_the_command_line(capsys, run_copy, tmp_path, tiny_config):
    from conftest import cli_error, run_main

    rc, out, err = run_main(capsys, "sample", str(run_copy.run_dir), "--sampler", "class-gmm", "--class", "1",
                            "--codes", "draw", "--n", "4")
    assert rc == 0, err
    meta = json.loads((run_copy.run_dir / "samplers" / "class-gmm.json").read_text())
    assert meta["params"]["codes"] == "draw"
    assert "--codes does not apply to --sampler prior" in cli_error(
        capsys, "sample", str(run_copy.run_dir), "--sampler", "prior", "--codes", "draw")
    # an autoencoder has no posterior to draw from: one line, before anything is fit
    from vaelab.api import train

    ae = train(tiny_config("model.kind=ae"), tmp_path / "ae", evaluate_after=False, log=lambda *_: None)
    msg = cli_error(capsys, "sample", str(ae.run_dir), "--sampler", "gmm", "--codes", "draw")
    assert "needs a stochastic posterior" in msg
    assert not (ae.run_dir / "samplers" / "gmm.json").exists()
