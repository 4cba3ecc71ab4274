"""The rfgan dataset format: writing it (for synth and ingest), validating it, and reading it (NumPy or Ray Data).

A dataset is a directory::

    metadata.json          format, schema_version, image size/channels, field of view, electrode count, splits,
                           per-electrode response mean/std of the training split, provenance, and each split's
                           shards with their row counts (readers refuse a missing, extra or short shard)
    rfs.csv                one row per electrode, in response-column order: electrode_id,x_deg,y_deg,sigma_deg[,area]
    train/part-00000.parquet ...   one row per stimulus presentation
    val/part-00000.parquet ...
    test/...               (optional)

Parquet columns: sample_id int64 (unique in the dataset), image_id int64 (repeats of one image share it),
repeat int32, responses fixed_size_list<float32>[E], and image: by metadata.json's `image_encoding`, either
"raw", fixed_size_list<uint8>[H*W*C] (row-major H, W, C; schema version 1), or "png", binary, one PNG per row
(lossless, about half the bytes of raw pixels on natural-like scenes; schema version 2, which only adds that key).
Only compact responses are stored; the E×H×W generator input is built on the device (rfgan.data.rf.RFProjection).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from PIL import Image, UnidentifiedImageError

from rfgan import storage
from rfgan.data.rf import RFTable
from rfgan.errors import DataError, UsageError

if TYPE_CHECKING:
    import ray.data

FORMAT = "rfgan-dataset"
SCHEMA_VERSION = 2
# Version 1 has no image_encoding (its images are raw); a raw dataset is still written as version 1, so that an
# rfgan from before version 2 reads it.
READS_VERSIONS = (1, 2)
IMAGE_ENCODINGS = ("raw", "png")
SPLITS = ("train", "val", "test")
METADATA_FILE = "metadata.json"
RFS_FILE = "rfs.csv"
# A staging folder left by a writer that was killed is removed by the next write to the same --out once nothing in
# it has changed for this long (a live writer adds a shard every few seconds), or at once if its writer is known dead.
STALE_AFTER_S = 24 * 3600


@dataclass(frozen=True)
class DatasetInfo:
    """What metadata.json holds."""

    image_size: tuple[int, int]  # (H, W)
    channels: int  # 1 (grayscale) or 3 (RGB)
    fov_deg: float  # degrees of visual angle spanned by the image width
    n_electrodes: int
    splits: dict[str, int]  # rows per split
    response_mean: tuple[float, ...]  # (E,) over the training split
    response_std: tuple[float, ...]  # (E,)
    source: dict[str, Any] = field(default_factory=dict)
    image_encoding: str = "raw"  # "raw" pixels or "png", see the module's docstring
    schema_version: int = 1
    # Per split, its Parquet files (relative to the dataset) and their rows, as written. None for datasets written
    # before rfgan recorded them: those are checked by the total of the files' rows only.
    shards: dict[str, tuple[tuple[str, int], ...]] | None = None

    @property
    def image_numel(self) -> int:
        return self.image_size[0] * self.image_size[1] * self.channels

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "schema_version": self.schema_version,
            "image_height": self.image_size[0],
            "image_width": self.image_size[1],
            "channels": self.channels,
            "fov_deg": self.fov_deg,
            "n_electrodes": self.n_electrodes,
            "splits": self.splits,
            "response_mean": list(self.response_mean),
            "response_std": list(self.response_std),
            "source": self.source,
            **({} if self.schema_version < 2 else {"image_encoding": self.image_encoding}),
            **(
                {}
                if self.shards is None
                else {
                    "shards": {
                        split: [{"file": f, "rows": n} for f, n in files] for split, files in self.shards.items()
                    }
                }
            ),
        }

    @classmethod
    def from_json(cls, meta: dict[str, Any], where: str) -> DatasetInfo:
        """Parse and check a metadata.json mapping; `where` names its file in errors."""
        if meta.get("format") != FORMAT:
            raise DataError(f"{where}: 'format' is {meta.get('format')!r}, expected {FORMAT!r}.")
        version = meta.get("schema_version")
        if version not in READS_VERSIONS:
            raise DataError(
                f"{where}: schema_version {version!r} is not supported by this rfgan (it reads versions "
                f"{list(READS_VERSIONS)}); re-create the dataset with this rfgan or install the matching rfgan version."
            )
        encoding = meta.get("image_encoding", "raw") if version >= 2 else "raw"
        if encoding not in IMAGE_ENCODINGS:
            raise DataError(f"{where}: image_encoding {encoding!r} is not one of {list(IMAGE_ENCODINGS)}.")
        required = (
            "image_height",
            "image_width",
            "channels",
            "fov_deg",
            "n_electrodes",
            "splits",
            "response_mean",
            "response_std",
        )
        missing = [k for k in required if k not in meta]
        if missing:
            raise DataError(f"{where}: missing key(s) {missing}.")
        info = cls(
            image_size=(int(meta["image_height"]), int(meta["image_width"])),
            channels=int(meta["channels"]),
            fov_deg=float(meta["fov_deg"]),
            n_electrodes=int(meta["n_electrodes"]),
            splits={str(k): int(v) for k, v in meta["splits"].items()},
            response_mean=tuple(float(v) for v in meta["response_mean"]),
            response_std=tuple(float(v) for v in meta["response_std"]),
            source=meta.get("source", {}),
            image_encoding=encoding,
            schema_version=version,
            shards=_parse_shards(meta["shards"], where) if "shards" in meta else None,
        )
        if info.channels not in (1, 3):
            raise DataError(f"{where}: channels is {info.channels}; rfgan reads grayscale (1) or RGB (3) images.")
        if len(info.response_mean) != info.n_electrodes or len(info.response_std) != info.n_electrodes:
            raise DataError(f"{where}: response_mean/response_std must have n_electrodes={info.n_electrodes} values.")
        if info.shards is not None:
            listed = {split: sum(n for _, n in files) for split, files in info.shards.items()}
            if listed != info.splits:
                raise DataError(
                    f"{where}: 'shards' lists {listed} rows per split but 'splits' says {info.splits}; "
                    "it contradicts itself: re-create the dataset (rfgan synth/ingest)."
                )
        return info


def _parse_shards(value: Any, where: str) -> dict[str, tuple[tuple[str, int], ...]]:
    try:
        return {str(split): tuple((str(f["file"]), int(f["rows"])) for f in files) for split, files in value.items()}
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise DataError(
            f"{where}: 'shards' is not a mapping of split to a list of {{'file': ..., 'rows': ...}} "
            f"({type(e).__name__}: {e}); re-create the dataset (rfgan synth/ingest)."
        ) from e


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


def parquet_schema(n_electrodes: int, image_numel: int, image_encoding: str = "raw") -> pa.Schema:
    image = pa.list_(pa.uint8(), image_numel) if image_encoding == "raw" else pa.binary()
    return pa.schema(
        [
            ("sample_id", pa.int64()),
            ("image_id", pa.int64()),
            ("repeat", pa.int32()),
            ("responses", pa.list_(pa.float32(), n_electrodes)),
            ("image", image),
        ]
    )


# zlib level 1: on 96x96 scenes it stores within 6 % of level 6's bytes and encodes faster; decoding costs the same.
PNG_LEVEL = 1


def encode_png(image: np.ndarray) -> bytes:
    """One (H, W, C) uint8 image as a PNG (grayscale for C = 1, RGB for C = 3)."""
    out = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(out, format="PNG", compress_level=PNG_LEVEL)
    return out.getvalue()


def _samples_to_table(s: Samples, schema: pa.Schema) -> pa.Table:
    n, e = s.responses.shape
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
    _remove_stale_staging(out)
    tmp = out.parent / f".{out.name}.tmp-{_owner_tag()}"
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
        shards: dict[str, list[tuple[str, int]]] = {}
        # Float64 running sums: a float32 sum over thousands of rows loses digits.
        total = np.zeros(n_electrodes)
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
                pq.write_table(_samples_to_table(chunk, schema), tmp / name, compression="zstd")
                counts[split] += len(chunk)
                shards[split].append((name, len(chunk)))
                if split == "train":
                    r = chunk.responses.astype(np.float64)
                    total += r.sum(axis=0)
                    total_sq += (r * r).sum(axis=0)
                if on_rows is not None:
                    on_rows(len(chunk))
            if counts[split] == 0:
                raise DataError(f"the {split!r} split is empty; it needs at least one sample.")
        mean = total / counts["train"]
        # A silent electrode (zero variance) gets std 1 so standardising it cannot divide by zero.
        std = np.sqrt(np.maximum(total_sq / counts["train"] - mean**2, 0.0))
        std = np.where(std > 1e-8, std, 1.0)
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
            schema_version=1 if image_encoding == "raw" else 2,
            shards={split: tuple(files) for split, files in shards.items()},
        )
        rfs.to_csv(tmp / RFS_FILE)
        (tmp / METADATA_FILE).write_text(json.dumps(info.to_json(), indent=1) + "\n")
        if out.exists():
            # The old dataset (or empty folder) is moved aside, not deleted, until the new one is in its place:
            # a failure in between puts it back.
            old = out.parent / f".{out.name}.old-{_owner_tag()}"
            out.rename(old)
        try:
            tmp.rename(out)
        except BaseException:
            if old is not None:
                old.rename(out)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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
    existing = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    with tempfile.TemporaryDirectory(prefix="rfgan-dataset-") as staging:
        local = Path(staging, "dataset")
        info = write_dataset(local, **dataset)
        metadata = (local / METADATA_FILE).read_bytes()
        (local / METADATA_FILE).unlink()
        deleted = False
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


def _owner_tag() -> str:
    """host-pid-random: which process a staging folder belongs to, so a later write can tell a dead one's."""
    return f"{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _host() -> str:
    # Cut short: the staging folder's name must stay within the 255 bytes a file name may have.
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:32] or "host"


