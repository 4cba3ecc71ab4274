import dataclasses
import hashlib
import io
import json
import os
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY, concat_chunks, make_gan_run, make_synth, one_line_error, record_shards
from PIL import Image

from rfgan.cli import main
from rfgan.data.format import (
    iter_split,
    open_split,
    read_info,
    read_rfs,
    read_split,
    split_files,
    to_tensors,
    verify_content,
)
from rfgan.data.synth import synth_splits
from rfgan.errors import DataError


def test_ray_round_trip_gives_back_what_synth_made(ray_session, tiny_dataset):
    rfs, splits = synth_splits(TINY)
    assert read_rfs(tiny_dataset).equals(rfs)
    for split in ("train", "val"):
        want = concat_chunks(splits[split])
        batches = list(open_split(tiny_dataset, split).iter_torch_batches(batch_size=8))
        got = {k: torch.cat([b[k] for b in batches]).numpy() for k in ("sample_id", "responses", "image")}
        order = np.argsort(got["sample_id"])
        np.testing.assert_array_equal(got["sample_id"][order], want["sample_id"])
        np.testing.assert_array_equal(got["responses"][order], want["responses"])
        np.testing.assert_array_equal(got["image"][order], want["image"])
        assert got["responses"].dtype == np.float32 and got["image"].dtype == np.uint8


def test_metadata_and_response_stats(tiny_dataset):
    info = read_info(tiny_dataset)
    train = read_split(tiny_dataset, "train")
    assert info.splits == {"train": TINY.n_train, "val": TINY.n_val}
    assert info.image_size == (32, 32) and info.channels == 3 and info.n_electrodes == 12
    np.testing.assert_allclose(info.response_mean, train["responses"].mean(0), rtol=1e-5)
    np.testing.assert_allclose(info.response_std, train["responses"].std(0), rtol=1e-4)


def test_to_tensors():
    batch = {"responses": np.ones((2, 5), np.float32), "image": np.full((2, 4, 6, 3), 255, np.uint8)}
    r, im = to_tensors(batch)
    assert r.shape == (2, 5) and im.shape == (2, 3, 4, 6) and im.dtype == torch.float32
    assert torch.all(im == 1.0)


@pytest.fixture
def copy(tiny_dataset, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(tiny_dataset, out)
    return out


def rewrite_first_shard(path, change, record=False):
    """The first training shard rewritten with `change`; with `record`, metadata.json made to list it as written
    (rows, bytes, hash): a dataset whose writer wrote it so, for tests of what readers do past the hash."""
    shard = split_files(path, "train")[0]
    pq.write_table(change(pq.read_table(shard)), shard)
    if record:
        meta = json.loads((path / "metadata.json").read_text())
        data = open(shard, "rb").read()
        entry = meta["shards"]["train"][0]
        assert shard.endswith(entry["file"])
        entry.update(rows=pq.read_metadata(shard).num_rows, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        (path / "metadata.json").write_text(json.dumps(meta))
    return shard


def record_rfs(path):
    """metadata.json made to list rfs.csv's hash as it is now (a dataset written with that RF table)."""
    meta = json.loads((path / "metadata.json").read_text())
    meta["rfs_sha256"] = hashlib.sha256((path / "rfs.csv").read_bytes()).hexdigest()
    (path / "metadata.json").write_text(json.dumps(meta))


def test_wrong_column_type_is_named(copy):
    def widen(t):
        col = t.column("responses").combine_chunks()
        as_list = pa.ListArray.from_arrays(
            pa.array(np.arange(0, len(t) * 12 + 1, 12, dtype=np.int32)), col.flatten().cast(pa.float64())
        )
        return t.set_column(t.schema.get_field_index("responses"), "responses", as_list)

    shard = rewrite_first_shard(copy, widen)
    with pytest.raises(DataError, match=r"column 'responses' has type list<.*double>.*12 float32") as err:
        read_split(copy, "train")
    assert shard in str(err.value)


def test_missing_column_is_named(copy):
    rewrite_first_shard(copy, lambda t: t.drop_columns(["image"]))
    with pytest.raises(DataError, match="column 'image' is missing"):
        open_split(copy, "train")


def test_wrong_image_length_is_refused(copy):
    meta = json.loads((copy / "metadata.json").read_text())
    meta["image_height"] = 16
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="'image'.*16x32x3 uint8"):
        read_split(copy, "val")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(schema_version=99), "schema_version 99 was written by another rfgan version"),
        (
            lambda m: m.update(schema_version=1),
            "schema_version 1 was written by an rfgan from before its first release",
        ),
        (
            lambda m: m.update(schema_version=2),
            "schema_version 2 was written by an rfgan that recorded no content hashes .* re-create the dataset",
        ),
        (lambda m: m.update(format="other"), "'format'"),
        (lambda m: m.pop("fov_deg"), "fov_deg"),
        (lambda m: m.update(channels=4), "channels is 4"),
    ],
)
def test_bad_metadata(copy, edit, message):
    meta = json.loads((copy / "metadata.json").read_text())
    edit(meta)
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=message):
        read_info(copy)


