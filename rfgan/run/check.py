"""`rfgan check`: verify a dataset's content against the hashes in its metadata.json, read it end to end the way
training will (Ray Data, the RF projection), and say what is in it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from rfgan.data.format import open_split, read_info, read_rfs, to_tensors, verify_content
from rfgan.data.rf import rf_mask
from rfgan.errors import DataError
from rfgan.gan.rf_input import RFProjection
from rfgan.run.launch import init_ray


def check_dataset(path: str | os.PathLike, batch_size: int = 64, address: str | None = None) -> Iterator[str]:
    """Validate metadata, RF table, schemas and every byte of every shard against its hash (no Ray), then stream every
    split through Ray Data and the RF projection. Yields report lines; raises DataError on the first problem."""
    info = read_info(path)
    rfs = read_rfs(path, info)  # its hash checked
    hashed = verify_content(path, info)  # every shard's schema (split_files) and hash
    areas = ", ".join(f"{a}: {int((rfs.area == a).sum())}" for a in rfs.area_names()) if rfs.area is not None else "-"
    coverage = rf_mask(rfs, info.image_size, info.fov_deg, radius_sigmas=2.0).mean()
    yield (
        f"{path}: {info.n_electrodes} electrodes ({areas}), images {info.image_size[0]}x{info.image_size[1]}x"
        f"{info.channels} spanning {info.fov_deg}°, RFs (2σ discs) cover {coverage:.0%} of the image"
    )
    shards = sum(len(files) for files in info.shards.values())
    yield (
        f"content: {shards} shards ({hashed / 2**20:.1f} MiB) and rfs.csv match the SHA-256 in metadata.json; "
        f"fingerprint {info.fingerprint[:12]}"
    )
    projection = RFProjection.from_table(
        rfs, info.image_size, info.fov_deg, mean=np.asarray(info.response_mean), std=np.asarray(info.response_std)
    )
    # A Ray of its own unless --address (or $RAY_ADDRESS) names one: never one that `ray start` left on this machine.
    init_ray(address, min_cpus=2)
    for split, expected in info.splits.items():
        rows, ids = 0, []
        for batch in open_split(path, split).iter_torch_batches(batch_size=batch_size):
            responses, images = to_tensors(batch)
            if rows == 0:
                x = projection(responses)
                first = (
                    f"generator input {tuple(x.shape)}, target {tuple(images.shape)} in "
                    f"[{images.min():.2f}, {images.max():.2f}]"
                )
            rows += len(responses)
            ids.append(batch["sample_id"].numpy())
        if rows != expected:
            raise DataError(
                f"{path}/{split}: read {rows} rows but metadata.json says {expected}; a shard is "
                "missing or was replaced: re-create the dataset (rfgan synth/ingest)."
            )
        if len(np.unique(np.concatenate(ids))) != rows:
            raise DataError(
                f"{path}/{split}: sample_id values repeat; a shard was copied twice: re-create the dataset."
            )
        yield f"{split}: {rows} rows read through Ray Data; first batch: {first}"
