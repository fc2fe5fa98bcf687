"""Disentanglement scores of codes against ground-truth factors: MIG, DCI, FactorVAE.

Pure functions of numpy arrays: ``codes`` (N, D) float, usually posterior means of N
images, and ``factors`` (N, F) discrete ground-truth factors (class indices or
values; each column is relabelled 0..K-1). Conventions follow disentanglement_lib
(Locatello et al. 2019), the reference most published numbers come from:

- a factor that never varies (dSprites' color) carries no information and is left
  out of every score; its per-factor entries are NaN. A factor that varies in the data
  but not in the scored rows (``n_values`` says how many values each has) is refused;
- mutual information is in nats, estimated on codes discretised into 20 equal-width
  bins over each dimension's range (``mig``);
- DCI uses gradient boosted trees (scikit-learn's defaults) as disentanglement_lib;
  informativeness is their accuracy (higher is better), on a held-out third;
- the FactorVAE score draws its votes from the given rows: fixing factor k to a value
  means sampling rows that have that value. On a full factorial set such as dSprites
  this is the paper's sampling exactly.

On dSprites the literature scores the training images (there is no test split).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import entropy as _entropy
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.metrics import mutual_info_score

from vaelab.errors import VaelabError


def _prepare(codes, factors, what: str, n_values=None, names=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked codes (N, D) float64, factors relabelled (N, F) int64, and which factors vary (F,) bool.

    ``n_values`` (F,), when given, is how many values each factor takes in the whole data
    set: a factor that varies there but takes one value in these rows (a subset that left
    the rest out) cannot be scored, and is refused instead of being left out like a
    factor that never varies. ``names`` (F,) name the factors in that message."""
    if factors is None:
        raise VaelabError(f"{what} needs ground-truth factor labels (e.g. data dsprites); this data has none")
    codes = np.asarray(codes, dtype=np.float64)
    factors = np.asarray(factors)
    if codes.ndim == 1:
        codes = codes[:, None]
    if factors.ndim == 1:
        factors = factors[:, None]
    if codes.ndim != 2 or factors.ndim != 2:
        raise VaelabError(f"{what} needs codes (N, D) and factors (N, F), got shapes {codes.shape} and {factors.shape}")
    if len(codes) != len(factors):
        raise VaelabError(f"{what}: {len(codes)} codes but {len(factors)} rows of factors; they must match")
    if len(codes) < 2:
        raise VaelabError(f"{what} needs at least 2 samples, got {len(codes)}")
    if not np.isfinite(codes).all():
        raise VaelabError(f"{what}: the codes contain NaN or infinite values")
    # Relabel each factor's values 0..K-1, so classes, floats and strings all work.
    labels = np.stack([np.unique(factors[:, j], return_inverse=True)[1].reshape(-1)
                       for j in range(factors.shape[1])], axis=1).astype(np.int64)
    varies = labels.max(axis=0) > 0  # (F,)
    if n_values is not None:
        if len(n_values) != labels.shape[1]:
            raise VaelabError(f"{what}: n_values has {len(n_values)} entries for {labels.shape[1]} factors")
        for k in np.nonzero((np.asarray(n_values) > 1) & ~varies)[0]:
            name = names[k] if names is not None else f"{k}"
            raise VaelabError(f"{what}: factor {name} takes one of its {n_values[k]} values in all {len(codes)} "
                              "samples, so no score of it can be computed; score a random sample of the whole "
                              "data (more images, or a run trained without a data.limit taken in order)")
    if not varies.any():
        raise VaelabError(f"{what}: no factor takes more than one value in these {len(codes)} samples")
    return codes, labels, varies


def discretize(codes, bins: int = 20) -> np.ndarray:
    """Each code dimension cut into ``bins`` equal-width bins over its range: (N, D) int in 1..bins.

    As disentanglement_lib's histogram discretiser (numpy's histogram edges, digitised
    against all but the last edge, so the maximum falls in the top bin).
    """
    codes = np.asarray(codes, dtype=np.float64)
    out = np.empty(codes.shape, dtype=np.int64)
    for d in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, d], bins)
        out[:, d] = np.digitize(codes[:, d], edges[:-1])
    return out


def mutual_information(a, b) -> float:
    """Plug-in mutual information (nats) between two discrete label arrays (N,)."""
    return float(mutual_info_score(np.asarray(a), np.asarray(b)))


