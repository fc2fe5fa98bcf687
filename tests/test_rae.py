"""Regularised autoencoders, RAE-L2 and RAE-GP (Ghosh et al. 2020): the gradient penalty against
a direct autograd Jacobian, the L2 term against the decoder's weights, the loss made of its
parts, training lowering it, one-line refusals, and the tools on a trained run (sampled by a
GMM on its codes; no prior, no density, so no nll)."""

from __future__ import annotations

import itertools
import json
import re

import pytest
import torch
from conftest import model_config, one_line, run_main
from torch import nn

from vaelab.errors import ConfigError
from vaelab.models import MODELS, build_model
from vaelab.models.rae import code_penalty, decoder_l2, gradient_penalty
from vaelab.training.loop import fit


def quiet(msg: str) -> None:
    pass


def tiny(kind: str, **opts):
    torch.manual_seed(0)
    return build_model(model_config(kind=kind, arch="mlp", input_shape=[1, 4, 4], hidden=[6], latent_dim=3,
                                    options={kind: opts} if opts else {}))


def direct_gp(decoder, z: torch.Tensor) -> torch.Tensor:
    """||sum_i dD_i/dz||^2 per code from the full Jacobian of each code's output, one code at a time."""
    out = []
    for zi in z:
        jac = torch.autograd.functional.jacobian(lambda c: decoder(c[None])[0].flatten(), zi)  # (P, D)
        out.append(jac.sum(0).square().sum())
    return torch.stack(out)


def test_gradient_penalty_equals_a_direct_jacobian_on_a_tiny_decoder():
    torch.manual_seed(1)
    dec = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.Sigmoid())
    z = torch.randn(6, 3, requires_grad=True)
    gp = gradient_penalty(dec(z), z)
    want = direct_gp(dec, z.detach())
    assert gp.shape == (6,)
    torch.testing.assert_close(gp, want, rtol=1e-5, atol=1e-7)
    # create_graph: the penalty itself has a gradient with respect to the decoder's weights
    (g,) = torch.autograd.grad(gp.sum(), dec[0].weight)
    assert g.abs().sum() > 0


def test_rae_gp_parts_are_the_penalties_of_its_own_decoder():
    m = tiny("rae-gp", beta=0.3, weight=0.7)
    x = torch.rand(5, 1, 4, 4)
    parts = m(x)
    z = m.encode(x).detach()
    want = direct_gp(lambda c: m.likelihood.mean(m.decode_logits(c)), z)
    torch.testing.assert_close(parts["gp"], want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(parts["code"], 0.5 * z.square().sum(1))
    torch.testing.assert_close(parts["loss"], parts["recon"] + 0.3 * parts["code"] + 0.7 * parts["gp"])
    # evaluation (no gradients) reports the same numbers, detached
    with torch.no_grad():
        ev = m(x)
    assert not ev["gp"].requires_grad and not ev["loss"].requires_grad
    torch.testing.assert_close(ev["gp"], parts["gp"].detach())
    # the model's step descends the penalty: its gradient reaches the encoder through z
    m.zero_grad()
    (0.7 * parts["gp"]).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.encoder.parameters())


def test_rae_l2_term_is_the_decoders_sum_of_squares_times_its_weight():
    m = tiny("rae-l2", beta=0.2, weight=0.05)
    x = torch.rand(4, 1, 4, 4)
    parts = m(x)
    squares = sum(float(p.detach().square().sum()) for p in m.decoder.parameters())
    assert squares > 0 and float(decoder_l2(m.decoder).detach()) == pytest.approx(squares, rel=1e-6)
    torch.testing.assert_close(parts["l2"], torch.full((4,), squares), rtol=1e-6, atol=0)
    z = m.encode(x)
    torch.testing.assert_close(parts["loss"], parts["recon"] + 0.2 * 0.5 * z.square().sum(1) + 0.05 * squares)
    # the term's gradient is 2 lambda theta on the decoder, nothing on the encoder
    m.zero_grad()
    (0.05 * parts["l2"]).mean().backward()
    for w in m.decoder.parameters():
        torch.testing.assert_close(w.grad, 2 * 0.05 * w.detach())
    assert all(p.grad is None or not p.grad.any() for p in m.encoder.parameters())


def test_code_penalty_of_a_feature_map():
    z = torch.arange(8.0).reshape(2, 1, 2, 2)
    assert code_penalty(z).tolist() == [0.5 * (0 + 1 + 4 + 9), 0.5 * (16 + 25 + 36 + 49)]


