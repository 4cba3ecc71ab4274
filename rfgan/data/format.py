"""The rfgan dataset format: its schema and metadata, validating a dataset, and reading it (NumPy or Ray Data).
Writing one is rfgan.data.write.

A dataset is a directory::

    metadata.json          format, schema_version, image size/channels, field of view, electrode count, splits,
                           per-electrode response mean/std of the training split, provenance, each split's
                           shards with their rows, bytes and SHA-256 (readers refuse a missing, extra, short or
                           altered shard), and the SHA-256 of rfs.csv
    rfs.csv                one row per electrode, in response-column order: electrode_id,x_deg,y_deg,sigma_deg[,area]
    train/part-00000.parquet ...   one row per stimulus presentation
    val/part-00000.parquet ...
    test/...               (optional)

Parquet columns: sample_id int64 (unique in the dataset), image_id int64 (repeats of one image share it),
repeat int32, responses fixed_size_list<float32>[E], and image: by metadata.json's `image_encoding`, either
"raw", fixed_size_list<uint8>[H*W*C] (row-major H, W, C), or "png", binary, one PNG per row (lossless, about half
the bytes of raw pixels on natural-like scenes).
Only compact responses are stored; the E×H×W generator input is built on the device (rfgan.gan.rf_input.RFProjection).
Shards are written with Parquet page checksums (CRC32 per page), which any Parquet reader can verify.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from PIL import Image, UnidentifiedImageError

from rfgan import parse, storage
from rfgan.data.rf import RFTable
from rfgan.errors import DataError, UsageError

if TYPE_CHECKING:
    import ray.data

FORMAT = "rfgan-dataset"
# The one version this rfgan writes and reads. Version 1 (an rfgan of 2026-11, before the first release) had no
# image_encoding and no shard list; version 2 no content hashes (shard and rfs.csv SHA-256, page checksums). Such a
# dataset is refused with a message saying to re-create it: its content cannot be verified.
SCHEMA_VERSION = 3
WRITTEN_BY = {
    1: "an rfgan from before its first release",
    2: "an rfgan that recorded no content hashes (rfgan 0.1.0 before 2026-12)",
}
IMAGE_ENCODINGS = ("raw", "png")
SPLITS = ("train", "val", "test")
METADATA_FILE = "metadata.json"
RFS_FILE = "rfs.csv"
_REMAKE = "re-create the dataset (rfgan synth/ingest)"  # what most refusals of a dataset advise


@dataclass(frozen=True)
class Shard:
    """One Parquet file of a split as written: its name relative to the dataset, rows, bytes and SHA-256."""

    file: str
    rows: int
    bytes: int
    sha256: str


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
    # Per split, its Parquet files as written; None only before writing.
    shards: dict[str, tuple[Shard, ...]] | None = None
    rfs_sha256: str | None = None  # of rfs.csv's bytes; None only before writing

    @property
    def fingerprint(self) -> str:
        """SHA-256 of everything that makes this dataset what it is: every shard's and rfs.csv's hash and the facts
        metadata.json states about them. `source` is left out: the same data made again from files that moved is
        the same dataset."""
        facts = {k: v for k, v in self.to_json().items() if k != "source"}
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()

    @property
    def image_numel(self) -> int:
        return self.image_size[0] * self.image_size[1] * self.channels

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "image_height": self.image_size[0],
            "image_width": self.image_size[1],
            "channels": self.channels,
            "fov_deg": self.fov_deg,
            "n_electrodes": self.n_electrodes,
            "splits": self.splits,
            "response_mean": list(self.response_mean),
            "response_std": list(self.response_std),
            "source": self.source,
            "image_encoding": self.image_encoding,
            **(
                {}
                if self.shards is None
                else {"shards": {split: [asdict(f) for f in files] for split, files in self.shards.items()}}
            ),
            **({} if self.rfs_sha256 is None else {"rfs_sha256": self.rfs_sha256}),
        }

    @classmethod
    def from_json(cls, meta: Any, where: str) -> DatasetInfo:
        """Parse and check a metadata.json mapping; `where` names its file in errors. Every value is checked for its
        type and range here; split_files checks the image shape and the response statistics against the shards."""
        if not isinstance(meta, dict):
            raise DataError(f"{where}: holds a JSON {type(meta).__name__}, not an object; {_REMAKE}.")
        if meta.get("format") != FORMAT:
            raise DataError(f"{where}: 'format' is {meta.get('format')!r}, expected {FORMAT!r}.")
        version = meta.get("schema_version")
        if version != SCHEMA_VERSION:
            written_by = WRITTEN_BY.get(version, "another rfgan version")
            raise DataError(
                f"{where}: schema_version {version!r} was written by {written_by}; this rfgan reads version "
                f"{SCHEMA_VERSION} only: re-create the dataset with this rfgan (rfgan synth/ingest)."
            )
        encoding = meta.get("image_encoding")
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
            "shards",
            "rfs_sha256",
        )
        missing = [k for k in required if k not in meta]
        if missing:
            raise DataError(f"{where}: missing key(s) {missing}.")
        splits = meta["splits"]
        if not isinstance(splits, dict):
            raise DataError(
                f"{where}: 'splits' is a {type(splits).__name__}, not a mapping of split to rows; {_REMAKE}."
            )
        for name in splits:
            check_split_name(str(name), f"{where}: split {name!r}")
        info = cls(
            image_size=(_count(meta, "image_height", where), _count(meta, "image_width", where)),
            channels=_count(meta, "channels", where),
            fov_deg=_number(meta["fov_deg"], "fov_deg", where),
            n_electrodes=_count(meta, "n_electrodes", where),
            splits={str(k): _count(splits, k, where, "splits") for k in splits},
            response_mean=_numbers(meta, "response_mean", where),
            response_std=_numbers(meta, "response_std", where),
            source=meta.get("source", {}),
            image_encoding=encoding,
            shards=_parse_shards(meta["shards"], where),
            rfs_sha256=str(meta["rfs_sha256"]),
        )
        if info.channels not in (1, 3):
            raise DataError(f"{where}: channels is {info.channels}; rfgan reads grayscale (1) or RGB (3) images.")
        if not 0 < info.fov_deg <= 360:
            raise DataError(
                f"{where}: fov_deg is {info.fov_deg:g}; it is the visual angle the image width spans, in degrees "
                "(> 0, at most 360): set it to the stimulus's width, or re-create the dataset with --fov-deg."
            )
        if len(info.response_mean) != info.n_electrodes or len(info.response_std) != info.n_electrodes:
            raise DataError(f"{where}: response_mean/response_std must have n_electrodes={info.n_electrodes} values.")
        flat = [i for i, s in enumerate(info.response_std) if not s > 0]
        if flat:
            # The writer gives an electrode that never varies std 1: a 0 here was not written by rfgan, and would
            # divide by zero wherever the responses are standardised.
            raise DataError(
                f"{where}: response_std is {info.response_std[flat[0]]:g} for electrode(s) {flat[:10]} (of "
                f"{info.n_electrodes}); standardising divides by it, so it must be > 0: {_REMAKE}."
            )
        listed = {split: sum(f.rows for f in files) for split, files in info.shards.items()}
        if listed != info.splits:
            raise DataError(
                f"{where}: 'shards' lists {listed} rows per split but 'splits' says {info.splits}; "
                f"it contradicts itself: {_REMAKE}."
            )
        return info


def _number(value: Any, key: str, where: str) -> float:
    """A finite JSON number (not a bool, not a string that looks like one)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise DataError(f"{where}: {key} is {value!r}, not a finite number; {_REMAKE}.")
    return float(value)


SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def check_split_name(name: str, where: str) -> None:
    """A split is a folder of the dataset named by a plain word (train, val, test): a name with a path in it
    ('../x', 'a/b') would read or write outside the dataset or the run."""
    if not SPLIT_NAME.fullmatch(name):
        raise DataError(f"{where} is not a split name: split names are plain words such as train, val or test.")


def _count(meta: dict, key: str, where: str, parent: str = "") -> int:
    """A whole number >= 1 (>= 0 for the rows of a split)."""
    value = meta[key]
    name = f"{parent}.{key}" if parent else key
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if parent else 1):
        raise DataError(f"{where}: {name} is {value!r}, not a whole number{'' if parent else ' >= 1'}; {_REMAKE}.")
    return value


def _numbers(meta: dict, key: str, where: str) -> tuple[float, ...]:
    values = meta[key]
    if not isinstance(values, list):
        raise DataError(f"{where}: {key} is {type(values).__name__}, not a list of numbers; {_REMAKE}.")
    return tuple(_number(v, f"{key}[{i}]", where) for i, v in enumerate(values))


def _parse_shards(value: Any, where: str) -> dict[str, tuple[Shard, ...]]:
    try:
        return {
            str(split): tuple(Shard(str(f["file"]), int(f["rows"]), int(f["bytes"]), str(f["sha256"])) for f in files)
            for split, files in value.items()
        }
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise DataError(
            f"{where}: 'shards' is not a mapping of split to a list of {{'file', 'rows', 'bytes', 'sha256'}} "
            f"({type(e).__name__}: {e}); {_REMAKE}."
        ) from e


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