def _remove_stale_staging(out: Path) -> None:
    """Remove what killed writes to `out` left beside it (`.NAME.tmp-*` staging folders, `.NAME.old-*` datasets
    being replaced), when that is safe: the writer ran on this host and its process is gone (a live process keeps
    its id; a reused id only delays the removal), or, for one from another host sharing the filesystem or from an
    rfgan that did not record its writer, nothing in it has changed for STALE_AFTER_S (a live writer adds a shard
    every few seconds)."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(?:tmp|old)-(?:(?P<host>[\w.]+)-(?P<pid>\d+)-)?[0-9a-f]{{8}}")
    try:
        candidates = [p for p in out.parent.iterdir() if pattern.fullmatch(p.name)]
    except OSError:
        return
    for p in candidates:
        if p.is_symlink() or not p.is_dir():
            continue
        m = pattern.fullmatch(p.name)
        dead = m["host"] == _host() and not _process_exists(int(m["pid"]))
        if dead or time.time() - _last_change(p) > STALE_AFTER_S:
            shutil.rmtree(p, ignore_errors=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but is another user's
        return True
    return True


def _last_change(folder: Path) -> float:
    latest = folder.lstat().st_mtime
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            try:
                latest = max(latest, os.lstat(os.path.join(root, name)).st_mtime)
            except OSError:
                pass
    return latest


def read_info(path: str | os.PathLike) -> DatasetInfo:
    """Read and check metadata.json of the dataset at `path` (a directory or a URI)."""
    meta_path = storage.join(path, METADATA_FILE)
    if not storage.is_file(meta_path):
        raise DataError(
            f"{path} is not an rfgan dataset: {METADATA_FILE} is missing. "
            "Make one with `rfgan synth --out DIR` or `rfgan ingest ... --out DIR`."
        )
    try:
        meta = json.loads(storage.read_text(meta_path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{meta_path}: cannot read it as JSON ({e}).") from e
    return DatasetInfo.from_json(meta, meta_path)


def read_rfs(path: str | os.PathLike, info: DatasetInfo | None = None) -> RFTable:
    """The dataset's RF table, checked against the metadata's electrode count."""
    info = info or read_info(path)
    rfs_path = storage.join(path, RFS_FILE)
    try:
        text = storage.read_text(rfs_path)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{rfs_path}: cannot read the RF table ({e}).") from e
    rfs = RFTable.from_csv_text(text, rfs_path)
    if len(rfs) != info.n_electrodes:
        raise DataError(
            f"{rfs_path} has {len(rfs)} electrodes but {METADATA_FILE} says n_electrodes="
            f"{info.n_electrodes}; the RF table needs one row per response column."
        )
    return rfs


def split_files(path: str | os.PathLike, split: str, info: DatasetInfo | None = None) -> list[str]:
    """The split's Parquet shards, sorted, after checking that they are the ones metadata.json lists, with the rows
    it lists (from the Parquet footers, without reading the data), and that each one's schema fits the metadata."""
    info = info or read_info(path)
    fs, root = storage.filesystem(path)
    folder = f"{root}/{split}"
    found = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    files = sorted(i.path for i in found if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
    if split not in info.splits:
        what = f"not a split in {METADATA_FILE}" if files else "no Parquet files"
        raise DataError(f"{folder}: {what}; the dataset has splits {sorted(info.splits)}.")
    if not files:
        raise DataError(
            f"{folder}: no Parquet files, but {METADATA_FILE} says the split has {info.splits[split]} "
            "rows; re-create the dataset (rfgan synth/ingest)."
        )
    footers = {}
    for f in files:
        try:
            footers[f] = pq.read_metadata(f, filesystem=fs)
        except (OSError, pa.ArrowInvalid) as e:
            raise DataError(f"{f}: not a readable Parquet file ({e}).") from e
    _check_shards(root, split, info, {f: m.num_rows for f, m in footers.items()})
    expected = parquet_schema(info.n_electrodes, info.image_numel, info.image_encoding)
    for f in files:
        schema = footers[f].schema.to_arrow_schema()
        for want in expected:
            if want.name not in schema.names:
                raise DataError(f"{f}: column {want.name!r} is missing (columns: {schema.names}).")
            got = schema.field(want.name).type
            if got != want.type:
                raise DataError(
                    f"{f}: column {want.name!r} has type {got}, expected {want.type} ({_describe(want.name, info)})."
                )
    return files


def _check_shards(root: str, split: str, info: DatasetInfo, rows: dict[str, int]) -> None:
    """Refuse a split whose files are not the ones written: a lost or extra shard would otherwise train on part of
    the data, or twice on some of it, without a word."""
    remake = "re-create the dataset (rfgan synth/ingest)"
    if info.shards is None:  # written before rfgan listed the shards: only their total can be checked
        if sum(rows.values()) != info.splits[split]:
            raise DataError(
                f"{root}/{split}: its Parquet files hold {sum(rows.values())} rows but {METADATA_FILE} "
                f"says {info.splits[split]}; a shard is missing, extra or cut short: {remake}."
            )
        return
    listed = {f"{root}/{name}": n for name, n in info.shards.get(split, ())}
    missing = [f for f in listed if f not in rows]
    if missing:
        raise DataError(
            f"{missing[0]} is missing: {len(missing)} of the {len(listed)} '{split}' shards that "
            f"{METADATA_FILE} lists are gone ({sum(listed[f] for f in missing)} of {info.splits[split]} "
            f"rows); {remake}."
        )
    extra = [f for f in rows if f not in listed]
    if extra:
        raise DataError(
            f"{extra[0]} is not one of the '{split}' shards listed in {METADATA_FILE} ({len(extra)} "
            f"such file(s)); it would be read as part of the dataset: remove it, or {remake}."
        )
    for f, n in listed.items():
        if rows[f] != n:
            raise DataError(
                f"{f} holds {rows[f]} rows but {METADATA_FILE} lists {n}; it was cut short or replaced: {remake}."
            )


def _describe(column: str, info: DatasetInfo) -> str:
    return {
        "responses": f"{info.n_electrodes} float32 responses, one per electrode of rfs.csv",
        "image": f"{info.image_size[0]}x{info.image_size[1]}x{info.channels} uint8 pixels, row-major"
        if info.image_encoding == "raw"
        else "one PNG per row, as metadata.json's image_encoding says",
    }.get(column, "see the dataset format in the README")


COLUMNS = ("sample_id", "image_id", "repeat", "responses", "image")


def decode_table(table: pa.Table, info: DatasetInfo) -> dict[str, np.ndarray]:
    """Arrow rows → NumPy: responses (n, E) float32, image (n, H, W, C) uint8, ids. Refuses non-finite responses."""
    n = table.num_rows

    def values(name: str) -> np.ndarray:
        return table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)

    responses = values("responses").reshape(n, info.n_electrodes)
    bad = ~np.isfinite(responses).all(axis=1)
    if bad.any():
        ids = table.column("sample_id").to_numpy()[bad][:10].tolist()
        raise DataError(
            f"responses are NaN or infinite in sample(s) {ids}; fix the source arrays and re-ingest "
            "(`rfgan ingest --drop-bad-rows` drops such rows)."
        )
    batch = {c: table.column(c).to_numpy() for c in ("sample_id", "image_id", "repeat")}
    batch["responses"] = responses
    if info.image_encoding == "png":
        batch["image"] = _decode_pngs(table, info)
    else:
        batch["image"] = values("image").reshape(n, *info.image_size, info.channels)
    return batch


