"""The one configuration of rfgan: a frozen, nested dataclass with every default, named presets, validation and
(de)serialisation. The CLI, the Ray Train worker and the Tune search space are all derived from it; `resolve` is
how a command line (`rfgan train`, `rfgan tune`) becomes one, and `flatten` / `Config.get` / `Config.with_overrides`
are the one way to address a field by its dotted key ("loss.lambda_adv").

Every value is checked when a Config is built (including by `dataclasses.replace`), so an impossible config can
not exist; unknown keys in a file or an override are errors that list the valid keys.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rfgan import parse
from rfgan.errors import ConfigError, UsageError

# The valid values of the loss settings live here, with the config that is checked against them, so that reading a
# config needs no torch: rfgan.gan.losses implements exactly these.
ADV_KINDS: tuple[str, ...] = ("nonsaturating", "minimax", "lsgan")
PIXEL_KINDS: tuple[str, ...] = ("l1", "mse")
VGG_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
# How RF maps are scaled in the generator input (rfgan.data.rf.rf_maps), the nets (rfgan.gan.build), their
# normalisation layers and weight inits (rfgan.gan.models) and what a conditional D sees of the input
# (rfgan.gan.build.GAN.condition).
RF_NORMS: tuple[str, ...] = ("peak", "sum", "sum_full", "point")
GENERATORS: tuple[str, ...] = ("unet", "reference")
DISCRIMINATORS: tuple[str, ...] = ("patch", "reference")
NORM_KINDS: tuple[str, ...] = ("batch", "instance", "none")
INIT_KINDS: tuple[str, ...] = ("dcgan", "original", "default")
D_CONDITIONS: tuple[str, ...] = ("mean", "input")
# model.rf_layer: the electrodes' maps in G's input, the table's ("fixed") or learned (rfgan.gan.learned_rf).
RF_LAYERS: tuple[str, ...] = ("fixed", "gaussian", "map")
# optim.precision (rfgan.gan.build.autocast_dtype).
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")
# Deeper layers weigh more: their activations are smaller and more semantic (the reference's weights).
REFERENCE_VGG_WEIGHTS: tuple[float, ...] = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class DataConfig:
    path: str | None = None  # dataset directory; None = the built-in synthetic dataset
    with_noise: bool = False  # one extra generator input channel of Gaussian noise (the reference "withNoise")
    sum_per_area: bool = False  # one input channel per area (V1/V4/IT) instead of per electrode
    standardize: bool = True  # z-score each electrode with the training split's mean/std (False: raw responses)
    # RF maps in the generator input: "peak" at 1; "sum" to 1 over the image; "sum_full" to 1 over the whole visual
    # field (the originals: normalised before the crop); "point": one pixel at the RF centre, electrodes of a channel
    # on one pixel averaged (MonkeySee)
    rf_norm: str = "peak"
    # The RF mask: D, VGG and pixel losses, validation and checkpoint ranking see output and target only inside it
    mask: bool = False
    mask_radius_sigmas: float = 1.0  # mask radius in map sigmas, for RF tables without a mask_radius_deg column

    def __post_init__(self) -> None:
        _require(self.rf_norm in RF_NORMS, f"data.rf_norm must be one of {RF_NORMS}, not {self.rf_norm!r}")
        _require(self.mask_radius_sigmas > 0, "data.mask_radius_sigmas must be > 0")


@dataclass(frozen=True)
class ModelConfig:
    generator: str = "unet"  # "unet" (pix2pix) or "reference" (SegNet encoder–decoder)
    discriminator: str = "patch"  # "patch" (PatchGAN) or "reference" (DCGAN)
    ngf: int = 64  # U-Net base width
    n_down: int = 5  # U-Net depth: image sides must be divisible by 2**n_down
    g_widths: tuple[int, ...] = (64, 128, 256, 512, 512)  # reference G block widths
    g_convs_per_block: tuple[int, ...] = (2, 2, 3, 3, 3)
    n_res: int = 5  # reference G residual blocks in the bottleneck
    dropout: float = 0.5
    norm: str = "batch"  # U-Net and PatchGAN normalisation: "batch", "instance" or "none"
    ndf: int = 64  # D base width
    d_layers: int = 3  # PatchGAN depth (3 = 70×70 patches)
    conditional_d: bool = False  # D also sees the RF input (cGAN); PatchGAN only
    d_condition: str = "mean"  # what a conditional D sees: "mean" of the response channels, or the "input" stack
    init: str = "dcgan"  # "dcgan", "original" (conv biases at PyTorch's default) or "default" (PyTorch's init)
    init_std: float = 0.02  # N(0, init_std) conv weights for the "dcgan" and "original" inits
    # G corrects a linear read-out: a ridge decoder of the responses, fitted on the training split before training,
    # is the base image and the CNN's output is added to it (rfgan.gan.linear_base); per-electrode input only.
    linear_base: bool = False
    # The maps in G's input: "fixed" from the RF table (the originals), or learned with G from it: "gaussian"
    # (centre and size), "map" (a free rf_map_resolution² field per electrode, with smoothness and sparsity penalties
    # of these weights in G's loss); rfgan.gan.learned_rf.
    rf_layer: str = "fixed"
    rf_map_resolution: int = 24
    rf_map_smooth: float = 1.0
    rf_map_sparse: float = 0.1

    def __post_init__(self) -> None:
        _require(self.rf_layer in RF_LAYERS, f"model.rf_layer must be one of {RF_LAYERS}, not {self.rf_layer!r}")
        _require(self.rf_map_resolution >= 2, "model.rf_map_resolution must be >= 2")
        _require(min(self.rf_map_smooth, self.rf_map_sparse) >= 0, "model.rf_map_smooth and rf_map_sparse must be >= 0")
        _require(self.generator in GENERATORS, f"model.generator must be one of {GENERATORS}, not {self.generator!r}")
        _require(
            self.discriminator in DISCRIMINATORS,
            f"model.discriminator must be one of {DISCRIMINATORS}, not {self.discriminator!r}",
        )
        _require(self.norm in NORM_KINDS, f"model.norm must be one of {NORM_KINDS}, not {self.norm!r}")
        _require(min(self.ngf, self.ndf, self.n_down, self.d_layers) >= 1, "model widths and depths must be >= 1")
        _require(
            len(self.g_widths) == len(self.g_convs_per_block) and len(self.g_widths) >= 1,
            "model.g_widths and model.g_convs_per_block must have the same, non-zero length",
        )
        _require(
            min(self.g_widths) >= 1 and min(self.g_convs_per_block) >= 1 and self.n_res >= 0,
            f"model.g_widths {list(self.g_widths)} and model.g_convs_per_block {list(self.g_convs_per_block)} must "
            f"be >= 1 each, and model.n_res >= 0",
        )
        _require(0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)")
        _require(self.init in INIT_KINDS, f"model.init must be one of {INIT_KINDS}, not {self.init!r}")
        _require(
            self.d_condition in D_CONDITIONS,
            f"model.d_condition must be one of {D_CONDITIONS}, not {self.d_condition!r}",
        )
        _require(self.init_std > 0, "model.init_std must be > 0")
        _require(
            not (self.conditional_d and self.discriminator == "reference"),
            "model.conditional_d needs model.discriminator='patch' (the reference D is unconditional)",
        )

    def size_divisor(self) -> int:
        """Image sides must be a multiple of this for the generator's down/up-sampling to round-trip: the reference
        G unpools to the encoder's sizes, so any side round-trips (240 px included)."""
        return 2**self.n_down if self.generator == "unet" else 1

    def min_image_size(self) -> int:
        """The smallest image side the generator takes."""
        return 2 ** (self.n_down if self.generator == "unet" else len(self.g_widths))


