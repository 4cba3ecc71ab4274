"""The one rule for what a command writes (report, reconstruct, eval, baseline, export; synth and ingest follow it in
rfgan.data.write): an existing target is replaced only when it is of the command's own kind (an earlier output of
the same command), anything else is refused in one line before any work; the new output is written under a staging
name beside the target and renamed into place once complete; a folder is replaced whole, so nothing of an earlier
call is left beside the new files.

What holds where:
- a local file: one rename replaces it; a reader sees the old file or the new one, never part of either;
- a local folder: two renames (the old one aside, the new one in); a failure between them puts the old one back;
- object storage (s3://, gs://) has no rename: a "move" is a server-side copy and a delete. One object is still
  replaced whole (an object is written or copied in one request), but a folder is not: while its objects are
  swapped a reader sees part of it. The complete new folder stays under its staging name until the swap is done.
A call that is killed leaves its staging (`.NAME.tmp-HOST-PID-XXXXXXXX`), which the next write to the same target
removes once its writer is known dead (same host, process gone) or nothing in it changed for STALE_AFTER_S.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from rfgan import storage
from rfgan.errors import DataError

# A staging folder of a killed writer from another host goes once nothing in it has changed for this long (a live
# writer adds a file every few seconds).
STALE_AFTER_S = 24 * 3600


@dataclass(frozen=True)
class Kind:
    """What a command writes, and how to tell an earlier output of it from anything else."""

    what: str  # in words, after "is not": "an rfgan report page"
    is_own: Callable[[str], bool]  # whether the existing target (a path or URI) is one of these
    folder: bool = False


def host_name() -> str:
    # Cut short: a staging name must stay within the 255 bytes a file name may have.
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:32] or "host"


def owner_tag() -> str:
    """host-pid-random: which process a staging name belongs to, so a later write can tell a dead one's."""
    return f"{host_name()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def process_alive(pid: int) -> bool:
    """Whether a process of this id runs on this host (a reused id reads as alive: that only delays a cleanup)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but is another user's
        return True
    return True


def head(target: str, n: int = 4096) -> bytes:
    """The first `n` bytes of the file `target` (fewer if it is shorter): enough to tell its kind."""
    fs, path = storage.filesystem(target)
    with fs.open_input_stream(path) as f:
        return f.read(n)


def check_target(target: str, kind: Kind, replace: bool = True, flag: str = "--out") -> None:
    """Refuse `target` before any work unless it is absent, an empty folder (for a folder kind), or, with `replace`,
    an earlier output of `kind`."""
    if not kind.folder and target.endswith(("/", os.sep)):
        # storage.filesystem drops the slash: a file would be written where the user meant a folder (third audit).
        raise DataError(f"{flag} {target} ends in '/', a folder; give the path of the file to write, a name inside it.")
    fs, path = storage.filesystem(target)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return
    if kind.folder and info.type == pafs.FileType.File:
        raise DataError(f"{flag} {target} is a file, not a folder; choose another {flag}.")
    if not kind.folder and info.type == pafs.FileType.Directory:
        raise DataError(f"{flag} {target} is a folder; give the path of the file to write, e.g. a name inside it.")
    if kind.folder and not fs.get_file_info(pafs.FileSelector(path)):
        return  # an empty folder: nothing to lose
    if not kind.is_own(target):
        raise DataError(
            f"{flag} {target} already exists and is not {kind.what}, the only thing this command replaces; choose "
            f"another {flag}, or move it away yourself if you mean to replace it."
        )
    if not replace:
        raise DataError(f"{target} already exists; choose another {flag} or pass --overwrite.")


def _staging(target: str, suffix: str = "") -> str:
    parent, name = storage.split(target)
    return storage.join(parent, f".{name}.tmp-{owner_tag()}{suffix}")


def write_file(target: str, kind: Kind, fill: Callable[[Path], None], replace: bool = True, suffix: str = "") -> None:
    """Write the file `target` (a path or URI) by `fill(local path)`, staged beside it (its name ending in `suffix`)
    and renamed into place once complete; check_target first."""
    check_target(target, kind, replace)
    remove_stale_staging(target)
    staged = _staging(target, suffix)
    fs, staged_path = storage.filesystem(staged)
    try:
        if not isinstance(fs, pafs.LocalFileSystem):
            with tempfile.TemporaryDirectory(prefix="rfgan-out-") as tmp:
                local = Path(tmp, "file" + suffix)
                fill(local)
                storage.upload(local, staged)
        else:
            Path(staged_path).parent.mkdir(parents=True, exist_ok=True)
            fill(Path(staged_path))
        # Again at the end: what appeared at the target while this one was written (a user's file, another
        # command's output) is refused, not replaced.
        check_target(target, kind, replace)
        storage.move(staged, target)
    except BaseException:
        if fs.get_file_info(staged_path).type == pafs.FileType.File:
            fs.delete_file(staged_path)
        raise


def write_bytes(target: str, data: bytes, kind: Kind, replace: bool = True) -> None:
    write_file(target, kind, lambda path: path.write_bytes(data), replace)


def write_folder(target: str, kind: Kind, fill: Callable[[Path], None]) -> None:
    """Write the folder `target` (a path or URI) by `fill(local folder)`, staged beside it and swapped in whole once
    complete, replacing an earlier output of `kind` (check_target first)."""
    check_target(target, kind)
    remove_stale_staging(target)
    fs, path = storage.filesystem(target)
    if not isinstance(fs, pafs.LocalFileSystem):
        _write_remote_folder(target, kind, fill)
        return
    # Symlinks resolved: the staging folder must sit on the filesystem of the folder it is renamed to.
    out = Path(os.path.realpath(path))
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.parent / f".{out.name}.tmp-{owner_tag()}"
    staged.mkdir()
    try:
        fill(staged)
        check_target(target, kind)  # again: what appeared there meanwhile is refused, not replaced
        old = swap_in(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def swap_in(staged: Path, out: Path) -> Path | None:
    """Rename the local folder `staged` to `out`. An existing `out` is moved aside, not deleted, until the new one
    is in its place (a failure in between puts it back); returns where it went, for the caller to delete."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{owner_tag()}"
        out.rename(old)
    try:
        staged.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    return old