def _decode_pngs(table: pa.Table, info: DatasetInfo) -> np.ndarray:
    shape = (*info.image_size, info.channels)
    mode = "L" if info.channels == 1 else "RGB"
    out = np.empty((table.num_rows, *shape), np.uint8)
    for k, data in enumerate(table.column("image").to_pylist()):
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.mode != mode:  # 16-bit pixels, say, would be cast to uint8 below without a word
                    raise ValueError(f"its mode is {im.mode}, not {mode}")
                out[k] = np.asarray(im).reshape(shape)
        except UnidentifiedImageError as e:  # its message names only the in-memory buffer
            raise _bad_png(table, k, info, "PIL cannot read it as an image: cut short, or not a PNG") from e
        except (OSError, ValueError, TypeError) as e:  # damaged past the header, another size or another mode
            raise _bad_png(table, k, info, f"{type(e).__name__}: {e}") from e
    return out


def _bad_png(table: pa.Table, k: int, info: DatasetInfo, why: str) -> DataError:
    return DataError(
        f"sample {table.column('sample_id')[k].as_py()}: its image is not a {info.image_size[1]}x{info.image_size[0]} "
        f"PNG of {info.channels} channel(s) ({why}); re-create the dataset."
    )


def read_split(path: str | os.PathLike, split: str) -> dict[str, np.ndarray]:
    """A whole split in memory, without Ray (evaluation, tests, small datasets)."""
    info = read_info(path)
    fs, _ = storage.filesystem(path)
    table = pa.concat_tables(
        pq.read_table(f, columns=list(COLUMNS), filesystem=fs) for f in split_files(path, split, info)
    )
    return decode_table(table, info)


