"""An NWB file (pynwb; DANDI's format) → an rfgan dataset. Needs the optional extra `rfgan[nwb]`.

The layout read (NWB's own way of recording image presentations):

- presentations: an `IndexSeries` in `/stimulus` (`--stimulus`, default: the only one), whose `timestamps` are the
  onsets and whose `data` index its `indexed_images`, an `Images` container in `/stimulus_template` of
  `GrayscaleImage` / `RGBImage`s of one size, in `order_of_images` order if it has one;
- responses, one column per unit of the `units` table (the spike rate in a window after each onset), or per
  column of a `TimeSeries` named with `--responses` in `/acquisition` or a processing module (the mean of the samples
  in the window; its `electrodes` region, if any, ties the columns to electrodes);
- each response column's electrode (a unit's first electrode) gives its area (`--area-column`, default
  `location`) and its RF (the columns named by `--rf-columns`, in degrees from the image centre, y up), unless an
  RF CSV is given (`--rfs`, one row per response column);
- windows: `--window START:STOP` seconds after onset, and `--area-window AREA=START:STOP` for areas whose
  responses come later (IT after V1).

Responses are computed a shard of presentations at a time; spike times are read per unit once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np

from rfgan.data.format import DatasetInfo
from rfgan.data.ingest import Part, Plan, check_shard_rows, finite_rows, number_images, split_images
from rfgan.data.rf import RFTable, rfs_outside_window
from rfgan.data.write import check_output
from rfgan.errors import DataError, UsageError


@dataclass(frozen=True)
class NWBSpec:
    path: str
    out: str
    fov_deg: float  # visual angle spanned by the image width
    stimulus: str | None = None  # IndexSeries in /stimulus
    responses: str = "units"  # "units", or the name of a TimeSeries
    window: str = "0.05:0.25"  # seconds after onset
    area_windows: Sequence[str] = ()  # AREA=START:STOP
    area_column: str = "location"
    rf_columns: str = "x_deg,y_deg,sigma_deg"
    rfs: str | None = None  # CSV instead of the electrodes table's RF columns
    val_fraction: float = 0.1
    test_fraction: float = 0.0
    seed: int = 0
    drop_bad_rows: bool = False
    shard_rows: int = 1000
    image_encoding: str = "raw"
    overwrite: bool = False


def _window(text: str, flag: str) -> tuple[float, float]:
    m = re.fullmatch(r"\s*(-?[\d.]+)\s*:\s*(-?[\d.]+)\s*", text)
    if m is None or not float(m[1]) < float(m[2]):
        raise UsageError(f"{flag} {text!r}: expected START:STOP in seconds after onset, START < STOP (e.g. 0.05:0.25).")
    return float(m[1]), float(m[2])


class UnitRates:
    """Spike rate of each unit in its area's window after each presentation: (n, units) float32 per read."""

    def __init__(self, units, onsets: np.ndarray, windows: np.ndarray):
        index = units["spike_times"]  # ragged: the end of each unit's run in one flat array
        ends = np.asarray(index.data[:], np.int64)
        flat = index.target.data
        starts = np.concatenate([[0], ends[:-1]])
        self.spikes = [np.sort(np.asarray(flat[a:b], float)) for a, b in zip(starts, ends)]
        self.onsets, self.windows = onsets, windows  # (N,), (units, 2)

    def __len__(self) -> int:
        return len(self.onsets)

    def read(self, rows: np.ndarray) -> np.ndarray:
        on = self.onsets[rows]
        out = np.empty((len(rows), len(self.spikes)), np.float32)
        for u, (spikes, (a, b)) in enumerate(zip(self.spikes, self.windows)):
            out[:, u] = (np.searchsorted(spikes, on + b) - np.searchsorted(spikes, on + a)) / (b - a)
        return out


class SeriesMeans:
    """Mean of a (T, E) time series over each column's window after each presentation: (n, E) float32 per read."""

    def __init__(self, series, onsets: np.ndarray, windows: np.ndarray):
        self.data = series.data  # (T, E), read a window at a time
        if series.timestamps is not None:
            self.times = np.asarray(series.timestamps[:], float)
        else:
            self.times = series.starting_time + np.arange(len(self.data)) / series.rate
        self.onsets, self.windows = onsets, windows  # (N,), (E, 2)
        self.groups = [np.flatnonzero((windows == w).all(axis=1)) for w in np.unique(windows, axis=0)]

    def __len__(self) -> int:
        return len(self.onsets)

    def read(self, rows: np.ndarray) -> np.ndarray:
        out = np.full((len(rows), self.data.shape[1]), np.nan, np.float32)
        for k, on in enumerate(self.onsets[rows]):
            lo = np.searchsorted(self.times, on + self.windows[:, 0])
            hi = np.searchsorted(self.times, on + self.windows[:, 1])
            block = np.asarray(self.data[lo.min() : hi.max()], np.float32)
            for cols in self.groups:
                a, b = lo[cols[0]] - lo.min(), hi[cols[0]] - lo.min()
                if b > a:  # an empty window (past the recording's end) stays NaN: a bad row
                    out[k, cols] = block[a:b, cols].mean(axis=0)
        return out


