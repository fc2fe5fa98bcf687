"""The Hamiltonian VAE (Caterini et al. 2018): the leapfrog integrator against the harmonic
oscillator (accuracy, volume, reversibility), the tempering's log-det against autograd's
Jacobian of the whole flow, the VAE's ELBO as the limit eps -> 0, beta_0 = 1, the weight
as an unbiased estimate of p(x) (log p(x) by quadrature on a 2-d latent), training through
``fit`` (learned eps and beta_0 in the model's one step), bit-exact resume, one-line
refusals, and the tools on a 1-epoch run."""

from __future__ import annotations

import itertools
import json
import math
import re

import pytest
import torch
from conftest import model_config, one_line, run_main

from vaelab.distributions import log_mean_exp
from vaelab.errors import ConfigError
from vaelab.models import MODELS, build_model
from vaelab.models.hamiltonian import leapfrog_flow, log_det, potential_grad, sqrt_betas
from vaelab.training import checkpoint
from vaelab.training.loop import fit

SMALL = ["model.kind=hamiltonian-vae", "model.hamiltonian.eps_lf=0.05", "model.hamiltonian.learn_eps=true",
         "model.hamiltonian.learn_beta_zero=true"]


def quiet(msg: str) -> None:
    pass


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def small_model(dtype=torch.float32, **opts):
    torch.manual_seed(0)
    m = build_model(model_config(kind="hamiltonian-vae", arch="mlp", input_shape=[1, 6, 6], hidden=[16],
                                 latent_dim=2, options={"hamiltonian": opts}))
    return m.to(dtype)


def binary(n: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return (torch.rand(n, 1, 6, 6, generator=gen(seed)) > 0.5).to(dtype)


# ---------------------------------------------------------------------------- the integrator
STIFF = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64)  # U(z) = 1/2 sum k_i z_i^2: omega_i = sqrt(k_i)


def oscillator(z):
    return STIFF * z, None


def test_leapfrog_follows_the_harmonic_oscillator_to_second_order():
    z0 = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    rho0 = torch.tensor([0.3, 1.0, -0.4], dtype=torch.float64)
    w = STIFF.sqrt()
    t = 1.3
    errors = []
    for n in (20, 40, 80):
        eps = torch.full((3,), t / n, dtype=torch.float64)
        z, rho, _ = leapfrog_flow(z0, rho0, oscillator, eps, n, torch.tensor(1.0, dtype=torch.float64))
        z_true = z0 * torch.cos(w * t) + rho0 / w * torch.sin(w * t)
        rho_true = -z0 * w * torch.sin(w * t) + rho0 * torch.cos(w * t)
        errors.append(max((z - z_true).abs().max().item(), (rho - rho_true).abs().max().item()))
    assert errors[-1] < 2e-3
    assert 3.5 < errors[0] / errors[1] < 4.5 and 3.5 < errors[1] / errors[2] < 4.5  # O(eps^2)
    # per-dimension step sizes: each dimension follows its own eps (a dimension with eps -> 0 stays put)
    eps = torch.tensor([t / 80, 1e-12, t / 80], dtype=torch.float64)
    z, rho, _ = leapfrog_flow(z0, rho0, oscillator, eps, 80, torch.tensor(1.0, dtype=torch.float64))
    assert abs(z[1] - z0[1]) < 1e-9 and abs(z[0] - (z0[0] * math.cos(t) + rho0[0] * math.sin(t))) < 2e-3


def test_leapfrog_is_volume_preserving_and_reversible():
    z0 = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    rho0 = torch.tensor([0.3, 1.0, -0.4], dtype=torch.float64)
    eps = torch.tensor([0.3, 0.1, 0.5], dtype=torch.float64)
    one = torch.tensor(1.0, dtype=torch.float64)

    def quartic(z):  # a non-quadratic potential: U = sum z^4 / 4 + z_0 z_1
        return z ** 3 + torch.stack([z[1], z[0], torch.zeros_like(z[2])]), None

    for grad in (oscillator, quartic):
        def flow(state, grad=grad):
            z, rho, _ = leapfrog_flow(state[:3], state[3:], grad, eps, 5, one)
            return torch.cat([z, rho])

        state = torch.cat([z0, rho0])
        jac = torch.autograd.functional.jacobian(flow, state)
        assert torch.linalg.det(jac).item() == pytest.approx(1.0, abs=1e-10)
        out = flow(state)
        back = flow(torch.cat([out[:3], -out[3:]]))  # flip the momentum, integrate again
        torch.testing.assert_close(back, torch.cat([z0, -rho0]), rtol=0, atol=1e-12)