def iter_split(path: str | os.PathLike, split: str, batch_rows: int = 1024) -> Iterator[dict[str, np.ndarray]]:
    """A split in decoded batches of at most `batch_rows`, one shard at a time, without Ray: a pass over data larger
    than memory (the ridge baseline's normal equations)."""
    info = read_info(path)
    fs, _ = storage.filesystem(path)
    for f in split_files(path, split, info):
        with fs.open_input_file(f) as source:
            for batch in pq.ParquetFile(source).iter_batches(batch_size=batch_rows, columns=list(COLUMNS)):
                yield decode_table(pa.Table.from_batches([batch]), info)


def open_split(path: str | os.PathLike, split: str) -> ray.data.Dataset:
    """A split as a Ray Dataset of decoded rows (responses (E,), image (H, W, C)), after checking its schema."""
    import ray.data

    info = read_info(path)
    files = split_files(path, split, info)
    ds = ray.data.read_parquet(files, filesystem=storage.filesystem(path)[0]).select_columns(list(COLUMNS))
    return ds.map_batches(decode_table, fn_kwargs={"info": info}, batch_format="pyarrow")


def to_tensors(batch: Mapping[str, Any], device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A decoded batch → (responses (B, E) float32, images (B, C, H, W) float32 in [0, 1]) on `device`.

    The uint8 image travels to the device before the float conversion: a quarter of the bytes over the bus.
    """
    responses = _as_tensor(batch["responses"]).to(device, torch.float32, non_blocking=True)
    image = _as_tensor(batch["image"]).to(device, non_blocking=True)
    if image.ndim != 4:
        raise ValueError(f"image batch must be (B, H, W, C), got shape {tuple(image.shape)}")
    images = image.permute(0, 3, 1, 2).float().div_(255.0)
    return responses, images


def _as_tensor(a: Any) -> torch.Tensor:
    # Arrow hands out read-only arrays, which torch can only wrap with a warning: copy those.
    if isinstance(a, np.ndarray) and not a.flags.writeable:
        a = a.copy()
    return torch.as_tensor(a)