def read_info(path: str | os.PathLike) -> DatasetInfo:
    """Read and check metadata.json of the dataset at `path` (a directory or a URI)."""
    meta_path = storage.join(path, METADATA_FILE)
    if not storage.is_file(meta_path):
        raise DataError(
            f"{path} is not an rfgan dataset: {METADATA_FILE} is missing. "
            "Make one with `rfgan synth --out DIR` or `rfgan ingest ... --out DIR`."
        )
    try:
        data = storage.read_bytes(meta_path)
    except OSError as e:
        raise DataError(f"{meta_path}: cannot read it ({e}).") from e
    return DatasetInfo.from_json(
        parse.loads_json(parse.decode(data, meta_path, DataError), meta_path, DataError), meta_path
    )


def read_rfs(path: str | os.PathLike, info: DatasetInfo | None = None) -> RFTable:
    """The dataset's RF table, checked against the metadata's electrode count."""
    info = info or read_info(path)
    rfs_path = storage.join(path, RFS_FILE)
    try:
        data = storage.read_bytes(rfs_path)
        text = data.decode()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{rfs_path}: cannot read the RF table ({e}).") from e
    # Rows re-sorted or edited give every response column another electrode's RF, and still parse: only the hash
    # recorded when the dataset was written tells.
    if hashlib.sha256(data).hexdigest() != info.rfs_sha256:
        raise DataError(
            f"{rfs_path} is not the RF table this dataset was written with (its SHA-256 differs from {METADATA_FILE}'s "
            "rfs_sha256: rows re-sorted or edited would give response columns another electrode's RF); restore "
            "the file, or re-create the dataset with the RF table you mean (rfgan synth/ingest)."
        )
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
    check_split_name(split, f"{path}: split {split!r}")
    fs, root = storage.filesystem(path)
    folder = f"{root}/{split}"
    try:
        found = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    except NotADirectoryError as e:
        raise DataError(f"{folder} is a file; a split is a folder of Parquet shards: {_REMAKE}.") from e
    files = sorted(i.path for i in found if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
    if split not in info.splits:
        what = f"not a split in {METADATA_FILE}" if files else "no Parquet files"
        raise DataError(f"{folder}: {what}; the dataset has splits {sorted(info.splits)}.")
    if not files:
        raise DataError(
            f"{folder}: no Parquet files, but {METADATA_FILE} says the split has {info.splits[split]} rows; {_REMAKE}."
        )
    footers = {}
    for f in files:
        try:
            footers[f] = pq.read_metadata(f, filesystem=fs)
        except (OSError, pa.ArrowInvalid) as e:
            raise DataError(f"{f}: not a readable Parquet file ({e}).") from e
    sizes = {i.path: i.size for i in found}
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
    # The sizes are in the listing already: a shard swapped for another Parquet file of as many rows is refused
    # without reading it (its content is hashed only where it is read whole: read_shard, verify_content).
    listed = listed_shards(root, split, info)
    for f in files:
        if sizes[f] != listed[f].bytes:
            raise DataError(
                f"{f} has {sizes[f]} bytes but {METADATA_FILE} lists {listed[f].bytes}; it was altered or replaced: "
                f"{_REMAKE}."
            )
    _check_shard_facts(root, split, info, footers)
    return files


def listed_shards(root: str, split: str, info: DatasetInfo) -> dict[str, Shard]:
    """The split's shards that metadata.json lists, by their path within the dataset's filesystem (`root`)."""
    return {f"{root}/{shard.file}": shard for shard in info.shards.get(split, ())}


def _check_shards(root: str, split: str, info: DatasetInfo, found: dict[str, int]) -> None:
    """Refuse a split whose files are not the ones written (`found`: the rows of each file there, from its footer):
    a lost or extra shard would otherwise train on part of the data, or twice on some of it, without a word."""
    listed = listed_shards(root, split, info)
    missing = [f for f in listed if f not in found]
    if missing:
        raise DataError(
            f"{missing[0]} is missing: {len(missing)} of the {len(listed)} '{split}' shards that "
            f"{METADATA_FILE} lists are gone ({sum(listed[f].rows for f in missing)} of {info.splits[split]} "
            f"rows); {_REMAKE}."
        )
    extra = [f for f in found if f not in listed]
    if extra:
        raise DataError(
            f"{extra[0]} is not one of the '{split}' shards listed in {METADATA_FILE} ({len(extra)} "
            f"such file(s)); it would be read as part of the dataset: remove it, or {_REMAKE}."
        )
    for f, shard in listed.items():
        rows = found[f]
        if rows != shard.rows:
            raise DataError(
                f"{f} holds {rows} rows but {METADATA_FILE} lists {shard.rows}; it was cut short or replaced: "
                f"{_REMAKE}."
            )


# What each shard's Parquet footer records of the rows it holds, as JSON under this key, when it is written: the
# image shape ([H, W, C]), the field of view the images span, and the responses' per-electrode sums and sums of
# squares (float64). A metadata.json whose image size, channels, field of view or training statistics were edited
# keeps its byte counts (32x32 as 16x64, RGB as gray 32x96) but no longer agrees with these. A dataset written
# before rfgan recorded them has none, and is not checked.
SHARD_FACTS = b"rfgan"


def response_sums(responses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-electrode float64 sums and sums of squares of (N, E) responses (a float32 sum over thousands of rows
    loses digits): what a shard records (shard_facts) and what the training split's statistics add up."""
    r = responses.astype(np.float64)
    return r.sum(0), (r * r).sum(0)


def shard_facts(
    image_shape: tuple[int, int, int], fov_deg: float, sums: tuple[np.ndarray, np.ndarray]
) -> dict[bytes, bytes]:
    """The footer metadata of a shard (SHARD_FACTS): its image shape, field of view and response sums
    (response_sums)."""
    facts = {
        "image_shape": list(image_shape),
        "fov_deg": float(fov_deg),
        "response_sum": sums[0].tolist(),
        "response_sum_sq": sums[1].tolist(),
    }
    return {SHARD_FACTS: json.dumps(facts).encode()}


def response_stats(total: np.ndarray, total_sq: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-electrode mean, std and whether it varies at all, from float64 sums over `n` rows. An electrode that never
    varies (a dead channel) gets std 1, so standardising it gives 0 rather than a division by zero. "Never varies"
    allows for the round-off of E[x²] - E[x]², which grows with the mean."""
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
    varies = std > 1e-7 * np.maximum(np.abs(mean), 0.1)
    return mean, np.where(varies, std, 1.0), varies


def _check_shard_facts(root: str, split: str, info: DatasetInfo, footers: dict[str, pq.FileMetaData]) -> None:
    """Refuse a metadata.json that disagrees with what its shards recorded when written (SHARD_FACTS)."""
    meta = f"{root}/{METADATA_FILE}"
    shape = (*info.image_size, info.channels)
    total, total_sq, n = np.zeros(info.n_electrodes), np.zeros(info.n_electrodes), 0
    for f, footer in footers.items():
        if SHARD_FACTS not in (footer.metadata or {}):
            return  # written by an rfgan that did not record them
        try:
            facts = json.loads(footer.metadata[SHARD_FACTS])
            written = tuple(int(v) for v in facts["image_shape"])
            fov_deg = float(facts["fov_deg"])
            sums = np.asarray(facts["response_sum"], np.float64), np.asarray(facts["response_sum_sq"], np.float64)
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{f}: its footer's {SHARD_FACTS.decode()} record is damaged ({e}); {_REMAKE}.") from e
        if written != shape:
            h, w, c = written
            raise DataError(
                f"{meta} says images are {_shape_text(shape)} but {f} holds {_shape_text(written)} images (as "
                f"written): metadata.json was edited; set image_height {h}, image_width {w}, channels {c}, "
                f"or {_REMAKE}."
            )
        if fov_deg != info.fov_deg:
            raise DataError(
                f"{meta} says fov_deg {info.fov_deg:g} but {f} was written for images spanning {fov_deg:g}°: "
                f"metadata.json was edited; set fov_deg {fov_deg!r}, or {_REMAKE} with the right --fov-deg."
            )
        if sums[0].shape != (info.n_electrodes,) or sums[1].shape != (info.n_electrodes,):
            raise DataError(
                f"{f}: its footer's {SHARD_FACTS.decode()} record is damaged (sums of another length); {_REMAKE}."
            )
        total, total_sq, n = total + sums[0], total_sq + sums[1], n + footer.num_rows
    if split != "train" or n == 0:
        return
    mean, std, _ = response_stats(total, total_sq, n)
    for key, written_values, stated in (
        ("response_mean", mean, info.response_mean),
        ("response_std", std, info.response_std),
    ):
        off = np.flatnonzero(~np.isclose(stated, written_values, rtol=1e-6, atol=1e-12))
        if len(off):
            e = int(off[0])
            raise DataError(
                f"{meta}: {key} of electrode {e} is {stated[e]:.6g}, but the training shards' responses give "
                f"{written_values[e]:.6g} ({len(off)} electrode(s) differ): metadata.json was edited; {_REMAKE}."
            )


def _shape_text(shape: tuple[int, int, int]) -> str:
    return f"{shape[0]}x{shape[1]}x{shape[2]} (height x width x channels)"


def differences(before: DatasetInfo, after: DatasetInfo) -> str:
    """What differs between two datasets (`before`: the one a run was trained on), in words, for a refusal."""
    said = []
    if before.splits != after.splits:
        said.append(f"rows per split {after.splits}, not {before.splits}")
    for name in ("n_electrodes", "image_size", "channels", "fov_deg", "image_encoding"):
        if getattr(before, name) != getattr(after, name):
            said.append(f"{name} {getattr(after, name)}, not {getattr(before, name)}")
    if before.rfs_sha256 != after.rfs_sha256:
        said.append("another rfs.csv")
    if (before.response_mean, before.response_std) != (after.response_mean, after.response_std):
        said.append("other response statistics")
    old = {(split, s.file, s.sha256) for split, files in (before.shards or {}).items() for s in files}
    new = [(split, s.file, s.sha256) for split, files in (after.shards or {}).items() for s in files]
    changed = [shard[1] for shard in new if shard not in old]
    if changed:
        said.append(f"{len(changed)} of its {len(new)} shards differ in content (first: {changed[0]})")
    return "; ".join(said) or "its metadata.json differs"


def _describe(column: str, info: DatasetInfo) -> str:
    return {
        "responses": f"{info.n_electrodes} float32 responses, one per electrode of rfs.csv",
        "image": f"{info.image_size[0]}x{info.image_size[1]}x{info.channels} uint8 pixels, row-major"
        if info.image_encoding == "raw"
        else "one PNG per row, as metadata.json's image_encoding says",
    }.get(column, "see docs/format.md")


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
                if im.size != shape[1::-1]:  # 32x32 reshaped as 16x64 keeps the pixel count: a scrambled image
                    raise ValueError(f"it is {im.width}x{im.height}")
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


def read_shard(fs: pafs.FileSystem, file: str, shard: Shard, columns: tuple[str, ...] = COLUMNS) -> pa.Table:
    """A whole shard (`file` within `fs`, as metadata.json lists it: `shard`), its bytes checked against the
    recorded SHA-256 before Parquet decodes them.

    Hashing the bytes a whole-file read fetches anyway costs no second read; damage Parquet would decode without a
    word (a flipped byte in a page of pixels) or a shard swapped for another one is refused naming the file."""
    try:
        with fs.open_input_stream(file) as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"{file}: cannot read it ({e}).") from e
    return checked_table(file, data, shard, columns)


def checked_table(file: str, data: bytes, shard: Shard, columns: tuple[str, ...] = COLUMNS) -> pa.Table:
    """The Parquet table in `data`, the whole of `file`, once its SHA-256 is the one `shard` records."""
    check_hash(file, hashlib.sha256(data).hexdigest(), shard)
    return pq.read_table(pa.BufferReader(data), columns=list(columns))


def read_columns(fs: pafs.FileSystem, file: str, columns: tuple[str, ...]) -> pa.Table:
    """Some columns of a shard, the checksums of the pages read verified: a partial read fetches too little of the
    file to check its hash."""
    try:
        return pq.read_table(file, columns=list(columns), filesystem=fs, page_checksum_verification=True)
    except OSError as e:  # pyarrow's "could not verify page integrity, CRC checksum verification failed …"
        raise DataError(
            f"{file}: cannot read it ({e}); if it was damaged on disk or in a copy, copy the dataset again from a "
            "good source, or re-create it (rfgan synth/ingest)."
        ) from e


def check_hash(file: str, sha256: str, shard: Shard) -> None:
    if sha256 != shard.sha256:
        raise DataError(
            f"{file}: its content is not what was written (SHA-256 {sha256[:12]}…, {METADATA_FILE} lists "
            f"{shard.sha256[:12]}…): damaged on disk or in a copy, or replaced; copy the dataset again from a "
            "good source, or re-create it (rfgan synth/ingest)."
        )


def verify_content(path: str | os.PathLike, info: DatasetInfo | None = None) -> int:
    """Hash every shard of every split, streamed, against metadata.json (rfgan check); returns the bytes hashed.
    rfs.csv is checked by read_rfs."""
    info = info or read_info(path)
    fs, root = storage.filesystem(path)
    total = 0
    for split in info.splits:
        listed = listed_shards(root, split, info)
        for f in split_files(path, split, info):
            digest = hashlib.sha256()
            try:
                with fs.open_input_stream(f) as stream:
                    while chunk := stream.read(HASH_CHUNK):
                        digest.update(chunk)
                        total += len(chunk)
            except OSError as e:
                raise DataError(f"{f}: cannot read it ({e}).") from e
            check_hash(f, digest.hexdigest(), listed[f])
    return total


HASH_CHUNK = 8 * 2**20  # bytes read at a time while hashing: large reads suit object stores


def _shards(path: str | os.PathLike, split: str, info: DatasetInfo) -> tuple[pafs.FileSystem, list[tuple[str, Shard]]]:
    """The split's files, checked (split_files), each with what metadata.json lists for it."""
    fs, root = storage.filesystem(path)
    listed = listed_shards(root, split, info)
    return fs, [(f, listed[f]) for f in split_files(path, split, info)]


def read_split(path: str | os.PathLike, split: str, info: DatasetInfo | None = None) -> dict[str, np.ndarray]:
    """A whole split in memory, without Ray (evaluation, tests, small datasets), every shard's hash checked. `info`:
    the dataset's metadata when the caller has read it."""
    info = info or read_info(path)
    fs, files = _shards(path, split, info)
    return decode_table(pa.concat_tables(read_shard(fs, f, shard) for f, shard in files), info)


def iter_split(path: str | os.PathLike, split: str, batch_rows: int = 1024) -> Iterator[dict[str, np.ndarray]]:
    """A split in decoded batches of at most `batch_rows`, one shard at a time (hash checked), without Ray: a pass
    over data larger than memory (the ridge baseline's normal equations), holding one shard's bytes at a time."""
    info = read_info(path)
    fs, files = _shards(path, split, info)
    for f, shard in files:
        for batch in read_shard(fs, f, shard).to_batches(max_chunksize=batch_rows):
            yield decode_table(pa.Table.from_batches([batch]), info)


def open_split(path: str | os.PathLike, split: str) -> ray.data.Dataset:
    """A split as a Ray Dataset of decoded rows (responses (E,), image (H, W, C)), after checking its schema. Each of
    Ray Data's read tasks reads whole shards, and hashes what it read before Parquet decodes it, as read_split does:
    a streamed split is checked at no second read (Ray Data's own Parquet reader fixes its scan options, so it
    cannot even be told to verify the pages' checksums)."""
    import ray.data

    info = read_info(path)
    fs, files = _shards(path, split, info)
    ds = ray.data.read_binary_files([f for f, _ in files], filesystem=fs, include_paths=True)
    # The paths as Ray Data gives them back may be spelled otherwise (absolute, without a scheme); a split's file
    # names are unique.
    shards = {posixpath.basename(f): shard for f, shard in files}
    return ds.map_batches(
        _decode_files, fn_kwargs={"info": info, "shards": shards}, batch_size=1, batch_format="pyarrow"
    )


def _decode_files(batch: pa.Table, info: DatasetInfo, shards: Mapping[str, Shard]) -> dict[str, np.ndarray]:
    """Whole shard files as read_binary_files gives them → decoded rows, each file's hash checked."""
    tables = [
        checked_table(file, data, shards[posixpath.basename(file)])
        for data, file in zip(batch.column("bytes").to_pylist(), batch.column("path").to_pylist(), strict=True)
    ]
    return decode_table(pa.concat_tables(tables), info)


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


def dataset_around(out: str) -> str | None:
    """The dataset that `out` is, or lies in (a folder above it with a metadata.json), if any."""
    path = storage.absolute(out)
    while True:
        if storage.is_file(storage.join(path, METADATA_FILE)):
            return path
        parent, name = storage.split(path)
        if not name or parent == path:
            return None
        path = parent


def check_outside_dataset(out: str, what: str, flag: str = "--out") -> None:
    """Refuse an output path that is a dataset or lies inside one: re-making the dataset (synth or ingest
    --overwrite) replaces its folder whole, and `what` would go with it."""
    dataset = dataset_around(out)
    if dataset is not None:
        where = "the dataset" if dataset == storage.absolute(out) else "inside the dataset"
        raise UsageError(
            f"{flag} {out} is {where} {dataset}: {what} among the dataset's files would be deleted when it is "
            f"re-made; choose an {flag} outside it."
        )
