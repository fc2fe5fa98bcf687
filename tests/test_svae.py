"""The hyperspherical VAE (vaelab.models.svae, the vMF maths in vaelab.distributions): log q
against scipy.stats.vonmises_fisher, log I_v and its derivative against scipy, KL to the uniform
prior against Monte Carlo, the samples' mean resultant length against A_m(kappa), the gradient
through rsample (g_rep + g_cor) against the analytic dA_m/dkappa, the refusals (a 1-dimensional
sphere, priors on R^D, factorvae), and the family and its tools on a run."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from conftest import cli_error, model_config, one_line, run_main

from vaelab.configure import build_config
from vaelab.distributions import (
    HypersphericalUniform,
    VonMisesFisher,
    cat,
    kl_divergence,
    kl_per_dim,
    log_bessel_iv,
    log_sphere_area,
    rejection_correction,
    to,
    vmf_mean_length,
)
from vaelab.errors import ConfigError

special = pytest.importorskip("scipy.special")
stats = pytest.importorskip("scipy.stats")
if not hasattr(stats, "vonmises_fisher"):  # scipy >= 1.11
    pytest.skip("scipy.stats.vonmises_fisher needs scipy 1.11 or newer", allow_module_level=True)

DIMS, KAPPAS = (3, 5, 10), (0.5, 10.0, 200.0)


def unit(m: int, seed: int = 0) -> torch.Tensor:
    v = torch.randn(m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return v / v.norm()


def vmf(m: int, kappa: float, n: int = 1, seed: int = 0) -> VonMisesFisher:
    return VonMisesFisher(unit(m, seed).expand(n, m), torch.full((n,), kappa, dtype=torch.float64))


# ------------------------------------------------------------------------------ the maths
@pytest.mark.parametrize("v", [0.0, 0.5, 1.5, 4.0, 49.0])
def test_log_bessel_iv_and_its_derivative_match_scipy(v):
    k = torch.tensor([1e-3, 0.5, 3.0, 40.0, 800.0], dtype=torch.float64, requires_grad=True)
    out = log_bessel_iv(v, k)
    kn = k.detach().numpy()
    ref = np.log(special.ive(v, kn)) + kn  # log I_v, where scipy's scaled value does not underflow
    ok = special.ive(v, kn) > 1e-250
    assert np.allclose(out.detach().numpy()[ok], ref[ok], rtol=1e-10, atol=1e-10)
    # where it does (v = 49, k = 1e-3: I_v ~ 1e-217 and below), the series: I_v(k) ~ (k/2)^v / Gamma(v+1)
    lead = v * np.log(kn / 2) - special.gammaln(v + 1)
    assert np.allclose(out.detach().numpy()[kn < 1e-2], lead[kn < 1e-2], atol=1e-6)
    (grad,) = torch.autograd.grad(out.sum(), k)
    # d/dk log I_v = I_v'(k) / I_v(k), with scipy's derivative ivp (where I_v does not overflow) ...
    with np.errstate(all="ignore"):
        direct = special.ivp(v, kn) / special.iv(v, kn)
    fin = ok & np.isfinite(direct)
    assert fin.sum() >= 3 and np.allclose(grad.numpy()[fin], direct[fin], rtol=1e-8)
    # ... and everywhere I_{v+1}(k) / I_v(k) + v / k, the ratio of scipy's scaled values
    assert np.allclose(grad.numpy()[ok], (special.ive(v + 1, kn) / special.ive(v, kn) + v / kn)[ok], rtol=1e-8)
    assert torch.autograd.gradcheck(lambda t: log_bessel_iv(v, t), (k.detach()[1:4].clone().requires_grad_(),))


@pytest.mark.parametrize("v", [0.0, 0.5, 7.0, 31.0])
def test_log_bessel_iv_past_scipys_range_matches_mpmath(v):
    """scipy's ive is nan from k = 2^31 on; there Hankel's expansion takes over (the concentrations
    up to the sampler's cap, 1e10, and beyond). Checked on log I_v(k) - k, the part that does not
    cancel in the KL, against 50-digit mpmath; float64 holds log I_v(k) itself to k * 1e-16."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    ks = [1e9, 2.2e9, 5e9, 1e10, 1e13]
    got = log_bessel_iv(v, torch.tensor(ks, dtype=torch.float64)).numpy()
    for k, g in zip(ks, got):
        ref = float(mpmath.log(mpmath.besseli(v, k)) - k)
        assert abs((g - k) - ref) <= 4 * k * 2.2e-16, (v, k)
    # the derivative, I_{v+1} / I_v + v / k = 1 - 1 / (2k) + O(1 / k^2), to what float64 resolves
    k = torch.tensor(ks, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(log_bessel_iv(v, k).sum(), k)
    assert torch.allclose(grad, 1 - 0.5 / k.detach(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("m", DIMS)
@pytest.mark.parametrize("kappa", KAPPAS)
def test_log_prob_matches_scipys_von_mises_fisher(m, kappa):
    q = vmf(m, kappa)
    z = q.sample((200,), generator=torch.Generator().manual_seed(1))  # (200, 1, m), around mu
    other = torch.randn(50, 1, m, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    z = torch.cat([z, other / other.norm(dim=-1, keepdim=True)])  # and anywhere on the sphere
    ref = stats.vonmises_fisher(unit(m).numpy(), kappa).logpdf(z[:, 0].numpy())
    assert np.allclose(q.log_prob(z)[:, 0].numpy(), ref, rtol=1e-9, atol=1e-9)
    assert np.allclose(float(q.entropy()), stats.vonmises_fisher(unit(m).numpy(), kappa).entropy(), rtol=1e-8)


@pytest.mark.parametrize("m", DIMS)
@pytest.mark.parametrize("kappa", KAPPAS)
def test_draws_lie_on_the_sphere_with_the_mean_resultant_length_a_m_kappa(m, kappa):
    n = 20000
    q = vmf(m, kappa, seed=3)
    z = q.sample((n,), generator=torch.Generator().manual_seed(4))[:, 0]
    assert torch.allclose(z.norm(dim=-1), torch.ones(n, dtype=torch.float64), atol=1e-12)
    a = float(vmf_mean_length(m, torch.tensor(kappa, dtype=torch.float64)))
    ref = special.iv(m / 2, kappa) / special.iv(m / 2 - 1, kappa)
    assert a == pytest.approx(ref, rel=1e-9)
    w = z @ unit(m, 3)
    assert float(w.mean()) == pytest.approx(a, abs=4 * float(w.std()) / math.sqrt(n))
    # and E[z] = A_m(kappa) mu: no drift off the mean direction
    assert torch.allclose(z.mean(0), a * unit(m, 3), atol=5 / math.sqrt(n))
    # the same draws as scipy's own sampler, in distribution: Kolmogorov-Smirnov on w = mu.z
    ref_w = stats.vonmises_fisher(unit(m, 3).numpy(), kappa).rvs(5000, random_state=5) @ unit(m, 3).numpy()
    assert stats.ks_2samp(w.numpy()[:5000], ref_w).pvalue > 1e-3


@pytest.mark.parametrize("m", DIMS)
@pytest.mark.parametrize("kappa", KAPPAS)
def test_kl_to_the_uniform_prior_matches_monte_carlo(m, kappa):
    q = vmf(m, kappa)
    p = HypersphericalUniform(m, dtype=torch.float64, batch_shape=(1,))
    kl = float(kl_divergence(q, p))
    z = q.sample((20000,), generator=torch.Generator().manual_seed(6))
    d = (q.log_prob(z) - p.log_prob(z))[:, 0]
    assert kl == pytest.approx(float(d.mean()), abs=4 * float(d.std()) / math.sqrt(len(d)) + 1e-9)
    assert kl == pytest.approx(float(-q.entropy()) + log_sphere_area(m), rel=1e-10)
    assert kl_per_dim(q, p) is None  # a closed form, but not one per dimension


@pytest.mark.parametrize("m", (2, 10, 64))
def test_a_float32_vmf_has_the_float64_kl_log_q_and_gradient_at_any_concentration(m):
    """At large kappa log C and kappa A_m cancel (both about kappa): done in float32 the KL was
    nats off at kappa = 1e4; the maths runs in float64 whatever the parameters' dtype."""
    out = {}
    for dt in (torch.float32, torch.float64):
        k = torch.tensor([1e-6, 1e-2, 1.0, 1e4, 1e6], dtype=dt, requires_grad=True)
        mu = torch.zeros(5, m, dtype=dt)
        mu[:, 0] = 1
        q = VonMisesFisher(mu, k)
        kl = kl_divergence(q, HypersphericalUniform(m, dtype=dt, batch_shape=(5,)))
        (grad,) = torch.autograd.grad(kl.sum(), k)
        assert kl.dtype == dt and torch.isfinite(kl).all() and torch.isfinite(grad).all()
        out[dt] = kl.detach().double(), grad.double(), q.log_prob(mu).detach().double()
    (kl32, g32, lp32), (kl64, g64, lp64) = out[torch.float32], out[torch.float64]
    assert (kl64 > -1e-9).all()
    assert torch.allclose(kl32, kl64, rtol=1e-5, atol=1e-6)
    assert torch.allclose(g32, g64, rtol=1e-3, atol=1e-7)
    assert torch.allclose(lp32, lp64, rtol=1e-6, atol=1e-4)


def test_the_uniform_prior_is_normalised_and_its_draws_uniform():
    # |S^2| = 4 pi, |S^1| = 2 pi
    assert log_sphere_area(3) == pytest.approx(math.log(4 * math.pi))
    assert log_sphere_area(2) == pytest.approx(math.log(2 * math.pi))
    p = HypersphericalUniform(5, dtype=torch.float64)
    z = p.sample((20000,), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(z.norm(dim=-1), torch.ones(20000, dtype=torch.float64))
    assert float(z.mean(0).abs().max()) < 0.03
    assert torch.allclose(z.T @ z / 20000, torch.eye(5, dtype=torch.float64) / 5, atol=0.01)


@pytest.mark.parametrize("m", (2, 3, 5, 10))
@pytest.mark.parametrize("kappa", (0.5, 3.0, 20.0))
def test_the_gradient_through_rsample_with_g_cor_is_dA_dkappa(m, kappa):
    """d/dkappa E[mu.z] = dA_m/dkappa: g_rep alone is biased, g_rep + g_cor is not."""
    k = torch.tensor(kappa, dtype=torch.float64, requires_grad=True)
    (exact,) = torch.autograd.grad(vmf_mean_length(m, k), k)
    n = 20000
    q = VonMisesFisher(unit(m).expand(n, m), k.expand(n))
    z = q.rsample(generator=torch.Generator().manual_seed(7))
    f = (z * unit(m)).sum(-1)
    (rep,) = torch.autograd.grad(f.mean(), k, retain_graph=True)
    total = f + rejection_correction(q, z, f)
    assert torch.equal(total, f)  # the correction has value 0
    (both,) = torch.autograd.grad(total.mean(), k)
    assert torch.isfinite(both)
    assert float(both) == pytest.approx(float(exact), rel=0.06, abs=2e-4)
    if (m, kappa) in {(2, 0.5), (2, 3.0), (3, 3.0)}:  # where g_cor is large, leaving it out is visibly wrong
        assert abs(float(rep) - float(exact)) > 0.2 * float(exact)


def test_the_gradient_to_the_mean_direction_is_finite_and_keeps_draws_on_the_sphere():
    mu = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))
    mu = (mu / mu.norm(dim=-1, keepdim=True)).requires_grad_()
    mu.data[0] = torch.tensor([1.0, 0, 0, 0, 0])  # the reflection's degenerate case: mu = e1
    kappa = torch.full((64,), 5.0, requires_grad=True)
    q = VonMisesFisher(mu, kappa)
    z = q.rsample((3,), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(z.norm(dim=-1), torch.ones(3, 64), atol=1e-5)
    (z * torch.randn(5)).sum().backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(kappa.grad).all()


def test_chunks_join_and_move_and_the_score_is_known_only_at_own_draws():
    a, b = vmf(4, 2.0, n=3), vmf(4, 7.0, n=2, seed=1)
    joined = to(cat([a, b]), "cpu")
    assert isinstance(joined, VonMisesFisher) and joined.loc.shape == (5, 4)
    assert torch.equal(joined.kappa, torch.tensor([2.0, 2, 2, 7, 7], dtype=torch.float64))
    z = joined.rsample(generator=torch.Generator().manual_seed(0))
    assert joined.draw_score(z) is not None and joined.draw_score(z.clone()) is None
    off = VonMisesFisher(joined.loc, joined.kappa, correction=False)
    assert off.draw_score(off.rsample()) is None
    assert list(joined.params()) == ["mu", "kappa"] and joined.params()["kappa"].shape == (5, 4)


# ------------------------------------------------------------------------------ configs and refusals
BASE = ["model.arch=mlp", "model.hidden=8", "model.latent_dim=3"]


def test_the_family_is_vmf_spherical_uniform_elbo():
    cfg = build_config(None, None, ["model.kind=svae", *BASE])
    m = cfg.model
    assert (m.posterior, m.prior, m.objective) == ("vmf", "spherical-uniform", "elbo")
    assert m.opts("vmf").kappa_floor == 1.0 and m.opts("vmf").correction is True


@pytest.mark.parametrize("sets,names", [
    (["model.kind=svae", "model.latent_dim=1"], ["vmf", "latent_dim=1"]),
    (["model.kind=svae", "model.prior=normal"], ["vmf", "normal"]),
    (["model.kind=svae", "model.objective=factorvae"], ["vmf", "factorvae"]),
    (["model.kind=vae", "model.prior=spherical-uniform"], ["spherical-uniform", "gaussian"]),
    (["model.kind=svae", "model.vmf.kappa_floor=-1"], ["model.vmf.kappa_floor"]),
    (["model.kind=svae", "model.objective=tcvae"], ["tcvae", "vmf"]),
])
def test_what_cannot_go_with_a_sphere_is_refused_in_one_line(sets, names):
    with pytest.raises(ConfigError) as e:
        build_config(None, None, [*BASE, *sets])
    msg = one_line(e)
    assert all(n in msg for n in names), msg


@pytest.mark.parametrize("prior", ["normal", "vamp", "hierarchical"])
def test_a_prior_on_r_d_is_refused_with_the_vmf_posterior_in_these_words(prior):
    with pytest.raises(ConfigError) as e:
        build_config(None, None, [*BASE, "model.kind=svae", f"model.prior={prior}"])
    assert one_line(e) == (f"model.posterior=vmf puts codes on the unit sphere, and model.prior={prior} is a density "
                           "on R^D; use model.prior=spherical-uniform")

def test_the_cli_refuses_a_one_dimensional_sphere_in_one_line_and_exit_2(capsys, tmp_path):
    line = cli_error(capsys, "train", "--set", "model.kind=svae", "--set", "model.latent_dim=1", "--out",
                     tmp_path / "r")
    assert "S^0" in line and "latent_dim" in line
    assert not (tmp_path / "r" / "model.safetensors").exists()


# ------------------------------------------------------------------------------ training and the tools
def history(run_dir) -> list[dict]:
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


def test_the_svae_trains_its_loss_finite_and_falling(tiny_config, tmp_path):
    from vaelab.api import train

    cfg = tiny_config("model.kind=svae", "model.latent_dim=3", "train.epochs=4", "model.hidden=16", "train.lr=3e-3")
    train(cfg, tmp_path / "r", evaluate_after=False, log=lambda *_: None)
    rows = history(tmp_path / "r")
    losses = [float(r["train_loss"]) for r in rows]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 5, losses
    # loss = recon + KL: the g_cor term adds nothing to the value
    assert all(float(r["train_loss"]) == pytest.approx(float(r["train_recon"]) + float(r["train_kl"]), rel=1e-5)
               for r in rows)
    assert all(float(r["train_kl"]) > 0 for r in rows)


@pytest.fixture(scope="module")
def svae_run(tmp_path_factory, shapes_npz):
    from vaelab.api import train

    cfg = build_config(None, None, [
        "data.name=npz", f"data.path={shapes_npz}", "data.val=0.25", "model.kind=svae", "model.arch=mlp",
        "model.hidden=32", "model.latent_dim=3", "train.epochs=2", "train.batch_size=64", "train.device=cpu",
        "train.progress=false"])
    return train(cfg, tmp_path_factory.mktemp("runs") / "svae", evaluate_after=False, log=lambda *_: None)


def test_eval_has_nll_iw_from_the_vmf_draws_and_the_closed_form_kl(capsys, svae_run):
    rc, _, err = run_main(capsys, "eval", svae_run.dir.path, "--iw-samples", "16")
    assert rc == 0, err
    ev = json.loads((svae_run.dir.path / "eval.json").read_text())
    assert ev["iw_samples"] == 16 and math.isfinite(ev["nll_iw"])
    assert "kl_per_dim" not in ev
    # the closed-form KL by hand, over the split eval used
    m = svae_run.model
    data = svae_run.split(ev["split"])
    with torch.no_grad():
        q = m.posterior(data.batch(slice(0, len(data))))
        kl = kl_divergence(q, m.prior(None, len(data)))
    assert ev["kl"] == pytest.approx(float(kl.double().mean()), rel=1e-4)
    # the importance-sampled bound is tighter than the elbo (in expectation; 16 draws on a toy set: by far)
    assert ev["nll_iw"] <= ev["recon"] + ev["kl"] + 1e-3
    assert ev["loss"] == pytest.approx(ev["recon"] + ev["kl"], rel=1e-5)


@pytest.mark.parametrize("sampler", ["prior", "sphere"])
def test_sample_draws_on_the_sphere(capsys, svae_run, tmp_path, sampler):
    from PIL import Image

    out = tmp_path / f"{sampler}.png"
    rc, _, err = run_main(capsys, "sample", svae_run.dir.path, "--sampler", sampler, "--n", "4", "--out", out,
                          "--npz", tmp_path / f"{sampler}.npz")
    assert rc == 0, err
    assert np.asarray(Image.open(out)).std() > 0
    with np.load(tmp_path / f"{sampler}.npz") as f:
        codes = f["codes"] if "codes" in f.files else f["z"]
    assert codes.shape == (4, 3) and np.allclose(np.linalg.norm(codes, axis=1), 1, atol=1e-5)


def test_the_sphere_sampler_is_refused_for_a_gaussian_vae_in_one_line(capsys, tiny_config, tmp_path):
    from vaelab.api import train

    train(tiny_config("train.epochs=1"), tmp_path / "vae", evaluate_after=False, log=lambda *_: None)
    line = cli_error(capsys, "sample", tmp_path / "vae", "--sampler", "sphere", "--n", "2", "--out", tmp_path / "s.png")
    assert "sphere" in line


def test_onnx_exports_the_encoders_mu_and_kappa_and_a_sampler_on_the_sphere(svae_run, tmp_path):
    """Every part exports (the rejection sampler is in none: the encoder gives q's parameters);
    the sampler's noise is normalised onto the sphere, as the prior's own draws are."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from vaelab.export.onnx import export_onnx

    manifest = export_onnx(svae_run, tmp_path / "onnx")
    assert set(manifest["parts"]) == {"encoder", "decoder", "scorer", "sampler"}
    enc = manifest["parts"]["encoder"]
    assert [o["name"] for o in enc["outputs"]] == ["mu", "kappa"]
    assert "von Mises-Fisher" in enc["note"]
    noise = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    sess = ort.InferenceSession(str(tmp_path / "onnx" / "sampler.onnx"))
    images = sess.run(None, {"noise": noise})[0]
    with torch.no_grad():
        z = torch.from_numpy(noise / np.linalg.norm(noise, axis=1, keepdims=True))
        ref = svae_run.model.decode(z).numpy()
    assert np.allclose(images, ref, atol=1e-5)
    x = svae_run.split("val").batch(slice(0, 5)).numpy()
    mu, kappa = ort.InferenceSession(str(tmp_path / "onnx" / "encoder.onnx")).run(None, {"image": x})
    assert np.allclose(np.linalg.norm(mu, axis=1), 1, atol=1e-5) and (kappa >= 1).all()
    assert np.allclose(kappa, kappa[:, :1])  # one concentration per image, in every column


def test_the_explorer_and_latent_plots_run_on_an_svae(capsys, svae_run, tmp_path):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from vaelab.explore.app import make_app
    from vaelab.explore.explorer import Explorer

    dims = TestClient(make_app(Explorer(svae_run, n=16))).get("/api/info").json()["dims"]
    assert len(dims) == 3 and all(d["kl"] is None for d in dims)
    rc, _, err = run_main(capsys, "plot", svae_run.dir.path, "--kind", "scatter", "--out", tmp_path / "c.png")
    assert rc == 0, err


def test_report_of_an_svae_run_is_written(capsys, svae_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(svae_run.dir.path, run)
    rc, _, err = run_main(capsys, "report", run)
    assert rc == 0, err
    html = (run / "report.html").read_text()
    assert "svae" in html and "vmf" in html


@pytest.mark.parametrize("m", (2, 3, 16))
def test_the_sampler_refuses_what_it_cannot_draw_in_one_line_instead_of_looping_forever(m):
    """Wood's loop never accepted a draw at a non-finite kappa or one past float64's resolution
    (about 1e16; an S-VAE with a 2-D latent hung in its first epoch): such kappas are refused."""
    import signal

    from vaelab.distributions.sphere import KAPPA_MAX
    from vaelab.errors import TrainingDiverged

    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the sampler looped"))
    signal.alarm(20)
    try:
        for bad in (float("nan"), float("inf")):
            with pytest.raises(TrainingDiverged, match=f"kappa is {bad} for 1 of 1 codes: .*diverged") as e:
                vmf(m, bad).rsample(generator=torch.Generator().manual_seed(0))
            assert "\n" not in str(e.value)
        with pytest.raises(ValueError, match="kappa 1e\\+16 is above 1e\\+10"):
            vmf(m, 1e16).rsample(generator=torch.Generator().manual_seed(0))
        # at the cap a draw is a point to within the spread sqrt((m - 1) / kappa) of the mean direction
        z = vmf(m, KAPPA_MAX).sample((2000,), generator=torch.Generator().manual_seed(1))[:, 0]
        angle = torch.arccos((z @ unit(m)).clamp(-1, 1))
        assert float(angle.max()) < 10 * math.sqrt((m - 1) / KAPPA_MAX)
        assert float(angle.mean()) > 0.1 * math.sqrt((m - 1) / KAPPA_MAX)  # not collapsed onto mu
    finally:
        signal.alarm(0)


def test_the_vmf_head_caps_kappa_where_draws_still_resolve():
    from vaelab.distributions.sphere import KAPPA_MAX
    from vaelab.models import build_model

    model = build_model(model_config(kind="svae", latent_dim=3, input_shape=(1, 28, 28)))
    head = model.posterior_head
    with torch.no_grad():
        head.kappa.bias.fill_(1e30)  # a concentration far past what float64 can draw from
        q = model.posterior(torch.rand(4, 1, 28, 28))
        assert torch.equal(q.kappa, torch.full((4,), KAPPA_MAX))
        z = q.rsample(generator=torch.Generator().manual_seed(0))
    assert torch.allclose(z.norm(dim=-1), torch.ones(4), atol=1e-5)


@pytest.mark.parametrize("edge", [1 - 1e-9, 1.0, 0.0])
def test_a_draw_at_a_pole_keeps_finite_gradients_in_float32(monkeypatch, edge):
    """At m = 2 the accepted eps is Beta(1/2, 1/2), with mass at 0 and 1: in float32 an eps near 1
    rounded to 1, w became -1, and sqrt(1 - w^2)'s infinite gradient at 0 turned a 2-D S-VAE's
    weights to nan in its first epoch. Draws there now give finite gradients, and stay on the circle."""
    loc = torch.nn.functional.normalize(torch.tensor([[0.6, -0.8], [0.3, 0.9]]), dim=-1).requires_grad_()
    kappa = torch.tensor([3.0, 50.0], requires_grad=True)
    q = VonMisesFisher(loc, kappa)
    monkeypatch.setattr(q, "_accepted_eps", lambda shape, gen: torch.full(shape, edge, dtype=torch.float64))
    z = q.rsample(generator=torch.Generator().manual_seed(0))
    (z * torch.tensor([1.0, 2.0])).sum().backward()
    assert torch.isfinite(kappa.grad).all() and torch.isfinite(loc.grad).all()
    assert torch.allclose(z.norm(dim=-1), torch.ones(2), atol=1e-6)
    w = (z * loc.detach()).sum(-1)  # mu . z: -1 at eps = 1, +1 at eps = 0
    assert torch.allclose(w, torch.full((2,), -1.0 if edge > 0.5 else 1.0), atol=1e-4)
