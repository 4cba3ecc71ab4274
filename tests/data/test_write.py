"""Where a dataset may be written, what --overwrite may replace, and what a failed, killed or interrupted write
leaves: real folders under tmp_path, and for Ctrl-C and kill -9 a real `rfgan synth` process."""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, interrupt_on_shard, interruptible, make_synth, one_line_error, run_interrupted, tree

import rfgan
from rfgan import outputs
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


@pytest.mark.parametrize(
    "metadata, why",
    [
        (None, "it has no metadata.json"),
        ('{"format": "someone-elses"}', "its metadata.json has format 'someone-elses', not 'rfgan-dataset'"),
        ("not json", "its metadata.json cannot be read as rfgan's"),
    ],
)
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


def test_a_full_disk_during_synth_names_the_out_path_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    import errno

    import pyarrow.parquet as pq

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    out = tmp_path / "ds"
    assert main(["synth", "--out", str(out), "--n-train", "8", "--n-val", "4", "--quiet"]) == 2
    err = one_line_error(capsys, "synth")
    assert f"cannot write {out}: No space left on device" in err and "free space" in err
    assert os.listdir(tmp_path) == []


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


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_stale_staging_beside_out_is_removed_on_the_next_write(tmp_path):
    def leftover(name: str, age_s: float = 0.0) -> Path:
        folder = tmp_path / name
        (folder / "train").mkdir(parents=True)
        (folder / "train" / "part-00000.parquet").write_bytes(b"half a shard")
        when = time.time() - age_s
        for p in (folder / "train" / "part-00000.parquet", folder / "train", folder):
            os.utime(p, (when, when))
        return folder

    host, day = outputs.host_name(), outputs.STALE_AFTER_S
    stale = [
        leftover(f".ds.tmp-{host}-{dead_pid()}-0123abcd"),  # its writer is gone
        leftover(f".ds.old-{host}-{dead_pid()}-0123abce"),  # a replaced dataset a killed write had moved aside
        leftover(f".ds.tmp-otherhost-{os.getpid()}-0123abcf", age_s=day + 60),
    ]
    live = [
        leftover(f".ds.tmp-{host}-{os.getpid()}-456789ab"),  # a writer still running here
        leftover(".ds.tmp-456789ac", age_s=day + 60),  # no name rfgan writes (no host, no pid): not rfgan's
        leftover(f".ds.tmp-otherhost-{dead_pid()}-456789ad"),  # another host's ids say nothing here
        leftover(f".other.tmp-{host}-{dead_pid()}-456789ae"),  # another --out's
    ]
    make_synth(tmp_path / "ds")
    assert not any(p.exists() for p in stale)
    assert all((p / "train" / "part-00000.parquet").exists() for p in live)


def rfgan_synth(out: Path, *extra: str) -> subprocess.Popen:
    """A real `rfgan synth` writing one small shard after another for minutes, in its own process group."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(rfgan.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rfgan",
            "synth",
            "--out",
            str(out),
            "--n-train",
            "1000000",
            "--n-val",
            "4",
            "--size",
            "16",
            "--electrodes",
            "6",
            "--arrays",
            "2",
            "--shard-rows",
            "8",
            "--quiet",
            *extra,
        ],
        cwd=out.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=interruptible,
    )


def wait_for_staging(proc: subprocess.Popen, out: Path) -> Path:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        staged = list(out.parent.glob(f".{out.name}.tmp-*/train/part-00001.parquet"))
        if staged:
            return staged[0].parents[1]
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"no shard staged (exit {proc.poll()}): {proc.communicate()[1][-2000:]}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_on_synth_is_one_line_and_leaves_nothing(tmp_path, sig):
    """SIGTERM as Ctrl-C (third audit: it killed synth at once, its staging left behind and no word said)."""
    make_synth(tmp_path / "ds")  # what --overwrite would replace: it must survive the interrupted write
    before = tree(tmp_path)
    proc = rfgan_synth(tmp_path / "ds", "--overwrite")
    wait_for_staging(proc, tmp_path / "ds")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    word, code = ("interrupted", 130) if sig == signal.SIGINT else ("terminated", 143)
    assert proc.returncode == code and err == f"rfgan synth: {word}; nothing was written\n"
    assert tree(tmp_path) == before


def test_a_killed_synth_leaves_staging_that_the_next_write_removes(tmp_path):
    proc = rfgan_synth(tmp_path / "ds")
    staging = wait_for_staging(proc, tmp_path / "ds")
    proc.kill()
    proc.communicate(timeout=60)
    assert staging.exists() and not (tmp_path / "ds").exists()
    make_synth(tmp_path / "ds")
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_interrupted_overwrite_keeps_the_old_dataset(tmp_path, monkeypatch, capsys):
    out = tmp_path / "ds"
    make_synth(out)
    before = tree(tmp_path)
    interrupt_on_shard(monkeypatch, 2)
    assert run_interrupted(["synth", "--out", str(out), "--overwrite", *SMALL]) == 130
    assert capsys.readouterr().err == "rfgan synth: interrupted; nothing was written\n"
    assert tree(tmp_path) == before
    assert read_info(out).splits == {"train": TINY.n_train, "val": TINY.n_val}


def test_any_interrupted_command_is_one_line_and_exit_130(monkeypatch, capsys):
    def stopped(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("rfgan.cli.data.cmd_check", stopped)
    assert run_interrupted(["check"]) == 130
    assert capsys.readouterr().err == "rfgan check: interrupted\n"


def test_what_appears_at_out_while_synth_writes_is_refused_not_replaced(tmp_path):
    """Third audit: a folder a user made at --out while synth ran was deleted by the swap, and of two synths into one
    new --out the second silently replaced the first without --overwrite."""
    out = tmp_path / "ds"

    def user_makes_a_folder(n):
        if not out.exists():
            out.mkdir()
            (out / "thesis.txt").write_text("mine")

    with pytest.raises(DataError, match="not an rfgan dataset"):
        make_synth(out, on_rows=user_makes_a_folder)
    assert os.listdir(out) == ["thesis.txt"] and sorted(os.listdir(tmp_path)) == ["ds"]
    other = tmp_path / "other"

    def another_synth_finishes_first(n):
        if not other.exists():
            make_synth(other, dataclasses.replace(TINY, seed=7))

    with pytest.raises(DataError, match="already exists"):
        make_synth(other, on_rows=another_synth_finishes_first)
    assert read_info(other).source["seed"] == 7
