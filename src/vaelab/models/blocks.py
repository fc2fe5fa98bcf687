"""Building blocks: MLP and convolutional encoder/decoder bodies from a ModelConfig.

The encoder body maps images (B, C, H, W) to features (B, F); the heads that map
features to the latent live in the model classes. The decoder maps a latent
(B, latent_dim) to output *logits* (B, C, H, W), before the output activation.
The optional label predictor maps a latent to class logits (B, num_classes).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vaelab.config import ModelConfig
from vaelab.errors import ConfigError

_ACT = {
    "relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "elu": nn.ELU, "gelu": nn.GELU,
    "silu": nn.SiLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "none": nn.Identity,
}


def activation(name: str | None) -> nn.Module:
    return _ACT[name or "none"]()


def mlp(widths: list[int], act: str, last_act: bool = True) -> list[nn.Module]:
    """Linear layers through ``widths`` with ``act`` between them (and after the last if asked)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if last_act or i < len(widths) - 2:
            layers.append(activation(act))
    return layers


class ChannelsLastUnflatten(nn.Unflatten):
    """Unflatten to a channels-last (NHWC) feature map, for the transposed convolutions.

    oneDNN's transposed convolutions are much faster on channels-last input: measured on
    this 2-core CPU with bf16 autocast, the conv-vae's final ConvTranspose 32->1 took 70 ms
    forward+backward per batch of 128 from NCHW against 14 ms from NHWC. Same parameters
    and state-dict keys as nn.Unflatten; only the memory layout differs, never the values."""

    def forward(self, x):
        return super().forward(x).contiguous(memory_format=torch.channels_last)


def conv_padding(k: int) -> int:
    # 'same'-style padding: k=3 -> 1 (28 -> 14 at stride 2), k=4 -> 1 (64 -> 32), k=5 -> 2.
    return (k - 1) // 2


def conv_sizes(cfg: ModelConfig) -> list[tuple[int, int]]:
    """Spatial size (H, W) before the first conv and after each conv layer."""
    _, h, w = cfg.input_shape
    sizes = [(h, w)]
    for k, s in zip(cfg.per_layer("kernel_size"), cfg.per_layer("strides")):
        p = conv_padding(k)
        h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if h < 1 or w < 1:
            raise ConfigError(f"model.channels has too many stride-{s} conv layers for {cfg.input_shape[1:]} images")
        sizes.append((h, w))
    return sizes


def build_encoder(cfg: ModelConfig) -> tuple[nn.Sequential, int]:
    """Encoder body and the width of its output features."""
    c, h, w = cfg.input_shape
    if cfg.arch == "mlp":
        widths = [c * h * w] + [int(x) for x in cfg.hidden]
        return nn.Sequential(nn.Flatten(), *mlp(widths, cfg.activation)), widths[-1]
    layers: list[nn.Module] = []
    sizes = conv_sizes(cfg)
    for cin, cout, k, s in zip([c] + cfg.channels[:-1], cfg.channels, cfg.per_layer("kernel_size"),
                               cfg.per_layer("strides")):
        layers += [nn.Conv2d(cin, cout, k, s, conv_padding(k)), activation(cfg.activation)]
    if cfg.latent == "conv":
        layers.pop()  # the last conv map is the code: no activation on it (latent_activation applies)
        layers.append(nn.Flatten())
        return nn.Sequential(*layers), cfg.channels[-1] * math.prod(sizes[-1])
    flat = cfg.channels[-1] * math.prod(sizes[-1])
    layers.append(nn.Flatten())
    layers += mlp([flat] + [int(x) for x in cfg.dense], cfg.activation)
    return nn.Sequential(*layers), ([flat] + [int(x) for x in cfg.dense])[-1]


def build_decoder(cfg: ModelConfig) -> nn.Sequential:
    """Decoder from the latent (B, latent_dim) to output logits (B, C, H, W)."""
    c, h, w = cfg.input_shape
    act = cfg.decoder_activation or cfg.activation
    if cfg.arch == "mlp":
        hidden = cfg.decoder_hidden if cfg.decoder_hidden is not None else list(reversed(cfg.hidden))
        widths = [cfg.latent_dim] + [int(x) for x in hidden] + [c * h * w]
        return nn.Sequential(*mlp(widths, act, last_act=False), nn.Unflatten(1, (c, h, w)))
    sizes = conv_sizes(cfg)
    kernels, strides = cfg.per_layer("kernel_size"), cfg.per_layer("strides")
    last_c, (lh, lw) = cfg.channels[-1], sizes[-1]
    layers: list[nn.Module] = []
    if cfg.latent == "dense":
        # As in the Keras tutorial: one dense layer from the code straight to the last feature map.
        layers += [nn.Linear(cfg.latent_dim, last_c * lh * lw), activation(act)]
    layers.append(ChannelsLastUnflatten(1, (last_c, lh, lw)))
    # Mirror the encoder. With a final stride-1 layer (Keras), the transposed convs keep the
    # encoder's channels and the final layer maps to C; without it, the last one maps to C.
    outs = list(reversed(cfg.channels))
    outs = outs if cfg.final_kernel else outs[1:] + [c]
    cin = last_c
    n = len(cfg.channels)
    for i in range(n):
        j = n - 1 - i  # encoder layer this one mirrors
        k, s, p = kernels[j], strides[j], conv_padding(kernels[j])
        (ih, iw), (th, tw) = sizes[j + 1], sizes[j]
        # output_padding makes each transposed conv land exactly on the encoder's input size.
        oph, opw = th - ((ih - 1) * s - 2 * p + k), tw - ((iw - 1) * s - 2 * p + k)
        if not (0 <= oph < max(s, 1) and 0 <= opw < max(s, 1)):
            raise ConfigError(f"cannot mirror conv layer {j} (kernel {k}, stride {s}) for size {th}x{tw}")
        layers.append(nn.ConvTranspose2d(cin, outs[i], k, s, p, output_padding=(oph, opw)))
        if cfg.final_kernel or i < n - 1:
            layers.append(activation(act))
        cin = outs[i]
    if cfg.final_kernel:
        k = int(cfg.final_kernel)
        layers.append(nn.ConvTranspose2d(cin, c, k, 1, conv_padding(k)))
    return nn.Sequential(*layers)


def build_predictor(cfg: ModelConfig) -> nn.Sequential:
    """Label predictor: latent (B, latent_dim) -> hidden widths -> class logits (B, num_classes)."""
    if cfg.num_classes is None:
        raise ConfigError("model.num_classes is unset; it is filled in from the data labels when training")
    widths = [cfg.latent_dim] + [int(h) for h in cfg.predictor_hidden] + [cfg.num_classes]
    return nn.Sequential(*mlp(widths, cfg.activation, last_act=False))
