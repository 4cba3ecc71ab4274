"""Reconstruction metrics: PSNR, SSIM, pixel and feature correlation (also inside an RF mask), two-way
identification and top-k retrieval, and the running sums of validation during training.

Per-image functions take ``fake`` and ``target`` of shape (B, C, H, W), float, in [0, 1], and return (B,)
tensors. None of them reads values back to the host, so they can run every batch on an accelerator without
stalling it; :class:`MetricAccumulator` converts to Python floats only in :meth:`MetricAccumulator.compute`.
The standard table of `rfgan eval` is assembled from these in rfgan.evaluate.table.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from rfgan.gan.losses import to_luma
from rfgan.gan.vgg import VGGFeatures

# torchmetrics is imported where it is used: importing it costs about a second (it pulls in scipy), and the
# driver of `rfgan train` never needs it.

__all__ = [
    "PSNR_CAP_DB",
    "CORR_EPS",
    "METRIC_NAMES",
    "to_luma",
    "psnr",
    "ssim",
    "pixel_corr",
    "psnr_masked",
    "ssim_masked",
    "pixel_corr_masked",
    "feature_corr",
    "unit_rows",
    "correlations",
    "identification",
    "retrieval",
    "sum_dtype",
    "MetricAccumulator",
    "eval_mode",
]

# Identical images have infinite PSNR (MSE 0), which would turn a dataset mean into inf. 100 dB is MSE 1e-10,
# above any pair that differs by even one 8-bit step in one pixel of an image up to ~256x256x3.
PSNR_CAP_DB = 100.0
# Pearson r = cov / (std_a * std_b + CORR_EPS): a constant image (e.g. a collapsed generator) has zero spread,
# so r is undefined; the epsilon makes it 0 ("no linear relation") instead of NaN, and is far below the spread
# of any non-constant image, so other values are unaffected.
CORR_EPS = 1e-8
METRIC_NAMES: tuple[str, ...] = ("psnr", "ssim", "pixel_corr", "feature_corr")


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


def psnr(fake: Tensor, target: Tensor) -> Tensor:
    """(B,) PSNR in dB on luma, data range 1.0, capped at PSNR_CAP_DB so identical pairs stay finite."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    fake, target = _check_pair(fake, target)
    values = peak_signal_noise_ratio(
        to_luma(fake), to_luma(target), data_range=1.0, reduction="none", dim=(1, 2, 3)
    )  # (B,)
    return values.clamp(max=PSNR_CAP_DB)


def ssim(fake: Tensor, target: Tensor) -> Tensor:
    """(B,) SSIM on luma, data range 1.0, 11x11 Gaussian window (sigma 1.5); images need H, W >= 6."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    fake, target = _check_pair(fake, target)
    return structural_similarity_index_measure(to_luma(fake), to_luma(target), data_range=1.0, reduction="none")  # (B,)


def unit_rows(x: Tensor) -> Tensor:
    """(B, N) float32 rows of x (B, ...), centred and scaled to unit norm: a @ b.T of two such holds Pearson
    correlations. A constant row stays 0 (see CORR_EPS)."""
    x = x.flatten(1).float()
    x = x - x.mean(dim=1, keepdim=True)
    # Each row scaled by its own norm: large feature maps cannot overflow float32 as a product of sums would.
    return x / (x.norm(dim=1, keepdim=True) + CORR_EPS)


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    """(B,) Pearson correlation between rows of (B, N) a and b; 0 where a row is constant (see CORR_EPS)."""
    return (unit_rows(a) * unit_rows(b)).sum(dim=1)


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


def _inside(mask: Tensor, like: Tensor) -> Tensor:
    """The mask ((H, W) or (1, 1, H, W), 1 inside) as a (1, 1, H, W) float on `like`'s device; refuses an empty one."""
    m = mask.reshape(1, 1, *like.shape[-2:]).to(like)
    if not m.any():
        raise ValueError("the mask covers no pixel")
    return m


