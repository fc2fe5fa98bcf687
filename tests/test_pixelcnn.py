"""The gated PixelCNN prior over a VQ-VAE's codes: causality, fitting, sampling, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import cli_error, run_main
from vaelab.latent.pixelcnn import GatedPixelCNN, PixelCNNConfig


@pytest.mark.parametrize("conditional", [False, True])
def test_no_logit_sees_its_own_or_a_later_position(conditional):
    """d logits(i, j) / d input(p) = 0 for every p at or after (i, j) in raster order."""
    torch.manual_seed(0)
    cfg = PixelCNNConfig(codes=6, height=5, width=4, channels=8, layers=3, kernel=3,
                         num_classes=3 if conditional else None)
    net = GatedPixelCNN(cfg)
    idx = torch.randint(0, 6, (2, 5, 4))
    y = torch.tensor([0, 2]) if conditional else None
    emb = net.embed(idx).permute(0, 3, 1, 2).detach().requires_grad_(True)  # differentiate w.r.t. the inputs
    v = h = emb
    for layer in net.layers:
        v, h = layer(v, h, y)
    logits = net.head(h)
    for i in range(5):
        for j in range(4):
            g, = torch.autograd.grad(logits[:, :, i, j].sum(), emb, retain_graph=True)
            seen = g.abs().sum((0, 1)) > 0  # (h, w): which input positions this logit depends on
            order = torch.arange(20).view(5, 4)
            assert not seen[order >= i * 4 + j].any(), (i, j)
            if i * 4 + j > 0:
                assert seen.any()  # and it does see the past


@pytest.mark.parametrize("conditional", [False, True])
def test_sampling_passes_only_the_rows_drawn_so_far_and_draws_what_the_whole_grid_would(conditional):
    """sample() runs row i's passes on rows 0..i: their logits are the whole grid's there (the
    convolutions look up and left only), and the draws are those of passing the whole grid."""
    torch.manual_seed(0)
    cfg = PixelCNNConfig(codes=6, height=5, width=4, channels=8, layers=3, kernel=5,
                         num_classes=3 if conditional else None)
    net = GatedPixelCNN(cfg).eval()
    idx = torch.randint(0, 6, (7, 5, 4))
    y = torch.tensor([0, 2, 1, 0, 1, 2, 0]) if conditional else None
    with torch.no_grad():
        full = net(idx, y)
        for i in range(5):
            torch.testing.assert_close(net(idx[:, :i + 1], y), full[:, :, :i + 1], rtol=1e-5, atol=1e-6)

    def whole_grid_sample(n, y, generator):  # the sampler as it was: every pass over the whole grid
        out = torch.zeros(n, 5, 4, dtype=torch.long)
        for i in range(5):
            for j in range(4):
                p = torch.softmax(net(out, y)[:, :, i, j].float(), 1)
                out[:, i, j] = torch.multinomial(p, 1, generator=generator)[:, 0]
        return out

    with torch.no_grad():
        got = net.sample(7, y, generator=torch.Generator().manual_seed(3))
        ref = whole_grid_sample(7, y, torch.Generator().manual_seed(3))
    assert torch.equal(got, ref)


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory, shapes_npz):
    """A tiny VQ-VAE (7x7 grid of 4-d codes, 16 codes) trained 2 epochs on the labelled shapes."""
    from vaelab.api import train
    from vaelab.configure import build_config

    run_dir = tmp_path_factory.mktemp("runs") / "vq"
    cfg = build_config(None, None, ["data.name=npz", f"data.path={shapes_npz}", "data.val=0.25",
                                    "model.kind=vq-vae", "model.arch=conv", "model.latent=conv",
                                    "model.channels=[8,4]", "model.codebook_size=16", "model.loss=bce",
                                    "train.epochs=2", "train.batch_size=32", "train.progress=false"])
    return train(cfg, run_dir, iw_samples=5, log=lambda *_: None)


def test_a_vq_run_evaluates_its_codebook(vq_run):
    ev = json.loads((vq_run.run_dir / "eval.json").read_text())
    assert {"recon", "commit", "codebook", "perplexity", "dead_codes", "ssim"} <= set(ev)
    assert "nll_iw" not in ev and "kl_per_dim" not in ev and 1 <= ev["perplexity"] <= 16
    assert not (vq_run.run_dir / "figures" / "samples_prior.png").exists()  # no prior to sample yet


def test_which_samplers_a_run_can_use(vq_run, trained_run):
    """Each sampler says what it needs of a run; the explorer lists only what applies."""
    from vaelab.latent.sampling import SAMPLERS

    vq = {name: cls.missing(vq_run) for name, cls in SAMPLERS.items()}
    assert vq["pixelcnn"] == "no PixelCNN prior was fit on its codes (`vaelab fit-prior RUN`)"  # not yet
    assert vq["prior"] == "the model lacks a prior p(z) to sample from"
    assert vq["gmm"] == "the model lacks a continuous latent space"
    vae = {name: cls.missing(trained_run) for name, cls in SAMPLERS.items()}
    assert vae["pixelcnn"] == "the model lacks a discrete codebook (a VQ-VAE)" and vae["prior"] is None and vae["gmm"] is None
    assert SAMPLERS["prior"].takes_class(trained_run) is False and SAMPLERS["class-gmm"].takes_class(trained_run)


def test_fit_prior_then_sample_through_the_codebook(vq_run, tmp_path, capsys):
    from vaelab.latent import pixelcnn

    rc, out, err = run_main(capsys, "fit-prior", vq_run.run_dir, "--epochs", 2, "--channels", 16, "--layers", 3)
    assert rc == 0, err
    assert "pixelcnn.safetensors" in out and "test NLL" in out
    # Before it starts, the fit says what it does, how long and where it goes.
    lines = out.splitlines()
    said = next(i for i, ln in enumerate(lines) if ln.startswith("fitting a PixelCNN prior on "))
    assert said < next(i for i, ln in enumerate(lines) if ln.startswith("pixelcnn epoch 1/2"))
    assert "2 epochs of " in lines[said] and lines[said].endswith(
        f"written to {vq_run.run_dir / 'priors' / pixelcnn.FILE}")
    net, info = pixelcnn.load(vq_run.run_dir)
    assert info["config"]["height"] == 7 and info["config"]["codes"] == 16 and info["test_nll"] > 0
    rc, out, err = run_main(capsys, "sample", vq_run.run_dir, "--sampler", "pixelcnn", "--n", 6, "--seed", 2,
                            "--out", tmp_path / "s.png", "--npz", tmp_path / "s.npz")
    assert rc == 0, err
    idx = net.sample(6, generator=torch.Generator().manual_seed(2))  # the same draws, by hand
    with torch.no_grad():
        expect = vq_run.model.decode(vq_run.model.posterior_head.lookup(idx)).numpy()
    with np.load(tmp_path / "s.npz") as f:
        assert np.abs(f["images"] / 255.0 - expect).max() <= 0.5 / 255 + 1e-6
    # a prior that fits the codes beats a uniform one: under log K per position
    assert info["test_nll"] < 49 * np.log(16)
    err = cli_error(capsys, "sample", vq_run.run_dir, "--sampler", "pixelcnn", "--class", 2)
    assert f"this run's pixelcnn prior is unconditional; for --class fit a class-conditional one: vaelab fit-prior " \
           f"{vq_run.run_dir} --class-conditional" in err


def test_class_conditional_prior(vq_run, tmp_path, capsys):
    rc, out, err = run_main(capsys, "fit-prior", vq_run.run_dir, "--epochs", 1, "--channels", 8, "--layers", 2,
                            "--class-conditional")
    assert rc == 0, err
    rc, out, err = run_main(capsys, "sample", vq_run.run_dir, "--sampler", "pixelcnn", "--class", 2, "--n", 4,
                            "--out", tmp_path / "c.png", "--npz", tmp_path / "c.npz")
    assert rc == 0, err
    with np.load(tmp_path / "c.npz") as f:
        assert f["labels"].tolist() == [2, 2, 2, 2]
    assert "class-conditional: pass --class" in cli_error(capsys, "sample", vq_run.run_dir, "--sampler", "pixelcnn")
    from vaelab.latent.sampling import SAMPLERS

    assert SAMPLERS["pixelcnn"].missing(vq_run) is None and SAMPLERS["pixelcnn"].takes_class(vq_run)


def test_refusals(vq_run, trained_run, tmp_path, capsys):
    import shutil

    assert "a PixelCNN prior needs a discrete codebook" in cli_error(capsys, "fit-prior", trained_run.run_dir)
    assert "latent traversal needs a continuous latent space" in cli_error(
        capsys, "plot", vq_run.run_dir, "--kind", "traverse", "--out", tmp_path / "t.png")
    assert "gmm sampler needs a continuous latent" in cli_error(capsys, "sample", vq_run.run_dir, "--sampler", "gmm")
    assert "steer needs a label predictor" in cli_error(capsys, "steer", vq_run.run_dir, "--from", 0, "--to", 1)
    # a run still training (fewer epochs done than planned), and one deleted part-way
    half = tmp_path / "half"
    shutil.copytree(vq_run.run_dir, half)
    cfg = json.loads((half / "config.json").read_text())
    cfg["train"]["epochs"] = 5
    (half / "config.json").write_text(json.dumps(cfg))
    assert "still training or stopped part-way (2 of 5 epochs)" in cli_error(capsys, "fit-prior", half)
    (half / "model.safetensors").unlink()
    assert "holds no trained model" in cli_error(capsys, "fit-prior", half)
    assert "the pixelcnn sampler needs a discrete codebook" in cli_error(capsys, "sample", trained_run.run_dir,
                                                                          "--sampler", "pixelcnn")
    bare = tmp_path / "bare"
    shutil.copytree(vq_run.run_dir, bare)
    shutil.rmtree(bare / "priors", ignore_errors=True)
    assert "no PixelCNN prior" in cli_error(capsys, "sample", bare, "--sampler", "pixelcnn")


def test_the_prior_trains_through_the_trainer_and_its_nll_falls(vq_run):
    """fit_pixelcnn runs the one trainer (a callback sees its epochs and its labels), on the
    code grids in a TensorSet; the NLL falls epoch by epoch and ends under a uniform prior's."""
    from vaelab.latent import pixelcnn
    from vaelab.training.callbacks import Callback

    class Record(Callback):
        def __init__(self):
            self.events: list = []

        def on_fit_start(self, trainer):
            self.events.append(("start", type(trainer.model).__name__, trainer.labels, type(trainer.data).__name__,
                                tuple(trainer.data.shape), trainer.data.x.dtype))

        def on_epoch_end(self, trainer, row):
            self.events.append(("epoch", row["epoch"], row["train_loss"]))

    rec, lines = Record(), []
    net, info = pixelcnn.fit_pixelcnn(vq_run, epochs=3, channels=8, layers=2, conditional=True, log=lines.append,
                                      callbacks=[rec])
    assert rec.events[0] == ("start", "PriorFit", True, "TensorSet", (7, 7), torch.long)
    nll = [e[2] for e in rec.events[1:]]
    assert [e[1] for e in rec.events[1:]] == [1, 2, 3] and nll[2] < nll[1] < nll[0]
    assert info["train_nll"] == nll[-1] and info["test_nll"] < 49 * np.log(16) and not net.training
    assert [ln for ln in lines if ln.startswith("pixelcnn epoch")][-1].startswith(
        f"pixelcnn epoch 3/3  nll {nll[-1]:.3f} nats per code grid")


