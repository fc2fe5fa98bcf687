"""Models: every preset runs; conv-vae is the Keras tutorial model; parts, capabilities, conditioning."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import model_config
from torch import nn

from vaelab.config import ModelConfig, preset_names
from vaelab.configure import build_config
from vaelab.errors import ConfigError
from vaelab.models import CAPABILITIES, MODELS, build_model, require


def preset_model(name: str, **changes):
    cfg = build_config(name, overrides=[f"model.{k}={json.dumps(v)}" for k, v in changes.items()])
    cfg.model.input_shape = [3, cfg.data.image_size, cfg.data.image_size] if cfg.data.name == "folder" else [1, 28, 28]
    if cfg.model.uses_labels:
        cfg.model.num_classes = 10
    torch.manual_seed(0)
    return build_model(cfg.model)


def small(**kw) -> ModelConfig:
    base = dict(kind="vae", arch="mlp", input_shape=[1, 6, 5], hidden=[16], latent_dim=3)
    base.update(kw)
    return model_config(**base)


def rand_images(shape, b=3, seed=0):
    return torch.rand((b, *shape), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- every preset
@pytest.mark.parametrize("name", preset_names())
def test_preset_forward_and_reconstruct(name):
    model = preset_model(name)
    shape = tuple(model.cfg.input_shape)
    b = 3 if shape[-1] <= 28 else 2
    x = rand_images(shape, b)
    y = torch.arange(b) if model.conditional else None  # a conditional model reads the labels
    with torch.no_grad():
        out = model(x, y)
        objective = model.cfg.objective
        assert set(out) == {"recon": {"loss", "recon"}, "elbo": {"loss", "recon", "kl"},
                            "iwae": {"loss", "nelbo"}}[objective]
        for k, v in out.items():
            assert v.shape == (b,), k
            assert torch.isfinite(v).all(), k
        if objective == "iwae":
            assert (out["loss"] <= out["nelbo"] + 1e-4).all() and "density" in model.capabilities
        elif objective == "elbo":
            assert (out["kl"] >= 0).all() and "density" in model.capabilities
            torch.testing.assert_close(out["loss"], out["recon"] + model.cfg.opts("elbo").beta * out["kl"])
        else:
            assert torch.equal(out["loss"], out["recon"]) and "density" not in model.capabilities
        if "recon" in out:
            assert (out["recon"] >= 0).all()
        r = model.reconstruct(x, y)
        assert r.shape == x.shape and r.min() >= 0 and r.max() <= 1
        z = model.encode(x, y)
        assert z.shape == (b, model.cfg.latent_dim)
        d = model.decode(torch.randn(b, model.cfg.latent_dim) * 3, y)
        assert d.shape == x.shape and d.min() >= 0 and d.max() <= 1


# ---------------------------------------------------------------------------- conv-vae = Keras tutorial
def test_conv_vae_layers_match_keras_tutorial():
    m = preset_model("conv-vae")
    convs = [(l.in_channels, l.out_channels, l.kernel_size, l.stride) for l in m.encoder if isinstance(l, nn.Conv2d)]
    assert convs == [(1, 32, (3, 3), (2, 2)), (32, 64, (3, 3), (2, 2))]
    assert m.cfg.opts("conv").padding == "same"  # TensorFlow's (tested against its definition below)
    assert [(l.in_features, l.out_features) for l in m.encoder if isinstance(l, nn.Linear)] == [(3136, 16)]
    assert sum(isinstance(l, nn.ReLU) for l in m.encoder) == 3  # after each conv and the dense layer
    assert (m.posterior_head.mu.in_features, m.posterior_head.mu.out_features) == (16, 2)
    assert (m.posterior_head.logvar.in_features, m.posterior_head.logvar.out_features) == (16, 2)
    assert [(l.in_features, l.out_features) for l in m.decoder if isinstance(l, nn.Linear)] == [(2, 7 * 7 * 64)]
    tconvs = [(l.in_channels, l.out_channels, l.kernel_size, l.stride)
              for l in m.decoder if isinstance(l, nn.ConvTranspose2d)]
    assert tconvs == [(64, 64, (3, 3), (2, 2)), (64, 32, (3, 3), (2, 2)), (32, 1, (3, 3), (1, 1))]
    # ReLU after dense and after the two stride-2 transposed convs; none after the last (sigmoid output)
    kinds = [type(l).__name__ for l in m.decoder]
    assert kinds == ["Linear", "ReLU", "ChannelsLastUnflatten", "ConvTranspose2d", "ReLU",
                     "ConvTranspose2d", "ReLU", "ConvTranspose2d"]

    # Feature-map sizes: 28 -> 14 -> 7, and 7 -> 14 -> 28 -> 28.
    sizes = []
    hooks = [l.register_forward_hook(lambda mod, i, o: sizes.append(tuple(o.shape[1:])))
             for l in [*m.encoder, *m.decoder] if isinstance(l, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        m.reconstruct(torch.rand(2, 1, 28, 28))
    for h in hooks:
        h.remove()
    assert sizes == [(32, 14, 14), (64, 7, 7), (64, 14, 14), (32, 28, 28), (1, 28, 28)]


@pytest.mark.parametrize("shape, channels, k, s", [
    ([1, 27, 20], [8, 16], 3, 2), ([3, 33, 33], [4, 8, 8], 4, 2), ([1, 16, 17], [4], 5, 2),
    ([1, 12, 12], [4, 4], [3, 5], [1, 2]),
])
def test_conv_decoder_lands_on_the_input_size(shape, channels, k, s):
    for kind, latent, fk, padding in (("vae", "dense", 3, "symmetric"), ("vae", "dense", None, "symmetric"),
                                      ("ae", "conv", None, "symmetric"), ("vae", "dense", 3, "same")):
        cfg = model_config(kind=kind, arch="conv", input_shape=shape, channels=channels, kernel_size=k, strides=s,
                          latent=latent, final_kernel=fk, dense=[8] if latent == "dense" else [], latent_dim=2,
                          padding=padding)
        m = build_model(cfg)
        x = rand_images(shape, 2)
        with torch.no_grad():
            assert m.reconstruct(x).shape == x.shape, (kind, latent, fk, padding)


def _tf_same_conv_oracle(x, w, s):
    """TensorFlow's 'same' convolution from its definition, by explicit loops over windows:
    out[i, j] = sum_ab x[i*s + a - top, j*s + b - left] * w[a, b] with out size ceil(n/s),
    pad total max((out-1)*s + k - n, 0), top = total // 2 (the odd pixel goes after)."""
    b, c, h, wd = x.shape
    k = w.shape[-1]
    oh, ow = -(-h // s), -(-wd // s)
    top = max((oh - 1) * s + k - h, 0) // 2
    left = max((ow - 1) * s + k - wd, 0) // 2
    out = torch.zeros(b, w.shape[0], oh, ow, dtype=torch.float64)
    for i in range(oh):
        for j in range(ow):
            for a in range(k):
                for bb in range(k):
                    r, q = i * s + a - top, j * s + bb - left
                    if 0 <= r < h and 0 <= q < wd:
                        out[:, :, i, j] += x[:, :, r, q].double() @ w[:, :, a, bb].double().T
    return out


@pytest.mark.parametrize("shape, k, s", [((1, 28, 28), 3, 2), ((2, 14, 9), 3, 2), ((1, 7, 8), 4, 2),
                                         ((1, 9, 9), 5, 3), ((1, 6, 6), 3, 1)])
def test_same_padding_matches_tensorflows_definition(shape, k, s):
    from vaelab.models.bodies import conv_layer

    torch.manual_seed(0)
    layer = conv_layer(shape[0], 3, k, s, shape[1:], "same", flip_in=True, flip_out=True).double()
    nn.init.zeros_(layer.bias)
    x = torch.rand(2, *shape, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _tf_same_conv_oracle(x, layer.weight, s))


def test_same_padding_windows_start_at_pixel_zero():
    """One lit pixel at (2, 2), a 3x3 all-ones stride-2 kernel: TensorFlow's windows cover
    0-2 and 2-4, so four outputs see it; PyTorch's symmetric ones cover -1..1 and 1..3 (one)."""
    from vaelab.models.bodies import conv_layer

    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 2, 2] = 1
    seen = {}
    for padding in ("same", "symmetric"):
        layer = conv_layer(1, 1, 3, 2, (28, 28), padding, flip_in=True, flip_out=True)
        nn.init.ones_(layer.weight)
        nn.init.zeros_(layer.bias)
        with torch.no_grad():
            seen[padding] = layer(x)[0, 0].nonzero().tolist()
    assert seen["same"] == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert seen["symmetric"] == [[1, 1]]


