"""The one rule for what a command writes (rfgan.outputs): its own earlier output is replaced whole, anything else
is refused, and nothing half-written or stale is left; for local paths and URIs alike."""

from __future__ import annotations

import os

import pytest

from rfgan import outputs
from rfgan.errors import DataError

PAGE = outputs.Kind("a page", lambda path: outputs.head(path).startswith(b"page"))
FOLDER = outputs.Kind("a folder of parts", lambda path: "part" in os.listdir(path.removeprefix("file://")), folder=True)


@pytest.mark.parametrize("uri", [False, True], ids=["path", "file:// URI"])
def test_a_file_replaces_only_its_own_kind(tmp_path, uri):
    name = (lambda p: f"file://{p}") if uri else str
    own, other = tmp_path / "own.html", tmp_path / "metadata.json"
    own.write_bytes(b"page 1")
    other.write_bytes(b'{"format": "rfgan-dataset"}')
    outputs.write_bytes(name(own), b"page 2", PAGE)
    assert own.read_bytes() == b"page 2"
    with pytest.raises(DataError, match=r"metadata.json already exists and is not a page"):
        outputs.write_bytes(name(other), b"page 3", PAGE)
    assert other.read_bytes() == b'{"format": "rfgan-dataset"}'
    assert sorted(os.listdir(tmp_path)) == ["metadata.json", "own.html"]  # no staging left


@pytest.mark.parametrize("uri", [False, True], ids=["path", "file:// URI"])
def test_a_folder_is_replaced_whole_and_a_failed_fill_keeps_the_old_one(tmp_path, uri):
    out = tmp_path / "out"
    target = f"file://{out}" if uri else str(out)

    def fill(names):
        return lambda folder: [(folder / n).write_text(n) for n in names]

    outputs.write_folder(target, FOLDER, fill(["part", "a", "b"]))
    outputs.write_folder(target, FOLDER, fill(["part", "c"]))
    assert sorted(os.listdir(out)) == ["c", "part"]  # nothing of the first call

    def broken(folder):
        (folder / "part").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        outputs.write_folder(target, FOLDER, broken)
    assert sorted(os.listdir(out)) == ["c", "part"] and os.listdir(tmp_path) == ["out"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(DataError, match="already exists and is not a folder of parts"):
        outputs.write_folder(str(tmp_path / "mine"), FOLDER, fill(["part"]))
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]


def test_a_killed_writers_staging_goes_with_the_next_write(tmp_path):
    dead = tmp_path / f".page.html.tmp-{outputs.host_name()}-999999999-0123abcd.png"
    live = tmp_path / f".page.html.tmp-{outputs.host_name()}-{os.getpid()}-0123abce"
    dead.write_bytes(b"half")
    live.write_bytes(b"half")
    outputs.write_bytes(str(tmp_path / "page.html"), b"page", PAGE)
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, "page.html"])


@pytest.mark.parametrize("folder", [False, True], ids=["file", "folder"])
def test_what_appears_at_the_target_while_it_is_written_is_refused_not_replaced(tmp_path, folder):
    """The target is checked again just before the swap: a user's file that appeared there meanwhile survives (third
    audit: a folder made while `rfgan synth` ran was deleted)."""
    target = tmp_path / ("out" if folder else "page.html")

    def fill(path):
        if folder:
            (path / "part").write_text("new")
            target.mkdir()
            (target / "thesis.txt").write_text("mine")
        else:
            path.write_bytes(b"page new")
            target.write_bytes(b"my own notes")

    with pytest.raises(DataError, match="already exists and is not"):
        if folder:
            outputs.write_folder(str(target), FOLDER, fill)
        else:
            outputs.write_file(str(target), PAGE, fill)
    if folder:
        assert os.listdir(target) == ["thesis.txt"]
    else:
        assert target.read_bytes() == b"my own notes"
    assert os.listdir(tmp_path) == [target.name]  # no staging left


def test_a_file_target_ending_in_a_slash_is_refused(tmp_path):
    """Third audit: `export --out expdir/` and `report --out rdir/` wrote a file named expdir / rdir."""
    with pytest.raises(DataError, match="ends in '/', a folder; give the path of the file"):
        outputs.write_bytes(f"{tmp_path}/page/", b"page", PAGE)
    assert os.listdir(tmp_path) == []
