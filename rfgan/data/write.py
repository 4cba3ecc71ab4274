"""Writing an rfgan dataset (for synth and ingest), safely: everything goes to a staging folder beside --out that
replaces it in one rename once complete, so that a crash, Ctrl-C or bad input leaves no half-dataset that looks
whole; an --out that is not a dataset (or a home folder) is refused before any work. The format itself is
rfgan.data.format.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from rfgan import storage
from rfgan.data.format import (
    FORMAT,
    IMAGE_ENCODINGS,
    METADATA_FILE,
    RFS_FILE,
    SPLITS,
    DatasetInfo,
    Shard,
    parquet_schema,
    response_stats,
    response_sums,
    shard_facts,
)
from rfgan.data.rf import RFTable
from rfgan.errors import DataError, UsageError
from rfgan.outputs import owner_tag, remove_stale_staging, swap_in


@dataclass(frozen=True)
class Samples:
    """A chunk of rows of one split, in memory."""

    sample_id: np.ndarray  # (n,) int64
    image_id: np.ndarray  # (n,) int64
    repeat: np.ndarray  # (n,) int32
    responses: np.ndarray  # (n, E) float32
    images: np.ndarray  # (n, H, W, C) uint8

    def __len__(self) -> int:
        return len(self.sample_id)


# zlib level 1: on natural-like scenes it stores nearly level 6's bytes and encodes faster; decoding costs the same
# (benchmarks/bench_image_encoding.py).
PNG_LEVEL = 1


def encode_png(image: np.ndarray) -> bytes:
    """One (H, W, C) uint8 image as a PNG (grayscale for C = 1, RGB for C = 3)."""
    out = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(out, format="PNG", compress_level=PNG_LEVEL)
    return out.getvalue()


def _samples_to_table(s: Samples, schema: pa.Schema, fov_deg: float, sums: tuple[np.ndarray, np.ndarray]) -> pa.Table:
    n, e = s.responses.shape
    schema = schema.with_metadata(shard_facts(s.images.shape[1:], fov_deg, sums))
    if pa.types.is_binary(schema.field("image").type):
        image = pa.array([encode_png(im) for im in s.images], pa.binary())
    else:
        image = pa.FixedSizeListArray.from_arrays(pa.array(s.images.reshape(-1), pa.uint8()), s.images[0].size)
    return pa.table(
        {
            "sample_id": pa.array(s.sample_id, pa.int64()),
            "image_id": pa.array(s.image_id, pa.int64()),
            "repeat": pa.array(s.repeat, pa.int32()),
            "responses": pa.FixedSizeListArray.from_arrays(pa.array(s.responses.reshape(-1), pa.float32()), e),
            "image": image,
        },
        schema=schema,
    )


def _check_chunk(s: Samples, split: str, n_electrodes: int, image_shape: tuple[int, int, int]) -> None:
    n = len(s)
    if s.responses.shape != (n, n_electrodes):
        raise DataError(f"{split}: responses have shape {s.responses.shape}, expected ({n}, {n_electrodes}).")
    if s.images.shape != (n, *image_shape) or s.images.dtype != np.uint8:
        raise DataError(f"{split}: images are {s.images.dtype}{s.images.shape}, expected uint8 ({n}, {image_shape}).")
    bad = ~np.isfinite(s.responses).all(axis=1)
    if bad.any():
        raise DataError(f"{split}: responses are NaN or infinite in sample(s) {s.sample_id[bad][:10].tolist()}.")


def _write_shard(table: pa.Table, path: Path, name: str) -> Shard:
    """One Parquet shard, with a CRC32 in every page header (any Parquet reader can verify them); built in memory
    so that the bytes hashed are the bytes written, without reading the file back."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", write_page_checksum=True)
    data = sink.getvalue()
    path.write_bytes(data)
    return Shard(name, table.num_rows, data.size, hashlib.sha256(data).hexdigest())