def test_a_tensor_set_hands_out_rows_as_they_are():
    from vaelab.data import TensorSet

    s = TensorSet(torch.arange(12).view(6, 2), torch.tensor([0, 1, 0, 1, 2, 2]))
    assert len(s) == 6 and s.shape == (2,) and s.batch(slice(1, 3)).tolist() == [[2, 3], [4, 5]]
    view = s.shuffled(torch.tensor([5, 0, 3, 1, 2, 4]))
    assert view.batch(slice(0, 2)).tolist() == [[10, 11], [0, 1]] and view.y.tolist() == [2, 0, 1, 1, 0, 2]
    assert view.batch(slice(0, 1)).dtype == torch.long and TensorSet(s.x).shuffled(torch.tensor([1, 0])).y is None


def test_a_killed_fit_continues_from_its_last_epoch(vq_run, tmp_path):
    """Every epoch of a run's PixelCNN fit is checkpointed in RUN/priors/pixelcnn-fit/; a fit
    stopped after epoch 2 of 3 and asked again continues there and ends on the weights of an
    uninterrupted fit; saving the prior removes the checkpoint; other settings start afresh."""
    import shutil

    from vaelab.api import Run
    from vaelab.latent import pixelcnn
    from vaelab.training.callbacks import Callback

    run_dir = tmp_path / "vq"
    shutil.copytree(vq_run.run_dir, run_dir)
    run = Run.load(run_dir, device="cpu")
    kw = {"epochs": 3, "channels": 8, "layers": 2, "log": lambda *_: None}
    straight, _ = pixelcnn.fit_pixelcnn(run, **kw)
    fit_dir = run_dir / "priors" / pixelcnn.FIT_DIR
    shutil.rmtree(fit_dir)

    class Kill(Callback):
        def on_epoch_end(self, trainer, row):
            if row["epoch"] == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pixelcnn.fit_pixelcnn(run, callbacks=[Kill()], **kw)
    assert (fit_dir / "checkpoint.safetensors").is_file()
    lines: list[str] = []
    epochs: list[int] = []

    class Seen(Callback):
        def on_epoch_end(self, trainer, row):
            epochs.append(row["epoch"])

    resumed, info = pixelcnn.fit_pixelcnn(run, callbacks=[Seen()], **{**kw, "log": lines.append})
    assert epochs == [3] and any("resuming the PixelCNN fit from epoch 2" in ln for ln in lines)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    pixelcnn.save(resumed, info, run_dir)
    assert not fit_dir.exists() and (run_dir / "priors" / pixelcnn.FILE).is_file()
    # a checkpoint of other settings is not continued
    with pytest.raises(KeyboardInterrupt):
        pixelcnn.fit_pixelcnn(run, callbacks=[Kill()], **kw)
    lines.clear()
    pixelcnn.fit_pixelcnn(run, **{**kw, "lr": 5e-4, "log": lines.append})
    assert any("other settings" in ln for ln in lines) and not any("resuming" in ln for ln in lines)
