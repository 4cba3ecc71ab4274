"""The lease on a run directory (rfgan.lease): one training at a time, and a dead holder's lease taken over."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time

import pytest
from conftest import one_line_error

from rfgan import lease
from rfgan.cli import main
from rfgan.outputs import host_name


def _contend(run: str, start: float, tried, results) -> None:
    time.sleep(max(0.0, start - time.time()))  # both take the lease at the same moment, if both have started by then
    try:
        with lease.held(run):
            results.put(("held", os.getpid()))
            tried.wait(60)  # held until the other has tried, however late a loaded machine started it
    except lease.RunLocked as e:
        results.put(("refused", str(e)))
        tried.set()


def test_of_two_processes_taking_one_lease_at_once_one_holds_it_and_the_other_is_told_who(tmp_path):
    run = str(tmp_path / "run")
    ctx = multiprocessing.get_context("spawn")
    results, tried = ctx.Queue(), ctx.Event()
    start = time.time() + 2.0
    procs = [ctx.Process(target=_contend, args=(run, start, tried, results)) for _ in range(2)]
    for p in procs:
        p.start()
    got = sorted(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    (held, holder), (refused, message) = got
    assert (held, refused) == ("held", "refused"), got
    assert f"pid {holder} on {host_name()}" in message and "\n" not in message
    assert not (tmp_path / "run" / lease.LEASE_FILE).exists()  # released at the end


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_lease(run, **fields) -> None:
    now = time.time()
    run.mkdir(parents=True, exist_ok=True)
    holder = {"host": host_name(), "pid": os.getpid(), "started": now, "refreshed": now, "token": "t", **fields}
    (run / lease.LEASE_FILE).write_text(json.dumps(holder))


@pytest.mark.parametrize(
    "stale",
    [{"pid": "dead"}, {"host": "otherhost", "refreshed": time.time() - lease.TIMEOUT_S - 60}],
    ids=["pid gone on this host", "old heartbeat from another host"],
)
def test_a_dead_holders_lease_is_taken_over_with_a_note(tmp_path, monkeypatch, capsys, stale):
    monkeypatch.setattr(lease, "SETTLE_S", 0.0)
    run = tmp_path / "run"
    write_lease(run, **{k: dead_pid() if v == "dead" else v for k, v in stale.items()})
    with lease.held(str(run)) as mine:
        assert json.loads((run / lease.LEASE_FILE).read_text())["pid"] == os.getpid() == mine.holder.pid
    assert "note: taking over the lease" in capsys.readouterr().err
    assert not (run / lease.LEASE_FILE).exists()


@pytest.mark.parametrize(
    "live", [{}, {"host": "otherhost", "pid": 1}], ids=["live pid on this host", "fresh heartbeat from another host"]
)
def test_a_live_lease_is_refused_and_left_alone(tmp_path, live):
    run = tmp_path / "run"
    write_lease(run, **live)
    before = (run / lease.LEASE_FILE).read_text()
    with pytest.raises(lease.RunLocked, match="is being written by another training"):
        lease.acquire(str(run))
    assert (run / lease.LEASE_FILE).read_text() == before


def test_the_heartbeat_is_refreshed_while_held(tmp_path):
    run = tmp_path / "run"
    with lease.held(str(run), refresh_s=0.05) as mine:
        first = mine.holder.refreshed
        time.sleep(0.5)
        assert json.loads((run / lease.LEASE_FILE).read_text())["refreshed"] > first
    assert not run.exists()  # the folder it made, empty again, is gone


def test_train_into_a_run_another_training_holds_is_refused_before_anything_is_written(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    write_lease(run)  # this process: alive
    (run / "metrics.csv").write_text("epoch\n1\n")
    args = ["train", "--data", str(tiny_dataset), "--preset", "tiny", "--set", "run.epochs=1", "--out", str(run)]
    for resume in ([], ["--resume"]):
        assert main(args + resume) == 2
        assert f"pid {os.getpid()} on {host_name()}" in one_line_error(capsys, "train")
    assert sorted(p.name for p in run.iterdir()) == [lease.LEASE_FILE, "metrics.csv"]


def test_an_unreadable_lease_is_named_as_such_with_what_to_do(tmp_path):
    """Third audit: a lease.json of garbage was reported as "another training (pid 0 on (unreadable lease) …)"."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "lease.json").write_text("garbage{")
    with pytest.raises(
        lease.RunLocked, match=r"lease.json cannot be read .* delete that file and run the command again"
    ):
        lease.acquire(str(run))
    assert (run / "lease.json").read_text() == "garbage{"
