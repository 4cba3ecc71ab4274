"""The standard table of image-reconstruction papers, as `rfgan eval`, `rfgan baseline` and `rfgan report` give it:
PSNR and SSIM on luma, PixCorr, two-way identification on pixels and on pretrained feature layers, top-1 and top-5
retrieval, layer-wise AlexNet feature correlation, VGG19 feature correlation; inside the RF mask too where the run
masks. Every value is a mean over images with its standard error.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rfgan.evaluate.features import ALEXNET_LAYERS, FeatureNets
from rfgan.evaluate.metrics import (
    correlations,
    identification,
    pixel_corr,
    pixel_corr_masked,
    psnr,
    psnr_masked,
    retrieval,
    ssim,
    ssim_masked,
    unit_rows,
)

# Identification and retrieval compare every reconstruction with every target: the first N images bound their cost,
# and the memory of the feature rows they keep (about 1.6 MB per image at 96x96, in half precision).
IDENTIFICATION_MAX = 1000
RETRIEVAL_K = (1, 5)
# Feature layers of two-way identification: AlexNet layers 2 and 5 as MindEye's metric code defines them, and a
# middle and the last VGG19 layer of the perceptual loss.
IDENTIFICATION_LAYERS = {
    "identification_alexnet2": "alexnet_conv2",
    "identification_alexnet5": "alexnet_conv5",
    "identification_vgg19_relu3_1": "vgg19_relu3_1",
    "identification_vgg19_relu5_1": "vgg19_relu5_1",
}
VGG19_LAYERS = ("vgg19_relu1_1", "vgg19_relu2_1", "vgg19_relu3_1", "vgg19_relu4_1", "vgg19_relu5_1")


@dataclass(frozen=True)
class Metric:
    key: str  # in the JSON of eval and baseline
    label: str  # in tables
    digits: int = 3  # decimals shown


# Every metric here is better when higher, so a table marks the highest mean of each row as the best.
METRICS: tuple[Metric, ...] = (
    Metric("psnr", "PSNR, luma (dB)", 2),
    Metric("ssim", "SSIM, luma"),
    Metric("pixel_corr", "PixCorr"),
    Metric("identification", "2-way identification, pixels"),
    *(Metric(f"retrieval_top{k}", f"top-{k} retrieval, pixels") for k in RETRIEVAL_K),
    Metric("identification_alexnet2", "2-way identification, AlexNet(2)"),
    Metric("identification_alexnet5", "2-way identification, AlexNet(5)"),
    Metric("identification_vgg19_relu3_1", "2-way identification, VGG19 relu3_1"),
    Metric("identification_vgg19_relu5_1", "2-way identification, VGG19 relu5_1"),
    *(Metric(f"corr_alexnet_{name}", f"feature r, AlexNet {name}") for name in ALEXNET_LAYERS.values()),
    Metric("feature_corr", "feature r, VGG19 (mean of relu1_1–5_1)"),
    Metric("psnr_masked", "PSNR in RF mask (dB)", 2),
    Metric("ssim_masked", "SSIM in RF mask"),
    Metric("pixel_corr_masked", "PixCorr in RF mask"),
)
BY_KEY = {m.key: m for m in METRICS}


@torch.no_grad()
def per_image_metrics(
    fakes: Tensor,
    targets: Tensor,
    image_ids: Tensor,
    nets: FeatureNets | None = None,
    mask: Tensor | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
) -> dict[str, Tensor]:
    """Every metric of the table for each image: {key: (n,) float tensor on the CPU}.

    ``fakes`` and ``targets`` (N, C, H, W) in [0, 1] and ``image_ids`` (N,) may live on the CPU; batches go to
    ``device``, where ``nets`` must be. Without ``nets`` the feature metrics are left out; with ``mask`` ((H, W), 1
    inside the RFs) the masked ones are added. Identification and retrieval cover the first IDENTIFICATION_MAX
    images; they are left out when those show fewer than 2 different images.
    """
    n_pairs = min(len(fakes), IDENTIFICATION_MAX)
    values: dict[str, list[Tensor]] = defaultdict(list)
    # Unit rows of the identification layers for the first n_pairs images, (fake, target), half precision.
    rows: dict[str, tuple[list[Tensor], list[Tensor]]] = defaultdict(lambda: ([], []))
    for start in range(0, len(fakes), batch_size):
        fake = fakes[start : start + batch_size].to(device)  # (B, C, H, W)
        target = targets[start : start + batch_size].to(device)
        per_batch = {"psnr": psnr(fake, target), "ssim": ssim(fake, target), "pixel_corr": pixel_corr(fake, target)}
        if mask is not None:
            per_batch.update(
                psnr_masked=psnr_masked(fake, target, mask),
                ssim_masked=ssim_masked(fake, target, mask),
                pixel_corr_masked=pixel_corr_masked(fake, target, mask),
            )
        if nets is not None:
            ff, tf = nets(fake), nets(target)
            layer_r = {layer: (unit_rows(ff[layer]) * unit_rows(tf[layer])).sum(dim=1) for layer in ff}  # (B,) each
            per_batch.update({f"corr_{layer}": layer_r[layer] for layer in ff if layer.startswith("alexnet_")})
            per_batch["feature_corr"] = torch.stack([layer_r[layer] for layer in VGG19_LAYERS]).mean(dim=0)
            keep = max(0, min(len(fake), n_pairs - start))
            for layer in IDENTIFICATION_LAYERS.values():
                rows[layer][0].append(unit_rows(ff[layer][:keep]).half().cpu())
                rows[layer][1].append(unit_rows(tf[layer][:keep]).half().cpu())
        for key, v in per_batch.items():
            values[key].append(v.float().cpu())
    out = {key: torch.cat(v) for key, v in values.items()}

    ids = image_ids[:n_pairs].cpu()
    n_images = len(ids.unique())
    if n_images < 2:  # one image (however often shown) has no other to be told apart from
        return out
    r = correlations(unit_rows(fakes[:n_pairs]), unit_rows(targets[:n_pairs]))  # (n, n) pixel correlations
    out["identification"] = identification(r, ids)
    for k in RETRIEVAL_K:
        if n_images > k:  # top-k among k images or fewer always succeeds
            out[f"retrieval_top{k}"] = retrieval(r, ids, k)
    for key, layer in IDENTIFICATION_LAYERS.items():
        if layer in rows:
            fake_rows, target_rows = (torch.cat(chunks) for chunks in rows[layer])
            out[key] = identification(correlations(fake_rows, target_rows), ids)
    return out


def summarize(values: dict[str, Tensor]) -> dict[str, dict[str, float | int | None]]:
    """{key: {mean, se, n}} in the table's order: the mean over images and its standard error (sample standard
    deviation / sqrt(n); None for a single image)."""
    out = {}
    for metric in METRICS:
        if metric.key in values:
            v = values[metric.key].double()
            n = len(v)
            se = (v.std() / math.sqrt(n)).item() if n > 1 else None
            out[metric.key] = {"mean": v.mean().item(), "se": se, "n": n}
    return out


def paired(
    a: dict[str, list[float | None]], b: dict[str, list[float | None]], ids_a: list, ids_b: list
) -> dict[str, dict[str, float | int | None]]:
    """Paired differences b − a over the images both were scored on, in the table's order: {key: {mean, se, n,
    better, worse}}, `better` and `worse` the shares of images where b is higher and lower (for retrieval, 0 or 1 an
    image, most images tie). Per-image values are matched by image position, which
    the two evaluations must share (the same split: `ids_a` and `ids_b` equal); metrics of only one are left out."""
    if list(ids_a) != list(ids_b):
        raise ValueError("the two evaluations scored different images; evaluate both on the same split")
    out = {}
    for metric in METRICS:
        if metric.key not in a or metric.key not in b:
            continue
        pairs = [(x, y) for x, y in zip(a[metric.key], b[metric.key]) if x is not None and y is not None]
        if not pairs:
            continue
        d = torch.tensor([y - x for x, y in pairs], dtype=torch.float64)
        n = len(d)
        out[metric.key] = {
            "mean": d.mean().item(),
            "se": (d.std() / math.sqrt(n)).item() if n > 1 else None,
            "n": n,
            "better": (d > 0).double().mean().item(),
            "worse": (d < 0).double().mean().item(),
        }
    return out


def mean_se_text(key: str, value: dict[str, float | int | None]) -> str:
    """The value as text, e.g. 0.512 ± 0.004, with the metric's decimals."""
    digits = BY_KEY[key].digits
    se = "–" if value["se"] is None else f"{value['se']:.{digits}f}"
    return f"{value['mean']:.{digits}f} ± {se}"


def table_text(metrics: dict[str, dict[str, float | int | None]]) -> str:
    """The table as aligned text lines: label, mean ± SE, and the number of images."""
    width = max(len(BY_KEY[key].label) for key in metrics)
    return "\n".join(
        f"{BY_KEY[key].label:<{width}}  {mean_se_text(key, value)}  (n={value['n']})" for key, value in metrics.items()
    )


def feature_nets_text(nets: dict[str, dict[str, Any]] | None) -> str:
    """What an evaluation's `feature_nets` say, in words."""
    if not nets:
        return "none (--no-feature-metrics)"
    return "; ".join(
        f"{name} {n['weights']}{'' if n['pretrained'] else ' (NOT torchvision ImageNet file: not pretrained)'}"
        for name, n in nets.items()
    )