def test_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="rfgan synth"):
        read_info(tmp_path)


def test_rf_table_must_match_electrode_count(copy):
    lines = (copy / "rfs.csv").read_text().splitlines()
    (copy / "rfs.csv").write_text("\n".join(lines[:-1]) + "\n")
    record_rfs(copy)
    with pytest.raises(DataError, match="11 electrodes but metadata.json says n_electrodes=12"):
        read_rfs(copy)


def last_line(stderr: str) -> str:
    """rfgan's error: the last line of stderr (Ray Data logs its progress there before it), and one line only."""
    return stderr.strip().splitlines()[-1]


def test_nan_responses_are_refused_when_read(ray_session, copy, capsys):
    def poison(t):
        r = t.column("responses").combine_chunks().flatten().to_numpy().copy()
        r[5] = np.nan
        arr = pa.FixedSizeListArray.from_arrays(pa.array(r, pa.float32()), 12)
        return t.set_column(t.schema.get_field_index("responses"), "responses", arr)

    rewrite_first_shard(copy, poison, record=True)
    with pytest.raises(DataError, match=r"NaN or infinite in sample\(s\) \[0\]"):
        read_split(copy, "train")
    with pytest.raises(Exception, match="NaN or infinite"):
        open_split(copy, "train").materialize()
    # `rfgan check` finds it inside Ray Data's wrapper and shows rfgan's own message: one line, exit 2.
    capsys.readouterr()
    assert main(["check", "--data", str(copy)]) == 2
    err = last_line(capsys.readouterr().err)
    assert err.startswith("rfgan check: error:") and "NaN or infinite in sample(s) [0]" in err
    assert "UserCodeException" not in err and "ray::" not in err


def test_check_of_a_dataset_with_a_missing_shard_says_so(ray_session, copy, capsys, monkeypatch):
    first = split_files(copy, "train")[0]
    os.remove(first)  # 16 of the 40 training rows
    assert main(["check", "--data", str(copy)]) == 2
    err = last_line(capsys.readouterr().err)
    assert (
        err.startswith("rfgan check: error:") and f"{first} is missing" in err and f"16 of {TINY.n_train} rows" in err
    )
    # Before Ray reads anything; the count of rows read stays as a second line of defence.
    monkeypatch.setattr("rfgan.data.format._check_shards", lambda *args: None)
    monkeypatch.setattr("rfgan.data.format._check_shard_facts", lambda *args: None)  # the statistics would tell
    assert main(["check", "--data", str(copy)]) == 2
    err = last_line(capsys.readouterr().err)
    assert (
        err.startswith("rfgan check: error:")
        and f"read {TINY.n_train - 16} rows but metadata.json says {TINY.n_train}" in err
    )