class NWBImages:
    """The images of an `Images` container, each read when its rows are written."""

    def __init__(self, container, where: str):
        order = container.order_of_images
        self.images = list(order.data[:]) if order is not None else list(container.images.values())
        self.path = where
        shapes = {tuple(im.data.shape) for im in self.images}
        if len(shapes) != 1:
            raise DataError(f"{where}: images differ in shape ({sorted(shapes)[:3]}); rfgan needs one size.")
        shape = shapes.pop()
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3)):
            raise DataError(f"{where}: images are {shape}; expected (H, W) grayscale or (H, W, 3) RGB.")
        self.shape = (*shape[:2], 3 if len(shape) == 3 and shape[2] == 3 else 1)

    def __len__(self) -> int:
        return len(self.images)

    def keys(self) -> list:
        return list(range(len(self.images)))

    def get(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.shape), np.uint8)
        for k, i in enumerate(rows):
            a = np.asarray(self.images[i].data[()])
            out[k] = (
                (a * 255.0 + 0.5).astype(np.uint8).reshape(self.shape) if a.dtype != np.uint8 else a.reshape(self.shape)
            )
        return out


def _pick(container, name: str | None, kind: str, what: str, where: str):
    found = {k: v for k, v in container.items() if type(v).__name__ == kind}
    if name is None:
        if len(found) != 1:
            raise DataError(f"{where}: name the {what} with --stimulus (the {kind}s there: {sorted(found)}).")
        return next(iter(found.values()))
    if name not in found:
        raise DataError(f"{where}: no {kind} {name!r} (the {what}); the {kind}s there: {sorted(found)}.")
    return found[name]


def _series(nwb, name: str, where: str):
    places = {f"acquisition/{k}": v for k, v in nwb.acquisition.items()}
    for module in nwb.processing.values():
        places.update({f"processing/{module.name}/{k}": v for k, v in module.data_interfaces.items()})
    for place, obj in places.items():
        if place.rsplit("/", 1)[-1] == name and hasattr(obj, "data"):
            return obj
    raise DataError(f"{where}: no time series {name!r}; responses can be 'units' or one of {sorted(places)}.")


def ingest_nwb(spec: NWBSpec, on_rows=None) -> tuple[DatasetInfo, list[str]]:
    """Check everything, then write the dataset. Returns its info and a report."""
    try:
        from pynwb import NWBHDF5IO
    except ImportError as e:
        raise UsageError("reading NWB files needs pynwb: pip install 'rfgan[nwb]'.") from e
    if not spec.fov_deg > 0:
        raise UsageError(f"--fov-deg must be > 0, got {spec.fov_deg}.")
    check_shard_rows(spec.shard_rows)
    default = _window(spec.window, "--window")
    area_windows = {}
    for item in spec.area_windows:
        area, _, text = item.partition("=")
        if area.strip() in area_windows:
            raise UsageError(f"--area-window {area.strip()} is given twice; give each area's window once.")
        area_windows[area.strip()] = _window(text, f"--area-window {area}=")
    check_output(spec.out, spec.overwrite)
    with ExitStack() as stack:
        try:
            io = stack.enter_context(NWBHDF5IO(spec.path, "r"))
            nwb = io.read()
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{spec.path}: cannot read it as NWB ({type(e).__name__}: {e}).") from e
        return _ingest(spec, nwb, default, area_windows, on_rows)