@pytest.mark.parametrize("n_in, n_out, k, s", [(7, 14, 3, 2), (14, 28, 3, 2), (4, 7, 3, 2), (4, 8, 4, 2),
                                               (28, 28, 3, 1), (3, 9, 5, 3), (7, 14, 5, 2), (4, 11, 3, 3),
                                               (4, 12, 4, 3), (5, 9, 4, 2)])
def test_same_transposed_conv_is_the_adjoint_of_the_same_conv(n_in, n_out, k, s):
    """TensorFlow defines conv2d_transpose as the gradient of conv2d: with shared weights,
    <conv(x), y> = <x, conv_transpose(y)> for every x, y, which fixes the crop."""
    from vaelab.models.bodies import conv_layer, conv_transpose_layer

    torch.manual_seed(0)
    conv = conv_layer(3, 5, k, s, (n_out, n_out), "same", flip_in=True, flip_out=True).double()
    tconv = conv_transpose_layer(5, 3, k, s, (n_in, n_in), (n_out, n_out), "same", flip_in=True, flip_out=True).double()
    with torch.no_grad():
        tconv.weight.copy_(conv.weight)
    nn.init.zeros_(conv.bias)
    nn.init.zeros_(tconv.bias)
    x = torch.rand(2, 3, n_out, n_out, dtype=torch.float64)
    y = torch.rand(2, 5, n_in, n_in, dtype=torch.float64)
    cx, ty = conv(x), tconv(y)
    assert cx.shape == y.shape and ty.shape == x.shape
    torch.testing.assert_close((cx * y).sum(), (x * ty).sum())


