"""Reconstruction metrics: PSNR, SSIM, pixel and VGG-feature correlation, and a no-grad evaluation loop.

Per-image functions take ``fake`` and ``target`` of shape (B, C, H, W), float, in [0, 1], and return (B,)
tensors. None of them reads values back to the host, so they can run every batch on an accelerator without
stalling it; :class:`MetricAccumulator` converts to Python floats only in :meth:`MetricAccumulator.compute`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from rfgan.gan.build import GAN
from rfgan.gan.vgg import VGGFeatures

__all__ = [
    "PSNR_CAP_DB",
    "CORR_EPS",
    "METRIC_NAMES",
    "to_luma",
    "psnr",
    "ssim",
    "pixel_corr",
    "feature_corr",
    "identification_accuracy",
    "MetricAccumulator",
    "eval_mode",
    "evaluate",
]

# Identical images have infinite PSNR (MSE 0), which would turn a dataset mean into inf. 100 dB is MSE 1e-10,
# above any pair that differs by even one 8-bit step in one pixel of an image up to ~256x256x3.
PSNR_CAP_DB = 100.0
# Pearson r = cov / (std_a * std_b + CORR_EPS): a constant image (e.g. a collapsed generator) has zero spread,
# so r is undefined; the epsilon makes it 0 ("no linear relation") instead of NaN, and is far below the spread
# of any non-constant image, so other values are unaffected.
CORR_EPS = 1e-8
METRIC_NAMES: tuple[str, ...] = ("psnr", "ssim", "pixel_corr", "feature_corr")

# Rec. 601 luma weights for R, G, B.
_LUMA = (0.299, 0.587, 0.114)


def _check_pair(fake: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Validate a (B, C, H, W) pair and return both as float32 (metrics in half precision lose digits)."""
    if fake.shape != target.shape:
        raise ValueError(
            f"fake and target must have the same shape, got fake {tuple(fake.shape)} and target {tuple(target.shape)}"
        )
    if fake.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(fake.shape)}")
    if not (fake.is_floating_point() and target.is_floating_point()):
        # uint8 images would silently give nonsense with data_range 1.0.
        raise ValueError(f"expected float images in [0, 1], got fake {fake.dtype} and target {target.dtype}")
    return fake.float(), target.float()


def to_luma(x: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) Rec. 601 luma; (B, 1, H, W) is returned as is."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"to_luma expects (B, 1, H, W) or (B, 3, H, W), got {tuple(x.shape)}")
    if x.shape[1] == 1:
        return x
    # Python-float weights are kernel arguments: no weight tensor to copy to the device on every call.
    return _LUMA[0] * x[:, 0:1] + _LUMA[1] * x[:, 1:2] + _LUMA[2] * x[:, 2:3]  # (B, 1, H, W)


def psnr(fake: Tensor, target: Tensor) -> Tensor:
    """(B,) PSNR in dB on luma, data range 1.0, capped at PSNR_CAP_DB so identical pairs stay finite."""
    fake, target = _check_pair(fake, target)
    values = peak_signal_noise_ratio(
        to_luma(fake), to_luma(target), data_range=1.0, reduction="none", dim=(1, 2, 3)
    )  # (B,)
    return values.clamp(max=PSNR_CAP_DB)


def ssim(fake: Tensor, target: Tensor) -> Tensor:
    """(B,) SSIM on luma, data range 1.0, 11x11 Gaussian window (sigma 1.5); images need H, W >= 6."""
    fake, target = _check_pair(fake, target)
    return structural_similarity_index_measure(to_luma(fake), to_luma(target), data_range=1.0, reduction="none")  # (B,)


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    """(B,) Pearson correlation between rows of (B, N) a and b; 0 where a row is constant (see CORR_EPS)."""
    a = a - a.mean(dim=1, keepdim=True)  # (B, N)
    b = b - b.mean(dim=1, keepdim=True)  # (B, N)
    # Product of norms rather than sqrt of the product: large feature maps cannot overflow float32.
    denom = a.norm(dim=1) * b.norm(dim=1) + CORR_EPS  # (B,)
    return (a * b).sum(dim=1) / denom


def pixel_corr(fake: Tensor, target: Tensor) -> Tensor:
    """(B,) Pearson correlation of each pair over all channels and pixels (0 for a constant image)."""
    fake, target = _check_pair(fake, target)
    return _pearson(fake.flatten(1), target.flatten(1))  # (B,)


@torch.no_grad()
def feature_corr(vgg: VGGFeatures, fake: Tensor, target: Tensor) -> Tensor:
    """(B,) Pearson correlation of each pair's VGG feature maps, flattened per layer, averaged over layers.

    ``vgg`` must be on the images' device; images need H, W >= 16 to reach relu5_1.
    """
    fake, target = _check_pair(fake, target)
    per_layer = [
        _pearson(f.flatten(1), t.flatten(1))  # (B,)
        for f, t in zip(vgg(fake), vgg(target), strict=True)
    ]
    return torch.stack(per_layer).mean(dim=0)  # (L, B) -> (B,)