def _write_rfs(rfs: RFTable, path: Path) -> str:
    """rfs.csv, and the SHA-256 of its bytes."""
    rfs.to_csv(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_dataset(
    out: str | os.PathLike,
    *,
    rfs: RFTable,
    fov_deg: float,
    image_size: tuple[int, int],
    channels: int,
    splits: Mapping[str, Iterable[Samples]],
    source: dict[str, Any],
    overwrite: bool = False,
    on_rows: Callable[[int], None] | None = None,
    image_encoding: str = "raw",
) -> DatasetInfo:
    """Write a dataset atomically: everything goes to a hidden sibling directory that is renamed to `out` only when
    complete, so a failure part-way (bad chunk, full disk, Ctrl-C) leaves nothing behind and loses nothing.

    `overwrite` replaces only an existing rfgan dataset (see `check_output`). Each chunk of `splits[name]` becomes
    one Parquet shard. `on_rows(n)` is called after each shard (progress bars). A URI (`s3://…`) is written locally
    first, then uploaded with metadata.json last: a dataset without it is not read as one, so a failed upload
    leaves no half-dataset that looks whole. `image_encoding` "png" stores each image as a PNG (schema version 2):
    about half the bytes, at the cost of encoding here and decoding in every reader.
    """
    if image_encoding not in IMAGE_ENCODINGS:
        raise UsageError(f"image encoding {image_encoding!r}: choose one of {list(IMAGE_ENCODINGS)}.")
    check_output(out, overwrite)
    if storage.is_remote(out):
        return _write_remote(
            os.fspath(out),
            overwrite=overwrite,
            rfs=rfs,
            fov_deg=fov_deg,
            image_size=image_size,
            channels=channels,
            splits=splits,
            source=source,
            on_rows=on_rows,
            image_encoding=image_encoding,
        )
    given = os.fspath(out)
    # Symlinks resolved: the staging folder must sit on the same filesystem as the folder it is renamed to.
    out = Path(os.path.realpath(given))
    unknown = set(splits) - set(SPLITS)
    if unknown or "train" not in splits or "val" not in splits:
        raise ValueError(f"splits must include 'train' and 'val' and only {SPLITS}, got {sorted(splits)}")
    n_electrodes = len(rfs)
    image_shape = (*image_size, channels)
    schema = parquet_schema(n_electrodes, int(np.prod(image_shape)), image_encoding)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"cannot write {given}: cannot create its folder {out.parent} ({e.strerror}); choose another --out."
        ) from e
    remove_stale_staging(out)
    tmp = out.parent / f".{out.name}.tmp-{owner_tag()}"
    try:
        tmp.mkdir()
    except OSError as e:
        raise DataError(
            f"cannot write {given}: cannot create anything in {out.parent} ({e.strerror}); choose "
            f"another --out, or make {out.parent} writable."
        ) from e
    old = None
    try:
        counts: dict[str, int] = {}
        shards: dict[str, list[Shard]] = {}
        total = np.zeros(n_electrodes)  # float64, as response_sums
        total_sq = np.zeros(n_electrodes)
        for split, chunks in splits.items():
            (tmp / split).mkdir()
            counts[split] = 0
            shards[split] = []
            for k, chunk in enumerate(chunks):
                if len(chunk) == 0:
                    continue
                _check_chunk(chunk, split, n_electrodes, image_shape)
                name = f"{split}/part-{k:05d}.parquet"
                sums = response_sums(chunk.responses)
                shards[split].append(_write_shard(_samples_to_table(chunk, schema, fov_deg, sums), tmp / name, name))
                counts[split] += len(chunk)
                if split == "train":
                    total += sums[0]
                    total_sq += sums[1]
                if on_rows is not None:
                    on_rows(len(chunk))
            if counts[split] == 0:
                raise DataError(f"the {split!r} split is empty; it needs at least one sample.")
        mean, std, varies = response_stats(total, total_sq, counts["train"])
        if not varies.any():
            # One dead electrode is common, and standardising handles it (response_stats); when none varies,
            # the responses carry nothing about the images, and every decoder would be the mean image.
            raise DataError(
                f"every electrode responds the same to all {counts['train']} training samples (zero variance): "
                "the responses carry no information about the images; check that the right array was given."
            )
        info = DatasetInfo(
            image_size=tuple(image_size),
            channels=channels,
            fov_deg=float(fov_deg),
            n_electrodes=n_electrodes,
            splits=counts,
            response_mean=tuple(mean.tolist()),
            response_std=tuple(std.tolist()),
            source=source,
            image_encoding=image_encoding,
            shards={split: tuple(files) for split, files in shards.items()},
            rfs_sha256=_write_rfs(rfs, tmp / RFS_FILE),
        )
        (tmp / METADATA_FILE).write_text(json.dumps(info.to_json(), indent=1) + "\n")
        # Again at the end: a folder a user made there meanwhile, or a dataset another command wrote there without
        # --overwrite, is refused, not replaced.
        check_output(given, overwrite)
        old = swap_in(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):  # a full disk, a failing device: pyarrow's message names no file
            why = os.strerror(e.errno) if e.errno else str(e).splitlines()[0]
            raise DataError(
                f"cannot write {given}: {why} (while writing it in {tmp}, now removed); free space there or "
                "choose another --out. Nothing was written."
            ) from e
        raise
    if old is not None:
        try:
            shutil.rmtree(old, ignore_errors=True)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(
                f"{given} was written; what is left of the dataset it replaced ({old.name}) goes "
                "at the next write to it"
            ) from None
    return info