@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_conv_layers_equal_torchs_layers_in_values_and_gradients(padding):
    """vaelab adds conv biases after the convolution (a faster backward on CPU); values and
    gradients equal nn.Conv2d / nn.ConvTranspose2d with the same weights."""
    from vaelab.models.bodies import conv_layer, conv_transpose_layer

    torch.manual_seed(0)
    conv = conv_layer(3, 5, 3, 2, (8, 8), padding, flip_in=True, flip_out=True).double()
    tconv = conv_transpose_layer(5, 3, 3, 2, (4, 4), (8, 8), padding, flip_in=True, flip_out=True).double()
    x, y = torch.rand(2, 3, 8, 8, dtype=torch.float64), torch.rand(2, 5, 4, 4, dtype=torch.float64)
    if padding == "same":  # the reference: TensorFlow's pads made explicit with stock layers
        ref_c = lambda w, b: F.conv2d(F.pad(x, (0, 1, 0, 1)), w, b, 2)  # noqa: E731
        ref_t = lambda w, b: F.conv_transpose2d(y, w, b, 2)[:, :, :-1, :-1]  # noqa: E731
    else:
        ref_c = lambda w, b: F.conv2d(x, w, b, 2, 1)  # noqa: E731
        ref_t = lambda w, b: F.conv_transpose2d(y, w, b, 2, 1, 1)  # noqa: E731
    for layer, ref in ((conv, ref_c), (tconv, ref_t)):
        out = layer(x if layer is conv else y)
        w, b = layer.weight.detach().clone().requires_grad_(), layer.bias.detach().clone().requires_grad_()
        expected = ref(w, b)
        torch.testing.assert_close(out, expected)
        g = torch.rand_like(out)
        grads = torch.autograd.grad(out, [layer.weight, layer.bias], g)
        torch.testing.assert_close(grads, torch.autograd.grad(expected, [w, b], g))


def test_padding_option_keeps_parameters_and_checks_its_value():
    same, sym = preset_model("conv-vae"), preset_model("conv-vae", padding="symmetric")
    assert same.cfg.opts("conv").padding == "same" and sym.cfg.opts("conv").padding == "symmetric"
    assert list(same.state_dict()) == list(sym.state_dict())
    assert all(a.shape == b.shape for a, b in zip(same.state_dict().values(), sym.state_dict().values()))
    with pytest.raises(ConfigError, match="model.conv.padding must be"):
        model_config(arch="conv", padding="valid")
    with pytest.raises(ConfigError, match="stride 1 needs an odd kernel"):
        build_model(model_config(arch="conv", input_shape=[1, 8, 8], channels=[4], kernel_size=4, strides=1,
                                padding="same"))
    assert build_config("conv-vae").train.adam_eps == 1e-7 and build_config("mlp-vae").train.adam_eps == 1e-8


def test_conv_latent_ae_code_is_the_feature_map():
    m = preset_model("conv-ae-rgb64")
    x = rand_images((3, 64, 64), 2)
    with torch.no_grad():
        z = m.encode(x)
    assert z.shape == (2, 48 * 8 * 8) and m.cfg.latent_dim == 3072


