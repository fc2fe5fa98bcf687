"""Reference: the PyTorch examples VAE (github.com/pytorch/examples, vae/main.py), as users run it.

This is the tutorial's code with two changes forced by this machine, and nothing else:

* torchvision is not installed (there is no CPU build here), so ``datasets.MNIST`` and
  ``transforms.ToTensor`` are re-created below with the same per-item behaviour:
  the images are read from the IDX files with vaelab's reader
  (``vaelab.data.idx.read_idx_pair``; that replaces only the file reading), kept as a
  uint8 tensor like ``datasets.MNIST.data``, and ``__getitem__`` turns one image into
  ``PIL.Image.fromarray(img.numpy(), mode="L")`` and then into a float tensor
  (1, 28, 28) divided by 255, as ``transforms.ToTensor()`` does.
* the tutorial's ``save_image`` calls (reconstruction comparison and prior samples,
  written to results/*.png each epoch) come from torchvision and are left out. The
  tensors they would save are still computed, so the work and the random-number
  stream are as in the tutorial; only the PNG writing is missing.

Everything else is the tutorial: the model (fc1 784-400, fc21/fc22 400-20, fc3 20-400,
fc4 400-784, ReLU, sigmoid), ``loss_function`` = BCE(reduction='sum') + KLD, Adam 1e-3,
``torch.manual_seed(1)``, batch 128, ``DataLoader(shuffle=True)`` for train and test
with the CPU kwargs ``{}`` (num_workers=0), 10 epochs, a test pass after every epoch,
and the tutorial's prints (``Train Epoch: ...`` every 10 batches, ``====> Epoch: ...``
and ``====> Test set loss: ...``).

Extra options for benchmarking only: --limit N (train on the first N training images,
for quick checks) and --json PATH (append one JSON line with wall time, per-epoch times
and the final test loss). The data root is $VAELAB_DATA (default ../shared/data from
the repository root) and must hold mnist/*-ubyte.gz.
"""

from __future__ import print_function

import argparse
import json
import os
import sys
import time
from pathlib import Path

_T_START = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.utils.data  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn, optim  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from vaelab.data.idx import read_idx_pair  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
IDX_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def data_root() -> Path:
    root = Path(os.environ.get("VAELAB_DATA") or REPO.parent / "shared" / "data")
    missing = [f"{stem}.gz" for pair in IDX_FILES.values() for stem in pair
               if not (root / "mnist" / f"{stem}.gz").is_file()]
    if missing:
        sys.exit(f"reference_pytorch_vae.py: MNIST not found: {root / 'mnist'} lacks {', '.join(missing)}; "
                 "set VAELAB_DATA to the folder that holds mnist/")
    return root


# ------------------------------------------------------------------ torchvision stand-ins
def to_tensor(pic: Image.Image) -> torch.Tensor:
    """``transforms.ToTensor()`` for an 8-bit greyscale PIL image: (1, H, W) float in [0, 1]."""
    img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
    img = img.view(pic.size[1], pic.size[0], 1)
    img = img.permute((2, 0, 1)).contiguous()
    return img.to(dtype=torch.get_default_dtype()).div(255)


class MNIST(torch.utils.data.Dataset):
    """``torchvision.datasets.MNIST`` as far as the tutorial uses it."""

    def __init__(self, root, train=True, transform=None, limit=None):
        images, labels = IDX_FILES[train]
        x, y = read_idx_pair(Path(root) / "mnist" / f"{images}.gz", Path(root) / "mnist" / f"{labels}.gz")
        if limit is not None:
            x, y = x[:limit], y[:limit]
        self.data = torch.from_numpy(x)  # (N, 28, 28) uint8, as datasets.MNIST keeps it
        self.targets = torch.from_numpy(y)
        self.transform = transform

    def __getitem__(self, index):
        img, target = self.data[index], int(self.targets[index])
        img = Image.fromarray(img.numpy(), mode="L")
        if self.transform is not None:
            img = self.transform(img)
        return img, target

    def __len__(self):
        return len(self.data)


# ------------------------------------------------------------------ the tutorial
parser = argparse.ArgumentParser(description='VAE MNIST Example')
parser.add_argument('--batch-size', type=int, default=128, metavar='N',
                    help='input batch size for training (default: 128)')
parser.add_argument('--epochs', type=int, default=10, metavar='N',
                    help='number of epochs to train (default: 10)')
parser.add_argument('--no-cuda', action='store_true', default=False,
                    help='disables CUDA training')
parser.add_argument('--seed', type=int, default=1, metavar='S',
                    help='random seed (default: 1)')
