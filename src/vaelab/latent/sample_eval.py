"""Scoring generated images with the judge: ``evaluate_samples`` -> ``samples_eval.json``.

- ``fcd``: Frechet classifier distance between samples and the test set; ``fcd_floor``
  the same for as many training images (the best a model can reach).
- ``class_accuracy`` (class-conditional samplers): share of samples the judge assigns
  to the class asked for; ``class_histogram`` and ``class_entropy`` (unconditional):
  does the sampler cover every class?
- ``nn_distance``: mean Euclidean (pixel) distance from each sample to its nearest
  training image, beside the same for test images: samples much closer to the
  training set than test images are would be copies, not new images.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from vaelab import plots
from vaelab.errors import DataError
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


def evaluate_samples(run, sampler_name: str, judge, n: int = 10000, seed: int = 0, nn_samples: int = 1000,
                     out_dir: str | Path | None = None, **sampler_params) -> dict:
    sampler = fitted_sampler(run, sampler_name, seed=seed, **sampler_params)
    samples, asked, _ = sample_images(run, sampler, n, seed=seed)
    splits = run.splits()
    train, test = splits.train, splits.test or splits.val
    if test is None:
        raise DataError("eval-samples compares samples with held-out images, and this run has no test or "
                        "validation split; train with --val 0.1 (or a data set with a test split)")
    test_x = test.float()
    g = torch.Generator().manual_seed(seed)
    train_sub = train.batch(torch.randperm(len(train), generator=g)[:min(n, len(train))])
    result: dict = {"sampler": sampler_name, "params": sampler.params, "n": len(samples), "seed": seed,
                    "fcd": judge.fcd(samples, test_x), "fcd_floor": judge.fcd(train_sub, test_x)}
    pred = judge.predict(samples)
    if asked is not None:
        result["class_accuracy"] = float((pred == asked).float().mean())
        result["class_accuracy_per_class"] = {int(c): float((pred[asked == c] == c).float().mean())
                                              for c in asked.unique()}
    else:
        hist = torch.bincount(pred, minlength=judge.meta["classes"]).double()
        p = hist / hist.sum()
        result["class_histogram"] = hist.long().tolist()
        result["class_entropy"] = float(-(p[p > 0] * p[p > 0].log2()).sum())
        result["class_entropy_max"] = math.log2(judge.meta["classes"])
    k = min(nn_samples, len(samples), len(test))
    train_x = train.float()
    d_s, j_s = nearest_distances(samples[:k], train_x)
    d_t, _ = nearest_distances(test_x[:k], train_x)
    result["nn_distance"] = {"samples_to_train": float(d_s.mean()), "test_to_train": float(d_t.mean()), "n": k}
    result["judge_accuracy"] = judge.accuracy
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
    return rows


__all__ = ["evaluate_samples", "nearest_distances"]
