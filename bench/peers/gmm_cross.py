"""Pythae's trained model sampled through vaelab's mixture recipe: is a gap in FCD the sampler's or the model's?

Run in Pythae's venv (bench/peers/README.md) on a family bench/pythae_compare.py trained there.
It loads Pythae's saved model (``final_model``, written by our own pythae_zoo.py run, so its
pickles are ours) and draws 10,000 samples from a 10-component full-covariance Gaussian mixture
fit on the training set's codes two ways:

- ``pythae``: Pythae's ``GaussianMixtureSampler`` as the side-by-side table uses it (fit on
  ``model(x).z``, posterior draws, sklearn with ``reg_covar`` 1e-6, ``max_iter`` 2000, an
  unseeded k-means start), drawn ``--repeats`` times to show its own spread;
- ``vaelab``: vaelab's ``GMMSampler`` recipe (vaelab/latent/sampling.py): fit on the posterior
  means (the encoder's ``embedding``), ``reg_covar`` 1e-5, ``random_state`` = seed, sampled with
  a NumPy generator of that seed.

Both decode with Pythae's decoder and are written as uint8 ``.npz`` for the same judge:

    /work/peers/pythae-venv/bin/python bench/peers/gmm_cross.py bench/out/pythae_compare-all/pythae/beta-vae \\
        --data-dir ../shared/data --out bench/out/gmm_cross/beta-vae-s1
    python bench/peers/score_npz.py bench/out/gmm_cross/beta-vae-s1/*.npz       # vaelab's venv: FCD of each
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pythae_zoo import load_mnist  # noqa: E402  (first: it sizes the thread pools before numpy loads)

# isort: split
from arrays import mixture_codes, to_uint8


def codes(model, x: np.ndarray, batch: int = 500) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.encoder(torch.from_numpy(x[i:i + batch])).embedding for i in range(0, len(x), batch)])


def decode(model, z: torch.Tensor, batch: int = 500) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([to_uint8(model.decoder(z[i:i + batch])["reconstruction"])
                               for i in range(0, len(z), batch)])


def main() -> None:
    from pythae.models import AutoModel
    from pythae.samplers import GaussianMixtureSampler, GaussianMixtureSamplerConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("family_dir", type=Path, help="pythae_zoo.py's folder of one family (holds pythae/*/final_model)")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2, help="draws of Pythae's unseeded sampler")
    args = ap.parse_args()
    torch.set_num_threads(1)
    found = sorted(glob.glob(str(args.family_dir / "pythae" / "*" / "final_model")))
    if not found:
        sys.exit(f"gmm_cross.py: no pythae/*/final_model in {args.family_dir}")
    model = AutoModel.load_from_folder(found[-1]).eval()
    train_x, _, _ = load_mnist(args.data_dir)
    args.out.mkdir(parents=True, exist_ok=True)

    np.random.seed(args.seed)  # sklearn's unseeded start in Pythae's sampler reads NumPy's global generator
    torch.manual_seed(args.seed)
    for r in range(args.repeats):
        sampler = GaussianMixtureSampler(model, GaussianMixtureSamplerConfig(n_components=10))
        sampler.fit(train_data=train_x)
        imgs = to_uint8(sampler.sample(num_samples=args.n, return_gen=True))
        np.savez_compressed(args.out / f"pythae_r{r}.npz", images=imgs)
        print(f"pythae sampler, draw {r}: {len(imgs)} images", flush=True)

    mu = codes(model, train_x).double().numpy()
    z, gm = mixture_codes(mu, args.n, args.seed)
    np.savez_compressed(args.out / "vaelab.npz", images=decode(model, z))
    print(f"vaelab recipe: {args.n} images (EM converged in {gm.n_iter_} iterations)", flush=True)


if __name__ == "__main__":
    main()