@dataclass(frozen=True)
class LossConfig:
    adversarial: str = "nonsaturating"  # or "minimax", "lsgan"
    lambda_adv: float = 1.0  # 0 = no discriminator at all: the non-adversarial (RFmasked) model
    lambda_vgg: float = 1.0
    lambda_pix: float = 10.0
    pixel: str = "l1"  # or "mse"
    lambda_ssim: float = 0.0  # weight of 1 - SSIM (on luma, as rfgan eval measures it) in G's loss
    vgg_weights: str | None = None  # VGG19 weights file; None = torchvision's file in the torch hub cache
    vgg_random_init: bool = False  # random VGG features (tests, offline demos): not a perceptual loss
    vgg_imagenet_norm: bool = False  # the reference fed [0, 1] images to VGG without ImageNet normalisation
    vgg_layer_weights: tuple[float, ...] = REFERENCE_VGG_WEIGHTS  # relu1_1 … relu5_1

    def __post_init__(self) -> None:
        _require(
            self.adversarial in ADV_KINDS, f"loss.adversarial must be one of {ADV_KINDS}, not {self.adversarial!r}"
        )
        _require(self.pixel in PIXEL_KINDS, f"loss.pixel must be one of {PIXEL_KINDS}, not {self.pixel!r}")
        for name in ("lambda_adv", "lambda_vgg", "lambda_pix", "lambda_ssim"):
            _require(getattr(self, name) >= 0, f"loss.{name} must be >= 0, got {getattr(self, name)}")
        _require(
            self.lambda_adv + self.lambda_vgg + self.lambda_pix + self.lambda_ssim > 0,
            "at least one loss weight must be > 0",
        )
        _require(len(self.vgg_layer_weights) == 5, "loss.vgg_layer_weights needs 5 values (relu1_1 … relu5_1)")