def mig(codes, factors, *, bins: int = 20, n_values=None, names=None) -> dict:
    """Mutual Information Gap (Chen et al. 2018, "Isolating Sources of Disentanglement").

    For each factor k: (I(z_j*; v_k) - I(z_j'; v_k)) / H(v_k), the gap between the two
    code dimensions most informative about it, normalised by its entropy; MIG is the
    mean over the factors that vary. I is estimated on ``discretize(codes, bins)``
    (disentanglement_lib's estimator; the paper's own estimator integrates over q(z|x)
    instead). A factor with more values than ``bins`` cannot reach a gap of 1.

    Returns ``mig``, ``gaps`` (F,) (NaN for constant factors), ``mutual_info`` (D, F)
    and ``entropy`` (F,), both in nats.
    """
    codes, labels, varies = _prepare(codes, factors, "MIG", n_values, names)
    if bins < 2:
        raise VaelabError(f"MIG needs at least 2 bins, got {bins}")
    binned = discretize(codes, bins)  # (N, D)
    D, F = codes.shape[1], labels.shape[1]
    mi = np.array([[mutual_information(labels[:, k], binned[:, d]) for k in range(F)] for d in range(D)])
    h = np.array([mutual_information(labels[:, k], labels[:, k]) for k in range(F)])  # H(v) = I(v; v)
    top = np.sort(mi, axis=0)[::-1]  # (D, F), largest first
    second = top[1] if D > 1 else np.zeros(F)  # one dimension: nothing to share with
    gaps = np.full(F, np.nan)
    gaps[varies] = (top[0, varies] - second[varies]) / h[varies]
    return {"mig": float(np.mean(gaps[varies])), "gaps": gaps, "mutual_info": mi, "entropy": h}


def _one_minus_entropy(p: np.ndarray, axis: int) -> np.ndarray:
    # 1 - H(p) / log(K) along axis, K the number of entries; 1 when K == 1 (nothing to spread over).
    k = p.shape[axis]
    if k < 2:
        return np.ones(p.shape[1 - axis])
    return 1.0 - _entropy(p + 1e-11, base=k, axis=axis)


def dci(codes, factors, *, test_fraction: float = 1 / 3, n_estimators: int = 100, seed: int = 0,
        n_values=None, names=None) -> dict:
    """Disentanglement, completeness, informativeness (Eastwood & Williams 2018, "A Framework for
    the Quantitative Evaluation of Disentangled Representations").

    One gradient boosted tree classifier per factor predicts it from all codes
    (disentanglement_lib's choice; ``n_estimators`` 100 is scikit-learn's default, and
    the cost grows with it times the number of classes: one core fits dSprites'
    40 orientations on 6,667 rows in minutes; lower it for quick looks).
    R[d, k] is the importance of code d for factor k.
    Disentanglement = sum_d rho_d (1 - H_F(R[d, :])), rho_d = code d's share of all
    importance; completeness = sum_k rho_k (1 - H_D(R[:, k])), entropies in base F and
    D, as they define them. Informativeness is the classifiers' mean accuracy on the
    training rows and on a random ``test_fraction`` of rows held out (seeded).

    Returns ``disentanglement``, ``completeness``, ``informativeness_train``,
    ``informativeness_test``, ``importance`` (D, F) (NaN columns for constant
    factors), ``per_code`` (D,) and ``per_factor`` (F,).
    """
    codes, labels, varies = _prepare(codes, factors, "DCI", n_values, names)
    n = len(codes)
    n_test = round(n * test_fraction)
    if not 0 < test_fraction < 1 or n_test < 1 or n - n_test < 2:
        raise VaelabError(f"DCI cannot hold out test_fraction={test_fraction} of {n} samples and keep 2 to train on")
    perm = np.random.default_rng(seed).permutation(n)
    train, test = perm[n_test:], perm[:n_test]
    used = np.nonzero(varies)[0]
    importance = np.zeros((codes.shape[1], len(used)))  # (D, F_used)
    acc_train, acc_test = [], []
    for col, k in enumerate(used):
        y = labels[:, k]
        if len(np.unique(y[train])) < 2:
            raise VaelabError(f"DCI: factor {k} takes one value in the {len(train)} training samples; "
                              "give more samples")
        model = GradientBoostingClassifier(n_estimators=n_estimators, random_state=seed)
        model.fit(codes[train], y[train])
        importance[:, col] = np.abs(model.feature_importances_)
        acc_train.append(np.mean(model.predict(codes[train]) == y[train]))
        acc_test.append(np.mean(model.predict(codes[test]) == y[test]))
    weights = importance if importance.sum() > 0 else np.ones_like(importance)
    per_code = _one_minus_entropy(importance, axis=1)  # (D,)
    per_factor = _one_minus_entropy(importance, axis=0)  # (F_used,)
    full_importance = np.full((codes.shape[1], labels.shape[1]), np.nan)
    full_importance[:, used] = importance
    full_per_factor = np.full(labels.shape[1], np.nan)
    full_per_factor[used] = per_factor
    return {"disentanglement": float(np.sum(per_code * weights.sum(axis=1) / weights.sum())),
            "completeness": float(np.sum(per_factor * weights.sum(axis=0) / weights.sum())),
            "informativeness_train": float(np.mean(acc_train)),
            "informativeness_test": float(np.mean(acc_test)),
            "importance": full_importance, "per_code": per_code, "per_factor": full_per_factor}


