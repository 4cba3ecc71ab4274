import dataclasses
import io
import os
import re

import numpy as np
import pytest
from conftest import interrupt_on_shard, make_synth, one_line_error, run_interrupted, tree
from PIL import Image

from rfgan.cli import main
from rfgan.data.format import read_info, read_rfs, read_split
from rfgan.data.ingest import IngestSpec, ingest
from rfgan.errors import DataError

E, N_IMAGES, REPEATS, SIZE = 6, 10, 3, 16
RF_CSV = "electrode_id,x_deg,y_deg,sigma_deg,area\n" + "".join(
    f"{10 + i},{-2 + 0.8 * i},{1 - 0.4 * i},{0.5 + 0.1 * i},{'V1' if i < 4 else 'V4'}\n" for i in range(E)
)


@pytest.fixture
def lab(tmp_path):
    """A lab's arrays: 10 distinct images shown 3 times each, in shuffled order."""
    rng = np.random.default_rng(0)
    distinct = rng.integers(0, 256, (N_IMAGES, SIZE, SIZE), dtype=np.uint8)
    order = rng.permutation(np.repeat(np.arange(N_IMAGES), REPEATS))
    np.save(tmp_path / "images.npy", distinct[order])
    np.save(tmp_path / "responses.npy", rng.normal(size=(len(order), E)).astype(np.float32))
    np.save(tmp_path / "order.npy", order)
    (tmp_path / "rfs.csv").write_text(RF_CSV)
    return IngestSpec(
        responses=str(tmp_path / "responses.npy"),
        images=str(tmp_path / "images.npy"),
        rfs=str(tmp_path / "rfs.csv"),
        fov_deg=8.0,
        out=str(tmp_path / "out"),
        val_fraction=0.2,
        shard_rows=7,
    )


