"""rfgan ingest-nwb on an NWB file written with pynwb: units or a time series, an IndexSeries of image presentations
over an Images container, RF columns in the electrodes table."""

import dataclasses
from datetime import datetime, timezone

import numpy as np
import pytest
from conftest import one_line_error, tree

pynwb = pytest.importorskip("pynwb")
from pynwb import NWBHDF5IO, NWBFile, TimeSeries  # noqa: E402
from pynwb.base import ImageReferences, Images  # noqa: E402
from pynwb.image import IndexSeries, RGBImage  # noqa: E402

from rfgan.cli import main  # noqa: E402
from rfgan.data.format import read_rfs, read_split  # noqa: E402
from rfgan.data.nwb import NWBSpec, ingest_nwb  # noqa: E402
from rfgan.errors import DataError  # noqa: E402

N_IMAGES, REPEATS, SIZE, RATE = 6, 3, 12, 1000.0
AREAS = ["V1", "V1", "V4", "IT"]
WINDOWS = {"V1": (0.05, 0.25), "V4": (0.05, 0.25), "IT": (0.1, 0.3)}  # IT: --area-window IT=0.1:0.3


def _count(unit: int, p: int) -> int:
    """Spikes of `unit` in its window after presentation p: known, so the test can check the rates."""
    return (unit + 2 * p) % 5


@pytest.fixture
def recording(tmp_path):
    rng = np.random.default_rng(0)
    shown = np.tile(np.arange(N_IMAGES), REPEATS)
    onsets = np.arange(len(shown)) * 1.0
    nwb = NWBFile(session_description="t", identifier="t", session_start_time=datetime(2024, 1, 1, tzinfo=timezone.utc))
    device = nwb.create_device("utah")
    group = nwb.create_electrode_group("arrays", description="Utah arrays", location="V1/V4/IT", device=device)
    for name, text in (("x_deg", "RF centre x, degrees"), ("y_deg", "RF centre y"), ("sigma_deg", "RF sd")):
        nwb.add_electrode_column(name, text)
    for e, area in enumerate(AREAS):
        nwb.add_electrode(group=group, location=area, x_deg=0.5 * e - 1, y_deg=0.2, sigma_deg=0.7 + 0.1 * e)
    for u, area in enumerate(AREAS):
        a, b = WINDOWS[area]
        # _count spikes inside the window, one just before it and one just after: neither may be counted.
        spikes = [on + a + (b - a) * (k + 1) / 7 for p, on in enumerate(onsets) for k in range(_count(u, p))]
        spikes += [on + a - 0.01 for on in onsets] + [on + b + 0.01 for on in onsets]
        nwb.add_unit(spike_times=sorted(spikes), electrodes=[u])
    pictures = [RGBImage(name=f"img{k}", data=rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)) for k in range(6)]
    images = Images(
        name="things", images=pictures, order_of_images=ImageReferences(name="order_of_images", data=pictures)
    )
    nwb.add_stimulus_template(images)
    nwb.add_stimulus(
        IndexSeries(
            name="presentations", data=shown.astype(np.uint32), indexed_images=images, unit="N/A", timestamps=onsets
        )
    )
    # A MUA-like time series too: sample t of channel e is e + 10 * (the presentation it follows).
    t = np.arange(0, onsets[-1] + 1, 1 / RATE)
    mua = np.stack([e + 10 * np.floor(t) for e in range(len(AREAS))], axis=1)
    nwb.add_acquisition(TimeSeries(name="MUA", data=mua, unit="a.u.", rate=RATE, starting_time=0.0))
    with NWBHDF5IO(tmp_path / "rec.nwb", "w") as io:
        io.write(nwb)
    spec = NWBSpec(
        path=str(tmp_path / "rec.nwb"),
        out=str(tmp_path / "out"),
        fov_deg=4.0,
        area_windows=("IT=0.1:0.3",),
        val_fraction=0.34,
        shard_rows=5,
    )
    return spec, shown, pictures


