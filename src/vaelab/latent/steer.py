"""Steering: move an image's latent code towards a class with the model's label predictor.

A run trained with ``model.predictor_weight > 0`` holds a label predictor on the code
(the posterior mean for VAEs). ``steer`` starts at each image's code and takes Adam
steps that increase, per image,

    log softmax(logits(z) / T)[target] - prior_weight * 0.5 * ||z||^2

the predictor's log-probability of the target class at temperature T plus the N(0, I)
prior (up to a constant), which keeps the code where the decoder has seen data. At
T = 1 the log-probability stops pulling once the predictor is sure (p ~ 1), often
just across its decision boundary, where the decoded image is still ambiguous; a
softened predictor (T > 1) keeps pulling into the interior of the class, while the
prior keeps the code from running off (bench/README.md has the measurements).
Reported probabilities are always the predictor's own, at T = 1. The decoded path is
the image turning into the target class. ``steer_benchmark`` steers random (image,
other class) pairs and lets an independent judge classifier say whether the final
images show the target class::

    from vaelab.latent.steer import steer
    r = steer(run, x, target=7, steps=100)     # x (N, C, H, W) in [0, 1]
    r.final_images, r.start_prob, r.end_prob   # (N, C, H, W), (N,), (N,)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from vaelab.errors import DataError, VaelabError
from vaelab.models import frozen, require
from vaelab.rundir import ID_FIELD, RunDir

DEFAULT_STEPS = 100
DEFAULT_LR = 0.05
DEFAULT_PRIOR_WEIGHT = 0.3
DEFAULT_TEMPERATURE = 5.0
DEFAULT_FRAMES = 8


@dataclass
class SteerResult:
    """Codes, images and target probabilities at ``frames`` points of each path."""

    path_z: torch.Tensor  # (F, N, D) codes; [0] is the start (the posterior mean), [-1] the end
    path_images: torch.Tensor  # (F, N, C, H, W) decoded images in [0, 1]
    target_prob: torch.Tensor  # (F, N) predictor probability of the target class
    frame_steps: list[int]  # the step each frame was taken after (0 = start, ..., steps)
    target: torch.Tensor  # (N,) target classes

    @property
    def final_z(self) -> torch.Tensor:
        return self.path_z[-1]

    @property
    def final_images(self) -> torch.Tensor:
        return self.path_images[-1]

    @property
    def start_prob(self) -> torch.Tensor:
        return self.target_prob[0]

    @property
    def end_prob(self) -> torch.Tensor:
        return self.target_prob[-1]


def _model(run_or_model) -> torch.nn.Module:
    return getattr(run_or_model, "model", run_or_model)


def check_predictor(model) -> int:
    """The number of classes of the model's predictor, or a one-line error when the model
    cannot be steered (no predictor, a discrete latent, or a conditional model)."""
    require(model, "predictor", "steer")
    require(model, "continuous", "steer")
    if model.conditional:
        raise VaelabError(f"steer moves a code towards a class with the label predictor, and {model.describe()} "
                          "takes the class as an input: decode under the class instead (vaelab sample --class C)")
    return int(model.cfg.num_classes)


def check_target(target: int, num_classes: int) -> None:
    if not 0 <= target < num_classes:
        raise VaelabError(f"target class {target} does not exist; this run's predictor knows classes "
                          f"0..{num_classes - 1}")


def check_objective(steps: int, lr: float, prior_weight: float, temperature: float) -> None:
    """The steering objective's settings, in one line each when wrong. NaN and inf are refused
    by name: a comparison such as ``lr <= 0`` is False for NaN, which Adam or the result would meet."""
    if steps < 0:
        raise VaelabError(f"steps must be >= 0, got {steps}")
    if not (math.isfinite(lr) and lr > 0):
        raise VaelabError(f"the step size (lr) must be positive and finite, got {lr}")
    if not (math.isfinite(prior_weight) and prior_weight >= 0):
        raise VaelabError(f"prior_weight must be >= 0 and finite, got {prior_weight}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise VaelabError(f"temperature must be positive and finite, got {temperature}")


def _targets(target, n: int, num_classes: int) -> torch.Tensor:
    t = torch.as_tensor(target, dtype=torch.long).flatten()
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise VaelabError(f"{t.numel()} targets for {n} images; give one class, or one per image")
    bad = t[(t < 0) | (t >= num_classes)]
    if len(bad):
        check_target(int(bad[0]), num_classes)
    return t.clone()


def frame_steps(steps: int, frames: int) -> list[int]:
    """``frames`` step counts spread evenly over 0..steps (always both ends)."""
    return sorted({round(i * steps / max(frames - 1, 1)) for i in range(max(frames, 2))})


def _steer_chunk(model, x: torch.Tensor, target: torch.Tensor, steps: int, lr: float, prior_weight: float,
                 temperature: float, keep: list[int]) -> torch.Tensor:
    """Codes (F, B, D) after each step count in ``keep``. The objective is summed over
    images and Adam is element-wise, so every image moves independently of the batch."""

    with torch.no_grad():
        z = model.encode(x).float().clone()
    saved = [z.clone()] if 0 in keep else []
    z.requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    prior = model.prior(None, len(x)) if "prior" in model.capabilities else None
    with frozen(model), torch.enable_grad():
        for step in range(1, steps + 1):
            logits = model.predict_logits(z) / temperature  # (B, K)
            logp = torch.log_softmax(logits, dim=1).gather(1, target[:, None])[:, 0]  # (B,)
            # -log p(z) keeps the code where the decoder has seen data (0.5 |z|^2 + const for N(0, I));
            # an autoencoder has no prior, and the same 0.5 |z|^2 pull towards the origin stands in.
            neg_log_prior = -prior.log_prob(z) if prior is not None else 0.5 * z.square().sum(1)
            loss = -logp + prior_weight * neg_log_prior
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            if step in keep:
                saved.append(z.detach().clone())
    return torch.stack(saved)


def steer(run_or_model, x: torch.Tensor, target, steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR,
          prior_weight: float = DEFAULT_PRIOR_WEIGHT, temperature: float = DEFAULT_TEMPERATURE,
          frames: int | None = None, batch_size: int = 2000) -> SteerResult:
    """Steer the codes of images ``x`` (N, C, H, W) in [0, 1] towards ``target`` (one class,
    or one per image) for ``steps`` Adam steps of size ``lr``; results on the CPU.

    ``prior_weight`` scales the -0.5 ||z||^2 prior term (0 lets codes wander off the data;
    larger values keep them nearer the origin); ``temperature`` softens the predictor in
    the objective (1 = its own log-probability). ``frames``: the codes kept along the path,
    start and end included, at most ``steps + 1`` (one per step count); None: ``DEFAULT_FRAMES``,
    or ``steps + 1`` when that is fewer. Images go in chunks of ``batch_size``; each image
    moves independently, so the chunk size does not change the result.
    """
    model = _model(run_or_model)
    num_classes = check_predictor(model)
    if x.dim() != 4:
        raise DataError(f"steer needs images (N, C, H, W), got shape {tuple(x.shape)}")
    check_objective(steps, lr, prior_weight, temperature)
    if frames is None:
        frames = min(DEFAULT_FRAMES, steps + 1)
    elif frames < 2:
        raise VaelabError(f"frames must be at least 2 (start and end), got {frames}")
    elif frames > steps + 1:
        raise VaelabError(f"frames ({frames}) must be at most steps + 1 ({steps + 1}): the path holds one code per "
                          "step count, 0..steps")
    target = _targets(target, len(x), num_classes)
    keep = frame_steps(steps, frames)
    model.eval()
    device = next(model.parameters()).device
    zs, images, probs = [], [], []
    for i in range(0, len(x), batch_size):
        xb, tb = x[i:i + batch_size].float().to(device), target[i:i + batch_size].to(device)
        path = _steer_chunk(model, xb, tb, steps, lr, prior_weight, temperature, keep)  # (F, B, D)
        with torch.no_grad():
            flat = path.flatten(0, 1)  # (F * B, D)
            img = model.decode(flat).unflatten(0, path.shape[:2])  # (F, B, C, H, W)
            p = torch.softmax(model.predict_logits(flat), 1).unflatten(0, path.shape[:2])  # (F, B, K)
            prob = p.gather(2, tb[None, :, None].expand(len(path), -1, 1))[..., 0]  # (F, B)
        zs.append(path.cpu())
        images.append(img.cpu())
        probs.append(prob.cpu())
    return SteerResult(path_z=torch.cat(zs, 1), path_images=torch.cat(images, 1), target_prob=torch.cat(probs, 1),
                       frame_steps=keep, target=target)


# ------------------------------------------------------------------------------------ benchmark
def success_rate(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """Share of images whose predicted class is the target class."""
    if len(predicted) != len(target) or len(target) == 0:
        raise ValueError(f"need as many predictions as targets (got {len(predicted)} and {len(target)})")
    return float((predicted.cpu() == target.cpu()).double().mean())


def draw_pairs(labels: torch.Tensor, pairs: int, num_classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``pairs`` distinct image indices and, for each, a target class drawn uniformly from
    the classes other than its label: (index (P,), target (P,))."""
    n = len(labels)
    if not 1 <= pairs <= n:
        raise VaelabError(f"pairs must be between 1 and the {n} images of the split, got {pairs}")
    gen = torch.Generator().manual_seed(seed)
    index = torch.randperm(n, generator=gen)[:pairs]
    shift = torch.randint(1, num_classes, (pairs,), generator=gen)  # 1..K-1: never the true class
    return index, (labels[index] + shift) % num_classes


