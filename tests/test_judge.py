"""The judge classifier and the Frechet classifier distance; the judge trains through the one
trainer (a callback sees its epochs) at PyTorch's OneCycleLR rate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vaelab.errors import CheckpointError
from vaelab.evaluation.judge import load_judge, save_judge
from vaelab.evaluation.metrics import frechet_distance
from vaelab.training.callbacks import Callback
from vaelab.training.schedules import lr_at


def test_judge_learns_the_shapes(shapes_judge):
    judge, _, splits = shapes_judge
    assert judge.meta["classes"] == 4
    assert judge.accuracy > 0.8  # chance is 0.25
    pred = judge.predict(splits.val.float())
    assert float((pred == splits.val.y).float().mean()) == pytest.approx(judge.accuracy)


def test_fcd_is_the_frechet_distance_of_features(shapes_judge):
    judge, _, splits = shapes_judge
    a, b = splits.train.float()[:96], splits.train.float()[96:]
    fa, fb = judge.features(a).double().numpy(), judge.features(b).double().numpy()
    expected = frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))
    assert judge.fcd(a, b) == pytest.approx(expected, rel=1e-6)
    assert abs(judge.fcd(a, a)) < 1e-3 * max(1.0, expected)
    # Blank images are far from shapes: a much larger distance than between two halves of the data.
    assert judge.fcd(a, torch.zeros_like(a) + 0.5) > 5 * judge.fcd(a, b)


def test_save_load_round_trip(shapes_judge, tmp_path):
    judge, _, splits = shapes_judge
    save_judge(judge, tmp_path)
    again = load_judge(tmp_path)
    x = splits.val.float()
    assert torch.equal(judge.predict(x), again.predict(x))
    assert again.accuracy == judge.accuracy


def test_load_refuses_a_pickle(tmp_path, shapes_judge):
    judge, _, _ = shapes_judge
    save_judge(judge, tmp_path)
    torch.save(judge.net.state_dict(), tmp_path / "judge.safetensors")
    with pytest.raises(CheckpointError, match="pickle"):
        load_judge(tmp_path)
    with pytest.raises(CheckpointError, match="no judge"):
        load_judge(tmp_path / "missing")


class Record(Callback):
    def __init__(self):
        self.events: list = []

    def on_fit_start(self, trainer):
        self.events.append(("start", type(trainer.model).__name__, trainer.labels))

    def on_epoch_end(self, trainer, row):
        self.events.append(("epoch", row["epoch"], row["train_loss"]))

    def on_fit_end(self, trainer):
        self.events.append(("end", trainer.failed))


def test_the_onecycle_schedule_is_pytorchs_onecyclelr():
    """lr_at("onecycle") per step against torch's OneCycleLR over the judge's MNIST run
    (6 epochs of 469 steps): within 0.2% of the peak at every step."""
    epochs, steps, peak = 6, 469, 2e-3
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak, total_steps=epochs * steps)
    ours, theirs = [], []
    for i in range(epochs * steps):
        ours.append(lr_at("onecycle", peak, i // steps + 1, epochs, (i % steps) / steps))
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(abs(a - b) for a, b in zip(ours, theirs)) < 0.002 * peak
    assert ours[0] == pytest.approx(peak / 25) and max(ours) == pytest.approx(peak, rel=1e-4)
    assert ours[-1] < peak / 1000


def test_the_judge_trains_through_the_trainer_and_classifies(shapes_npz):
    from vaelab.config import DataConfig
    from vaelab.data import load_data
    from vaelab.evaluation.judge import train_judge

    splits = load_data(DataConfig(name="npz", path=str(shapes_npz), val="0.25"))  # 192 shapes, 64 held out
    rec, lines = Record(), []
    judge = train_judge(splits, "shapes", epochs=8, batch_size=32, log=lines.append, callbacks=[rec])
    assert rec.events[0] == ("start", "JudgeFit", True) and rec.events[-1] == ("end", None)
    epochs = [e for e in rec.events if e[0] == "epoch"]
    assert [e[1] for e in epochs] == list(range(1, 9))
    assert epochs[-1][2] < 0.7 * epochs[0][2]  # the cross-entropy falls (from about ln 4)
    assert [ln.split("  ")[0] for ln in lines] == [f"judge epoch {e}/8" for e in range(1, 9)]
    assert f"loss {epochs[-1][2]:.4f}" in lines[-1]
    # Four shapes (chance 0.25): the held-out accuracy, measured by the judge trained here.
    assert judge.accuracy > 0.6 and judge.meta["n_test"] == 64 and not judge.net.training
    assert judge.accuracy == pytest.approx(float((judge.predict(splits.val.float()) == splits.val.y).float().mean()))
