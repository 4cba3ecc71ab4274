"""Losses for rfgan: adversarial (on logits), pixel, SSIM and VGG19 feature losses.

Every loss is a pure function returning a scalar tensor; none calls backward and none reads values back to the
host, so they are safe inside compiled or distributed training steps.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from rfgan.config import ADV_KINDS, PIXEL_KINDS, REFERENCE_VGG_WEIGHTS
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


# SSIM's constants and window, as torchmetrics (and so `rfgan eval`) has them: data range 1, K1 0.01, K2 0.03, an
# 11-tap Gaussian of sigma 1.5.
_SSIM_C1, _SSIM_C2, _SSIM_TAPS, _SSIM_SIGMA = 0.01**2, 0.03**2, 11, 1.5


@functools.cache
def _gaussian_band(n: int, device: torch.device) -> Tensor:
    """(n, n) float32: band @ x blurs the rows of x (n, ·) with the normalised 11-tap Gaussian, its taps beyond the
    edges reflected back inside (F.pad's "reflect", as torchmetrics pads before its convolution)."""
    taps = torch.arange(_SSIM_TAPS, dtype=torch.float64) - _SSIM_TAPS // 2
    g = torch.exp(-0.5 * (taps / _SSIM_SIGMA) ** 2)
    g = g / g.sum()
    band = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for t, w in zip(taps.long().tolist(), g.tolist()):
            j = abs(i + t)  # reflect at 0 (index -1 is 1)
            j = 2 * (n - 1) - j if j > n - 1 else j  # and at n - 1
            band[i, j] += w
    return band.to(device, torch.float32)


# Rec. 601 luma weights for R, G, B.
_LUMA = (0.299, 0.587, 0.114)


def to_luma(x: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) Rec. 601 luma; (B, 1, H, W) is returned as is."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"to_luma expects (B, 1, H, W) or (B, 3, H, W), got {tuple(x.shape)}")
    if x.shape[1] == 1:
        return x
    # Python-float weights are kernel arguments: no weight tensor to copy to the device on every call.
    return _LUMA[0] * x[:, 0:1] + _LUMA[1] * x[:, 1:2] + _LUMA[2] * x[:, 2:3]  # (B, 1, H, W)


def _ssim_luma(fake: Tensor, target: Tensor) -> Tensor:
    """(B,) SSIM of luma images (B, 1, H, W): the values of rfgan.evaluate.metrics.ssim (torchmetrics), computed
    with the separable Gaussian window as two matrix products. torchmetrics' one-channel 11×11 convolution has a
    backward that dominated a CPU training step (docs/benchmarks.md); these products are cheap. fp32 even under
    autocast: σ² = E[x²] - E[x]² loses every digit in bf16."""
    with torch.autocast(fake.device.type, enabled=False):
        x, y = fake.float()[:, 0], target.float()[:, 0]  # (B, H, W)
        rows, cols = _gaussian_band(x.shape[1], x.device), _gaussian_band(x.shape[2], x.device)

        def blur(v: Tensor) -> Tensor:  # (B, H, W), each image blurred
            return rows @ v @ cols.T

        mu_x, mu_y = blur(x), blur(y)
        var_x, var_y = (blur(x * x) - mu_x**2).clamp(min=0), (blur(y * y) - mu_y**2).clamp(min=0)
        cov = blur(x * y) - mu_x * mu_y
        num = (2 * mu_x * mu_y + _SSIM_C1) * (2 * cov + _SSIM_C2)
        den = (mu_x**2 + mu_y**2 + _SSIM_C1) * (var_x + var_y + _SSIM_C2)
        return (num / den).flatten(1).mean(dim=1)


def ssim_loss(fake: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """1 - mean SSIM on luma (11×11 Gaussian window, data range 1) of both images multiplied by ``mask`` first:
    the SSIM row of `rfgan eval`, as a loss. Differentiable in ``fake``."""
    fake, target = apply_mask(fake, mask), apply_mask(target, mask)
    if min(fake.shape[-2:]) <= _SSIM_TAPS // 2:
        # Too small to reflect the window's half inside: torchmetrics' SSIM, which says why. Imported here: it
        # costs about a second to import, and this is the only use.
        from torchmetrics.functional.image import structural_similarity_index_measure

        return 1 - structural_similarity_index_measure(to_luma(fake), to_luma(target), data_range=1.0)
    return 1 - _ssim_luma(to_luma(fake), to_luma(target)).mean()


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
