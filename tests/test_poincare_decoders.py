"""The P-VAE's decoders (``model.wrapped-normal.decoder``: linear, wrapped, gyroplane; vaelab.models.
poincare) and the gyroplane units (``vaelab.distributions.gyroplane_distance``): the closed form
against the definition through Möbius addition and against a brute-force least distance to the
gyroplane, its c -> 0 limit, its sign across the plane, finite gradients at the boundary; the
decoders in a model, training, the option in ``vaelab parts`` and its refusal, a run written
before the option, and ONNX. (Beside tests/test_poincare.py, which covers the ball and the
wrapped normal.)"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_error, one_line, run_main

from vaelab.configure import build_config
from vaelab.distributions import (
    ball_distance,
    ball_expmap0,
    ball_logmap0,
    ball_project,
    conformal_factor,
    gyroplane_distance,
    mobius_add,
)
from vaelab.errors import ConfigError
from vaelab.models import build_model
from vaelab.models.poincare import GyroplaneLayer, LogMapLinear

F64 = torch.float64
CURVATURES = (0.3, 1.0, 2.5)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def points(n: int, d: int, c: float, seed: int, spread: float = 0.6) -> torch.Tensor:
    return ball_expmap0(torch.randn(n, d, generator=gen(seed), dtype=F64) * spread, c)


def by_definition(z, p, a, c):
    """sign(<(-p) (+) z, a>) lambda_p |a| asinh(2 sqrt(c) |<(-p) (+) z, a>| / ((1 - c |(-p) (+) z|^2) |a|)) / sqrt(c),
    (B, H), from the Möbius sum itself."""
    diff = mobius_add(-p[None], z[:, None], c)  # (B, H, D)
    dot = (diff * a[None]).sum(-1)
    an = a.norm(dim=-1)
    dist = torch.asinh(2 * math.sqrt(c) * dot.abs() / ((1 - c * diff.square().sum(-1)) * an)) / math.sqrt(c)
    return torch.sign(dot) * conformal_factor(p, c)[:, 0] * an * dist


# ------------------------------------------------------------------------------ the gyroplane's maths
@pytest.mark.parametrize("c", CURVATURES)
def test_the_closed_form_is_the_definition_through_mobius_addition(c):
    z, p = points(40, 4, c, 0, 0.8), points(7, 4, c, 1, 0.8)
    a = torch.randn(7, 4, generator=gen(2), dtype=F64)
    f = gyroplane_distance(z, p, a, c)
    assert f.shape == (40, 7)
    assert torch.allclose(f, by_definition(z, p, a, c), rtol=1e-8, atol=1e-9)
    # ||a||_p d_c: scaling a scales the units, and only the direction of a sets the plane
    assert torch.allclose(gyroplane_distance(z, p, 3 * a, c), 3 * f, rtol=1e-12)


def test_near_the_boundary_the_closed_form_keeps_the_digits_the_mobius_sum_loses():
    """Against the definition in 50-digit arithmetic (mpmath, which torch installs with sympy), at
    points 1e-4 to 1e-6 from the boundary (in 1 - c |x|^2): the closed form is exact to float64's rounding, the
    definition in float64 (1 - c |(-p) (+) z|^2 cancels) is not."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    c = 2.5

    def near(n, seed):  # directions at random, 1 - c |x|^2 from 1e-4 down to 1e-6
        u = torch.randn(n, 3, generator=gen(seed), dtype=F64)
        gap = torch.logspace(-4, -6, n, dtype=F64)
        return u / u.norm(dim=-1, keepdim=True) * ((1 - gap) / c).sqrt()[:, None]

    z, p = near(6, 16), near(4, 17)
    a = torch.randn(4, 3, generator=gen(18), dtype=F64)

    def exact(zi, pk, ak):
        zi, pk, ak = ([mpmath.mpf(float(v)) for v in t] for t in (zi, pk, ak))
        dot = lambda u, v: sum(x * y for x, y in zip(u, v))
        mp = [-v for v in pk]
        den = 1 + 2 * c * dot(mp, zi) + c * c * dot(mp, mp) * dot(zi, zi)
        diff = [((1 + 2 * c * dot(mp, zi) + c * dot(zi, zi)) * x + (1 - c * dot(mp, mp)) * y) / den
                for x, y in zip(mp, zi)]
        an, sc = mpmath.sqrt(dot(ak, ak)), mpmath.sqrt(c)
        d = mpmath.asinh(2 * sc * abs(dot(diff, ak)) / ((1 - c * dot(diff, diff)) * an)) / sc
        return float(mpmath.sign(dot(diff, ak)) * 2 / (1 - c * dot(pk, pk)) * an * d)

    ref = torch.tensor([[exact(zi, pk, ak) for pk, ak in zip(p, a)] for zi in z], dtype=F64)
    closed, naive = gyroplane_distance(z, p, a, c), by_definition(z, p, a, c)
    assert float(((closed - ref) / ref).abs().max()) < 1e-10  # the points' own rounding: 1e-16 / 1e-6
    assert float(((naive - ref) / ref).abs().max()) > 1e-7


