"""Responses and images from HDF5, MATLAB v7.3 and v5, and .npz files, read a shard of rows at a time."""

import dataclasses
import tracemalloc
from contextlib import ExitStack

import h5py
import numpy as np
import pytest
import scipy.io
from matfiles import Cell, Struct, write_mat73
from test_ingest import SIZE, E, lab  # noqa: F401 (lab: a fixture)

from rfgan.data.arrays import open_array, read_strings, response_rows, split_ref
from rfgan.data.format import read_split
from rfgan.data.ingest import IngestSpec, ingest
from rfgan.errors import DataError, UsageError


@pytest.fixture
def arrays(lab):  # noqa: F811 (the fixture imported above)
    """test_ingest's lab arrays (30 rows showing 10 images): a spec for the .npy files, the responses, the images."""
    return lab, np.load(lab.responses), np.load(lab.images)


def _rows(out):
    parts = [read_split(out, s) for s in ("train", "val")]
    order = np.argsort(np.concatenate([p["sample_id"] for p in parts]))
    return (
        np.concatenate([p["responses"] for p in parts])[order],
        np.concatenate([p["image"] for p in parts])[order][..., 0],
    )


def test_matlab_v73_electrodes_by_stimuli_is_transposed_by_its_length(arrays, tmp_path):
    spec, responses, images = arrays
    # As MATLAB holds them: responses E × N (electrodes first), so h5py sees (N, E) with MATLAB_class.
    write_mat73(tmp_path / "rec.mat", {"train_MUA": responses.T.astype(np.float64), "other": np.zeros(3)})
    with h5py.File(tmp_path / "images.h5", "w") as f:
        f.create_dataset("/stimuli/pixels", data=images, chunks=(4, SIZE, SIZE))
    ingest(
        dataclasses.replace(
            spec, responses=f"{tmp_path}/rec.mat:train_MUA", images=f"{tmp_path}/images.h5:/stimuli/pixels"
        )
    )
    got_r, got_i = _rows(spec.out)
    np.testing.assert_allclose(got_r, responses, rtol=1e-6)
    np.testing.assert_array_equal(got_i, images)


def test_plain_hdf5_either_orientation_and_npz(arrays, tmp_path):
    spec, responses, _ = arrays
    with h5py.File(tmp_path / "rec.h5", "w") as f:
        f.create_dataset("/a/by_row", data=responses)
        f.create_dataset("/a/by_column", data=responses.T)
    np.savez(tmp_path / "rec.npz", resp=responses.T)
    for k, ref in enumerate(
        (f"{tmp_path}/rec.h5:/a/by_row", f"{tmp_path}/rec.h5:/a/by_column", f"{tmp_path}/rec.npz:resp")
    ):
        out = str(tmp_path / f"out{k}")
        ingest(dataclasses.replace(spec, responses=ref, out=out))
        np.testing.assert_array_equal(_rows(out)[0], responses)


def test_square_responses_need_the_electrode_axis(arrays, tmp_path):
    spec, responses, images = arrays
    square = responses[:E]
    np.save(tmp_path / "sq.npy", square.T)  # electrodes first
    np.save(tmp_path / "i5.npy", images[:E])
    spec = dataclasses.replace(
        spec, responses=str(tmp_path / "sq.npy"), images=str(tmp_path / "i5.npy"), val_fraction=0.2
    )
    with pytest.raises(UsageError, match=r"both axes could be the 6 electrodes; say which with --electrode-axis"):
        ingest(spec)
    ingest(dataclasses.replace(spec, electrode_axis="first"))
    np.testing.assert_array_equal(_rows(spec.out)[0], square)


def test_wrong_key_lists_the_keys_present_and_writes_nothing(arrays, tmp_path):
    spec, responses, _ = arrays
    write_mat73(tmp_path / "rec.mat", {"train_MUA": responses.T, "reliab": np.ones((E, 2))})
    with h5py.File(tmp_path / "rec.h5", "w") as f:
        f.create_dataset("/g/resp", data=responses)
    np.savez(tmp_path / "rec.npz", resp=responses)
    cases = {
        f"{tmp_path}/rec.mat:trainMUA": r"rec.mat has no 'trainMUA' \(the responses\); keys present: \['reliab', 'train_MUA'\]",  # noqa: E501
        f"{tmp_path}/rec.h5:/g/nope": r"rec.h5 has no '/g/nope' .*keys present: \['/g/resp'\]",
        f"{tmp_path}/rec.npz:nope": r"rec.npz has no array 'nope' .*keys present: \['resp'\]",
        f"{tmp_path}/rec.mat": r"name the array as .*rec.mat:KEY \(keys present: \['reliab', 'train_MUA'\]\)",
    }
    for ref, message in cases.items():
        with pytest.raises(DataError, match=message) as err:
            ingest(dataclasses.replace(spec, responses=ref))
        assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_matlab_v5_is_read_with_scipy(arrays, tmp_path):
    spec, responses, _ = arrays
    scipy.io.savemat(tmp_path / "v5.mat", {"train_MUA": responses.T})
    ingest(dataclasses.replace(spec, responses=f"{tmp_path}/v5.mat:train_MUA"))
    np.testing.assert_array_equal(_rows(spec.out)[0], responses)
    with pytest.raises(
        DataError, match=r"v5.mat \(MATLAB v5\) has no variable 'x' .*variables present: \['train_MUA'\]"
    ):
        ingest(dataclasses.replace(spec, responses=f"{tmp_path}/v5.mat:x", out=str(tmp_path / "o2")))


