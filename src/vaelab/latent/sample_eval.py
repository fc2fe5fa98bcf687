"""Scoring generated images with the judge: ``evaluate_samples`` -> ``samples_eval.json``.

- ``fcd``: Frechet classifier distance between samples and the test set; ``fcd_floor``
  the same for as many training images (the best a model can reach).
- ``class_accuracy`` (class-conditional samplers): share of samples the judge assigns
  to the class asked for; ``class_histogram`` and ``class_entropy`` (unconditional):
  does the sampler cover every class?
- ``nn_distance``: mean Euclidean (pixel) distance from each sample to its nearest
  training image, beside the same for test images: samples much closer to the
  training set than test images are would be copies, not new images.
- with ``features`` ("inception" or "judge", ``vaelab.evaluation.fid``): ``fid``,
  ``kid_mean``/``kid_std`` and ``precision``/``recall`` of the samples against the
  ``reference`` split (test or train), and ``fid_protocol``, which states how: features,
  reference split and size, sample count, KID subsets, neighbours, weights, library.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from vaelab import plots
from vaelab.errors import DataError
from vaelab.evaluation.metrics import frechet_distance
from vaelab.io import write_json
from vaelab.latent.sampling import fitted_sampler, sample_images
from vaelab.rundir import ID_FIELD, RunDir


def nearest_distances(queries: torch.Tensor, reference: torch.Tensor, chunk: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance to and index of the nearest reference image for each query (pixel L2).

    Uses |a|^2 + |b|^2 - 2 a.b with one matmul per chunk: a brute-force search over
    60,000 MNIST images takes about a second for 1,000 queries on two cores.
    """
    q = queries.flatten(1).float()
    r = reference.flatten(1).float()
    r2 = r.square().sum(1)
    dists, idxs = [], []
    for i in range(0, len(q), chunk):
        qc = q[i:i + chunk]
        d2 = qc.square().sum(1, keepdim=True) + r2[None] - 2 * qc @ r.T
        d, j = d2.clamp_min_(0).min(1)
        dists.append(d.sqrt())
        idxs.append(j)
    return torch.cat(dists), torch.cat(idxs)


def _extractor(features: str, judge, inception_weights, log):
    from vaelab.evaluation import fid

    if features == "judge":
        return fid.JudgeFeatures(judge)
    if features == "inception":
        progress = log is not None and os.environ.get("VAELAB_NO_PROGRESS") != "1"
        return fid.inception_extractor(inception_weights, progress=progress)
    raise DataError(f"unknown --features {features!r}; available: {', '.join(fid.FEATURES)}")


def _feature_scores(extractor, features: str, samples: torch.Tensor, reference, reference_split: str,
                    seed: int, log) -> dict:
    """``fid``, ``kid_mean``, ``kid_std``, ``precision``, ``recall`` and their ``fid_protocol``."""
    from importlib.metadata import version

    from vaelab.evaluation import fid

    scores = fid.feature_scores(extractor, samples, reference, seed=seed, log=log)
    protocol = {"features": features, "dim": scores.pop("dim"), "reference": reference_split,
                "n_reference": len(reference), "n_samples": len(samples),
                "kid_subsets": scores.pop("kid_subsets"), "kid_subset_size": scores.pop("kid_subset_size"),
                "pr_neighbours": scores.pop("pr_neighbours"), "library": f"torchmetrics {version('torchmetrics')}"}
    if features == "inception":
        protocol["weights"] = {"file": fid.INCEPTION_FILE, "sha256": fid.INCEPTION_SHA256,
                               "network": f"torch-fidelity {version('torch-fidelity')}"}
    return {**scores, "fid_protocol": protocol}


# What --reference compares samples with: "test" (the test split, else validation) or "train".
REFERENCES = ("test", "train")


