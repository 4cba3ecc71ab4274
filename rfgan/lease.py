"""The lease on a run directory that a training writes: one training at a time per run.

The driver of `rfgan train` writes RUN/lease.json (its host, pid, start time and a heartbeat) before anything else,
refreshes the heartbeat every REFRESH_S while it runs and deletes the file when it ends. A second training of the
same run (new or --resume) finds a live lease and is refused, naming its holder. A lease outlives a holder that died
without deleting it (kill -9, a lost node), so it is taken over, with a note, once it is stale: its pid is gone on
this host, or, from another host, its heartbeat is older than TIMEOUT_S (hosts' clocks are assumed to agree to well
within that).

Taking a lease: locally the file is created exclusively (O_EXCL), so of two drivers starting at once one wins.
Object stores have no exclusive create, and a stale lease is replaced by a plain write: there each taker writes its
lease, waits SETTLE_S and reads it back; only the one whose lease is there goes on (two takers whose read and write
straddle each other by more than SETTLE_S could both go on). Two containers with one host name but separate process
namespaces cannot tell each other's pids: one could take the other's live lease over, as a dead one's.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import pyarrow.fs as pafs

from rfgan import storage
from rfgan.errors import UsageError
from rfgan.outputs import host_name, process_alive

LEASE_FILE = "lease.json"
REFRESH_S = 30.0
TIMEOUT_S = 300.0  # a heartbeat this old, from another host, is a dead holder's
UNREADABLE = "unreadable"  # the token of a lease file that cannot be read
SETTLE_S = 1.0


class RunLocked(UsageError):
    """Another training holds the run directory's lease."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: float  # time.time() of the holder's start
    refreshed: float  # of its last heartbeat
    token: str  # this lease's own id: whose lease a file holds

    def stale(self, now: float | None = None) -> str | None:
        """Why this lease's holder is gone, or None while it may be alive."""
        if self.host == host_name():
            return None if process_alive(self.pid) else f"process {self.pid} is gone"
        age = (now or time.time()) - self.refreshed
        return f"no heartbeat for {age:.0f} s" if age > TIMEOUT_S else None

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host}, training since {since}"


def lease_path(run: str) -> str:
    return storage.join(run, LEASE_FILE)


def read_holder(run: str) -> Holder | None:
    """The lease in `run`, None if there is none. One that cannot be read (not written by this rfgan) counts as an
    unknown host's whose heartbeat is the file's time."""
    fs, path = storage.filesystem(lease_path(run))
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return None
    try:
        return Holder(**json.loads(storage.read_bytes(lease_path(run))))
    except FileNotFoundError:
        return None  # released since we looked
    except (ValueError, TypeError):
        when = info.mtime.timestamp() if info.mtime else 0.0
        return Holder(host="(unreadable lease)", pid=0, started=when, refreshed=when, token=UNREADABLE)


def _write_whole(run: str, data: bytes) -> None:
    """Replace the lease file so that a reader never sees part of it: locally through a file renamed over it; an
    object store writes an object whole."""
    path = lease_path(run)
    if storage.is_remote(path):
        storage.write_bytes(path, data)
        return
    path = storage.absolute(path)
    os.replace(_aside(path, data), path)


def _aside(path: str, data: bytes) -> str:
    """`data` written whole to a new file beside the local `path`, to be put in its place by one call; its name."""
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    return tmp


class Lease:
    """A held lease; refresh() its heartbeat, release() it at the end."""

    def __init__(self, run: str, holder: Holder):
        self.run, self.holder = run, holder
        self.lost = False  # another training took it over (this one's heartbeat stopped for TIMEOUT_S)

    def refresh(self) -> None:
        now = read_holder(self.run)
        if now is None or now.token != self.holder.token:
            self.lost = True
            return
        self.holder = Holder(**{**asdict(self.holder), "refreshed": time.time()})
        _write_whole(self.run, _encode(self.holder))

    def release(self) -> None:
        """Delete the lease if it is still this one's."""
        now = read_holder(self.run)
        if now is not None and now.token == self.holder.token:
            fs, path = storage.filesystem(lease_path(self.run))
            fs.delete_file(path)


def _encode(holder: Holder) -> bytes:
    return (json.dumps(asdict(holder), indent=1) + "\n").encode()


def acquire(run: str) -> Lease:
    """Take the lease of the run directory `run` (a path or URI), or raise RunLocked naming its live holder. A stale
    lease is taken over with a note on stderr."""
    now = time.time()
    mine = Holder(host_name(), os.getpid(), now, now, uuid.uuid4().hex)
    held = read_holder(run)
    if held is not None:
        why = held.stale(now)
        if why is None:
            raise _locked(run, held)
        print(f"note: taking over the lease {lease_path(run)} of a training that is gone ({why}).", file=sys.stderr)
    if storage.is_remote(run) or held is not None:
        _write_whole(run, _encode(mine))
        time.sleep(SETTLE_S)
    else:
        _create_exclusively(lease_path(run), _encode(mine))
    now_held = read_holder(run)
    if now_held is None or now_held.token != mine.token:
        raise _locked(run, now_held or mine)
    return Lease(run, mine)


def _create_exclusively(path: str, data: bytes) -> None:
    """Create the local file `path` whole, unless it exists: written aside, then hard-linked into place (a link
    fails on an existing name, and appears with all its content)."""
    path = storage.absolute(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _aside(path, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another driver's, made since we looked: the read-back refuses
    finally:
        os.unlink(tmp)


def _locked(run: str, holder: Holder) -> RunLocked:
    if holder.token == UNREADABLE:
        # Leases are written whole (renamed or put in one request): an unreadable one was edited or damaged by
        # hand, and may still be someone's. Say so, rather than name a pid 0 on no host.
        return RunLocked(
            f"{lease_path(run)} cannot be read (it is not a lease this rfgan wrote); it is taken as held until it "
            f"is {TIMEOUT_S:.0f} s old. If no training writes {run}, delete that file and run the command again."
        )
    return RunLocked(
        f"{run} is being written by another training ({holder.describe()}; lease {lease_path(run)}); wait for it "
        "to end, or choose another --out. A lease whose holder died is taken over by the next training."
    )


@contextmanager
def held(run: str, refresh_s: float = REFRESH_S) -> Iterator[Lease]:
    """The lease of `run` while the block runs, its heartbeat refreshed every `refresh_s` by a thread; released at
    the end however the block ends. A run folder this made is removed again if nothing else was written."""
    fs, folder = storage.filesystem(run)
    made = fs.get_file_info(folder).type == pafs.FileType.NotFound
    lease = acquire(run)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(refresh_s) and not lease.lost:
            try:
                lease.refresh()
            except OSError as e:  # the storage unreachable for a while: the next beat tries again
                print(f"note: cannot refresh the lease {lease_path(run)} ({e})", file=sys.stderr)

    thread = threading.Thread(target=beat, name="rfgan-lease", daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        stop.set()
        thread.join()
        try:
            lease.release()
        except OSError as e:
            print(f"note: cannot delete the lease {lease_path(run)} ({e}); it is stale now", file=sys.stderr)
        if made:
            # Only if nothing else was written: a refused run leaves no folder. On object storage too, where deleting
            # a folder's last file leaves a marker object that keeps the folder listed (pyarrow's S3).
            try:
                if not fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
                    fs.delete_dir(folder)
            except OSError:
                pass
