"""Bodies: MLP and convolutional encoder/decoder networks from a ModelConfig.

The encoder body maps images (B, C, H, W) to features (B, F); the posterior heads
that map features to a distribution over codes live in ``posteriors.py``. The
decoder maps a code (B, latent_dim) to output *logits* (B, C, H, W), before the
output activation. The optional label predictor maps a code to class logits.

A conditional model feeds its label vector (B, E) in beside the data: ``BODIES[arch]
.join(x, e)`` puts it where that body takes it (appended to the flattened image for
an MLP, as E constant channels for a conv net), and the decoder reads [z, e].
``extra_in`` is that E.

Each body owns its options (``MlpOptions``, ``ConvOptions``: the sections ``model.mlp`` and
``model.conv``, read as ``cfg.opts(cfg.arch)``); their old flat names (``model.hidden``,
``model.channels``, ...) are aliases. What every body reads (``model.latent_dim``,
``activation``, ``decoder_activation``, ``leaky_slope``, ``init``, ``output_activation``) stays a
model field, as does what the label predictor and the posteriors read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.errors import ConfigError

if TYPE_CHECKING:
    from vaelab.config import ModelConfig

# In place where torch allows it: every activation here follows a Linear or conv layer whose
# output nothing else keeps, and a new tensor per layer costs page faults at large batches
# (out-of-place ReLU over the conv-vae decoder's 28x28x32 maps at batch 1000: 129 ms, in
# place 16 ms, one thread here). Values and gradients are the same either way. Each factory
# takes the leaky ReLU's negative slope (model.leaky_slope); the others ignore it.
_ACT = {
    "relu": lambda s: nn.ReLU(inplace=True), "leaky_relu": lambda s: nn.LeakyReLU(s, inplace=True),
    "elu": lambda s: nn.ELU(inplace=True), "gelu": lambda s: nn.GELU(), "silu": lambda s: nn.SiLU(inplace=True),
    "tanh": lambda s: nn.Tanh(), "sigmoid": lambda s: nn.Sigmoid(), "none": lambda s: nn.Identity(),
}
LEAKY_SLOPE = 0.2  # vaelab's leaky_relu slope before model.leaky_slope existed (PyTorch's default is 0.01)


def activation(name: str | None, leaky_slope: float = LEAKY_SLOPE) -> nn.Module:
    return _ACT[name or "none"](leaky_slope)


# Registry: model.conv.norm -> the normalisation layer after each conv (channels -> module), or None.
# Batch norm keeps running mean and variance as buffers: used in eval mode, saved with the weights.
NORMS: dict[str, Callable[[int], nn.Module] | None] = {"none": None, "batch": nn.BatchNorm2d}


def post_conv(cfg: ModelConfig, channels: int, act: str | None) -> list[nn.Module]:
    """What follows a hidden conv layer: the normalisation (if any), then the activation."""
    norm = NORMS[cfg.opts("conv").norm]
    return ([norm(channels)] if norm is not None else []) + [activation(act, cfg.leaky_slope)]


def mlp(widths: list[int], act: str, last_act: bool = True, leaky_slope: float = LEAKY_SLOPE) -> list[nn.Module]:
    """Linear layers through ``widths`` with ``act`` between them (and after the last if asked)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if last_act or i < len(widths) - 2:
            layers.append(activation(act, leaky_slope))
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
    # 'symmetric' padding: k=3 -> 1 (28 -> 14 at stride 2), k=4 -> 1 (64 -> 32), k=5 -> 2.
    return (k - 1) // 2