def identification_accuracy(fake: Tensor, target: Tensor, image_ids: Tensor | None = None) -> Tensor:
    """Pairwise identification: over all pairs (i, j), how often reconstruction i correlates more with its own
    target than with target j (pixel Pearson r, all channels). 0.5 is chance, 1.0 every reconstruction picks its
    own image: the usual "does it resemble *this* image rather than any image" figure of decoding studies.
    With ``image_ids`` (B,), pairs showing the same image (repeats) are left out, as are i == j. The (B, B)
    correlation matrix is built in one go, so keep B to a few thousand."""
    fake, target = _check_pair(fake, target)
    a = fake.flatten(1) - fake.flatten(1).mean(dim=1, keepdim=True)  # (B, N)
    b = target.flatten(1) - target.flatten(1).mean(dim=1, keepdim=True)  # (B, N)
    a = a / (a.norm(dim=1, keepdim=True) + CORR_EPS)
    b = b / (b.norm(dim=1, keepdim=True) + CORR_EPS)
    r = a @ b.T  # (B, B): r[i, j] = corr(fake_i, target_j)
    ids = torch.arange(len(r), device=r.device) if image_ids is None else image_ids.to(r.device)
    other = ids[:, None] != ids[None, :]  # (B, B) pairs of different images
    if not other.any():
        raise ValueError("identification needs at least 2 different images")
    wins = (r.diagonal()[:, None] > r) & other
    return wins.sum() / other.sum()


def _sum_dtype(device: torch.device) -> torch.dtype:
    # Float64 sums keep digits over many batches; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


class MetricAccumulator:
    """Running per-image sums of the metrics, kept on the batches' device until :meth:`compute`.

    The state is one 1-D tensor ``[count, sum_psnr, sum_ssim, sum_pixel_corr, sum_feature_corr,
    count_feature_corr]``; every entry is a sum, so states from several processes combine by adding them.
    ``count_feature_corr`` counts the images fed with a ``vgg`` (it is 0 when none was), so an accumulator
    that never saw a ``vgg`` reports no ``feature_corr`` and one that saw no images adds nothing. Across
    distributed ranks::

        state = acc.state().to(device)                   # NCCL needs it on the GPU
        torch.distributed.all_reduce(state)              # default op is SUM
        metrics = MetricAccumulator.from_state(state).compute()

    Every rank must call ``all_reduce``, including ranks that saw no batch.
    """

    STATE_SIZE = 6

    def __init__(self) -> None:
        self._state = torch.zeros(self.STATE_SIZE, dtype=torch.float64)

    @torch.no_grad()
    def update(self, fake: Tensor, target: Tensor, vgg: VGGFeatures | None = None) -> None:
        """Add the per-image metrics of a (B, C, H, W) batch; no host sync, and no autograd graph kept."""
        values = [psnr(fake, target), ssim(fake, target), pixel_corr(fake, target)]  # 3 x (B,)
        count = values[0].new_full((), fake.shape[0])  # a fill kernel, not a host-to-device copy
        if vgg is None:
            features = [count.new_zeros(()), count.new_zeros(())]
        else:
            features = [feature_corr(vgg, fake, target).sum(), count]
        batch = torch.stack([count, *(v.sum() for v in values), *features])  # (STATE_SIZE,)
        # Follows the batches' device; a move happens once, on the first batch.
        device = fake.device
        self._state = self._state.to(device, _sum_dtype(device)) + batch.to(_sum_dtype(device))

    def state(self) -> Tensor:
        """A copy of the (STATE_SIZE,) sums, safe to all-reduce in place."""
        return self._state.clone()

    @classmethod
    def from_state(cls, state: Tensor) -> MetricAccumulator:
        """An accumulator holding ``state`` (e.g. the all-reduced sum of every rank's :meth:`state`)."""
        if state.shape != (cls.STATE_SIZE,):
            raise ValueError(f"state must be a 1-D tensor of {cls.STATE_SIZE} sums, got shape {tuple(state.shape)}")
        acc = cls()
        acc._state = state.detach().to(_sum_dtype(state.device)).clone()
        return acc

    def compute(self) -> dict[str, float]:
        """Mean of each metric over all images seen; the one host sync. Raises ValueError if none were."""
        count, *sums, feature_count = self._state.tolist()
        if count == 0:
            raise ValueError("no images were accumulated; cannot average metrics over zero images")
        means = dict(zip(METRIC_NAMES[:3], (s / count for s in sums[:3]), strict=True))
        if feature_count > 0:
            means["feature_corr"] = sums[3] / feature_count
        return means


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` in eval mode, then restore every submodule's own train flag, even after an error.

    Flags are restored per submodule, not with ``module.train(previous)``, so a deliberately mixed state
    (e.g. a frozen BatchNorm inside a training generator) survives.
    """
    previous = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, training in previous:
            m.training = training


@torch.no_grad()
def evaluate(
    gan: GAN,
    batches: Iterable[tuple[Tensor, Tensor]],
    vgg: VGGFeatures | None = None,
    device: torch.device | str = "cpu",
    keep: list[tuple[Tensor, Tensor]] | None = None,
) -> dict[str, float]:
    """Mean metrics of ``gan.reconstruct(responses)`` against the images over all ``batches``.

    ``batches`` yields (responses (B, E), images (B, C, H, W) float in [0, 1]); each pair is moved to
    ``device``, where the models must already be. The generator, the projection (if a module) and vgg run in eval
    mode, so BatchNorm uses and never updates its running statistics and dropout is off; every module's
    previous mode is restored afterwards. Raises ValueError if ``batches`` is empty. With ``keep``, each batch's
    (fake, image) pair is appended to it, on the CPU.
    """
    models = [m for m in (gan.generator, gan.projection, vgg) if isinstance(m, nn.Module)]
    acc = MetricAccumulator()
    with eval_mode(*models):
        for responses, images in batches:
            responses = responses.to(device, non_blocking=True)  # (B, E)
            images = images.to(device, non_blocking=True)  # (B, C, H, W)
            fake = gan.reconstruct(responses)  # (B, C, H, W)
            acc.update(fake, images, vgg)
            if keep is not None:
                keep.append((fake.cpu(), images.cpu()))
    return acc.compute()