def test_metadata_lists_every_shard_with_its_rows(tiny_dataset):
    meta = json.loads((tiny_dataset / "metadata.json").read_text())
    assert (meta["schema_version"], meta["image_encoding"]) == (3, "raw")
    assert {split: [(f["file"], f["rows"]) for f in files] for split, files in meta["shards"].items()} == {
        split: [(f"{split}/part-{k:05d}.parquet", n) for k, n in enumerate(rows)]
        for split, rows in (("train", [16, 16, 8]), ("val", [12]))
    }
    for split, files in meta["shards"].items():
        on_disk = sorted(p.relative_to(tiny_dataset).as_posix() for p in (tiny_dataset / split).iterdir())
        assert on_disk == [f["file"] for f in files]
        assert [pq.read_metadata(tiny_dataset / f["file"]).num_rows for f in files] == [f["rows"] for f in files]
        for f in files:
            data = (tiny_dataset / f["file"]).read_bytes()
            assert (f["bytes"], f["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert meta["rfs_sha256"] == hashlib.sha256((tiny_dataset / "rfs.csv").read_bytes()).hexdigest()


def test_a_missing_shard_is_refused_before_reading(copy):
    shard = copy / "train" / "part-00001.parquet"
    shard.unlink()
    for read in (read_split, open_split, split_files):
        with pytest.raises(DataError, match=rf"{shard} is missing: .*16 of 40 rows.*re-create the dataset"):
            read(copy, "train")
    read_split(copy, "val")  # the other split is whole


def test_an_extra_shard_is_refused(copy):
    extra = copy / "train" / "part-00000 (copy).parquet"
    shutil.copy(copy / "train" / "part-00000.parquet", extra)
    with pytest.raises(
        DataError,
        match=r"part-00000 \(copy\).parquet is not one of the 'train' shards listed in "
        "metadata.json.*remove it, or re-create the dataset",
    ):
        read_split(copy, "train")


def test_a_shard_with_fewer_rows_is_refused(copy):
    shard = rewrite_first_shard(copy, lambda t: t.slice(0, 5))
    with pytest.raises(DataError, match=f"{shard} holds 5 rows but metadata.json lists 16.*re-create the dataset"):
        read_split(copy, "train")


def test_a_dataset_without_its_shard_list_is_refused(copy):
    meta = json.loads((copy / "metadata.json").read_text())
    del meta["shards"]
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"missing key\(s\) \['shards'\]"):
        read_info(copy)


def test_shards_that_contradict_the_splits_are_refused(copy):
    meta = json.loads((copy / "metadata.json").read_text())
    meta["shards"]["val"][0]["rows"] = 11
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"'shards' lists .*'val': 11.* but 'splits' says"):
        read_info(copy)