# ---------------------------------------------------------------------------- parts
def test_vae_sampling_uses_the_generator():
    m = build_model(small())
    x = rand_images((1, 6, 5))
    with torch.no_grad():
        a = m(x, generator=torch.Generator().manual_seed(1))["recon"]
        b = m(x, generator=torch.Generator().manual_seed(1))["recon"]
        c = m(x, generator=torch.Generator().manual_seed(2))["recon"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_tanh_output_sees_signed_data_and_returns_unit_images():
    torch.manual_seed(3)
    m = build_model(small(kind="ae", loss="mse", output_activation="tanh"))
    seen = []
    first = next(l for l in m.encoder if isinstance(l, nn.Linear))
    first.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
    x = rand_images((1, 6, 5), b=4)
    with torch.no_grad():
        out = m(x)
        torch.testing.assert_close(seen[0], (2 * x - 1).flatten(1))  # the model works in [-1, 1]
        logits = m.decode_logits(m.encode(x))
        torch.testing.assert_close(out["recon"], ((torch.tanh(logits) - (2 * x - 1)) ** 2).flatten(1).mean(1))
        img = m.decode(m.encode(x))
        torch.testing.assert_close(img, (torch.tanh(logits) + 1) / 2)
        big = m.decode(torch.randn(50, 3) * 100)
    assert img.min() >= 0 and img.max() <= 1 and big.min() >= 0 and big.max() <= 1
    assert big.min() < 0.01 and big.max() > 0.99  # the whole [0, 1] range is reachable, not squeezed


def test_sigmoid_output_is_not_rescaled():
    torch.manual_seed(4)
    m = build_model(small(kind="ae"))
    x = rand_images((1, 6, 5))
    with torch.no_grad():
        torch.testing.assert_close(m.decode(m.encode(x)), torch.sigmoid(m.decode_logits(m.encode(x))))


def test_ae_latent_activation():
    m = build_model(small(kind="ae", latent_activation="tanh"))
    with torch.no_grad():
        z = m.encode(rand_images((1, 6, 5), b=8) * 50)
    assert z.abs().max() <= 1


def test_mlp_decoder_hidden_and_activations():
    m = build_model(small(kind="ae", hidden=[20, 10], decoder_hidden=[7], activation="elu", decoder_activation="tanh"))
    enc = [type(l).__name__ for l in m.encoder]
    dec = [type(l).__name__ for l in m.decoder]
    assert enc == ["Flatten", "Linear", "ELU", "Linear", "ELU"]
    assert dec == ["Linear", "Tanh", "Linear", "Unflatten"]
    assert [l.out_features for l in m.decoder if isinstance(l, nn.Linear)] == [7, 30]


def test_build_model_errors():
    with pytest.raises(ConfigError, match="input_shape"):
        build_model(model_config())
    with pytest.raises(ConfigError, match="too many"):
        build_model(model_config(arch="conv", input_shape=[1, 4, 4], channels=[8, 8, 8], kernel_size=4, dense=[4]))


def test_glorot_init_is_keras_default_and_set_by_the_keras_presets():
    import math

    from torch import nn

    from vaelab.configure import build_config
    from vaelab.models import build_model

    cfg = build_config("conv-vae", overrides=["model.input_shape=[1,28,28]"])
    assert cfg.model.init == "glorot"
    torch.manual_seed(0)
    model = build_model(cfg.model)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            assert torch.count_nonzero(m.bias) == 0
            w = m.weight
            rf = w[0, 0].numel() if w.dim() > 2 else 1
            fan_in, fan_out = w.shape[1] * rf, w.shape[0] * rf
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert w.abs().max() <= bound + 1e-6
            assert w.abs().max() > 0.8 * bound  # uniform over the whole range, not PyTorch's narrower one
    torch.manual_seed(0)
    default = build_model(build_config("mlp-vae", overrides=["model.input_shape=[1,28,28]"]).model)
    assert torch.count_nonzero(default.encoder[1].bias) > 0  # PyTorch's own init stays the default


def test_channels_last_layout_changes_speed_not_values():
    """Conv models run NHWC (fast oneDNN kernels); the numbers equal a plain NCHW run."""
    import copy

    cfg = build_config("conv-vae-deep", None, ["model.latent_dim=4"]).model
    cfg.input_shape = [1, 28, 28]
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert isinstance(model.decoder[2], nn.Unflatten)
    plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    plain.decoder[2] = nn.Unflatten(1, model.decoder[2].unflattened_size)
    plain._layout = lambda x: x
    x, z = torch.rand(5, 1, 28, 28), torch.randn(5, 4)
    with torch.no_grad():
        assert model.decoder[:3](z).is_contiguous(memory_format=torch.channels_last)
        assert not plain.decoder[:3](z).is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(model.decode(z), plain.decode(z), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.posterior(x).params(), plain.posterior(x).params(), rtol=1e-5, atol=1e-6)
    assert list(model.state_dict()) == list(plain.state_dict())