def psnr_masked(fake: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """(B,) PSNR on luma over the pixels inside `mask` ((H, W) or (1, 1, H, W), 1 inside), capped like psnr."""
    fake, target = _check_pair(fake, target)
    m = _inside(mask, fake)
    mse = ((to_luma(fake) - to_luma(target)) ** 2 * m).sum(dim=(1, 2, 3)) / m.sum()  # (B,)
    return (10 * torch.log10(1 / mse)).clamp(max=PSNR_CAP_DB)


def ssim_masked(fake: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """(B,) mean of the SSIM map (on luma, as ssim) over the pixels inside `mask`."""
    fake, target = _check_pair(fake, target)
    from torchmetrics.functional.image import structural_similarity_index_measure

    m = _inside(mask, fake)
    _, ssim_map = structural_similarity_index_measure(
        to_luma(fake), to_luma(target), data_range=1.0, reduction="none", return_full_image=True
    )  # (B, 1, H, W)
    return (ssim_map * m).sum(dim=(1, 2, 3)) / m.sum()


def pixel_corr_masked(fake: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """(B,) Pearson correlation of each pair over all channels of the pixels inside `mask`."""
    fake, target = _check_pair(fake, target)
    inside = _inside(mask, fake).flatten().bool()  # (H*W,)
    return _pearson(fake.flatten(2)[:, :, inside], target.flatten(2)[:, :, inside])


def correlations(a: Tensor, b: Tensor, block: int = 256) -> Tensor:
    """(A, B) Pearson correlations r[i, j] between the unit rows (unit_rows) a (A, N) and b (B, N), multiplied in
    float32 a block at a time: the rows may be kept in half precision to halve their memory."""
    return torch.cat(
        [
            torch.cat([a[i : i + block].float() @ b[j : j + block].float().T for j in range(0, len(b), block)], 1)
            for i in range(0, len(a), block)
        ]
    )


def _other_images(image_ids: Tensor) -> Tensor:
    """(N, N) True where rows i and j show different images."""
    other = image_ids[:, None] != image_ids[None, :]
    if not other.any():
        raise ValueError("identification and retrieval need at least 2 different images")
    return other


def identification(r: Tensor, image_ids: Tensor | None = None) -> Tensor:
    """(N,) two-way identification of each reconstruction i, from r[i, j] = corr(reconstruction i, target j) (N, N):
    the share of other images' targets j that it correlates less with than with its own (r[i, j] < r[i, i]; a tie
    fails). 0.5 is chance: the "does it resemble *this* image rather than another" figure of decoding studies
    (MindEye's two_way_identification). With ``image_ids`` (N,), pairs showing the same image (repeats) are left out,
    as is j == i."""
    ids = torch.arange(len(r), device=r.device) if image_ids is None else image_ids.to(r.device)
    other = _other_images(ids)
    wins = (r.diagonal()[:, None] > r) & other  # (N, N)
    return wins.sum(dim=1) / other.sum(dim=1)


def retrieval(r: Tensor, image_ids: Tensor, k: int) -> Tensor:
    """(N,) 1 where reconstruction i's own image is among the k images whose targets it correlates most with
    (r (N, N) as for identification), among all distinct images of `image_ids` (each image once, however often it
    was shown); else 0. Ties and NaN count against it, so a constant or NaN reconstruction retrieves nothing."""
    ids = image_ids.to(r.device)
    _other_images(ids)
    _, image = torch.unique(ids, return_inverse=True)  # (N,) index of each row's image among the distinct ones
    rows = torch.arange(len(ids), device=r.device)
    first = torch.full((int(image.max()) + 1,), len(ids), device=r.device)
    first = first.scatter_reduce(0, image, rows, reduce="amin")  # one target row per distinct image
    candidates = r[:, first]  # (N, U)
    own = candidates[rows, image]  # (N,)
    # Other images scoring at least as high; NaN (a NaN reconstruction) counts as beating it, never as losing.
    beaten_by = (~(candidates < own[:, None])).sum(dim=1) - 1
    return (beaten_by < k).float()


def sum_dtype(device: torch.device) -> torch.dtype:
    """Float64 for sums that must keep digits over many batches; float32 on MPS, which has no float64."""
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
        self._state = self._state.to(device, sum_dtype(device)) + batch.to(sum_dtype(device))

    def state(self) -> Tensor:
        """A copy of the (STATE_SIZE,) sums, safe to all-reduce in place."""
        return self._state.clone()

    @classmethod
    def from_state(cls, state: Tensor) -> MetricAccumulator:
        """An accumulator holding ``state`` (e.g. the all-reduced sum of every rank's :meth:`state`)."""
        if state.shape != (cls.STATE_SIZE,):
            raise ValueError(f"state must be a 1-D tensor of {cls.STATE_SIZE} sums, got shape {tuple(state.shape)}")
        acc = cls()
        acc._state = state.detach().to(sum_dtype(state.device)).clone()
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
