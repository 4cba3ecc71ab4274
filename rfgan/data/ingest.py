"""A lab's own arrays → an rfgan dataset, after checking everything that can be wrong with them.

Every check runs before anything is written, except that image files are decoded in full only as their rows are
written (a truncated file shows then); the writer is atomic (rfgan.data.write.write_dataset), so bad input leaves no
output behind either way. Nothing is held whole in memory: responses are read a shard of rows at a time
(rfgan.data.arrays), images are read or decoded as their shard is written.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from rfgan.data.arrays import Stored, load_npy, open_array, response_rows, split_ref
from rfgan.data.format import DatasetInfo
from rfgan.data.rf import RFTable, rfs_outside_window
from rfgan.data.write import Samples, check_output, write_dataset
from rfgan.errors import DataError, UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")


@dataclass(frozen=True)
class IngestSpec:
    responses: str  # .npy, FILE.npz:key, FILE.h5:/key or FILE.mat:key; (N, E) or (E, N)
    images: str  # .npy or FILE.h5:/key (N, H, W[, 3]), or a folder of image files
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
    electrode_axis: str = "auto"  # of the responses: "first", "last", or "auto" (the axis as long as the RF table)
    image_encoding: str = "raw"  # how the dataset stores images: "raw" pixels or "png" (rfgan.data.format)
    crop: tuple[float, float] | None = None  # keep this share (start, stop) of each image axis, e.g. (0.275, 0.675)
    resize: int | None = None  # store images resize × resize (needed with crop, or for files of several sizes)


# Image sides a dataset may have: the nets' smallest useful input (as `rfgan synth`), and what fits a row of Parquet.
MIN_SIDE, MAX_SIDE = 8, 4096


class RowSource(Protocol):
    """Responses by row: an array in a file (rfgan.data.arrays.ResponseRows) or computed (rfgan.data.nwb)."""

    def __len__(self) -> int: ...
    def read(self, rows: np.ndarray) -> np.ndarray: ...  # (len(rows), E) float32


class ImageSource(Protocol):
    path: str
    shape: tuple[int, int, int]  # (H, W, C)

    def __len__(self) -> int: ...
    def keys(self) -> list: ...  # one hashable per row; equal keys = the same image
    def get(self, rows: np.ndarray) -> np.ndarray: ...  # (n, H, W, C) uint8


def crop_and_resize(im: Image.Image, crop: tuple[float, float], size: int) -> Image.Image:
    """The share crop[0]..crop[1] of each axis, resized to size × size as one PIL resize (a box and a filter: no
    second resampling). RF_GANsynth and RFmasked keep 27.5–67.5 % of each axis (RF_module.py:127-135,
    cropping_images.ipynb) and train on 96 px."""
    w, h = im.size
    lo, hi = crop
    return im.resize((size, size), Image.Resampling.LANCZOS, box=(w * lo, h * lo, w * hi, h * hi))


class ArrayImages:
    """Images from an array file: a memory-mapped .npy or an HDF5 dataset, read a chunk of rows at a time."""

    def __init__(self, stored: Stored):
        self.path = stored.ref
        self.array = stored.data  # (N, H, W[, 1 | 3]), never read whole
        shape = tuple(self.array.shape)
        if len(shape) == 4 and shape[-1] == 1:
            shape = shape[:3]
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] != 3):
            raise DataError(
                f"{self.path}: images have shape {tuple(self.array.shape)}; expected (N, H, W) grayscale or "
                "(N, H, W, 3) RGB."
            )
        self.shape = (*shape[1:3], 3 if len(shape) == 4 else 1)
        dtype = self.array.dtype
        if dtype == np.uint8:
            return
        if not np.issubdtype(dtype, np.floating):
            raise DataError(f"{self.path}: images are {dtype}; use uint8 (0–255) or float in [0, 1].")
        for start, chunk in self._blocks():
            if not np.isfinite(chunk).all() or chunk.min() < 0 or chunk.max() > 1:
                raise DataError(
                    f"{self.path}: float images must be finite and in [0, 1]; rows {start}–{start + len(chunk) - 1} "
                    f"hold values in [{np.nanmin(chunk):.3g}, {np.nanmax(chunk):.3g}]. Scale them, or pass uint8."
                )

    def _blocks(self, rows: int = 1024) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, len(self), rows):
            yield start, np.asarray(self.array[start : start + rows])

    def __len__(self) -> int:
        return len(self.array)

    def keys(self) -> list:
        # Repeats of a stimulus are the same pixels: hash them to group rows by image.
        return [
            hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()
            for _, block in self._blocks()
            for image in block
        ]

    def get(self, rows: np.ndarray) -> np.ndarray:
        order, inverse = np.unique(rows, return_inverse=True)  # h5py takes increasing indices only
        a = np.asarray(self.array[order])[inverse.reshape(-1)]
        if a.dtype != np.uint8:
            a = (a * 255.0 + 0.5).astype(np.uint8)
        return a.reshape(len(rows), *self.shape)


# PIL's modes of 16-bit grayscale images (PNG, TIFF).
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def _upright_size(im: Image.Image) -> tuple[int, int]:
    """(height, width) of an image as it is shown: EXIF orientations 5-8 turn it by a quarter (exif_transpose)."""
    turned = im.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8)
    return (im.width, im.height) if turned else (im.height, im.width)


class FolderImages:
    """Image files, one per row (a file may repeat), decoded as their rows are written.

    Without `size` all files must have one size; with it each is cropped to `crop` (the share of its width and
    height kept, from start to stop) and resized to `size` × `size` (crop_and_resize).
    """

    def __init__(self, files: Sequence[str], path: str, size: int | None = None, crop: tuple[float, float] = (0, 1)):
        self.path = path
        self.files = list(files)
        self.size, self.crop = size, crop
        sizes, modes = {}, set()
        for f in dict.fromkeys(self.files):
            try:
                with Image.open(f) as im:  # the header only: a cheap check that every file is an image
                    sizes.setdefault(_upright_size(im), f)
                    modes.add(im.mode)
            except (OSError, UnidentifiedImageError) as e:
                raise DataError(f"{f}: cannot read this image ({e}).") from e
            if len(sizes) > 1 and size is None:
                (s1, f1), (s2, f2) = list(sizes.items())[:2]
                raise DataError(
                    f"images differ in size: {f1} is {s1[1]}x{s1[0]} but {f2} is {s2[1]}x{s2[0]} (width x height); "
                    "resize them all to one size first."
                )
        self.gray = modes <= {"L", "1", "I", "F", *SIXTEEN_BIT}
        self.shape = (*((size, size) if size else next(iter(sizes))), 1 if self.gray else 3)
        self.smallest_side = min(min(s) for s in sizes)  # of the files as they are, before any crop

    @classmethod
    def from_folder(cls, folder: str, index: str | None, **resized) -> FolderImages:
        root = Path(folder)
        if index is None:
            names = sorted(p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not names:
                raise DataError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}).")
        else:
            names = cls._read_index(index)
            for row, name in enumerate(names, start=2):  # row 1 is the header
                if os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == os.pardir:
                    # The index names files of the image folder; a path out of it would ingest whatever it points at
                    # (someone else's files) without a word. A symlink inside the folder is the lab's own choice.
                    raise DataError(
                        f"{index}: row {row} names {name!r}, which is not inside the image folder {folder}; "
                        "name files relative to --images (move the file into it, or give a folder that holds "
                        "them all as --images)."
                    )
        return cls([str(root / n) for n in names], folder, **resized)

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

    def _decode(self, im: Image.Image) -> np.ndarray:
        im = ImageOps.exif_transpose(im)  # a camera's rotation flag: the pixels as the photo is seen
        if im.mode in SIXTEEN_BIT or im.mode == "I":
            # PIL's convert to L clips 16-bit values at 255 (a 16-bit PNG comes out nearly white): scale instead,
            # 0..65535 to 0..255 (257 = 65535 / 255). PIL opens 16-bit grayscale as I;16 (or as I).
            im = Image.fromarray((np.asarray(im, np.float64).clip(0, 65535) / 257).round().astype(np.uint8))
        im = im.convert("L" if self.gray else "RGB")
        if self.size:
            im = crop_and_resize(im, self.crop, self.size)
        return np.asarray(im).reshape(self.shape)

    def get(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.shape), np.uint8)
        for k, i in enumerate(rows):
            # Opening a file reads its header only; pixels are decoded here, where a truncated file fails.
            try:
                with Image.open(self.files[i]) as im:
                    out[k] = self._decode(im)
            except (OSError, UnidentifiedImageError) as e:
                raise DataError(f"{self.files[i]}: cannot read this image ({e}); replace or remove it.") from e
        return out


class ResizedImages:
    """Images of an array file, each cropped and resized as it is read (crop_and_resize)."""

    def __init__(self, images: ArrayImages, size: int, crop: tuple[float, float]):
        self.images, self.size, self.crop = images, size, crop
        self.path = images.path
        self.shape = (size, size, images.shape[2])

    def __len__(self) -> int:
        return len(self.images)

    def keys(self) -> list:
        return self.images.keys()

    def get(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.shape), np.uint8)
        for k, image in enumerate(self.images.get(rows)):  # (H, W, C) uint8: PIL reads C = 1 as L, C = 3 as RGB
            im = Image.fromarray(image[..., 0] if self.shape[2] == 1 else image)
            out[k] = np.asarray(crop_and_resize(im, self.crop, self.size)).reshape(self.shape)
        return out


def number_images(keys: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Per row, (image_id, repeat): ids numbered by first appearance; `repeat` counts earlier rows of the same image.
    In NumPy, not dicts: for 22,000 rows the bookkeeping stays a few hundred kB."""
    _, first, inverse = np.unique(np.asarray(keys), return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    image_id = rank[inverse.reshape(-1)]
    by_image = np.argsort(image_id, kind="stable")  # rows of each image in their order
    starts = np.searchsorted(image_id[by_image], image_id[by_image])
    repeat = np.empty(len(image_id), np.int32)
    repeat[by_image] = np.arange(len(image_id)) - starts
    return image_id, repeat


def split_images(n_images: int, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Split code per distinct image (0 train, 1 val, 2 test), so repeats of one image never straddle splits."""
    n_val = max(1, round(val_fraction * n_images))
    n_test = round(test_fraction * n_images) if test_fraction > 0 else 0
    if n_images - n_val - n_test < 1:
        raise DataError(
            f"only {n_images} distinct image(s): too few for a validation split of {val_fraction} and a "
            f"test split of {test_fraction} with any left to train on."
        )
    code = np.zeros(n_images, np.int8)
    order = np.random.default_rng(seed).permutation(n_images)
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


@dataclass(frozen=True)
class Part:
    """Rows of one split from one response array: row k shows image `image_rows[k]` and has response row `rows[k]`."""

    responses: RowSource
    images: ImageSource
    rows: np.ndarray  # (n,) into responses
    image_rows: np.ndarray  # (n,) into images
    image_id: np.ndarray  # (n,) int64
    repeat: np.ndarray  # (n,) int32
    sample_id: np.ndarray  # (n,) int64

    def chunks(self, shard_rows: int) -> Iterator[Samples]:
        """Shards of at most `shard_rows` rows, each read (responses) and decoded (images) only when it is written."""
        for start in range(0, len(self.rows), shard_rows):
            at = slice(start, start + shard_rows)
            yield Samples(
                sample_id=self.sample_id[at],
                image_id=self.image_id[at],
                repeat=self.repeat[at],
                responses=self.responses.read(self.rows[at]),
                images=self.images.get(self.image_rows[at]),
            )


@dataclass(frozen=True)
class Plan:
    """A dataset checked and ready to write: each split one or more parts, read and decoded a shard at a time."""

    rfs: RFTable
    fov_deg: float
    image_shape: tuple[int, int, int]  # (H, W, C)
    splits: Mapping[str, Sequence[Part]]
    source: dict

    def write(
        self, out: str, shard_rows: int, overwrite: bool = False, on_rows=None, image_encoding: str = "raw"
    ) -> DatasetInfo:
        """`on_rows(n, total=None)`: called once with the total before any row (for a progress bar), then after
        each shard with its rows."""
        if on_rows is not None:
            on_rows(0, total=sum(len(p.rows) for parts in self.splits.values() for p in parts))
        return write_dataset(
            out,
            rfs=self.rfs,
            fov_deg=self.fov_deg,
            image_size=self.image_shape[:2],
            channels=self.image_shape[2],
            splits={name: (c for p in parts for c in p.chunks(shard_rows)) for name, parts in self.splits.items()},
            source=self.source,
            overwrite=overwrite,
            on_rows=on_rows,
            image_encoding=image_encoding,
        )


def check_shard_rows(shard_rows: int) -> None:
    if shard_rows < 1:
        raise UsageError(f"--shard-rows must be >= 1 (rows per Parquet file), got {shard_rows}.")


def finite_rows(responses: RowSource, block_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(N,) bool: rows whose responses are all finite; (E,) bool: electrodes whose responses in those rows are all
    the same (none where no row is finite). One pass, a block of rows at a time."""
    good = np.empty(len(responses), bool)
    lo = hi = np.empty(0, np.float32)
    for start in range(0, len(responses), block_rows):
        rows = np.arange(start, min(start + block_rows, len(responses)))
        block = responses.read(rows)
        good[rows] = np.isfinite(block).all(axis=1)
        kept = block[good[rows]]
        if len(kept):
            lo = kept.min(0) if len(lo) == 0 else np.minimum(lo, kept.min(0))
            hi = kept.max(0) if len(hi) == 0 else np.maximum(hi, kept.max(0))
    return good, lo == hi


def open_images(
    ref: str, index: str | None, stack: ExitStack, resize: int | None = None, crop: tuple[float, float] | None = None
) -> ImageSource:
    """The images of `ref`, a folder or an array file, cropped to `crop` and resized to `resize` if given."""
    if crop is not None and resize is None:
        raise DataError("--crop needs --resize: the size to store the cropped images at.")
    if crop is not None and not 0 <= crop[0] < crop[1] <= 1:
        raise DataError(
            "--crop must be START:STOP with 0 <= START < STOP <= 100 (percent), "
            f"got {crop[0] * 100:g}:{crop[1] * 100:g}."
        )
    if resize is not None and not MIN_SIDE <= resize <= MAX_SIDE:
        raise DataError(f"--resize must be between {MIN_SIDE} and {MAX_SIDE} pixels, got {resize}.")
    crop = crop or (0.0, 1.0)
    if os.path.isdir(ref):
        images = FolderImages.from_folder(ref, index, size=resize, crop=crop)
        smallest = images.smallest_side
    else:
        images = ArrayImages(open_array(ref, "images", stack))
        smallest = min(images.shape[:2])
        images = images if resize is None else ResizedImages(images, resize, crop)
    kept = (crop[1] - crop[0]) * smallest
    if kept < MIN_SIDE and crop != (0.0, 1.0):
        raise DataError(
            f"--crop {crop[0] * 100:g}:{crop[1] * 100:g} keeps {kept:.3g} pixels of the {smallest}-pixel side of "
            f"{images.path}'s images; rfgan's nets need at least {MIN_SIDE} pixels of image: keep a larger share."
        )
    return images


def ingest(spec: IngestSpec, on_rows=None) -> tuple[DatasetInfo, int]:
    """Check the inputs, then write the dataset. Returns its info and the number of rows dropped."""
    with ExitStack() as stack:  # the HDF5 files stay open while their rows are written
        return _ingest(spec, on_rows, stack)


def _ingest(spec: IngestSpec, on_rows, stack: ExitStack) -> tuple[DatasetInfo, int]:
    if not spec.fov_deg > 0:
        raise DataError(f"--fov-deg must be > 0, got {spec.fov_deg}.")
    check_shard_rows(spec.shard_rows)
    if not (0 < spec.val_fraction < 1 and 0 <= spec.test_fraction < 1):
        raise DataError("--val-fraction must be in (0, 1) and --test-fraction in [0, 1).")
    if spec.seed < 0:
        raise DataError(f"--seed must be >= 0, got {spec.seed}.")
    check_output(spec.out, spec.overwrite)  # before the inputs, which may take long to read
    stored = open_array(spec.responses, "responses", stack)
    if len(stored.shape) == 2 and 0 in stored.shape:
        raise DataError(
            f"{spec.responses}: the input is empty (responses {stored.shape}, no rows); there is "
            "nothing to make a dataset of."
        )
    rfs = RFTable.from_csv(spec.rfs)
    if len(stored.shape) != 2:
        raise DataError(
            f"{spec.responses}: responses are {stored.data.dtype}{stored.shape}; expected a numeric (N, E) array, "
            "one row per stimulus presentation and one column per electrode."
        )
    responses = response_rows(stored, len(rfs), spec.electrode_axis, spec.rfs)
    images = open_images(spec.images, spec.image_index, stack, spec.resize, spec.crop)
    if min(images.shape[:2]) < MIN_SIDE:
        raise DataError(
            f"{images.path}: the images are {images.shape[0]}x{images.shape[1]} pixels; rfgan's nets need at least "
            f"{MIN_SIDE} on each side: give --resize (e.g. --resize 96)."
        )
    if len(images) != len(responses):
        raise DataError(
            f"{spec.responses} has {len(responses)} rows but {images.path} has {len(images)} images; "
            "there must be one image per response row (repeat an image for each presentation of it)."
        )
    _check_rfs(rfs, spec, images.shape)

    good, constant = finite_rows(responses, spec.shard_rows)
    n_dropped = int((~good).sum())
    if n_dropped and not spec.drop_bad_rows:
        bad_rows = np.flatnonzero(~good)[:10].tolist()
        raise DataError(
            f"{spec.responses}: {n_dropped} row(s) hold NaN or infinite responses (rows {bad_rows}"
            f"{'…' if n_dropped > 10 else ''}). Fix them, or pass --drop-bad-rows to leave those rows out."
        )
    # A dead or disconnected channel is common in a recording: it is kept (standardising gives it std 1, so it
    # feeds the models zeros) and named in the metadata's source, and the command says so. When every electrode
    # is constant the responses carry nothing about the images (a wrong array, or a stimulus-free block): refused.
    if len(constant) and constant.all():
        raise DataError(
            f"{spec.responses}: every electrode gives the same response to every row (constant responses, e.g. "
            f"all {float(responses.read(np.flatnonzero(good)[:1])[0, 0]):g}); they carry no information about the "
            "images: check that this is the right array (the responses, not a mask or a baseline)."
        )
    if spec.image_ids is not None:
        ids = load_npy(spec.image_ids, "image ids")
        if ids.shape != (len(responses),) or not np.issubdtype(ids.dtype, np.integer):
            raise DataError(
                f"{spec.image_ids}: expected {len(responses)} integer image ids, got {ids.dtype}{ids.shape}."
            )
        keys = ids
    else:
        keys = images.keys()
    image_id, repeat = number_images(keys)
    n_images = int(image_id.max()) + 1
    split_of_row = split_images(n_images, spec.val_fraction, spec.test_fraction, spec.seed)[image_id]

    def part(code: int) -> list[Part]:
        rows = np.flatnonzero((split_of_row == code) & good)
        return [Part(responses, images, rows, rows, image_id[rows], repeat[rows], rows.astype(np.int64))]

    splits = {"train": part(0), "val": part(1)}
    if spec.test_fraction > 0:
        splits["test"] = part(2)
    source = {
        "kind": "ingest",
        "responses": _absolute_ref(spec.responses),
        "images": _absolute_ref(spec.images),
        "rfs": os.path.abspath(spec.rfs),
        "val_fraction": spec.val_fraction,
        "test_fraction": spec.test_fraction,
        "seed": spec.seed,
        "dropped_rows": n_dropped,
        "constant_electrodes": rfs.electrode_id[constant].tolist() if len(constant) else [],
        **({"crop": list(spec.crop)} if spec.crop else {}),
        **({"resize": spec.resize} if spec.resize else {}),
    }
    plan = Plan(rfs, spec.fov_deg, images.shape, splits, source)
    info = plan.write(spec.out, spec.shard_rows, spec.overwrite, on_rows, spec.image_encoding)
    return info, n_dropped


def _absolute_ref(ref: str) -> str:
    path, key = split_ref(ref)
    return os.path.abspath(path) + (f":{key}" if key else "")
