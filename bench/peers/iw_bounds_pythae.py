"""vaelab's MIWAE, PIWAE and CIWAE against Pythae's, gradient for gradient (issue 20).

One small vaelab model (mlp 36-16-3, Bernoulli) is handed to Pythae as its encoder and
decoder, both sides draw the same noise, and the gradients of each loss with respect to the
encoder's and the decoder's weights are compared (Pythae's losses are self-normalised
surrogates with the bounds' gradients but not their values, bench/peers/PYTHAE.md; vaelab's
are the bounds themselves, so only the gradients can agree). PIWAE: Pythae's ``encoder_loss``
against vaelab's ``loss_encoder`` on the encoder, ``decoder_loss`` against ``loss`` on the
decoder; and what Pythae's CoupledOptimizerTrainer (which its pipeline requires for PIWAE)
steps the encoder on: the sum of both losses' gradients, not ``encoder_loss``'s alone. Run with
vaelab's venv, Pythae imported from its own venv's site-packages (appended, so vaelab's torch and
the rest come first):

    python bench/peers/iw_bounds_pythae.py --pythae-site /work/peers/pythae-venv/lib/python3.11/site-packages

Prints the largest relative difference per objective and network; exits 1 above 1e-4 (or when
Pythae's trainer steps PIWAE's encoder otherwise than found).
"""

from __future__ import annotations

import argparse
import sys
from types import SimpleNamespace

import torch

from vaelab.config import ModelConfig
from vaelab.distributions import DiagNormal
from vaelab.models import build_model
from vaelab.models.iw_bounds import encoder_parameters

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--pythae-site", help="a site-packages folder holding pythae (appended to sys.path)")
ARGS = ap.parse_args()
if ARGS.pythae_site:
    sys.path.append(ARGS.pythae_site)
from pythae.models import CIWAE, MIWAE, PIWAE, CIWAEConfig, MIWAEConfig, PIWAEConfig
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn import BaseDecoder, BaseEncoder
from pythae.trainers import CoupledOptimizerTrainer

M, K, B, D, SHAPE = 3, 4, 5, 3, (1, 6, 6)
TOL = 1e-4


class Encoder(BaseEncoder):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        q = self.model.posterior(x)
        return ModelOutput(embedding=q.loc, log_covariance=q.logvar)


class Decoder(BaseDecoder):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, z):
        return ModelOutput(reconstruction=torch.sigmoid(self.model.decode_logits(z)).flatten(1))


def grads(loss, params):
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, retain_graph=True)])


def rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def compare(kind: str, pythae_cls, pythae_cfg, eps_shape, to_vaelab, pairs, opts, trainer=False) -> list[float]:
    """``pairs``: (vaelab part, Pythae output key, network) to compare; ``opts``: vaelab's options.
    ``trainer``: also run Pythae's CoupledOptimizerTrainer step (its two optimisers over these
    networks' parameters) and return the encoder's gradient against ``encoder_loss``'s alone and
    against that of ``encoder_loss + decoder_loss``."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind=kind, arch="mlp", input_shape=list(SHAPE), latent_dim=D,
                                    output_activation="sigmoid", options={kind: opts, "mlp": {"hidden": [16]}}))
    x = (torch.rand(B, *SHAPE, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    eps = torch.randn(*eps_shape, generator=torch.Generator().manual_seed(2))
    p = pythae_cls(model_config=pythae_cfg, encoder=Encoder(model), decoder=Decoder(model))
    p._sample_gauss = lambda mu, std: (mu + eps * std, eps)
    out_p = p({"data": x})
    real = DiagNormal.rsample
    DiagNormal.rsample = lambda self, shape=(), generator=None: self.loc + to_vaelab(eps) * self.std
    try:
        out_v = model(x)
    finally:
        DiagNormal.rsample = real
    enc = encoder_parameters(model)
    dec = [q for q in model.parameters() if id(q) not in {id(e) for e in enc}]
    found = []
    for part, key, net in pairs:
        params = enc if net == "encoder" else dec
        r = rel(grads(out_v[part].mean(), params), grads(out_p[key], params))
        print(f"{kind:6s} {part:13s} vs Pythae {key:13s} on the {net:8s}: max relative difference {r:.2e}")
        found.append(r)
    if trainer:  # its step: zero the encoder's grads, backward encoder_loss, zero the decoder's, backward
        # decoder_loss (through the encoder too), step both
        g_enc, g_dec = grads(out_p["encoder_loss"], enc), grads(out_p["decoder_loss"], enc)
        stub = SimpleNamespace(encoder_optimizer=torch.optim.SGD(enc, lr=0.0),
                               decoder_optimizer=torch.optim.SGD(dec, lr=0.0))
        CoupledOptimizerTrainer._optimizers_step(stub, out_p)
        stepped = torch.cat([q.grad.flatten() for q in enc])
        alone, both = rel(stepped, g_enc), rel(stepped, g_enc + g_dec)
        print(f"{kind:6s} Pythae's CoupledOptimizerTrainer steps the encoder on: encoder_loss alone "
              f"(max relative difference {alone:.2e}), encoder_loss + decoder_loss ({both:.2e})")
        return found, alone, both
    return found


def main() -> None:
    common = {"input_dim": SHAPE, "latent_dim": D, "reconstruction_loss": "bce"}
    miwae_cfg = MIWAEConfig(**common, number_gradient_estimates=M, number_samples=K)
    piwae_cfg = PIWAEConfig(**common, number_gradient_estimates=M, number_samples=K)
    # vaelab's group m holds draws m K .. m K + K - 1 (M groups of K): Pythae's draw [b, m, k].
    as_written = lambda e: e.permute(1, 2, 0, 3).reshape(M * K, B, D)
    # Pythae normalises its weights over axis 1 of (B, M, K), its M axis: K groups of M draws.
    swapped = lambda e: e.permute(2, 1, 0, 3).reshape(K * M, B, D)
    print(f"Pythae's MIWAE(M={M}, K={K}) against vaelab's MIWAE(m={M}, k={K}), as the paper defines it:")
    differs = compare("miwae", MIWAE, miwae_cfg, (B, M, K, D), as_written,
                      [("loss", "loss", "encoder"), ("loss", "loss", "decoder")], {"m": M, "k": K})
    print(f"... and against vaelab's MIWAE(m={K}, k={M}), M and K swapped:")
    diffs = compare("miwae", MIWAE, miwae_cfg, (B, M, K, D), swapped,
                    [("loss", "loss", "encoder"), ("loss", "loss", "decoder")], {"m": K, "k": M})
    found, alone, both = compare("piwae", PIWAE, piwae_cfg, (B, M, K, D), swapped,
                                 [("loss_encoder", "encoder_loss", "encoder"), ("loss", "decoder_loss", "decoder")],
                                 {"m": K, "k": M}, trainer=True)
    diffs += found
    diffs += compare("ciwae", CIWAE, CIWAEConfig(**common, number_samples=K, beta=0.3),
                     (B, K, D), lambda e: e.permute(1, 0, 2),
                     [("loss", "loss", "encoder"), ("loss", "loss", "decoder")], {"k": K, "beta": 0.3})
    if max(differs) <= TOL:
        sys.exit("Pythae's MIWAE(M, K) now agrees with vaelab's MIWAE(M, K): update this script and PYTHAE.md")
    if both > TOL or alone <= TOL:
        sys.exit("Pythae's trainer no longer steps PIWAE's encoder on both losses: update this script and PYTHAE.md")
    if max(diffs) > TOL:
        sys.exit(f"gradients differ from Pythae's by up to {max(diffs):.2e} (tolerance {TOL})")
    print(f"all gradients agree with Pythae's within {TOL}")


if __name__ == "__main__":
    main()
