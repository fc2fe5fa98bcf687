"""Configuration: small dataclasses for data, model and training.

A run is fully described by a ``RunConfig`` (saved as ``config.json`` in the run
directory). Configs come from a preset (``presets/NAME.yaml``), a YAML file,
and dotted overrides such as ``model.latent_dim=16``; each dataclass validates
itself in ``__post_init__`` and says what is wrong in words. This module knows no
model: the model section holds the part names and one options section per part
(``model.iwae.k``), which the parts type and check when ``vaelab.configure`` builds
the config.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import numbers
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from vaelab.errors import ConfigError
from vaelab.imageopts import check_image_size, parse_background, parse_crop

ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "silu", "tanh", "sigmoid", "none")
OUTPUT_ACTIVATIONS = ("sigmoid", "tanh", "none")
LR_SCHEDULES = ("constant", "cosine", "iwae", "exponential", "onecycle")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _check_name(key: str, value: str, registry) -> None:
    _check(value in registry, f"{key} must be one of {', '.join(sorted(registry))}, got {value!r}")


def _coerce(obj, section: str) -> None:
    """Convert each field to its annotated type, or say which field is wrong.

    Values arrive from YAML, JSON and the command line: PyYAML reads ``1e-4`` as a
    string and ``--set train.device=0`` gives an int, so every field is normalised here
    once instead of being trusted downstream.
    """
    for f in dataclasses.fields(obj):
        setattr(obj, f.name, typed_value(section, f.name, getattr(obj, f.name)))


def _to_int(v) -> int:
    if isinstance(v, bool):
        raise TypeError
    if isinstance(v, str):
        v = float(v) if any(c in v for c in ".eE") else int(v)
    if isinstance(v, float) and not v.is_integer():
        raise ValueError
    return int(v)


def _convert(v, kind: str):
    if kind == "int":
        return _to_int(v)
    if kind == "float":
        if isinstance(v, bool):
            raise TypeError
        return float(v)
    if kind == "bool":
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "false", "yes", "no", "1", "0"):
            return v.lower() in ("true", "yes", "1")
        raise ValueError
    if kind == "str":
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return str(v)
        if not isinstance(v, str):
            raise TypeError
        return v
    if kind == "list[int | str]":  # data.classes: label numbers or class (folder) names
        items = v if isinstance(v, (list, tuple)) else [v]
        return [x if isinstance(x, str) else _to_int(x) for x in items]
    if kind.startswith("list[float]"):
        if isinstance(v, (list, tuple)):
            return [_convert(x, "float") for x in v]
        return [_convert(v, "float")]
    if kind.startswith("list[int]"):
        if isinstance(v, (list, tuple)):
            return [_to_int(x) for x in v]
        if "| int" in kind:
            return _to_int(v)
        raise TypeError
    return v


# Data sources (keys of vaelab.data:DATASETS) that read data.path, and what the path is; the
# others (mnist, fashion-mnist, dsprites) read data.data_dir. A path given with no source
# names its source: a .npz or .npy file is npz, anything else an image folder.
PATH_SOURCES = {"folder": "an image folder", "npz": "a .npz or .npy file"}
DATA_DIR_SOURCES = ("mnist", "fashion-mnist", "dsprites")  # the rest read data.path, not data.data_dir
DOWNLOADED = ("mnist", "fashion-mnist")  # data.download=false applies to these only
# Options that only the image-folder loader reads: (field, its default).
FOLDER_OPTIONS = (("image_size", None), ("channels", None), ("crop", None), ("background", "white"),
                  ("skip_bad", False))


def source_of(path: str) -> str:
    """The data source a path names: npz for a .npz or .npy file, else folder."""
    return "npz" if Path(path).suffix.lower() in (".npz", ".npy") else "folder"


# data.train_split: what the model trains on (train+test: both, for the papers that did).
TRAIN_SPLITS = ("train", "train+test")


@dataclass
class DataConfig:
    # mnist | fashion-mnist | folder | npz | dsprites; None (not given): the source data.path names
    # (see source_of), else mnist
    name: str | None = None
    path: str | None = None  # image folder or .npz/.npy file (name = folder | npz)
    data_dir: str | None = None  # root holding mnist/ and fashion-mnist/ (else $VAELAB_DATA, cache)
    train_split: str = "train"  # train | train+test
    val: str = "test"  # test | none | a fraction of the training images, e.g. "0.1"
    classes: list[int | str] | None = None  # keep only these labels or class-folder names (one-class training)
    image_size: int | None = None  # folders: resize every image to this square size
    channels: int | None = None  # folders: 1 (grey) or 3 (RGB); default 1 only when every image is grey
    crop: str | None = None  # folders: centre crop before the resize, center:148 or center:HxW
    background: str = "white"  # folders: what transparent pixels show: white, black or #rrggbb
    skip_bad: bool = False  # folders: leave unreadable images out (listed in the cache manifest)
    in_memory: bool | str = "auto"  # auto (memory-map folders too big for memory) | true | false
    # keep N training images, a random subset seeded by train.seed (sources may be ordered by
    # class or factor, e.g. dSprites, so the first N would not be a sample); quick runs, tests
    limit: int | None = None
    download: bool = True  # fetch mnist / fashion-mnist when absent
    # Binary images from grey levels: "none"; "dynamic" (a fresh Bernoulli draw of every
    # training image each epoch, seeded by (train.seed, epoch), so a resumed run draws the
    # same); "static" (one fixed draw). Either way val/test are drawn once with a fixed seed.
    binarize: str = "none"

    def __post_init__(self) -> None:
        _coerce(self, "data")
        _check(self.train_split in TRAIN_SPLITS,
               f"data.train_split must be one of {', '.join(TRAIN_SPLITS)}, got {self.train_split!r}")
        if self.val not in ("test", "none"):
            try:
                frac = float(self.val)
            except ValueError:
                frac = -1.0
            _check(0.0 < frac < 1.0,
                   f"data.val must be 'test', 'none' or a fraction in (0, 1), got {self.val!r}")
        if self.train_split == "train+test" and self.val == "test":
            # Training on the test set and validating on it would be dishonest.
            self.val = "none"
        check_image_size(self.image_size)
        parse_crop(self.crop)
        parse_background(self.background)
        if isinstance(self.in_memory, bool):  # YAML and --set read true/false as booleans
            self.in_memory = str(self.in_memory).lower()
        _check(self.in_memory in ("auto", "true", "false"),
               f"data.in_memory must be auto, true or false, got {self.in_memory!r}")
        _check(self.channels in (None, 1, 3), f"data.channels must be 1 or 3, got {self.channels!r}")
        _check(self.limit is None or self.limit > 0, "data.limit must be a positive number of images")
        if self.classes is not None:
            _check(len(self.classes) > 0, "data.classes must name at least one class")
        _check(self.binarize in ("none", "dynamic", "static"),
               f"data.binarize must be none, dynamic or static, got {self.binarize!r}")
        if self.name is None:
            self.name = source_of(self.path) if self.path else "mnist"

    def check_used(self) -> None:
        """Refuse an option the source does not read, in one line. Not part of building a
        config (a saved run's config.json still loads): ``check_options_used`` calls it
        wherever a config is made or trained."""
        name = self.name
        if self.path is not None and name not in PATH_SOURCES:
            raise ConfigError(f"data.path (--data-path) {self.path} is not read by data.name={name}; "
                              f"give data.name={source_of(self.path)} (--data) for {PATH_SOURCES[source_of(self.path)]}, "
                              "or leave the path out")
        if self.path is not None and name == "folder" and source_of(self.path) == "npz":
            raise ConfigError(f"data.path (--data-path) {self.path} is {PATH_SOURCES[source_of(self.path)]}, and "
                              f"data.name={name} reads {PATH_SOURCES[name]}; give data.name={source_of(self.path)}")
        if self.data_dir is not None and name not in DATA_DIR_SOURCES:
            raise ConfigError(f"data.data_dir (--data-dir) is not read by data.name={name}, which reads data.path; "
                              "leave it out")
        if name != "folder":
            for option, default in FOLDER_OPTIONS:
                if getattr(self, option) != default:
                    raise ConfigError(f"data.{option} applies to image folders (data.name=folder) only, and "
                                      f"data.name is {name}; leave it out (--set data.{option}="
                                      f"{'null' if default is None else str(default).lower()})")
        if not self.download and name not in DOWNLOADED:
            raise ConfigError(f"data.download=false applies to {' and '.join(DOWNLOADED)} only (data.name is {name})")
        if self.in_memory not in ("auto", "true") and name in DOWNLOADED + ("npz",):
            raise ConfigError(f"data.in_memory={self.in_memory} does not apply to data.name={name}: it is always "
                              "read into memory; leave it at auto")


@dataclass
class ModelConfig:
    kind: str = "vae"  # the family, a key of vaelab.models.MODELS (ae, vae, cvae, ...): default parts
    arch: str = "mlp"  # encoder/decoder body, a key of vaelab.models.BODIES: mlp | conv
    # Parts; None = the family's choice (written out in the run's config.json).
    posterior: str | None = None  # vaelab.models.POSTERIORS: point | gaussian | gaussian2 | vq
    prior: str | None = None  # vaelab.models.PRIORS: none | normal | conditional (learned p(z|y)) | vamp | ...
    objective: str | None = None  # vaelab.models.objectives.OBJECTIVES: recon | elbo | iwae | ...
    condition: str | None = None  # feed the label to encoder and decoder: none | onehot | embedding
    condition_dim: int = 16  # width of the learned label embedding (condition=embedding)
    input_shape: list[int] | None = None  # (C, H, W); filled in from the data when None
    latent_dim: int = 20
    # What only one body reads is that body's option (vaelab.models.bodies: model.mlp.hidden,
    # model.conv.channels, ...; the old flat names model.hidden, model.channels are aliases).
    # These fields every body reads (activation, leaky_slope, init, the output activation),
    # or the label predictor and the posterior heads do.
    activation: str = "relu"
    leaky_slope: float = 0.2  # negative slope of leaky_relu in the bodies (PyTorch's nn.LeakyReLU default: 0.01)
    decoder_activation: str | None = None  # default: activation
    latent_activation: str | None = None  # ae only, e.g. "tanh"
    output_activation: str = "sigmoid"  # sigmoid for [0,1] data, tanh for [-1,1]
    loss: str = "bce"  # the likelihood, a key of vaelab.models.LIKELIHOODS: bce | mse | euclidean
    # Denoising: corrupt the encoder's input while training (gaussian: noise of std level;
    # salt_pepper: a fraction level of pixels set to 0 or 1; mask: a fraction level set to 0)
    corrupt: str = "none"
    corrupt_level: float = 0.0
    # Sparse codes: sparsity_weight times an L1 penalty on the code (l1), or the KL between a
    # target activation rate and each dimension's mean activation over the batch (kl: codes in (0, 1))
    sparsity: str = "none"
    sparsity_weight: float = 0.0
    sparsity_target: float = 0.05
    # Weight init: "torch" (PyTorch's defaults) or "glorot" (Keras's defaults: Glorot-uniform
    # weights, zero biases). The Keras conv VAE needs "glorot": with PyTorch's smaller
    # default weights its Dense-16 bottleneck dies and the posterior collapses (KL ~ 0).
    init: str = "torch"
    # Label predictor on the latent mean (an MLP), trained jointly: the loss gains
    # predictor_weight * cross-entropy per image, which organises the latent space by
    # label (and lets `vaelab steer` move codes towards a class). 0 = no predictor.
    predictor_weight: float = 0.0
    predictor_hidden: list[int] = field(default_factory=lambda: [64, 64])  # its hidden widths
    num_classes: int | None = None  # predictor outputs; filled in from the data labels when None
    # The options of the chosen parts that declare their own (vaelab.models.options): part name ->
    # its options (a dict as read; the part's dataclass once the config is built). Written and
    # read as sections of the model section: --set model.iwae.k=50, YAML ``model: {iwae: {k: 50}}``,
    # config.json the same. As read it may also hold old flat names of part options (model.k),
    # which vaelab.models.resolve_model moves into their part's section.
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Only what needs no part: the parts (names, their options, which go together) are
        # checked by vaelab.models.resolve_model when the config is built (vaelab.configure).
        _coerce(self, "model")
        _check(self.condition in (None, "none", "onehot", "embedding"),
               f"model.condition must be none, onehot or embedding, got {self.condition!r}")
        _check(self.latent_dim >= 1, f"model.latent_dim must be at least 1, got {self.latent_dim}")
        _check(self.condition_dim >= 1, f"model.condition_dim must be at least 1, got {self.condition_dim}")
        _check(self.output_activation in OUTPUT_ACTIVATIONS,
               f"model.output_activation must be one of {', '.join(OUTPUT_ACTIVATIONS)}, "
               f"got {self.output_activation!r}")
        for name in ("activation", "decoder_activation", "latent_activation"):
            value = getattr(self, name)
            _check(value is None or value in ACTIVATIONS,
                   f"model.{name} must be one of {', '.join(ACTIVATIONS)}, got {value!r}")
        _check(self.corrupt in ("none", "gaussian", "salt_pepper", "mask"),
               f"model.corrupt must be none, gaussian, salt_pepper or mask, got {self.corrupt!r}")
        _check(self.corrupt_level >= 0 and (self.corrupt in ("none", "gaussian") or self.corrupt_level <= 1),
               f"model.corrupt_level must be >= 0 (a fraction <= 1 for {self.corrupt}), got {self.corrupt_level}")
        _check(self.corrupt == "none" or self.corrupt_level > 0,
               f"model.corrupt={self.corrupt} with model.corrupt_level=0 corrupts nothing; give model.corrupt_level "
               "(e.g. 0.25), or leave model.corrupt out")
        _check(self.sparsity in ("none", "l1", "kl"), f"model.sparsity must be none, l1 or kl, got {self.sparsity!r}")
        _check(self.sparsity_weight >= 0, f"model.sparsity_weight must be >= 0, got {self.sparsity_weight}")
        _check(0 < self.sparsity_target < 1, f"model.sparsity_target must be in (0, 1), got {self.sparsity_target}")
        if self.sparsity == "kl":
            _check(self.latent_activation == "sigmoid", "model.sparsity=kl compares activation rates and needs codes "
                   "in (0, 1): set model.latent_activation=sigmoid")
        _check(self.sparsity == "none" or self.sparsity_weight > 0,
               f"model.sparsity={self.sparsity} with model.sparsity_weight=0 adds no penalty; give "
               "model.sparsity_weight (e.g. 1.0), or leave model.sparsity out")
        _check(self.init in ("torch", "glorot"), f"model.init must be 'torch' or 'glorot', got {self.init!r}")
        _check(math.isfinite(self.leaky_slope) and self.leaky_slope >= 0,
               f"model.leaky_slope must be >= 0, got {self.leaky_slope}")
        if self.input_shape is not None:
            _check(len(self.input_shape) == 3 and all(s > 0 for s in self.input_shape),
                   f"model.input_shape must be (C, H, W), got {self.input_shape}")
        _check(math.isfinite(self.predictor_weight) and self.predictor_weight >= 0,
               f"model.predictor_weight must be >= 0 (0 = no label predictor), got {self.predictor_weight}")
        _check(len(self.predictor_hidden) >= 1 and all(h > 0 for h in self.predictor_hidden),
               f"model.predictor_hidden must be one or more positive widths, got {self.predictor_hidden}")
        _check(self.num_classes is None or self.num_classes >= 2,
               f"model.num_classes must be at least 2, got {self.num_classes}")

    def __setattr__(self, name: str, value: Any) -> None:
        # Setting a name that is no field would be ignored silently (model.beta is now a part's option).
        if name not in _hints(ModelConfig):
            raise AttributeError(f"ModelConfig has no field {name!r}; a part's options are set in its section, "
                                 f"cfg.options[PART] (model.PART.{name})")
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str):
        # Only for names that are no field: an option that a part now owns (model.beta was one).
        if name.startswith("__") or name == "options":
            raise AttributeError(name)
        raise AttributeError(f"ModelConfig has no field {name!r}; a part's options are read as "
                             f"cfg.opts(PART).{name} (the config's section model.PART)")

    def opts(self, part: str):
        """The options of the chosen part ``part`` (its dataclass, defaults filled in)."""
        value = self.options.get(part)
        if value is None or isinstance(value, dict):
            raise ConfigError(f"model.{part}: no options of a chosen part of this config"
                              + (" (the config is not resolved: build it with vaelab.configure.build_config or "
                                 "vaelab.models.resolve_model)" if isinstance(value, dict) else ""))
        return value

    @property
    def uses_labels(self) -> bool:
        """Training needs the images' labels: a conditional model, or a label predictor."""
        return self.condition != "none" or self.predictor_weight > 0


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    # Adam's epsilon. PyTorch's default is 1e-8; the Keras presets use Keras's 1e-7.
    adam_eps: float = 1e-8
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    # Learning rate per epoch: "constant"; "cosine" (from lr down to 0 over the epochs, per
    # step); "iwae" (Burda et al. 2016: lr * 10^(-i/7) for stage i of 3^i epochs, i = 0, 1, ...);
    # "exponential" (lr * lr_gamma^(epoch - 1): PyTorch's ExponentialLR stepped once per epoch);
    # "onecycle" (per step: up from lr / 25 to lr over 30% of the steps, then down to lr / 25e4).
    lr_schedule: str = "constant"
    lr_gamma: float = 0.95  # the exponential schedule's factor per epoch
    seed: int = 1
    kl_warmup_epochs: float = 0.0  # KL weight ramps from 0 to beta over this many epochs (sets model.elbo.kl_warmup)
    grad_clip: float | None = None  # max global gradient norm
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch CPU threads (default: all cores)
    eval_batch_size: int = 1000
    progress: bool = True
    # Arithmetic while training: "fp32"; "mixed" (fp32 weights, optimizer and losses; the
    # forward pass under bf16 autocast on CPU, TF32 matmuls/convolutions on CUDA); "auto" =
    # mixed where the hardware does it natively (AVX512-BF16/AMX CPUs, CUDA), else fp32.
    # Evaluation always runs in full fp32.
    precision: str = "auto"

    def __post_init__(self) -> None:
        _coerce(self, "train")
        # 0 epochs would evaluate and draw an untrained model and save no weights to load it by.
        _check(self.epochs >= 1, f"train.epochs must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        _check(self.lr > 0, f"train.lr must be positive, got {self.lr}")
        _check(self.weight_decay >= 0, "train.weight_decay must be >= 0")
        _check(self.adam_eps > 0, f"train.adam_eps must be positive, got {self.adam_eps}")
        for name in ("adam_beta1", "adam_beta2"):
            _check(0 <= getattr(self, name) < 1, f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        _check(self.lr_schedule in LR_SCHEDULES,
               f"train.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        _check(0 < self.lr_gamma <= 1, f"train.lr_gamma must be in (0, 1], got {self.lr_gamma}")
        _check(self.kl_warmup_epochs >= 0, "train.kl_warmup_epochs must be >= 0")
        _check(self.grad_clip is None or self.grad_clip > 0, "train.grad_clip must be positive")
        _check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
               f"train.device must be auto, cpu or cuda[:N], got {self.device!r}")
        _check(self.threads is None or self.threads >= 1, "train.threads must be >= 1")
        _check(self.precision in ("auto", "fp32", "mixed"),
               f"train.precision must be auto, fp32 or mixed, got {self.precision!r}")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str | None = None

    def copy(self) -> RunConfig:
        return copy.deepcopy(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"].update(d["model"].pop("options"))  # each part's options: a section of model
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """The dataclasses of a mapping, as read: parts not yet filled in or checked, part
        options as plain mappings. A run's config is built with ``vaelab.configure``
        (``config_from_dict``, ``build_config``), which checks it with the parts."""
        if not isinstance(d, dict):
            raise ConfigError("a config must be a mapping with keys data, model, train")
        unknown = set(d) - {"data", "model", "train", "preset"}
        if unknown:
            raise ConfigError(f"unknown config section(s) {sorted(unknown)}; expected data, model, train")
        return cls(
            data=_build(DataConfig, d.get("data") or {}, "data"),
            model=_build(ModelConfig, d.get("model") or {}, "model"),
            train=_build(TrainConfig, d.get("train") or {}, "train"),
            preset=d.get("preset"),
        )


# ---------------------------------------------------------------- options the chosen parts read

def unused_options(config: RunConfig, parts: dict[str, str] | None = None) -> dict[str, str]:
    """The options the chosen parts of ``config`` do not read: "section.field" -> why, in words.

    One table, next to the fields it names (a part that starts reading a field edits it
    here). Sampling tools read a model's prior, so model.prior is never listed. The options a
    part owns (model.PART.OPTION) are not here: a section of a part the config does not use
    is refused when the config is built (vaelab.models.options), and so is an old flat name
    of one (``model.k`` on an elbo, ``model.channels`` on an mlp body), as is
    train.kl_warmup_epochs for an objective with no KL weight (vaelab.configure). The model
    fields a part declares it reads (``PointPosterior.reads``: the code's activation) come in as ``parts``
    (``vaelab.models.unread_fields``; ``vaelab.configure.unused_options`` passes them)."""
    d, m, t = config.data, config.model, config.train
    out: dict[str, str] = {}

    def rule(keys: str, used: bool, why: str) -> None:
        if not used:
            out.update(dict.fromkeys(keys.split(), why))

    rule("data.path", d.name in PATH_SOURCES, f"data.name={d.name} reads data.data_dir")
    rule("data.data_dir", d.name in DATA_DIR_SOURCES, f"data.name={d.name} reads data.path")
    rule(" ".join(f"data.{f}" for f, _ in FOLDER_OPTIONS), d.name == "folder",
         f"it applies to image folders (data.name=folder), and data.name is {d.name}")
    rule("data.download", d.name in DOWNLOADED, f"only {' and '.join(DOWNLOADED)} are downloaded")
    rule("data.in_memory", d.name not in DOWNLOADED + ("npz",), f"data.name={d.name} is always read into memory")
    rule("data.val", not (d.val == "test" and d.name in ("npz", "dsprites")),
         f"data.name={d.name} has no test split; give a fraction such as 0.1, or none")
    rule("model.condition_dim", m.condition == "embedding",
         f"it is the width of a label embedding (model.condition=embedding), and model.condition is {m.condition}")
    rule("model.predictor_hidden", m.predictor_weight > 0, "there is no label predictor (model.predictor_weight=0)")
    rule("model.num_classes", m.uses_labels, "the model uses no labels (no condition, no predictor)")
    rule("model.corrupt_level", m.corrupt != "none", "model.corrupt is none")
    rule("model.sparsity_weight", m.sparsity != "none", "model.sparsity is none")
    rule("model.sparsity_target", m.sparsity == "kl", f"it is for model.sparsity=kl, and model.sparsity is {m.sparsity}")
    rule("model.leaky_slope", "leaky_relu" in (m.activation, m.decoder_activation),
         "no activation is leaky_relu")
    rule("train.lr_gamma", t.lr_schedule == "exponential",
         f"it is the exponential schedule's factor, and train.lr_schedule is {t.lr_schedule}")
    out.update(parts or {})
    return out


def _default(section: str, name: str) -> Any:
    f = next(f for f in dataclasses.fields(_SECTIONS[section]) if f.name == name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def check_options_used(config: RunConfig, explicit: set[str] | frozenset[str] = frozenset(),
                       parts: dict[str, str] | None = None) -> None:
    """Refuse an option the chosen parts do not read (``unused_options``): when it differs
    from its default, or, even at its default, when it is in ``explicit`` (the keys a user
    set: CLI flags, --set, a YAML file), instead of training with it silently ignored. An
    explicit null clears an option (a preset's data.image_size=64 for an npz, say): no error."""
    config.data.check_used()  # the data options, with their own messages
    for key, why in unused_options(config, parts).items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if (key in explicit and value is not None) or value != typed_value(section, name, _default(section, name)):
            shown = "null" if value is None else str(value).lower() if isinstance(value, bool) else value
            raise ConfigError(f"{key}={shown} is not used: {why}; leave it out")


def _keys(d: dict | None) -> set[str]:
    """"section.field" for every field a nested config dict sets."""
    return {f"{s}.{k}" for s, v in (d or {}).items() if isinstance(v, dict) for k in v}


def explicit_keys(extra: dict | None = None, overrides: list[str] | None = None) -> set[str]:
    """The "section.field" keys that typed values (``extra``) and dotted overrides set."""
    return _keys(extra) | {".".join(parse_override(o)[:2]) for o in overrides or []}


def _build(cls, values: dict, section: str):
    if not isinstance(values, dict):
        raise ConfigError(f"config section {section!r} must be a mapping")
    names = {f.name for f in dataclasses.fields(cls)}
    if cls is ModelConfig:
        # A name that is no field: a mapping is the options of a part; anything else an old flat
        # name of a part's option (model.k), which vaelab.models.resolve_model moves into its
        # part's section (or refuses: a typo, or an option of a part this config does not use).
        sections = {k: v for k, v in values.items() if k not in names}
        values = {k: v for k, v in values.items() if k not in sections}
        values["options"] = merge(dict(values.get("options") or {}), sections)
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown {section} option(s) {sorted(unknown)}; valid: {sorted(names)}")
    try:
        return cls(**values)
    except TypeError as e:  # e.g. a list where a number belongs
        raise ConfigError(f"bad value in config section {section!r}: {e}") from None


# ---------------------------------------------------------------- presets and overrides

def preset_names() -> list[str]:
    root = resources.files("vaelab") / "presets"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    text = (resources.files("vaelab") / "presets" / f"{name}.yaml").read_text()
    d = yaml.safe_load(text) or {}
    d["preset"] = name
    return d


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"config file {path} must hold a mapping with keys data, model, train")
    return d


def merge(base: dict, update: dict) -> dict:
    """Deep-merge ``update`` into a copy of ``base``."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


@functools.cache
def _hints(cls) -> dict[str, Any]:
    """The resolved annotations of a config class (resolving them is slow; configs are built often)."""
    return typing.get_type_hints(cls)


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse ``section.field=value``; the value is read as YAML (``16``, ``[32, 64]``, ``null``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.field=value, e.g. model.latent_dim=16")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) == 3 and parts[0] == "model" and all(parts):  # model.<part>.<option>: a part's own option
        value = _yaml_value(raw)
        if isinstance(value, str) and "," in value:
            value = [yaml.safe_load(v) for v in value.split(",") if v.strip()]
        return "model", f"{parts[1]}.{parts[2]}", value
    if len(parts) != 2 or parts[0] not in _SECTIONS:
        raise ConfigError(f"override key {key!r} must be data.X, model.X, train.X or model.PART.X")
    section, name = parts
    names = {f.name: f for f in dataclasses.fields(_SECTIONS[section])}
    value = _yaml_value(raw)
    if name not in names and section == "model" and name != "options":
        # An old flat name of a part's option (model.k), or a typo: the parts judge when the
        # config is built (vaelab.models.resolve_model). Comma lists read as lists.
        if isinstance(value, str) and "," in value:
            value = [yaml.safe_load(v) for v in value.split(",") if v.strip()]
        return section, name, value
    if name not in names:
        raise ConfigError(f"unknown option {key!r}; valid {section} options: {', '.join(sorted(names))}")
    # List fields also take comma lists (model.predictor_hidden=64,32) and single numbers
    # (data.classes=3), except those that accept a plain int too.
    hint = str(_hints(_SECTIONS[section])[name])
    if hint.startswith("list"):
        if isinstance(value, str) and "," in value:
            value = [yaml.safe_load(v) for v in value.split(",") if v.strip()]
        elif isinstance(value, (int, float)) and "| int" not in hint:
            value = [value]
    return section, name, value


def _yaml_value(raw: str) -> Any:
    """An override's value as YAML reads it (numbers, true/false, null, [lists]), except that a
    text starting with # is the text (a colour such as #808080), where YAML would read a comment
    and give None."""
    if raw.lstrip().startswith("#"):
        return raw.strip()
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def typed_value(section: str, name: str, value: Any) -> Any:
    """``value`` converted to the type of ``section.name`` (``"1e-3"`` -> 0.001 for a float field)."""
    if value is None or (section == "model" and name not in _hints(ModelConfig)):  # a part's option: its part types it
        return value
    hint = _hints(_SECTIONS[section])[name]
    kind = (hint.__name__ if isinstance(hint, type) else str(hint)).replace(" | None", "")
    try:
        return _convert(value, kind)
    except (TypeError, ValueError):
        what = kind.replace("list[int | str]", "a list of labels or class names").replace("list[int]", "a list of ints")
        raise ConfigError(f"{section}.{name} must be {what}, "
                          f"got {value!r}") from None


def nested(name: str, value: Any) -> dict[str, Any]:
    """``{"a": {"b": value}}`` for the dotted name "a.b" (a part's option), ``{name: value}`` otherwise."""
    head, _, rest = name.partition(".")
    return {head: nested(rest, value)} if rest else {name: value}


MAX_SEED = 2**32 - 1  # the largest seed numpy and scikit-learn take (a GMM's or t-SNE's random_state)


def is_whole(value) -> bool:
    """Whether ``value`` is a whole number (a Python or numpy int), and not a bool: what counts,
    sizes and seeds given in Python must be (True would pass for 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def flatten(d: dict, sep: str, prefix: str = "", lists: bool = False) -> dict:
    """Nested dicts as one level (``nested``'s inverse): {"a": {"b": 1}} -> {"a<sep>b": 1}; with
    ``lists``, lists too ({"kl_per_dim": [0.1, 0.2]} -> {"kl_per_dim<sep>0": 0.1, ...})."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if lists and isinstance(v, (list, tuple)):
            v = {str(i): x for i, x in enumerate(v)}
        if isinstance(v, dict):
            out.update(flatten(v, sep, key, lists))
        else:
            out[key] = v
    return out


def apply_overrides(d: dict[str, Any], extra: dict | None = None, overrides: list[str] | None = None) -> dict:
    """Merge typed values (``extra``, e.g. CLI flags), then dotted ``section.field=value`` texts.

    A data.path given here without a data.name replaces the source of ``d`` (a preset's
    mnist, say) by the one the path names (``source_of``), instead of being ignored."""
    update: dict[str, Any] = dict(extra or {})
    for text in overrides or []:
        section, name, value = parse_override(text)
        update = merge(update, {section: nested(name, value)})
    data = update.get("data") or {}
    if data.get("path") is not None and "name" not in data and isinstance(d.get("data"), dict):
        d = {**d, "data": {k: v for k, v in d["data"].items() if k != "name"}}
    return merge(d, update)


__all__ = ["DataConfig", "ModelConfig", "RunConfig", "TrainConfig", "apply_overrides", "check_options_used",
           "explicit_keys", "flatten", "is_whole", "load_preset", "load_yaml", "merge", "parse_override", "preset_names", "source_of",
           "typed_value", "unused_options"]

# Names that moved to vaelab.configure (building a config needs the model registries, which
# this module must not import); the old path works for one release, with a DeprecationWarning.
_MOVED = {"build_config": "vaelab.configure"}


def __getattr__(name: str):
    from vaelab._deprecated import moved_name

    return moved_name(__name__, name, _MOVED)