@dataclass(frozen=True)
class OptimConfig:
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    # Learned RF layers' parameters (model.rf_layer): centre offsets in fitted sigmas and log sizes, or map fields
    # peaking at 1; they need larger steps than the nets' weights to move by a sigma within a run.
    lr_rf: float = 1e-2
    beta1: float = 0.5
    beta2: float = 0.999
    batch_size: int = 64  # global: split across workers
    d_steps: int = 1  # D updates per G update
    # Exact reproduction: G runs again for its own update after D's (the originals' order: a fresh dropout draw, and
    # BatchNorm statistics updated twice per step). Off: one G forward serves both, the same objective, faster.
    second_g_forward: bool = False
    # Autocast of the forward passes: "bf16", "fp32", or "auto": bf16 where the device multiplies bf16 matrices in
    # hardware (a CUDA GPU that supports it; a CPU with AMX tiles), fp32 elsewhere, where emulated bf16 is slower.
    # Weights, optimizer state and losses stay fp32 either way (mixed precision, not a bf16 model).
    precision: str = "auto"

    def __post_init__(self) -> None:
        _require(self.lr_g > 0 and self.lr_d > 0, "optim.lr_g and optim.lr_d must be > 0")
        _require(self.lr_rf > 0, "optim.lr_rf must be > 0")
        _require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "optim.beta1 and optim.beta2 must be in [0, 1)")
        _require(self.batch_size >= 1, "optim.batch_size must be >= 1")
        _require(self.d_steps >= 1, "optim.d_steps must be >= 1")
        _require(self.precision in PRECISIONS, f"optim.precision must be one of {list(PRECISIONS)}")


@dataclass(frozen=True)
class RunConfig:
    epochs: int = 20
    seed: int = 0
    workers: int = 1  # Ray Train workers (one GPU each with use_gpu)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0  # leave CPUs over for Ray Data's read tasks
    gpus_per_worker: float = 1.0  # with use_gpu; fractions let one-worker runs (sweep trials) share a GPU
    # Restarts of the worker group from the last checkpoint, in two budgets as Ray Train keeps them: max_failures for
    # crashes and nodes lost without notice; max_preemption_failures for nodes that the cloud drained as preempted
    # (spot), unlimited by default since each restart keeps the epochs done. -1: unlimited.
    max_failures: int = 3
    max_preemption_failures: int = -1
    keep_checkpoints: int = 3  # best N by validation SSIM
    log_every: int = 50  # steps between progress lines

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "run.epochs must be >= 1")
        # NumPy's generators, which seed the shuffles, take 32-bit seeds; a larger one fails only inside a worker.
        _require(0 <= self.seed < 2**32, f"run.seed must be in [0, 2**32), got {self.seed}")
        _require(self.workers >= 1, "run.workers must be >= 1")
        _require(self.cpus_per_worker > 0, "run.cpus_per_worker must be > 0")
        _require(self.gpus_per_worker > 0, "run.gpus_per_worker must be > 0")
        # Ray packs fractional GPU workers of one run onto one device, and NCCL refuses two ranks on one GPU
        # ("Duplicate GPU detected") once training starts.
        _require(
            not (self.use_gpu and self.gpus_per_worker < 1 and self.workers > 1),
            f"run.gpus_per_worker={self.gpus_per_worker:g} with run.workers={self.workers}: the workers of one run "
            "would share a GPU, which NCCL refuses; use run.gpus_per_worker=1, or run.workers=1 to share GPUs "
            "between runs",
        )
        _require(self.max_failures >= -1, "run.max_failures must be >= 0 (or -1 for unlimited)")
        _require(self.max_preemption_failures >= -1, "run.max_preemption_failures must be >= 0 (or -1 for unlimited)")
        _require(self.keep_checkpoints >= 1, "run.keep_checkpoints must be >= 1")
        _require(self.log_every >= 1, "run.log_every must be >= 1")