def least_distance_2d(z, p, a, c, n: int = 4001, rounds: int = 4) -> float:
    """min over w on the gyroplane {p (+) t a_perp} (every point of it: (-p) (+) (p (+) v) = v) of
    d_c(z, w), by a grid over the plane's Euclidean coordinate t in (-1, 1) / sqrt(c), refined
    about the best point."""
    perp = torch.stack([-a[1], a[0]]) / a.norm()
    lo, hi = -1 / math.sqrt(c), 1 / math.sqrt(c)
    for _ in range(rounds):
        t = torch.linspace(lo, hi, n, dtype=F64)[1:-1]
        w = mobius_add(p.expand(len(t), 2), t[:, None] * perp, c)
        d = ball_distance(z.expand(len(t), 2), w, c)
        i = int(d.argmin())
        step = float(t[1] - t[0])
        lo, hi = float(t[i]) - 2 * step, float(t[i]) + 2 * step
    return float(d.min())


@pytest.mark.parametrize("c", (0.5, 1.0, 2.0))
def test_the_distance_is_the_least_distance_to_a_point_of_the_gyroplane_in_2d(c):
    z, p = points(6, 2, c, 3, 1.0), points(3, 2, c, 4, 0.8)
    a = torch.randn(3, 2, generator=gen(5), dtype=F64)
    f = gyroplane_distance(z, p, a, c)
    scale = conformal_factor(p, c)[:, 0] * a.norm(dim=-1)  # ||a||_p
    for i in range(len(z)):
        for k in range(len(p)):
            assert float(f[i, k].abs() / scale[k]) == pytest.approx(least_distance_2d(z[i], p[k], a[k], c),
                                                                    rel=1e-7, abs=1e-9)


def test_the_distance_is_the_least_in_3d_no_point_of_the_plane_is_nearer():
    c = 1.3
    z, p = points(5, 3, c, 6, 0.9), points(1, 3, c, 7, 0.7)[0]
    a = torch.randn(3, generator=gen(8), dtype=F64)
    basis = torch.linalg.svd(a[None])[2][1:]  # (2, 3) orthonormal, each orthogonal to a
    f = gyroplane_distance(z, p[None], a[None], c)[:, 0] / (conformal_factor(p, c) * a.norm())
    # points of the plane: p (+) (s1 e1 + s2 e2), s on a polar grid fine near the boundary
    r = torch.tanh(torch.linspace(0, 12, 600, dtype=F64)) / math.sqrt(c)
    theta = torch.linspace(0, 2 * math.pi, 720, dtype=F64)
    v = (r[:, None, None] * (torch.cos(theta)[None, :, None] * basis[0] + torch.sin(theta)[None, :, None] * basis[1]))
    w = mobius_add(p, v.reshape(-1, 3), c)
    assert torch.allclose(((mobius_add(-p, w, c)) * a).sum(-1), torch.zeros(len(w), dtype=F64), atol=1e-12)
    for i in range(len(z)):
        d = ball_distance(z[i].expand_as(w), w, c)
        assert float(d.min()) >= float(f[i].abs()) - 1e-9  # none nearer than the formula says
        assert float(d.min()) == pytest.approx(float(f[i].abs()), rel=2e-3)  # and the grid gets close


