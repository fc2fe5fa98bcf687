"""The conditional VAE family through every tool: labels in, labels inferred, marginals, refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import cli_error, run_main
from vaelab.errors import VaelabError


def test_parts_capabilities_and_the_class_prior(trained_cvae):
    m = trained_cvae.model
    cfg = trained_cvae.config.model
    assert (cfg.kind, cfg.posterior, cfg.prior, cfg.objective, cfg.condition) == ("cvae", "gaussian", "normal",
                                                                                  "elbo", "onehot")
    assert {"labels", "density", "continuous", "prior"} <= m.capabilities and cfg.num_classes == 4
    # log p(y) from the training labels (add-one smoothed)
    y = trained_cvae.split("train").y
    counts = torch.bincount(y, minlength=4).double() + 1
    torch.testing.assert_close(m.class_log_prior, (counts / counts.sum()).log().float())
    # the label reaches the encoder and the decoder: other labels, other codes and pictures
    x = trained_cvae.split("val").batch(slice(0, 4))
    z0 = trained_cvae.encode(x, torch.zeros(4, dtype=torch.long))
    z1 = trained_cvae.encode(x, torch.ones(4, dtype=torch.long))
    assert not torch.allclose(z0, z1)
    assert not torch.allclose(trained_cvae.decode(z0, 0), trained_cvae.decode(z0, 1))


def test_decoding_needs_a_class_and_a_known_one(trained_cvae):
    z = torch.zeros(2, 4)
    with pytest.raises(VaelabError, match="conditional: decoding needs a class"):
        trained_cvae.decode(z)
    with pytest.raises(VaelabError, match="class 7 is not one this model was trained on"):
        trained_cvae.decode(z, torch.tensor([0, 7]))
    assert trained_cvae.decode(z, 3).shape == (2, 1, 28, 28)


def test_unlabelled_images_get_the_most_probable_class(trained_cvae):
    """argmax_y log p(y) + log p(z|y) - recon(x, z, y), z the posterior mean of q(z|x, y)."""
    m = trained_cvae.model
    x = trained_cvae.split("val").batch(slice(0, 16))
    with torch.no_grad():
        guess = m.infer_labels(x)
        scores = []
        for c in range(4):
            y = torch.full((16,), c)
            h = torch.cat([x.flatten(1), torch.nn.functional.one_hot(y, 4).float()], 1)
            mu = m.posterior_head.mu(m.encoder(h))
            logits = m.decoder(torch.cat([mu, torch.nn.functional.one_hot(y, 4).float()], 1))
            recon = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
            log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(mu).sum(1)
            scores.append(m.class_log_prior[c] + log_pz - recon)
    assert torch.equal(guess, torch.stack(scores, 1).argmax(1))


def test_eval_with_labels_and_marginalised_without(trained_cvae):
    from vaelab.data import ImageSet
    from vaelab.evaluation.evaluate import evaluate, iw_log_likelihood

    val = trained_cvae.split("val")
    labelled = evaluate(trained_cvae.model, val, iw_samples=20, seed=1)
    assert "labels_inferred" not in labelled and math.isfinite(labelled["nll_iw"])
    bare = ImageSet(val.x, None, "val")
    unlabelled = evaluate(trained_cvae.model, bare, iw_samples=20, seed=1)
    assert unlabelled["labels_inferred"] is True
    # the marginal -log sum_y p(y) p(x|y), by hand from the per-class estimates
    x = val.batch(slice(0, 6))
    m = trained_cvae.model
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)  # one stream, class after class, as the marginal draws
        per_class = torch.stack([m.class_log_prior[c].double() + iw_log_likelihood(m, x, torch.full((6,), c), 50, g)
                                 for c in range(4)])
        marginal = iw_log_likelihood(m, x, None, 50, torch.Generator().manual_seed(0))
    torch.testing.assert_close(marginal, torch.logsumexp(per_class, 0))
    assert (marginal >= per_class.max(0).values).all()  # a sum over classes is at least its largest term


def test_sample_a_class_from_the_prior(trained_cvae, tmp_path, capsys):
    rc, out, err = run_main(capsys, "sample", trained_cvae.run_dir, "--class", 2, "--n", 8, "--seed", 5,
                            "--out", tmp_path / "s.png", "--npz", tmp_path / "s.npz")
    assert rc == 0, err
    with np.load(tmp_path / "s.npz") as f:
        images, codes, labels = f["images"], f["codes"], f["labels"]
    assert labels.tolist() == [2] * 8
    expect = torch.randn((8, 4), generator=torch.Generator().manual_seed(5)).numpy()
    np.testing.assert_allclose(codes, expect, rtol=1e-6)  # the N(0, I) prior's draws
    decoded = trained_cvae.decode(torch.from_numpy(codes), 2).numpy()
    assert np.abs(images / 255.0 - decoded).max() <= 0.5 / 255 + 1e-6
    assert "class 9 is not one" in cli_error(capsys, "sample", trained_cvae.run_dir, "--class", 9)


def test_eval_samples_reports_class_accuracy(trained_cvae, shapes_judge, tmp_path, capsys):
    rc, out, err = run_main(capsys, "eval-samples", trained_cvae.run_dir, "--sampler", "prior", "--n", 64,
                            "--judge", shapes_judge[1], "--out", tmp_path / "ev")
    assert rc == 0, err
    r = json.loads((tmp_path / "ev" / "samples_eval.json").read_text())
    asked = torch.arange(4).repeat_interleave(16)
    imgs = torch.cat([trained_cvae.sample_prior(16, seed=c, y=c) for c in range(4)])
    assert r["class_accuracy"] == pytest.approx(float((shapes_judge[0].predict(imgs) == asked).float().mean()))


def test_inpaint_detect_export_and_report_take_labels(trained_cvae, tmp_path, capsys):
    from vaelab.anomaly.scores import score_images
    from vaelab.latent.inpaint import inpaint

    val = trained_cvae.split("val")
    x, y = val.batch(slice(0, 8)), val.y[:8]
    filled = inpaint(trained_cvae, x, "center:10", method="latent-opt", y=y, steps=5)
    guessed = inpaint(trained_cvae, x, "center:10", method="latent-opt", steps=5)
    assert filled.shape == x.shape and not torch.equal(filled, guessed)  # the labels were used
    with_y = score_images(trained_cvae.model, x, "elbo", samples=4, y=y)
    marginal = score_images(trained_cvae.model, x, "elbo", samples=4)
    assert (marginal <= with_y + np.log(1 / np.exp(trained_cvae.model.class_log_prior[y].numpy())) + 1e-4).all()
    np.savez(tmp_path / "in.npz", x=(val.x[:8, 0].numpy()), y=val.y[:8].numpy())
    rc, out, err = run_main(capsys, "detect", trained_cvae.run_dir, "--input", tmp_path / "in.npz", "--score", "elbo",
                            "--out", tmp_path / "scores.csv")
    assert rc == 0, err
    rc, out, err = run_main(capsys, "export", trained_cvae.run_dir, "--what", "latents", "--split", "val",
                            "--out", tmp_path / "z.csv")
    assert rc == 0, err
    header = (tmp_path / "z.csv").read_text().splitlines()[0].split(",")
    assert header == ["row_id", "label"] + [f"mu{i}" for i in range(4)] + [f"logvar{i}" for i in range(4)]
    rc, out, err = run_main(capsys, "report", trained_cvae.run_dir, "--out", tmp_path / "r.html")
    assert rc == 0, err and (tmp_path / "r.html").stat().st_size > 10_000


def test_refusals_are_one_line(trained_cvae, shapes_npz, tmp_path, capsys, shapes_arrays):
    np.savez(tmp_path / "bare.npz", x=shapes_arrays[0])
    msg = cli_error(capsys, "train", "--data", "npz", "--data-path", tmp_path / "bare.npz", "--kind", "cvae",
                    "--epochs", 1, "--val", "none", "--out", tmp_path / "r")
    assert "a conditional model (model.kind=cvae" in msg and "needs labelled training data" in msg
    msg = cli_error(capsys, "steer", trained_cvae.run_dir, "--from", 0, "--to", 1)
    assert "steer needs a label predictor" in msg
    msg = cli_error(capsys, "train", "--data", "npz", "--data-path", shapes_npz, "--kind", "ae", "--objective", "iwae",
                    "--out", tmp_path / "r2")
    assert "model.objective=iwae needs a density" in msg
    msg = cli_error(capsys, "train", "--data", "npz", "--data-path", shapes_npz, "--set", "model.prior=conditional",
                    "--out", tmp_path / "r3")
    assert "needs a conditional model" in msg
    msg = cli_error(capsys, "train", "--data", "npz", "--data-path", shapes_npz, "--objective", "iwae",
                    "--set", "model.k=0", "--out", tmp_path / "r4")
    assert "model.iwae.k (importance samples) must be at least 1" in msg  # given as model.k, its old name