@dataclass(frozen=True)
class PerfConfig:
    """How fast, never what: each switch leaves the maths as it is (fp32 on the same batch gives the same outputs,
    losses and gradients to rounding; tests/gan/test_fast_path.py), so `rfgan bench` can show what each buys."""

    compact_input: bool = True  # the generator's first layer reads (B, E) responses, never the B×E×H×W stack
    channels_last: bool = False  # NHWC nets and images: faster convs with bf16 on recent GPUs
    cudnn_benchmark: bool = True  # on CUDA: let cuDNN pick the fastest kernels for the (fixed) shapes
    fused_adam: bool = True  # on CUDA: Adam's fused multi-tensor kernel
    prefetch_batches: int = 2  # batches Ray Data prepares ahead of the step, per worker
    # A worker keeps its shard (as read: uint8 images) after the first epoch when it fits in this many MB, and
    # shuffles it in memory in later epochs instead of streaming it from Parquet again (rfgan/run/shard_cache.py).
    # This one changes which rows form a batch (a full permutation of the shard, not a 4-batch shuffle window);
    # 0 streams every epoch.
    cache_shard_mb: int = 2048
    # A training split at most this many MB as read, whose share per worker also fits cache_shard_mb, is read once
    # by the driver and handed to the workers through Ray's object store: each keeps its share in memory from the
    # first epoch on, and no Ray Data job starts (its actors and read tasks are most of a small run's start-up).
    # A larger split streams through Ray Data. 0 always streams.
    driver_read_mb: int = 512

    def __post_init__(self) -> None:
        _require(self.prefetch_batches >= 0, "perf.prefetch_batches must be >= 0")
        _require(self.driver_read_mb >= 0, "perf.driver_read_mb must be >= 0 (0 streams through Ray Data always)")
        _require(self.cache_shard_mb >= 0, "perf.cache_shard_mb must be >= 0 (0 streams the shard every epoch)")


def _check_sections(cfg: Config) -> None:
    """Checks that span sections."""
    if cfg.model.rf_layer != "fixed":
        _require(
            cfg.perf.compact_input,
            f"model.rf_layer={cfg.model.rf_layer} needs perf.compact_input=true (the learned maps replace the fixed "
            "ones in the compact input)",
        )
        _require(
            cfg.data.rf_norm != "point",
            f"model.rf_layer={cfg.model.rf_layer} needs Gaussian maps to start from, not data.rf_norm=point",
        )
    _require(
        not (cfg.model.linear_base and cfg.data.sum_per_area),
        "model.linear_base needs one input channel per electrode (data.sum_per_area=false): its read-out takes the "
        "responses themselves",
    )


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    preset: str = "default"  # the preset this config started from (provenance only)

    def __post_init__(self) -> None:
        _check_sections(self)

    @property
    def adversarial(self) -> bool:
        return self.loss.lambda_adv > 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Config:
        return _build(cls, _nest(flatten(d)) if isinstance(d, Mapping) else d, "")

    def get(self, key: str) -> Any:
        """One field by its dotted key, e.g. "loss.lambda_adv"."""
        flat = flatten(self.to_dict())
        if key not in flat:
            raise _unknown_key(key, flat)
        return flat[key]

    def changes_from(self, base: Config) -> dict[str, Any]:
        """The dotted keys whose values differ from `base`'s, with this config's values."""
        mine, theirs = flatten(self.to_dict()), flatten(base.to_dict())
        return {k: v for k, v in mine.items() if theirs.get(k) != v}

    def with_overrides(self, overrides: Mapping[str, Any]) -> Config:
        """Apply dotted-key overrides, e.g. {"loss.lambda_adv": 0.5, "optim.lr_g": 1e-4}."""
        flat = flatten(self.to_dict())
        for key, value in flatten(overrides).items():
            if key not in flat:
                raise _unknown_key(key, flat)
            flat[key] = value
        return Config.from_dict(_nest(flat))


