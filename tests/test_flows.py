"""Normalizing-flow posteriors (planar, radial, iaf): log-determinants against autograd's
Jacobian, the invertibility constraints, the IAF's autoregressive structure, log q as a
normalised density, the flow VAE's bounds against the same numbers computed by hand, and
the tools on a flow run (no kl_per_dim, the ONNX encoder's outputs named for what they are)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import cli_error, model_config, one_line, run_main
from torch.autograd.functional import jacobian

from vaelab.configure import build_config
from vaelab.distributions import DiagNormal, Flowed, StandardNormal, cat, to
from vaelab.errors import ConfigError
from vaelab.evaluation.evaluate import evaluate
from vaelab.models import POSTERIORS, build_model
from vaelab.models.flows import (
    IAFFlow,
    PlanarFlow,
    RadialFlow,
    planar_step,
    planar_u_hat,
    radial_step,
)

FLOWS = ["planar", "radial", "iaf"]


def make_flow(kind: str, dim: int, steps: int = 3, features: int = 5, amortised: bool = True):
    torch.manual_seed(0)
    if kind == "planar":
        f = PlanarFlow(dim, steps, features, amortised)
    elif kind == "radial":
        f = RadialFlow(dim, steps, features, amortised)
    else:
        f = IAFFlow(dim, steps, features, [7, 6], 4)
    return f.double()


def contexts(flow, b: int, features: int = 5, seed: int = 1):
    dtype = next(flow.parameters()).dtype
    h = torch.randn(b, features, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return flow.context(h.to(dtype))


def log_det_by_autograd(flow, z: torch.Tensor, ctx, i: int) -> float:
    """log |det J| of the flow at z (D,) for item i, from autograd's full Jacobian."""
    ci = tuple(c[i:i + 1] for c in ctx)
    j = jacobian(lambda v: flow(v[None], ci)[0][0], z)
    return float(torch.linalg.slogdet(j)[1])


# ------------------------------------------------------------------------------ the maths
@pytest.mark.parametrize("kind", FLOWS)
@pytest.mark.parametrize("dim", [1, 2, 5])
def test_log_det_matches_autograds_jacobian(kind, dim):
    flow = make_flow(kind, dim)
    ctx = contexts(flow, 4)
    z = torch.randn(3, 4, dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)  # (S, B, D) draws
    out, log_det = flow(z, ctx)
    assert out.shape == z.shape and log_det.shape == (3, 4)
    for s in range(3):
        for i in range(4):
            assert log_det[s, i].item() == pytest.approx(log_det_by_autograd(flow, z[s, i], ctx, i), abs=1e-10)


@pytest.mark.parametrize("kind", ["planar", "radial"])
def test_shared_parameters_log_det_matches_too(kind):
    flow = make_flow(kind, 3, amortised=False)
    ctx = contexts(flow, 2)
    assert torch.equal(ctx[0][0], ctx[0][1])  # one set for every image
    z = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    log_det = flow(z, ctx)[1]
    for i in range(2):
        assert log_det[i].item() == pytest.approx(log_det_by_autograd(flow, z[i], ctx, i), abs=1e-10)


def test_planar_u_hat_keeps_w_dot_u_above_minus_one_and_the_map_invertible():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(200, 3, generator=g, dtype=torch.float64)
    u = -5 * w + torch.randn(200, 3, generator=g, dtype=torch.float64)  # w.u far below -1: not invertible as given
    assert ((w * u).sum(-1) < -1).float().mean() > 0.9
    u_hat, m = planar_u_hat(u, w)
    wu_hat = (w * u_hat).sum(-1)
    assert (wu_hat >= -1 - 1e-12).all()  # the appendix's condition (softplus underflows to -1 far out)
    assert (m >= -1).all()  # w.u_hat as the step uses it: exactly
    assert (wu_hat[(w * u).sum(-1) > -30] > -1).all()
    assert torch.allclose(wu_hat, m.squeeze(-1))  # w.u_hat = m(w.u) = -1 + softplus(w.u)
    assert torch.allclose(m.squeeze(-1), torch.nn.functional.softplus((w * u).sum(-1)) - 1)
    # u_hat differs from u only along w
    along = u_hat - u
    assert torch.allclose(along - (along * w).sum(-1, keepdim=True) * w / w.square().sum(-1, keepdim=True),
                          torch.zeros_like(along), atol=1e-12)
    # an adversarial u (w.u = -3, where z + u tanh(w.z + b) folds): with u_hat the Jacobian's
    # determinant is positive everywhere, most of all near w.z + b = 0 where tanh' is largest
    w1 = torch.tensor([[0.6, -0.8, 0.0]], dtype=torch.float64)
    u1 = -3 * w1
    b1 = torch.tensor([0.1], dtype=torch.float64)
    raw = jacobian(lambda v: v + u1[0] * torch.tanh((v * w1[0]).sum() + b1[0]), -b1[0] * w1[0])
    assert torch.linalg.det(raw).item() < 0  # the step as given is not invertible
    pts = torch.randn(50, 3, generator=g, dtype=torch.float64) * 0.3 - b1 * w1
    for zi in pts:
        j = jacobian(lambda v: planar_step_one(v, u1, w1, b1), zi)
        det = torch.linalg.det(j).item()
        assert det > 0
        assert math.log(det) == pytest.approx(planar_step(zi[None], u1, w1, b1)[1].item(), abs=1e-9)


