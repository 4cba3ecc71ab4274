"""The parts of an RF-GAN built from a Config and a dataset: RF projection, G, D, VGG features, mask, optimizers."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from rfgan.config import Config, ConfigError, ModelConfig
from rfgan.data.format import DatasetInfo
from rfgan.data.rf import RFTable, rf_mask
from rfgan.gan.learned_rf import GaussianRFs, LearnedRFGenerator, MapRFs, learned_rfs
from rfgan.gan.linear_base import LinearBaseGenerator
from rfgan.gan.models import PatchDiscriminator, ReferenceDiscriminator, ReferenceGenerator, UNetGenerator, init_weights
from rfgan.gan.rf_input import RFInput, RFProjection
from rfgan.gan.vgg import VGGFeatures


@dataclass
class GAN:
    """The built parts of one RF-GAN. DDP-wrapped nets are swapped in with `dataclasses.replace(gan, generator=...)`,
    so the step, validation and checkpoints take the GAN whole, wrapped or not."""

    projection: RFProjection  # responses (B, E) → generator input (B, C_in, H, W)
    generator: nn.Module
    discriminator: nn.Module | None  # None when loss.lambda_adv == 0 (non-adversarial)
    vgg: VGGFeatures | None  # frozen; never checkpointed; None when no VGG loss is asked for
    mask: torch.Tensor | None  # (1, 1, H, W) RF mask for RFmasked, else None
    conditional_d: bool = False  # D also sees the RF input (cGAN)
    d_condition: str = "mean"  # what it sees of it: the "mean" response channel, or the whole "input" stack
    compact: bool = True  # inputs() gives the compact form (perf.compact_input), which G's first layer reads as is

    def inputs(self, responses: torch.Tensor) -> torch.Tensor | RFInput:
        """(B, E) responses → the (B, C_in, H, W) generator input: compact (never built) or dense."""
        return self.projection.compact(responses) if self.compact else self.projection(responses)

    def reconstruct(self, responses: torch.Tensor) -> torch.Tensor:
        """(B, E) responses → (B, C, H, W) images in [0, 1]."""
        return self.generator(self.inputs(responses))

    def condition(self, x: torch.Tensor | RFInput) -> torch.Tensor | None:
        """What a conditional D sees of the input x besides the image: the mean over the response channels,
        (B, 1, H, W), leaving out the noise channel, or the whole (B, C_in, H, W) input (MonkeySee); None for an
        unconditional D."""
        if not self.conditional_d:
            return None
        if self.d_condition == "input":
            return x.dense() if isinstance(x, RFInput) else x
        if isinstance(x, RFInput):
            return x.signal_mean()
        n_signal = self.projection.out_channels - int(self.projection.with_noise)
        return x[:, :n_signal].mean(dim=1, keepdim=True)

    def train(self, mode: bool = True) -> GAN:
        for net in (self.generator, self.discriminator):
            if net is not None:
                net.train(mode)
        return self

    def to(self, device: torch.device | str, channels_last: bool = False) -> GAN:
        """Move to `device`; `channels_last` also stores the nets' weights NHWC (perf.channels_last)."""
        for name in ("projection", "generator", "discriminator", "vgg"):
            module = getattr(self, name)
            if module is not None:
                module = module.to(device)
                if channels_last and name != "projection":
                    module = module.to(memory_format=torch.channels_last)
                setattr(self, name, module)
        if self.mask is not None:
            self.mask = self.mask.to(device)
        return self


class Optimizers(NamedTuple):
    g: torch.optim.Optimizer
    d: torch.optim.Optimizer | None  # None without a discriminator


def check_compatible(cfg: Config, info: DatasetInfo) -> None:
    """Refuse a dataset whose image size the generator cannot round-trip, before any net is built."""
    divisor, smallest = cfg.model.size_divisor(), cfg.model.min_image_size()
    h, w = info.image_size
    if h % divisor or w % divisor:
        raise ConfigError(
            f"images are {h}x{w} but the {cfg.model.generator} generator needs sides divisible by {divisor}; "
            f"use images of such a size (e.g. {h // divisor * divisor or divisor}), or a shallower generator "
            f"(model.n_down for unet, fewer model.g_widths for reference)."
        )
    if min(h, w) < smallest:
        raise ConfigError(
            f"images are {h}x{w} but the {cfg.model.generator} generator needs sides of at least {smallest}; "
            "use larger images or a shallower generator (model.n_down for unet, fewer model.g_widths for reference)."
        )


