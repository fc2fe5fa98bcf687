"""FCD of uint8 MNIST image arrays (``.npz`` with ``images`` (N, 1, 28, 28)) against the 10,000
test digits, with the MNIST judge bench/pythae_compare.py scores both sides with.

    python bench/peers/score_npz.py bench/out/gmm_cross/beta-vae-s1/*.npz
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from vaelab.config import DataConfig
from vaelab.data import load_data
from vaelab.evaluation.judge import get_judge

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("arrays", nargs="+")
args = ap.parse_args()
judge = get_judge(DataConfig(name="mnist"))
test = load_data(DataConfig(name="mnist")).test.float()
for path in args.arrays:
    with np.load(path) as f:
        imgs = torch.from_numpy(f["images"]).float() / 255
    print(f"{path}: FCD {judge.fcd(imgs, test):.1f} ({len(imgs)} images)", flush=True)
