"""PixelCNN sampling: every pass over the whole code grid (the sampler before 2026-12-07) against
passes over the rows drawn so far (vaelab.latent.pixelcnn.GatedPixelCNN.sample now), on the zoo's
prior (64 codes, 7 x 7, 64 channels, 8 layers, kernel 5, untrained: the cost does not depend on the
weights), 1,000 grids, 2 threads, fp32. Prints both times, their ratio, and whether the draws agree.

    python bench/pixelcnn_sampling.py
"""
import os
import time

import torch

torch.set_num_threads(2)
from vaelab.latent.pixelcnn import GatedPixelCNN, PixelCNNConfig

cfg = PixelCNNConfig(codes=64, height=7, width=7, channels=64, layers=8, kernel=5, num_classes=None)
torch.manual_seed(0)
net = GatedPixelCNN(cfg).eval()
def whole(n, g):
    out = torch.zeros(n, 7, 7, dtype=torch.long)
    for i in range(7):
        for j in range(7):
            p = torch.softmax(net(out)[:, :, i, j].float(), 1)
            out[:, i, j] = torch.multinomial(p, 1, generator=g)[:, 0]
    return out
print("load at start", os.getloadavg())
with torch.no_grad():
    net.sample(64, generator=torch.Generator().manual_seed(0))  # warm-up
    for rep in range(2):
        t = time.perf_counter(); a = whole(1000, torch.Generator().manual_seed(1)); tw = time.perf_counter() - t
        t = time.perf_counter(); b = net.sample(1000, generator=torch.Generator().manual_seed(1)); tr = time.perf_counter() - t
        print(f"rep {rep}: whole grid {tw:.2f}s, rows so far {tr:.2f}s, ratio {tw/tr:.2f}, same draws {torch.equal(a, b)}")
print("load at end", os.getloadavg())
