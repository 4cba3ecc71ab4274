"""The RF-GAN training step, in the reference's order, as pure PyTorch (no Ray): it works the same on bare nets and
on DDP-wrapped ones, and returns detached loss components (no host syncs, no `.item()`).

Order (numbers as in the reference):
  (1) D(real) → errD_real   (2) fake = G(x), once   (3) D(fake.detach()) → errD_fake
  (4–5) errD = errD_real + errD_fake, backward, D step   (repeated `d_steps` times on the same batch and fake)
  (6–7) D(fake) → errG, with D frozen   (8–9) VGG feature loss (and pixel loss) of the same fake
  (10) λ_adv·errG + λ_vgg·vgg + λ_pix·pix, backward, G step.
With no discriminator (λ_adv = 0) steps 1–7 are skipped: the non-adversarial RFmasked objective.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch import Tensor, nn

from rfgan.config import LossConfig
from rfgan.gan.losses import apply_mask, d_fake_loss, d_real_loss, feature_loss, g_adv_loss, pixel_loss
from rfgan.gan.vgg import VGGFeatures


class StepLosses(NamedTuple):
    """Detached scalars of one step; `.item()` them only when logging."""

    errD_real: Tensor
    errD_fake: Tensor
    errD: Tensor
    errG: Tensor
    vgg: Tensor
    pix: Tensor
    g_total: Tensor


def d_condition(x: Tensor, n_signal_channels: int) -> Tensor:
    """The cGAN discriminator's view of the RF input: its mean over the response channels, (B, 1, H, W)."""
    return x[:, :n_signal_channels].mean(dim=1, keepdim=True)


def train_step(
    generator: nn.Module,
    discriminator: nn.Module | None,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer | None,
    x: Tensor,  # (B, C_in, H, W) generator input from RFProjection
    target: Tensor,  # (B, C, H, W) in [0, 1]
    loss: LossConfig,
    vgg: VGGFeatures | None = None,
    mask: Tensor | None = None,  # (1, 1, H, W) RF mask (RFmasked) or None
    cond: Tensor | None = None,  # (B, k, H, W) for a conditional D, else None
    d_steps: int = 1,
    bf16: bool = False,
) -> StepLosses:
    if x.shape[0] != target.shape[0] or x.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"input {tuple(x.shape)} and target {tuple(target.shape)} differ in batch or image size")
    if (discriminator is None) != (opt_d is None):
        raise ValueError("give the discriminator and its optimizer together, or neither")
    if loss.lambda_adv > 0 and discriminator is None:
        raise ValueError("loss.lambda_adv > 0 needs a discriminator")
    # Autocast covers the forwards only; losses are taken in float32.
    autocast = torch.autocast(target.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    zero = target.new_zeros(())
    err_d_real = err_d_fake = err_d = err_g = zero
    real = apply_mask(target, mask)
    fake = None

    if discriminator is not None:
        discriminator.requires_grad_(True)
        for _ in range(d_steps):
            # (1) D on real images
            with autocast:
                err_d_real = d_real_loss(discriminator(real, cond).float(), loss.adversarial)
            # (2) G on the RF input: once per iteration, reused by every D update and by the G update
            if fake is None:
                with autocast:
                    fake = generator(x).float()
            # (3) D on the detached fake: errD must not send gradient into G
            with autocast:
                err_d_fake = d_fake_loss(discriminator(apply_mask(fake, mask).detach(), cond).float(),
                                         loss.adversarial)
            # (4–5) D update
            err_d = err_d_real + err_d_fake
            opt_d.zero_grad(set_to_none=True)
            err_d.backward()
            opt_d.step()
        # Freeze all of D for the G update: G's loss then leaves no gradient in D, and a DDP-wrapped D
        # has nothing to all-reduce (freezing only some of D would need find_unused_parameters).
        discriminator.requires_grad_(False)

    if fake is None:
        with autocast:
            fake = generator(x).float()
    # (6–7) the adversarial loss of G: D's verdict on the same fake, not detached
    if discriminator is not None:
        with autocast:
            err_g = g_adv_loss(discriminator(apply_mask(fake, mask), cond).float(), loss.adversarial)
    # (8–9) feature loss between the same fake and the target (VGG frozen, target features under no_grad)
    vgg_loss = zero
    if loss.lambda_vgg > 0:
        if vgg is None:
            raise ValueError("loss.lambda_vgg > 0 needs VGG features")
        with autocast:
            vgg_loss = feature_loss(vgg, fake, target, loss.vgg_layer_weights, mask=mask).float()
    pix = pixel_loss(fake, target, loss.pixel, mask=mask) if loss.lambda_pix > 0 else zero
    # (10) weighted sum, G update
    g_total = loss.lambda_adv * err_g + loss.lambda_vgg * vgg_loss + loss.lambda_pix * pix
    opt_g.zero_grad(set_to_none=True)
    g_total.backward()
    opt_g.step()
    if discriminator is not None:
        discriminator.requires_grad_(True)
    return StepLosses(*(t.detach() for t in (err_d_real, err_d_fake, err_d, err_g, vgg_loss, pix, g_total)))
