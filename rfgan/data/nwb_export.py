"""An rfgan dataset → one NWB file (pynwb; DANDI's format), in the layout `rfgan ingest-nwb` reads (docs/ingest.md).

- electrodes table: one row per response column, its id the RF table's electrode_id, `location` the area
  ("unknown" where the RF table has none), `x_deg`, `y_deg`, `sigma_deg` the RF;
- `/stimulus_template/images`: an `Images` container of one `RGBImage` / `GrayscaleImage` per distinct image, named
  `image_<rfgan image_id>`, in order of first presentation (`order_of_images`);
- `/stimulus/presentations`: an `IndexSeries` over that container, one presentation per dataset row, a nominal
  PERIOD_S apart (an rfgan dataset has no timing);
- `/processing/rfgan/responses`: a `TimeSeries` (rows × electrodes) with one sample per presentation, SAMPLE_AT_S
  after its onset, so the default window of `ingest-nwb` (0.05–0.25 s) averages exactly that one sample;
- `/intervals/trials`: one trial per presentation with its rfgan split, sample_id, image_id and repeat, so nothing
  of the dataset is lost (ingest-nwb makes its own split by image).

Memory stays bounded by one decoded shard: pynwb writes the images and the responses through hdmf's chunk
iterators, which read them from the dataset as they are written.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from rfgan import outputs, storage
from rfgan.data.format import (
    check_outside_dataset,
    decode_table,
    listed_shards,
    read_columns,
    read_info,
    read_rfs,
    read_shard,
    split_files,
)
from rfgan.errors import DataError, UsageError

PERIOD_S = 1.0  # between presentation onsets
SAMPLE_AT_S = 0.15  # the response sample's time after its onset: inside ingest-nwb's default window
MODULE, SERIES, STIMULUS, IMAGES = "rfgan", "responses", "presentations", "images"
CHUNK_ROWS, BUFFER_ROWS = 256, 1024  # of the responses, in HDF5 and per read


def _is_export(path: str) -> bool:
    """Whether `path` is an NWB file that rfgan export wrote (HDF5 holding /processing/rfgan), not any HDF5 file."""
    if outputs.head(path, 8) != b"\x89HDF\r\n\x1a\n":
        return False
    import h5py

    fs, where = storage.filesystem(path)
    try:
        with fs.open_input_file(where) as f, h5py.File(f, "r") as h5:
            return f"processing/{MODULE}/{SERIES}" in h5
    except (OSError, ValueError):
        return False


# What --overwrite may replace: an earlier export, not a lab's own HDF5 or NWB file, a metadata.json or anything else.
NWB_FILE = outputs.Kind("an NWB file that rfgan export wrote", _is_export)


class _Rows:
    """The exported rows (the splits in order, each in its files' order), a decoded shard at a time: the one most
    recently asked for is kept, so the writer's in-order reads decode each shard once per pass."""

    def __init__(self, path: str, splits: list[str]):
        self.info = read_info(path)
        self.fs, _ = storage.filesystem(path)
        root = storage.filesystem(path)[1]
        listed = [(split, f) for split in splits for f in split_files(path, split, self.info)]
        self.files = [f for _, f in listed]
        self.shards = [listed_shards(root, split, self.info)[f] for split, f in listed]
        self.split_of_file = [split for split, _ in listed]
        rows = [shard.rows for shard in self.shards]  # split_files checked them against the footers
        self.starts = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        self._cached: tuple[int, dict[str, np.ndarray]] | None = None
        self.on_rows = None  # progress: called with the response rows, then the images, as they are written

    def __len__(self) -> int:
        return int(self.starts[-1])

    def ids(self) -> dict[str, np.ndarray]:
        """sample_id, image_id, repeat and the split of every row, without decoding images."""
        tables = [read_columns(self.fs, f, ("sample_id", "image_id", "repeat")) for f in self.files]
        table = pa.concat_tables(tables)
        out = {c: table.column(c).to_numpy() for c in table.column_names}
        out["split"] = np.repeat(self.split_of_file, np.diff(self.starts))
        return out

    def shard(self, i: int) -> dict[str, np.ndarray]:
        if self._cached is None or self._cached[0] != i:
            self._cached = None  # let the previous shard go before the next one is decoded
            table = read_shard(self.fs, self.files[i], self.shards[i])
            self._cached = (i, decode_table(table, self.info))
        return self._cached[1]

    def get(self, column: str, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 of one decoded column, across shards."""
        parts = []
        while start < stop:
            i = int(np.searchsorted(self.starts, start, side="right")) - 1
            end = min(stop, int(self.starts[i + 1]))
            parts.append(self.shard(i)[column][start - self.starts[i] : end - self.starts[i]])
            start = end
        return np.concatenate(parts)


def _iterators():
    from hdmf.data_utils import GenericDataChunkIterator

    class ResponseData(GenericDataChunkIterator):
        def __init__(self, rows: _Rows):
            self.rows = rows
            # Buffers of BUFFER_ROWS rows (hdmf's default buffer would take the whole array at once: 92 MB at TVSD
            # scale), in HDF5 chunks of CHUNK_ROWS rows × all electrodes: a row is read whole.
            n, e = len(rows), rows.info.n_electrodes
            super().__init__(chunk_shape=(min(CHUNK_ROWS, n), e), buffer_shape=(min(BUFFER_ROWS, n), e))

        def _get_data(self, selection):
            block = self.rows.get("responses", selection[0].start or 0, selection[0].stop)
            if self.rows.on_rows is not None:
                self.rows.on_rows(len(block))
            return block[:, selection[1]]

        def _get_maxshape(self):
            return (len(self.rows), self.rows.info.n_electrodes)

        def _get_dtype(self):
            return np.dtype(np.float32)

    class ImageData(GenericDataChunkIterator):
        def __init__(self, rows: _Rows, row: int):
            self.rows, self.row = rows, row
            super().__init__()

        def _get_data(self, selection):
            image = self.rows.get("image", self.row, self.row + 1)[0]
            if self.rows.on_rows is not None:
                self.rows.on_rows(1)
            return (image[..., 0] if image.shape[-1] == 1 else image)[selection]

        def _get_maxshape(self):
            h, w = self.rows.info.image_size
            return (h, w) if self.rows.info.channels == 1 else (h, w, 3)

        def _get_dtype(self):
            return np.dtype(np.uint8)

    return ResponseData, ImageData


def export_nwb(data: str, out: str, splits: list[str] | None = None, overwrite: bool = False, on_rows=None) -> dict:
    """Write the dataset at `data` (its `splits`, default all) as the NWB file `out`, atomically: it is written
    beside `out` and renamed into place when complete. `on_rows(n, total=None)`: the total first (rows + distinct
    images: pynwb writes the responses, then each image), then progress.
    Returns a summary."""
    try:
        from hdmf.backends.hdf5 import H5DataIO
        from hdmf.common import ElementIdentifiers, VectorData
        from pynwb import NWBHDF5IO, NWBFile, TimeSeries
        from pynwb.base import ImageReferences, Images
        from pynwb.epoch import TimeIntervals
        from pynwb.image import GrayscaleImage, IndexSeries, RGBImage
    except ImportError as e:
        raise UsageError("writing NWB files needs pynwb: pip install 'rfgan[nwb]'.") from e
    if storage.is_remote(out):
        raise UsageError(f"--out {out}: NWB files are written to a local path; copy it to the bucket afterwards.")
    target = Path(out)
    if target.is_dir():
        raise DataError(f"--out {out} is a folder; give the NWB file's path, e.g. {target / 'dataset.nwb'}.")
    check_outside_dataset(out, "an NWB file")
    outputs.check_target(out, NWB_FILE, replace=overwrite)
    if not target.parent.is_dir():
        raise DataError(f"cannot write {out}: its folder {target.parent} does not exist.")
    info = read_info(data)
    chosen = list(info.splits) if not splits else list(dict.fromkeys(splits))
    missing = [s for s in chosen if s not in info.splits]
    if missing:
        raise DataError(f"{data} has no split(s) {missing}; its splits are {sorted(info.splits)}.")
    rfs = read_rfs(data, info)
    rows = _Rows(data, chosen)
    ids = rows.ids()
    # The container in order of first presentation: pynwb writes the images in turn, and in this order each one's
    # shard is the one already decoded (or the next), not a shard decoded again per image.
    image_ids, first_row, index = np.unique(ids["image_id"], return_index=True, return_inverse=True)
    by_first = np.argsort(first_row)
    rank = np.empty(len(by_first), np.int64)
    rank[by_first] = np.arange(len(by_first))
    shown = rank[index.reshape(-1)]  # each row's index into the Images container
    image_ids, first_row = image_ids[by_first], first_row[by_first]
    ResponseData, ImageData = _iterators()

    nwb = NWBFile(
        session_description=f"rfgan dataset {os.path.abspath(data)} (splits {chosen}) exported as NWB",
        identifier=str(uuid.uuid4()),
        # An rfgan dataset records no session: the export's time stands in for it.
        session_start_time=datetime.now(timezone.utc),
        notes=json.dumps({"rfgan": {"fov_deg": info.fov_deg, "splits": info.splits, "source": info.source}}),
        stimulus_notes=f"Images span {info.fov_deg} degrees of visual angle (ingest-nwb --fov-deg {info.fov_deg}).",
    )
    device = nwb.create_device("rfgan", description="the recording's device is not recorded in an rfgan dataset")
    group = nwb.create_electrode_group(
        "electrodes", description="all electrodes", location="see each electrode", device=device
    )
    for name, text in (
        ("x_deg", "RF centre, degrees right of the image centre"),
        ("y_deg", "RF centre, degrees above the image centre"),
        ("sigma_deg", "RF size, the Gaussian's sd in degrees"),
    ):
        nwb.add_electrode_column(name, text)
    areas = rfs.area if rfs.area is not None else ["unknown"] * len(rfs)
    for e in range(len(rfs)):
        nwb.add_electrode(
            id=int(rfs.electrode_id[e]),
            group=group,
            location=str(areas[e]),
            x_deg=float(rfs.x_deg[e]),
            y_deg=float(rfs.y_deg[e]),
            sigma_deg=float(rfs.sigma_deg[e]),
        )
    kind = GrayscaleImage if info.channels == 1 else RGBImage
    pictures = [
        kind(
            name=f"image_{image_id}",
            data=H5DataIO(ImageData(rows, int(row)), compression="gzip"),
            description=f"rfgan image_id {image_id}",
        )
        for image_id, row in zip(image_ids, first_row)
    ]
    images = Images(
        name=IMAGES,
        images=pictures,
        description=f"the distinct images shown, in order of first presentation; {info.fov_deg} degrees wide",
        order_of_images=ImageReferences(name="order_of_images", data=pictures),
    )
    nwb.add_stimulus_template(images)
    onset = np.arange(len(rows)) * PERIOD_S
    nwb.add_stimulus(
        IndexSeries(
            name=STIMULUS,
            data=shown.astype(np.uint32),
            indexed_images=images,
            unit="N/A",
            starting_time=0.0,
            rate=1 / PERIOD_S,
            description=f"one presentation per rfgan row; onsets are nominal, {PERIOD_S} s apart",
        )
    )
    module = nwb.create_processing_module(MODULE, "responses per presentation, as in the rfgan dataset")
    module.add(
        TimeSeries(
            name=SERIES,
            data=H5DataIO(ResponseData(rows), compression="gzip"),
            unit="a.u.",
            starting_time=SAMPLE_AT_S,
            rate=1 / PERIOD_S,
            description=f"rows x electrodes (the electrodes table's order); the response to presentation k is sample "
            f"k, {SAMPLE_AT_S} s after its onset",
        )
    )
    # Whole columns at once: add_trial row by row takes minutes for 22,000 rows.
    columns = {
        "start_time": (onset, "presentation onset, s"),
        "stop_time": (onset + PERIOD_S, "the next onset, s"),
        "split": (ids["split"].astype(object), "the rfgan split"),
        "sample_id": (ids["sample_id"], "rfgan sample_id"),
        "image_id": (ids["image_id"], "rfgan image_id"),
        "repeat": (ids["repeat"], "rfgan repeat"),
    }
    nwb.trials = TimeIntervals(
        name="trials",
        description="one per presentation, with its place in the rfgan dataset",
        id=ElementIdentifiers(name="id", data=np.arange(len(rows))),
        columns=[VectorData(name=name, data=data, description=text) for name, (data, text) in columns.items()],
    )

    if on_rows is not None:
        on_rows(0, total=len(rows) + len(image_ids))
        rows.on_rows = on_rows

    def fill(staged: Path) -> None:
        with NWBHDF5IO(staged, "w") as io:
            io.write(nwb)

    # ".nwb" last in the staging name, as pynwb asks of an NWB path.
    outputs.write_file(out, NWB_FILE, fill, replace=overwrite, suffix=".nwb")
    return {
        "rows": len(rows),
        "images": len(image_ids),
        "electrodes": len(rfs),
        "splits": chosen,
        "fov_deg": info.fov_deg,
    }
