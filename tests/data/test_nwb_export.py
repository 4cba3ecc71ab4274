"""rfgan export: a dataset written as NWB with pynwb, read back by rfgan's own ingest-nwb to the same responses,
images and RF table."""

import dataclasses
import os

import numpy as np
import pytest
from conftest import TINY, make_synth, one_line_error, tree

pytest.importorskip("pynwb")
from pynwb import NWBHDF5IO, validate  # noqa: E402

from rfgan.cli import main  # noqa: E402
from rfgan.data.format import iter_split, read_info, read_rfs, read_split  # noqa: E402

# Repeats and a test split: every kind of row the export has to carry.
SPEC = dataclasses.replace(TINY, n_train=10, n_val=4, n_test=3, repeats=2, shard_rows=7)


@pytest.fixture(scope="module", params=["raw", "png"])
def dataset(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "ds"
    make_synth(out, SPEC, image_encoding=request.param)
    return out


def rows_in_order(path, splits):
    """The dataset's rows in the export's order: the splits in turn, each as its files hold it."""
    batches = [b for s in splits for b in iter_split(path, s)]
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_export_reads_back_to_the_same_rows_images_and_rfs(dataset, tmp_path, capsys):
    nwb = tmp_path / "ds.nwb"
    assert main(["export", "--data", str(dataset), "--out", str(nwb)]) == 0
    out = capsys.readouterr()
    images = SPEC.n_train + SPEC.n_val + SPEC.n_test
    rows = 2 * images
    assert f"{rows + images}/{rows + images} [" in out.err  # the progress bar had its total: rows, then images
    fov = read_info(dataset).fov_deg
    assert f"--responses responses --fov-deg {fov:g}" in out.out
    back = tmp_path / "back"
    argv = ["ingest-nwb", "--nwb", str(nwb), "--responses", "responses", "--fov-deg", f"{fov:g}", "--quiet"]
    assert main([*argv, "--out", str(back), "--test-fraction", "0.2"]) == 0

    assert read_rfs(back).equals(read_rfs(dataset))
    want = rows_in_order(dataset, ("train", "val", "test"))
    parts = [read_split(back, s) for s in ("train", "val", "test")]
    got = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(got["sample_id"])  # ingest-nwb's sample_id: the presentation's index
    assert got["sample_id"][order].tolist() == list(range(rows))
    np.testing.assert_array_equal(got["responses"][order], want["responses"])  # exactly: float32 in, float32 out
    np.testing.assert_array_equal(got["image"][order], want["image"])
    np.testing.assert_array_equal(got["image_id"][order], want["image_id"])  # synth's ids are 0..K-1
    np.testing.assert_array_equal(got["repeat"][order], want["repeat"])

    assert validate(path=str(nwb)) == []  # pynwb's validator against the NWB schema: what DANDI checks first
    with NWBHDF5IO(nwb, "r") as io:
        f = io.read()
        trials = f.trials.to_dataframe()
        assert trials["split"].tolist() == ["train"] * 20 + ["val"] * 8 + ["test"] * 6
        assert trials["sample_id"].tolist() == want["sample_id"].tolist()
        assert f.stimulus_template["images"].images["image_0"].data.dtype == np.uint8


def test_export_of_one_split(dataset, tmp_path):
    nwb = tmp_path / "val.nwb"
    assert main(["export", "--data", str(dataset), "--out", str(nwb), "--split", "val", "--quiet"]) == 0
    want = rows_in_order(dataset, ("val",))
    with NWBHDF5IO(nwb, "r") as io:
        f = io.read()
        np.testing.assert_array_equal(f.processing["rfgan"]["responses"].data[:], want["responses"])
        images = f.stimulus_template["images"]
        assert len(images.order_of_images.data) == SPEC.n_val
        shown = f.stimulus["presentations"].data[:]
        ordered = [im.data[:] for im in images.order_of_images.data]
        np.testing.assert_array_equal(np.stack([ordered[i] for i in shown]), want["image"])


CASES = ["exists", "exists --overwrite", "a lab's HDF5 --overwrite", "folder", "no such split", "no folder"]


@pytest.mark.parametrize("case", CASES + ["inside the dataset"])
def test_bad_export_is_one_line_exit_2_nothing_written(dataset, tmp_path, capsys, case):
    out = {"folder": tmp_path, "no folder": tmp_path / "nope" / "x.nwb"}.get(case, tmp_path / "x.nwb")
    if case.startswith("exists"):
        out.write_text("someone's file")  # not an NWB file: --overwrite does not replace it either
    if case.startswith("a lab's HDF5"):
        import h5py

        with h5py.File(out, "w") as f:  # an HDF5 file, and an NWB-like one, but not rfgan's export (third audit)
            f.create_dataset("processing/ecephys/lfp", data=np.zeros(3))
    if case == "inside the dataset":
        out = dataset / "share.nwb"  # a later `synth --overwrite` of the dataset would delete it (third audit)
    data = dataset
    if case == "no such split":
        data = tmp_path / "no-test"
        make_synth(data, dataclasses.replace(SPEC, n_test=0))
    before = tree(tmp_path), tree(dataset)
    argv = ["export", "--data", str(data), "--out", str(out), "--quiet"]
    extra = {"no such split": ["--split", "test"]}.get(case, ["--overwrite"] if "--overwrite" in case else [])
    assert main([*argv, *extra]) == 2
    err = one_line_error(capsys, "export")
    assert {
        "exists": "already exists and is not an NWB file that rfgan export wrote",
        "exists --overwrite": "already exists and is not an NWB file that rfgan export wrote",
        "a lab's HDF5 --overwrite": "already exists and is not an NWB file that rfgan export wrote",
        "inside the dataset": f"is inside the dataset {dataset}: an NWB file among the dataset's files",
        "folder": "is a folder; give the NWB file's path",
        "no such split": "has no split(s) ['test']; its splits are ['train', 'val']",
        "no folder": "does not exist",
    }[case] in err
    assert (tree(tmp_path), tree(dataset)) == before


def test_a_failure_while_writing_leaves_no_file(dataset, tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("rfgan.data.nwb_export.decode_table", broken)  # fails mid-write, once pynwb reads the rows
    assert main(["export", "--data", str(dataset), "--out", str(tmp_path / "x.nwb"), "--quiet"]) != 0
    assert "disk full" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_an_earlier_export(dataset, tmp_path):
    nwb = tmp_path / "x.nwb"
    argv = ["export", "--data", str(dataset), "--out", str(nwb), "--quiet"]
    assert main([*argv, "--split", "val"]) == 0
    assert main([*argv, "--split", "train", "--overwrite"]) == 0
    with NWBHDF5IO(nwb, "r") as io:
        assert set(io.read().trials.to_dataframe()["split"]) == {"train"}
    assert sorted(os.listdir(tmp_path)) == ["x.nwb"]
