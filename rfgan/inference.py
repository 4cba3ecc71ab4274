"""Using a trained run: pick its best or last checkpoint, evaluate it on a dataset, reconstruct images from new
responses. No Ray: a laptop with the run directory is enough."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from rfgan.artifacts import save_grid
from rfgan.checkpoint import SCORE, STATE_FILE, Checkpoint, load_checkpoint
from rfgan.data import read_info, read_split, to_tensors
from rfgan.errors import DataError
from rfgan.losses import MissingVGGWeightsError, VGGFeatures
from rfgan.metrics import evaluate
from rfgan.nets import GAN, build_gan


def find_checkpoint(run: str | os.PathLike, which: str = "best") -> Path:
    """`best` (highest validation SSIM), `last` (highest epoch), or a checkpoint directory's path."""
    if which not in ("best", "last"):
        path = Path(which)
        if not (path / STATE_FILE).exists():
            raise DataError(f"{path} is not a checkpoint directory (no {STATE_FILE}).")
        return path
    candidates = [p.parent for p in Path(run).glob(f"checkpoint*/{STATE_FILE}")]
    if not candidates:
        raise DataError(f"{run} holds no checkpoint; train first (`rfgan train --out {run}`).")
    states = {c: json.loads((c / STATE_FILE).read_text()) for c in candidates}
    if which == "last":
        return max(candidates, key=lambda c: states[c]["epoch"])
    return max(candidates, key=lambda c: (states[c]["metrics"].get(SCORE, float("-inf")), states[c]["epoch"]))


def load_trained(checkpoint_dir: Path, device: str | torch.device = "cpu") -> tuple[GAN, Checkpoint]:
    """The generator (eval mode) and RF projection of a checkpoint; no D, no VGG."""
    ckpt = load_checkpoint(checkpoint_dir, map_location=device)
    gan = build_gan(ckpt.config, ckpt.info, ckpt.rfs, with_vgg=False)
    gan.discriminator = None
    ckpt.restore(gan.generator)
    gan.generator.eval()
    return gan.to(device), ckpt


def feature_net(ckpt: Checkpoint) -> tuple[VGGFeatures, str]:
    """The VGG19 features for feature_corr: ImageNet weights if present, else seeded random ones (labelled)."""
    try:
        return VGGFeatures(weights=ckpt.config.loss.vgg_weights), "vgg19-imagenet"
    except MissingVGGWeightsError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return VGGFeatures(random_init=True, seed=0), "vgg19-random-init (no ImageNet weights found)"


def evaluate_run(run: str, data: str, split: str = "val", which: str = "best",
                 device: str = "cpu") -> dict[str, Any]:
    """Metrics of a checkpoint on a dataset split, plus a grid PNG written into the run directory."""
    checkpoint_dir = find_checkpoint(run, which)
    gan, ckpt = load_trained(checkpoint_dir, device)
    info = read_info(data)
    ckpt.check_matches(info, str(data))
    rows = read_split(data, split)
    vgg, feature_name = feature_net(ckpt)
    vgg = vgg.to(device)
    batches = [to_tensors({k: rows[k][i:i + 64] for k in ("responses", "image")})
               for i in range(0, len(rows["sample_id"]), 64)]
    metrics = evaluate(gan.generator, gan.projection, batches, vgg=vgg, device=device)
    responses, target = batches[0]
    with torch.no_grad():
        fake = gan.generator(gan.projection(responses[:8].to(device)))
    grid = Path(run) / f"eval_{split}.png"
    save_grid(grid, target[:8], fake.cpu())
    return {**metrics, "checkpoint": str(checkpoint_dir), "epoch": ckpt.epoch, "split": split,
            "n_images": len(rows["sample_id"]), "feature_net": feature_name, "grid": str(grid)}


def reconstruct(run: str, responses_path: str, out: str, which: str = "best", device: str = "cpu") -> Path:
    """Images from new responses (N, E): `out/reconstructions.npy` (N, H, W, C) uint8 and one PNG per row."""
    checkpoint_dir = find_checkpoint(run, which)
    gan, ckpt = load_trained(checkpoint_dir, device)
    try:
        responses = np.load(responses_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{responses_path}: cannot read it as a .npy array ({e}).") from e
    e = ckpt.info.n_electrodes
    if responses.ndim != 2 or responses.shape[1] != e:
        raise DataError(f"{responses_path}: responses are {responses.shape}; this model needs (N, {e}), one column "
                        "per electrode in the order of the run's rfs.csv.")
    bad = ~np.isfinite(responses).all(axis=1)
    if bad.any():
        raise DataError(f"{responses_path}: rows {np.flatnonzero(bad)[:10].tolist()} hold NaN or infinite responses.")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = []
    with torch.no_grad():
        for i in range(0, len(responses), 64):
            r = torch.as_tensor(responses[i:i + 64], dtype=torch.float32, device=device)
            fake = gan.generator(gan.projection(r))  # (B, C, H, W) in [0, 1]
            images.append((fake.permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8))
    images = np.concatenate(images)
    np.save(out_dir / "reconstructions.npy", images)
    for i, im in enumerate(images):
        Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(out_dir / f"{i:05d}.png")
    return out_dir
