"""vaelab's wrapped normal (pvae) against Pythae's PoincareVAE distributions, draw for draw.

The same mu (inside the ball), sigma and standard-normal noise go through Pythae's
``WrappedNormal`` reparameterisation (its own steps: v = sigma eps / lambda_0, transport from
0 to mu, exp_mu) and vaelab's ``WrappedNormal.from_noise``; the draws are compared, then the
posterior's and the prior's (WN(0, 1), Pythae's ``_pz_mu``, ``exp(_pz_logvar)``) log-densities,
Pythae's in float64 (the formulas) and in float32 (what it trains with). Run with vaelab's venv,
Pythae's site-packages appended (bench/peers/README.md):

    python bench/peers/pvae_pythae.py --pythae-site /work/peers/pythae-venv/lib/python3.11/site-packages

Prints the largest differences per curvature; exits 1 if the draws or the float64 densities
differ by more than the tolerances (bench/peers/PYTHAE.md, "PoincareVAE details").
"""

from __future__ import annotations

import argparse
import sys

import torch

from vaelab.distributions import WrappedNormal

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--pythae-site", help="a site-packages folder holding pythae (appended to sys.path)")
ARGS = ap.parse_args()
if ARGS.pythae_site:
    sys.path.append(ARGS.pythae_site)
from pythae.models.pvae.pvae_utils import PoincareBall
from pythae.models.pvae.pvae_utils import WrappedNormal as PythaeWrappedNormal

B, D = 256, 16
TOL_Z, TOL_LOG = 1e-6, 1e-4  # the draws (float32 coordinates), the log-densities relative to their size


def pythae_logs(man, mu, sigma, z, dtype):
    """Pythae's log q(z) (WN(mu, sigma)) and log p(z) (WN(0, 1)), computed in ``dtype``."""
    qp = PythaeWrappedNormal(loc=mu.to(dtype), scale=sigma.to(dtype), manifold=man)
    pp = PythaeWrappedNormal(loc=torch.zeros(1, D, dtype=dtype), scale=torch.ones(1, 1, dtype=dtype), manifold=man)
    zz = z.to(dtype).unsqueeze(0)
    return qp.log_prob(zz).squeeze().double(), pp.log_prob(zz).squeeze().double()


def main() -> None:
    worst = []
    for c in (1.0, 0.7):
        g = torch.Generator().manual_seed(0)
        man = PoincareBall(dim=D, c=c)
        radius = 1 / c ** 0.5
        # means from the origin to |mu| = 0.97 / sqrt(c), scales as a trained head gives them
        u = torch.randn(B, D, generator=g)
        mu = u / u.norm(dim=-1, keepdim=True) * torch.rand(B, 1, generator=g) * 0.97 * radius
        sigma = torch.nn.functional.softplus(torch.randn(B, D, generator=g)) + 1e-5
        eps = torch.randn(B, D, generator=g)
        zero = torch.zeros(1, D)
        z_p = man.expmap(mu, man.transp(zero, mu, sigma * eps / man.lambda_x(zero, keepdim=True)))
        q = WrappedNormal(mu, sigma, c)
        z_v = q.from_noise(eps)
        dz = float((z_p - z_v).abs().max())
        prior_v = WrappedNormal(torch.zeros(B, D), torch.ones(B, D), c)
        lq_v, lp_v = q.log_prob(z_v).double(), prior_v.log_prob(z_v).double()

        lq64, lp64 = pythae_logs(man, mu, sigma, z_v, torch.float64)
        lq32, lp32 = pythae_logs(man, mu, sigma, z_v, torch.float32)
        rel = lambda a, b: float((a - b).abs().max() / b.abs().max())
        r64 = max(rel(lq64, lq_v), rel(lp64, lp_v))
        print(f"c = {c}: draws max |diff| {dz:.1e}; log q, log p in float64: max relative diff "
              f"{rel(lq64, lq_v):.1e}, {rel(lp64, lp_v):.1e}; in float32 (as Pythae trains): max |diff| "
              f"{float((lq32 - lq_v).abs().max()):.2e}, {float((lp32 - lp_v).abs().max()):.2e} nats "
              f"(|log q| ~ {float(lq_v.abs().mean()):.1f}, |log p| ~ {float(lp_v.abs().mean()):.1f})")
        worst.append((dz, r64))
    if max(w[0] for w in worst) > TOL_Z or max(w[1] for w in worst) > TOL_LOG:
        sys.exit(f"vaelab's wrapped normal differs from Pythae's beyond {TOL_Z} (draws) or {TOL_LOG} (densities)")
    print("draws and densities agree with Pythae's")


if __name__ == "__main__":
    main()
