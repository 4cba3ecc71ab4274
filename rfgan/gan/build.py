"""The parts of an RF-GAN built from a Config and a dataset: RF projection, G, D, VGG features, mask, optimizers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from rfgan.config import Config, ConfigError
from rfgan.data.format import DatasetInfo
from rfgan.data.rf import RFProjection, RFTable, rf_mask
from rfgan.gan.models import PatchDiscriminator, ReferenceDiscriminator, ReferenceGenerator, UNetGenerator, init_weights
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
    conditional_d: bool = False  # D also sees the mean RF input (cGAN)

    def inputs(self, responses: torch.Tensor) -> torch.Tensor:
        """(B, E) responses → (B, C_in, H, W) generator input."""
        return self.projection(responses)

    def reconstruct(self, responses: torch.Tensor) -> torch.Tensor:
        """(B, E) responses → (B, C, H, W) images in [0, 1]."""
        return self.generator(self.inputs(responses))

    def condition(self, x: torch.Tensor) -> torch.Tensor | None:
        """What a conditional D sees of the input x besides the image: the mean over the response channels,
        (B, 1, H, W), leaving out the noise channel; None for an unconditional D."""
        if not self.conditional_d:
            return None
        n_signal = self.projection.out_channels - int(self.projection.with_noise)
        return x[:, :n_signal].mean(dim=1, keepdim=True)

    def train(self, mode: bool = True) -> GAN:
        for net in (self.generator, self.discriminator):
            if net is not None:
                net.train(mode)
        return self

    def to(self, device: torch.device | str) -> GAN:
        for name in ("projection", "generator", "discriminator", "vgg"):
            module = getattr(self, name)
            if module is not None:
                setattr(self, name, module.to(device))
        if self.mask is not None:
            self.mask = self.mask.to(device)
        return self


class Optimizers(NamedTuple):
    g: torch.optim.Optimizer
    d: torch.optim.Optimizer | None  # None without a discriminator


def check_compatible(cfg: Config, info: DatasetInfo) -> None:
    """Refuse a dataset whose image size the generator cannot round-trip, before any net is built."""
    divisor = cfg.model.size_divisor()
    h, w = info.image_size
    if h % divisor or w % divisor:
        raise ConfigError(
            f"images are {h}x{w} but the {cfg.model.generator} generator needs sides divisible by {divisor}; "
            f"use images of such a size (e.g. {h // divisor * divisor or divisor}), or a shallower generator "
            f"(model.n_down for unet, fewer model.g_widths for reference)."
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
    init_weights(generator, m.init_std)
    discriminator = None
    if cfg.adversarial and with_d:
        if m.discriminator == "patch":
            discriminator = PatchDiscriminator(
                info.channels, ndf=m.ndf, n_layers=m.d_layers, norm=m.norm, cond_channels=1 if m.conditional_d else 0
            )
        else:
            discriminator = ReferenceDiscriminator(info.channels, ndf=m.ndf)
        init_weights(discriminator, m.init_std)
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
    return GAN(projection, generator, discriminator, vgg, mask, conditional_d=m.conditional_d)


def build_optimizers(cfg: Config, gan: GAN) -> Optimizers:
    """Adam for each net. Build them after any DDP wrapping, so they hold the wrapped parameters."""
    o = cfg.optim
    opt_g = torch.optim.Adam(gan.generator.parameters(), lr=o.lr_g, betas=(o.beta1, o.beta2))
    opt_d = None
    if gan.discriminator is not None:
        opt_d = torch.optim.Adam(gan.discriminator.parameters(), lr=o.lr_d, betas=(o.beta1, o.beta2))
    return Optimizers(opt_g, opt_d)