def test_as_c_vanishes_a_unit_is_four_times_the_euclidean_one():
    """c -> 0: lambda_p -> 2 (||a||_p -> 2 |a|) and d_c -> 2 x the Euclidean distance (the metric 4 I),
    so f -> 4 <z - p, a> = 4 |a| x (z's signed Euclidean distance to the plane through p normal to a)."""
    z = torch.tensor([[0.3, -1.2, 0.8], [2.0, 0.5, -0.4]], dtype=F64)
    p = torch.tensor([[0.5, 0.1, -0.2], [-1.0, 0.7, 0.3]], dtype=F64)
    a = torch.tensor([[1.5, -0.4, 2.0], [0.3, 0.9, -0.6]], dtype=F64)
    ref = 4 * ((z[:, None] - p[None]) * a[None]).sum(-1)
    errors = [float((gyroplane_distance(z, p, a, c) - ref).abs().max()) for c in (1e-3, 1e-5, 1e-7, 1e-9)]
    assert errors[-1] < 1e-6 and all(e0 > 10 * e1 for e0, e1 in itertools.pairwise(errors)), errors
    assert ref.abs().min() > 0.5  # the limit is not trivially 0


@pytest.mark.parametrize("c", CURVATURES)
def test_the_sign_flips_where_z_crosses_the_plane_and_the_plane_itself_is_zero(c):
    p, a = points(4, 3, c, 9, 0.8), torch.randn(4, 3, generator=gen(10), dtype=F64)
    along = torch.randn(4, 3, generator=gen(11), dtype=F64) * 0.3
    along = along - (along * a).sum(-1, keepdim=True) * a / a.square().sum(-1, keepdim=True)  # v with <v, a> = 0
    unit = a / a.norm(dim=-1, keepdim=True)
    for k in range(4):
        on = mobius_add(p[k], along[k], c)  # on the plane: (-p) (+) on = v
        plus, minus = mobius_add(p[k], along[k] + 1e-3 * unit[k], c), mobius_add(p[k], along[k] - 1e-3 * unit[k], c)
        f = gyroplane_distance(torch.stack([on, plus, minus]), p[k:k + 1], a[k:k + 1], c)[:, 0]
        assert abs(float(f[0])) < 1e-6 * float(f[1]) and float(f[1]) > 0 > float(f[2])
        assert float(f[1]) == pytest.approx(-float(f[2]), rel=1e-2)  # the plane is halfway


def test_arsinh_and_artanh_by_log1p_keep_torchs_digits():
    from vaelab.distributions.ball import _arsinh, _artanh

    x = torch.cat([torch.logspace(-300, 15, 2000, dtype=F64), torch.linspace(0, 3, 1001, dtype=F64)])
    for v in (x, -x):
        assert torch.allclose(_arsinh(v), torch.asinh(v), rtol=1e-15, atol=0)  # no cancellation for x << 0
    y = torch.cat([torch.logspace(-300, -1e-9, 2000, dtype=F64), 1 - torch.logspace(-15, -1, 100, dtype=F64)])
    assert torch.allclose(_artanh(y), torch.atanh(y), rtol=1e-14, atol=0)
    assert torch.isfinite(_artanh(torch.ones(1, dtype=F64))).all()  # an ONNX graph's clamp lands at 1


# ------------------------------------------------------------------------------ the layers
def test_the_gyroplane_layer_keeps_its_points_in_the_ball_and_computes_in_float64():
    torch.manual_seed(0)
    layer = GyroplaneLayer(3, 16, 0.7)
    with torch.no_grad():
        layer.offset[:4] = 1e4  # p = exp_0(b w) far out: still inside the ball
    p, a = layer.planes()
    assert p.dtype == F64 and (0.7 * p.square().sum(-1) < 1).all()
    # a = PT_{0->p}(w): its Riemannian norm at p is that of w at 0, 2 |w|
    assert torch.allclose(conformal_factor(p, 0.7)[:, 0] * a.norm(dim=-1), 2 * layer.weight.double().norm(dim=-1))
    z = points(8, 3, 0.7, 12).float()
    out = layer(z)
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), gyroplane_distance(z.double(), p, a, 0.7), rtol=1e-6, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the ball's maths is not cast down
        assert torch.equal(layer(z), out)