def test_train_refuses_a_dataset_with_a_missing_shard_before_ray_starts(copy, tmp_path, capsys):
    # In the fast lane: starting Ray here would fail the test (conftest's lane guard).
    shard = copy / "train" / "part-00000.parquet"
    shard.unlink()
    code = main(
        [
            "train",
            "--data",
            str(copy),
            "--preset",
            "tiny",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and f"{shard} is missing" in err
    assert not list((tmp_path / "run").glob("checkpoint*"))


def test_write_refuses_existing_output_and_leaves_it_alone(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists"):
        make_synth(out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # Not a dataset, so --overwrite leaves it alone too.
    with pytest.raises(DataError, match="already exists and is not an rfgan dataset"):
        make_synth(out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    # A dataset is replaced.
    (out / "keep.txt").unlink()
    make_synth(out, dataclasses.replace(TINY, n_train=20))
    make_synth(out, overwrite=True)
    assert read_info(out).splits["train"] == TINY.n_train
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary directory left behind


@pytest.fixture(scope="module")
def png_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("png") / "tiny-png"
    make_synth(out, image_encoding="png")
    return out


@pytest.mark.parametrize("gray", [False, True])
def test_png_images_read_back_identical_to_raw(tiny_dataset, png_dataset, tmp_path, gray):
    raw, png = tiny_dataset, png_dataset
    if gray:
        spec = dataclasses.replace(TINY, color=False)
        raw, png = tmp_path / "raw", tmp_path / "png"
        make_synth(raw, spec)
        make_synth(png, spec, image_encoding="png")
    meta = json.loads((png / "metadata.json").read_text())
    assert meta["schema_version"] == 3 and meta["image_encoding"] == "png"
    assert json.loads((raw / "metadata.json").read_text())["image_encoding"] == "raw"
    for split in ("train", "val"):
        want, got = read_split(raw, split), read_split(png, split)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
        batches = list(iter_split(png, split, batch_rows=7))
        np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches]), want["image"])
    on_disk = {p: sum(f.stat().st_size for f in (p / "train").iterdir()) for p in (raw, png)}
    assert on_disk[png] < on_disk[raw]


def rgba_png(data: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGBA").save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    "damage, why",
    [(lambda data: data[:40], "cut short, or not a PNG"), (rgba_png, "its mode is RGBA, not RGB")],
    ids=["cut short", "RGBA"],
)
def test_a_damaged_png_is_one_line_naming_the_sample(png_dataset, tmp_path, damage, why):
    copy = tmp_path / "copy"
    shutil.copytree(png_dataset, copy)

    def change(t):
        images = t.column("image").to_pylist()
        images[2] = damage(images[2])
        return t.set_column(t.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))

    rewrite_first_shard(copy, change, record=True)
    sample = read_split(png_dataset, "train")["sample_id"][2]
    with pytest.raises(DataError, match=rf"sample {sample}: its image is not a 32x32 PNG of 3 channel.*({why})") as err:
        read_split(copy, "train")
    assert "\n" not in str(err.value)


def test_a_png_column_in_a_raw_dataset_is_refused(png_dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(png_dataset, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    meta.update(image_encoding="raw")  # metadata that says raw pixels over a PNG column
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"column 'image' has type binary, expected fixed_size_list"):
        read_split(copy, "train")
    meta.update(image_encoding="jpeg")
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"image_encoding 'jpeg' is not one of \['raw', 'png'\]"):
        read_info(copy)


def test_ray_reads_png_images_decoded(ray_session, tiny_dataset, png_dataset):
    want = read_split(tiny_dataset, "val")
    rows = open_split(png_dataset, "val").take_all()
    got = {r["sample_id"]: r["image"] for r in rows}
    for sample_id, image in zip(want["sample_id"], want["image"]):
        np.testing.assert_array_equal(got[sample_id], image)


def edit_metadata(path, **changes):
    meta = json.loads((path / "metadata.json").read_text())
    meta.update(changes)
    (path / "metadata.json").write_text(json.dumps(meta))


# metadata.json edits that keep every byte count (H·W·C, E) as it is, so that only the shards' own record of what
# they hold (format.SHARD_FACTS) can tell the lie; the tiny dataset is 32x32x3 with 12 electrodes.
SAME_BYTES_LIES = {
    "32x32 as 16x64": (
        {"image_height": 16, "image_width": 64},
        r"metadata.json says images are 16x64x3 .* but .*part-00000.parquet holds 32x32x3 .* set image_height 32, "
        r"image_width 32, channels 3",
    ),
    "RGB as gray 32x96": ({"channels": 1, "image_width": 96}, r"says images are 32x96x1 .* holds 32x32x3"),
    "response_mean": ({"response_mean": [0.0] * 12}, r"response_mean of electrode 0 is 0, but the training shards"),
    "response_std": ({"response_std": [1.0] * 12}, r"response_std of electrode 0 is 1, but the training shards"),
}


@pytest.mark.parametrize("case", sorted(SAME_BYTES_LIES))
def test_metadata_that_lies_but_keeps_the_byte_count_is_refused(copy, tmp_path, case, capsys):
    changes, message = SAME_BYTES_LIES[case]
    edit_metadata(copy, **changes)
    with pytest.raises(DataError, match=message):
        read_split(copy, "train")
    # rfgan check and rfgan baseline refuse it before Ray or a fit starts, with one line.
    for command in (["check", "--data", str(copy)], ["baseline", "--data", str(copy), "--out", str(tmp_path / "r")]):
        assert main([*command, "--no-feature-metrics"] if command[0] == "baseline" else command) == 2
        assert "metadata.json" in one_line_error(capsys, command[0])
    assert not (tmp_path / "r").exists()


def test_a_png_of_another_size_is_refused_where_the_shards_recorded_nothing(png_dataset, tmp_path):
    # A dataset whose footers hold no record (an rfgan before SHARD_FACTS): the PNG's own header tells the lie.
    copy = tmp_path / "copy"
    shutil.copytree(png_dataset, copy)
    for split in ("train", "val"):
        for shard in split_files(copy, split):
            pq.write_table(pq.read_table(shard).replace_schema_metadata(None), shard)
    record_shards(copy)
    edit_metadata(copy, image_height=16, image_width=64)
    with pytest.raises(DataError, match=r"its image is not a 64x16 PNG of 3 channel\(s\) \(ValueError: it is 32x32\)"):
        read_split(copy, "val")


BAD_METADATA_VALUES = {
    "fov_deg 0": ({"fov_deg": 0}, r"fov_deg is 0; it is the visual angle the image width spans"),
    "fov_deg -10": ({"fov_deg": -10}, r"fov_deg is -10; it is the visual angle"),
    "fov_deg text": ({"fov_deg": "wide"}, r"fov_deg is 'wide', not a finite number"),
    "non-numeric height": ({"image_height": "32"}, r"image_height is '32', not a whole number >= 1"),
    "splits as a list": ({"splits": [40, 12]}, r"'splits' is a list, not a mapping of split to rows"),
    "response_std all 0": ({"response_std": [0.0] * 12}, r"response_std is 0 for electrode\(s\) \[0, 1, 2"),
    "response_mean null": ({"response_mean": None}, r"response_mean is NoneType, not a list of numbers"),
}


@pytest.mark.parametrize("case", sorted(BAD_METADATA_VALUES))
def test_metadata_values_of_the_wrong_type_or_range_are_one_line(copy, case, capsys):
    changes, message = BAD_METADATA_VALUES[case]
    edit_metadata(copy, **changes)
    with pytest.raises(DataError, match=message):
        read_info(copy)
    assert main(["check", "--data", str(copy)]) == 2
    assert "metadata.json" in one_line_error(capsys, "check")


@pytest.mark.parametrize(
    "text, message",
    [
        ("[1, 2]", r"metadata.json: holds a JSON list, not an object"),
        ('{"format": "rfgan-dataset", "format": "x"}', r"the key 'format' is given twice"),
        ('{"fov_deg": NaN}', r"cannot parse it as JSON \(NaN is not a JSON number\)"),
        ("\ufeff{}".encode("utf-16"), r"cannot read it as UTF-8 text \(it looks like UTF-16\)"),
    ],
    ids=["top-level list", "duplicate key", "bare NaN", "UTF-16"],
)
def test_metadata_json_that_is_not_one_object_of_unique_keys_is_one_line(copy, text, message):
    (copy / "metadata.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DataError, match=message):
        read_info(copy)


def test_an_edited_field_of_view_is_refused(copy, capsys):
    edit_metadata(copy, fov_deg=5.0)  # the tiny dataset spans 10°: every RF map would be drawn at twice its size
    with pytest.raises(
        DataError,
        match=r"says fov_deg 5 but .*part-00000.parquet was written for images spanning 10°: .* set fov_deg 10.0",
    ):
        read_split(copy, "val")


def flip_a_bit_in_an_image_page(shard) -> None:
    """One bit of the first training shard's image column chunk flipped in place, footer intact: the first offset
    past the middle of the chunk that Parquet, told nothing of checksums, decodes without a word into other pixels
    (zstd frames carry no checksum of their own)."""
    raw = shard.read_bytes()
    chunk = pq.read_metadata(shard).row_group(0).column(4)
    assert chunk.path_in_schema == "image.list.element"
    want = pq.read_table(shard).column("image").combine_chunks().flatten().to_numpy()
    start = chunk.data_page_offset + chunk.total_compressed_size // 2
    for offset in range(start, chunk.data_page_offset + chunk.total_compressed_size):
        damaged = bytearray(raw)
        damaged[offset] ^= 0x01
        try:
            got = pq.read_table(pa.BufferReader(bytes(damaged))).column("image").combine_chunks().flatten()
        except OSError:
            continue
        if (got.to_numpy() != want).any():
            shard.write_bytes(bytes(damaged))
            return
    pytest.fail("no bit of the image pages decodes silently into other pixels")


def test_damaged_bytes_in_a_data_page_are_refused_by_every_reader_and_by_check(copy, capsys):
    shard = copy / "train" / "part-00000.parquet"
    flip_a_bit_in_an_image_page(shard)
    # The footer is intact and Parquet alone reads other pixels; the page checksum written tells.
    assert pq.read_metadata(shard).num_rows == 16
    with pytest.raises(OSError, match="CRC checksum verification failed"):
        pq.read_table(shard, page_checksum_verification=True)
    message = rf"{shard}: its content is not what was written \(SHA-256 .*copy the dataset again"
    with pytest.raises(DataError, match=message):
        read_split(copy, "train")
    with pytest.raises(DataError, match=message):
        next(iter_split(copy, "train"))
    with pytest.raises(DataError, match=message):
        verify_content(copy)
    read_split(copy, "val")  # the other split is whole
    # `rfgan check` hashes every shard before Ray starts (starting it would fail this test: conftest's lane guard).
    assert main(["check", "--data", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rfgan check: error:") and err.count("\n") == 1 and str(shard) in err


def test_damaged_bytes_in_a_data_page_are_refused_as_ray_data_streams_them(ray_session, copy, tmp_path, capsys):
    """A training split too large for the driver to read is streamed by Ray Data, whose read tasks hash the shards
    they read: the damage reaches the user as rfgan's one line naming the file, through Ray's wrappers, and a run is
    not restarted for it."""
    shard = copy / "train" / "part-00000.parquet"
    flip_a_bit_in_an_image_page(shard)
    message = rf"{shard}: its content is not what was written \(SHA-256 .*copy the dataset again"
    with pytest.raises(Exception, match=message):
        open_split(copy, "train").materialize()
    assert open_split(copy, "val").count() == TINY.n_val  # the other split is whole
    run = tmp_path / "run"
    sets = ["--set", "perf.driver_read_mb=0", "--set", "run.max_failures=2", "--set", "run.cpus_per_worker=1"]
    args = ["train", "--data", str(copy), "--preset", "tiny", "--workers", "1", "--epochs", "1", *sets]
    capsys.readouterr()
    assert main([*args, "--out", str(run)]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("rfgan train: training failed after") and re.search(message, last), err
    assert "restarting" not in err  # bad data is not a lost worker


def test_a_shard_swapped_for_another_of_as_many_rows_is_refused_from_the_listing(copy):
    shard = rewrite_first_shard(copy, lambda t: t.set_column(2, "repeat", pa.array(np.ones(len(t), np.int32))))
    with pytest.raises(DataError, match=rf"{shard} has \d+ bytes but metadata.json lists \d+; it was altered"):
        split_files(copy, "train")


def test_a_resorted_rf_table_is_refused_by_check_train_and_eval(copy, tmp_path, capsys):
    run = make_gan_run(tmp_path / "run", copy)
    header, *rows = (copy / "rfs.csv").read_text().splitlines()
    (copy / "rfs.csv").write_text("\n".join([header, *sorted(rows, key=lambda r: float(r.split(",")[1]))]) + "\n")
    # Still a valid RF table with every electrode: only its recorded hash tells that columns now get other RFs.
    message = r"rfs.csv is not the RF table this dataset was written with .*restore the file, or re-create"
    with pytest.raises(DataError, match=message):
        read_rfs(copy)
    for command in (
        ["check", "--data", str(copy)],
        ["train", "--data", str(copy), "--preset", "tiny", "--batch-size", "8", "--out", str(tmp_path / "new")],
        ["eval", "--data", str(copy), "--run", str(run), "--no-feature-metrics"],
    ):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"rfgan {command[0]}: error:") and err.count("\n") == 1, err
        assert f"{copy}/rfs.csv is not the RF table" in err
    assert not (tmp_path / "new").exists() and not (run / "eval_val.json").exists()


def test_split_names_with_a_path_in_them_are_refused_in_metadata_and_flags(copy, tmp_path, capsys):
    """A split named '../evil' in metadata.json made `check` and `eval` read a folder outside the dataset, and `eval`
    write RUN/eval_../evil.json."""
    outside = tmp_path / "evil"
    shutil.move(copy / "val", outside)
    meta = json.loads((copy / "metadata.json").read_text())
    meta["splits"]["../evil"] = meta["splits"].pop("val")
    shards = meta["shards"].pop("val")
    meta["shards"]["../evil"] = [{**s, "file": f"../evil/{s['file'].split('/')[-1]}"} for s in shards]
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"split '\.\./evil' is not a split name: .*train, val or test"):
        read_info(copy)
    assert main(["check", "--data", str(copy)]) == 2
    assert "is not a split name" in one_line_error(capsys, "check")
    for command in (["eval", "--run", str(tmp_path), "--data", str(copy)], ["report", "--run", str(tmp_path)]):
        with pytest.raises(SystemExit) as stop:
            main([*command, "--split", "../evil"])
        assert stop.value.code == 2 and "'../evil' is not a split name" in capsys.readouterr().err


def test_a_split_that_is_a_file_is_named(copy, capsys):
    """Was: `[Errno 20] Cannot list directory …`."""
    shutil.rmtree(copy / "train")
    (copy / "train").write_text("hi")
    assert main(["check", "--data", str(copy)]) == 2
    assert f"{copy}/train is a file; a split is a folder of Parquet shards" in one_line_error(capsys, "check")
