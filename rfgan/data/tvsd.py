"""The THINGS Ventral Stream Spiking Dataset (TVSD; Papale, Wang, Self & Roelfsema, Neuron 2025) → an rfgan dataset.

Inputs, as the dataset's README documents them (every key name is a setting, since they come from that README and
not from files we have read; a wrong one fails with the keys the file has):

- `THINGS_normMUA.mat` (MATLAB v7.3): `train_MUA` [electrode × stimulus], `test_MUA` [electrode × stimulus] (the mean
  over repeats), `test_MUA_reps` [electrode × stimulus × repeat], `reliab` [electrode × ...];
- `things_imgs.mat`: `train_imgs`, `test_imgs`, the THINGS stimulus of each column (a cell array of paths, or a
  struct array whose `things_path` field holds them);
- the THINGS images (distributed separately), and an RF table: rfgan's CSV with `electrode_id` the 1-based channel,
  or an RF fit such as `THINGS_RFs.mat` (centres in pixels of the stimulus, from its centre).

Channels are grouped into arrays of `array_size` consecutive channels; `areas` names each array's area. Kept: the
channels whose reliability (averaged over its second axis) exceeds `min_reliability`, whose RF fit is finite and in
a named area, and whose RF reaches the (cropped) image; each exclusion is counted in the report.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict, dataclass

import numpy as np

from rfgan.data.arrays import ResponseRows, open_array, read_strings, read_variable, response_rows, split_ref
from rfgan.data.format import DatasetInfo
from rfgan.data.ingest import FolderImages, Part, Plan, check_shard_rows, finite_rows, split_images
from rfgan.data.rf import RFTable, rfs_outside_window
from rfgan.data.write import check_output
from rfgan.errors import DataError, UsageError

DEFAULT_AREAS = "V1:1-8,V4:9-12,IT:13-16"


@dataclass(frozen=True)
class TVSDSpec:
    mua: str  # THINGS_normMUA.mat
    imgs: str  # things_imgs.mat
    image_root: str  # the THINGS image folder the paths in `imgs` are relative to
    rfs: str  # RF table: .csv (degrees) or an RF-fit .mat (pixels of the stimulus)
    out: str
    px_per_deg: float  # screen pixels per degree of visual angle
    stimulus_px: int = 500  # the stimulus's width on screen, in pixels
    train_key: str = "train_MUA"
    test_key: str = "test_MUA"
    test_reps_key: str = "test_MUA_reps"
    reliab_key: str = "reliab"
    train_imgs_key: str = "train_imgs"
    test_imgs_key: str = "test_imgs"
    imgs_field: str = "things_path"  # the field holding the path, when the image lists are struct arrays
    rf_x_key: str = "all_centrex"
    rf_y_key: str = "all_centrey"
    rf_size_key: str | None = None  # RF size (Gaussian sd) in pixels, if the fit has one
    rf_sigma_deg: float | None = None  # else one size for every RF, in degrees
    rf_y_down: bool = False  # the fit's y grows downwards (image rows) rather than upwards
    min_reliability: float = 0.4
    array_size: int = 64
    areas: str = DEFAULT_AREAS  # AREA:FIRST-LAST arrays (1-based), comma-separated
    val_fraction: float = 0.1
    seed: int = 0
    test_repeats: bool = False  # the test split holds every presentation (`repeat` 0..R-1), not their mean
    crop_px: int | None = None  # keep the central CROP × CROP stimulus pixels
    resize: int = 96
    electrode_axis: str = "auto"
    drop_bad_rows: bool = False
    shard_rows: int = 1000
    image_encoding: str = "raw"
    overwrite: bool = False


def parse_areas(text: str) -> dict[int, str]:
    """'V1:1-8,V4:9-12' → {array number: area}."""
    out: dict[int, str] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        m = re.fullmatch(r"([^:]+):(\d+)(?:-(\d+))?", item)
        if m is None:
            raise UsageError(f"--areas: {item!r} is not AREA:FIRST-LAST (e.g. {DEFAULT_AREAS}).")
        first, last = int(m[2]), int(m[3] or m[2])
        for a in range(first, last + 1):
            if a in out:
                raise UsageError(f"--areas: array {a} is in both {out[a]} and {m[1]}.")
            out[a] = m[1].strip()
    return out


def _rf_fit(spec: TVSDSpec, n_channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x_deg, y_deg, sigma_deg), each (n_channels,), NaN where a channel has no fit."""
    path, _ = split_ref(spec.rfs)
    if path.lower().endswith(".csv"):
        return _rf_csv(spec.rfs, n_channels)
    x = read_variable(f"{path}:{spec.rf_x_key}", "RF centres (x)").astype(float).ravel()
    y = read_variable(f"{path}:{spec.rf_y_key}", "RF centres (y)").astype(float).ravel()
    if spec.rf_size_key:
        sigma = read_variable(f"{path}:{spec.rf_size_key}", "RF sizes").astype(float).ravel() / spec.px_per_deg
    elif spec.rf_sigma_deg:
        sigma = np.full(len(x), spec.rf_sigma_deg)
    else:
        raise UsageError(
            f"{path}: give the RF sizes: --rf-size-key KEY (the fit's sizes, in pixels) or --rf-sigma-deg DEG."
        )
    for name, a in (("x", x), ("y", y), ("size", sigma)):
        if len(a) != n_channels:
            raise DataError(f"{path}: {len(a)} RF {name} values but the recording has {n_channels} channels.")
    # Pixels from the stimulus centre → degrees, y up as everywhere in rfgan.
    return x / spec.px_per_deg, (-y if spec.rf_y_down else y) / spec.px_per_deg, sigma


