"""The RF-GAN training step, in the reference's order, as pure PyTorch (no Ray): it works the same on bare nets and
on DDP-wrapped ones, and returns detached loss components (no host syncs, no `.item()`).

Order (numbers as in the reference):
  (1) D(real) → errD_real   (2) fake = G(x), once   (3) D(fake.detach()) → errD_fake
  (4–5) errD = errD_real + errD_fake, backward, D step   (repeated `d_steps` times on the same batch and fake)
  (6–7) D(fake) → errG, with D frozen   (8–9) VGG feature loss (and pixel loss) of the same fake
  (10) λ_adv·errG + λ_vgg·vgg + λ_pix·pix + λ_ssim·(1 - SSIM) (+ learned RF maps' penalty), backward, G step.
With optim.second_g_forward, G runs again after the D updates and steps 6–10 use that fake: the originals' order.
With no discriminator (λ_adv = 0) steps 1–7 are skipped: the non-adversarial RFmasked objective.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch import Tensor

from rfgan.config import Config
from rfgan.gan.build import GAN, Optimizers, autocast_dtype
from rfgan.gan.learned_rf import rf_penalty
from rfgan.gan.losses import apply_mask, d_fake_loss, d_real_loss, feature_loss, g_adv_loss, pixel_loss, ssim_loss


class StepLosses(NamedTuple):
    """Detached scalars of one step; `.item()` them only when logging."""

    errD_real: Tensor
    errD_fake: Tensor
    errD: Tensor
    errG: Tensor
    vgg: Tensor
    pix: Tensor
    ssim: Tensor  # 1 - SSIM, when loss.lambda_ssim > 0
    g_total: Tensor


def train_step(gan: GAN, opts: Optimizers, responses: Tensor, target: Tensor, cfg: Config) -> StepLosses:
    """One iteration on a batch: responses (B, E), target (B, C, H, W) in [0, 1]. `gan` may hold DDP-wrapped nets;
    `opts` must hold their parameters."""
    loss = cfg.loss
    generator, discriminator, mask = gan.generator, gan.discriminator, gan.mask
    if responses.shape[0] != target.shape[0]:
        raise ValueError(f"responses {tuple(responses.shape)} and target {tuple(target.shape)} differ in batch size")
    if (discriminator is None) != (opts.d is None):
        raise ValueError("give the discriminator and its optimizer together, or neither")
    if loss.lambda_adv > 0 and discriminator is None:
        raise ValueError("loss.lambda_adv > 0 needs a discriminator")
    # Autocast covers the forwards only; losses are taken in float32.
    dtype = autocast_dtype(cfg, target.device)  # optim.precision
    autocast = torch.autocast(target.device.type, dtype=dtype) if dtype is not None else nullcontext()
    x = gan.inputs(responses)  # (B, C_in, H, W), built once: G and a conditional D see the same noise channel
    if x.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"input {tuple(x.shape)} and target {tuple(target.shape)} differ in image size")
    cond = gan.condition(x)  # (B, 1, H, W) for a conditional D, else None
    zero = target.new_zeros(())
    err_d_real = err_d_fake = err_d = err_g = zero
    real = apply_mask(target, mask)
    fake = None

    if discriminator is not None:
        discriminator.requires_grad_(True)
        for _ in range(cfg.optim.d_steps):
            # (1) D on real images
            with autocast:
                err_d_real = d_real_loss(discriminator(real, cond).float(), loss.adversarial)
            # (2) G on the RF input: once per iteration, reused by every D update and by the G update
            if fake is None:
                with autocast:
                    fake = generator(x).float()
            # (3) D on the detached fake: errD must not send gradient into G
            with autocast:
                err_d_fake = d_fake_loss(discriminator(apply_mask(fake, mask).detach(), cond).float(), loss.adversarial)
            # (4–5) D update
            err_d = err_d_real + err_d_fake
            opts.d.zero_grad(set_to_none=True)
            err_d.backward()
            opts.d.step()
        # Freeze all of D for the G update: G's loss then leaves no gradient in D, and a DDP-wrapped D
        # has nothing to all-reduce (freezing only some of D would need find_unused_parameters).
        discriminator.requires_grad_(False)

    if fake is None or cfg.optim.second_g_forward:
        # (2') G for its own update: with D, only for exact reproduction (a fresh dropout draw, BatchNorm statistics
        # updated a second time, as the originals' two forwards)
        with autocast:
            fake = generator(x).float()
    # (6–7) the adversarial loss of G: D's verdict on the same fake, not detached
    if discriminator is not None:
        with autocast:
            err_g = g_adv_loss(discriminator(apply_mask(fake, mask), cond).float(), loss.adversarial)
    # (8–9) feature loss between the same fake and the target (VGG frozen, target features under no_grad)
    vgg_loss = zero
    if loss.lambda_vgg > 0:
        if gan.vgg is None:
            raise ValueError("loss.lambda_vgg > 0 needs VGG features")
        with autocast:
            vgg_loss = feature_loss(gan.vgg, fake, target, loss.vgg_layer_weights, mask=mask).float()
    pix = pixel_loss(fake, target, loss.pixel, mask=mask) if loss.lambda_pix > 0 else zero
    ssim = ssim_loss(fake, target, mask=mask) if loss.lambda_ssim > 0 else zero
    # (10) weighted sum, G update
    g_total = loss.lambda_adv * err_g + loss.lambda_vgg * vgg_loss + loss.lambda_pix * pix + loss.lambda_ssim * ssim
    penalty = rf_penalty(generator)  # learned RF maps' smoothness and sparsity (model.rf_layer=map)
    if penalty is not None:
        g_total = g_total + penalty
    opts.g.zero_grad(set_to_none=True)
    g_total.backward()
    opts.g.step()
    if discriminator is not None:
        discriminator.requires_grad_(True)
    return StepLosses(*(t.detach() for t in (err_d_real, err_d_fake, err_d, err_g, vgg_loss, pix, ssim, g_total)))