def _write_remote_folder(target: str, kind: Kind, fill: Callable[[Path], None]) -> None:
    fs, root = storage.filesystem(target)
    staged = _staging(target)
    staged_path = storage.filesystem(staged)[1]
    try:
        with tempfile.TemporaryDirectory(prefix="rfgan-out-") as tmp:
            fill(Path(tmp))
            storage.upload(tmp, staged)
        check_target(target, kind)  # again: what appeared there meanwhile is refused, not replaced
        # The swap: the old objects go, then the new ones are copied in (server-side) from the staging prefix.
        if fs.get_file_info(root).type == pafs.FileType.Directory:
            fs.delete_dir_contents(root)
        fs.create_dir(root, recursive=True)
        pafs.copy_files(staged_path, root, source_filesystem=fs, destination_filesystem=fs)
    finally:
        if fs.get_file_info(staged_path).type != pafs.FileType.NotFound:
            fs.delete_dir(staged_path)


def remove_stale_staging(target: str | os.PathLike) -> None:
    """Remove what killed writes to `target` left beside it (`.NAME.tmp-*` staging, `.NAME.old-*` outputs being
    replaced), when that is safe: the writer ran on this host and its process is gone (a live process keeps its id;
    a reused id only delays the removal), or, for one from another host, nothing in it has changed for
    STALE_AFTER_S."""
    parent, name = storage.split(os.fspath(target))
    pattern = re.compile(rf"\.{re.escape(name)}\.(?:tmp|old)-(?P<host>[\w.]+)-(?P<pid>\d+)-[0-9a-f]{{8}}(?:\.\w+)?")
    fs, root = storage.filesystem(parent)
    try:
        entries = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except OSError:
        return
    for entry in entries:
        m = pattern.fullmatch(entry.base_name)
        if m is None or (not storage.is_remote(parent) and os.path.islink(entry.path)):
            continue
        dead = m["host"] == host_name() and not process_alive(int(m["pid"]))
        if not dead and time.time() - _last_change(fs, entry) <= STALE_AFTER_S:
            continue
        try:
            if entry.type == pafs.FileType.Directory:
                fs.delete_dir(entry.path)
            else:
                fs.delete_file(entry.path)
        except OSError:
            pass  # another writer's cleanup got there first


def _last_change(fs: pafs.FileSystem, entry: pafs.FileInfo) -> float:
    if entry.type != pafs.FileType.Directory:
        return entry.mtime.timestamp() if entry.mtime else time.time()
    if isinstance(fs, pafs.LocalFileSystem):  # lstat: never through a link
        latest = os.lstat(entry.path).st_mtime
        for root, dirs, files in os.walk(entry.path):
            for name in dirs + files:
                try:
                    latest = max(latest, os.lstat(os.path.join(root, name)).st_mtime)
                except OSError:
                    pass
        return latest
    # An object store's folder has no time of its own: its newest object's.
    inside = fs.get_file_info(pafs.FileSelector(entry.path, recursive=True, allow_not_found=True))
    times = [i.mtime.timestamp() for i in inside if i.mtime is not None]
    return max(times) if times else 0.0