def steer_benchmark(run, pairs: int = 100, judge=None, seed: int = 0, split: str | None = None,
                    steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR, prior_weight: float = DEFAULT_PRIOR_WEIGHT,
                    temperature: float = DEFAULT_TEMPERATURE, out: str | Path | None = None, examples: int = 8,
                    log: Callable[[str], None] = print) -> dict:
    """Steer ``pairs`` random (image, other class) pairs; the judge decides success.

    Returns (and, with ``out``, writes ``out/steer_eval.json`` and
    ``out/figures/steer_examples.png``): ``success_rate`` (share of final images the
    judge assigns to the target class), ``predictor_success_rate`` (the same by the
    predictor, which was optimised and so is not the measure), baselines on the
    starting reconstructions, per-target-class success (for the target classes drawn) and one record per pair.
    ``judge``: a ``vaelab.judge.Judge``, a folder for ``get_judge``, or None for the
    cached judge of the run's data set (trained on first use).
    """
    from vaelab.evaluation.judge import resolve_judge

    model = run.model
    num_classes = check_predictor(model)
    check_objective(steps, lr, prior_weight, temperature)  # before the data and the judge
    split = split or run.default_split()
    data = run.split(split)
    if data.y is None:
        raise DataError(f"steer-bench needs labelled images, and the {split} split has no labels")
    index, target = draw_pairs(data.y.cpu(), pairs, num_classes, seed)
    x = data.batch(index.to(data.x.device)).cpu()  # (P, C, H, W)
    true = data.y.cpu()[index]
    j = resolve_judge(run.config.data, judge, log)
    if list(j.meta.get("shape", [])) != list(x.shape[1:]) or int(j.meta.get("classes", 0)) < num_classes:
        raise VaelabError(f"the judge ({j.meta.get('dataset')}, images {j.meta.get('shape')}, "
                          f"{j.meta.get('classes')} classes) does not fit this run ({list(x.shape[1:])}, "
                          f"{num_classes} classes); pass --judge with a judge trained on the run's data")
    t0 = time.perf_counter()
    r = steer(run, x, target, steps=steps, lr=lr, prior_weight=prior_weight, temperature=temperature)
    seconds = time.perf_counter() - t0
    judge_end, judge_start = j.predict(r.final_images), j.predict(r.path_images[0])
    with torch.no_grad():
        pred_end = model.predict_logits(r.final_z.to(next(model.parameters()).device)).argmax(1).cpu()
    moved = (r.final_z - r.path_z[0]).norm(dim=1)
    result = {
        "success_rate": success_rate(judge_end, target),
        "predictor_success_rate": success_rate(pred_end, target),
        "success_rate_start": success_rate(judge_start, target),  # the unsteered reconstructions
        "judge_accuracy_original": success_rate(j.predict(x), true),
        "judge_accuracy_start": success_rate(judge_start, true),
        "target_prob_start": float(r.start_prob.double().mean()),
        "target_prob_end": float(r.end_prob.double().mean()),
        "latent_distance": float(moved.double().mean()),
        "latent_norm_end": float(r.final_z.norm(dim=1).double().mean()),
        "pairs": pairs, "steps": steps, "lr": lr, "prior_weight": prior_weight, "temperature": temperature,
        "split": split, "seed": seed,
        "num_classes": num_classes, "predictor_weight": run.config.model.predictor_weight,
        "judge": j.meta.get("dataset"), "judge_accuracy": j.meta.get("accuracy"),
        "seconds": round(seconds, 3),
        # The target classes drawn (with few pairs, some are not): a rate per class measured, no nulls.
        "per_target": {str(c): success_rate(judge_end[target == c], target[target == c])
                       for c in target.unique().tolist()},
        "pairs_per_target": {str(c): int((target == c).sum()) for c in target.unique().tolist()},
        "records": [{"index": int(i), "label": int(a), "target": int(t), "judge": int(jc), "predictor": int(pc),
                     "prob_start": round(float(p0), 6), "prob_end": round(float(p1), 6)}
                    for i, a, t, jc, pc, p0, p1 in zip(index, true, target, judge_end, pred_end, r.start_prob,
                                                       r.end_prob)],
    }
    if out is not None:
        from vaelab.io import write_json

        out = Path(out)
        write_json(RunDir(out).steer_eval, {**result, ID_FIELD: run.checkpoint_id})
        plot_examples(x, r, judge_end, true, RunDir(out).figure("steer_examples"), n=examples,
                      title=f"steering {steps} steps (prior weight {prior_weight:g}, T {temperature:g}): "
                            f"judge success {result['success_rate']:.1%} of {pairs}")
    return result


def plot_examples(x: torch.Tensor, r: SteerResult, judged: torch.Tensor | None, labels: torch.Tensor | None,
                  path: str | Path, n: int = 8, title: str = "") -> Path:
    """One row per image: the original, then the decoded path from start to end."""
    from vaelab import plots

    rows = []
    for i in range(min(n, len(x))):
        name = f"{int(labels[i])} -> {int(r.target[i])}" if labels is not None else f"-> {int(r.target[i])}"
        if judged is not None:
            name += " ok" if int(judged[i]) == int(r.target[i]) else f" (judge: {int(judged[i])})"
        rows.append((name, torch.cat([x[i:i + 1].cpu(), r.path_images[:, i]])))
    return plots.plot_image_rows(rows, path, title=title)


__all__ = ["SteerResult", "check_objective", "draw_pairs", "frame_steps", "plot_examples", "steer", "steer_benchmark",
           "success_rate"]