def test_ingest_round_trip_keeps_rows_and_splits_by_image(lab, tmp_path):
    info, dropped = ingest(lab)
    assert dropped == 0 and info.channels == 1 and info.image_size == (SIZE, SIZE) and info.n_electrodes == E
    responses, images = np.load(lab.responses), np.load(lab.images)
    order = np.load(tmp_path / "order.npy")
    parts = [read_split(lab.out, s) for s in ("train", "val")]
    assert len(parts[1]["sample_id"]) == 2 * REPEATS  # 20% of 10 images, all their repeats
    for part in parts:
        rows = part["sample_id"]  # the row index in the lab's arrays
        np.testing.assert_array_equal(part["responses"], responses[rows])
        np.testing.assert_array_equal(part["image"][..., 0], images[rows])
        # image_id groups exactly the rows that show the same stimulus
        for iid in np.unique(part["image_id"]):
            assert len(set(order[rows[part["image_id"] == iid]])) == 1
        assert sorted(np.bincount(part["repeat"]).tolist()) == [len(rows) // REPEATS] * REPEATS
    assert not set(order[parts[0]["sample_id"]]) & set(order[parts[1]["sample_id"]])
    assert read_rfs(lab.out).area.tolist() == ["V1"] * 4 + ["V4"] * 2
    assert read_info(lab.out).source["kind"] == "ingest"


def test_float_colour_images_and_explicit_image_ids(lab, tmp_path):
    rng = np.random.default_rng(1)
    n = N_IMAGES * REPEATS
    np.save(tmp_path / "rgb.npy", rng.uniform(0, 1, (n, SIZE, SIZE, 3)).astype(np.float32))
    np.save(tmp_path / "ids.npy", np.arange(n) % 5)
    info, _ = ingest(dataclasses.replace(lab, images=str(tmp_path / "rgb.npy"), image_ids=str(tmp_path / "ids.npy")))
    assert info.channels == 3
    val = read_split(lab.out, "val")
    assert len(val["sample_id"]) == n // 5  # one of 5 image ids, every row that has it
    expected = (np.load(tmp_path / "rgb.npy")[val["sample_id"]] * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(val["image"], expected)


def test_folder_of_images_with_index(lab, tmp_path):
    folder = tmp_path / "stimuli"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for k in range(4):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / f"s{k}.png")
    names = [f"s{k % 4}.png" for k in range(12)]
    (tmp_path / "index.csv").write_text("filename\n" + "\n".join(names) + "\n")
    np.save(tmp_path / "r12.npy", rng.normal(size=(12, E)).astype(np.float32))
    spec = dataclasses.replace(
        lab,
        responses=str(tmp_path / "r12.npy"),
        images=str(folder),
        image_index=str(tmp_path / "index.csv"),
        val_fraction=0.25,
    )
    info, _ = ingest(spec)
    assert info.channels == 3 and info.splits == {"train": 9, "val": 3}
    val = read_split(lab.out, "val")
    want = np.asarray(Image.open(folder / names[val["sample_id"][0]]))
    np.testing.assert_array_equal(val["image"][0], want)


def test_nan_rows_dropped_on_request(lab):
    r = np.load(lab.responses)
    r[[3, 17], 2] = np.nan
    r[5, 0] = np.inf
    np.save(lab.responses, r)
    with pytest.raises(DataError, match=r"3 row\(s\) hold NaN or infinite responses \(rows \[3, 5, 17\]\).*--drop"):
        ingest(lab)
    info, dropped = ingest(dataclasses.replace(lab, drop_bad_rows=True))
    assert dropped == 3 and sum(info.splits.values()) == N_IMAGES * REPEATS - 3


def _write(path, text):
    path.write_text(text)
    return str(path)


BAD_INPUTS = {
    "electrode count": (
        lambda s, d: dataclasses.replace(s, rfs=_write(d / "r5.csv", "\n".join(RF_CSV.splitlines()[:-1]) + "\n")),
        r"has shape \(30, 6\) but .*r5.csv has 5 electrodes: neither its first nor its last axis matches",
    ),
    "row count": (
        lambda s, d: (
            np.save(d / "r.npy", np.zeros((29, E), np.float32)),
            dataclasses.replace(s, responses=str(d / "r.npy")),
        )[1],
        "29 rows but .* 30 images",
    ),
    "nan": (
        lambda s, d: (
            np.save(d / "r.npy", np.full((30, E), np.nan, np.float32)),
            dataclasses.replace(s, responses=str(d / "r.npy")),
        )[1],
        "NaN or infinite",
    ),
    "non-numeric rf": (
        lambda s, d: dataclasses.replace(s, rfs=_write(d / "x.csv", RF_CSV.replace(",0.5,", ",wide,"))),
        "'sigma_deg' holds 'wide'",
    ),
    "missing rf column": (
        lambda s, d: dataclasses.replace(s, rfs=_write(d / "x.csv", RF_CSV.replace("y_deg", "y"))),
        r"lacks column\(s\) \['y_deg'\]",
    ),
    "sigma <= 0": (
        lambda s, d: dataclasses.replace(s, rfs=_write(d / "x.csv", RF_CSV.replace(",0.5,", ",-0.5,"))),
        "sigma_deg must be > 0.*electrode.*10",
    ),
    "rf outside": (
        lambda s, d: dataclasses.replace(s, rfs=_write(d / "x.csv", RF_CSV.replace("10,-2.0,", "10,-20.0,"))),
        r"1 RF\(s\) lie entirely outside .*electrode_id \[10\]",
    ),
    "unreadable responses": (
        lambda s, d: dataclasses.replace(s, responses=_write(d / "bad.npy", "not numpy")),
        "bad.npy: cannot read the responses: it is not a .npy array file",
    ),
    "object array responses": (
        lambda s, d: (
            np.save(d / "o.npy", np.array([{"a": 1}] * 30), allow_pickle=True),
            dataclasses.replace(s, responses=str(d / "o.npy")),
        )[1],
        "o.npy: cannot read the responses: it holds Python objects",
    ),
    "npz images": (
        lambda s, d: (
            np.savez(d / "i.npz", images=np.zeros((30, SIZE, SIZE), np.uint8)),
            dataclasses.replace(s, images=str(d / "i.npz")),
        )[1],
        "i.npz: cannot read the images: it is a .npz archive",
    ),
    "empty input": (
        lambda s, d: (
            np.save(d / "r.npy", np.zeros((0, E), np.float32)),
            np.save(d / "i.npy", np.zeros((0, SIZE, SIZE), np.uint8)),
            dataclasses.replace(s, responses=str(d / "r.npy"), images=str(d / "i.npy")),
        )[2],
        r"r.npy: the input is empty \(responses \(0, 6\), no rows\)",
    ),
    "3-d responses": (
        lambda s, d: (np.save(d / "r.npy", np.zeros((30, E, 2))), dataclasses.replace(s, responses=str(d / "r.npy")))[
            1
        ],
        "expected a numeric",
    ),
    "float images out of range": (
        lambda s, d: (
            np.save(d / "f.npy", np.full((30, SIZE, SIZE), 2.0)),
            dataclasses.replace(s, images=str(d / "f.npy")),
        )[1],
        r"float images must be finite and in \[0, 1\]",
    ),
    "images shape": (
        lambda s, d: (
            np.save(d / "f.npy", np.zeros((30, SIZE, SIZE, 4), np.uint8)),
            dataclasses.replace(s, images=str(d / "f.npy")),
        )[1],
        r"expected \(N, H, W\)",
    ),
    "fov": (lambda s, d: dataclasses.replace(s, fov_deg=0.0), "--fov-deg must be > 0"),
    "complex responses": (
        lambda s, d: (
            np.save(d / "c.npy", np.ones((30, E), np.complex64) * (1 + 2j)),
            dataclasses.replace(s, responses=str(d / "c.npy")),
        )[1],
        r"c.npy: responses are complex \(complex64\); give real values",
    ),
    "constant responses": (
        lambda s, d: (
            np.save(d / "k.npy", np.full((30, E), 0.5, np.float32)),
            dataclasses.replace(s, responses=str(d / "k.npy")),
        )[1],
        r"k.npy: every electrode gives the same response to every row \(constant responses, e.g. all 0.5\)",
    ),
    "too few images": (lambda s, d: dataclasses.replace(s, val_fraction=0.95), "too few"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_and_writes_nothing(lab, tmp_path, case):
    make_bad, message = BAD_INPUTS[case]
    spec = make_bad(lab, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(DataError, match=message) as err:
        ingest(spec)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary directory
    assert "\n" not in str(err.value) and "allow_pickle" not in str(err.value)


def test_mixed_image_sizes_and_unreadable_image(lab, tmp_path):
    folder = tmp_path / "stimuli"
    folder.mkdir()
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(folder / "a.png")
    Image.fromarray(np.zeros((SIZE, SIZE + 2), np.uint8)).save(folder / "b.png")
    np.save(tmp_path / "r2.npy", np.zeros((2, E), np.float32))
    spec = dataclasses.replace(lab, responses=str(tmp_path / "r2.npy"), images=str(folder))
    with pytest.raises(DataError, match=r"a.png is 16x16 but .*b.png is 18x16"):
        ingest(spec)
    (folder / "b.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="b.png: cannot read this image"):
        ingest(spec)
    assert not (tmp_path / "out").exists()


def test_existing_output_is_not_touched(lab, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.txt").write_text("precious")
    with pytest.raises(DataError, match="already exists"):
        ingest(lab)
    assert (tmp_path / "out" / "results.txt").read_text() == "precious"


def test_a_truncated_image_file_is_named(lab, tmp_path):
    folder = tmp_path / "stimuli"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)).save(folder / f"s{k}.png")
    whole = (folder / "s1.png").read_bytes()
    (folder / "s1.png").write_bytes(whole[: len(whole) * 2 // 3])  # the header intact, the pixels cut off
    np.save(tmp_path / "r3.npy", np.zeros((3, E), np.float32))
    spec = dataclasses.replace(lab, responses=str(tmp_path / "r3.npy"), images=str(folder), val_fraction=0.34)
    before = tree(tmp_path)
    with pytest.raises(DataError, match=r"s1.png: cannot read this image \(image file is truncated") as err:
        ingest(spec)
    assert str(folder / "s1.png") in str(err.value) and "\n" not in str(err.value)
    assert tree(tmp_path) == before


def ingest_argv(spec: IngestSpec, out: str) -> list[str]:
    return [
        "ingest",
        "--responses",
        spec.responses,
        "--images",
        spec.images,
        "--rfs",
        spec.rfs,
        "--fov-deg",
        str(spec.fov_deg),
        "--val-fraction",
        str(spec.val_fraction),
        "--shard-rows",
        str(spec.shard_rows),
        "--out",
        out,
        "--quiet",
    ]


def test_ingest_out_dot_overwrite_refuses_the_current_folder(lab, tmp_path, monkeypatch, capsys):
    here = tmp_path / "s"
    here.mkdir()
    (here / "keep").write_text("mine")
    monkeypatch.chdir(here)
    before = tree(tmp_path)
    assert main(ingest_argv(lab, ".") + ["--overwrite"]) == 2
    assert "is the current folder" in one_line_error(capsys, "ingest")
    assert tree(tmp_path) == before


def test_ingest_overwrite_leaves_a_folder_that_is_not_a_dataset_alone(lab, tmp_path, capsys):
    folder = tmp_path / "E"
    folder.mkdir()
    (folder / "precious.txt").write_text("x")
    before = tree(tmp_path)
    assert main(ingest_argv(lab, str(folder)) + ["--overwrite"]) == 2
    assert f"{folder} already exists and is not an rfgan dataset (it has no metadata.json)" in one_line_error(
        capsys, "ingest"
    )
    assert tree(tmp_path) == before
    make_synth(tmp_path / "D")  # a dataset is replaced
    assert main(ingest_argv(lab, str(tmp_path / "D")) + ["--overwrite"]) == 0
    assert read_info(tmp_path / "D").source["kind"] == "ingest"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def test_ctrl_c_on_ingest_is_one_line_exit_130_and_leaves_nothing(lab, tmp_path, monkeypatch, capsys):
    before = tree(tmp_path)
    interrupt_on_shard(monkeypatch, 2)
    assert run_interrupted(ingest_argv(lab, lab.out)) == 130
    assert capsys.readouterr().err == "rfgan ingest: interrupted; nothing was written\n"
    assert tree(tmp_path) == before


def test_ingest_image_encoding_png_reads_back_as_raw(lab, tmp_path, capsys):
    assert main(ingest_argv(lab, str(tmp_path / "raw"))) == 0
    assert main([*ingest_argv(lab, str(tmp_path / "png")), "--image-encoding", "png"]) == 0
    assert read_info(tmp_path / "png").image_encoding == "png" and read_info(tmp_path / "raw").image_encoding == "raw"
    for split in ("train", "val"):
        raw, png = read_split(tmp_path / "raw", split), read_split(tmp_path / "png", split)
        for key in raw:
            np.testing.assert_array_equal(png[key], raw[key])


def test_crop_and_resize_keep_the_originals_window_of_array_and_folder_images(lab, tmp_path):
    # RF_GANsynth's stimuli keep 27.5–67.5 % of each axis: of 40 px, pixels 11..26; stored at 16 px, that is them
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (N_IMAGES * REPEATS, 40, 40, 3), dtype=np.uint8)
    np.save(tmp_path / "big.npy", images)
    folder = tmp_path / "stimuli"
    folder.mkdir()
    for k in range(len(images)):
        Image.fromarray(images[k]).save(folder / f"s{k:02d}.png")
    for source in (tmp_path / "big.npy", folder):
        out = tmp_path / f"out-{source.name}"
        spec = dataclasses.replace(lab, images=str(source), out=str(out), crop=(0.275, 0.675), resize=16)
        info, _ = ingest(spec)
        assert info.image_size == (16, 16) and info.channels == 3
        train = read_split(out, "train")
        np.testing.assert_array_equal(train["image"], images[train["sample_id"]][:, 11:27, 11:27])
        assert read_info(out).source["crop"] == [0.275, 0.675] and read_info(out).source["resize"] == 16


def test_crop_flags_of_rfgan_ingest(lab, tmp_path, capsys):
    flags = ["ingest", "--responses", lab.responses, "--images", lab.images, "--rfs", lab.rfs, "--fov-deg", "8"]
    assert main([*flags, "--out", str(tmp_path / "a"), "--crop", "25:75", "--resize", "8", "--quiet"]) == 0
    assert read_info(tmp_path / "a").image_size == (8, 8)
    assert main([*flags, "--out", str(tmp_path / "b"), "--crop", "25:75"]) == 2
    assert "--crop needs --resize" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*flags, "--out", str(tmp_path / "c"), "--crop", "25"])
    # Was: echoed as fractions, (0.5, 0.1); a --resize of 100000 a traceback from pyarrow, one of 1 a dataset that
    # `rfgan baseline` failed on with a traceback.
    for more, message in (
        (["--crop", "50:10", "--resize", "16"], "got 50:10."),
        (["--resize", "100000"], "--resize must be between 8 and 4096 pixels, got 100000."),
        (["--resize", "1"], "--resize must be between 8 and 4096 pixels, got 1."),
        # Third audit: a crop of about one pixel, scaled up to near-constant images, was accepted.
        (["--crop", "0:1", "--resize", "16"], "--crop 0:1 keeps 0.16 pixels of the 16-pixel side"),
        (["--seed", "-3"], "--seed must be >= 0, got -3."),  # was NumPy's traceback
    ):
        assert main([*flags, "--out", str(tmp_path / "d"), *more]) == 2
        assert message in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "bcd")


def test_images_smaller_than_the_nets_take_are_refused(lab, tmp_path, capsys):
    np.save(tmp_path / "tiny.npy", np.zeros((N_IMAGES * REPEATS, 4, 4), np.uint8))
    with pytest.raises(DataError, match=r"tiny.npy: the images are 4x4 pixels; .* 8 on each side: give --resize"):
        ingest(dataclasses.replace(lab, images=str(tmp_path / "tiny.npy")))
    assert not os.path.exists(lab.out)


def image_folder(tmp_path, images: dict[str, Image.Image], n_rows: int = 30) -> tuple[str, str]:
    """A folder of real image files and an index CSV showing them in turn, one per response row."""
    folder = tmp_path / "stimuli"
    folder.mkdir(exist_ok=True)
    for name, im in images.items():
        im.save(folder / name)
    names = list(images)
    (tmp_path / "index.csv").write_text("filename\n" + "".join(f"{names[k % len(names)]}\n" for k in range(n_rows)))
    return str(folder), str(tmp_path / "index.csv")


def test_16_bit_pngs_are_scaled_to_8_bit_not_clipped(lab, tmp_path):
    # A 16-bit grayscale PNG of the full range: PIL's convert("L") would store 255 for 255/256 of its pixels.
    ramp = np.linspace(0, 65535, SIZE * SIZE).round().astype(np.uint16).reshape(SIZE, SIZE)
    images = {f"g{k}.png": Image.fromarray(np.roll(ramp, k, axis=1)) for k in range(N_IMAGES)}
    assert Image.open(io.BytesIO(_png(images["g0.png"]))).mode == "I;16"
    folder, index = image_folder(tmp_path, images)
    ingest(dataclasses.replace(lab, images=folder, image_index=index))
    rows = read_split(lab.out, "train")
    first = rows["image"][rows["sample_id"] == rows["sample_id"].min()][0, ..., 0]
    want = np.roll(ramp, int(rows["sample_id"].min()) % N_IMAGES, axis=1) / 257
    np.testing.assert_allclose(first, want, atol=0.5)
    assert (rows["image"] == 255).mean() < 0.01


def _png(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


def test_exif_orientation_is_applied(lab, tmp_path):
    # A camera's JPEG stored sideways with orientation 6 (turn 90° clockwise to view): wide on disk, tall as seen.
    rng = np.random.default_rng(4)
    seen = rng.integers(0, 256, (SIZE, SIZE // 2), dtype=np.uint8).repeat(2, 0).repeat(2, 1)  # (32, 16), tall
    stored = Image.fromarray(np.rot90(seen)).convert("RGB")  # (16, 32), as the camera wrote it
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "stimuli").mkdir()
    stored.save(tmp_path / "stimuli" / "photo.jpg", exif=exif, quality=100)
    (tmp_path / "index.csv").write_text("filename\n" + "photo.jpg\n" * 30)
    folder, index = str(tmp_path / "stimuli"), str(tmp_path / "index.csv")
    np.save(tmp_path / "ids.npy", np.arange(30) % N_IMAGES)
    info, _ = ingest(dataclasses.replace(lab, images=folder, image_index=index, image_ids=str(tmp_path / "ids.npy")))
    assert info.image_size == (2 * SIZE, SIZE)  # (H, W) as the photo is seen
    luma = read_split(lab.out, "train")["image"][0].mean(-1)
    assert np.abs(luma - seen).mean() < 3  # JPEG's loss only; sideways it would not even have this shape


@pytest.mark.parametrize("name", ["../secret/photo.png", "ABSOLUTE"])
def test_an_image_index_path_out_of_the_image_folder_is_refused(lab, tmp_path, name):
    secret = tmp_path / "secret"
    secret.mkdir()
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(secret / "photo.png")
    name = str(secret / "photo.png") if name == "ABSOLUTE" else name
    folder, index = image_folder(tmp_path, {"a.png": Image.fromarray(np.ones((SIZE, SIZE), np.uint8))})
    (tmp_path / "index.csv").write_text("filename\n" + "a.png\n" * 29 + f"{name}\n")
    with pytest.raises(
        DataError, match=rf"index.csv: row 31 names '{re.escape(name)}', which is not inside the image "
    ):
        ingest(dataclasses.replace(lab, images=folder, image_index=index))
    assert not os.path.exists(lab.out)


def test_a_dead_electrode_is_kept_named_and_said(lab, tmp_path, capsys):
    r = np.load(lab.responses)
    r[:, 2] = 0.25
    np.save(lab.responses, r)
    assert main(ingest_argv(lab, lab.out)) == 0
    info = read_info(lab.out)
    assert info.source["constant_electrodes"] == [12] and info.response_std[2] == 1.0
    assert "note: electrode(s) [12] (1 of 6) give the same response to every row" in capsys.readouterr().err


def test_shard_rows_0_is_one_line(lab, tmp_path, capsys):
    argv = ingest_argv(lab, lab.out)
    argv[argv.index("--shard-rows") + 1] = "0"
    assert main(argv) == 2
    assert "--shard-rows must be >= 1" in one_line_error(capsys, "ingest")
    assert not os.path.exists(lab.out)


@pytest.mark.parametrize("scale, word", [(1e300, "beyond"), (1e-300, "below")])
def test_responses_that_float32_cannot_hold_are_named_so(lab, tmp_path, scale, word):
    """Was: 1e300 called NaN or infinite (after a NumPy overflow warning), 1e-300 called constant."""
    responses = np.load(lab.responses).astype(np.float64) * scale
    np.save(tmp_path / "scaled.npy", responses)
    with pytest.raises(DataError, match=rf"scaled.npy: responses reach .*, {word} what float32 .* scale them"):
        ingest(dataclasses.replace(lab, responses=str(tmp_path / "scaled.npy")))
    assert not os.path.exists(lab.out)