def same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow/Keras 'same' padding (before, after) of a conv over ``n`` pixels.

    The output has ceil(n / s) pixels; when the total padding is odd the extra pixel goes
    after, so a stride-2 kernel-3 conv over 28 pixels pads (0, 1) where PyTorch's
    symmetric padding=1 pads (1, 1): Keras's windows start at pixel 0, PyTorch's at -1.
    """
    total = max((-(-n // s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _flip(x: torch.Tensor, on: bool) -> torch.Tensor:
    return x.flip(-2, -1) if on else x


def _add_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # The bias is added after the convolution, not inside it: oneDNN's convolution backward
    # computes the bias gradient of a bf16 channels-last map very slowly (17 ms for the
    # conv-vae's 64->32 transposed conv at batch 128, against 0.1 ms for autograd's sum
    # here); this made the whole conv-vae step 1.28x faster (68 against 87 ms, one thread).
    # In place: the convolution's output is ours alone (its backward keeps only its input and
    # weight), and a fresh tensor of that size costs page faults (119 against 13 ms for the
    # 64->32 map at batch 1000).
    return y if bias is None else y.add_(bias.to(y.dtype).view(1, -1, 1, 1))


class _FlippedBiasAfter:
    """What vaelab's two conv layers share: the kernel flipped for 'same' padding, the maps
    flipped at the ends of a stack, and the bias added after the convolution."""

    def _setup(self, flipped: bool, flip_in: bool, flip_out: bool) -> None:
        self.flipped, self.flip_in, self.flip_out = flipped, flip_in, flip_out

    def _run(self, x, conv):
        w = self.weight.flip(-2, -1) if self.flipped else self.weight
        y = conv(_flip(x, self.flip_in), w)
        return _flip(_add_bias(y, self.bias), self.flip_out)


class Conv2d(_FlippedBiasAfter, nn.Conv2d):
    """nn.Conv2d (same parameters, names and results) with the bias added after the convolution
    (see ``_add_bias``) and, for TensorFlow's 'same' padding, a flipped frame.

    TensorFlow's 'same' puts an odd pad pixel after the image (a stride-2 kernel-3 conv over
    28 pixels pads 0 before and 1 after, so its windows start at pixel 0; PyTorch's
    symmetric padding=1 starts them at -1). Flipping the image top-bottom and left-right
    moves that pixel before, where a PyTorch conv with symmetric ``padding`` (TensorFlow's pad
    after) and the kernel flipped (``flipped``) computes exactly TensorFlow's windows; the
    extra pad pixel after is never reached at stride 2 or more. So a stack of such layers
    runs on flipped maps: the first flips its input (``flip_in``), the last its output back
    (``flip_out``). Explicit pads and crops compute the same numbers, but oneDNN's backward
    kernels for those shapes made the conv-vae step 1.3x slower (114 against 85 ms, one thread).
    """

    def __init__(self, cin: int, cout: int, k: int, s: int, p, flipped: bool = False,
                 flip_in: bool = False, flip_out: bool = False):
        super().__init__(cin, cout, k, s, p)
        self._setup(flipped, flip_in, flip_out)

    def forward(self, x):
        return self._run(x, lambda x, w: self._conv_forward(x, w, None))


class ConvTranspose2d(_FlippedBiasAfter, nn.ConvTranspose2d):
    """nn.ConvTranspose2d with the bias added after it and TensorFlow's 'same' on flipped maps
    (see ``Conv2d``). TensorFlow crops the uncropped output ((n-1)*stride + k pixels) with the
    odd pixel at the end; flipped, that pixel is at the front, which is PyTorch's ``padding``
    = TensorFlow's crop after and ``output_padding`` = the difference."""

    def __init__(self, cin: int, cout: int, k: int, s: int, p, out_pad=0, flipped: bool = False,
                 flip_in: bool = False, flip_out: bool = False):
        super().__init__(cin, cout, k, s, p, output_padding=out_pad)
        self._setup(flipped, flip_in, flip_out)

    def forward(self, x):
        return self._run(x, lambda x, w: F.conv_transpose2d(x, w, None, self.stride, self.padding,
                                                            self.output_padding, self.groups, self.dilation))


