"""The training iteration as the reference code runs it (lelynn/RF_GANsynth, SynthGAN_96_DO2.py and SynthGAN_Noise.py),
re-created on rfgan's nets and losses so that `rfgan bench` compares habits, not models. Nothing is slowed on
purpose; each habit is the original's:

- the (B, E, H, W) input stack is built on the host every step (response × RF map) and copied synchronously, as is
  the target batch;
- G runs forward twice: once for D's update, again for its own;
- D is not frozen for G's loss, so backward also fills D's weight gradients, which the next step throws away;
- the VGG features of both images are built with autograd on and VGG's weights require gradients: only `.detach()`
  keeps the target's out of the loss;
- six losses are read back to the host (`.item()`) every step for the running sums.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

from rfgan.config import Config
from rfgan.gan.build import GAN, Optimizers
from rfgan.gan.losses import apply_mask, d_fake_loss, d_real_loss, g_adv_loss, pixel_loss
from rfgan.gan.vgg import VGGFeatures


def trainable_vgg(vgg: VGGFeatures | None) -> VGGFeatures | None:
    """The reference's VGG: the same weights, but its parameters require gradients (it never froze them)."""
    if vgg is None:
        return None
    return copy.deepcopy(vgg).requires_grad_(True)


def reference_step(
    gan: GAN,
    opts: Optimizers,
    vgg: VGGFeatures | None,
    responses_host: Tensor,
    target_host: Tensor,
    cfg: Config,
    device: torch.device,
) -> float:
    """One iteration: responses (B, E) and target (B, C, H, W) on the host. Returns the running-sum value of the
    G loss, read back like the original's logging. `gan` must be built with perf.compact_input=False and its
    projection kept on the host; `vgg` from trainable_vgg."""
    loss = cfg.loss
    generator, discriminator, mask = gan.generator, gan.discriminator, gan.mask
    x = gan.projection(responses_host).to(device)  # (B, C_in, H, W) built on the host, synchronous copy
    target = target_host.to(device)
    real = apply_mask(target, mask)
    cond = gan.condition(x)
    zero = target.new_zeros(())
    err_d_real = err_d_fake = err_d = err_g = zero
    opts.g.zero_grad()
    if discriminator is not None:
        opts.d.zero_grad()
        err_d_real = d_real_loss(discriminator(real, cond), loss.adversarial)
        fake = apply_mask(generator(x), mask)
        err_d_fake = d_fake_loss(discriminator(fake.detach(), cond), loss.adversarial)
        err_d = err_d_real + err_d_fake
        err_d.backward()
        opts.d.step()
        opts.g.zero_grad()
    fake = generator(x)  # the second forward of G in an adversarial step
    if discriminator is not None:
        err_g = g_adv_loss(discriminator(apply_mask(fake, mask), cond), loss.adversarial)
    vgg_loss = zero
    if loss.lambda_vgg > 0:
        fake_feats, target_feats = vgg(apply_mask(fake, mask)), vgg(apply_mask(target, mask))
        for w, f, t in zip(loss.vgg_layer_weights, fake_feats, target_feats):
            vgg_loss = vgg_loss + w * F.l1_loss(f, t.detach())
    pix = pixel_loss(fake, target, loss.pixel, mask=mask) if loss.lambda_pix > 0 else zero
    g_total = loss.lambda_adv * err_g + loss.lambda_vgg * vgg_loss + loss.lambda_pix * pix
    g_total.backward()
    opts.g.step()
    return sum(t.sum().item() for t in (g_total, err_g, vgg_loss, err_d, err_d_real, err_d_fake))