def test_families_and_defaults():
    for kind, weight in (("rae-l2", 5e-5), ("rae-gp", 1e-4)):
        fam = MODELS[kind]
        assert (fam.posterior, fam.prior, fam.objective) == ("point", "none", kind)
        m = tiny(kind)
        o = m.cfg.opts(kind)
        assert (o.beta, o.weight) == (1e-2, weight)
        assert {"density", "prior", "stochastic"}.isdisjoint(m.capabilities) and "continuous" in m.capabilities


@pytest.mark.parametrize("kind", ["rae-l2", "rae-gp"])
def test_training_lowers_the_loss(tiny_config, tmp_path, kind):
    res = fit(tiny_config(f"model.kind={kind}", "train.epochs=4", f"model.{kind}.weight=1e-3"), tmp_path / kind,
              log=quiet)
    losses = [row["train_loss"] for row in res.history]
    assert all(b < a for a, b in itertools.pairwise(losses)) and losses[-1] < 0.95 * losses[0], losses
    part = "l2" if kind == "rae-l2" else "gp"
    assert all(f"train_{k}" in res.history[-1] for k in ("recon", "code", part))


@pytest.mark.parametrize("overrides, match", [
    (["model.rae-gp.beta=-1"], r"model\.rae-gp\.beta \(the code penalty's weight\) must be >= 0, got -1"),
    (["model.rae-gp.weight=-0.5"], r"model\.rae-gp\.weight \(lambda, .*\) must be >= 0, got -0\.5"),
    (["model.rae-gp.lambda=3"], r"unknown option\(s\) model\.rae-gp\.lambda of rae-gp; its options: beta, weight"),
    (["model.posterior=gaussian"], (r"objective rae-gp is a deterministic autoencoder's .* needs "
                                    r"model\.posterior=point, and model\.posterior is gaussian")),
    (["model.rae-l2.beta=1"], r"model\.rae-l2 holds options of the objective rae-l2, and model\.objective is rae-gp"),
])
def test_bad_options_are_one_line(tiny_config, overrides, match):
    with pytest.raises(ConfigError) as e:
        tiny_config("model.kind=rae-gp", *overrides)
    assert re.search(match, one_line(e)), one_line(e)


def test_tools_on_a_one_epoch_run(tiny_config, tmp_path, capsys):
    run_dir = tmp_path / "rae"
    fit(tiny_config("model.kind=rae-gp", "train.epochs=1", "data.val=0.25"), run_dir, log=quiet)
    rc, out, err = run_main(capsys, "eval", run_dir, "--seed", "0")
    assert rc == 0, err
    ev = json.loads((run_dir / "eval.json").read_text())
    assert not [k for k in ev if k.startswith("nll")]  # no density: no nll of any kind, and eval says why
    assert "(nll_iw not applicable: this run's model (rae-gp: point posterior, none prior" in out
    assert all(f"\n  {k} " in out for k in ("recon", "code", "gp"))
    assert ev["loss"] == pytest.approx(ev["recon"] + 1e-2 * ev["code"] + 1e-4 * ev["gp"], rel=1e-5)
    # sampled ex post, by a GMM on the training codes; the prior sampler is refused in one line
    rc, _, err = run_main(capsys, "sample", run_dir, "--sampler", "gmm", "--components", "2", "--n", "4",
                          "--out", tmp_path / "s.png")
    assert rc == 0, err
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run_dir / "samplers" / "gmm.json").read_text())["params"]["components"] == 2
    rc, _, err = run_main(capsys, "sample", run_dir, "--n", "4", "--out", tmp_path / "p.png")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "prior" in err, err
    rc, _, err = run_main(capsys, "report", run_dir, "--out", tmp_path / "r.html")
    assert rc == 0, err
    assert "rae-gp" in (tmp_path / "r.html").read_text()
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from vaelab.api import Run
    from vaelab.export.onnx import resolve_parts

    run = Run.load(run_dir, device="cpu")
    assert resolve_parts(run.model, None) == ["encoder", "decoder", "scorer"]  # no prior: no ONNX sampler
    rc, _, err = run_main(capsys, "export", run_dir, "--onnx", tmp_path / "onnx", "--parts", "sampler")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "the ONNX sampler needs a prior" in err, err
    rc, _, err = run_main(capsys, "export", run_dir, "--onnx", tmp_path / "onnx")
    assert rc == 0, err
    assert list(json.loads((tmp_path / "onnx" / "onnx.json").read_text())["parts"]) == ["encoder", "decoder",
                                                                                          "scorer"]
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from vaelab.explore.app import make_app
    from vaelab.explore.explorer import Explorer

    info = TestClient(make_app(Explorer(run, n=32))).get("/api/info").json()
    assert info["latent_dim"] == 2