def _rf_csv(path: str, n_channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Channels without a fit may be absent from the CSV, or NaN in it: both are dropped (and counted), so the CSV is
    # read here, not with RFTable.from_csv, which refuses NaN.
    import csv

    x, y, sigma = (np.full(n_channels, np.nan) for _ in range(3))
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read the RF table ({e}).") from e
    for line, row in enumerate(rows, start=2):
        try:
            ch = int(row["electrode_id"]) - 1
            values = [float(row[c] or "nan") for c in ("x_deg", "y_deg", "sigma_deg")]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(
                f"{path}, line {line}: expected numbers in electrode_id,x_deg,y_deg,sigma_deg ({e})."
            ) from None
        if not 0 <= ch < n_channels:
            raise DataError(f"{path}, line {line}: electrode_id {ch + 1} is not a channel 1..{n_channels}.")
        x[ch], y[ch], sigma[ch] = values
    return x, y, sigma


def _resolve(paths: list[str], root: str, what: str) -> list[str]:
    """Each stimulus path as a file under `root`: the longest tail of it that exists there (the lab's paths may start
    with a folder of their own machine)."""
    out, missing = [], []
    for p in paths:
        parts = [q for q in re.split(r"[\\/]+", p) if q and not q.endswith(":")]
        found = next(
            (f for k in range(len(parts)) if os.path.isfile(f := os.path.join(root, *parts[k:]))),
            None,
        )
        (out if found else missing).append(found or p)
    if missing:
        raise DataError(
            f"{len(missing)} of the {len(paths)} {what} are not in {root} (first: {missing[:3]}); give the THINGS "
            "image folder (the one holding a folder per object, e.g. object_images) as --image-root."
        )
    dup = [p for p, n in Counter(out).items() if n > 1]
    if dup:
        raise DataError(
            f"{len(dup)} of the {what} appear more than once (first: {dup[:3]}); each column of the responses "
            "must be its own stimulus."
        )
    return out


def _test_rows(reps: ResponseRows, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, repeat) of every row of the repeats array [electrode × stimulus × repeat] (documented order)."""
    shape = reps.stimulus_shape  # stored order: MATLAB's reversed for a MATLAB array
    idx = np.unravel_index(np.arange(len(reps)), shape)
    image, repeat = idx[::-1] if reps.stored.matlab else idx
    if (reps.stored.matlab and shape[-1] != n_test) or (not reps.stored.matlab and shape[0] != n_test):
        raise DataError(
            f"{reps.stored.ref} has shape {reps.stored.shape}: expected [electrode x {n_test} test stimuli x repeat]."
        )
    return image.astype(np.int64), repeat.astype(np.int32)


def ingest_tvsd(spec: TVSDSpec, on_rows=None) -> tuple[DatasetInfo, list[str]]:
    """Check everything, then write the dataset. Returns its info and the report (one line per fact)."""
    if not spec.px_per_deg > 0:
        raise UsageError(f"--px-per-deg must be > 0, got {spec.px_per_deg}.")
    if spec.crop_px is not None and not 0 < spec.crop_px <= spec.stimulus_px:
        raise UsageError(f"--crop must be in 1..--stimulus-px ({spec.stimulus_px}), got {spec.crop_px}.")
    if not 0 < spec.val_fraction < 1:
        raise UsageError(f"--val-fraction must be in (0, 1), got {spec.val_fraction}.")
    check_shard_rows(spec.shard_rows)
    area_of_array = parse_areas(spec.areas)
    check_output(spec.out, spec.overwrite)
    with ExitStack() as stack:
        return _ingest(spec, area_of_array, on_rows, stack)


def _ingest(spec: TVSDSpec, area_of_array: dict[int, str], on_rows, stack: ExitStack):
    mua, _ = split_ref(spec.mua)
    imgs, _ = split_ref(spec.imgs)
    reliab = read_variable(f"{mua}:{spec.reliab_key}", "electrode reliabilities").astype(float)
    n_channels = len(reliab)
    # A NaN anywhere in a channel's reliabilities makes its mean NaN, and NaN > threshold is False: dropped.
    reliable = reliab.reshape(n_channels, -1).mean(axis=1) > spec.min_reliability
    x, y, sigma = _rf_fit(spec, n_channels)
    fitted = np.isfinite(x) & np.isfinite(y) & np.isfinite(sigma) & (sigma > 0)
    channel = np.arange(n_channels)
    array = channel // spec.array_size + 1
    area = np.array([area_of_array.get(int(a), "") for a in array])
    fov_deg = (spec.crop_px or spec.stimulus_px) / spec.px_per_deg
    candidate = reliable & fitted & (area != "")
    probe = RFTable(channel + 1, x, y, np.where(fitted, sigma, 1.0), area)
    outside = rfs_outside_window(probe, (spec.resize, spec.resize), fov_deg) & candidate
    keep = np.flatnonzero(candidate & ~outside)
    counts = {
        f"with mean {spec.reliab_key} not above {spec.min_reliability}": ~reliable,
        "more without an RF fit (NaN)": reliable & ~fitted,
        "more in no --areas array": reliable & fitted & (area == ""),
        f"more with RFs outside the {fov_deg:.3g}° image": outside,
    }
    per_area = ", ".join(f"{a} {n}" for a, n in Counter(area[keep]).items())
    report = [
        f"{n_channels} channels: {', '.join(f'{int(m.sum())} {why}' for why, m in counts.items())}: "
        f"{len(keep)} kept ({per_area})"
    ]
    if len(keep) == 0:
        raise DataError(
            f"no channel is left ({report[0]}); lower --min-reliability, or check --areas, --px-per-deg and the RF "
            "keys."
        )
    rfs = RFTable(channel[keep] + 1, x[keep], y[keep], sigma[keep], area[keep])
    rfs.validate(spec.rfs)

    def responses(key: str, what: str) -> ResponseRows:
        stored = open_array(f"{mua}:{key}", what, stack)
        return response_rows(stored, n_channels, spec.electrode_axis, f"{mua}:{spec.reliab_key}").select(keep)

    train = responses(spec.train_key, "training responses")
    test = responses(spec.test_reps_key if spec.test_repeats else spec.test_key, "test responses")
    train_paths = read_strings(f"{imgs}:{spec.train_imgs_key}", "training stimuli", spec.imgs_field)
    test_paths = read_strings(f"{imgs}:{spec.test_imgs_key}", "test stimuli", spec.imgs_field)
    if len(train) != len(train_paths):
        raise DataError(
            f"{mua}:{spec.train_key} has {len(train)} stimuli but {imgs}:{spec.train_imgs_key} lists "
            f"{len(train_paths)}; they must match column for column."
        )
    if not spec.test_repeats and len(test) != len(test_paths):
        raise DataError(
            f"{mua}:{spec.test_key} has {len(test)} stimuli but {imgs}:{spec.test_imgs_key} lists "
            f"{len(test_paths)}; they must match column for column."
        )
    files = _resolve(train_paths, spec.image_root, "training stimuli")
    files += _resolve(test_paths, spec.image_root, "test stimuli")
    crop = (spec.crop_px or spec.stimulus_px) / spec.stimulus_px
    images = FolderImages(files, spec.image_root, size=spec.resize, crop=((1 - crop) / 2, (1 + crop) / 2))

    n_train, n_test = len(train_paths), len(test_paths)
    if spec.test_repeats:
        test_image, test_repeat = _test_rows(test, n_test)
    else:
        test_image, test_repeat = np.arange(n_test), np.zeros(n_test, np.int32)
    bad = {}
    goods = {}
    for name, rows in (("train", train), ("test", test)):
        goods[name], _ = finite_rows(rows, spec.shard_rows)
        bad[name] = int((~goods[name]).sum())
    if any(bad.values()):
        if not spec.drop_bad_rows:
            raise DataError(
                f"{mua}: responses of kept channels are NaN or infinite in {bad['train']} training and "
                f"{bad['test']} test row(s); pass --drop-bad-rows to leave those rows out."
            )
        report.append(f"dropped {bad['train']} training and {bad['test']} test row(s) with NaN/inf responses")

    code = split_images(n_train, spec.val_fraction, 0.0, spec.seed)

    def part(rows: ResponseRows, use: np.ndarray, image_rows: np.ndarray, image_id, repeat, first_sample: int) -> Part:
        r = np.flatnonzero(use)
        return Part(rows, images, r, image_rows[r], image_id[r], repeat[r], first_sample + r)

    train_ids = np.arange(n_train, dtype=np.int64)
    no_repeat = np.zeros(n_train, np.int32)
    splits = {
        "train": [part(train, (code == 0) & goods["train"], train_ids, train_ids, no_repeat, 0)],
        "val": [part(train, (code == 1) & goods["train"], train_ids, train_ids, no_repeat, 0)],
        "test": [part(test, goods["test"], n_train + test_image, n_train + test_image, test_repeat, n_train)],
    }
    source = {
        "kind": "tvsd",
        **{k: v for k, v in asdict(spec).items() if k not in ("out", "overwrite", "shard_rows", "image_encoding")},
        **{k: os.path.abspath(getattr(spec, k)) for k in ("mua", "imgs", "image_root", "rfs")},
        "electrode_array": array[keep].tolist(),
        "report": report,
    }
    plan = Plan(rfs, fov_deg, images.shape, splits, source)
    info = plan.write(spec.out, spec.shard_rows, spec.overwrite, on_rows, spec.image_encoding)
    return info, report