def _ingest(spec: NWBSpec, nwb, default, area_windows, on_rows):
    where = spec.path
    series = _pick(nwb.stimulus, spec.stimulus, "IndexSeries", "stimulus presentations", f"{where}:/stimulus")
    if series.indexed_images is None:
        raise DataError(f"{where}: the IndexSeries {series.name!r} indexes no Images container (indexed_images).")
    images = NWBImages(series.indexed_images, f"{where}:/stimulus_template/{series.indexed_images.name}")
    onsets = np.asarray(series.timestamps[:], float) if series.timestamps is not None else None
    if onsets is None:
        onsets = series.starting_time + np.arange(len(series.data)) / series.rate
    shown = np.asarray(series.data[:], np.int64)  # (N,) image index of each presentation
    if shown.size and (shown.min() < 0 or shown.max() >= len(images)):
        raise DataError(f"{where}: {series.name!r} shows image {shown.max()} but the container holds {len(images)}.")

    table = nwb.electrodes
    if table is None:
        raise DataError(f"{where}: no electrodes table; rfgan needs each response's electrode for its area and RF.")
    if spec.responses == "units":
        if nwb.units is None:
            raise DataError(f"{where}: no units table; give a time series with --responses NAME.")
        electrode = np.array([int(nwb.units["electrodes"].get(i, index=True)[0]) for i in range(len(nwb.units))])
        ids = np.asarray(nwb.units.id[:], np.int64)
    else:
        ts = _series(nwb, spec.responses, where)
        region = getattr(ts, "electrodes", None)
        n_cols = ts.data.shape[1]
        electrode = np.asarray(region.data[:], np.int64) if region is not None else np.arange(n_cols)
        ids = np.asarray(table.id[:], np.int64)[electrode]
    colnames = set(table.colnames)
    if spec.area_column not in colnames:
        raise DataError(f"{where}: the electrodes table has no {spec.area_column!r} column; it has {sorted(colnames)}.")
    area = np.asarray([str(a) for a in table[spec.area_column][:]])[electrode]
    if spec.rfs is not None:
        rfs = RFTable.from_csv(spec.rfs)
        if len(rfs) != len(electrode):
            raise DataError(f"{spec.rfs} has {len(rfs)} rows but {where} has {len(electrode)} response columns.")
    else:
        cols = [c.strip() for c in spec.rf_columns.split(",")]
        missing = [c for c in cols if c not in colnames]
        if len(cols) != 3 or missing:
            raise DataError(
                f"{where}: the electrodes table has no RF column(s) {missing or cols} (it has {sorted(colnames)}); "
                "name them with --rf-columns X,Y,SIGMA (degrees), or give an RF table with --rfs."
            )
        x, y, sigma = (np.asarray(table[c][:], float)[electrode] for c in cols)
        rfs = RFTable(ids, x, y, sigma, area)
    rfs.validate(where)
    outside = rfs_outside_window(rfs, images.shape[:2], spec.fov_deg)
    if outside.any():
        raise DataError(
            f"{where}: {int(outside.sum())} RF(s) lie entirely outside the {spec.fov_deg}° image (id "
            f"{rfs.electrode_id[outside][:10].tolist()}); check --fov-deg and the RF columns' units (degrees)."
        )
    unknown = sorted(set(area_windows) - set(area.tolist()))
    if unknown:
        raise UsageError(
            f"--area-window names area(s) {unknown} that no electrode of {where} has; its areas are "
            f"{sorted(set(area.tolist()))} (names as the file spells them)."
        )
    windows = np.array([area_windows.get(a, default) for a in area])  # (E, 2)
    if spec.responses == "units":
        responses = UnitRates(nwb.units, onsets, windows)
    else:
        responses = SeriesMeans(ts, onsets, windows)

    good, _ = finite_rows(responses, spec.shard_rows)
    bad = int((~good).sum())
    if bad and not spec.drop_bad_rows:
        raise DataError(
            f"{where}: {bad} presentation(s) have no samples in their window or NaN responses; pass "
            "--drop-bad-rows to leave them out."
        )
    image_id, repeat = number_images(shown)
    code = split_images(int(image_id.max()) + 1, spec.val_fraction, spec.test_fraction, spec.seed)[image_id]

    def part(c: int) -> list[Part]:
        r = np.flatnonzero((code == c) & good)
        return [Part(responses, images, r, shown[r], shown[r], repeat[r], r.astype(np.int64))]

    splits = {"train": part(0), "val": part(1)}
    if spec.test_fraction > 0:
        splits["test"] = part(2)
    windows_used = {a: area_windows.get(a, default) for a in dict.fromkeys(area.tolist())}
    report = [
        f"{len(shown)} presentations of {len(images)} images, {len(electrode)} "
        f"{'units' if spec.responses == 'units' else 'channels'}, windows {windows_used}"
        + (f"; dropped {bad} presentation(s) without responses" if bad else "")
    ]
    source = {
        "kind": "nwb",
        "path": os.path.abspath(spec.path),
        "stimulus": series.name,
        "responses": spec.responses,
        "windows_s": windows_used,
        "val_fraction": spec.val_fraction,
        "test_fraction": spec.test_fraction,
        "seed": spec.seed,
        "dropped_rows": bad,
    }
    info = Plan(rfs, spec.fov_deg, images.shape, splits, source).write(
        spec.out, spec.shard_rows, spec.overwrite, on_rows, spec.image_encoding
    )
    return info, report