def test_gradients_are_finite_at_the_boundary_and_on_the_plane():
    torch.manual_seed(1)
    c = 1.0
    gyro, wrapped = GyroplaneLayer(2, 8, c), LogMapLinear(2, 8, 2, c)
    with torch.no_grad():
        gyro.offset[0] = 40.0  # a point at float64's boundary
    z = torch.tensor([[1.0, 0.0], [0.0, -1.0], [5.0, 5.0], [0.6, 0.2]], requires_grad=True)  # on, off the boundary
    for layer in (gyro, wrapped):
        layer.zero_grad()
        out = layer(ball_project(z, c))
        assert torch.isfinite(out).all()
        out.square().sum().backward()
        assert torch.isfinite(z.grad).all() and all(torch.isfinite(q.grad).all() for q in layer.parameters())
        z.grad = None
    p = gyro.planes()[0][1:2].detach().float().requires_grad_()  # z on the plane itself (f = 0)
    gyro(p).sum().backward()
    assert torch.isfinite(p.grad).all()


BASE = ["model.kind=pvae", "model.arch=mlp", "model.hidden=8", "model.latent_dim=2"]


def pvae(*sets: str, base=BASE, shape=(1, 28, 28)):
    cfg = build_config(None, None, [*base, *sets]).model
    cfg.input_shape = shape
    return build_model(cfg)


def test_each_decoder_takes_the_place_of_the_bodys_first_linear_layer():
    torch.manual_seed(3)
    linear = pvae()
    torch.manual_seed(3)
    wrapped = pvae("model.wrapped-normal.decoder=wrapped")
    torch.manual_seed(3)
    gyro = pvae("model.wrapped-normal.decoder=gyroplane", "model.mlp.decoder_hidden=[12,6]")
    assert linear.cfg.opts("wrapped-normal").decoder == "linear"  # the default
    # wrapped: the same layer (weights, names, init) reading log_0(z)
    assert type(wrapped.decoder[0]) is LogMapLinear
    ls, ws = linear.state_dict(), wrapped.state_dict()
    assert list(ls) == list(ws) and all(torch.equal(ls[k], ws[k]) for k in ls)
    z = points(5, 2, 1.0, 13, 1.0).float()
    with torch.no_grad():
        assert torch.allclose(wrapped.decode(z), linear.decode(ball_logmap0(z.double(), 1.0).float()), atol=1e-6)
    # gyroplane: the first hidden width from the code, then the body's activation and layers
    assert isinstance(gyro.decoder[0], GyroplaneLayer) and gyro.decoder[0].weight.shape == (12, 2)
    assert isinstance(gyro.decoder[1], torch.nn.ReLU) and gyro.decoder[2].in_features == 12
    assert {k for k in gyro.state_dict() if k.startswith("decoder.0.")} == {"decoder.0.weight", "decoder.0.offset"}
    # the conv body's dense layer from the code, and a conditional decoder's labels (a linear term)
    conv = pvae("model.kind=pvae", "model.arch=conv", "model.latent_dim=2", "model.conv.channels=[4]",
                "model.wrapped-normal.decoder=gyroplane", "model.condition=onehot", "model.num_classes=3", base=[])
    first = conv.decoder[0]
    assert isinstance(first, GyroplaneLayer) and first.weight.shape == (4 * 14 * 14, 2)
    assert first.labels.weight.shape == (4 * 14 * 14, 3)
    with torch.no_grad():
        img = conv.decode(z, torch.tensor([0, 1, 2, 0, 1]))
    assert img.shape == (5, 1, 28, 28) and torch.isfinite(img).all()


@pytest.mark.parametrize("decoder", ["wrapped", "gyroplane"])
def test_a_pvae_with_each_decoder_trains_its_loss_falling(tiny_config, tmp_path, decoder):
    import csv

    from vaelab.api import train

    cfg = tiny_config("model.kind=pvae", "train.epochs=4", "model.hidden=16", "train.lr=3e-3",
                      "model.wrapped-normal.curvature=0.7", f"model.wrapped-normal.decoder={decoder}")
    train(cfg, tmp_path / "r", evaluate_after=False, log=lambda *_: None)
    with open(tmp_path / "r" / "history.csv") as f:
        losses = [float(r["train_loss"]) for r in csv.DictReader(f)]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 5, losses
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["model"]["wrapped-normal"]
    assert saved == {"curvature": 0.7, "decoder": decoder}