def test_matlab_text_cells_structs_and_char_matrices(tmp_path):
    paths = ["aardvark/aardvark_01b.jpg", "zebra/zebra_12s.jpg", "café/café_01.jpg"]
    write_mat73(
        tmp_path / "imgs.mat",
        {"train_imgs": Cell(paths), "test_imgs": Struct(things_path=Cell(paths[:2]))},
    )
    assert read_strings(f"{tmp_path}/imgs.mat:train_imgs", "stimulus paths") == paths
    assert read_strings(f"{tmp_path}/imgs.mat:test_imgs", "stimulus paths", field="things_path") == paths[:2]
    with pytest.raises(DataError, match=r"is a struct; .*fields present: \['things_path'\]"):
        read_strings(f"{tmp_path}/imgs.mat:test_imgs", "stimulus paths", field="path")
    scipy.io.savemat(
        tmp_path / "v5.mat",
        {
            "c": np.array(paths, dtype=object),
            "s": {"things_path": np.array(paths, dtype=object)},
            "m": np.array(["ab", "cd"]),
        },
    )
    assert read_strings(f"{tmp_path}/v5.mat:c", "paths") == paths
    assert read_strings(f"{tmp_path}/v5.mat:s", "paths", field="things_path") == paths
    assert read_strings(f"{tmp_path}/v5.mat:m", "paths") == ["ab", "cd"]


def test_references_split_at_the_key():
    assert split_ref("/d/x.mat:train_MUA") == ("/d/x.mat", "train_MUA")
    assert split_ref("/d/x.h5:/g/k") == ("/d/x.h5", "/g/k")
    assert split_ref("/d.mat/x.npy") == ("/d.mat/x.npy", None)


def test_rows_are_read_a_shard_at_a_time(tmp_path):
    """The reader never holds the response array whole: its peak allocation stays near one shard's worth."""
    n, e, shard = 20_000, 400, 250
    rng = np.random.default_rng(0)
    full = rng.normal(size=(e, n)).astype(np.float32)  # 32 MB, electrodes first as MATLAB stores TVSD
    write_mat73(tmp_path / "big.mat", {"train_MUA": full})
    np.save(tmp_path / "i.npy", rng.integers(0, 256, (n, 8, 8), dtype=np.uint8))
    (tmp_path / "rfs.csv").write_text(
        "electrode_id,x_deg,y_deg,sigma_deg\n" + "".join(f"{i},0,0,1\n" for i in range(e))
    )
    del full
    spec = IngestSpec(
        responses=f"{tmp_path}/big.mat:train_MUA",
        images=str(tmp_path / "i.npy"),
        rfs=str(tmp_path / "rfs.csv"),
        fov_deg=4.0,
        out=str(tmp_path / "out"),
        image_ids=None,
        shard_rows=shard,
    )
    np.save(tmp_path / "ids.npy", np.arange(n))  # ids given: no hashing of images, only responses are measured
    spec = dataclasses.replace(spec, image_ids=str(tmp_path / "ids.npy"))
    tracemalloc.start()
    try:
        info, _ = ingest(spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(info.splits.values()) == n
    whole = n * e * 4
    assert peak < whole / 5, f"peak {peak / 1e6:.1f} MB vs the whole array {whole / 1e6:.1f} MB"


@pytest.mark.parametrize("matlab", [False, True])
def test_three_axis_responses_flatten_their_stimulus_axes_into_rows(tmp_path, matlab):
    """[electrode × stimulus × repeat], from a C-order .npy or as MATLAB stores it: row k is (stimulus, repeat) in
    stored order, and any rows can be read in any order."""
    a = np.random.default_rng(0).normal(size=(E, 4, 3)).astype(np.float32)
    if matlab:
        write_mat73(tmp_path / "a.mat", {"reps": a})
        ref = f"{tmp_path}/a.mat:reps"
    else:
        np.save(tmp_path / "a.npy", a)
        ref = str(tmp_path / "a.npy")
    with ExitStack() as stack:
        rows = response_rows(open_array(ref, "responses", stack), E)
        assert len(rows) == 12
        # MATLAB stores it column-major: the repeat varies slowest in its rows; a C-order .npy, the stimulus.
        order = [(s, r) for r in range(3) for s in range(4)] if matlab else [(s, r) for s in range(4) for r in range(3)]
        stored = [a[:, s, r] for s, r in order]
        asked = np.array([11, 0, 5, 6, 7, 2])
        np.testing.assert_array_equal(rows.read(asked), np.stack(stored)[asked])
        np.testing.assert_array_equal(rows.select(np.array([3, 0])).read(asked), np.stack(stored)[asked][:, [3, 0]])
