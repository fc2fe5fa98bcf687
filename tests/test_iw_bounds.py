"""MIWAE, PIWAE and CIWAE (Rainforth et al. 2018): each bound against torch.logsumexp over the
same log-weights by hand, their special cases (IWAE, the ELBO), PIWAE's two optimisation steps
(gradients, the parameter split, resume), one-line refusals, and the tools on a trained run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import model_config, run_main

from vaelab.errors import ConfigError
from vaelab.models import MODELS, build_model
from vaelab.models.iw_bounds import encoder_parameters
from vaelab.models.objectives import OBJECTIVES, Objective
from vaelab.training import checkpoint
from vaelab.training.loop import fit


def quiet(msg: str) -> None:
    pass


def small(kind: str, seed: int = 0, iw_k: int | None = None, **opts):
    """A tiny mlp model of family ``kind`` (6x6 images, latent 3) with its objective's options
    (``iw_k``: model.k of the iwae family)."""
    torch.manual_seed(seed)
    extra = {"options": {kind: opts}} if opts else {}
    if iw_k is not None:
        extra["k"] = iw_k
    return build_model(model_config(kind=kind, arch="mlp", input_shape=[1, 6, 6], hidden=[16], latent_dim=3,
                                   **extra)).eval()


def images(n=5, seed=0):
    return (torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(seed)) > 0.5).float()


def gen(seed=3):
    return torch.Generator().manual_seed(seed)


def by_hand(model, x, n, seed=3):
    """The n log-weights (n, B) the objective sees with generator seed ``seed``."""
    return model.log_weights(x, None, n, generator=gen(seed))


def lme(t, dim):
    return torch.logsumexp(t, dim) - math.log(t.shape[dim])


# ---------------------------------------------------------------------------- the bounds, by hand
def test_miwae_is_the_mean_over_m_groups_of_their_k_sample_bounds():
    m, x = small("miwae", m=3, k=4), images()
    with torch.no_grad():
        out = m(x, generator=gen())
        lw = by_hand(m, x, 12)  # draws 0..3 are group 0, 4..7 group 1, ...
        want = torch.stack([torch.logsumexp(lw[4 * g:4 * g + 4], 0) - math.log(4) for g in range(3)]).mean(0)
    torch.testing.assert_close(out["loss"], -want)
    torch.testing.assert_close(out["nelbo"], -lw.mean(0))
    assert (out["loss"] <= out["nelbo"] + 1e-5).all()  # tighter than the ELBO
    assert not torch.allclose(out["loss"], -lme(lw, 0))  # and not the IWAE bound of all 12


def test_miwae_with_one_group_is_iwae_and_with_one_sample_the_elbo():
    x = images()
    iw = small("iwae", iw_k=6)
    one_group, one_sample = small("miwae", m=1, k=6), small("miwae", m=6, k=1)
    for other in (one_group, one_sample):
        other.load_state_dict(iw.state_dict())
    with torch.no_grad():
        ref = iw(x, generator=gen())
        torch.testing.assert_close(one_group(x, generator=gen())["loss"], ref["loss"])
        torch.testing.assert_close(one_sample(x, generator=gen())["loss"], ref["nelbo"])
    assert not torch.allclose(ref["loss"], ref["nelbo"])


def test_ciwae_mixes_the_elbo_and_the_iwae_bound_of_the_same_draws():
    x = images()
    models = {b: small("ciwae", beta=b, k=5) for b in (0.0, 0.3, 1.0)}
    iw = small("iwae", iw_k=5)
    with torch.no_grad():
        lw = by_hand(models[0.3], x, 5)
        out = {b: m(x, generator=gen()) for b, m in models.items()}
        ref = iw(x, generator=gen())
    elbo, iwae = lw.mean(0), lme(lw, 0)
    torch.testing.assert_close(out[0.3]["loss"], -(0.3 * elbo + 0.7 * iwae))
    torch.testing.assert_close(out[0.3]["nelbo"], -elbo)
    torch.testing.assert_close(out[0.3]["niwae"], -iwae)
    torch.testing.assert_close(out[1.0]["loss"], ref["nelbo"])  # beta 1: the (K-draw) ELBO
    torch.testing.assert_close(out[0.0]["loss"], ref["loss"])  # beta 0: IWAE_K
    assert not torch.allclose(out[0.3]["loss"], out[0.0]["loss"])


def test_piwae_reports_the_iwae_bound_of_all_draws_and_the_encoders_miwae_bound():
    m, x = small("piwae", m=2, k=3), images()
    mi = small("miwae", m=2, k=3)
    mi.load_state_dict(m.state_dict())
    with torch.no_grad():
        out = m(x, generator=gen())
        lw = by_hand(m, x, 6)
        ref = mi(x, generator=gen())
    torch.testing.assert_close(out["loss"], -(torch.logsumexp(lw, 0) - math.log(6)))
    torch.testing.assert_close(out["loss_encoder"], -(torch.logsumexp(lw.view(2, 3, -1), 1) - math.log(3)).mean(0))
    torch.testing.assert_close(out["loss_encoder"], ref["loss"])
    torch.testing.assert_close(out["nelbo"], -lw.mean(0))


# ---------------------------------------------------------------------------- PIWAE's two steps
def test_piwae_steps_split_the_parameters_into_inference_and_generative_networks():
    m = small("piwae")
    dec, enc = m.optimisation_steps()
    assert (dec.name, dec.loss, enc.name, enc.loss) == ("decoder", "loss", "encoder", "loss_encoder")
    ids = lambda ps: {id(p) for p in ps}
    assert ids(enc.params) == ids(m.encoder.parameters()) | ids(m.posterior_head.parameters())
    assert ids(dec.params) == ids(m.decoder.parameters()) and not ids(dec.params) & ids(enc.params)
    assert ids(dec.params) | ids(enc.params) == ids(m.parameters())
    # A prior with weights of its own (the VampPrior's pseudo-inputs) belongs to the generative network.
    torch.manual_seed(0)
    v = build_model(model_config(kind="piwae", prior="vamp", vamp_components=3, arch="mlp", input_shape=[1, 6, 6],
                                hidden=[16], latent_dim=3))
    dec, enc = v.optimisation_steps()
    assert ids(v.prior_net.parameters()) and ids(v.prior_net.parameters()) <= ids(dec.params)
    assert ids(dec.params) | ids(enc.params) == ids(v.parameters())


def test_piwae_encoder_descends_miwae_and_decoder_descends_iwae(tiny_config, monkeypatch):
    """The gradients each optimizer steps with, on the first batch of fit(), against
    torch.autograd.grad of the bounds computed by hand from the same log-weights."""
    M, K = 2, 3
    cfg = tiny_config("model.kind=piwae", f"model.piwae.m={M}", f"model.piwae.k={K}", "train.epochs=1")
    stepped: list[tuple[set, torch.Tensor]] = []
    real_step = torch.optim.Adam.step

    def spy(self, *a, **k):
        ps = self.param_groups[0]["params"]
        stepped.append(({id(p) for p in ps}, torch.cat([p.grad.flatten() for p in ps]).clone()))
        return real_step(self, *a, **k)

    original = OBJECTIVES["piwae"]
    want: dict[str, torch.Tensor] = {}

    def fn(model, x, y, q, **kw):
        captured = []
        real_lw = model.log_weights

        def log_weights(*a, **k):
            captured.append(real_lw(*a, **k))
            return captured[-1]

        model.log_weights = log_weights
        try:
            parts = original.fn(model, x, y, q, **kw)
        finally:
            del model.log_weights
        if not want:
            lw = captured[0]  # (M K, B)
            iwae = -(torch.logsumexp(lw, 0) - math.log(M * K)).mean()
            miwae = -(torch.logsumexp(lw.view(M, K, -1), 1) - math.log(K)).mean(0).mean()
            enc = encoder_parameters(model)
            dec = [p for p in model.parameters() if id(p) not in {id(e) for e in enc}]
            flat = lambda gs: torch.cat([g.flatten() for g in gs])
            want["enc_ids"] = {id(p) for p in enc}
            want["encoder"] = flat(torch.autograd.grad(miwae, enc, retain_graph=True))
            want["decoder"] = flat(torch.autograd.grad(iwae, dec, retain_graph=True))
            want["encoder_iwae"] = flat(torch.autograd.grad(iwae, enc, retain_graph=True))
            want["decoder_miwae"] = flat(torch.autograd.grad(miwae, dec, retain_graph=True))
        return parts

    monkeypatch.setitem(OBJECTIVES, "piwae", Objective(fn, original.requires, original.description,
                                                       options=original.options, check=original.check,
                                                       steps=original.steps))
    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    fit(cfg, None, log=quiet)
    (ids_a, g_a), (ids_b, g_b) = stepped[:2]  # the first batch: decoder's optimizer, then encoder's
    assert ids_b == want["enc_ids"] and not ids_a & ids_b
    torch.testing.assert_close(g_b, want["encoder"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g_a, want["decoder"], atol=1e-6, rtol=1e-5)
    # The two bounds do pull differently: the test would see the wrong one.
    assert not torch.allclose(want["encoder"], want["encoder_iwae"], atol=1e-4)
    assert not torch.allclose(want["decoder"], want["decoder_miwae"], atol=1e-4)


def test_piwae_trains_logs_both_steps_and_resumes_bit_exact(tiny_config, tmp_path):
    sets = ("model.kind=piwae", "model.piwae.m=2", "model.piwae.k=2")
    whole = fit(tiny_config(*sets, "train.epochs=2"), tmp_path / "whole", log=quiet)
    row = whole.history[-1]
    assert list(whole.trainer.optimizers) == ["decoder", "encoder"]
    assert {"train_loss", "train_loss_encoder", "train_nelbo", "lr", "lr_encoder"} <= set(row)
    assert row["train_loss"] <= row["train_loss_encoder"] + 1e-4 <= row["train_nelbo"] + 2e-4  # IWAE_MK >= MIWAE >= ELBO
    fit(tiny_config(*sets, "train.epochs=1"), tmp_path / "part", log=quiet)
    _, meta = checkpoint._load(tmp_path / "part" / "checkpoint.safetensors")
    assert json.loads(meta["optimizers"]) == ["decoder", "encoder"]
    resumed = fit(tiny_config(*sets, "train.epochs=2"), tmp_path / "part", resume=True, log=quiet)
    for (k, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    for name in ("decoder", "encoder"):
        sa, sb = whole.trainer.optimizers[name].state_dict(), resumed.trainer.optimizers[name].state_dict()
        for i in sa["state"]:
            assert torch.equal(sa["state"][i]["exp_avg"], sb["state"][i]["exp_avg"])
    assert resumed.history[-1]["train_loss_encoder"] == row["train_loss_encoder"]


@pytest.mark.parametrize("kind", ["miwae", "ciwae"])
def test_one_epoch_of_miwae_and_ciwae_lowers_their_loss(kind, tiny_config):
    opts = ["model.miwae.m=2", "model.miwae.k=3"] if kind == "miwae" else ["model.ciwae.k=4"]
    res = fit(tiny_config(f"model.kind={kind}", *opts, "train.epochs=2", "train.lr=3e-3"), None, log=quiet)
    assert list(res.trainer.optimizers) == ["model"]
    first, last = res.history[0], res.history[-1]
    assert last["train_loss"] < first["train_loss"] and last["train_loss"] <= last["train_nelbo"] + 1e-4


# ---------------------------------------------------------------------------- options and refusals
@pytest.mark.parametrize("sets, message", [
    (["model.kind=miwae", "model.miwae.m=0"], "model.miwae.m must be >= 1, got 0"),
    (["model.kind=piwae", "model.piwae.k=0"], "model.piwae.k must be >= 1, got 0"),
    (["model.kind=ciwae", "model.ciwae.beta=1.5"], r"model.ciwae.beta must be in \[0, 1\]"),
    (["model.kind=ciwae", "model.ciwae.k=-2"], "model.ciwae.k must be >= 1, got -2"),
    (["model.kind=miwae", "model.miwae.k=2.5"], "model.miwae.k must be int, got 2.5"),
    (["model.kind=vae", "model.miwae.m=2"], "model.miwae holds options of the objective miwae"),
    (["model.kind=piwae", "model.condition=embedding"], "objective piwae .* model.condition=embedding"),
    (["model.kind=piwae", "model.predictor_weight=1"], "objective piwae .* label predictor"),
    (["model.kind=piwae", "model.sparsity=l1", "model.sparsity_weight=0.1"], "objective piwae .* model.sparsity=l1"),
    (["model.kind=ae", "model.objective=ciwae"], "model.objective=ciwae needs a density"),
])
def test_bad_options_are_one_line(sets, message, tiny_config):
    with pytest.raises(ConfigError, match=message) as e:
        tiny_config(*sets)
    assert "\n" not in str(e.value)


def test_defaults_are_the_papers_mnist_settings():
    assert (small("miwae").cfg.opts("miwae").m, small("miwae").cfg.opts("miwae").k) == (8, 8)
    assert (small("piwae").cfg.opts("piwae").m, small("piwae").cfg.opts("piwae").k) == (8, 8)
    o = small("ciwae").cfg.opts("ciwae")
    assert (o.beta, o.k) == (0.5, 64)
    for kind in ("miwae", "piwae", "ciwae"):
        f = MODELS[kind]
        assert (f.posterior, f.prior, f.objective) == ("gaussian", "normal", kind)
        assert "density" in small(kind).capabilities


# ---------------------------------------------------------------------------- the tools on a trained run
def test_tools_work_on_a_piwae_run(tiny_config, tmp_path, capsys):
    """eval (a density: nll_iw, and every part of the loss), sample, report, explore."""
    run_dir = tmp_path / "piwae"
    fit(tiny_config("model.kind=piwae", "model.piwae.m=2", "model.piwae.k=2", "train.epochs=1"), run_dir, log=quiet)
    rc, _, err = run_main(capsys, "eval", run_dir, "--iw-samples", "5", "--split", "train")
    assert rc == 0, err
    ev = json.loads((run_dir / "eval.json").read_text())
    assert ev["nll_iw"] > 0 and {"loss", "loss_encoder", "nelbo"} <= set(ev)
    rc, _, err = run_main(capsys, "sample", run_dir, "--n", "4", "--seed", "1", "--out", tmp_path / "s.png")
    assert rc == 0 and (tmp_path / "s.png").stat().st_size > 0, err
    rc, _, err = run_main(capsys, "report", run_dir)
    assert rc == 0 and (run_dir / "report.html").is_file(), err
    # (vaelab export --onnx exports the encoder and decoder, which no objective changes: tests/test_onnx.py.)
    pytest.importorskip("starlette")
    from vaelab.api import Run
    from vaelab.explore.app import make_app
    from vaelab.explore.explorer import Explorer

    assert make_app(Explorer(Run.load(run_dir, device="cpu"), n=32)) is not None
