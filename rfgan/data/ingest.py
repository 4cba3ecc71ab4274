"""A lab's own arrays → an rfgan dataset, after checking everything that can be wrong with them.

Every check runs before anything is written, except that image files are decoded in full only as their rows are
written (a truncated file shows then); the writer is atomic (rfgan.data.format.write_dataset), so bad input leaves no
output behind either way.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError

from rfgan.data.format import DatasetInfo, Samples, check_output, write_dataset
from rfgan.data.rf import RFTable, rfs_outside_window
from rfgan.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")


@dataclass(frozen=True)
class IngestSpec:
    responses: str  # .npy, (N, E)
    images: str  # .npy (N, H, W[, 3]) or a folder of image files
    rfs: str  # CSV: electrode_id,x_deg,y_deg,sigma_deg[,area]
    fov_deg: float  # visual angle spanned by the image width
    out: str
    image_index: str | None = None  # CSV with a `filename` column: the image file of each response row
    image_ids: str | None = None  # .npy (N,) ints: which rows show the same image (default: from the images)
    val_fraction: float = 0.1  # of distinct images
    test_fraction: float = 0.0
    seed: int = 0
    drop_bad_rows: bool = False  # drop rows with NaN/inf responses instead of refusing them
    shard_rows: int = 1000
    overwrite: bool = False


class ImageSource(Protocol):
    path: str
    shape: tuple[int, int, int]  # (H, W, C)

    def __len__(self) -> int: ...
    def keys(self) -> list: ...  # one hashable per row; equal keys = the same image
    def get(self, rows: np.ndarray) -> np.ndarray: ...  # (n, H, W, C) uint8


NPY_MAGIC = b"\x93NUMPY"


def _load_npy(path: str, what: str, mmap: bool = False) -> np.ndarray:
    # NumPy's own errors for a file that is not a .npy array advise allow_pickle=True, which would run code from
    # the file: look at the header first.
    try:
        with open(path, "rb") as f:
            head = f.read(len(NPY_MAGIC))
    except OSError as e:
        raise DataError(f"{path}: cannot read the {what} ({e.strerror}).") from e
    if head.startswith(b"PK"):
        raise DataError(
            f"{path}: cannot read the {what}: it is a .npz archive, not a .npy array file; save the "
            "array alone with numpy.save."
        )
    if head != NPY_MAGIC:
        raise DataError(
            f"{path}: cannot read the {what}: it is not a .npy array file (no .npy header: a text or "
            "other file under a .npy name?); save the array with numpy.save."
        )
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" not in str(e):
            raise DataError(f"{path}: cannot read the {what} as a .npy array ({e}).") from e
        raise DataError(
            f"{path}: cannot read the {what}: it holds Python objects (an object array), not numbers; "
            "save a numeric array with numpy.save."
        ) from e
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read the {what} as a .npy array ({e}).") from e
    return array


class NpyImages:
    def __init__(self, path: str):
        self.path = path
        # Memory-mapped: image arrays can be larger than memory; chunks are read as they are written.
        self.array = _load_npy(path, "images", mmap=True)
        a = self.array
        if a.ndim == 4 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.ndim not in (3, 4) or (a.ndim == 4 and a.shape[-1] != 3):
            raise DataError(
                f"{path}: images have shape {self.array.shape}; expected (N, H, W) grayscale or (N, H, W, 3) RGB."
            )
        self.array = a
        self.shape = (*a.shape[1:3], 3 if a.ndim == 4 else 1)
        if a.dtype == np.uint8:
            return
        if not np.issubdtype(a.dtype, np.floating):
            raise DataError(f"{path}: images are {a.dtype}; use uint8 (0–255) or float in [0, 1].")
        for start in range(0, len(a), 4096):
            chunk = np.asarray(a[start : start + 4096])
            if not np.isfinite(chunk).all() or chunk.min() < 0 or chunk.max() > 1:
                raise DataError(
                    f"{path}: float images must be finite and in [0, 1]; rows {start}–{start + len(chunk) - 1} "
                    f"hold values in [{np.nanmin(chunk):.3g}, {np.nanmax(chunk):.3g}]. Scale them, or pass uint8."
                )

    def __len__(self) -> int:
        return len(self.array)

    def keys(self) -> list:
        # Repeats of a stimulus are the same pixels: hash them to group rows by image.
        return [
            hashlib.blake2b(np.ascontiguousarray(self.array[i]).tobytes(), digest_size=16).digest()
            for i in range(len(self.array))
        ]

    def get(self, rows: np.ndarray) -> np.ndarray:
        a = np.asarray(self.array[rows])
        if a.dtype != np.uint8:
            a = (a * 255.0 + 0.5).astype(np.uint8)
        return a.reshape(len(rows), *self.shape)


class FolderImages:
    def __init__(self, folder: str, index: str | None):
        self.path = folder
        root = Path(folder)
        if index is None:
            names = sorted(p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not names:
                raise DataError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}).")
        else:
            names = self._read_index(index)
        self.files = [str(root / n) for n in names]
        sizes, modes = {}, set()
        for f in dict.fromkeys(self.files):
            try:
                with Image.open(f) as im:
                    sizes.setdefault((im.height, im.width), f)
                    modes.add(im.mode)
            except (OSError, UnidentifiedImageError) as e:
                raise DataError(f"{f}: cannot read this image ({e}).") from e
            if len(sizes) > 1:
                (s1, f1), (s2, f2) = list(sizes.items())[:2]
                raise DataError(
                    f"images differ in size: {f1} is {s1[1]}x{s1[0]} but {f2} is {s2[1]}x{s2[0]} (width x height); "
                    "resize them all to one size first."
                )
        self.gray = modes <= {"L", "1", "I;16", "I", "F"}
        self.shape = (*next(iter(sizes)), 1 if self.gray else 3)

    @staticmethod
    def _read_index(index: str) -> list[str]:
        try:
            with open(index, newline="") as f:
                reader = csv.DictReader(f)
                if "filename" not in (reader.fieldnames or []):
                    raise DataError(f"{index}: the image index needs a 'filename' column (one row per response row).")
                return [row["filename"].strip() for row in reader]
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"{index}: cannot read the image index ({e}).") from e

    def __len__(self) -> int:
        return len(self.files)

    def keys(self) -> list:
        return [os.path.realpath(f) for f in self.files]

    def get(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.shape), np.uint8)
        for k, i in enumerate(rows):
            # Opening a file reads its header only; pixels are decoded here, where a truncated file fails.
            try:
                with Image.open(self.files[i]) as im:
                    out[k] = np.asarray(im.convert("L" if self.gray else "RGB")).reshape(self.shape)
            except (OSError, UnidentifiedImageError) as e:
                raise DataError(f"{self.files[i]}: cannot read this image ({e}); replace or remove it.") from e
        return out


def _split_images(n_images: int, spec: IngestSpec) -> np.ndarray:
    """Split code per distinct image (0 train, 1 val, 2 test), so repeats of one image never straddle splits."""
    n_val = max(1, round(spec.val_fraction * n_images))
    n_test = round(spec.test_fraction * n_images) if spec.test_fraction > 0 else 0
    if n_images - n_val - n_test < 1:
        raise DataError(
            f"only {n_images} distinct image(s): too few for a validation split of {spec.val_fraction} and a "
            f"test split of {spec.test_fraction} with any left to train on."
        )
    code = np.zeros(n_images, np.int8)
    order = np.random.default_rng(spec.seed).permutation(n_images)
    code[order[:n_val]] = 1
    code[order[n_val : n_val + n_test]] = 2
    return code


def _check_rfs(rfs: RFTable, spec: IngestSpec, shape: tuple[int, int, int]) -> None:
    outside = rfs_outside_window(rfs, shape[:2], spec.fov_deg)
    if outside.any():
        ids = rfs.electrode_id[outside][:10].tolist()
        raise DataError(
            f"{spec.rfs}: {int(outside.sum())} RF(s) lie entirely outside the {spec.fov_deg}° image window "
            f"(electrode_id {ids}{'…' if outside.sum() > 10 else ''}). Check that x_deg/y_deg are measured from the "
            "image centre and that --fov-deg is the visual angle the image width spans, or drop those electrodes."
        )


def ingest(spec: IngestSpec, on_rows=None) -> tuple[DatasetInfo, int]:
    """Check the inputs, then write the dataset. Returns its info and the number of rows dropped."""
    if not spec.fov_deg > 0:
        raise DataError(f"--fov-deg must be > 0, got {spec.fov_deg}.")
    if not (0 < spec.val_fraction < 1 and 0 <= spec.test_fraction < 1):
        raise DataError("--val-fraction must be in (0, 1) and --test-fraction in [0, 1).")
    check_output(spec.out, spec.overwrite)  # before the inputs, which may take long to read
    responses = _load_npy(spec.responses, "responses")
    if responses.ndim != 2 or not (np.issubdtype(responses.dtype, np.number) or responses.dtype == bool):
        raise DataError(
            f"{spec.responses}: responses are {responses.dtype}{responses.shape}; expected a numeric (N, E) array, "
            "one row per stimulus presentation and one column per electrode."
        )
    if len(responses) == 0:
        raise DataError(
            f"{spec.responses}: the input is empty (responses {responses.shape}, no rows); there is "
            "nothing to make a dataset of."
        )
    rfs = RFTable.from_csv(spec.rfs)
    if responses.shape[1] != len(rfs):
        raise DataError(
            f"{spec.responses} has {responses.shape[1]} electrode columns but {spec.rfs} has {len(rfs)} rows; "
            "the RF table needs exactly one row per response column, in the same order."
        )
    images: ImageSource = (
        FolderImages(spec.images, spec.image_index) if os.path.isdir(spec.images) else NpyImages(spec.images)
    )
    if len(images) != len(responses):
        raise DataError(
            f"{spec.responses} has {len(responses)} rows but {images.path} has {len(images)} images; "
            "there must be one image per response row (repeat an image for each presentation of it)."
        )
    _check_rfs(rfs, spec, images.shape)

    responses = responses.astype(np.float32)
    good = np.isfinite(responses).all(axis=1)
    n_dropped = int((~good).sum())
    if n_dropped and not spec.drop_bad_rows:
        bad_rows = np.flatnonzero(~good)[:10].tolist()
        raise DataError(
            f"{spec.responses}: {n_dropped} row(s) hold NaN or infinite responses (rows {bad_rows}"
            f"{'…' if n_dropped > 10 else ''}). Fix them, or pass --drop-bad-rows to leave those rows out."
        )
    if spec.image_ids is not None:
        ids = _load_npy(spec.image_ids, "image ids")
        if ids.shape != (len(responses),) or not np.issubdtype(ids.dtype, np.integer):
            raise DataError(
                f"{spec.image_ids}: expected {len(responses)} integer image ids, got {ids.dtype}{ids.shape}."
            )
        keys = ids.tolist()
    else:
        keys = images.keys()
    # Image ids numbered by first appearance; `repeat` counts earlier presentations of the same image.
    first_seen: dict = {}
    image_id = np.array([first_seen.setdefault(k, len(first_seen)) for k in keys], np.int64)
    repeat = np.zeros(len(keys), np.int32)
    seen_count: dict[int, int] = {}
    for i, k in enumerate(image_id):
        repeat[i] = seen_count.get(k, 0)
        seen_count[k] = repeat[i] + 1
    split_of_row = _split_images(len(first_seen), spec)[image_id]

    def chunks(code: int) -> Iterator[Samples]:
        rows = np.flatnonzero((split_of_row == code) & good)
        for start in range(0, len(rows), spec.shard_rows):
            r = rows[start : start + spec.shard_rows]
            yield Samples(
                sample_id=r.astype(np.int64),
                image_id=image_id[r],
                repeat=repeat[r],
                responses=responses[r],
                images=images.get(r),
            )

    splits = {"train": chunks(0), "val": chunks(1)}
    if spec.test_fraction > 0:
        splits["test"] = chunks(2)
    source = {
        "kind": "ingest",
        "responses": os.path.abspath(spec.responses),
        "images": os.path.abspath(spec.images),
        "rfs": os.path.abspath(spec.rfs),
        "val_fraction": spec.val_fraction,
        "test_fraction": spec.test_fraction,
        "seed": spec.seed,
        "dropped_rows": n_dropped,
    }
    info = write_dataset(
        spec.out,
        rfs=rfs,
        fov_deg=spec.fov_deg,
        image_size=images.shape[:2],
        channels=images.shape[2],
        splits=splits,
        source=source,
        overwrite=spec.overwrite,
        on_rows=on_rows,
    )
    return info, n_dropped