def evaluate_samples(run, sampler_name: str, judge, n: int = 10000, seed: int = 0, nn_samples: int = 1000,
                     out_dir: str | Path | None = None, features: str | None = None, reference: str = "test",
                     inception_weights: str | Path | None = None, extractor=None, log=None,
                     **sampler_params) -> dict:
    """Score ``n`` samples of ``sampler_name``; ``features`` adds FID, KID and precision/recall
    against the ``reference`` split ("test": the test split, else validation; "train").
    ``extractor``: the features' network, when the caller built it already."""
    if reference not in REFERENCES:
        raise DataError(f"unknown --reference {reference!r}; available: {', '.join(REFERENCES)}")
    splits = run.splits()
    train, test = splits.train, splits.test or splits.val
    if test is None:
        raise DataError("eval-samples compares samples with held-out images, and this run has no test or "
                        "validation split; train with --val 0.1 (or a data set with a test split)")
    ref_split, ref = ("train", train) if reference == "train" else ("test" if splits.test else "val", test)
    if features is not None:  # before sampling: a missing library or weights file fails at once
        from vaelab.evaluation.fid import check_sizes

        extractor = extractor or _extractor(features, judge, inception_weights, log)
        check_sizes(extractor.dim, n, len(ref))
    sampler = fitted_sampler(run, sampler_name, seed=seed, **sampler_params)
    samples, asked, _ = sample_images(run, sampler, n, seed=seed)
    test_x = test.float()
    g = torch.Generator().manual_seed(seed)
    train_sub = train.batch(torch.randperm(len(train), generator=g)[:min(n, len(train))])
    test_stats = judge.feature_stats(test_x)  # once for both distances (judge.fcd would compute it twice)
    result: dict = {"sampler": sampler_name, "params": sampler.params, "n": len(samples), "seed": seed,
                    "fcd": frechet_distance(*judge.feature_stats(samples), *test_stats),
                    "fcd_floor": frechet_distance(*judge.feature_stats(train_sub), *test_stats)}
    pred = judge.predict(samples)
    if asked is not None:
        result["class_accuracy"] = float((pred == asked).float().mean())
        result["class_accuracy_per_class"] = {int(c): float((pred[asked == c] == c).float().mean())
                                              for c in asked.unique()}
    else:
        hist = torch.bincount(pred, minlength=judge.meta["classes"]).double()
        p = hist / hist.sum()
        result["class_histogram"] = hist.long().tolist()
        # + 0.0: one class alone gives -(1 * log2 1) = -0.0, printed "-0.000"; the entropy is 0
        result["class_entropy"] = float(-(p[p > 0] * p[p > 0].log2()).sum()) + 0.0
        result["class_entropy_max"] = math.log2(judge.meta["classes"])
    k = min(nn_samples, len(samples), len(test))
    train_x = train.float()
    d_s, j_s = nearest_distances(samples[:k], train_x)
    d_t, _ = nearest_distances(test_x[:k], train_x)
    result["nn_distance"] = {"samples_to_train": float(d_s.mean()), "test_to_train": float(d_t.mean()), "n": k}
    result["judge_accuracy"] = judge.accuracy
    if features is not None:
        result.update(_feature_scores(extractor, features, samples, ref.float(), ref_split, seed, log))
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_json(out_dir / RunDir.SAMPLES_EVAL, {**result, ID_FIELD: run.checkpoint_id})
        m = min(16, k)
        pairs = torch.stack([samples[:m], train_x[j_s[:m]]], 1).flatten(0, 1)
        plots.plot_grid(pairs, RunDir(out_dir).figure(f"nearest_{sampler_name}"), nrow=8,
                        title="samples (left) beside their nearest training images (right)")
        plots.plot_grid(samples[:100], RunDir(out_dir).figure(f"samples_{sampler_name}"), nrow=10,
                        title=f"{sampler_name} samples" + (" (rows cycle through classes)" if asked is not None else ""))
    return result


def _summary(result: dict) -> list[tuple[str, str]]:
    rows = [("fcd", f"{result['fcd']:.3f}"), ("fcd_floor", f"{result['fcd_floor']:.3f}")]
    if "class_accuracy" in result:
        rows.append(("class_accuracy", f"{result['class_accuracy']:.4f}"))
    else:
        rows.append(("class_entropy", f"{result['class_entropy']:.3f} bits (max {result['class_entropy_max']:.3f})"))
        rows.append(("class_histogram", str(result["class_histogram"])))
    nn = result["nn_distance"]
    rows.append(("nn_distance", f"samples {nn['samples_to_train']:.3f}, test {nn['test_to_train']:.3f} (n={nn['n']})"))
    if "fid_protocol" in result:
        p = result["fid_protocol"]
        rows.append(("fid", (f"{result['fid']:.3f} ({p['features']} features, {p['n_samples']:,} samples vs the "
                             f"{p['reference']} split, {p['n_reference']:,} images)")))
        rows.append(("kid", (f"{result['kid_mean']:.5f} +- {result['kid_std']:.5f} ({p['kid_subsets']} subsets "
                             f"of {p['kid_subset_size']})")))
        rows.append(("precision/recall", f"{result['precision']:.4f} / {result['recall']:.4f} (k={p['pr_neighbours']})"))
    return rows


__all__ = ["evaluate_samples", "nearest_distances"]
