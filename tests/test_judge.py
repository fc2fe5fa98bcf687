"""The judge classifier and the Frechet classifier distance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vaelab.errors import CheckpointError
from vaelab.evaluation.judge import load_judge, save_judge
from vaelab.evaluation.metrics import frechet_distance


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
