"""The Poincaré VAE (vaelab.models.poincare; the ball's maps and the wrapped normal in
vaelab.distributions): the maps against their closed forms and each other, the wrapped normal's
density integrated over the 2-D ball by quadrature and against its own draws (importance
weights in 5-D), its c -> 0 limit, the Monte-Carlo KL against quadrature, the refusals
(curvature, priors on R^D, factorvae), and the family and its tools on a run."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from conftest import cli_error, one_line, run_main

from vaelab.configure import build_config
from vaelab.distributions import (
    WrappedNormal,
    ball_distance,
    ball_expmap,
    ball_expmap0,
    ball_logmap,
    ball_logmap0,
    ball_project,
    ball_transport,
    cat,
    conformal_factor,
    kl_divergence,
    kl_per_dim,
    log_normal,
    mobius_add,
    to,
)
from vaelab.errors import ConfigError

CURVATURES = (0.3, 1.0, 2.5)
F64 = torch.float64


def points(n: int, d: int, c: float, seed: int, spread: float = 0.6) -> torch.Tensor:
    """n points of the ball of curvature -c (float64): exp_0 of Gaussian tangents of scale ``spread``."""
    g = torch.Generator().manual_seed(seed)
    return ball_expmap0(torch.randn(n, d, generator=g, dtype=F64) * spread, c)


def tangents(n: int, d: int, seed: int, spread: float = 1.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64) * spread


# ------------------------------------------------------------------------------ the ball's maps
@pytest.mark.parametrize("c", CURVATURES)
def test_mobius_addition_has_the_origin_as_identity_and_cancels_on_the_left(c):
    x, y = points(50, 4, c, 0), points(50, 4, c, 1)
    zero = torch.zeros_like(x)
    assert torch.allclose(mobius_add(x, zero, c), x, atol=1e-14) and torch.allclose(mobius_add(zero, x, c), x)
    assert torch.allclose(mobius_add(-x, mobius_add(x, y, c), c), y, atol=1e-10)  # (-x) (+) (x (+) y) = y
    assert (c * mobius_add(x, y, c).square().sum(-1) < 1).all()  # closed in the ball
    # not commutative: it differs from x + y and from y (+) x where x, y are not parallel
    assert not torch.allclose(mobius_add(x, y, c), mobius_add(y, x, c), atol=1e-6)


@pytest.mark.parametrize("c", CURVATURES)
def test_exp_and_log_maps_are_inverse_at_any_point_and_at_the_origin(c):
    x, y = points(64, 5, c, 2), points(64, 5, c, 3)
    u = tangents(64, 5, 4) / conformal_factor(x, c)  # Riemannian length about 2 at x, whatever lambda_x
    assert torch.allclose(ball_expmap(x, ball_logmap(x, y, c), c), y, atol=1e-10)  # exp_x(log_x(y)) = y
    assert torch.allclose(ball_logmap(x, ball_expmap(x, u, c), c), u, atol=1e-8)  # log_x(exp_x(u)) = u
    assert torch.allclose(ball_logmap0(ball_expmap0(u, c), c), u, atol=1e-9)
    zero = torch.zeros_like(u)
    assert torch.allclose(ball_expmap(zero, u, c), ball_expmap0(u, c), atol=1e-14)
    assert torch.allclose(ball_logmap(zero, y, c), ball_logmap0(y, c), atol=1e-12)
    assert torch.allclose(ball_expmap(x, torch.zeros_like(x), c), x, atol=1e-14)
    assert (c * ball_expmap(x, 5 * u, c).square().sum(-1) < 1).all()
    # exp_x(u) lies at distance lambda_x |u| from x (the Riemannian length of u)
    assert torch.allclose(ball_distance(x, ball_expmap(x, u, c), c), (conformal_factor(x, c) * u).norm(dim=-1),
                          rtol=1e-8)


@pytest.mark.parametrize("c", CURVATURES)
def test_the_distance_matches_its_closed_forms(c):
    x, y = points(64, 3, c, 5), points(64, 3, c, 6)
    d = ball_distance(x, y, c)
    x2, y2 = x.square().sum(-1), y.square().sum(-1)
    # d = arcosh(1 + 2c |x - y|^2 / ((1 - c|x|^2)(1 - c|y|^2))) / sqrt(c)
    ref = torch.acosh(1 + 2 * c * (x - y).square().sum(-1) / ((1 - c * x2) * (1 - c * y2))) / math.sqrt(c)
    assert torch.allclose(d, ref, rtol=1e-9, atol=1e-9)
    # the Riemannian norm of log_x(y), lambda_x |log_x(y)|; symmetric; to the origin 2 artanh(sqrt(c)|y|) / sqrt(c)
    assert torch.allclose(d, (conformal_factor(x, c) * ball_logmap(x, y, c)).norm(dim=-1), rtol=1e-9)
    assert torch.allclose(d, ball_distance(y, x, c), rtol=1e-9)
    assert torch.allclose(ball_distance(torch.zeros_like(y), y, c), 2 * torch.atanh(math.sqrt(c) * y.norm(dim=-1))
                          / math.sqrt(c), rtol=1e-12)
    # the metric is lambda_x^2 times the Euclidean one: a small step delta is lambda_x |delta| long
    delta = 1e-7 * tangents(64, 3, 7)
    assert torch.allclose(ball_distance(x, x + delta, c), conformal_factor(x, c)[:, 0] * delta.norm(dim=-1),
                          rtol=1e-5)


@pytest.mark.parametrize("c", CURVATURES)
def test_parallel_transport_keeps_the_riemannian_inner_product(c):
    x, y = points(64, 4, c, 8), points(64, 4, c, 9)
    u, w = tangents(64, 4, 10) / conformal_factor(x, c), tangents(64, 4, 11) / conformal_factor(x, c)
    pu, pw = ball_transport(x, y, u, c), ball_transport(x, y, w, c)
    lx, ly = conformal_factor(x, c)[:, 0], conformal_factor(y, c)[:, 0]
    assert torch.allclose(ly * pu.norm(dim=-1), lx * u.norm(dim=-1), rtol=1e-9)  # the norm
    assert torch.allclose(ly ** 2 * (pu * pw).sum(-1), lx ** 2 * (u * w).sum(-1), rtol=1e-8, atol=1e-8)  # angles
    assert torch.allclose(ball_transport(y, x, pu, c), u, rtol=1e-7, atol=1e-12)  # and back
    # the closed-form gyration is the definition's: -(a (+) b) (+) (a (+) (b (+) w))
    from vaelab.distributions import gyration

    a, b, w = points(64, 4, c, 12, 0.3), points(64, 4, c, 13, 0.3), tangents(64, 4, 14)
    by_sums = mobius_add(-mobius_add(a, b, c), mobius_add(a, mobius_add(b, w * 0.01, c), c), c)
    assert torch.allclose(gyration(a, b, w * 0.01, c), by_sums, atol=1e-10)
    # from the origin the gyration is the identity: PT_{0->y}(u) = (1 - c |y|^2) u
    zero = torch.zeros_like(y)
    assert torch.allclose(ball_transport(zero, y, u, c), (1 - c * y.square().sum(-1, keepdim=True)) * u, atol=1e-12)
    # the geodesic's own velocity is carried along it: PT_{x->y}(log_x(y)) = -log_y(x)
    assert torch.allclose(ball_transport(x, y, ball_logmap(x, y, c), c), -ball_logmap(y, x, c), rtol=1e-7,
                          atol=1e-10)


def test_projection_keeps_points_inside_and_leaves_inner_points_alone():
    x = torch.tensor([[0.3, 0.4], [3.0, 4.0], [0.6, 0.8]], dtype=F64)
    p = ball_project(x, 1.0)
    assert torch.equal(p[0], x[0]) and (p.norm(dim=-1) < 1).all()
    assert torch.isfinite(ball_distance(torch.zeros_like(p), p, 1.0)).all()


# ------------------------------------------------------------------------------ the wrapped normal
def polar_grid(c: float, radius: float, n_s: int = 3000, n_t: int = 720):
    """Points of the 2-D ball on a geodesic polar grid about the origin (midpoints) and the
    Riemannian area of each cell: sinh(sqrt(c) s) / sqrt(c) ds dtheta."""
    ds, dt = radius / n_s, 2 * math.pi / n_t
    s = (torch.arange(n_s, dtype=F64) + 0.5) * ds
    t = (torch.arange(n_t, dtype=F64) + 0.5) * dt
    r = torch.tanh(math.sqrt(c) * s / 2) / math.sqrt(c)  # the Euclidean radius at distance s from 0
    z = torch.stack([r[:, None] * torch.cos(t), r[:, None] * torch.sin(t)], -1).reshape(-1, 2)
    area = (torch.sinh(math.sqrt(c) * s) / math.sqrt(c) * ds * dt)[:, None].expand(n_s, n_t).reshape(-1)
    return z, area


@pytest.mark.parametrize("c", (0.5, 1.0, 2.0))
def test_the_density_integrates_to_one_over_the_2d_ball(c):
    mu = ball_expmap0(torch.tensor([[0.7, -0.4]], dtype=F64), c)
    q = WrappedNormal(mu, torch.tensor([[0.3, 0.6]], dtype=F64), c)
    z, area = polar_grid(c, radius=float(ball_distance(torch.zeros_like(mu), mu, c)) + 8.0)
    log_q = q.log_prob(z)
    assert float((log_q.exp() * area).sum()) == pytest.approx(1.0, abs=2e-4)
    # the volume term matters: without it (or with its sign flipped) the mass is not 1
    r = ball_distance(mu, z, c)
    wrong = log_q + 2 * torch.log(torch.sinh(math.sqrt(c) * r) / (math.sqrt(c) * r))
    assert abs(float((wrong.exp() * area).sum()) - 1) > 0.01


@pytest.mark.parametrize("c", (0.5, 1.5))
def test_importance_weights_of_another_wrapped_normals_draws_average_one_in_5d(c):
    """E_{z ~ q2}[q1(z) / q2(z)] = 1: q1's density is normalised, q2's is that of its own draws."""
    d = 5
    q1 = WrappedNormal(points(1, d, c, 12, 0.2), torch.full((1, d), 0.5, dtype=F64), c)
    q2 = WrappedNormal(points(1, d, c, 13, 0.1), torch.full((1, d), 0.9, dtype=F64), c)
    z = q2.sample((200000,), generator=torch.Generator().manual_seed(14))
    w = (q1.log_prob(z) - q2.log_prob(z)).exp()[:, 0]
    assert float(w.mean()) == pytest.approx(1.0, abs=4 * float(w.std()) / math.sqrt(len(w)))


@pytest.mark.parametrize("c", CURVATURES)
def test_draws_are_the_tangent_gaussian_wrapped_their_distance_to_mu_its_norm(c):
    stats = pytest.importorskip("scipy.stats")
    d, n = 4, 20000
    mu, sigma = points(1, d, c, 15), torch.tensor([[0.2, 0.5, 1.0, 1.5]], dtype=F64)
    q = WrappedNormal(mu, sigma, c)
    z = q.sample((n,), generator=torch.Generator().manual_seed(16))[:, 0]
    assert (c * z.square().sum(-1) < 1).all()
    v = q.tangent(z)  # lambda_mu log_mu(z): the Gaussian coordinates recovered
    assert torch.allclose(v.mean(0), torch.zeros(d, dtype=F64), atol=4 * 1.5 / math.sqrt(n))
    assert torch.allclose(v.std(0), sigma[0], rtol=0.03)
    iso = WrappedNormal(mu, torch.full((1, d), 0.7, dtype=F64), c)
    r = ball_distance(mu, iso.sample((5000,), generator=torch.Generator().manual_seed(17))[:, 0], c)
    assert stats.kstest(r.numpy() / 0.7, stats.chi(d).cdf).pvalue > 1e-3  # d_c(mu, z) = |v| ~ sigma chi_D


def test_log_prob_at_vanishing_curvature_is_the_euclidean_gaussians():
    """c -> 0: z = mu + v / 2 and log q(z) = log N(z; mu, sigma^2 / 4) - D log 2 (a density over the
    volume of the metric 4 I, 2^D dz)."""
    d = 3
    mu, sigma = torch.tensor([[0.4, -1.0, 2.0]], dtype=F64), torch.tensor([[0.5, 1.0, 2.0]], dtype=F64)
    noise = tangents(100, d, 18)[:, None]
    ref_z = mu + sigma * noise / 2
    ref = log_normal(ref_z, mu, torch.log(sigma.square() / 4)).sum(-1) - d * math.log(2)
    errors = []
    for c in (1e-4, 1e-6, 1e-8):
        q = WrappedNormal(mu, sigma, c)
        assert torch.allclose(q.from_noise(noise), ref_z, rtol=0, atol=50 * c)
        errors.append(float((q.log_prob(ref_z) - ref).abs().max()))
    assert errors[-1] < 1e-4 and errors[0] > errors[1] > errors[2], errors


def test_the_monte_carlo_kl_averages_to_the_kl_by_quadrature():
    c = 1.0
    mu = ball_expmap0(torch.tensor([[0.9, 0.3]], dtype=F64), c)
    q = WrappedNormal(mu, torch.tensor([[0.4, 0.25]], dtype=F64), c)
    p = WrappedNormal(torch.zeros(1, 2, dtype=F64), torch.ones(1, 2, dtype=F64), c)
    z, area = polar_grid(c, radius=float(ball_distance(torch.zeros_like(mu), mu, c)) + 8.0)
    log_q, log_p = q.log_prob(z), p.log_prob(z)
    exact = float((log_q.exp() * (log_q - log_p) * area).sum())
    draws = q.rsample((40000,), generator=torch.Generator().manual_seed(19))
    mc = kl_divergence(q, p, draws)[:, 0]
    assert kl_per_dim(q, p) is None  # no closed form
    assert float(mc.mean()) == pytest.approx(exact, abs=4 * float(mc.std()) / math.sqrt(len(mc)))
    assert exact > 0.5


def test_log_q_of_own_draws_matches_the_log_map_and_gradients_are_finite_in_float32():
    g = torch.Generator().manual_seed(20)
    head = torch.randn(64, 6, generator=g)
    head[0] = 0  # mu at the origin
    head[1] = 40  # mu at the float32 boundary
    head.requires_grad_()
    scale = torch.rand(64, 6, generator=g).add(0.05).requires_grad_()
    mu = ball_project(ball_expmap0(head, 1.0), 1.0)
    q = WrappedNormal(mu, scale, 1.0)
    z = q.rsample((3,), generator=g)
    assert z.dtype == torch.float32 and (z.double().norm(dim=-1) < 1).all()
    own, again = q.log_prob(z), q.log_prob(z.clone())
    assert torch.isfinite(again).all()
    assert torch.allclose(own[:, 2:], again[:, 2:], rtol=1e-3, atol=1e-2)
    p = WrappedNormal(torch.zeros_like(mu), torch.ones_like(scale), 1.0)
    (kl_divergence(q, p, z).sum() + z.sum()).backward()
    assert torch.isfinite(head.grad).all() and torch.isfinite(scale.grad).all()


def test_chunks_join_and_move():
    a = WrappedNormal(points(3, 2, 1.0, 21), torch.full((3, 2), 0.5, dtype=F64), 1.0)
    b = WrappedNormal(points(2, 2, 1.0, 22), torch.full((2, 2), 0.2, dtype=F64), 1.0)
    j = to(cat([a, b]), "cpu")
    assert isinstance(j, WrappedNormal) and j.loc.shape == (5, 2) and j.c == 1.0
    assert torch.equal(j.scale[:, 0], torch.tensor([0.5, 0.5, 0.5, 0.2, 0.2], dtype=F64))
    assert list(j.params()) == ["mu", "sigma"]
    with pytest.raises(ValueError):
        WrappedNormal(a.loc, a.scale, 0.0)


# ------------------------------------------------------------------------------ configs and refusals
BASE = ["model.arch=mlp", "model.hidden=8", "model.latent_dim=2"]


def test_the_family_is_wrapped_normal_wrapped_normal_prior_elbo():
    m = build_config(None, None, ["model.kind=pvae", *BASE]).model
    assert (m.posterior, m.prior, m.objective) == ("wrapped-normal", "wrapped-normal-prior", "elbo")
    assert m.opts("wrapped-normal").curvature == 1.0 and m.opts("wrapped-normal-prior").sigma == 1.0


@pytest.mark.parametrize("sets,names", [
    (["model.wrapped-normal.curvature=0"], ["model.wrapped-normal.curvature", "positive"]),
    (["model.wrapped-normal.curvature=-0.5"], ["model.wrapped-normal.curvature", "-0.5"]),
    (["model.wrapped-normal-prior.sigma=0"], ["model.wrapped-normal-prior.sigma"]),
    (["model.prior=normal"], ["wrapped-normal", "normal", "Poincaré ball"]),
    (["model.prior=vamp"], ["wrapped-normal", "vamp"]),
    (["model.objective=factorvae"], ["wrapped-normal", "factorvae"]),
    (["model.objective=tcvae"], ["tcvae", "wrapped-normal"]),
    (["model.kind=vae", "model.prior=wrapped-normal-prior"], ["wrapped-normal-prior", "gaussian"]),
    (["model.kind=svae", "model.prior=wrapped-normal-prior"], ["vmf", "wrapped-normal-prior"]),
])
def test_what_cannot_go_with_the_ball_is_refused_in_one_line(sets, names):
    with pytest.raises(ConfigError) as e:
        build_config(None, None, [*BASE, "model.kind=pvae", *sets])
    msg = one_line(e)
    assert all(n in msg for n in names), msg


def test_the_sphere_refusal_keeps_its_words():
    with pytest.raises(ConfigError) as e:
        build_config(None, None, [*BASE, "model.kind=svae", "model.prior=normal"])
    assert one_line(e) == ("model.posterior=vmf puts codes on the unit sphere, and model.prior=normal is a density "
                           "on R^D; use model.prior=spherical-uniform")


@pytest.mark.parametrize("value", ["0", "-1"])
def test_the_cli_refuses_a_curvature_of_zero_or_below_in_one_line_and_exit_2(capsys, tmp_path, value):
    line = cli_error(capsys, "train", "--set", "model.kind=pvae", "--set", f"model.wrapped-normal.curvature={value}",
                     "--out", tmp_path / "r")
    assert "model.wrapped-normal.curvature" in line and "positive" in line
    assert not (tmp_path / "r" / "model.safetensors").exists()


# ------------------------------------------------------------------------------ training and the tools
def history(run_dir) -> list[dict]:
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


def test_the_pvae_trains_its_loss_finite_and_falling(tiny_config, tmp_path):
    from vaelab.api import train

    cfg = tiny_config("model.kind=pvae", "model.latent_dim=2", "train.epochs=4", "model.hidden=16", "train.lr=3e-3",
                      "model.wrapped-normal.curvature=0.7")
    train(cfg, tmp_path / "r", evaluate_after=False, log=lambda *_: None)
    rows = history(tmp_path / "r")
    losses = [float(r["train_loss"]) for r in rows]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 5, losses
    assert all(float(r["train_loss"]) == pytest.approx(float(r["train_recon"]) + float(r["train_kl"]), rel=1e-5)
               for r in rows)


@pytest.fixture(scope="module")
def pvae_run(tmp_path_factory, shapes_npz):
    from vaelab.api import train

    cfg = build_config(None, None, [
        "data.name=npz", f"data.path={shapes_npz}", "data.val=0.25", "model.kind=pvae", "model.arch=mlp",
        "model.hidden=32", "model.latent_dim=2", "model.wrapped-normal.curvature=2", "train.epochs=2",
        "train.batch_size=64", "train.device=cpu", "train.progress=false"])
    return train(cfg, tmp_path_factory.mktemp("runs") / "pvae", evaluate_after=False, log=lambda *_: None)


def test_eval_has_nll_iw_and_the_monte_carlo_kl_and_no_kl_per_dim(capsys, pvae_run):
    rc, _, err = run_main(capsys, "eval", pvae_run.dir.path, "--iw-samples", "16")
    assert rc == 0, err
    ev = json.loads((pvae_run.dir.path / "eval.json").read_text())
    assert ev["iw_samples"] == 16 and math.isfinite(ev["nll_iw"]) and math.isfinite(ev["kl"])
    assert "kl_per_dim" not in ev
    assert ev["loss"] == pytest.approx(ev["recon"] + ev["kl"], rel=1e-5)
    assert ev["nll_iw"] <= ev["recon"] + ev["kl"] + 1e-3  # the importance-sampled bound is the tighter


def test_sample_from_the_prior_lies_inside_the_ball(capsys, pvae_run, tmp_path):
    from PIL import Image

    rc, _, err = run_main(capsys, "sample", pvae_run.dir.path, "--sampler", "prior", "--n", "64", "--out",
                          tmp_path / "s.png", "--npz", tmp_path / "s.npz")
    assert rc == 0, err
    assert np.asarray(Image.open(tmp_path / "s.png")).std() > 0
    with np.load(tmp_path / "s.npz") as f:
        codes = f["codes"] if "codes" in f.files else f["z"]
    r = np.linalg.norm(codes, axis=1)
    assert codes.shape == (64, 2) and (r < 1 / math.sqrt(2)).all() and r.max() > 0.3  # the ball of c = 2


def test_onnx_exports_mu_and_sigma_and_a_sampler_onto_the_ball(pvae_run, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from vaelab.export.onnx import export_onnx

    manifest = export_onnx(pvae_run, tmp_path / "onnx")
    assert set(manifest["parts"]) == {"encoder", "decoder", "scorer", "sampler"}
    enc = manifest["parts"]["encoder"]
    assert [o["name"] for o in enc["outputs"]] == ["mu", "sigma"] and "Poincaré" in enc["note"]
    noise = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
    images = ort.InferenceSession(str(tmp_path / "onnx" / "sampler.onnx")).run(None, {"noise": noise})[0]
    with torch.no_grad():
        z = ball_expmap0(torch.from_numpy(noise).double() / 2, 2.0).float()  # exp_0(sigma noise / lambda_0)
        ref = pvae_run.model.decode(z).numpy()
    assert np.allclose(images, ref, atol=1e-5)
    x = pvae_run.split("val").batch(slice(0, 5)).numpy()
    mu, sigma = ort.InferenceSession(str(tmp_path / "onnx" / "encoder.onnx")).run(None, {"image": x})
    assert (np.linalg.norm(mu, axis=1) < 1 / math.sqrt(2)).all() and (sigma > 0).all()


def test_the_explorer_and_report_run_on_a_pvae(capsys, pvae_run, tmp_path):
    pytest.importorskip("starlette")
    import shutil

    from starlette.testclient import TestClient

    from vaelab.explore.app import make_app
    from vaelab.explore.explorer import Explorer

    dims = TestClient(make_app(Explorer(pvae_run, n=16))).get("/api/info").json()["dims"]
    assert len(dims) == 2 and all(d["kl"] is None for d in dims)
    run = tmp_path / "run"
    shutil.copytree(pvae_run.dir.path, run)
    rc, _, err = run_main(capsys, "report", run)
    assert rc == 0, err
    html = (run / "report.html").read_text()
    assert "pvae" in html and "wrapped-normal" in html
