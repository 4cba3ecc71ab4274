"""Losses for rfgan: adversarial (on logits), pixel and VGG19 feature losses.

Every loss is a pure function returning a scalar tensor; none calls backward and none reads values back to the
host, so they are safe inside compiled or distributed training steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from rfgan.config import ADV_KINDS, PIXEL_KINDS, REFERENCE_VGG_WEIGHTS
from rfgan.evaluate.metrics import ssim
from rfgan.gan.vgg import VGGFeatures

AdvKind = Literal["nonsaturating", "minimax", "lsgan"]
PixelKind = Literal["l1", "mse"]


def _check_kind(kind: str, valid: tuple[str, ...], what: str) -> None:
    if kind not in valid:
        raise ValueError(f"unknown {what} kind {kind!r}; valid kinds: {', '.join(valid)}")


# ---------------------------------------------------------------------------
# Adversarial losses. Logits may be (B,) or patch maps (B, 1, h, w); every
# element is one decision, so all reduce with a plain mean.
# ---------------------------------------------------------------------------


def d_real_loss(real_logits: Tensor, kind: AdvKind = "nonsaturating") -> Tensor:
    """Discriminator loss on real samples (target label 1): errD_real."""
    _check_kind(kind, ADV_KINDS, "adversarial")
    if kind == "lsgan":
        return (real_logits - 1).pow(2).mean()
    # BCE(sigmoid(l), 1) = -log(sigmoid(l)) = softplus(-l); the D side is the
    # same for minimax and nonsaturating, they only differ for G.
    return F.softplus(-real_logits).mean()


def d_fake_loss(fake_logits: Tensor, kind: AdvKind = "nonsaturating") -> Tensor:
    """Discriminator loss on generated samples (target label 0): errD_fake."""
    _check_kind(kind, ADV_KINDS, "adversarial")
    if kind == "lsgan":
        return fake_logits.pow(2).mean()
    return F.softplus(fake_logits).mean()  # BCE(sigmoid(l), 0) = -log(1 - sigmoid(l))


def d_adv_loss(real_logits: Tensor, fake_logits: Tensor, kind: AdvKind = "nonsaturating") -> Tensor:
    """errD = errD_real + errD_fake."""
    return d_real_loss(real_logits, kind) + d_fake_loss(fake_logits, kind)


def g_adv_loss(fake_logits: Tensor, kind: AdvKind = "nonsaturating") -> Tensor:
    """Generator adversarial loss on D's logits for generated samples."""
    _check_kind(kind, ADV_KINDS, "adversarial")
    if kind == "lsgan":
        return (fake_logits - 1).pow(2).mean()
    if kind == "minimax":
        # mean log(1 - D(G(x))) = -BCE(D(G(x)), 0); saturates (vanishing
        # gradient) while D confidently rejects fakes, kept for comparison.
        return -F.softplus(fake_logits).mean()
    # BCE(D(G(x)), 1) = -log(sigmoid(l)): strong gradient early in training.
    return F.softplus(-fake_logits).mean()


# ---------------------------------------------------------------------------
# Pixel losses
# ---------------------------------------------------------------------------


def apply_mask(x: Tensor, mask: Tensor | None) -> Tensor:
    """x * mask with mask (B or 1, 1, H, W) broadcast over channels; None -> x."""
    return x if mask is None else x * mask


def pixel_loss(fake: Tensor, target: Tensor, kind: PixelKind = "l1", mask: Tensor | None = None) -> Tensor:
    """L1 or MSE between fake and target, both multiplied by ``mask`` first.

    Masking both sides (as the reference "RFmasked" model does) zeroes the
    difference outside the receptive-field coverage; the mean still runs over
    all pixels, matching the reference normalisation.
    """
    _check_kind(kind, PIXEL_KINDS, "pixel")
    fake, target = apply_mask(fake, mask), apply_mask(target, mask)
    if kind == "l1":
        return F.l1_loss(fake, target)
    return F.mse_loss(fake, target)


def ssim_loss(fake: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """1 - mean SSIM on luma (11×11 Gaussian window, data range 1) of both images multiplied by ``mask`` first:
    the SSIM row of `rfgan eval`, as a loss. Differentiable in ``fake``."""
    return 1 - ssim(apply_mask(fake, mask), apply_mask(target, mask)).mean()


def feature_loss(
    vgg: VGGFeatures,
    fake: Tensor,
    target: Tensor,
    layer_weights: Sequence[float] = REFERENCE_VGG_WEIGHTS,
    mask: Tensor | None = None,
) -> Tensor:
    """sum_l w_l * mean|phi_l(mask*fake) - phi_l(mask*target)| over VGG_LAYERS.

    The target is a constant, so its features skip autograd; gradients reach
    ``fake`` only, since the VGG parameters are frozen.
    """
    fake, target = apply_mask(fake, mask), apply_mask(target, mask)
    with torch.no_grad():
        target_feats = vgg(target)
    fake_feats = vgg(fake)
    loss = fake.new_zeros(())
    for w, f, t in zip(layer_weights, fake_feats, target_feats, strict=True):
        loss = loss + w * F.l1_loss(f, t)
    return loss
