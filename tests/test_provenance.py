"""No run overwritten, no stale derived file used: api.train's refusal, --overwrite's clearing,
and the checkpoint id every derived file records (vaelab.rundir)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.conftest import assert_one_line_error, run_main
from vaelab.errors import VaelabError
from vaelab.rundir import ID_FIELD, RunDir, checkpoint_id, recorded_id

QUIET = lambda *_: None


def _mnist_config(mnist_dir, *extra: str):
    from vaelab.configure import build_config

    return build_config("mlp-vae", None, [
        f"data.data_dir={mnist_dir}", "data.limit=256", "data.download=false", "model.hidden=32",
        "model.latent_dim=3", "train.epochs=1", "train.batch_size=64", "train.device=cpu", "train.progress=false",
        "train.eval_batch_size=500", *extra])


def _train(mnist_dir, run_dir, *extra: str, **kw):
    from vaelab.api import train

    iw = {} if kw.get("evaluate_after") is False else {"iw_samples": 1}  # no evaluation: nothing to set
    return train(_mnist_config(mnist_dir, *extra), run_dir, log=QUIET, **iw, **kw)


@pytest.fixture
def mnist_run(tmp_path, mnist_dir):
    run_dir = tmp_path / "run"
    _train(mnist_dir, run_dir, evaluate_after=False)
    return run_dir


# ------------------------------------------------------------------------------ api.train and --overwrite
def test_api_refuses_a_folder_that_holds_a_run_in_the_cli_s_words(mnist_run, mnist_dir, capsys):
    weights = RunDir(mnist_run).weights.read_bytes()
    with pytest.raises(VaelabError) as e:
        _train(mnist_dir, mnist_run, "train.seed=5", evaluate_after=False)
    api_msg = str(e.value)
    assert api_msg == (f"{mnist_run} already holds a run; --resume {mnist_run} (resume=True) to continue it, "
                       "--overwrite (overwrite=True) to replace it, or choose another --out")
    assert RunDir(mnist_run).weights.read_bytes() == weights  # nothing lost
    rc, out, err = run_main(capsys, "train", "--preset", "mlp-vae", "--data-dir", str(mnist_dir), "--limit", "256",
                            "--epochs", "1", "--out", str(mnist_run), "--no-eval")
    assert assert_one_line_error(rc, out, err) == f"vaelab: error: {api_msg}"


def test_resume_true_continues_the_run(mnist_run, mnist_dir):
    from vaelab.api import train

    before = checkpoint_id(RunDir(mnist_run).weights)
    run = train(None, mnist_run, overrides=["train.epochs=2"], resume=True, evaluate_after=False, log=QUIET)
    assert run.config.train.epochs == 2
    assert json.loads(RunDir(mnist_run).summary.read_text())["epochs"] == 2
    assert len(run.history()) == 2  # the first epoch kept, one more trained
    assert run.checkpoint_id != before
    with pytest.raises(VaelabError, match="ask for one of them"):
        train(None, mnist_run, resume=True, overwrite=True, log=QUIET)


def _derived_everything(run_dir, mnist_dir):
    """Derived files of every kind in ``run_dir``: eval, figures, a sampler, samples, a report, an inpainting."""
    from vaelab.api import Run
    from vaelab.latent.inpaint import evaluate_inpainting
    from vaelab.latent.sampling import fitted_sampler
    from vaelab.report import write_report

    run = Run.load(run_dir)
    run.evaluate(iw_samples=1, save=True)
    fitted_sampler(run, "gmm", components=2, log=QUIET)
    evaluate_inpainting(run, n=8, method="single", use_judge=False, out=run_dir / "inpaint-single", log=QUIET)
    write_report(run_dir, log=QUIET)


def test_overwrite_true_leaves_no_old_derived_file(mnist_run, mnist_dir):
    _derived_everything(mnist_run, mnist_dir)
    (mnist_run / "figures" / ".x.png.tmp").write_bytes(b"")  # a killed atomic write's leftover
    old = {p.relative_to(mnist_run) for p in mnist_run.rglob("*") if p.is_file()}
    assert {"samplers/gmm.npz", "report.html", "inpaint-single/inpaint_eval.json", "eval.json"} <= {
        str(p) for p in old}
    _train(mnist_dir, mnist_run, "train.seed=3", overwrite=True, evaluate_after=False)
    now = sorted(str(p.relative_to(mnist_run)) for p in mnist_run.rglob("*"))
    assert now == sorted(RunDir.PRIMARY)  # the fresh run alone: no sampler, report, figure or export of the old


def test_overwrite_refuses_folders_that_are_not_runs_and_keeps_them_whole(tmp_path, mnist_run, mnist_dir):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("mine")
    with pytest.raises(VaelabError) as e:
        _train(mnist_dir, notes, overwrite=True)
    assert str(e.value) == (f"{notes} is not empty and is not a vaelab run (it holds thesis.tex); "
                            "choose a new or empty folder for --out")
    assert (notes / "thesis.tex").read_text() == "mine"
    (mnist_run / "my-notes.txt").write_text("keep me")
    with pytest.raises(VaelabError, match=r"holds a run and files vaelab did not write \(my-notes.txt\)"):
        _train(mnist_dir, mnist_run, overwrite=True)
    assert (mnist_run / "my-notes.txt").read_text() == "keep me" and RunDir(mnist_run).weights.is_file()


def test_an_overwrite_killed_part_way_can_be_overwritten_again(mnist_run, mnist_dir):
    # What a process killed while clearing leaves: the entries moved so far in the hidden folder
    # (derived files first, config.json last), the rest in place.
    trash = mnist_run / f"{RunDir.TRASH}dead"
    trash.mkdir()
    os.replace(mnist_run / "history.csv", trash / "history.csv")
    _train(mnist_dir, mnist_run, overwrite=True, evaluate_after=False)
    assert sorted(p.name for p in mnist_run.iterdir()) == sorted(RunDir.PRIMARY)


def test_cli_overwrite_removes_the_old_derived_files(mnist_run, mnist_dir, capsys):
    from vaelab.api import Run
    from vaelab.latent.sampling import fitted_sampler

    fitted_sampler(Run.load(mnist_run), "gmm", components=2, log=QUIET)
    rc, _, err = run_main(capsys, "train", "--preset", "mlp-vae", "--data-dir", str(mnist_dir), "--limit", "256",
                            "--epochs", "1", "--latent-dim", "3", "--set", "model.hidden=16", "--out", str(mnist_run),
                            "--overwrite", "--no-eval")
    assert rc == 0, err
    assert not (mnist_run / "samplers").exists()
    assert json.loads(RunDir(mnist_run).config.read_text())["model"]["mlp"]["hidden"] == [16]


# ------------------------------------------------------------------------------ stale derived files
def test_a_sampler_fit_on_old_weights_is_refit(mnist_run, mnist_dir, tmp_path):
    from vaelab.api import Run
    from vaelab.latent.sampling import fitted_sampler

    old = fitted_sampler(Run.load(mnist_run), "gmm", components=2, log=QUIET)
    old_id = checkpoint_id(RunDir(mnist_run).weights)
    assert recorded_id(mnist_run / "samplers" / "gmm.json") == old_id
    assert recorded_id(mnist_run / "samplers" / "gmm.npz") == old_id
    # The user's story: the run trained again in place; the old mixture must not be reused.
    keep = tmp_path / "old-samplers"
    os.replace(mnist_run / "samplers", keep)
    _train(mnist_dir, mnist_run, "train.seed=7", overwrite=True, evaluate_after=False)
    os.replace(keep, mnist_run / "samplers")  # as if the old files had survived
    notes = []
    run = Run.load(mnist_run)
    new = fitted_sampler(run, "gmm", components=2, log=notes.append)
    assert len(notes) == 1 and notes[0].startswith("note: refitting the gmm sampler") and "other weights" in notes[0]
    assert recorded_id(mnist_run / "samplers" / "gmm.json") == run.checkpoint_id != old_id
    assert not np.allclose(np.sort(new.arrays["means"], 0), np.sort(old.arrays["means"], 0))
    assert fitted_sampler(run, "gmm", components=2, log=notes.append).arrays["means"].tolist() == \
        new.arrays["means"].tolist() and len(notes) == 1  # reused now, silently: it is the current one


def test_a_sampler_from_an_older_vaelab_is_refit_with_a_note(mnist_run):
    from vaelab.api import Run
    from vaelab.latent.sampling import fitted_sampler

    run = Run.load(mnist_run)
    fitted_sampler(run, "gmm", components=2, log=QUIET)
    meta = json.loads((mnist_run / "samplers" / "gmm.json").read_text())
    del meta[ID_FIELD]
    (mnist_run / "samplers" / "gmm.json").write_text(json.dumps(meta))
    notes = []
    fitted_sampler(run, "gmm", components=2, log=notes.append)
    assert notes == [(f"note: refitting the gmm sampler: {mnist_run / 'samplers' / 'gmm'}.npz is stale "
                      "(it records no checkpoint id (made by an older vaelab))")]
    assert recorded_id(mnist_run / "samplers" / "gmm.json") == run.checkpoint_id


def test_a_pixelcnn_prior_from_other_weights_is_refused(tmp_path, shapes_npz, tiny_config):
    from vaelab.api import Run, train
    from vaelab.latent import pixelcnn
    from vaelab.latent.sampling import SAMPLERS, fitted_sampler

    vq = ["model.kind=vq-vae", "model.arch=conv", "model.latent=conv", "model.channels=8,8", "model.latent_dim=4",
          "model.codebook_size=8", "train.epochs=1", "data.limit=64"]
    run_dir = tmp_path / "vq"
    train(tiny_config(*vq), run_dir, evaluate_after=False, log=QUIET)
    run = Run.load(run_dir)
    net, info = pixelcnn.fit_pixelcnn(run, epochs=1, channels=8, layers=2, log=QUIET)
    path = pixelcnn.save(net, info, run_dir)
    assert recorded_id(path) == run.checkpoint_id
    fitted_sampler(run, "pixelcnn")  # fresh: loads
    train(tiny_config(*vq, "train.seed=9"), run_dir, overwrite=True, evaluate_after=False, log=QUIET)
    RunDir(run_dir).priors.mkdir()
    pixelcnn.save(net, info, run_dir)  # the old prior back beside the new weights
    run = Run.load(run_dir)
    with pytest.raises(VaelabError) as e:
        fitted_sampler(run, "pixelcnn")
    assert str(e.value).startswith(f"{path} does not belong to {RunDir(run_dir).weights}: it was made from other "
                                   f"weights (checkpoint {info[ID_FIELD]}, now {run.checkpoint_id})")
    assert str(e.value).endswith(f"fit it again with `vaelab fit-prior {run_dir}`")
    assert "stale" in SAMPLERS["pixelcnn"].missing(run)


def test_an_onnx_export_records_its_weights_shape_and_drops_parts_of_an_older_export(mnist_run, tmp_path):
    pytest.importorskip("onnxscript")
    from vaelab.api import Run
    from vaelab.export.onnx import export_onnx

    run = Run.load(mnist_run)
    out = mnist_run / "onnx"
    export_onnx(run, out, parts=["decoder", "sampler"])
    m = export_onnx(run, out, parts=["encoder"])
    assert m[ID_FIELD] == run.checkpoint_id == recorded_id(out / "onnx.json") == recorded_id(out / "encoder.onnx")
    assert m["image_input"] == {"shape": ["N", 1, 28, 28], "dtype": "float32", "range": [0.0, 1.0]}
    assert sorted(p.name for p in out.iterdir()) == ["encoder.onnx", "onnx.json"]  # the old decoder, sampler gone


def test_a_report_and_info_leave_out_what_other_weights_made(mnist_run, capsys):
    from vaelab.api import Run
    from vaelab.report import write_report

    run = Run.load(mnist_run)
    run.evaluate(iw_samples=1, save=True)
    ev = json.loads(RunDir(mnist_run).eval.read_text())
    ev[ID_FIELD] = "0" * 16
    RunDir(mnist_run).eval.write_text(json.dumps(ev))
    notes = []
    page = write_report(mnist_run, log=notes.append).read_text()
    assert "Evaluation <small>(eval.json" not in page and "eval.json (it was made from other weights" in page
    assert [n for n in notes if n.startswith("note: left out")] == [
        (f"note: left out of the report, made from other weights than {RunDir(mnist_run).weights} now holds "
         "(or by an older vaelab): eval.json")]
    assert recorded_id(mnist_run / "report.html") == run.checkpoint_id
    rc, out, _ = run_main(capsys, "info", str(mnist_run))
    assert rc == 0 and "nll_iw" not in out
    assert (f"eval.json: not shown, it was made from other weights (checkpoint {'0' * 16}, now {run.checkpoint_id}); "
            f"`vaelab eval {mnist_run}` evaluates the weights there now") in out


# ------------------------------------------------------------------------------ the class-level rule
def test_every_file_commands_write_into_a_run_is_primary_or_records_the_weights(tmp_path, mnist_dir, capsys):
    pytest.importorskip("onnxscript")
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    run_dir = tmp_path / "run"
    common = ["--data-dir", str(mnist_dir)]
    commands = [
        ["train", "--preset", "mlp-vae", *common, "--limit", "256", "--epochs", "1", "--latent-dim", "3",
         "--set", "model.hidden=32", "--iw-samples", "1", "--out", str(run_dir), "--log", "tensorboard,mlflow"],
        ["sample", str(run_dir), "--sampler", "gmm", "--components", "2", "--n", "8",
         "--npz", str(run_dir / "samples.npz")],
        ["export", str(run_dir), "--onnx", str(run_dir / "onnx")],
        ["export", str(run_dir), "--what", "latents", "--n", "20", *common],
        ["inpaint", str(run_dir), "--n", "8", "--method", "single", "--no-judge", *common],
        ["report", str(run_dir), *common],
    ]
    for args in commands:
        rc, _, err = run_main(capsys, *args)
        assert rc == 0, (args, err)
    current = checkpoint_id(RunDir(run_dir).weights)
    files = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
    own = [f for f in files if f in RunDir.PRIMARY or f.split("/")[0] in RunDir.LOGS]  # the training's
    assert {RunDir.MLFLOW, *RunDir.PRIMARY} <= set(own) and any(f.startswith("tensorboard/") for f in own)
    derived = [f for f in files if f not in own]
    assert {"eval.json", "figures/samples_gmm.png", "samplers/gmm.npz", "onnx/onnx.json", "onnx/encoder.onnx",
            "inpaint-single/inpaint.png", "report.html", "latents.csv", "samples.npz"} <= set(derived)
    assert {f: recorded_id(run_dir / f) for f in derived} == {f: current for f in derived}


def test_a_run_stamps_what_it_derives_with_the_weights_it_holds_not_those_on_disk(tmp_path):
    """A Run loaded before its training went on (an explorer left open, a notebook) derives from
    the weights it holds: its files record those, so they read as stale against the new weights."""
    from tests.conftest import train_tiny
    from vaelab.api import Run, train
    from vaelab.latent.sampling import fitted_sampler

    rd = RunDir(train_tiny(tmp_path))
    run = Run.load(rd)
    held = run.checkpoint_id
    assert held == rd.checkpoint_id()
    train(None, rd, resume=True, overrides=["train.epochs=2"], evaluate_after=False, log=lambda *_: None)
    assert rd.checkpoint_id() != held and run.checkpoint_id == held
    run.evaluate(save=True, iw_samples=0)
    assert json.loads(rd.eval.read_text())[ID_FIELD] == held and "other weights" in rd.stale(rd.eval)
    fitted_sampler(run, "gmm", components=2)
    saved = next(rd.samplers.glob("gmm*.json"))
    assert json.loads(saved.read_text())[ID_FIELD] == held and rd.stale(saved) is not None
    with pytest.raises(VaelabError, match="holds other weights than this Run"):
        run.figures()
    assert Run.load(rd).checkpoint_id == rd.checkpoint_id()  # loaded again: the new weights
