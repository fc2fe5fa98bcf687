"""The explorer's state and answers: one trained run kept in memory, asked through the contract.

``Explorer(run, split, n, projection)`` encodes N images of the split once (codes, the
map, the KL and spread of every latent dimension, the anomaly scores), then answers the
page's questions with plain dicts that the app sends as JSON: ``decode`` a code or a
spot on the map, an ``item`` of the split (image and reconstruction), ``interpolate``
between two codes, ``sample`` from a sampler, ``upload`` an image file.

What the page offers follows the model's capabilities, never its name: a ``continuous``
latent gets the map, sliders and interpolation; ``labels`` (a conditional model) gets a
class for every decode; ``prior`` gets the prior sampler and the KL per dimension; a
Gaussian prior gets spherical interpolation. Model calls are serialised by one lock, so
a burst of requests is answered one at a time instead of competing for the CPU.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from vaelab import distributions
from vaelab.anomaly.scores import score_images
from vaelab.distributions import DiagNormal, StandardNormal, kl_per_dim
from vaelab.errors import VaelabError
from vaelab.explore import images
from vaelab.explore.checks import BadRequest, integer
from vaelab.explore.projection import make_projection
from vaelab.latent.sampling import SAMPLERS, fitted_sampler, sample_images
from vaelab.models import CAPABILITIES, require

ACTIVE_VARIANCE = 0.01  # a dimension is active when Var_x E[z|x] exceeds this (metrics.active_units, Burda et al.)
ANOMALY_SCORE = "mse"  # serves every model: the mean squared error of the reconstruction
SLIDER_SPREADS = 3.0  # sliders reach this many spreads of the codes either side of the picked code


class Explorer:
    def __init__(self, run, split: str | None = None, n: int = 5000, projection: str = "pca", seed: int = 0,
                 top_anomalies: int = 16):
        if n < 1:
            raise VaelabError(f"--n must be at least 1, got {n}")
        self.run, self.model, self.seed = run, run.model, seed
        self.caps = frozenset(run.capabilities)
        self.continuous = "continuous" in self.caps
        self.conditional = bool(self.model.conditional)
        self.num_classes = int(self.model.cfg.num_classes) if self.conditional else None
        self.split = split or run.default_split()
        data = run.split(self.split)
        k = min(n, len(data))
        self.x = data.batch(slice(0, k))  # (N, C, H, W) floats in [0, 1]
        self.y = data.y[:k].clone() if data.y is not None else None  # (N,) or None
        self.class_names = self._class_names()
        self.lock = threading.Lock()  # one model call at a time
        self._fit_lock = threading.Lock()
        self._fitted: dict[str, object] = {}
        self.model_y = self._model_labels()  # the classes a conditional model reads; else None
        self.codes = self.projection = self.dims = None
        if self.continuous:
            q = run.posterior(self.x, self.model_y)
            self.codes = q.mean.float()  # (N, D)
            self.projection = make_projection(projection, self.codes.double().numpy(), seed)
            self.dims = self._dims(q)
        self.anomalies = self._anomalies(top_anomalies)

    # ------------------------------------------------------------------ set-up
    def _class_names(self) -> list[str] | None:
        k = self.num_classes or (int(self.y.max()) + 1 if self.y is not None and len(self.y) else None)
        if k is None:
            return None
        names = self.run.splits().classes
        return [names[c] if names and c < len(names) else str(c) for c in range(k)]

    @torch.no_grad()
    def _model_labels(self) -> torch.Tensor | None:
        if not self.conditional:
            return None
        if self.y is not None:
            return self.y
        self.model.eval()  # unlabelled images: the most probable class, as Run.encode uses
        dev = self.run.device
        return torch.cat([self.model.infer_labels(self.x[i:i + 1000].to(dev)).cpu() for i in range(0, len(self.x), 1000)])

    @torch.no_grad()
    def _dims(self, q) -> list[dict]:
        """Per latent dimension: mean KL(q || prior) over the images (None without a closed
        form or a prior), the spread of the aggregate posterior, and whether it is active."""
        kl = None
        if "prior" in self.caps:
            yd = None if self.model_y is None else self.model_y.to(self.run.device)
            prior = self.model.prior(yd, len(self.x))
            q_dev = q if self.run.device.type == "cpu" else distributions.to(q, self.run.device)
            per_dim = kl_per_dim(q_dev, prior)
            kl = None if per_dim is None else per_dim.mean(0).cpu().double().numpy()
        # One draw per image from q: its spread is the aggregate posterior's (codes plus
        # posterior noise), the scale the decoder was trained on; a point posterior gives
        # the spread of the codes themselves.
        draws = q.sample(generator=torch.Generator().manual_seed(self.seed)).double()
        spread = draws.std(0) if len(draws) > 1 else torch.ones(draws.shape[1], dtype=torch.float64)
        var = self.codes.double().var(0) if len(self.codes) > 1 else torch.zeros(self.codes.shape[1])
        mean = self.codes.double().mean(0)
        return [{"index": i, "kl": None if kl is None else float(kl[i]), "spread": max(float(spread[i]), 1e-3),
                 "mean": float(mean[i]), "active": bool(var[i] > ACTIVE_VARIANCE)} for i in range(len(mean))]

    @torch.no_grad()
    def _anomalies(self, top: int) -> dict:
        scores = score_images(self.model, self.x.to(self.run.device), ANOMALY_SCORE,
                              y=None if self.model_y is None else self.model_y.to(self.run.device))
        order = np.argsort(-scores, kind="stable")[:top]
        idx = torch.as_tensor(order.copy(), dtype=torch.long)
        x = self.x[idx]
        recon = self.run.reconstruct(x, None if self.model_y is None else self.model_y[idx])
        err = ((x - recon) ** 2).mean(1)
        maps = images.error_map(x, recon, float(err.max()) if len(err) else 1.0)
        return {"score": ANOMALY_SCORE, "median": float(np.median(scores)), "n": len(scores),
                "items": [{"index": int(i), "label": self._label(int(i)), "score": float(scores[i]),
                           "image": images.data_url(x[j]), "recon": images.data_url(recon[j]),
                           "error": images.data_url(maps[j])} for j, i in enumerate(order)]}

    # ------------------------------------------------------------------ what the page needs first
    def supported_samplers(self) -> list[dict]:
        """The samplers this run can draw from, and whether each takes a class."""
        return [{"name": name, "takes_class": cls.takes_class(self.run),
                 "note": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""}
                for name, cls in SAMPLERS.items() if cls.missing(self.run) is None]

    def gaussian_prior(self) -> bool:
        if "prior" not in self.caps or not self.continuous:
            return False
        y = torch.zeros(1, dtype=torch.long, device=self.run.device) if self.conditional else None
        with torch.no_grad():
            return isinstance(self.model.prior(y, 1), (StandardNormal, DiagNormal))

    def notes(self) -> list[str]:
        """What does not apply to this run, in words (the page shows them)."""
        out = []
        if not self.continuous:
            out.append(f"This run's model lacks {CAPABILITIES['continuous']}: the map, the sliders and "
                       "interpolation do not apply. Reconstructions, samples and anomaly scores still do.")
        if "prior" not in self.caps:
            out.append(f"This run's model lacks {CAPABILITIES['prior']}: no prior samples and no KL per "
                       "dimension (sliders are labelled with the spread of the codes instead); the other "
                       "samplers fit a density on the training codes.")
        elif self.continuous and self.dims and self.dims[0]["kl"] is None:
            out.append("The KL between this model's posterior and prior has no closed form: sliders are "
                       "labelled with the spread of the codes.")
        if self.conditional:
            out.append("This run's model is conditional: every picture is decoded under the class you choose.")
        return out

    def info(self) -> dict:
        run = self.run
        info = {
            "run": run.run_dir.name if run.run_dir else "run", "model": self.model.describe(),
            "capabilities": sorted(self.caps), "split": self.split, "n": len(self.x),
            "input_shape": list(run.config.model.input_shape), "continuous": self.continuous,
            "conditional": self.conditional, "classes": self.class_names,
            "labels": None if self.y is None else self.y.tolist(),
            "samplers": self.supported_samplers(), "notes": self.notes(), "anomalies": self.anomalies,
            "slider_spreads": SLIDER_SPREADS, "max_upload_mb": images.MAX_UPLOAD_BYTES // 2**20,
        }
        if self.continuous:
            pts = self.projection.points
            info.update({
                "latent_dim": int(self.codes.shape[1]), "dims": self.dims,
                "interpolation": ["linear", "spherical"] if self.gaussian_prior() else ["linear"],
                "projection": {"name": self.projection.name, "note": self.projection.note,
                               "exact": self.projection.exact},
                # 5 significant digits: a tenth of the JSON, and a pixel on any screen is coarser
                "points": [[float(f"{a:.5g}"), float(f"{b:.5g}")] for a, b in pts.tolist()],
            })
        return info

    # ------------------------------------------------------------------ answers
    def _label(self, i: int) -> int | None:
        return None if self.y is None else int(self.y[i])

    def check_class(self, cls) -> int | None:
        """The class a conditional model decodes under (required), None for other models."""
        if not self.conditional:
            if cls is not None:
                raise BadRequest("cls applies to conditional models only; this run's model is not conditional")
            return None
        if cls is None:
            raise BadRequest(f"this run's model is conditional: give a class cls in 0..{self.num_classes - 1}")
        return integer(cls, "cls", 0, self.num_classes - 1)

    def need_continuous(self, what: str) -> None:
        if not self.continuous:
            try:
                require(self.model, "continuous", what)
            except VaelabError as e:
                raise BadRequest(str(e)) from None

    @torch.no_grad()
    def _decode(self, z: torch.Tensor, cls: int | None) -> torch.Tensor:
        with self.lock:
            return self.run.decode(z, cls)

    def decode(self, code: list[float], cls: int | None = None) -> dict:
        """The picture of ``code`` (D floats); the answer holds the code as decoded (float32)."""
        self.need_continuous("decoding a code")
        z = torch.tensor([code], dtype=torch.float32)
        return {"code": z[0].tolist(), "cls": cls, "png": images.data_url(self._decode(z, cls)[0])}

    def decode_point(self, point: list[float], cls: int | None = None) -> dict:
        """The picture of a spot on the map: the code the projection maps it back to."""
        self.need_continuous("decoding a spot on the map")
        p = np.asarray(point, dtype=np.float64)
        out = self.decode(self.projection.to_code(p).tolist(), cls)
        out.update(point=p.tolist(), nearest=self.projection.nearest_point(p))
        return out

    def item(self, index: int) -> dict:
        """Image ``index`` of the split, its reconstruction, and (continuous) its code and map point."""
        if not 0 <= index < len(self.x):
            raise BadRequest(f"image {index} is not in the map (0..{len(self.x) - 1})", 404)
        x = self.x[index:index + 1]
        y = None if self.model_y is None else self.model_y[index:index + 1]
        with self.lock:
            recon = self.run.reconstruct(x, y)
        out = {"index": index, "label": self._label(index), "image": images.data_url(x[0]),
               "recon": images.data_url(recon[0])}
        if self.continuous:
            out.update(code=self.codes[index].tolist(), point=self.projection.points[index].tolist(),
                       model_cls=None if y is None else int(y[0]))
        return out

    def interpolate(self, a: list[float], b: list[float], ts: list[float], mode: str = "linear",
                    cls: int | None = None) -> dict:
        """Codes along the path from ``a`` to ``b`` at fractions ``ts``, and their pictures."""
        self.need_continuous("an interpolation")
        za, zb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
        t = torch.tensor(ts, dtype=torch.float64)[:, None]
        if mode == "spherical":
            if not self.gaussian_prior():
                raise BadRequest("spherical interpolation is for Gaussian priors; this run's model has none")
            yc = None if cls is None else torch.tensor([cls], device=self.run.device)
            with torch.no_grad():
                centre = self.model.prior(yc, 1).mean[0].double().cpu()
            z = slerp(za - centre, zb - centre, t) + centre
        else:
            z = (1 - t) * za + t * zb
        z = z.float()
        imgs = self._decode(z, cls)
        return {"t": ts, "mode": mode, "cls": cls, "codes": z.tolist(), "pngs": images.data_urls(imgs)}

    def sample(self, name: str, n: int = 16, cls: int | None = None, seed: int = 0) -> dict:
        """n pictures from the sampler ``name`` (one of ``supported_samplers``)."""
        if name not in [s["name"] for s in self.supported_samplers()]:
            raise BadRequest(f"sampler {name!r} does not apply to this run; it offers "
                             f"{', '.join(s['name'] for s in self.supported_samplers()) or 'none'}")
        with self._fit_lock:  # fitting reads the training codes once (cached in RUN/samplers)
            if name not in self._fitted:
                self._fitted[name] = fitted_sampler(self.run, name, seed=self.seed)
        try:
            with self.lock:
                s = sample_images(self.run, self._fitted[name], n, cls, seed)
        except VaelabError as e:
            raise BadRequest(str(e)) from None
        return {"sampler": name, "cls": cls, "seed": seed, "codes": s.codes.tolist(),
                "classes": None if s.labels is None else s.labels.tolist(), "pngs": images.data_urls(s.images)}

    def upload(self, data: bytes) -> dict:
        """An image file: as the model sees it, its code, class, reconstruction and map point."""
        cfg = self.run.config
        try:
            x = images.decode_upload(data, cfg.model.input_shape, cfg.data.crop, cfg.data.background)
        except VaelabError as e:
            raise BadRequest(str(e)) from None
        out = {"input": images.data_url(x[0])}
        with self.lock, torch.no_grad():
            dev = self.run.device
            y = self.model.infer_labels(x.to(dev)).cpu() if self.conditional else None
            if not self.continuous:
                return out | {"recon": images.data_url(self.run.reconstruct(x, y)[0])}
            z = self.run.encode(x, y).float()
            img = self.run.decode(z, y)
        point = self.projection.place(z[0].double().numpy())
        cls = None if y is None else int(y[0])
        return out | {"code": z[0].tolist(), "cls": cls, "png": images.data_url(img[0]), "recon": images.data_url(img[0]),
                      "point": point.tolist(), "nearest": self.projection.nearest_point(point)}


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (White 2016) between a and b (D,) at t (T, 1): along the arc
    of the angle between them; linear where they are (anti)parallel or one is zero."""
    na, nb = a.norm(), b.norm()
    if na < 1e-12 or nb < 1e-12:
        return (1 - t) * a + t * b
    omega = torch.arccos(torch.clamp(a @ b / (na * nb), -1.0, 1.0))
    so = torch.sin(omega)
    if so < 1e-6:
        return (1 - t) * a + t * b
    return torch.sin((1 - t) * omega) / so * a + torch.sin(t * omega) / so * b


__all__ = ["ACTIVE_VARIANCE", "ANOMALY_SCORE", "Explorer", "slerp"]