parser.add_argument('--log-interval', type=int, default=10, metavar='N',
                    help='how many batches to wait before logging training status')
# benchmark-only options
parser.add_argument('--limit', type=int, default=None, metavar='N',
                    help='train on the first N training images only (quick checks)')
parser.add_argument('--json', default=None, metavar='PATH',
                    help='append one JSON line with wall time, per-epoch times and the final test loss')
args = parser.parse_args()
args.cuda = not args.no_cuda and torch.cuda.is_available()

torch.manual_seed(args.seed)

device = torch.device("cuda" if args.cuda else "cpu")

root = data_root()
kwargs = {'num_workers': 1, 'pin_memory': True} if args.cuda else {}
train_loader = torch.utils.data.DataLoader(
    MNIST(root, train=True, transform=to_tensor, limit=args.limit),
    batch_size=args.batch_size, shuffle=True, **kwargs)
test_loader = torch.utils.data.DataLoader(
    MNIST(root, train=False, transform=to_tensor),
    batch_size=args.batch_size, shuffle=True, **kwargs)


class VAE(nn.Module):
    def __init__(self):
        super(VAE, self).__init__()

        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


model = VAE().to(device)
optimizer = optim.Adam(model.parameters(), lr=1e-3)


# Reconstruction + KL divergence losses summed over all elements and batch
def loss_function(recon_x, x, mu, logvar):
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction='sum')

    # see Appendix B from VAE paper:
    # Kingma and Welling. Auto-Encoding Variational Bayes. ICLR, 2014
    # https://arxiv.org/abs/1312.6114
    # 0.5 * sum(1 + log(sigma^2) - mu^2 - sigma^2)
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())

    return BCE + KLD


def train(epoch):
    model.train()
    train_loss = 0
    for batch_idx, (data, _) in enumerate(train_loader):
        data = data.to(device)
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data)
        loss = loss_function(recon_batch, data, mu, logvar)
        loss.backward()
        train_loss += loss.item()
        optimizer.step()
        if batch_idx % args.log_interval == 0:
            print('Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}'.format(
                epoch, batch_idx * len(data), len(train_loader.dataset),
                100. * batch_idx / len(train_loader),
                loss.item() / len(data)))

    print('====> Epoch: {} Average loss: {:.4f}'.format(
          epoch, train_loss / len(train_loader.dataset)))
    return train_loss / len(train_loader.dataset)


def test(epoch):
    model.eval()
    test_loss = 0
    with torch.no_grad():
        for i, (data, _) in enumerate(test_loader):
            data = data.to(device)
            recon_batch, mu, logvar = model(data)
            test_loss += loss_function(recon_batch, data, mu, logvar).item()
            if i == 0:
                n = min(data.size(0), 8)
                comparison = torch.cat([data[:n],
                                        recon_batch.view(args.batch_size, 1, 28, 28)[:n]])
                # The tutorial writes it: save_image(comparison.cpu(),
                #     'results/reconstruction_' + str(epoch) + '.png', nrow=n)
                # save_image is torchvision's, which is absent here; left out.
                del comparison

    test_loss /= len(test_loader.dataset)
    print('====> Test set loss: {:.4f}'.format(test_loss))
    return test_loss


if __name__ == "__main__":
    epoch_seconds, train_losses, test_losses = [], [], []
    t_loop = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        train_losses.append(train(epoch))
        test_losses.append(test(epoch))
        with torch.no_grad():
            sample = torch.randn(64, 20).to(device)
            sample = model.decode(sample).cpu()
            # The tutorial writes it: save_image(sample.view(64, 1, 28, 28),
            #     'results/sample_' + str(epoch) + '.png')
            # save_image is torchvision's, which is absent here; left out.
        epoch_seconds.append(time.perf_counter() - t0)
    wall = time.perf_counter() - _T_START
    final = test_losses[-1] if test_losses else float("nan")
    print('final test loss: {:.4f}  ({} epochs, {:.1f}s in the epoch loop, {:.1f}s since start)'.format(
        final, args.epochs, time.perf_counter() - t_loop, wall))
    if args.json:
        record = {
            "script": "reference_pytorch_vae.py", "epochs": args.epochs, "limit": args.limit,
            "train_images": len(train_loader.dataset), "test_images": len(test_loader.dataset),
            "wall_seconds_in_process": round(wall, 3), "epoch_seconds": [round(s, 3) for s in epoch_seconds],
            "train_loss": train_losses, "test_loss": test_losses, "final_test_loss": final,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "a") as f:
            f.write(json.dumps(record) + "\n")