def test_units_become_rates_in_each_area_window(recording):
    spec, shown, pictures = recording
    info, report = ingest_nwb(spec)
    assert info.n_electrodes == len(AREAS) and info.image_size == (SIZE, SIZE) and info.channels == 3
    assert sum(info.splits.values()) == N_IMAGES * REPEATS and "18 presentations of 6 images, 4 units" in report[0]
    rfs = read_rfs(spec.out)
    assert rfs.area.tolist() == AREAS and np.allclose(rfs.x_deg, [-1, -0.5, 0, 0.5])
    for split in ("train", "val"):
        part = read_split(spec.out, split)
        for p, row, image, image_id, repeat in zip(
            part["sample_id"], part["responses"], part["image"], part["image_id"], part["repeat"]
        ):
            want = [_count(u, p) / (WINDOWS[a][1] - WINDOWS[a][0]) for u, a in enumerate(AREAS)]
            np.testing.assert_allclose(row, want, rtol=1e-5)
            assert image_id == shown[p] and repeat == p // N_IMAGES
            np.testing.assert_array_equal(image, pictures[shown[p]].data)
    val = read_split(spec.out, "val")
    assert len(val["sample_id"]) == 2 * REPEATS  # whole images: every repeat of a validation image


def test_a_time_series_is_averaged_in_the_window(recording, capsys):
    spec, _, _ = recording
    argv = ["ingest-nwb", "--nwb", spec.path, "--fov-deg", "4", "--responses", "MUA", "--val-fraction", "0.34"]
    assert main([*argv, "--out", spec.out]) == 0
    # The progress bar knows its total once the inputs are checked: every presentation, all splits.
    assert f"{N_IMAGES * REPEATS}/{N_IMAGES * REPEATS} [" in capsys.readouterr().err
    part = read_split(spec.out, "train")
    want = np.arange(len(AREAS))[None, :] + 10 * part["sample_id"][:, None]
    np.testing.assert_allclose(part["responses"], want)


BAD = {
    "no RF columns": (
        {"rf_columns": "rf_x,rf_y,rf_sd"},
        r"no RF column\(s\) \['rf_x', 'rf_y', 'rf_sd'\] .*--rf-columns",
    ),
    "stimulus name": ({"stimulus": "images"}, r"no IndexSeries 'images' .*\['presentations'\]"),
    "series name": (
        {"responses": "LFP"},
        r"no time series 'LFP'; responses can be 'units' or one of \['acquisition/MUA'\]",
    ),
    "window": ({"window": "0.3:0.1"}, "expected START:STOP"),
    "area column": ({"area_column": "brain_area"}, r"no 'brain_area' column; it has \['group', 'group_name'"),
    # Third audit: a window for an area no electrode has (or spelled otherwise) was ignored, and of two for one
    # area the last won.
    "unknown area": ({"area_windows": ("it=0.1:0.3",)}, r"names area\(s\) \['it'\] that no electrode .* has"),
    "area twice": ({"area_windows": ("IT=0.1:0.3", "IT=0.2:0.4")}, "--area-window IT is given twice"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_nwb_input_one_line_nothing_written(recording, tmp_path, case):
    spec, _, _ = recording
    changes, message = BAD[case]
    before = tree(tmp_path)
    with pytest.raises(Exception, match=message) as err:
        ingest_nwb(dataclasses.replace(spec, **changes))
    assert "\n" not in str(err.value) and tree(tmp_path) == before


def test_not_an_nwb_file(recording, tmp_path, capsys):
    spec, _, _ = recording
    (tmp_path / "x.nwb").write_text("nope")
    assert main(["ingest-nwb", "--nwb", str(tmp_path / "x.nwb"), "--fov-deg", "4", "--out", spec.out, "--quiet"]) == 2
    assert "x.nwb: cannot read it as NWB" in one_line_error(capsys, "ingest-nwb")
    with pytest.raises(DataError):
        ingest_nwb(dataclasses.replace(spec, path=str(tmp_path / "x.nwb")))