def factor_vae_score(codes, factors, *, batch_size: int = 64, n_train: int = 10_000, n_eval: int = 5_000,
                     n_variance: int = 10_000, prune_threshold: float = 0.05, seed: int = 0,
                     n_values=None, names=None) -> dict:
    """FactorVAE disentanglement score (Kim & Mnih 2018, "Disentangling by Factorising").

    Codes are divided by their standard deviation over ``n_variance`` random rows;
    dimensions with a standard deviation below ``prune_threshold`` (collapsed to the
    prior) are ignored. Each vote: pick a varying factor k uniformly and a value of it
    (that of a random row), draw ``batch_size`` rows having that value, and vote
    (k, argmin_d of the normalised variance of code d in the batch). The majority-vote
    classifier maps each dimension to the factor that won most of its ``n_train``
    training votes; the score is its accuracy on ``n_eval`` fresh votes. Defaults are
    the paper's and disentanglement_lib's (batch 64, 10,000 / 5,000 votes, 0.05).

    Returns ``score`` (= ``eval_accuracy``), ``train_accuracy``, ``eval_accuracy``,
    ``num_active_dims``. With no active dimension every score is 0, as in
    disentanglement_lib.
    """
    codes, labels, varies = _prepare(codes, factors, "FactorVAE score", n_values, names)
    if batch_size < 2 or n_train < 1 or n_eval < 1 or n_variance < 2:
        raise VaelabError("FactorVAE score needs batch_size >= 2, n_train, n_eval >= 1 and n_variance >= 2")
    rng = np.random.default_rng(seed)
    n, dims = codes.shape
    rows = rng.choice(n, size=n_variance, replace=n_variance > n)
    global_var = codes[rows].var(axis=0, ddof=1)  # (D,)
    active = np.nonzero(np.sqrt(global_var) >= prune_threshold)[0]
    if len(active) == 0:
        return {"score": 0.0, "train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
    used = np.nonzero(varies)[0]
    # Rows grouped by value, per factor: order[f] lists row ids sorted by that factor's value;
    # the rows with value v are order[f, start[f, v] : start[f, v] + count[f, v]].
    order = np.stack([np.argsort(labels[:, k], kind="stable") for k in used])  # (F_used, N)
    n_values = int(labels.max()) + 1
    count = np.stack([np.bincount(labels[:, k], minlength=n_values) for k in used])  # (F_used, V)
    start = np.cumsum(count, axis=1) - count

    def votes(n_votes: int) -> np.ndarray:
        out = np.zeros((len(used), dims), dtype=np.int64)  # (F_used, D)
        for lo in range(0, n_votes, 1024):  # chunks keep (votes, batch, D) small
            m = min(1024, n_votes - lo)
            f = rng.integers(0, len(used), m)  # (m,) which factor is fixed
            v = labels[rng.integers(0, n, m), used[f]]  # (m,) its value
            pick = rng.integers(0, count[f, v][:, None], (m, batch_size))  # (m, B) offsets in the group
            batch = codes[order[f[:, None], start[f, v][:, None] + pick]]  # (m, B, D)
            ratio = batch[:, :, active].var(axis=1, ddof=1) / global_var[active]  # (m, D_active)
            np.add.at(out, (f, active[np.argmin(ratio, axis=1)]), 1)
        return out

    train_votes, eval_votes = votes(n_train), votes(n_eval)
    winner = np.argmax(train_votes, axis=0)  # (D,) the factor each dimension predicts
    cols = np.arange(dims)
    train_acc = train_votes[winner, cols].sum() / train_votes.sum()
    eval_acc = eval_votes[winner, cols].sum() / eval_votes.sum()
    return {"score": float(eval_acc), "train_accuracy": float(train_acc), "eval_accuracy": float(eval_acc),
            "num_active_dims": len(active)}


__all__ = ["dci", "discretize", "factor_vae_score", "mig", "mutual_information"]
