"""rfgan ingest-tvsd on small files in the TVSD layout: MATLAB v7.3 MUA and image lists, a MATLAB v5 RF fit, a
THINGS-like image folder."""

import dataclasses

import h5py
import numpy as np
import pytest
import scipy.io
from conftest import one_line_error, tree
from matfiles import Cell, Struct, write_mat73
from PIL import Image

from rfgan.cli import main
from rfgan.data.format import read_info, read_rfs, read_split
from rfgan.data.tvsd import TVSDSpec, ingest_tvsd
from rfgan.errors import DataError, RfganError

CHANNELS, ARRAY, N_TRAIN, N_TEST, REPS, PPD = 12, 4, 20, 3, 4, 25.0
UNRELIABLE, NAN_RF = [1, 6], [4]  # 0-based channels dropped for each reason; array 3 (channels 8–11) has no area


def _colour(k: int) -> tuple[int, int, int]:
    return (10 * k % 256, 255 - 7 * k % 256, 60 + 5 * k)


@pytest.fixture
def tvsd(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "THINGS" / "object_images"
    names = [f"obj{k}/obj{k}_{k:02d}s.jpg" for k in range(N_TRAIN + N_TEST)]
    for k, name in enumerate(names):  # each stimulus one flat colour, of its own size (THINGS images vary)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40 + k, 40 + k), _colour(k)).save(root / name, quality=98)
    train_mua = rng.normal(size=(CHANNELS, N_TRAIN))  # [electrode × stimulus], as MATLAB holds it
    reliab = rng.uniform(0.5, 0.9, (CHANNELS, 2))
    reliab[UNRELIABLE] = [[0.1, 0.5], [np.nan, 0.9]]
    write_mat73(
        tmp_path / "THINGS_normMUA.mat",
        {
            "train_MUA": train_mua,
            "test_MUA": rng.normal(size=(CHANNELS, N_TEST)),
            "test_MUA_reps": rng.normal(size=(CHANNELS, N_TEST, REPS)),
            "reliab": reliab,
            "SNR": rng.normal(size=(CHANNELS, 2)),
        },
    )
    # The lab's own absolute paths (Windows), and the test list as a struct with a things_path field.
    write_mat73(
        tmp_path / "things_imgs.mat",
        {
            "train_imgs": Cell([f"C:\\stimuli\\object_images\\{n.replace('/', chr(92))}" for n in names[:N_TRAIN]]),
            "test_imgs": Struct(things_path=Cell(names[N_TRAIN:])),
        },
    )
    x = rng.uniform(-60, 60, (1, CHANNELS))  # pixels from the stimulus centre
    x[0, NAN_RF] = np.nan
    scipy.io.savemat(
        tmp_path / "THINGS_RFs.mat",
        {"all_centrex": x, "all_centrey": rng.uniform(-60, 60, (1, CHANNELS)), "all_sd": np.full((1, CHANNELS), 20.0)},
    )
    return TVSDSpec(
        mua=str(tmp_path / "THINGS_normMUA.mat"),
        imgs=str(tmp_path / "things_imgs.mat"),
        image_root=str(root),
        rfs=str(tmp_path / "THINGS_RFs.mat"),
        out=str(tmp_path / "out"),
        px_per_deg=PPD,
        stimulus_px=200,
        rf_size_key="all_sd",
        array_size=ARRAY,
        areas="V1:1,V4:2",
        val_fraction=0.25,
        crop_px=160,
        resize=16,
        shard_rows=6,
    )


def _kept() -> np.ndarray:
    dropped = set(UNRELIABLE) | set(NAN_RF) | set(range(2 * ARRAY, CHANNELS))
    return np.array([c for c in range(CHANNELS) if c not in dropped])


def test_tvsd_end_to_end(tvsd, tmp_path):
    info, report = ingest_tvsd(tvsd)
    keep = _kept()
    assert info.splits == {"train": 15, "val": 5, "test": N_TEST} and info.n_electrodes == len(keep)
    assert info.fov_deg == pytest.approx(160 / PPD) and info.image_size == (16, 16) and info.channels == 3
    assert "2 with mean reliab not above 0.4, 1 more without an RF fit (NaN), 4 more in no --areas array" in report[0]
    rfs, fits = read_rfs(tvsd.out), scipy.io.loadmat(tvsd.rfs)
    assert rfs.electrode_id.tolist() == (keep + 1).tolist()
    assert rfs.area.tolist() == ["V1" if c < ARRAY else "V4" for c in keep]
    np.testing.assert_allclose(rfs.x_deg, fits["all_centrex"][0, keep] / PPD)
    np.testing.assert_allclose(rfs.sigma_deg, 20.0 / PPD)
    with h5py.File(tvsd.mua, "r") as f:
        train_mua, test_mua = f["train_MUA"][()].T, f["test_MUA"][()].T  # back to MATLAB's [electrode × stimulus]
    train, val, test = (read_split(tvsd.out, s) for s in ("train", "val", "test"))
    assert not set(train["image_id"]) & set(val["image_id"])
    for part in (train, val):
        np.testing.assert_allclose(part["responses"], train_mua[keep][:, part["sample_id"]].T, rtol=1e-6)
    np.testing.assert_allclose(test["responses"], test_mua[keep].T, rtol=1e-6)
    assert test["image_id"].tolist() == list(range(N_TRAIN, N_TRAIN + N_TEST))
    # Each row shows its own stimulus: the flat colour of the file its column names.
    for part in (train, val, test):
        for image_id, image in zip(part["image_id"], part["image"]):
            np.testing.assert_allclose(image.reshape(-1, 3).mean(0), _colour(int(image_id)), atol=3)
    assert read_info(tvsd.out).source["electrode_array"] == [1 + c // ARRAY for c in keep]


def test_tvsd_test_repeats_are_rows(tvsd):
    ingest_tvsd(dataclasses.replace(tvsd, test_repeats=True))
    with h5py.File(tvsd.mua, "r") as f:
        reps = f["test_MUA_reps"][()].T  # [electrode × stimulus × repeat]
    test = read_split(tvsd.out, "test")
    assert len(test["sample_id"]) == N_TEST * REPS
    assert sorted(np.bincount(test["repeat"]).tolist()) == [N_TEST] * REPS
    for image_id, r, row in zip(test["image_id"], test["repeat"], test["responses"]):
        np.testing.assert_allclose(row, reps[_kept(), image_id - N_TRAIN, r], rtol=1e-6)


def test_tvsd_rf_table_as_csv_drops_channels_without_a_fit(tvsd, tmp_path):
    lines = ["electrode_id,x_deg,y_deg,sigma_deg"] + [f"{c + 1},0.5,-0.5,0.8" for c in range(CHANNELS) if c != 3]
    lines[5 + 1] = "6,nan,0,1"  # channel 6 (0-based 5) without a fit
    (tmp_path / "rfs.csv").write_text("\n".join(lines) + "\n")
    info, report = ingest_tvsd(dataclasses.replace(tvsd, rfs=str(tmp_path / "rfs.csv")))
    assert read_rfs(tvsd.out).electrode_id.tolist() == [1, 3, 5, 8]  # 2, 7 unreliable; 4, 6 no fit; 9-12 no area
    assert "2 more without an RF fit" in report[0]


BAD = {
    "wrong MUA key": (
        {"train_key": "trainMUA"},
        r"THINGS_normMUA.mat has no 'trainMUA' \(the training responses\); keys present: "
        r"\['SNR', 'reliab', 'test_MUA', 'test_MUA_reps', 'train_MUA'\]",
    ),
    "wrong image-list key": (
        {"train_imgs_key": "imgs"},
        r"things_imgs.mat has no 'imgs' .*\['test_imgs', 'train_imgs'\]",
    ),
    "wrong RF key": ({"rf_x_key": "centrex"}, r"THINGS_RFs.mat \(MATLAB v5\) has no variable 'centrex'.*'all_centrex'"),
    "wrong struct field": ({"imgs_field": "path"}, r"test_imgs is a struct; .*fields present: \['things_path'\]"),
    "no channel left": ({"min_reliability": 0.95}, "no channel is left"),
    "areas": ({"areas": "V1-8"}, "is not AREA:FIRST-LAST"),
    "no RF size": ({"rf_size_key": None}, "give the RF sizes: --rf-size-key KEY"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_tvsd_bad_input_one_line_and_nothing_written(tvsd, tmp_path, case):
    changes, message = BAD[case]
    spec = dataclasses.replace(tvsd, **changes)
    before = tree(tmp_path)
    with pytest.raises(RfganError, match=message) as err:
        ingest_tvsd(spec)
    assert "\n" not in str(err.value)
    assert tree(tmp_path) == before


def test_tvsd_missing_and_duplicate_stimuli(tvsd, tmp_path):
    root = tmp_path / "THINGS" / "object_images"
    for k in (2, 5):
        (root / f"obj{k}" / f"obj{k}_{k:02d}s.jpg").unlink()
    before = tree(tmp_path)
    with pytest.raises(
        DataError, match=r"2 of the 20 training stimuli are not in .*object_images \(first: \[.*obj2_02s.jpg"
    ):
        ingest_tvsd(tvsd)
    assert tree(tmp_path) == before
    write_mat73(
        tmp_path / "dup.mat",
        {
            "train_imgs": Cell(["obj0/obj0_00s.jpg"] * N_TRAIN),
            "test_imgs": Cell([f"obj{k}/obj{k}_{k}s.jpg" for k in range(N_TRAIN, N_TRAIN + N_TEST)]),
        },
    )
    with pytest.raises(DataError, match=r"1 of the training stimuli appear more than once \(first: \[.*obj0_00s.jpg"):
        ingest_tvsd(dataclasses.replace(tvsd, imgs=str(tmp_path / "dup.mat")))


def test_ingest_tvsd_command(tvsd, capsys):
    argv = ["ingest-tvsd", "--mua", tvsd.mua, "--imgs", tvsd.imgs, "--image-root", tvsd.image_root]
    argv += ["--rfs", tvsd.rfs, "--rf-size-key", "all_sd", "--px-per-deg", str(PPD), "--stimulus-px", "200"]
    argv += ["--array-size", str(ARRAY), "--areas", "V1:1,V4:2", "--crop", "160", "--resize", "16", "--quiet"]
    argv += ["--val-fraction", "0.25", "--shard-rows", "6"]
    assert main([*argv, "--out", tvsd.out, "--reliab-key", "reliability"]) == 2
    assert "has no 'reliability' (the electrode reliabilities); keys present" in one_line_error(capsys, "ingest-tvsd")
    assert main([*argv, "--out", tvsd.out]) == 0
    out = capsys.readouterr().out
    assert "12 channels: 2 with mean reliab not above 0.4" in out and f"wrote {tvsd.out}" in out
    assert read_info(tvsd.out).splits == {"train": 15, "val": 5, "test": N_TEST}