def build_gan(cfg: Config, info: DatasetInfo, rfs: RFTable, with_vgg: bool = True, with_d: bool = True) -> GAN:
    """Build on the CPU; move with `.to(device)`. Weights are DCGAN-initialised from the current torch seed.
    `with_vgg=False` skips the VGG net (parameter counts, inference); `with_d=False` skips D (inference).
    The image size is checked once per run, before this (check_compatible, in rfgan.run.train.preflight)."""
    d = cfg.data
    stats = dict(mean=np.asarray(info.response_mean), std=np.asarray(info.response_std)) if d.standardize else {}
    projection = RFProjection.from_table(
        rfs,
        info.image_size,
        info.fov_deg,
        norm=d.rf_norm,
        sum_per_area=d.sum_per_area,
        with_noise=d.with_noise,
        **stats,
    )
    m = cfg.model
    if m.generator == "unet":
        generator = UNetGenerator(
            projection.out_channels, info.channels, ngf=m.ngf, n_down=m.n_down, norm=m.norm, dropout=m.dropout
        )
    else:
        generator = ReferenceGenerator(
            projection.out_channels,
            info.channels,
            widths=m.g_widths,
            convs_per_block=m.g_convs_per_block,
            n_res=m.n_res,
            dropout=m.dropout,
        )
    init_weights(generator, m.init_std, m.init)
    if m.rf_layer == "gaussian":
        generator = LearnedRFGenerator(generator, GaussianRFs(rfs, info.image_size, info.fov_deg, d.rf_norm))
    elif m.rf_layer == "map":
        layer = MapRFs(
            rfs,
            info.image_size,
            info.fov_deg,
            d.rf_norm,
            resolution=m.rf_map_resolution,
            smooth=m.rf_map_smooth,
            sparse=m.rf_map_sparse,
        )
        generator = LearnedRFGenerator(generator, layer)
    if m.linear_base:
        generator = LinearBaseGenerator(generator, projection.maps, (info.channels, *info.image_size))
    discriminator = None
    if cfg.adversarial and with_d:
        if m.discriminator == "patch":
            discriminator = PatchDiscriminator(
                info.channels, ndf=m.ndf, n_layers=m.d_layers, norm=m.norm, cond_channels=_cond_channels(m, projection)
            )
        else:
            discriminator = ReferenceDiscriminator(info.channels, ndf=m.ndf)
        init_weights(discriminator, m.init_std, m.init)
    loss = cfg.loss
    vgg = None
    if with_vgg and loss.lambda_vgg > 0:
        vgg = VGGFeatures(
            weights=loss.vgg_weights,
            random_init=loss.vgg_random_init,
            imagenet_norm=loss.vgg_imagenet_norm,
            seed=cfg.run.seed,
        )
    mask = None
    if d.mask:
        mask = torch.from_numpy(rf_mask(rfs, info.image_size, info.fov_deg, d.mask_radius_sigmas))[None, None]
    return GAN(
        projection,
        generator,
        discriminator,
        vgg,
        mask,
        conditional_d=m.conditional_d,
        d_condition=m.d_condition,
        compact=cfg.perf.compact_input,
    )


def _cond_channels(m: ModelConfig, projection: RFProjection) -> int:
    """The channels a conditional D gets besides the image (GAN.condition), 0 for an unconditional one."""
    if not m.conditional_d:
        return 0
    return projection.out_channels if m.d_condition == "input" else 1


@functools.cache
def native_bf16(device_type: str) -> bool:
    """Whether `device_type` multiplies bf16 matrices in hardware: there bf16 autocast is several times faster than
    fp32 (docs/benchmarks.md); elsewhere bf16 is emulated, slower than fp32."""
    if device_type == "cuda":
        # By default torch counts a GPU that merely emulates bf16 (before Ampere: V100, T4) as supporting it.
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        return torch.cpu._is_amx_tile_supported()  # Sapphire Rapids and later: oneDNN's bf16 convs and matmuls
    return False


def autocast_dtype(cfg: Config, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of the forward passes under optim.precision, or None for plain fp32."""
    kind = torch.device(device).type
    bf16 = cfg.optim.precision == "bf16" or (cfg.optim.precision == "auto" and native_bf16(kind))
    return torch.bfloat16 if bf16 else None


def on_device(gan: GAN, cfg: Config, device: torch.device | str) -> GAN:
    """Move the GAN to `device` with the config's device settings (channels_last; cuDNN autotuning on CUDA)."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = cfg.perf.cudnn_benchmark
    return gan.to(device, channels_last=cfg.perf.channels_last)


def build_optimizers(cfg: Config, gan: GAN) -> Optimizers:
    """Adam for each net. Build them after any DDP wrapping, so they hold the wrapped parameters."""
    o = cfg.optim

    def adam(net: nn.Module, lr: float) -> torch.optim.Optimizer:
        params = list(net.parameters())
        # The fused kernel needs the parameters on the GPU; the update is Adam's either way.
        fused = cfg.perf.fused_adam and all(p.is_cuda for p in params) or None
        layer = learned_rfs(net)
        groups: list[dict] = [{"params": params}]
        if layer is not None:  # the learned RFs' own step size (optim.lr_rf)
            own = {id(p) for p in layer.parameters()}
            groups = [
                {"params": [p for p in params if id(p) not in own]},
                {"params": list(layer.parameters()), "lr": o.lr_rf},
            ]
        return torch.optim.Adam(groups, lr=lr, betas=(o.beta1, o.beta2), fused=fused)

    return Optimizers(
        adam(gan.generator, o.lr_g), None if gan.discriminator is None else adam(gan.discriminator, o.lr_d)
    )
