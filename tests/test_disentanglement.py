"""MIG, DCI and the FactorVAE score on constructed codes whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from vaelab.errors import VaelabError
from vaelab.evaluation.disentanglement import (
    dci,
    discretize,
    factor_vae_score,
    mig,
    mutual_information,
)

SIZES = (3, 6, 10, 8)  # at most 20 values each, so 20 bins can separate every value
TREES = 5  # boosting stages for DCI: enough on these codes, and fast


@pytest.fixture(scope="module")
def grid() -> np.ndarray:
    """Every combination of four factors once: (1440, 4) int."""
    axes = np.meshgrid(*[np.arange(s) for s in SIZES], indexing="ij")
    return np.stack(axes, axis=-1).reshape(-1, len(SIZES))


@pytest.fixture(scope="module")
def good(grid) -> np.ndarray:
    """Codes = standardised factors plus tiny noise: perfectly disentangled."""
    z = (grid - grid.mean(0)) / grid.std(0)
    return z + 0.01 * np.random.default_rng(0).normal(size=z.shape)


@pytest.fixture(scope="module")
def rotated(good) -> np.ndarray:
    # A rotation that gives every code an equal share of every factor (Hadamard / 2).
    h = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]) / 2.0
    assert np.allclose(h @ h.T, np.eye(4))
    return good @ h


# ---------------------------------------------------------------- the MI estimator
def test_mutual_information_against_the_joint_table():
    a = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 0, 1, 2])
    b = np.array([1, 1, 0, 0, 0, 1, 1, 1, 0, 1, 0, 1])
    joint = np.zeros((3, 2))
    np.add.at(joint, (a, b), 1)
    p = joint / joint.sum()
    pa, pb = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    expected = np.sum(p[nz] * np.log(p[nz] / (pa @ pb)[nz]))
    assert mutual_information(a, b) == pytest.approx(expected, rel=1e-12)
    # I(a; a) = H(a) in nats.
    q = np.bincount(a) / len(a)
    assert mutual_information(a, a) == pytest.approx(-np.sum(q * np.log(q)), rel=1e-12)


def test_discretize_is_twenty_equal_bins_over_the_range():
    x = np.r_[0.0, np.arange(20) + 0.5, 20.0][:, None]  # range [0, 20]: bins of width 1
    d = discretize(np.c_[x, 3 * x - 7], 20)
    assert d.min() == 1 and d.max() == 20
    assert np.array_equal(np.bincount(d[:, 0])[1:], [2] + [1] * 18 + [2])  # the maximum joins the top bin
    assert np.array_equal(d[:, 0], d[:, 1])  # each dimension over its own range


# ---------------------------------------------------------------- MIG
def test_mig_of_factors_is_one(good, grid):
    r = mig(good, grid)
    assert r["mig"] > 0.98 and np.all(r["gaps"] > 0.98)
    assert r["mutual_info"].shape == (4, 4)
    assert r["entropy"] == pytest.approx(np.log(SIZES))  # uniform factors


def test_mig_of_a_rotation_is_low(rotated, grid):
    assert mig(rotated, grid)["mig"] < 0.15


def test_mig_of_independent_codes_is_zero(grid):
    assert mig(np.random.default_rng(2).normal(size=(len(grid), 4)), grid)["mig"] < 0.02


def test_mig_duplicate_and_constant_dimensions(good, grid):
    base = mig(good, grid)
    dup = np.c_[good, good[:, 0] + 1e-3 * np.random.default_rng(3).normal(size=len(good))]
    r = mig(dup, grid)
    assert r["gaps"][0] < 0.01  # two codes share factor 0: no gap
    assert r["gaps"][1:] == pytest.approx(base["gaps"][1:], abs=0.01)
    assert r["mig"] == pytest.approx(base["mig"] * 3 / 4, abs=0.01)
    const = mig(np.c_[good, np.full(len(good), 7.0)], grid)
    assert const["mig"] == base["mig"] and np.array_equal(const["gaps"], base["gaps"])


def test_mig_ignores_permutations_and_constant_factors(good, grid):
    base = mig(good, grid)
    perm = mig(good[:, [2, 0, 3, 1]], grid)
    assert perm["mig"] == base["mig"] and np.array_equal(perm["gaps"], base["gaps"])
    # dSprites' color never varies: it is left out and reported as NaN.
    with_color = mig(good, np.c_[np.zeros(len(grid), int), grid])
    assert with_color["mig"] == pytest.approx(base["mig"]) and np.isnan(with_color["gaps"][0])
    # Factor values instead of classes give the same answer.
    assert mig(good, grid * 0.5 + 3.0)["mig"] == base["mig"]


# ---------------------------------------------------------------- DCI
def test_dci_of_factors(good, grid):
    r = dci(good, grid, n_estimators=TREES)
    assert r["disentanglement"] > 0.95 and r["completeness"] > 0.95
    assert r["informativeness_test"] > 0.95
    assert np.allclose(np.argmax(r["importance"], axis=0), np.arange(4))


def test_dci_of_a_rotation_is_low(rotated, grid):
    r = dci(rotated, grid, n_estimators=TREES)
    assert r["disentanglement"] < 0.2 and r["completeness"] < 0.2


def test_dci_duplicate_permuted_and_constant_dimensions(good, grid):
    base = dci(good, grid, n_estimators=TREES)
    dup = dci(np.c_[good, good[:, :1]], grid, n_estimators=TREES)
    assert dup["per_factor"][0] < 0.95 or dup["importance"][4, 0] < 0.05  # shared, or one copy ignored
    const = dci(np.c_[good, np.zeros(len(good))], grid, n_estimators=TREES)
    assert const["importance"][4].sum() == 0  # a constant code is never used
    assert const["disentanglement"] == pytest.approx(base["disentanglement"], abs=0.01)
    assert const["completeness"] == pytest.approx(base["completeness"], abs=0.02)
    perm = dci(good[:, [3, 1, 0, 2]], grid, n_estimators=TREES)
    assert perm["disentanglement"] == pytest.approx(base["disentanglement"], abs=0.01)
    assert perm["completeness"] == pytest.approx(base["completeness"], abs=0.01)


# ---------------------------------------------------------------- FactorVAE score
def test_factor_vae_score(good, rotated, grid):
    kw = {"n_train": 1000, "n_eval": 500, "n_variance": 1000}
    r = factor_vae_score(good, grid, **kw)
    assert r["score"] == 1.0 and r["train_accuracy"] == 1.0 and r["num_active_dims"] == 4
    assert factor_vae_score(good, grid, seed=5, **kw) == factor_vae_score(good, grid, seed=5, **kw)
    assert factor_vae_score(good[:, ::-1], grid, **kw)["score"] == 1.0
    # Collapsed dimensions are pruned and do not change the answer.
    pruned = factor_vae_score(np.c_[good, 1e-3 * good[:, :1]], grid, **kw)
    assert pruned["num_active_dims"] == 4 and pruned["score"] == 1.0
    assert factor_vae_score(rotated, grid, **kw)["score"] < 0.5
    noise = np.random.default_rng(4).normal(size=good.shape)
    assert factor_vae_score(noise, grid, **kw)["score"] < 0.5
    assert factor_vae_score(np.zeros_like(good), grid, **kw)["score"] == 0.0


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("score", [mig, dci, factor_vae_score])
def test_bad_input_is_one_line(score, good, grid):
    cases = [((good, None), "needs ground-truth factor labels"),
             ((good, grid[:-1]), "must match"),
             ((good[:1], grid[:1]), "at least 2 samples"),
             ((np.full_like(good, np.nan), grid), "NaN"),
             ((good, np.zeros_like(grid)), "no factor takes more than one value")]
    for args, words in cases:
        with pytest.raises(VaelabError) as e:
            score(*args)
        assert words in str(e.value) and "\n" not in str(e.value)
