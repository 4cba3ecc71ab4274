"""Where a dataset may be written, what --overwrite may replace, and what a failed write leaves: real folders under
tmp_path."""

import dataclasses
import os

import pytest
from conftest import TINY, make_synth, one_line_error, tree

from rfgan.cli import main
from rfgan.data.format import read_info, read_split
from rfgan.errors import DataError

SMALL = ["--n-train", "16", "--n-val", "4", "--electrodes", "6", "--arrays", "2", "--size", "16", "--quiet"]


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_out_dot_refuses_the_current_folder_and_keeps_its_files(tmp_path, monkeypatch, capsys, overwrite):
    here = tmp_path / "s"
    here.mkdir()
    (here / "keep").write_text("mine")
    monkeypatch.chdir(here)
    before = tree(tmp_path)
    assert main(["synth", "--out", ".", *overwrite, *SMALL]) == 2
    err = one_line_error(capsys, "synth")
    assert "is the current folder" in err and "--out ./dataset" in err and "Errno" not in err
    assert tree(tmp_path) == before


def test_overwrite_refuses_the_current_folder_or_a_parent_of_it_even_if_a_dataset(tmp_path, monkeypatch, capsys):
    ds = tmp_path / "ds"
    make_synth(ds)
    before = tree(tmp_path)
    monkeypatch.chdir(ds)
    assert main(["synth", "--out", ".", "--overwrite", *SMALL]) == 2
    assert "is the current folder" in one_line_error(capsys, "synth")
    monkeypatch.chdir(ds / "train")
    assert main(["synth", "--out", "..", "--overwrite", *SMALL]) == 2
    assert f"is a parent of the current folder ({ds / 'train'})" in one_line_error(capsys, "synth")
    assert tree(tmp_path) == before


def test_overwrite_refuses_a_home_folder_even_if_a_dataset(tmp_path, monkeypatch):
    home = tmp_path / "home"
    make_synth(home)
    before = tree(tmp_path)
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(DataError, match="is a home folder"):
        make_synth(home, overwrite=True)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("metadata, why", [
    (None, "it has no metadata.json"),
    ('{"format": "someone-elses"}', "its metadata.json has format 'someone-elses', not 'rfgan-dataset'"),
    ("not json", "its metadata.json cannot be read as rfgan's"),
])
def test_overwrite_replaces_only_an_rfgan_dataset(tmp_path, capsys, metadata, why):
    folder = tmp_path / "E"
    folder.mkdir()
    (folder / "precious.txt").write_text("x")
    if metadata is not None:
        (folder / "metadata.json").write_text(metadata)
    before = tree(tmp_path)
    assert main(["synth", "--out", str(folder), "--overwrite", *SMALL]) == 2
    err = one_line_error(capsys, "synth")
    assert f"{folder} already exists and is not an rfgan dataset ({why})" in err
    assert "--overwrite replaces only an rfgan dataset" in err
    assert tree(tmp_path) == before


def test_overwrite_of_a_uri_replaces_only_an_rfgan_dataset(tmp_path, capsys):
    folder = tmp_path / "bucket" / "E"
    folder.mkdir(parents=True)
    (folder / "precious.txt").write_text("x")
    before = tree(tmp_path)
    assert main(["synth", "--out", folder.as_uri(), "--overwrite", *SMALL]) == 2
    err = one_line_error(capsys, "synth")
    assert "is not an rfgan dataset (it has no metadata.json, which a dataset whose upload was cut off" in err
    assert tree(tmp_path) == before


def test_an_out_through_a_regular_file_names_the_file(tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    assert main(["synth", "--out", str(tmp_path / "a-file" / "sub" / "ds"), *SMALL]) == 2
    err = one_line_error(capsys, "synth")
    assert f"{tmp_path / 'a-file'}, a folder on its path, is a file, not a folder" in err and "Errno" not in err
    assert main(["synth", "--out", str(tmp_path / "a-file"), "--overwrite", *SMALL]) == 2
    assert f"cannot write {tmp_path / 'a-file'}: it is a file, not a folder" in one_line_error(capsys, "synth")
    assert (tmp_path / "a-file").read_text() == "not a folder" and sorted(os.listdir(tmp_path)) == ["a-file"]


def test_an_unwritable_parent_is_reported_by_the_out_path(tmp_path, capsys):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        (parent / "probe").mkdir()
    except PermissionError:
        pass
    else:  # root, unless its CAP_DAC_OVERRIDE is dropped (setpriv --bounding-set=-dac_override)
        parent.chmod(0o755)
        pytest.skip("this process may write into a read-only folder")
    try:
        assert main(["synth", "--out", str(parent / "ds"), *SMALL]) == 2
    finally:
        parent.chmod(0o755)
    err = one_line_error(capsys, "synth")
    assert f"cannot write {parent / 'ds'}: cannot create anything in {parent} (Permission denied)" in err
    assert ".tmp-" not in err and list(parent.iterdir()) == []


def test_overwrite_swaps_in_the_new_dataset_and_leaves_nothing_beside_it(tmp_path):
    out = tmp_path / "ds"
    make_synth(out)
    first = read_split(out, "val")["responses"]
    info = make_synth(out, dataclasses.replace(TINY, seed=4), overwrite=True)
    assert read_info(out) == info and info.source["seed"] == 4
    assert not (read_split(out, "val")["responses"] == first).all()
    assert sorted(os.listdir(tmp_path)) == ["ds"]