def planar_step_one(v, u, w, b):
    return planar_step(v[None], u, w, b)[0][0]


def test_radial_beta_is_at_least_minus_alpha_so_the_determinant_stays_positive():
    g = torch.Generator().manual_seed(5)
    z0 = torch.zeros(1, 2, dtype=torch.float64)
    a = torch.tensor([0.3], dtype=torch.float64)
    b = torch.tensor([-30.0], dtype=torch.float64)  # beta -> -alpha: the steepest contraction allowed
    z = torch.randn(500, 1, 2, generator=g, dtype=torch.float64)
    _, log_det = radial_step(z, z0, a, b)
    assert torch.isfinite(log_det).all()
    for zi in z[:5, 0]:  # and it is the Jacobian's
        j = jacobian(lambda v: radial_step(v[None], z0, a, b)[0][0], zi)
        assert torch.linalg.det(j).item() > 0


def test_iaf_is_autoregressive_each_step_triangular_in_its_order_with_sigma_on_the_diagonal():
    dim = 4
    flow = make_flow("iaf", dim, steps=2)
    ctx = contexts(flow, 1)
    z = torch.randn(dim, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    h = ctx[0]
    for t, made in enumerate(flow.steps):
        def step(v, made=made):
            m, s = made(v[None], h)
            sig = torch.sigmoid(s)
            return (sig * v[None] + (1 - sig) * m)[0]

        j = jacobian(step, z)
        # step 0: output i reads inputs 0..i (lower triangular); step 1, the order reversed: upper
        tri = torch.tril(j) if t == 0 else torch.triu(j)
        assert torch.equal(j, tri), t
        assert not torch.equal(j, torch.diag(torch.diagonal(j)))  # it does read the earlier inputs
        sigma = torch.sigmoid(made(z[None], h)[1])[0]
        assert torch.allclose(torch.diagonal(j), sigma)
        # the MADE's outputs m, s read strictly earlier inputs only: zero on the diagonal too
        jm = jacobian(lambda v, made=made: made(v[None], h)[0][0], z)
        assert torch.equal(torch.diagonal(jm), torch.zeros(dim, dtype=torch.float64))


@pytest.mark.parametrize("kind", FLOWS)
def test_log_q_is_a_normalised_density(kind):
    """E_q[f(z) / q(z)] = 1 for any density f: here a Gaussian f narrower than q (so the ratio
    stays bounded), centred on q's draws, over 2-D codes; 40000 draws."""
    flow = make_flow(kind, 2).float()
    base = DiagNormal(torch.tensor([[0.3, -0.2]]), torch.tensor([[0.2, -0.1]]))
    q = Flowed(base, flow, contexts(flow, 1))
    with torch.no_grad():
        pilot = q.sample((2000,), generator=torch.Generator().manual_seed(6))
        centre, scale = pilot.mean(0), 0.5 * pilot.std(0).min()
        z = q.rsample((40000,), generator=torch.Generator().manual_seed(7))
        log_f = DiagNormal(centre, (2 * scale.log()).expand(1, 2)).log_prob(z)
        ratio = (log_f - q.log_prob(z)).double().exp()
    assert ratio.mean().item() == pytest.approx(1.0, abs=4 * ratio.std().item() / 200)
    assert ratio.std().item() < 2  # the check has power: a log q off by 0.1 nats would fail it


def test_log_q_is_known_at_its_own_draws_only():
    flow = make_flow("planar", 2).float()
    q = Flowed(DiagNormal(torch.zeros(3, 2), torch.zeros(3, 2)), flow, contexts(flow, 3))
    z = q.rsample((2,), generator=torch.Generator().manual_seed(8))
    assert q.log_prob(z).shape == (2, 3)
    with pytest.raises(ValueError, match="its own draws"):
        q.log_prob(z.clone())


# ------------------------------------------------------------------------------ the config
@pytest.mark.parametrize("kind", FLOWS)
@pytest.mark.parametrize("steps", [0, -2])
def test_a_flow_of_no_steps_is_refused_in_one_line(kind, steps):
    with pytest.raises(ConfigError) as e:
        build_config(None, None, [f"model.posterior={kind}", f"model.{kind}.steps={steps}"])
    msg = one_line(e)
    assert f"model.{kind}.steps" in msg and f"got {steps}" in msg


def test_the_cli_refuses_a_flow_of_no_steps_with_one_line_and_exit_2(capsys, tmp_path):
    msg = cli_error(capsys, "train", "--preset", "mlp-vae", "--set", "model.posterior=planar", "--set",
                    "model.planar.steps=0", "--out", tmp_path / "r")
    assert "model.planar.steps" in msg
    assert not (tmp_path / "r").exists()


def test_flow_options_of_a_posterior_not_chosen_are_refused():
    with pytest.raises(ConfigError) as e:
        build_config(None, None, ["model.posterior=gaussian", "model.planar.steps=3"])
    assert "model.planar" in one_line(e)


@pytest.mark.parametrize("objective", ["tcvae"])
def test_an_objective_that_needs_a_diagonal_gaussian_is_refused_naming_both(objective):
    with pytest.raises(ConfigError) as e:
        build_config(None, None, ["model.posterior=iaf", f"model.objective={objective}"])
    msg = one_line(e)
    assert objective in msg and "iaf" in msg


def test_flow_posteriors_are_stochastic_continuous_and_not_diagonal():
    for kind in FLOWS:
        head = POSTERIORS[kind]
        assert (head.stochastic, head.continuous, head.diagonal, head.codebook, head.two_layers) == \
            (True, True, False, False, False)


# ------------------------------------------------------------------------------ the model
def flow_model(kind: str, **kw):
    torch.manual_seed(0)
    base = {"arch": "mlp", "input_shape": [1, 6, 6], "hidden": [16], "latent_dim": 3, "posterior": kind}
    base.update(kw)
    return build_model(model_config(**base))


def images(n=8, seed=0):
    return torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", FLOWS)
def test_log_weights_are_log_p_x_z_plus_log_p_z_minus_log_q_by_the_change_of_variables(kind):
    """The iwae / nll_iw log-weights against the same draws pushed through the flow by hand,
    log q from autograd's Jacobian (not the flow's own log-determinants)."""
    m = flow_model(kind).double()
    x = images(4).double()
    with torch.no_grad():
        log_w = m.log_weights(x, None, 5, generator=torch.Generator().manual_seed(9))
        q = m.posterior(x)
        z0 = q.base.rsample((5,), generator=torch.Generator().manual_seed(9))  # the same noise
    head = m.posterior_head
    ctx = q.context
    by_hand = torch.empty(5, 4, dtype=torch.float64)
    for s in range(5):
        for i in range(4):
            ci = tuple(c[i:i + 1] for c in ctx)
            zk = head.flow(z0[s, i][None], ci)[0][0]
            j = jacobian(lambda v, ci=ci: head.flow(v[None], ci)[0][0], z0[s, i])
            log_q = (DiagNormal(q.base.loc[i], q.base.logvar[i]).log_prob(z0[s, i])
                     - torch.linalg.slogdet(j)[1])
            with torch.no_grad():
                log_px = -m.recon_loss(m.decode_logits(zk[None]), x[i:i + 1])[0]
            by_hand[s, i] = log_px + StandardNormal(3, dtype=torch.float64).log_prob(zk) - log_q
    assert torch.allclose(log_w, by_hand, atol=1e-8)


@pytest.mark.parametrize("kind", ["radial", "iaf"])
def test_an_identity_flow_gives_the_gaussian_posteriors_nll_iw(kind):
    """A flow set to the identity (radial: beta = 0; IAF: sigma = 1) on a Gaussian VAE's weights
    gives that VAE's nll_iw (the same draws), and its Monte-Carlo kl the Gaussian's on average."""
    gauss = flow_model("gaussian")
    flow = flow_model(kind)
    missing, unexpected = flow.load_state_dict(gauss.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("posterior_head.flow.") for k in missing)
    with torch.no_grad():
        if kind == "radial":
            net = flow.posterior_head.flow.net
            net.weight.zero_()
            net.bias.zero_()  # a = b = 0: beta = -softplus(0) + softplus(0) = 0
        else:
            for made in flow.posterior_head.flow.steps:
                made.out.weight.zero_()
                made.out.bias[3:].fill_(40.0)  # sigma = sigmoid(40) = 1 in float32
    from vaelab.data import ImageSet

    data = ImageSet((images(16) * 255).to(torch.uint8), None)
    a = evaluate(gauss, data, iw_samples=20, seed=3)
    b = evaluate(flow, data, iw_samples=20, seed=3)
    assert b["nll_iw"] == pytest.approx(a["nll_iw"], rel=1e-6)
    assert b["recon"] == pytest.approx(a["recon"], rel=1e-6)
    assert "kl_per_dim" in a and "kl_per_dim" not in b
    # the Monte-Carlo kl of 4000 draws per image against the closed form
    x = images(16)
    with torch.no_grad():
        q = flow.posterior(x)
        z = q.rsample((4000,), generator=torch.Generator().manual_seed(4))
        mc = (q.log_prob(z) - StandardNormal(3).log_prob(z)).mean(0)
        closed = gauss.posterior(x)
        exact = -0.5 * (1 + closed.logvar - closed.mean.square() - closed.logvar.exp()).sum(-1)
    assert torch.allclose(mc, exact, atol=0.1)


def test_under_bf16_autocast_the_flow_and_log_q_stay_fp32():
    m = flow_model("iaf")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = m.posterior(images(4))
        z = q.rsample(generator=torch.Generator().manual_seed(0))
        assert z.dtype == torch.float32 and q.log_prob(z).dtype == torch.float32
        assert q.mean.dtype == torch.float32


def test_chunks_of_a_flow_posterior_join_and_move_as_one():
    m = flow_model("planar")
    x = images(10)
    with torch.no_grad():
        whole = m.posterior(x)
        joined = cat([to(m.posterior(x[:4]), "cpu"), to(m.posterior(x[4:]), "cpu")])
        assert isinstance(joined, Flowed)
    # the mean, computed when first asked (here, outside no_grad), as if computed where q was: no graph
    assert not joined.mean.requires_grad
    with torch.no_grad():
        assert torch.allclose(joined.mean, whole.mean, atol=1e-6)
        assert list(joined.params()) == ["code", "base_mu", "base_logvar"]
        g = torch.Generator().manual_seed(1)
        assert torch.allclose(joined.sample(generator=g), whole.sample(generator=torch.Generator().manual_seed(1)),
                              atol=1e-6)


def test_chunks_whose_flows_are_copies_join_and_others_are_refused():
    """Run.posterior on a GPU moves each chunk to the CPU with its own copy of the flow."""
    import copy

    m = flow_model("iaf")
    x = images(6)
    with torch.no_grad():
        a, b = m.posterior(x[:3]), m.posterior(x[3:])
        b_copy = Flowed(b.base, copy.deepcopy(b.flow), b.context)
        joined = cat([a, b_copy])
        assert torch.allclose(joined.mean, m.posterior(x).mean, atol=1e-6)
        other = copy.deepcopy(b.flow)
        next(other.parameters()).add_(0.1)
        with pytest.raises(TypeError, match="Flowed"):
            cat([a, Flowed(b.base, other, b.context)])


# ------------------------------------------------------------------------------ training and the tools
def history_losses(run_dir) -> list[float]:
    import csv

    with open(run_dir / "history.csv") as f:
        return [float(r["train_loss"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize("kind,objective", [("planar", "elbo"), ("iaf", "iwae"), ("radial", "elbo")])
def test_a_flow_vae_trains_its_loss_finite_and_falling(tiny_config, tmp_path, kind, objective):
    from vaelab.api import train

    cfg = tiny_config(f"model.posterior={kind}", f"model.objective={objective}", "train.epochs=4",
                      "model.hidden=16", "train.lr=3e-3")
    train(cfg, tmp_path / "r", evaluate_after=False, log=lambda *_: None)
    losses = history_losses(tmp_path / "r")
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 5, losses


@pytest.fixture(scope="module")
def planar_run(tmp_path_factory, shapes_npz):
    from vaelab.api import train

    cfg = build_config(None, None, [
        "data.name=npz", f"data.path={shapes_npz}", "data.val=0.25", "model.kind=vae", "model.arch=mlp",
        "model.hidden=32", "model.latent_dim=3", "model.posterior=planar", "model.planar.steps=4",
        "train.epochs=2", "train.batch_size=64", "train.device=cpu", "train.progress=false"])
    return train(cfg, tmp_path_factory.mktemp("runs") / "planar", evaluate_after=False, log=lambda *_: None)


def test_eval_of_a_flow_run_has_nll_iw_and_no_kl_per_dim(capsys, planar_run):
    rc, out, err = run_main(capsys, "eval", planar_run.dir.path, "--iw-samples", "8")
    assert rc == 0, err
    ev = json.loads((planar_run.dir.path / "eval.json").read_text())
    assert "kl_per_dim" not in ev and "kl_per_dim" not in out
    assert ev["iw_samples"] == 8 and math.isfinite(ev["nll_iw"])
    assert ev["kl"] > 0  # the Monte-Carlo KL at each image's draw, averaged


def test_the_explorer_shows_no_kl_per_dimension_for_a_flow(planar_run):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from vaelab.explore.app import make_app
    from vaelab.explore.explorer import Explorer

    dims = TestClient(make_app(Explorer(planar_run, n=16))).get("/api/info").json()["dims"]
    assert len(dims) == 3 and all(d["kl"] is None for d in dims)
    assert all(d["spread"] > 0 for d in dims)  # posterior draws, not the codes alone


def test_the_onnx_encoder_of_a_flow_names_its_outputs_for_what_they_are(planar_run, tmp_path):
    pytest.importorskip("onnxscript")
    from vaelab.export.onnx import export_onnx

    manifest = export_onnx(planar_run, tmp_path / "onnx", parts=["encoder"])
    enc = manifest["parts"]["encoder"]
    assert [o["name"] for o in enc["outputs"]] == ["code", "base_mu", "base_logvar"]
    assert "flow" in enc["note"]
    if "max_abs_diff" in enc:
        assert enc["max_abs_diff"] <= 1e-4


def test_the_elbo_anomaly_score_of_a_flow_uses_its_own_log_q(planar_run):
    from vaelab.anomaly.scores import score_images

    x = planar_run.split("val").batch(slice(0, 6))
    m = planar_run.model
    s = score_images(m, x, "elbo", samples=50, seed=0)
    # the same by hand: recon + log q - log p over 50 draws of the model's own posterior
    with torch.no_grad():
        q = m.posterior(x)
        z = q.rsample((50,), generator=torch.Generator().manual_seed(0))
        hand = m.recon_loss(m.decode_logits(z), x).mean(0) + (q.log_prob(z) - m.prior(None, 6).log_prob(z)).mean(0)
    assert s.shape == (6,)
    assert torch.allclose(torch.as_tensor(s), hand.double(), rtol=1e-5)


def test_sample_and_the_latent_plots_work_on_a_flow_run(capsys, planar_run, tmp_path):
    import numpy as np
    from PIL import Image

    for args in (["sample", planar_run.dir.path, "--n", "4", "--out", tmp_path / "s.png"],
                 ["plot", planar_run.dir.path, "--kind", "traverse", "--out", tmp_path / "t.png"],
                 ["plot", planar_run.dir.path, "--kind", "scatter", "--out", tmp_path / "c.png"]):
        rc, _, err = run_main(capsys, *args)
        assert rc == 0, err
        png = np.asarray(Image.open(args[-1]))
        assert png.std() > 0
