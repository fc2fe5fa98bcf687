"""The Riemannian Hamiltonian VAE (Chadebec et al. 2020): the metric against a direct sum and
torch.linalg, its closed-form gradients against autograd, the generalised leapfrog's fixed
points against their implicit equations, the constant metric against the Hamiltonian VAE's
leapfrog (step by step and the whole bound), volume preservation by autograd's Jacobian, the
weight as an unbiased estimate of p(x) (quadrature on a 2-d latent), training through ``fit``,
the stored metric saved and reloaded (the same evaluation), one-line refusals, and the tools on
a 1-epoch run."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from conftest import model_config, one_line, run_main

from vaelab.distributions import log_mean_exp
from vaelab.errors import ConfigError
from vaelab.models import MODELS, build_model
from vaelab.models.hamiltonian import leapfrog_flow, potential_grad
from vaelab.models.rhvae import (
    Metric,
    generalized_leapfrog,
    momentum_half_step,
    position_step,
)
from vaelab.training import checkpoint
from vaelab.training.loop import fit

F64 = torch.float64
SMALL = ["model.kind=rhvae", "model.rhvae.eps_lf=0.05", "model.rhvae.metric_hidden=16", "model.rhvae.centroids=100"]


def quiet(msg: str) -> None:
    pass


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def small_model(kind="rhvae", dtype=torch.float32, **opts):
    torch.manual_seed(0)
    section = "rhvae" if kind == "rhvae" else "hamiltonian"
    extra = {"metric_hidden": 8} if kind == "rhvae" else {}
    m = build_model(model_config(kind=kind, arch="mlp", input_shape=[1, 6, 6], hidden=[16], latent_dim=2,
                                 options={section: extra | opts}))
    return m.to(dtype)


def binary(n: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return (torch.rand(n, 1, 6, 6, generator=gen(seed)) > 0.5).to(dtype)


def random_metric(n: int, d: int, seed: int, t: float = 1.5, lam: float = 0.01, scale: float = 1.0):
    """Centroids (n, d) and lower-triangular factors with a positive diagonal (n, d, d), float64."""
    g = gen(seed)
    c = torch.randn(n, d, generator=g, dtype=F64)
    low = torch.randn(n, d, d, generator=g, dtype=F64).tril(-1) * 0.5
    diag = torch.diag_embed(torch.rand(n, d, generator=g, dtype=F64) + 0.5)
    return c, scale * (low + diag), t, lam


def direct_inverse(z, c, f, t, lam):
    """G^{-1}(z) for one code z (D,), summed term by term."""
    out = lam * torch.eye(len(z), dtype=z.dtype)
    for ci, fi in zip(c, f):
        out = out + fi @ fi.T * torch.exp(-((z - ci) ** 2).sum() / t ** 2)
    return out


def direct_kinetic(z, v, c, f, t, lam):
    """1/2 log det G(z) + 1/2 v^T G^{-1}(z) v by torch.linalg, for one code."""
    inv = direct_inverse(z, c, f, t, lam)
    return 0.5 * torch.logdet(torch.linalg.inv(inv)) + 0.5 * v @ inv @ v


# ---------------------------------------------------------------------------- the metric
def test_the_metric_is_the_direct_sum_symmetric_positive_definite_and_agrees_with_torch_linalg():
    c, f, t, lam = random_metric(4, 3, seed=0)
    metric = Metric(c, f, t, lam)
    z = torch.randn(5, 3, generator=gen(1), dtype=F64) * 1.5
    v = torch.randn(5, 3, generator=gen(2), dtype=F64)
    at = metric.at(z)
    for b in range(5):
        want = direct_inverse(z[b], c, f, t, lam)
        torch.testing.assert_close(at.inv[b], want, rtol=1e-12, atol=1e-12)
        assert torch.equal(at.inv[b], at.inv[b].T)
        assert torch.linalg.eigvalsh(at.inv[b]).min() >= lam * (1 - 1e-9)  # SPD, at least lambda I
        g = torch.linalg.inv(want)
        assert at.log_det_g()[b].item() == pytest.approx(torch.linalg.slogdet(g)[1].item(), abs=1e-10)
        torch.testing.assert_close(at.inv_times(v)[b], want @ v[b], rtol=1e-12, atol=1e-12)
        mvn = torch.distributions.MultivariateNormal(torch.zeros(3, dtype=F64), covariance_matrix=g)
        assert at.log_normal(v)[b].item() == pytest.approx(mvn.log_prob(v[b]).item(), abs=1e-10)
        # draws of N(0, G(z)): the map noise -> draw has covariance G, and the draw's density is as said
        a = metric.at(z[b].expand(3, 3)).draw(torch.eye(3, dtype=F64)).T  # the map's matrix, column by column
        torch.testing.assert_close(a @ a.T, g, rtol=1e-10, atol=1e-10)
        d = at.draw(v)[b]
        assert at.log_normal_of_draw(v)[b].item() == pytest.approx(mvn.log_prob(d).item(), abs=1e-10)
    # the weights fall with the distance to each centroid, at the temperature's scale
    w = metric.weights(c[:1] + torch.tensor([[1.5, 0, 0]], dtype=F64))
    assert w[0, 0].item() == pytest.approx(math.exp(-1.0), rel=1e-12)
    # no centroids: G^{-1} = lambda I everywhere, log det G = D log(1/lambda)
    empty = Metric(c[:0], f[:0], t, lam).at(z)
    torch.testing.assert_close(empty.inv, lam * torch.eye(3, dtype=F64).expand(5, 3, 3))
    torch.testing.assert_close(empty.log_det_g(), torch.full((5,), -3 * math.log(lam), dtype=F64))
    assert torch.count_nonzero(empty.grad_kinetic(v)) == 0


def test_the_kinetic_energys_closed_form_gradient_is_autograds():
    c, f, t, lam = random_metric(5, 3, seed=3)
    metric = Metric(c, f, t, lam)
    z = torch.randn(4, 3, generator=gen(4), dtype=F64)
    vs = torch.randn(4, 3, generator=gen(5), dtype=F64) * 3
    got = metric.at(z).grad_kinetic(vs)
    for b in range(4):
        zb = z[b].clone().requires_grad_()
        want = torch.autograd.grad(direct_kinetic(zb, vs[b], c, f, t, lam), zb)[0]
        torch.testing.assert_close(got[b], want, rtol=1e-10, atol=1e-12)
    assert got.abs().min() > 1e-6  # the metric's gradient is not trivially zero here


def test_the_metric_keeps_the_codes_precision_under_mixed_precision():
    """Under bf16 autocast (train.precision=mixed on CPU) the metric's products stay fp32."""
    c, f, t, lam = random_metric(6, 3, seed=12)
    metric = Metric(c.float(), f.float(), t, lam)
    z = torch.randn(4, 3, generator=gen(13))
    v = torch.randn(4, 3, generator=gen(14))
    plain = metric.at(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = Metric(c.float(), f.float(), t, lam).at(z)
        out = [mixed.inv, mixed.chol, mixed.grad_kinetic(v), mixed.draw(v), metric.inverse_times(z, v)]
    want = [plain.inv, plain.chol, plain.grad_kinetic(v), plain.draw(v), metric.inverse_times(z, v)]
    for a, b in zip(out, want):
        assert a.dtype == torch.float32 and torch.equal(a, b)


# ---------------------------------------------------------------------------- the integrator
def quartic(z):  # U = sum z^4 / 4 + z_0 z_1 (B, 2 or 3): a non-quadratic potential
    extra = torch.zeros_like(z)
    extra[:, 0], extra[:, 1] = z[:, 1], z[:, 0]
    return z ** 3 + extra, None


def h_grads(z, v, c, f, t, lam, grad_u):
    """grad_z H and grad_v H at one (z, v), every term by autograd from the direct sum."""
    z = z.clone().requires_grad_()
    v = v.clone().requires_grad_()
    kin = direct_kinetic(z, v, c, f, t, lam)
    gz, gv = torch.autograd.grad(kin, (z, v))
    return gz + grad_u(z[None])[0][0], gv


def test_the_fixed_points_satisfy_their_implicit_equations():
    c, f, t, lam = random_metric(4, 3, seed=6, t=1.2, lam=0.5)
    metric = Metric(c, f, t, lam)
    z = torch.randn(3, 3, generator=gen(7), dtype=F64) * 0.5
    v = torch.randn(3, 3, generator=gen(8), dtype=F64)
    eps = 0.1
    gu = quartic(z)[0]
    residuals = {}
    for steps in (1, 3, 40):
        vh = momentum_half_step(v, gu, metric.at(z), eps, steps)
        zn = position_step(z, vh, metric.at(z), metric, eps, steps)
        rv, rz = [], []
        for b in range(3):
            gz, _ = h_grads(z[b], vh[b], c, f, t, lam, quartic)
            rv.append((vh[b] - (v[b] - eps / 2 * gz)).abs().max())
            _, gv0 = h_grads(z[b], vh[b], c, f, t, lam, quartic)
            _, gv1 = h_grads(zn[b], vh[b], c, f, t, lam, quartic)
            rz.append((zn[b] - (z[b] + eps / 2 * (gv0 + gv1))).abs().max())
        residuals[steps] = (max(rv).item(), max(rz).item())
    assert max(residuals[40]) < 1e-13  # converged: the implicit equations hold
    assert 1e-13 < max(residuals[3]) < 1e-4  # Pythae's 3 iterations: close, not exact
    assert residuals[1][0] > 10 * residuals[3][0] and residuals[1][1] > 10 * residuals[3][1]


def test_a_constant_metric_is_the_ordinary_leapfrog_of_the_hamiltonian_vae():
    """G^{-1} = lambda I (no centroids): v' = v - eps/2 grad U, z' = z + eps lambda v', which is
    hamiltonian.leapfrog_flow in rho = sqrt(lambda) v with step sqrt(lambda) eps."""
    lam, eps = 0.04, 0.3
    metric = Metric(torch.zeros(0, 3, dtype=F64), torch.zeros(0, 3, 3, dtype=F64), 1.5, lam)
    z0 = torch.tensor([[1.0, -0.5, 2.0], [0.2, 0.1, -0.3]], dtype=F64)
    v0 = torch.tensor([[0.3, 1.0, -0.4], [2.0, -1.0, 0.5]], dtype=F64) / math.sqrt(lam)
    for beta0 in (0.3, 1.0):
        b = torch.tensor(beta0, dtype=F64)
        zk, vk, _, _ = generalized_leapfrog(z0, v0, quartic, metric, eps, 4, b, 3)
        zh, rh, _ = leapfrog_flow(z0, math.sqrt(lam) * v0, quartic, torch.full((3,), eps * math.sqrt(lam),
                                                                                  dtype=F64), 4, b)
        torch.testing.assert_close(zk, zh, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(math.sqrt(lam) * vk, rh, rtol=1e-12, atol=1e-12)
        assert (zk - z0).abs().min() > 1e-3  # it moved


def test_a_model_with_no_stored_metric_gives_the_hamiltonian_vaes_bound():
    """In evaluation before any training step the metric is lambda I: the whole bound (loss,
    recon, kl) is the Hamiltonian VAE's with eps sqrt(lambda), the same encoder and decoder."""
    lam, eps = 0.04, 0.5
    r = small_model(eps_lf=eps, regularization=lam, beta_zero=0.5)
    h = small_model("hamiltonian-vae", eps_lf=eps * math.sqrt(lam), beta_zero=0.5)
    own = {k: v for k, v in r.state_dict().items() if not k.startswith("critics.")}
    h.load_state_dict(own | {k: v for k, v in h.state_dict().items() if k.startswith("critics.")})
    r.eval()
    h.eval()
    x = binary(5, seed=3)
    with torch.no_grad():
        a, b = r(x, generator=gen(9)), h(x, generator=gen(9))
    for k in ("loss", "recon", "kl"):
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5)
    assert (a["recon"] - r.recon_loss(r.decode_logits(r.posterior(x).rsample(generator=gen(9))), x)).abs().max() > 1e-3


def test_the_generalised_leapfrog_is_volume_preserving_and_reversible_when_solved():
    """The whole flow (z_0, v_0) -> (z_K, v_K) on a model's own potential and a metric with
    centroids: log |det| is the cooling's D/2 log beta_0 once the implicit equations are solved;
    one fixed-point iteration (an explicit, non-symplectic step) misses it."""
    m = small_model(dtype=F64)
    x = binary(1, dtype=F64)
    grad_u = potential_grad(m, x, None, m.prior(None, 1), create_graph=True)
    c, f, t, lam = random_metric(3, 2, seed=10, t=1.0, lam=0.3)
    metric = Metric(c * 0.7, f, t, lam)
    state = torch.tensor([0.4, -0.6, 0.9, -0.7], dtype=F64)

    def run(s, b, steps, n_lf=3):
        z, v, _, _ = generalized_leapfrog(s[None, :2], s[None, 2:], grad_u, metric, 0.4, n_lf, b, steps)
        return torch.cat([z[0], v[0]])

    for beta0 in (0.3, 1.0):
        b = torch.tensor(beta0, dtype=F64)
        jac = torch.autograd.functional.jacobian(lambda s, b=b: run(s, b, 40), state)
        sign, logdet = torch.linalg.slogdet(jac)
        # D/2 log beta_0, up to the likelihood's fp32 sums (recon_loss), which make grad U not quite a gradient
        assert sign.item() == 1 and logdet.item() == pytest.approx(math.log(beta0), abs=1e-7)
        assert not torch.allclose(jac, torch.eye(4, dtype=F64) * jac.diagonal())  # it mixes z and v
    one = torch.tensor(1.0, dtype=F64)
    rough = torch.linalg.slogdet(torch.autograd.functional.jacobian(lambda s: run(s, one, 1), state))[1]
    assert abs(rough.item()) > 1e-4
    with torch.no_grad():
        out = run(state, one, 40)
        back = run(torch.cat([out[:2], -out[2:]]), one, 40)  # flip the momentum, integrate again
    torch.testing.assert_close(back, torch.cat([state[:2], -state[2:]]), rtol=0, atol=1e-10)
    assert (out[:2] - state[:2]).abs().min() > 1e-2


# ---------------------------------------------------------------------------- the bound
def log_px_by_quadrature(m, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log int p(x|z) p(z) dz on a 2-d grid (Bernoulli likelihood: no offset)."""
    g = torch.linspace(-7, 7, 401)
    z = torch.cartesian_prod(g, g)
    da = (g[1] - g[0]) ** 2
    with torch.no_grad():
        logits = m.decode_logits(z)
        out = []
        for xi in x:
            lp = -m.recon_loss(logits, xi.expand(len(z), -1, -1, -1)) + m.prior(None, len(z)).log_prob(z)
            out.append(torch.logsumexp(lp, 0) + da.log())
    return torch.stack(out)


def test_the_weight_estimates_p_x_and_its_log_bounds_log_p_x():
    """E[w] = p(x) with a stored metric of a few centroids: log-mean-exp of many weights is
    log p(x) by quadrature (without the -1/2 log det G(z_0) of gamma's density it is 0.23 nats
    above); E[log w] is below, and the IW estimate with q0 (eval's nll_iw) finds the same log p(x)."""
    m = small_model(n_lf=3, eps_lf=0.2, beta_zero=0.5, temperature=1.0, regularization=1.0,
                    fixed_point_steps=12, centroids=4)
    c, f, _, _ = random_metric(4, 2, seed=11, scale=0.5)
    net = m.critics["rhvae"]
    net.remember(c.float(), f.float())
    assert int(net.seen) == 4 and torch.equal(net.centroids, c.float())
    m.eval()
    x = binary(3, seed=4)
    exact = log_px_by_quadrature(m, x)
    n = 20000
    with torch.no_grad():
        log_w = -m(x.repeat(n, 1, 1, 1), generator=gen(5))["loss"].view(n, 3)
        iw = torch.stack([log_mean_exp(m.log_weights(xi[None], None, n, generator=gen(6)), 0)[0] for xi in x])
    est = log_mean_exp(log_w, 0)
    torch.testing.assert_close(est, exact, rtol=0, atol=0.03)
    torch.testing.assert_close(iw, exact, rtol=0, atol=0.03)
    bound = log_w.mean(0)
    se = log_w.std(0) / n ** 0.5
    assert (bound + 4 * se < iw).all() and (bound < exact).all()


# ---------------------------------------------------------------------------- training, saving, reloading
def test_training_lowers_the_loss_learns_the_metric_and_stores_its_points(tiny_config):
    res = fit(tiny_config(*SMALL, "train.epochs=3"), None, log=quiet)
    steps = res.trainer.steps
    assert [s.name for s in steps] == ["model"]  # the metric network trains with the model, one step
    net = res.model.critics["rhvae"]
    assert {id(p) for p in net.parameters()} <= {id(p) for p in steps[0].params}
    h = res.history
    assert h[0]["train_loss"] > h[1]["train_loss"] > h[2]["train_loss"]
    assert all(abs(r["train_loss"] - r["train_recon"] - r["train_kl"]) < 1e-3 for r in h)
    assert int(net.seen) == 3 * 256  # every training image of every epoch written once
    assert torch.isfinite(net.factors).all() and (net.factors.diagonal(dim1=-2, dim2=-1) > 0).all()
    assert torch.equal(net.factors, net.factors.tril()) and net.centroids.abs().sum() > 0
    fresh = build_model(res.model.cfg).critics["rhvae"]
    assert not torch.allclose(fresh.diag.weight, net.diag.weight)  # the metric network learned


def test_the_stored_metric_is_saved_and_a_reloaded_run_evaluates_identically(tiny_config, tmp_path):
    from vaelab.api import Run

    run_dir = tmp_path / "rh"
    res = fit(tiny_config(*SMALL, "train.epochs=1"), run_dir, log=quiet)
    model = res.model.eval()
    tensors = checkpoint._load(run_dir / checkpoint.WEIGHTS)[0]  # the weights, in safetensors
    keys = [k for k in tensors if k.startswith("critics.rhvae.")]
    assert {"critics.rhvae.centroids", "critics.rhvae.factors", "critics.rhvae.seen"} <= set(keys)
    assert int(tensors["critics.rhvae.seen"]) == 256
    loaded = Run.load(run_dir, device="cpu").model.eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    x = torch.rand(8, 1, 28, 28, generator=gen(12))  # images of the run's shape
    with torch.no_grad():
        a, b = model(x, generator=gen(13)), loaded(x, generator=gen(13))
    for k in ("loss", "recon", "kl"):
        assert torch.equal(a[k], b[k]), k
    # the stored points matter: without them (G^{-1} = lambda I) the same draws give another bound
    loaded.critics["rhvae"].seen.zero_()
    with torch.no_grad():
        c = loaded(x, generator=gen(13))
    assert (c["loss"] - a["loss"]).abs().max() > 1e-4


def test_resume_is_bit_exact_with_the_stored_metric(tiny_config, tmp_path):
    whole = fit(tiny_config(*SMALL, "train.epochs=2"), tmp_path / "whole", log=quiet)
    fit(tiny_config(*SMALL, "train.epochs=1"), tmp_path / "part", log=quiet)
    resumed = fit(tiny_config(*SMALL, "train.epochs=2"), tmp_path / "part", resume=True, log=quiet)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert list(a) == list(b) and "critics.rhvae.factors" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert whole.history[-1]["train_kl"] == resumed.history[-1]["train_kl"]


def test_only_a_training_step_writes_the_stored_points():
    m = small_model(eps_lf=0.2)
    net = m.critics["rhvae"]
    x = binary(4)
    with torch.no_grad():
        m(x, generator=gen(0))  # training mode, no gradients: the batch's metric, nothing written
    assert int(net.seen) == 0
    m(x, generator=gen(0))
    assert int(net.seen) == 4
    torch.testing.assert_close(net.centroids[:4], m.posterior(x).mean.detach())
    torch.testing.assert_close(net.factors[:4], net(x).detach())
    m.eval()
    m(x, generator=gen(0))
    with torch.no_grad():
        ev = m(x, generator=gen(7))
    assert int(net.seen) == 4
    fz = m(x, generator=gen(7))  # evaluation with gradients (frozen-weight tools): the same numbers
    for k in ("loss", "recon", "kl"):
        torch.testing.assert_close(fz[k].detach(), ev[k])


def test_defaults_registry_and_capabilities():
    m = small_model()
    o = m.cfg.opts("rhvae")
    assert (o.n_lf, o.eps_lf, o.beta_zero, o.temperature, o.regularization, o.fixed_point_steps) == (
        3, 1e-3, 0.3, 1.5, 0.01, 3)
    assert (o.centroids, o.metric_hidden) == (6400, 8)
    assert MODELS["rhvae"].objective == "rhvae" and MODELS["rhvae"].posterior == "gaussian"
    assert "density" in m.capabilities
    sd = m.state_dict()
    assert sd["critics.rhvae.centroids"].shape == (6400, 2) and sd["critics.rhvae.factors"].shape == (6400, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(m.encode(binary(3)), m.posterior(binary(3)).mean)


# ---------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("overrides, match", [
    (["model.rhvae.n_lf=0"], r"model\.rhvae\.n_lf \(leapfrog steps\) must be at least 1, got 0"),
    (["model.rhvae.eps_lf=0"], r"model\.rhvae\.eps_lf \(the leapfrog step size\) must be > 0, got 0"),
    (["model.rhvae.beta_zero=0"], r"model\.rhvae\.beta_zero .* must be in \(0, 1\], got 0"),
    (["model.rhvae.beta_zero=1.5"], r"must be in \(0, 1\], got 1\.5"),
    (["model.rhvae.temperature=0"], r"model\.rhvae\.temperature \(the metric's T\) must be > 0, got 0"),
    (["model.rhvae.temperature=-1"], r"temperature .* must be > 0, got -1"),
    (["model.rhvae.regularization=0"], r"model\.rhvae\.regularization .* must be > 0, got 0"),
    (["model.rhvae.fixed_point_steps=0"], r"model\.rhvae\.fixed_point_steps must be at least 1, got 0"),
    (["model.rhvae.centroids=0"], r"model\.rhvae\.centroids .* must be at least 1, got 0"),
    (["model.rhvae.metric_hidden=0"], r"model\.rhvae\.metric_hidden .* must be at least 1, got 0"),
    (["model.posterior=point"], (r"objective rhvae .* needs model\.posterior=gaussian and a prior .* got "
                                 r"model\.posterior=point and model\.prior=normal")),
    (["model.prior=none"], r"got model\.posterior=gaussian and model\.prior=none"),
    (["model.rhvae.steps=3"], r"unknown option\(s\) model\.rhvae\.steps of rhvae; its options: n_lf"),
])
def test_bad_options_are_one_line(tiny_config, overrides, match):
    with pytest.raises(ConfigError) as e:
        tiny_config("model.kind=rhvae", *overrides)
    assert re.search(match, one_line(e)), one_line(e)


# ---------------------------------------------------------------------------- the tools on a 1-epoch run
def test_eval_and_tools_on_a_one_epoch_run(tiny_config, tmp_path, capsys):
    run_dir = tmp_path / "rh"
    fit(tiny_config(*SMALL, "train.epochs=1", "data.val=0.25"), run_dir, log=quiet)
    rc, out, err = run_main(capsys, "eval", run_dir, "--iw-samples", "20", "--seed", "0")
    assert rc == 0, err
    assert all(f"\n  {k} " in out for k in ("recon", "kl", "nll_iw"))
    ev = json.loads((run_dir / "eval.json").read_text())
    for k in ("loss", "recon", "kl", "nll_iw", "mse", "active_units"):
        assert math.isfinite(ev[k]), k
    assert ev["loss"] == pytest.approx(ev["recon"] + ev["kl"], rel=1e-6)
    assert ev["nll_iw"] < ev["loss"] + 1.0
    rc, _, err = run_main(capsys, "eval", run_dir, "--iw-samples", "20", "--seed", "0")
    assert rc == 0 and json.loads((run_dir / "eval.json").read_text())["loss"] == ev["loss"]
    rc, _, err = run_main(capsys, "sample", run_dir, "--n", "4", "--out", tmp_path / "s.png")
    assert rc == 0, err
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    rc, _, err = run_main(capsys, "export", run_dir, "--onnx", tmp_path / "onnx")
    assert rc == 0, err  # each file checked against PyTorch by onnxruntime before it is written
    manifest = json.loads((tmp_path / "onnx" / "onnx.json").read_text())
    assert list(manifest["parts"]) == ["encoder", "decoder", "scorer", "sampler"]
    assert [o["name"] for o in manifest["parts"]["encoder"]["outputs"]] == ["mu", "logvar"]  # q0's
