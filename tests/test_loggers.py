"""Training loggers (vaelab.training.loggers): what TensorBoard and MLflow hold after the callbacks
ran, read back through the libraries' own readers; resume; the one-line refusals."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.conftest import assert_one_line_error, run_main
from vaelab.errors import ConfigError
from vaelab.rundir import RunDir
from vaelab.training.loggers import make_loggers

ROWS = [{"epoch": 1, "train_loss": 180.5, "val_loss": 170.25, "seconds": 1.5, "lr": 1e-3, "train_recon": 160.0,
         "train_kl": 20.5, "val_recon": 150.0, "val_kl": 20.25},
        {"epoch": 2, "train_loss": 140.75, "val_loss": None, "seconds": 1.25, "lr": 5e-4, "train_recon": 125.0,
         "train_kl": 15.75}]
EVAL = {"loss": 101.5, "nll_iw": 99.25, "split": "test", "parts": {"recon": 80.0, "kl": 21.5},
        "kl_per_dim": [0.5, 1.25], "converged": True, "checkpoint_id": "0123456789abcdef"}


def _trainer(run_dir, epoch=0, *overrides, main=True):
    from vaelab.configure import build_config

    return SimpleNamespace(config=build_config("mlp-vae", None, list(overrides)), run_dir=run_dir, epoch=epoch,
                           main=main, model=None)


def _png(path, h=12, w=20):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, : w // 2, 0] = 255  # left half red
    Image.fromarray(rgb).save(path)
    return path


def _drive(loggers, trainer, rows, evaluation=None, artifacts=()):
    """What the trainer does: start, one call per epoch, end; then what api.train adds."""
    for lg in loggers:
        lg.on_fit_start(trainer)
    for row in rows:
        trainer.epoch = row["epoch"]
        for lg in loggers:
            lg.on_epoch_end(trainer, row)
    for lg in loggers:
        lg.on_fit_end(trainer)
    for lg in loggers:
        if evaluation is not None:
            lg.on_evaluation(trainer, evaluation)
        if artifacts:
            lg.on_artifacts(trainer, list(artifacts))


# ------------------------------------------------------------------------------ refusals, in one line
def test_an_unknown_logger_is_refused_naming_the_known_ones(tmp_path):
    with pytest.raises(ConfigError) as e:
        make_loggers("tensorboard,wandb", tmp_path / "run")
    assert str(e.value) == ("--log wandb: no such logger; choose from tensorboard, mlflow "
                            "(several: --log tensorboard,mlflow)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, module, library", [("mlflow", "mlflow", "MLflow"),
                                                   ("mlflow", "sqlalchemy", "MLflow"),
                                                   ("tensorboard", "tensorboard", "TensorBoard")])
def test_a_missing_extra_says_what_to_install(tmp_path, monkeypatch, name, module, library):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == module else real(m, *a))
    with pytest.raises(ConfigError) as e:
        make_loggers(["tensorboard", "mlflow"], tmp_path / "run")
    assert str(e.value) == f"--log {name} needs {library}: pip install 'vaelab[{name}]'"


def test_mlflow_options_without_mlflow_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^--tracking-uri is read by --log mlflow only; add mlflow to --log"):
        make_loggers("tensorboard", tmp_path / "run", tracking_uri="sqlite:///x.db")
    with pytest.raises(ConfigError, match=r"^--experiment is read by --log mlflow only"):
        make_loggers([], tmp_path / "run", experiment="mine")


def test_a_tracking_uri_that_cannot_be_opened_is_refused_before_training(tmp_path):
    pytest.importorskip("mlflow")
    (tmp_path / "notes.db").write_text("not a database")
    local = "give --tracking-uri sqlite:///PATH/mlflow.db with PATH a writable folder, or an http(s):// MLflow server"
    for uri, why, fix in [
            (f"sqlite:///{tmp_path}/no/such/mlflow.db", f"no folder {tmp_path}/no/such", local),
            (f"sqlite:///{tmp_path}/notes.db", f"{tmp_path}/notes.db: file is not a database", local),
            ("sqlite:mlflow.db", "a sqlite URI is sqlite:///PATH, with PATH absolute or relative to here", local),
            ("nosuch://somewhere", None, local),
            ("http://127.0.0.1:1", None, "check that the MLflow server runs there (mlflow server) and can be reached")]:
        with pytest.raises(ConfigError) as e:
            make_loggers("mlflow", tmp_path / "run", tracking_uri=uri)
        msg = str(e.value)
        assert "\n" not in msg
        assert msg.startswith(f"--log mlflow: cannot open the MLflow tracking store {uri} (")
        assert msg.endswith(f"); {fix}")
        if why:
            assert f" ({why}); " in msg
        else:  # MLflow's reason: no store for that scheme, no server there
            assert uri.split("://")[1] in msg.split(" (", 1)[1]
    assert not (tmp_path / "no").exists() and (tmp_path / "notes.db").read_text() == "not a database"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]  # no run folder made


def test_importing_the_loggers_imports_neither_library(monkeypatch):
    from vaelab.training import loggers

    for name in ("mlflow", "tensorboard", "torch.utils.tensorboard", "sqlalchemy"):
        monkeypatch.setitem(sys.modules, name, None)  # importing one now raises ImportError
    spec = importlib.util.spec_from_file_location("loggers_afresh", loggers.__file__)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))  # the module's top level, run again


# ------------------------------------------------------------------------------ TensorBoard
def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_holds_every_number_of_each_row_the_evaluation_the_figures_and_the_config(tmp_path):
    pytest.importorskip("tensorboard")
    run_dir = tmp_path / "run"
    trainer = _trainer(run_dir)
    fig = _png(run_dir / "figures" / "loss.png")
    _drive(make_loggers("tensorboard", run_dir), trainer, ROWS, EVAL, [fig, run_dir / "eval.json"])
    acc = _events(run_dir / RunDir.TENSORBOARD)
    tags = acc.Tags()
    for key in ("train_loss", "seconds", "lr", "train_recon", "train_kl"):
        assert _scalars(acc, key) == [(1, pytest.approx(ROWS[0][key])), (2, pytest.approx(ROWS[1][key]))], key
    for key in ("val_loss", "val_recon", "val_kl"):  # epoch 2 had no validation: no point at step 2
        assert _scalars(acc, key) == [(1, pytest.approx(ROWS[0][key]))]
    assert "epoch" not in tags["scalars"]  # the step, not a scalar
    evals = {t: _scalars(acc, t) for t in tags["scalars"] if t.startswith("eval/")}
    assert evals == {"eval/loss": [(2, 101.5)], "eval/nll_iw": [(2, 99.25)], "eval/parts/recon": [(2, 80.0)],
                     "eval/parts/kl": [(2, 21.5)], "eval/kl_per_dim/0": [(2, 0.5)],
                     "eval/kl_per_dim/1": [(2, 1.25)]}  # numeric leaves only: no split, bool or id
    [image] = acc.Images("figures/loss")
    assert (image.step, image.width, image.height) == (2, 20, 12)
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))
    assert pixels[0, 0].tolist() == [255, 0, 0] and pixels[0, -1].tolist() == [0, 0, 0]
    [text] = acc.Tensors("config/text_summary")
    config = json.loads(text.tensor_proto.string_val[0].decode())  # the indented code block, read back
    assert config == trainer.config.to_dict()


def test_tensorboard_resume_drops_the_epochs_after_the_last_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    run_dir = tmp_path / "run"
    rows = [{"epoch": e, "train_loss": 10.0 - e, "seconds": 1.0, "lr": 1e-3} for e in (1, 2, 3)]
    _drive(make_loggers("tensorboard", run_dir), _trainer(run_dir), rows)
    # Killed after logging epoch 3 but before its checkpoint: the resumed session starts after epoch 2.
    resumed = [{"epoch": 3, "train_loss": 0.5, "seconds": 1.0, "lr": 1e-3},
               {"epoch": 4, "train_loss": 0.25, "seconds": 1.0, "lr": 1e-3}]
    _drive(make_loggers("tensorboard", run_dir), _trainer(run_dir, 2), resumed)
    assert _scalars(_events(run_dir / RunDir.TENSORBOARD), "train_loss") == [(1, 9.0), (2, 8.0), (3, 0.5), (4, 0.25)]


def test_only_the_main_process_logs(runs):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    run_dir = runs / "not-main"
    loggers = make_loggers("tensorboard,mlflow", run_dir)
    _drive(loggers, _trainer(run_dir, main=False), ROWS, EVAL)
    assert not (run_dir / RunDir.TENSORBOARD).exists() and not (run_dir / RunDir.MLFLOW).exists()
    assert loggers[1].client.search_runs([loggers[1].experiment_id], "attributes.run_name = 'not-main'") == []


# ------------------------------------------------------------------------------ MLflow
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One parent folder for the MLflow tests: its mlflow.db is made once (MLflow's migrations take seconds)."""
    return tmp_path_factory.mktemp("runs")


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _leaves(d, prefix=""):
    """{"model.mlp.hidden": "[400]", ...}: a nested dict's leaves as MLflow params (strings as they are, the rest JSON)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v if isinstance(v, str) else json.dumps(v)
    return out


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_mlflow_holds_params_metrics_per_epoch_the_evaluation_and_the_figures(runs):
    pytest.importorskip("mlflow")
    run_dir = runs / "mlp-vae"
    trainer = _trainer(run_dir, 0, "model.latent_dim=7")
    fig = _png(run_dir / "figures" / "loss.png")
    (run_dir / "eval.json").write_text(json.dumps(EVAL))
    [lg] = make_loggers("mlflow", run_dir)
    uri = f"sqlite:///{runs}/mlflow.db"
    assert lg.uri == uri and (runs / "mlflow.db").is_file()  # the default store: beside the run directory
    _drive([lg], trainer, ROWS, EVAL, [fig, run_dir / "eval.json"])
    saved = json.loads((run_dir / RunDir.MLFLOW).read_text())
    assert saved == {"tracking_uri": uri, "experiment_id": lg.experiment_id, "run_id": lg.run_id}

    client = _client(uri)
    run = client.get_run(saved["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "vaelab"
    assert run.info.run_name == "mlp-vae" and run.info.status == "FINISHED"
    assert run.data.tags["vaelab.run_dir"] == str(run_dir)
    params = run.data.params
    assert params["model.latent_dim"] == "7" and params["model.mlp.hidden"] == "[400]"
    assert params["preset"] == "mlp-vae" and params["data.path"] == "null" and params["train.lr"] == "0.001"
    assert params == _leaves(trainer.config.to_dict())  # every value of the resolved config
    for key in ("train_loss", "seconds", "lr", "train_kl"):
        assert _history(client, lg.run_id, key) == [(1, ROWS[0][key]), (2, ROWS[1][key])], key
    assert _history(client, lg.run_id, "val_loss") == [(1, 170.25)]
    assert {k: v for k, v in run.data.metrics.items() if k.startswith("eval/")} == {
        "eval/loss": 101.5, "eval/nll_iw": 99.25, "eval/parts/recon": 80.0, "eval/parts/kl": 21.5,
        "eval/kl_per_dim/0": 0.5, "eval/kl_per_dim/1": 1.25}
    assert _history(client, lg.run_id, "eval/nll_iw") == [(2, 99.25)]
    assert "epoch" not in run.data.metrics
    assert sorted(a.path for a in client.list_artifacts(lg.run_id)) == ["eval.json", "figures"]
    assert [a.path for a in client.list_artifacts(lg.run_id, "figures")] == ["figures/loss.png"]
    local = client.download_artifacts(lg.run_id, "figures/loss.png", str(runs / "download"))
    assert Path(local).read_bytes() == fig.read_bytes()
    assert (runs / "mlartifacts").is_dir()  # artifacts beside the database, not under the working folder


def test_a_resumed_run_continues_the_same_mlflow_run(runs):
    pytest.importorskip("mlflow")
    run_dir = runs / "resumed"
    rows = [{"epoch": e, "train_loss": 10.0 - e, "seconds": 1.0, "lr": 1e-3} for e in (1, 2)]
    [first] = make_loggers("mlflow", run_dir, experiment="resume-test")
    trainer = _trainer(run_dir, 0, "train.epochs=4")
    first.on_fit_start(trainer)
    try:  # the first session is interrupted (Ctrl-C) after epoch 1
        first.on_epoch_end(trainer, rows[0])
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        first.on_fit_end(trainer)
    client = _client(first.uri)
    assert client.get_run(first.run_id).info.status == "KILLED"

    [again] = make_loggers("mlflow", run_dir, experiment="resume-test")
    _drive([again], _trainer(run_dir, 1, "train.epochs=6"), rows[1:])
    assert again.run_id == first.run_id == json.loads((run_dir / RunDir.MLFLOW).read_text())["run_id"]
    run = client.get_run(again.run_id)
    assert run.info.status == "FINISHED"
    assert _history(client, again.run_id, "train_loss") == [(1, 9.0), (2, 8.0)]
    # MLflow keeps a param's first value; the value the resumed session ran with is a tag.
    assert run.data.params["train.epochs"] == "4" and run.data.tags["resumed.train.epochs"] == "6"
    exp = client.get_experiment_by_name("resume-test")
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id])] == [first.run_id]

    # A fresh training in the folder (epoch 0) is a new MLflow run; so is a resume whose mlflow.json
    # names another store (the run folder moved, or another --tracking-uri).
    fresh = make_loggers("mlflow", run_dir, experiment="resume-test")[0]
    fresh.on_fit_start(_trainer(run_dir, 0))
    saved = json.loads((run_dir / RunDir.MLFLOW).read_text())
    assert fresh.run_id not in (first.run_id, None) and saved["run_id"] == fresh.run_id
    (run_dir / RunDir.MLFLOW).write_text(json.dumps({**saved, "tracking_uri": "sqlite:////elsewhere/mlflow.db"}))
    moved = make_loggers("mlflow", run_dir, experiment="resume-test")[0]
    moved.on_fit_start(_trainer(run_dir, 3))
    assert moved.run_id not in (first.run_id, fresh.run_id, None)
    assert json.loads((run_dir / RunDir.MLFLOW).read_text())["tracking_uri"] == first.uri
    (run_dir / RunDir.MLFLOW).write_text(json.dumps({**saved, "run_id": "0" * 32}))  # deleted from the store
    gone = make_loggers("mlflow", run_dir, experiment="resume-test")[0]
    gone.on_fit_start(_trainer(run_dir, 3))
    assert gone.run_id not in (first.run_id, fresh.run_id, moved.run_id, None)


def test_a_run_resumed_with_log_for_the_first_time_logs_its_earlier_epochs_too(runs):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    run_dir = runs / "later"
    trainer = _trainer(run_dir, 1)
    trainer.history = [dict(ROWS[0])]  # trained without --log: epoch 1 is in history.csv only
    tb, ml = make_loggers("tensorboard,mlflow", run_dir)
    _drive([tb, ml], trainer, ROWS[1:])
    assert _scalars(_events(run_dir / RunDir.TENSORBOARD), "train_loss") == [(1, 180.5), (2, 140.75)]
    assert _scalars(_events(run_dir / RunDir.TENSORBOARD), "val_loss") == [(1, 170.25)]
    assert _history(_client(ml.uri), ml.run_id, "train_loss") == [(1, 180.5), (2, 140.75)]


def test_a_failed_training_ends_its_mlflow_run_as_failed(runs):
    pytest.importorskip("mlflow")
    run_dir = runs / "failed"
    [lg] = make_loggers("mlflow", run_dir)
    trainer = _trainer(run_dir)
    lg.on_fit_start(trainer)
    try:
        try:
            raise RuntimeError("diverged")
        finally:
            lg.on_fit_end(trainer)
    except RuntimeError:
        pass
    assert _client(lg.uri).get_run(lg.run_id).info.status == "FAILED"



def test_a_logger_that_fails_mid_run_says_so_once_and_the_training_goes_on(runs, monkeypatch):
    pytest.importorskip("mlflow")
    run_dir = runs / "store-gone"
    [lg] = make_loggers("mlflow", run_dir)
    notes = []
    trainer = _trainer(run_dir)
    trainer.log = notes.append
    lg.on_fit_start(trainer)
    lg.on_epoch_end(trainer, ROWS[0])

    def locked(*args, **kw):
        raise RuntimeError("(sqlite3.OperationalError) database is locked\n[SQL: INSERT ...]")

    monkeypatch.setattr(lg.client, "log_batch", locked)
    monkeypatch.setattr(lg.client, "set_terminated", locked)
    trainer.epoch = 2
    lg.on_epoch_end(trainer, ROWS[1])  # no exception reaches the trainer
    lg.on_fit_end(trainer)
    lg.on_evaluation(trainer, EVAL)
    assert notes == [("note: --log mlflow stopped ((sqlite3.OperationalError) database is locked); the training "
                      "goes on and the run directory holds every epoch")]
    monkeypatch.undo()
    assert _history(_client(lg.uri), lg.run_id, "train_loss") == [(1, 180.5)]  # what came before is kept
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C is not a logger's failure: it stops the training
        monkeypatch.setattr(lg, "stopped", False)
        monkeypatch.setattr(lg, "_log_metrics", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
        lg.on_epoch_end(trainer, ROWS[1])


# ------------------------------------------------------------------------------ the run directory
def test_the_logs_are_the_training_s_own_files(tmp_path):
    """--overwrite clears them with the run; a report neither calls mlflow.json stale nor shows it as a result."""
    from vaelab.report.html import _other_results, _stale_files

    rd = RunDir(tmp_path / "run")
    (rd.path / RunDir.TENSORBOARD).mkdir(parents=True)
    (rd.path / RunDir.TENSORBOARD / "events.out.tfevents.1.host").write_bytes(b"\0")
    rd.config.write_text("{}")
    rd.weights.write_bytes(b"\0" * 8)
    (rd.path / RunDir.MLFLOW).write_text(json.dumps({"run_id": "x"}))
    assert _stale_files(rd) == {} and _other_results(rd.path) == []
    rd.prepare_fresh(overwrite=True)
    assert list(rd.path.iterdir()) == []


# ------------------------------------------------------------------------------ vaelab train --log
def test_vaelab_train_logs_epochs_evaluation_and_figures_and_a_resume_continues(runs, mnist_dir, capsys):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    run_dir = runs / "cli-run"
    common = ["--data-dir", str(mnist_dir), "--limit", "256", "--latent-dim", "3", "--set", "model.hidden=32"]
    rc, _, err = run_main(capsys, "train", "--preset", "mlp-vae", *common, "--epochs", "1", "--iw-samples", "1",
                          "--out", run_dir, "--log", "tensorboard,mlflow")
    assert rc == 0, err
    history = list(csv.DictReader(RunDir(run_dir).history.open()))
    evaluation = json.loads(RunDir(run_dir).eval.read_text())
    figures = sorted(p.name for p in RunDir(run_dir).figures.glob("*.png"))
    assert len(history) == 1 and {"loss.png", "reconstructions.png"} <= set(figures)

    acc = _events(run_dir / RunDir.TENSORBOARD)
    for key in ("train_loss", "val_loss", "train_kl", "lr", "seconds"):
        assert _scalars(acc, key) == [(1, pytest.approx(float(history[0][key]), rel=1e-6))], key
    assert _scalars(acc, "eval/nll_iw") == [(1, pytest.approx(evaluation["nll_iw"], rel=1e-6))]
    assert sorted(acc.Tags()["images"]) == sorted(f"figures/{f[:-4]}" for f in figures)

    saved = json.loads((run_dir / RunDir.MLFLOW).read_text())
    assert saved["tracking_uri"] == f"sqlite:///{runs}/mlflow.db"
    client = _client(saved["tracking_uri"])
    run = client.get_run(saved["run_id"])
    assert (run.info.run_name, run.info.status) == ("cli-run", "FINISHED")
    assert run.data.params["model.mlp.hidden"] == "[32]" and run.data.params["data.limit"] == "256"
    assert _history(client, run.info.run_id, "train_loss") == [(1, float(history[0]["train_loss"]))]
    assert run.data.metrics["eval/nll_iw"] == evaluation["nll_iw"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "figures")] == [f"figures/{f}" for f in figures]
    assert "eval.json" in [a.path for a in client.list_artifacts(run.info.run_id)]

    # A bad --log or store is refused before anything happens: --overwrite removes nothing.
    weights = RunDir(run_dir).weights.read_bytes()
    for extra, msg in [(["--log", "wandb"], "--log wandb: no such logger; choose from tensorboard, mlflow"),
                       (["--log", "mlflow", "--tracking-uri", f"sqlite:///{runs}/none/mlflow.db"],
                        f"--log mlflow: cannot open the MLflow tracking store sqlite:///{runs}/none/mlflow.db")]:
        rc, out, err = run_main(capsys, "train", "--preset", "mlp-vae", *common, "--epochs", "1", "--out", run_dir,
                                "--overwrite", *extra)
        assert assert_one_line_error(rc, out, err).startswith(f"vaelab: error: {msg}")
        assert RunDir(run_dir).weights.read_bytes() == weights and (run_dir / "figures").is_dir()

    rc, _, err = run_main(capsys, "train", "--resume", run_dir, "--epochs", "2", "--no-eval",
                          "--log", "tensorboard,mlflow")
    assert rc == 0, err
    history = list(csv.DictReader(RunDir(run_dir).history.open()))
    assert json.loads((run_dir / RunDir.MLFLOW).read_text())["run_id"] == run.info.run_id
    assert _history(client, run.info.run_id, "train_loss") == [(int(r["epoch"]), float(r["train_loss"]))
                                                               for r in history] and len(history) == 2
    assert client.get_run(run.info.run_id).data.tags["resumed.train.epochs"] == "2"
    assert [s for s, _ in _scalars(_events(run_dir / RunDir.TENSORBOARD), "train_loss")] == [1, 2]