# ------------------------------------------------------------------------------ the option
def test_parts_shows_the_option_and_its_choices(capsys):
    rc, out, err = run_main(capsys, "parts", "posteriors")
    assert rc == 0, err
    line = next(li for li in out.splitlines() if li.split()[:1] == ["decoder"])
    assert line.split()[:3] == ["decoder", "(str)", "="] and "'linear'" in line
    assert all(f"{k}:" in line for k in ("linear", "wrapped", "gyroplane")) and "DecGeo" in line


def test_a_bad_decoder_is_refused_in_one_line(capsys, tmp_path):
    with pytest.raises(ConfigError) as e:
        build_config(None, None, [*BASE, "model.wrapped-normal.decoder=mobius"])
    msg = one_line(e)
    assert "model.wrapped-normal.decoder" in msg and "'mobius'" in msg and "gyroplane" in msg
    line = cli_error(capsys, "train", "--set", "model.kind=pvae", "--set", "model.wrapped-normal.decoder=Geo",
                     "--out", tmp_path / "r")
    assert "model.wrapped-normal.decoder" in line and "linear, wrapped, gyroplane" in line
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


FIXTURE = Path(__file__).parent / "fixtures" / "pvae_run"


def test_a_run_written_before_the_option_loads_as_linear_and_evaluates_to_its_numbers(tmp_path):
    """tests/fixtures/make_pvae_run.py: config.json has no decoder option; eval.json is that code's."""
    from vaelab.api import Run

    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE, run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    assert "decoder" not in cfg["model"]["wrapped-normal"]
    cfg["data"]["path"] = str(FIXTURE.parent / "v1_runs" / "shapes.npz")
    (run_dir / "config.json").write_text(json.dumps(cfg))
    old = json.loads((FIXTURE / "eval.json").read_text())
    run = Run.load(run_dir, device="cpu")
    assert run.config.model.opts("wrapped-normal").decoder == "linear"
    assert type(run.model.decoder[0]) is torch.nn.Linear
    new = run.evaluate(split="val", iw_samples=old["iw_samples"], seed=old["seed"])
    for k in ("loss", "recon", "kl", "mse", "ssim", "psnr", "nll_iw", "active_units"):
        assert new[k] == pytest.approx(old[k], rel=1e-5, abs=1e-7), k


# ------------------------------------------------------------------------------ ONNX
@pytest.mark.parametrize("decoder", ["wrapped", "gyroplane"])
def test_onnx_exports_the_decoder_and_onnxruntime_matches_torch(shapes_npz, tmp_path, decoder):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from vaelab.api import train
    from vaelab.export.onnx import export_onnx

    cfg = build_config(None, None, [
        "data.name=npz", f"data.path={shapes_npz}", "data.val=none", "data.limit=64", *BASE, "model.latent_dim=3",
        "model.wrapped-normal.curvature=0.7", f"model.wrapped-normal.decoder={decoder}", "train.epochs=1",
        "train.batch_size=32", "train.device=cpu", "train.progress=false"])
    run = train(cfg, tmp_path / "r", evaluate_after=False, log=lambda *_: None)
    manifest = export_onnx(run, tmp_path / "onnx", parts=["decoder"])  # the encoder and sampler are the linear's
    assert manifest["parts"]["decoder"]["max_abs_diff"] <= 1e-4  # its own check: normal codes, most off the ball
    session = ort.InferenceSession(str(tmp_path / "onnx" / "decoder.onnx"))
    inside = points(6, 3, 0.7, 14, 1.0)
    edge = ball_project(torch.randn(4, 3, generator=gen(15), dtype=F64) * 5, 0.7)  # at the boundary
    for z in (inside.float(), edge.float()):
        got = session.run(None, {"code": z.numpy()})[0]
        with torch.no_grad():
            ref = run.model.decode(z).numpy()
        assert np.abs(got - ref).max() < 1e-5
