"""Using a trained run: pick its best or last checkpoint, evaluate it on a dataset, reconstruct images from new
responses. No Ray: a laptop with the run directory, or access to the bucket it was written to, is enough."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from rfgan import storage
from rfgan.data.format import read_info, read_rfs, read_split, to_tensors
from rfgan.errors import DataError, MissingVGGWeightsError
from rfgan.evaluate.metrics import evaluate, identification_accuracy
from rfgan.gan.build import GAN, build_gan
from rfgan.gan.vgg import VGGFeatures
from rfgan.run.artifacts import save_grid
from rfgan.run.checkpoint import Checkpoint, find_checkpoint, open_checkpoint

# Pairwise identification compares every reconstruction with every target: the first N images bound its cost.
IDENTIFICATION_MAX = 2000


def load_trained(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[GAN, Checkpoint]:
    """The generator (eval mode) and RF projection of a checkpoint (local or a URI); no D, no VGG."""
    ckpt = open_checkpoint(checkpoint, map_location=device)
    gan = build_gan(ckpt.config, ckpt.info, ckpt.rfs, with_vgg=False, with_d=False)
    ckpt.restore(gan)
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


def evaluate_run(
    run: str, data: str, split: str = "val", which: str = "best", device: str = "cpu", allow_other_rfs: bool = False
) -> dict[str, Any]:
    """Metrics of a checkpoint on a dataset split; they and a grid PNG are written into the run directory.
    A dataset with other RFs than the training data is refused unless `allow_other_rfs` (then the JSON says so)."""
    checkpoint = find_checkpoint(run, which)
    gan, ckpt = load_trained(checkpoint, device)
    same_rfs = ckpt.check_matches(read_info(data), read_rfs(data), str(data), allow_other_rfs=allow_other_rfs)
    rows = read_split(data, split)
    vgg, feature_name = feature_net(ckpt)
    vgg = vgg.to(device)
    batches = [
        to_tensors({k: rows[k][i : i + 64] for k in ("responses", "image")})
        for i in range(0, len(rows["sample_id"]), 64)
    ]
    outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
    metrics = evaluate(gan, batches, vgg=vgg, device=device, keep=outputs)
    fakes, targets = (torch.cat(t) for t in zip(*outputs))
    n = min(len(fakes), IDENTIFICATION_MAX)
    ids = torch.from_numpy(np.array(rows["image_id"][:n]))
    if len(ids.unique()) >= 2:
        metrics["identification"] = float(identification_accuracy(fakes[:n], targets[:n], ids))
    grid = storage.join(run, f"eval_{split}.png")
    with tempfile.TemporaryDirectory(prefix="rfgan-eval-") as tmp:
        save_grid(Path(tmp, "grid.png"), targets[:8], fakes[:8])
        storage.upload(Path(tmp, "grid.png"), grid)
    result = {
        **metrics,
        "checkpoint": checkpoint,
        "epoch": ckpt.epoch,
        "split": split,
        "n_images": len(rows["sample_id"]),
        "feature_net": feature_name,
        "grid": grid,
    }
    if not same_rfs:
        result["warning"] = "evaluated on a dataset whose RF table differs from the training data's (--allow-other-rfs)"
    storage.write_bytes(storage.join(run, f"eval_{split}.json"), (json.dumps(result, indent=1) + "\n").encode())
    return result


def reconstruct(run: str, responses_path: str, out: str, which: str = "best", device: str = "cpu") -> Path:
    """Images from new responses (N, E): `out/reconstructions.npy` (N, H, W, C) uint8 and one PNG per row."""
    gan, ckpt = load_trained(find_checkpoint(run, which), device)
    try:
        responses = np.load(responses_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{responses_path}: cannot read it as a .npy array ({e}).") from e
    e = ckpt.info.n_electrodes
    if responses.ndim != 2 or responses.shape[1] != e:
        raise DataError(
            f"{responses_path}: responses are {responses.shape}; this model needs (N, {e}), one column "
            "per electrode in the order of the run's rfs.csv."
        )
    bad = ~np.isfinite(responses).all(axis=1)
    if bad.any():
        raise DataError(f"{responses_path}: rows {np.flatnonzero(bad)[:10].tolist()} hold NaN or infinite responses.")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = []
    with torch.no_grad():
        for i in range(0, len(responses), 64):
            r = torch.as_tensor(responses[i : i + 64], dtype=torch.float32, device=device)
            fake = gan.reconstruct(r)  # (B, C, H, W) in [0, 1]
            images.append((fake.permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8))
    images = np.concatenate(images)
    np.save(out_dir / "reconstructions.npy", images)
    for i, im in enumerate(images):
        Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(out_dir / f"{i:05d}.png")
    return out_dir