def test_the_schedule_and_the_tempering_log_det_against_the_jacobian_of_the_whole_flow():
    b0 = torch.tensor(0.3, dtype=torch.float64)
    s = sqrt_betas(b0, 4)
    assert s[0].item() == pytest.approx(0.3 ** 0.5) and s[-1].item() == pytest.approx(1.0)
    # the paper's quadratic schedule in 1/sqrt(beta): 1/sqrt(beta_k) = (1 - 1/sqrt(beta_0)) k^2/K^2 + 1/sqrt(beta_0)
    for k in range(5):
        assert 1 / s[k].item() == pytest.approx((1 - 0.3 ** -0.5) * (k / 4) ** 2 + 0.3 ** -0.5)
    assert all(a < b for a, b in itertools.pairwise(s))  # cooling: beta rises to 1
    # a model's own potential (decoder and prior of a tiny model), D = 2, one image
    m = small_model(torch.float64)  # the potential alone (no posterior, whose head is fp32) in float64
    x = binary(1, dtype=torch.float64)
    grad_u = potential_grad(m, x, None, m.prior(None, 1), create_graph=True)
    eps = torch.tensor([0.2, 0.35], dtype=torch.float64)
    for beta0 in (0.3, 1.0):
        b = torch.tensor(beta0, dtype=torch.float64)

        def flow(state, b=b):
            z, rho, _ = leapfrog_flow(state[None, :2], state[None, 2:], grad_u, eps, 3, b)
            return torch.cat([z[0], rho[0]])

        state = torch.tensor([0.4, -1.1, 0.7, 0.2], dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(flow, state)
        sign, logdet = torch.linalg.slogdet(jac)
        # the leapfrog steps contribute 0: all of log |det| is the cooling's, D/2 log beta_0
        assert sign.item() == 1 and logdet.item() == pytest.approx(log_det(b, 2).item(), abs=1e-9)
        assert logdet.item() == pytest.approx(math.log(beta0), abs=1e-9)
        assert not torch.allclose(jac, torch.eye(4, dtype=torch.float64) * jac.diagonal())  # the flow mixes z, rho


# ---------------------------------------------------------------------------- the bound
def test_eps_to_zero_and_no_tempering_is_the_vaes_one_sample_elbo():
    m = small_model(n_lf=3, eps_lf=1e-9, beta_zero=1.0)
    x = binary(6)
    with torch.no_grad():
        out = m(x, generator=gen(1))
        assert set(out) == {"loss", "recon", "kl"} and all(v.shape == (6,) for v in out.values())
        q = m.posterior(x)
        z0 = q.rsample(generator=gen(1))  # the same first draw
        recon = m.recon_loss(m.decode_logits(z0), x)
        kl_mc = q.log_prob(z0) - m.prior(None, 6).log_prob(z0)
    torch.testing.assert_close(out["recon"], recon, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["kl"], kl_mc, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["loss"], out["recon"] + out["kl"])
    # over many draws, the VAE's ELBO with its closed-form KL (the elbo objective), up to the MC noise
    xs = x.repeat(2000, 1, 1, 1)
    with torch.no_grad():
        h = m(xs, generator=gen(2))["loss"].view(2000, 6)
        vae = build_model(model_config(kind="vae", arch="mlp", input_shape=[1, 6, 6], hidden=[16], latent_dim=2))
        own = {k: v for k, v in m.state_dict().items() if not k.startswith("critics.")}
        vae.load_state_dict(own)  # the same encoder and decoder
        e = vae(xs, generator=gen(3))["loss"].view(2000, 6)
    se = (h.var(0) / 2000 + e.var(0) / 2000).sqrt()
    assert ((h.mean(0) - e.mean(0)).abs() < 4 * se + 1e-6).all()


def log_px_by_quadrature(m, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log int p(x|z) p(z) dz on a 2-d grid (Bernoulli likelihood: no offset)."""
    g = torch.linspace(-7, 7, 401)
    z = torch.cartesian_prod(g, g)  # (G, 2)
    da = (g[1] - g[0]) ** 2
    with torch.no_grad():
        logits = m.decode_logits(z)  # (G, 1, 6, 6)
        out = []
        for xi in x:
            lp = -m.recon_loss(logits, xi.expand(len(z), -1, -1, -1)) + m.prior(None, len(z)).log_prob(z)
            out.append(torch.logsumexp(lp, 0) + da.log())
    return torch.stack(out)


def test_the_weight_estimates_p_x_and_its_log_bounds_log_p_x():
    """E[w] = p(x): log-mean-exp of many weights is log p(x) (by quadrature), which a wrong
    Jacobian term (the cooling's D/2 log beta_0 = -0.69 here) would miss; E[log w] is below it,
    and the IW estimate with q0 as the proposal (eval's nll_iw) finds the same log p(x)."""
    m = small_model(n_lf=3, eps_lf=0.3, beta_zero=0.5)
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
    assert (bound + 4 * se < iw).all()  # the ELBO is below log p(x) by its gap (a nat or more here)
    assert (bound < exact).all()


# ---------------------------------------------------------------------------- training
def test_training_lowers_the_loss_and_learns_eps_and_beta(tiny_config):
    res = fit(tiny_config(*SMALL, "train.epochs=3"), None, log=quiet)
    steps = res.trainer.steps
    assert [s.name for s in steps] == ["model"]  # one step: the flow's parameters train with the model
    flow = res.model.critics["hamiltonian"]
    assert {id(flow.log_eps), id(flow.beta_logit)} <= {id(p) for p in steps[0].params}
    h = res.history
    assert h[0]["train_loss"] > h[1]["train_loss"] > h[2]["train_loss"]
    assert all(abs(r["train_loss"] - r["train_recon"] - r["train_kl"]) < 1e-3 for r in h)
    eps = flow.eps().detach()
    assert eps.shape == (2,) and not torch.allclose(eps, torch.full((2,), 0.05))  # learned, per dimension
    assert 0 < flow.beta_zero().item() < 1 and flow.beta_zero().item() != pytest.approx(0.3, abs=1e-6)


def test_fixed_eps_and_beta_are_saved_buffers(tiny_config):
    m = small_model()
    flow = m.critics["hamiltonian"]
    assert list(flow.parameters()) == []
    sd = m.state_dict()
    torch.testing.assert_close(sd["critics.hamiltonian.log_eps"], torch.full((2,), math.log(1e-3)))
    assert sd["critics.hamiltonian.beta"].item() == pytest.approx(0.3)
    o = m.cfg.opts("hamiltonian")
    assert (o.n_lf, o.eps_lf, o.beta_zero, o.learn_eps, o.learn_beta_zero) == (3, 1e-3, 0.3, False, False)  # Pythae's
    assert MODELS["hamiltonian-vae"].objective == "hamiltonian" and MODELS["hvae"].objective == "elbo"
    assert "density" in m.capabilities


def test_resume_is_bit_exact(tiny_config, tmp_path):
    whole = fit(tiny_config(*SMALL, "train.epochs=3"), tmp_path / "whole", log=quiet)
    fit(tiny_config(*SMALL, "train.epochs=2"), tmp_path / "part", log=quiet)
    resumed = fit(tiny_config(*SMALL, "train.epochs=3"), tmp_path / "part", resume=True, log=quiet)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert list(a) == list(b) and "critics.hamiltonian.beta_logit" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa, sb = whole.trainer.optimizers["model"].state_dict(), resumed.trainer.optimizers["model"].state_dict()
    for i in sa["state"]:
        assert torch.equal(sa["state"][i]["exp_avg_sq"], sb["state"][i]["exp_avg_sq"])
    assert whole.history[-1]["train_kl"] == resumed.history[-1]["train_kl"]
    assert checkpoint._load(tmp_path / "part" / "checkpoint.safetensors")[0]  # weights in safetensors


def test_conditional_and_vamp_priors_train():
    for kw in ({"condition": "onehot", "prior": "conditional", "num_classes": 3}, {"prior": "vamp",
                                                                                   "vamp_components": 3}):
        torch.manual_seed(0)
        m = build_model(model_config(kind="hamiltonian-vae", arch="mlp", input_shape=[1, 6, 6], hidden=[8],
                                     latent_dim=2, options={"hamiltonian": {"eps_lf": 0.1}}, **kw))
        y = torch.tensor([0, 1, 2, 0]) if m.conditional else None
        out = m(binary(4, dtype=torch.float32), y, generator=gen(0))
        out["loss"].mean().backward()
        assert all(torch.isfinite(v).all() and v.shape == (4,) for v in out.values())
        grads = [p.grad for p in (m.prior_net.parameters())]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)  # the prior's gradient reaches it


def test_the_same_numbers_with_gradients_without_them_and_with_frozen_weights():
    """The flow takes grad U in z wherever it runs: training (through the graph), evaluation
    (torch.no_grad) and a model whose weights are frozen (nothing upstream of z0 needs a gradient)."""
    from vaelab.models import frozen

    m = small_model(eps_lf=0.2, beta_zero=0.5)
    x = binary(4)
    train = m(x, generator=gen(7))
    with torch.no_grad():
        ev = m(x, generator=gen(7))
    with frozen(m):
        fz = m(x, generator=gen(7))
    for k in ("loss", "recon", "kl"):
        torch.testing.assert_close(ev[k], train[k].detach())
        torch.testing.assert_close(fz[k].detach(), train[k].detach())
    assert train["loss"].requires_grad and not ev["loss"].requires_grad


# ---------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("overrides, match", [
    (["model.hamiltonian.n_lf=0"], r"model\.hamiltonian\.n_lf \(leapfrog steps\) must be at least 1, got 0"),
    (["model.hamiltonian.eps_lf=0"], r"model\.hamiltonian\.eps_lf \(the leapfrog step size\) must be > 0, got 0"),
    (["model.hamiltonian.eps_lf=-0.1"], r"eps_lf .* must be > 0, got -0\.1"),
    (["model.hamiltonian.beta_zero=0"], r"model\.hamiltonian\.beta_zero .* must be in \(0, 1\], got 0"),
    (["model.hamiltonian.beta_zero=1.5"], r"must be in \(0, 1\], got 1\.5"),
    (["model.hamiltonian.beta_zero=1", "model.hamiltonian.learn_beta_zero=true"],
     r"learn_beta_zero learns beta_0 in \(0, 1\) and cannot start at model\.hamiltonian\.beta_zero=1"),
    (["model.posterior=point"], (r"objective hamiltonian .* needs model\.posterior=gaussian and a prior .* got "
                                 r"model\.posterior=point and model\.prior=normal")),
    (["model.posterior=planar"], r"got model\.posterior=planar"),
    (["model.prior=none"], r"got model\.posterior=gaussian and model\.prior=none"),
    (["model.hamiltonian.steps=3"], r"unknown option\(s\) model\.hamiltonian\.steps of hamiltonian; its options: n_lf"),
])
def test_bad_options_are_one_line(tiny_config, overrides, match):
    with pytest.raises(ConfigError) as e:
        tiny_config("model.kind=hamiltonian-vae", *overrides)
    assert re.search(match, one_line(e)), one_line(e)


def test_hamiltonian_options_on_another_objective_are_refused(tiny_config):
    with pytest.raises(ConfigError, match="model.hamiltonian holds options of the objective hamiltonian, and "
                                          "model.objective is elbo"):
        tiny_config("model.hamiltonian.n_lf=3")


# ---------------------------------------------------------------------------- the tools on a 1-epoch run
def test_eval_and_tools_on_a_one_epoch_run(tiny_config, tmp_path, capsys):
    run_dir = tmp_path / "hm"
    fit(tiny_config(*SMALL, "train.epochs=1", "data.val=0.25"), run_dir, log=quiet)
    rc, out, err = run_main(capsys, "eval", run_dir, "--iw-samples", "20", "--seed", "0")
    assert rc == 0, err
    assert all(f"\n  {k} " in out for k in ("recon", "kl", "nll_iw"))
    ev = json.loads((run_dir / "eval.json").read_text())
    for k in ("loss", "recon", "kl", "nll_iw", "mse", "active_units"):
        assert math.isfinite(ev[k]), k
    assert ev["iw_samples"] == 20 and len(ev["kl_per_dim"]) == 2  # q0's closed-form KL per dimension
    assert ev["loss"] == pytest.approx(ev["recon"] + ev["kl"], rel=1e-6)
    # the IW estimate of -log p(x) (q0 as proposal) is below the bound, up to its own noise (Bernoulli: no offset)
    assert ev["nll_iw"] < ev["loss"] + 1.0
    # evaluation is seeded: the same numbers twice
    rc, _, err = run_main(capsys, "eval", run_dir, "--iw-samples", "20", "--seed", "0")
    assert rc == 0 and json.loads((run_dir / "eval.json").read_text())["loss"] == ev["loss"]
    rc, _, err = run_main(capsys, "sample", run_dir, "--n", "4", "--out", tmp_path / "s.png")
    assert rc == 0, err
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rc, _, err = run_main(capsys, "report", run_dir, "--out", tmp_path / "r.html")
    assert rc == 0, err
    assert "hamiltonian-vae" in (tmp_path / "r.html").read_text()
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    rc, _, err = run_main(capsys, "export", run_dir, "--onnx", tmp_path / "onnx", "--parts", "encoder,decoder")
    assert rc == 0, err  # each file checked against PyTorch by onnxruntime before it is written
    manifest = json.loads((tmp_path / "onnx" / "onnx.json").read_text())
    assert list(manifest["parts"]) == ["encoder", "decoder"]
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from vaelab.api import Run
    from vaelab.explore.app import make_app
    from vaelab.explore.explorer import Explorer

    info = TestClient(make_app(Explorer(Run.load(run_dir, device="cpu"), n=32))).get("/api/info").json()
    assert info["latent_dim"] == 2