def flatten(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A nested mapping as dotted keys: {"loss": {"lambda_adv": 1.0}} → {"loss.lambda_adv": 1.0}. Keys that are
    dotted already stay as they are, so a mix of both flattens too."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{k}": v for k, v in flatten(value).items()})
        else:
            flat[key] = value
    return flat


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _unknown_key(key: str, valid: Mapping[str, Any]) -> ConfigError:
    """The error for a dotted key that is not a config field: it names the first unknown part, and the valid keys
    where the known part ends."""
    if any(k.startswith(key + ".") for k in valid):
        return ConfigError(
            f"config key {key!r} is a section: set its fields, e.g. "
            f"{next(k for k in valid if k.startswith(key + '.'))!r}"
        )
    parts = key.split(".")
    for i in range(1, len(parts)):
        section = ".".join(parts[:i])
        if not any(k.startswith(section + ".") for k in valid):
            return ConfigError(f"unknown config key {section!r} in {key!r}")
    parent = ".".join(parts[:-1])
    prefix = parent + "." if parent else ""
    here = sorted({k[len(prefix) :].split(".")[0] for k in valid if k.startswith(prefix)})
    return ConfigError(f"unknown config key {key!r}; valid keys here: {here}")


def _build(cls: type, d: Mapping[str, Any], prefix: str) -> Any:
    """A dataclass from a (possibly partial) nested mapping; missing keys keep their defaults."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {sorted(prefix + k for k in unknown)}; "
            f"valid keys{' in ' + prefix.rstrip('.') if prefix else ''}: {sorted(names)}"
        )
    kwargs = {}
    for name, value in d.items():
        kwargs[name] = _coerce(hints[name], value, prefix + name)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(_coerce(args[0], v, key) for v in value)
    if args and type(None) in args:  # Optional[X]
        return None if value is None else _coerce(next(a for a in args if a is not type(None)), value, key)
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            number = hint(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{key} must be {'an integer' if hint is int else 'a number'}, got {value!r}") from None
        if hint is int and isinstance(value, float) and number != value:
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        if not math.isfinite(number):  # "Infinity"/"nan" parse as floats, and no setting can take them
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"no coercion for {hint!r} ({key})")


def _preset(name: str, **sections: Mapping[str, Any]) -> Config:
    return Config.from_dict({"preset": name, **sections})


# The reference model (RF_GANsynth, withoutNoise/SynthGAN_96_DO2.py), point by point in docs/fidelity.md: SegNet G
# in the original layout (8 dropouts, ReLU after the residual sums, 64→32→3, conv biases) with weights_init, DCGAN D
# (ndf 18), BCE, errG + 2·vgg, Adam(2e-4, betas 0.8/0.999); raw responses times RF maps summing to 1 over the whole
# field; target and output masked to the RFs before D and VGG.
_REFERENCE_DATA = {"standardize": False, "rf_norm": "sum_full", "mask": True}
_REFERENCE = {
    "data": _REFERENCE_DATA,
    "model": {"generator": "reference", "discriminator": "reference", "ndf": 18, "init": "original"},
    "loss": {"adversarial": "nonsaturating", "lambda_adv": 1.0, "lambda_vgg": 2.0, "lambda_pix": 0.0},
    "optim": {"lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.8, "batch_size": 64},
}  # fmt: skip

# Small nets, no VGG loss (random VGG features cost most of the compute and are not perceptual), a light adversarial
# weight and a fast G learning rate: tests and quick runs, and the base of the demo's preset.
_TINY = {
    "model": {"ngf": 16, "n_down": 4, "ndf": 16, "d_layers": 3},
    "loss": {"vgg_random_init": True, "lambda_vgg": 0.0, "lambda_pix": 10.0, "lambda_adv": 0.02},
    "optim": {"batch_size": 32, "lr_g": 1e-3},
    "run": {"epochs": 6},
}

PRESETS: dict[str, Config] = {
    "default": _preset("default"),
    "reference": _preset("reference", **_REFERENCE),
    # withNoise (SynthGAN_Noise.py): one extra noise channel, 0.05·errG + 1·vgg, batch 32.
    "reference-noise": _preset(
        "reference-noise",
        data={**_REFERENCE_DATA, "with_noise": True},
        model=_REFERENCE["model"],
        loss={**_REFERENCE["loss"], "lambda_adv": 0.05, "lambda_vgg": 1.0},
        optim={**_REFERENCE["optim"], "batch_size": 32},
    ),
    # RFmasked (RFconfidence_mask_split.py): no D, output and target masked, vgg + 0.1·MSE; no dropout, PyTorch's
    # default init, Adam's defaults (lr 1e-3, betas 0.9/0.999), batch 4.
    "rfmasked": _preset(
        "rfmasked",
        data=_REFERENCE_DATA,
        model={**_REFERENCE["model"], "dropout": 0.0, "init": "default"},
        loss={"lambda_adv": 0.0, "lambda_vgg": 1.0, "lambda_pix": 0.1, "pixel": "mse"},
        optim={"lr_g": 1e-3, "lr_d": 1e-3, "beta1": 0.9, "beta2": 0.999, "batch_size": 4},
    ),
    # MonkeySee (neuralcodinglab/MonkeySee, SpatialBased/train_spatial.py): one input channel per electrode array
    # (label each electrode's array in the RF table's area column) holding the array's responses at its RFs'
    # pixels; pix2pix U-Net G without dropout; conditional PatchGAN D on the input stack with the image;
    # 0.01·BCE + 1·VGG19 (mean of 5 layers, ImageNet-normalised) + 0.5·L1; Adam(2e-4, β1 0.5), batch 8.
    "monkeysee": _preset(
        "monkeysee",
        data={"sum_per_area": True, "standardize": False, "rf_norm": "point"},
        model={
            "generator": "unet",
            "ngf": 64,
            "n_down": 5,
            "dropout": 0.0,
            "norm": "batch",
            "discriminator": "patch",
            "ndf": 64,
            "d_layers": 3,
            "conditional_d": True,
            "d_condition": "input",
        },
        loss={
            "adversarial": "nonsaturating",
            "lambda_adv": 0.01,
            "lambda_vgg": 1.0,
            "lambda_pix": 0.5,
            "pixel": "l1",
            "vgg_imagenet_norm": True,
            "vgg_layer_weights": [0.2] * 5,
        },
        optim={"lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5, "batch_size": 8},
    ),  # fmt: skip
    # No downloaded weights needed (_TINY above).
    "tiny": _preset("tiny", **_TINY),
    # The README demo (`rfgan train` without --data): tiny's nets refining the ridge decoder's image (the CNN's
    # output layer starts at zero, so G starts at ridge) with an SSIM term, an MSE pixel term and a light adversarial
    # weight. On the built-in dataset it beats `rfgan baseline` on SSIM and top-1 retrieval at about its PSNR
    # (docs/quality.md).
    "demo": _preset(
        "demo",
        model={**_TINY["model"], "dropout": 0.0, "linear_base": True},
        loss={**_TINY["loss"], "pixel": "mse", "lambda_pix": 100.0, "lambda_ssim": 10.0, "lambda_adv": 0.005},
        optim={**_TINY["optim"], "lr_g": 3e-4},
        run={"epochs": 9},
    ),
}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
    return PRESETS[name]


_preset = preset  # resolve() has a `preset` argument, named like the flag, which hides this function


def resolve(
    preset: str | None = None,
    config_file: str | os.PathLike | None = None,
    sets: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
    default_preset: str = "default",
) -> Config:
    """The config of a command line: a preset (`default_preset` if none) or a config file, then the `--set KEY=VALUE`
    strings in `sets`, then `overrides` (dotted keys from the command's own flags; None values are flags not given).
    Later steps win; the result is validated."""
    if preset and config_file:
        raise UsageError("give --preset or --config, not both (a config file names its preset inside)")
    changes = parse_sets(sets)
    changes.update({k: v for k, v in (overrides or {}).items() if v is not None})
    cfg = load_config(config_file) if config_file else _preset(preset or default_preset)
    return cfg.with_overrides(changes) if changes else cfg


def parse_sets(sets: Iterable[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` strings as overrides: JSON values (numbers, true/false, null, lists) as such, anything else
    as a string."""
    overrides = {}
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep:
            raise UsageError(f"--set needs KEY=VALUE, got {item!r}")
        try:
            overrides[key.strip()] = json.loads(text.strip())
        except json.JSONDecodeError:
            overrides[key.strip()] = text.strip()
    return overrides


def load_config(path: str | os.PathLike) -> Config:
    """A config from JSON or YAML. A `preset` key picks the base; the file's other keys override it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror}).") from e
    d = parse.loads(data, str(path))
    if d is None:  # an empty YAML file
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        base = preset(d.get("preset", "default"))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
    merged = base.to_dict()
    for section, values in d.items():
        if isinstance(values, Mapping) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    try:
        return Config.from_dict(merged)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