def conv_layer(cin: int, cout: int, k: int, s: int, hw: tuple[int, int], padding: str,
               flip_in: bool = False, flip_out: bool = False) -> nn.Conv2d:
    """Encoder conv over an (H, W) map with model.conv.padding 'symmetric' or 'same' (TensorFlow's).

    'same' layers work on flipped maps; ``flip_in`` / ``flip_out`` mark the first and
    last of a stack (see ``Conv2d``)."""
    if padding == "symmetric":
        return Conv2d(cin, cout, k, s, conv_padding(k))
    if s == 1 and k % 2 == 0:
        raise ConfigError(f"model.conv.padding=same with stride 1 needs an odd kernel size, got {k}")
    after = tuple(same_pads(n, k, s)[1] for n in hw)
    return Conv2d(cin, cout, k, s, after, flipped=True, flip_in=flip_in, flip_out=flip_out)


def conv_transpose_layer(cin: int, cout: int, k: int, s: int, ihw: tuple[int, int], thw: tuple[int, int],
                         padding: str, flip_in: bool = False, flip_out: bool = False) -> nn.ConvTranspose2d:
    """Transposed conv from an (H, W) map ``ihw`` to exactly ``thw`` (the mirrored encoder size)."""
    full = [(i - 1) * s + k for i in ihw]  # output size before any cropping
    if padding == "symmetric":
        p = conv_padding(k)
        out_pad = [t - (f - 2 * p) for f, t in zip(full, thw)]
        if not all(0 <= op < max(s, 1) for op in out_pad):
            raise ConfigError(f"cannot mirror a conv layer (kernel {k}, stride {s}) for size {thw[0]}x{thw[1]}")
        return ConvTranspose2d(cin, cout, k, s, p, tuple(out_pad))
    # TensorFlow 'same': crop (full - target) pixels, the odd one at the end.
    total = [f - t for f, t in zip(full, thw)]
    before = [tot // 2 for tot in total]
    after = [tot - b for tot, b in zip(total, before)]
    if any(tot < 0 for tot in total) or any(a - b >= s for a, b in zip(after, before)):
        raise ConfigError(f"cannot mirror a conv layer (kernel {k}, stride {s}) for size {thw[0]}x{thw[1]} "
                          "with model.conv.padding=same; use model.conv.padding=symmetric")
    return ConvTranspose2d(cin, cout, k, s, tuple(after), tuple(a - b for a, b in zip(after, before)),
                           flipped=True, flip_in=flip_in, flip_out=flip_out)


# Registry: model.conv.final_layer -> the decoder's stride-1 layer to the image channels (with
# model.conv.final_kernel): (cin, C, kernel, (H, W), padding) -> module; the last of a stack (flip_out).
FINAL_LAYERS: dict[str, Callable[..., nn.Module]] = {
    "transpose": lambda cin, c, k, hw, pad: conv_transpose_layer(cin, c, k, 1, hw, hw, pad, flip_out=True),
    "conv": lambda cin, c, k, hw, pad: conv_layer(cin, c, k, 1, hw, pad, flip_out=True),
}


def conv_sizes(cfg: ModelConfig) -> list[tuple[int, int]]:
    """Spatial size (H, W) before the first conv and after each conv layer."""
    o = cfg.opts("conv")
    _, h, w = cfg.input_shape
    sizes = [(h, w)]
    for k, s in zip(o.per_layer("kernel_size"), o.per_layer("strides")):
        if o.padding == "same":
            h, w = -(-h // s), -(-w // s)
        else:
            p = conv_padding(k)
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if h < 1 or w < 1:
            raise ConfigError(f"model.conv.channels has too many stride-{s} conv layers for {cfg.input_shape[1:]} "
                              "images")
        sizes.append((h, w))
    return sizes


def mlp_encoder(cfg: ModelConfig, extra_in: int = 0) -> tuple[nn.Sequential, int]:
    """MLP encoder body and the width of its output features."""
    c, h, w = cfg.input_shape
    widths = [c * h * w + extra_in] + [int(x) for x in cfg.opts("mlp").hidden]
    return nn.Sequential(nn.Flatten(), *mlp(widths, cfg.activation, leaky_slope=cfg.leaky_slope)), widths[-1]


def conv_encoder(cfg: ModelConfig, extra_in: int = 0) -> tuple[nn.Sequential, int]:
    """Conv encoder body (then flatten and the dense layers) and the width of its output."""
    o = cfg.opts("conv")
    c, h, w = cfg.input_shape
    layers: list[nn.Module] = []
    sizes = conv_sizes(cfg)
    n = len(o.channels)
    for i, (cin, cout, k, s, hw) in enumerate(zip([c + extra_in] + o.channels[:-1], o.channels, o.per_layer("kernel_size"),
                                                  o.per_layer("strides"), sizes)):
        layers.append(conv_layer(cin, cout, k, s, hw, o.padding, flip_in=i == 0, flip_out=i == n - 1))
        if o.latent != "conv" or i < n - 1:
            # The last conv map of a conv-latent AE is the code: nothing on it (latent_activation applies).
            layers += post_conv(cfg, cout, cfg.activation)
    flat = o.channels[-1] * math.prod(sizes[-1])
    layers.append(nn.Flatten())
    if o.latent == "conv":
        return nn.Sequential(*layers), flat
    layers += mlp([flat] + [int(x) for x in o.dense], cfg.activation, leaky_slope=cfg.leaky_slope)
    return nn.Sequential(*layers), ([flat] + [int(x) for x in o.dense])[-1]


def mlp_decoder(cfg: ModelConfig, extra_in: int = 0) -> nn.Sequential:
    """MLP decoder from [code, label vector] (B, latent_dim + extra_in) to logits (B, C, H, W)."""
    o = cfg.opts("mlp")
    c, h, w = cfg.input_shape
    act = cfg.decoder_activation or cfg.activation
    hidden = o.decoder_hidden if o.decoder_hidden is not None else list(reversed(o.hidden))
    widths = [cfg.latent_dim + extra_in] + [int(x) for x in hidden] + [c * h * w]
    return nn.Sequential(*mlp(widths, act, last_act=False, leaky_slope=cfg.leaky_slope), nn.Unflatten(1, (c, h, w)))


def conv_decoder(cfg: ModelConfig, extra_in: int = 0) -> nn.Sequential:
    """Conv decoder mirroring the encoder, from (B, latent_dim + extra_in) to logits (B, C, H, W)."""
    o = cfg.opts("conv")
    c, h, w = cfg.input_shape
    act = cfg.decoder_activation or cfg.activation
    sizes = conv_sizes(cfg)
    kernels, strides = o.per_layer("kernel_size"), o.per_layer("strides")
    last_c, (lh, lw) = o.channels[-1], sizes[-1]
    layers: list[nn.Module] = []
    if o.latent == "dense":
        # One dense layer from the code straight to the last feature map: activated in the Keras
        # tutorial, linear in PyTorch-VAE (model.conv.decoder_input_activation=false).
        layers.append(nn.Linear(cfg.latent_dim + extra_in, last_c * lh * lw))
        if o.decoder_input_activation:
            layers.append(activation(act, cfg.leaky_slope))
    elif extra_in:
        raise ConfigError("a conditional model needs a vector code (model.conv.latent=dense), not a conv feature map")
    layers.append(ChannelsLastUnflatten(1, (last_c, lh, lw)))
    # Mirror the encoder. With a final stride-1 layer (Keras), the transposed convs keep the
    # encoder's channels and the final layer maps to C; without it, the last one maps to C.
    # model.conv.decoder_channels names them instead (PyTorch-VAE: 512 -> 256, 128, 64, 32, 32).
    outs = list(reversed(o.channels))
    outs = outs if o.final_kernel else outs[1:] + [c]
    outs = [int(x) for x in o.decoder_channels] if o.decoder_channels else outs
    cin = last_c
    n = len(o.channels)
    for i in range(n):
        j = n - 1 - i  # encoder layer this one mirrors
        # Each transposed conv lands exactly on the encoder's input size for that layer.
        layers.append(conv_transpose_layer(cin, outs[i], kernels[j], strides[j], sizes[j + 1], sizes[j], o.padding,
                                           flip_in=i == 0, flip_out=i == n - 1 and not o.final_kernel))
        if o.final_kernel or i < n - 1:
            layers += post_conv(cfg, outs[i], act)
        cin = outs[i]
    if o.final_kernel:
        # The stride-1 layer to C channels: a transposed conv (Keras) or a conv (PyTorch-VAE's
        # final_layer); the same function class and parameter count, weights laid out as theirs.
        layers.append(FINAL_LAYERS[o.final_layer](cin, c, int(o.final_kernel), (h, w), o.padding))
    return nn.Sequential(*layers)


def build_predictor(cfg: ModelConfig) -> nn.Sequential:
    """Label predictor: latent (B, latent_dim) -> hidden widths -> class logits (B, num_classes)."""
    if cfg.num_classes is None:
        raise ConfigError("model.num_classes is unset; it is filled in from the data labels when training")
    widths = [cfg.latent_dim] + [int(h) for h in cfg.predictor_hidden] + [cfg.num_classes]
    return nn.Sequential(*mlp(widths, cfg.activation, last_act=False, leaky_slope=cfg.leaky_slope))


def _join_flat(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """MLP input: the flattened image (B, C*H*W) with the label vector (B, E) appended."""
    return torch.cat([x.flatten(1), e.to(x.dtype)], 1)


def _join_channels(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Conv input: the label vector as E constant channels (B, C + E, H, W)."""
    planes = e.to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[2:])
    return torch.cat([x, planes], 1).contiguous(memory_format=torch.channels_last)


class Body(NamedTuple):
    """One architecture: how to build its encoder and decoder, and where a label goes in."""

    encoder: Callable  # (cfg, extra_in) -> (nn.Module, feature width)
    decoder: Callable  # (cfg, extra_in) -> nn.Module
    join: Callable  # (x (B, C, H, W), e (B, E)) -> encoder input
    channels_last: bool  # activations and weights in NHWC (oneDNN's fast conv kernels)
    description: str = ""  # one line, for `vaelab parts`
    check: Callable | None = None  # (cfg) -> None: refuse, in one line, what this body cannot build
    options: type | None = None  # its options dataclass: the section model.<arch> (vaelab.models.options)


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _opt(default, help: str, alias: str):
    """An option field with its help and its old flat name (it was a model field)."""
    return field(default=default, metadata=_meta(help, alias))


def _meta(help: str, alias: str) -> dict[str, str]:
    return {"help": help, "alias": alias}


def _widths(name: str, v: list[int] | None) -> None:
    _check(v is None or all(x > 0 for x in v), f"model.{name} widths must be positive, got {v}")


@dataclass
class MlpOptions:
    hidden: list[int] = field(default_factory=lambda: [400], metadata=_meta("the encoder's hidden widths", "hidden"))
    decoder_hidden: list[int] | None = field(default=None, metadata=_meta(
        "the decoder's hidden widths (default: hidden reversed)", "decoder_hidden"))

    def __post_init__(self) -> None:
        _widths("mlp.hidden", self.hidden)
        _widths("mlp.decoder_hidden", self.decoder_hidden)


@dataclass
class ConvOptions:
    channels: list[int] = field(default_factory=lambda: [32, 64],
                                metadata=_meta("the encoder's conv channels, one per layer", "channels"))
    kernel_size: list[int] | int = field(default=3, metadata=_meta("kernel size per conv layer, or one for all",
                                                                   "kernel_size"))
    strides: list[int] | int = field(default=2, metadata=_meta("stride per conv layer, or one for all", "strides"))
    dense: list[int] = field(default_factory=list,
                             metadata=_meta("dense widths between the flattened maps and the code", "dense"))
    latent: str = _opt("dense", "dense (a vector code) or conv (the last feature map is the code: point or vq "
                       "posteriors)", "latent")
    final_kernel: int | None = _opt(None, "the decoder's extra stride-1 layer to the image channels, of this odd "
                                    "kernel size", "final_kernel")
    # "symmetric" (PyTorch's (k-1)//2 on every side) or "same" (TensorFlow's: ceil(H/stride)
    # outputs, an odd pad pixel goes after, so a stride-2 kernel-3 conv's windows start at pixel
    # 0, not -1; transposed convs crop to match). The Keras presets use "same", as the Keras
    # tutorial does. Both give the same shapes for the presets.
    padding: str = _opt("symmetric", "symmetric (PyTorch's) or same (TensorFlow's)", "padding")
    norm: str = _opt("none", "after each hidden conv, before its activation: " + " | ".join(NORMS), "norm")
    decoder_channels: list[int] | None = field(default=None, metadata=_meta(
        "outputs of the decoder's transposed convs (with final_kernel; default: channels mirrored)",
        "decoder_channels"))
    decoder_input_activation: bool = _opt(True, "activate the decoder's first dense layer (dense latent)",
                                          "decoder_input_activation")
    final_layer: str = _opt("transpose", "with final_kernel: transpose (ConvTranspose, Keras) | conv (Conv2d, "
                            "PyTorch-VAE)", "final_layer")

    def __post_init__(self) -> None:
        _check(len(self.channels) >= 1, "model.conv.channels needs at least one conv layer")
        _widths("conv.channels", self.channels)
        _widths("conv.dense", self.dense)
        for name in ("kernel_size", "strides"):
            v = getattr(self, name)
            if isinstance(v, list):
                _check(len(v) == len(self.channels), f"model.conv.{name} has {len(v)} entries but model.conv.channels "
                       f"has {len(self.channels)}")
            _check(all(x > 0 for x in self.per_layer(name)), f"model.conv.{name} must be positive, got {v}")
        _check(self.latent in ("dense", "conv"), f"model.conv.latent must be 'dense' or 'conv', got {self.latent!r}")
        _check(self.final_kernel is None or (self.final_kernel > 0 and self.final_kernel % 2 == 1),
               f"model.conv.final_kernel must be an odd kernel size, got {self.final_kernel}")
        _check(self.padding in ("symmetric", "same"),
               f"model.conv.padding must be 'symmetric' or 'same', got {self.padding!r}")
        _check(self.norm in NORMS, f"model.conv.norm must be one of {', '.join(sorted(NORMS))}, got {self.norm!r}")
        _check(self.final_layer in FINAL_LAYERS,
               f"model.conv.final_layer must be one of {', '.join(sorted(FINAL_LAYERS))}, got {self.final_layer!r}")
        if self.decoder_channels is not None:
            _check(self.final_kernel is not None,
                   "model.conv.decoder_channels needs model.conv.final_kernel (the layer to the image channels)")
            _check(len(self.decoder_channels) == len(self.channels) and all(c > 0 for c in self.decoder_channels),
                   f"model.conv.decoder_channels needs {len(self.channels)} positive widths (one per conv layer), "
                   f"got {self.decoder_channels}")

    def per_layer(self, name: str) -> list[int]:
        """``kernel_size`` or ``strides`` as one value per conv layer."""
        v = getattr(self, name)
        return list(v) if isinstance(v, list) else [v] * len(self.channels)


def feature_map_code(cfg: ModelConfig) -> bool:
    """The encoder's last feature map is the code (``model.conv.latent=conv``), not a vector."""
    return getattr(cfg.options.get(cfg.arch), "latent", "dense") == "conv"


def check_conv(cfg: ModelConfig) -> None:
    if cfg.opts("conv").latent == "conv":
        _check(cfg.condition == "none", f"model.condition={cfg.condition} feeds labels to a vector code, and "
               f"model.conv.latent=conv makes the code a feature map (model.posterior={cfg.posterior}); "
               "give model.conv.latent=dense or model.condition=none")


# Registry: model.arch -> Body. Adding an architecture is three functions, its options and one entry.
BODIES: dict[str, Body] = {
    "mlp": Body(mlp_encoder, mlp_decoder, _join_flat, channels_last=False,
                description="fully connected layers of model.mlp.hidden widths; the decoder mirrors them",
                options=MlpOptions),
    "conv": Body(conv_encoder, conv_decoder, _join_channels, channels_last=True,
                 description="convolutions of model.conv.channels, then model.conv.dense layers; the decoder mirrors "
                             "them",
                 check=check_conv, options=ConvOptions),
}