def _write_remote(uri: str, overwrite: bool, **dataset: Any) -> DatasetInfo:
    fs, root = storage.filesystem(uri)
    with tempfile.TemporaryDirectory(prefix="rfgan-dataset-") as staging:
        local = Path(staging, "dataset")
        info = write_dataset(local, **dataset)
        metadata = (local / METADATA_FILE).read_bytes()
        (local / METADATA_FILE).unlink()
        deleted = False
        check_output(uri, overwrite)  # again: what was written there meanwhile is refused, not replaced
        existing = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        try:
            if existing:
                # Object stores cannot swap a folder in one step: the old dataset goes before the new one is up.
                fs.delete_dir_contents(root)
                deleted = True
            storage.upload(local, uri)
            storage.write_bytes(storage.join(uri, METADATA_FILE), metadata)
        except BaseException as e:
            try:
                fs.delete_dir(root)
            except OSError:
                pass  # the upload's own error is the one to report
            if deleted and isinstance(e, KeyboardInterrupt):
                raise KeyboardInterrupt(
                    f"{uri} was being replaced: the old dataset is deleted and the new one was not finished"
                ) from None
            raise
    return info


def check_output(out: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse an --out that `write_dataset` must not write, before any work: one that holds something other than
    an rfgan dataset (even with `overwrite`, which replaces only a dataset: its metadata.json says format
    rfgan-dataset), an existing dataset without `overwrite`, the current folder, a parent of it or a home folder
    (a dataset replaces its folder whole), or a path through a regular file."""
    given = os.fspath(out)
    fs, path = storage.filesystem(given)
    if isinstance(fs, pafs.LocalFileSystem):  # also file:// URIs
        path = os.path.realpath(path)
        place = _protected_place(path)
        if place is not None:
            raise DataError(
                f"{given} is {place}; rfgan writes a dataset as a folder of its own and replaces that "
                "folder whole, so it will not write there: give a new folder, e.g. --out "
                f"{storage.join(given, 'dataset')}."
            )
        for p in (path, *(str(a) for a in Path(path).parents)):
            kind = fs.get_file_info(p).type
            if kind == pafs.FileType.Directory:
                break
            if kind != pafs.FileType.NotFound:
                where = "it" if p == path else f"{p}, a folder on its path,"
                raise DataError(f"cannot write {given}: {where} is a file, not a folder; choose another --out.")
    elif fs.get_file_info(path).type == pafs.FileType.File:
        raise DataError(f"cannot write {given}: it is a file, not a folder; choose another --out.")
    if not fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        return  # nothing there, or an empty folder: nothing to lose
    problem = _not_a_dataset(given)
    if problem is not None:
        hint = " (--overwrite replaces only an rfgan dataset)" if overwrite else ""
        raise DataError(
            f"{given} already exists and is not an rfgan dataset ({problem}); choose another --out, or "
            f"empty or remove it yourself if you mean to replace it{hint}."
        )
    if not overwrite:
        raise DataError(f"{given} already exists and is not empty; choose another --out or pass --overwrite.")


def _not_a_dataset(path: str) -> str | None:
    """Why the existing folder `path` is not recognisably an rfgan dataset; None if it is one."""
    meta = storage.join(path, METADATA_FILE)
    if not storage.is_file(meta):
        # A dataset's upload sends metadata.json last: one cut off part-way has none.
        cut_off = ", which a dataset whose upload was cut off also lacks" if storage.is_remote(path) else ""
        return f"it has no {METADATA_FILE}{cut_off}"
    try:
        fmt = json.loads(storage.read_text(meta)).get("format")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return f"its {METADATA_FILE} cannot be read as rfgan's"
    return None if fmt == FORMAT else f"its {METADATA_FILE} has format {fmt!r}, not {FORMAT!r}"


def _protected_place(real: str) -> str | None:
    """What `real` (a resolved local path) is, if it is a folder no dataset may replace."""
    try:
        cwd = os.path.realpath(os.getcwd())
    except OSError:  # the current folder was deleted
        cwd = None
    if real == cwd:
        return "the current folder"
    if cwd is not None and cwd.startswith(real.rstrip("/") + "/"):
        return f"a parent of the current folder ({cwd})"
    homes = {os.path.realpath(os.path.expanduser("~"))}
    try:
        import pwd

        homes.add(os.path.realpath(pwd.getpwuid(os.getuid()).pw_dir))
    except (ImportError, KeyError):
        pass
    if real in homes:
        return "a home folder"
    return None
