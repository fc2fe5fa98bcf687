"""A killed PixelCNN fit asked again for fewer epochs than it has done is refused in one line
(before: it trained nothing and saved a prior whose metadata claimed the fewer epochs)."""

from __future__ import annotations

import pytest
from conftest import cli_error, run_main


@pytest.fixture(scope="module")
def vq_run_dir(tmp_path_factory, shapes_npz):
    """A tiny VQ-VAE (7x7 grid of codes, 16 codes) trained 1 epoch on the labelled shapes."""
    from vaelab.api import train
    from vaelab.configure import build_config

    run_dir = tmp_path_factory.mktemp("runs") / "vq"
    cfg = build_config(None, None, ["data.name=npz", f"data.path={shapes_npz}", "data.val=0.25",
                                    "model.kind=vq-vae", "model.arch=conv", "model.latent=conv",
                                    "model.channels=[8,4]", "model.codebook_size=16", "model.loss=bce",
                                    "train.epochs=1", "train.batch_size=32", "train.progress=false"])
    train(cfg, run_dir, evaluate_after=False, log=lambda *_: None)
    return run_dir


def test_a_resume_asked_for_fewer_epochs_than_done_is_refused_and_as_many_saves_the_fit(vq_run_dir, tmp_path,
                                                                                         capsys):
    import shutil

    from vaelab.api import Run
    from vaelab.latent import pixelcnn
    from vaelab.training.callbacks import Callback

    run_dir = shutil.copytree(vq_run_dir, tmp_path / "vq")
    fit_dir = run_dir / "priors" / pixelcnn.FIT_DIR

    class Kill(Callback):
        def on_epoch_end(self, trainer, row):
            if row["epoch"] == 2:
                raise KeyboardInterrupt

    # `vaelab fit-prior RUN --epochs 3 --channels 8 --layers 2`, killed after its 2nd epoch
    with pytest.raises(KeyboardInterrupt):
        pixelcnn.fit_pixelcnn(Run.load(run_dir, device="cpu"), epochs=3, channels=8, layers=2,
                              callbacks=[Kill()], log=lambda *_: None)
    assert (fit_dir / "checkpoint.safetensors").is_file()
    opts = ("--channels", 8, "--layers", 2, "--device", "cpu")
    msg = cli_error(capsys, "fit-prior", run_dir, "--epochs", 1, *opts)
    assert "has done 2 epochs, more than the 1 asked" in msg and "--epochs 2 or more" in msg
    assert f"delete {fit_dir} to start afresh" in msg
    assert not (run_dir / "priors" / pixelcnn.FILE).exists()  # nothing mislabelled saved
    assert (fit_dir / "checkpoint.safetensors").is_file()  # the work done is kept

    # as many epochs as are done: nothing left to train, the fit is saved as a 2-epoch prior
    rc, out, err = run_main(capsys, "fit-prior", run_dir, "--epochs", 2, *opts)
    assert rc == 0, err
    assert "resuming the PixelCNN fit from epoch 2" in out and "all 2 epochs are done" in out
    assert "pixelcnn epoch" not in out  # no epoch trained
    _, info = pixelcnn.load(run_dir)
    assert info["epochs"] == 2 and not fit_dir.exists()


def test_a_resume_asked_for_more_records_the_epochs_trained(vq_run_dir, tmp_path):
    import shutil

    from vaelab.api import Run
    from vaelab.latent import pixelcnn
    from vaelab.training.callbacks import Callback

    run_dir = shutil.copytree(vq_run_dir, tmp_path / "vq")
    run = Run.load(run_dir, device="cpu")

    class Kill(Callback):
        def on_epoch_end(self, trainer, row):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pixelcnn.fit_pixelcnn(run, epochs=3, channels=8, layers=2, callbacks=[Kill()], log=lambda *_: None)
    seen: list[int] = []

    class Seen(Callback):
        def on_epoch_end(self, trainer, row):
            seen.append(row["epoch"])

    _, info = pixelcnn.fit_pixelcnn(run, epochs=2, channels=8, layers=2, callbacks=[Seen()], log=lambda *_: None)
    assert seen == [2] and info["epochs"] == 2
