"""Where rfgan reads and writes: a local path or a URI (`s3://`, `gs://`, `file://`, anything
pyarrow.fs.FileSystem.from_uri knows). This is the one module that tells the two apart; pyarrow's filesystems do
the work.

Paths come back in the form they were given (a URI stays a URI), except `absolute`, which anchors local ones. A URI
may carry a query (`s3://bucket/runs/x?endpoint_override=127.0.0.1:9000&scheme=http`, one way to reach MinIO or
Ceph): `join` and `split` act on its path and keep the query, which pyarrow reads when it opens the filesystem.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from urllib.parse import SplitResult, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from rfgan.errors import DataError

PathLike = str | os.PathLike


def is_remote(path: PathLike) -> bool:
    return "://" in os.fspath(path)


def filesystem(path: PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, the path within it); a local path comes back absolute."""
    path = os.fspath(path)
    if is_remote(path):
        try:
            return pafs.FileSystem.from_uri(path)
        except pa.ArrowInvalid as e:  # an unknown scheme, file://relative: pyarrow's error names neither the fix
            raise DataError(
                f"{path}: not a path or URI rfgan can reach ({str(e).splitlines()[0]}); give a local path, file:///"
                "ABSOLUTE/PATH, or an s3://, gs:// or hdfs:// URI."
            ) from None
    return pafs.LocalFileSystem(), os.path.abspath(path)


def absolute(path: PathLike) -> str:
    """A local path made absolute (Ray workers do not share the driver's working directory); a URI unchanged."""
    path = os.fspath(path)
    return path if is_remote(path) else os.path.abspath(path)


def _uri(path: str) -> SplitResult:
    # No fragments: a '#' in an object key is part of its name, as it is to pyarrow.
    return urlsplit(path, allow_fragments=False)


def _with_path(uri: SplitResult, path: str) -> str:
    # Not SplitResult.geturl: it drops the '//' of an empty host for schemes urllib does not know.
    return f"{uri.scheme}://{uri.netloc}{path}" + (f"?{uri.query}" if uri.query else "")


def join(base: PathLike, *names: str) -> str:
    base = os.fspath(base)
    if not is_remote(base):
        return "/".join([base.rstrip("/"), *names])
    uri = _uri(base)
    return _with_path(uri, "/".join([uri.path.rstrip("/"), *names]))


def split(path: PathLike) -> tuple[str, str]:
    """(parent, name), the parent absolute if local."""
    path = absolute(path)
    if not is_remote(path):
        parent, _, name = path.rstrip("/").rpartition("/")
        return parent or "/", name
    uri = _uri(path)
    parent, _, name = uri.path.rstrip("/").rpartition("/")
    return _with_path(uri, parent), name


def is_file(path: PathLike) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type == pafs.FileType.File


def read_bytes(path: PathLike) -> bytes:
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def read_text(path: PathLike) -> str:
    return read_bytes(path).decode()


def write_bytes(path: PathLike, data: bytes) -> None:
    """One file, its folder created if missing."""
    fs, p = filesystem(path)
    _make_parent(fs, p)
    with fs.open_output_stream(p) as f:
        f.write(data)


def _make_parent(fs: pafs.FileSystem, path: str) -> None:
    # Local writes need the folder; object stores do not, but pyarrow's create_dir is harmless there.
    parent = path.rpartition("/")[0]
    if parent:
        fs.create_dir(parent, recursive=True)


def move(src: PathLike, dest: PathLike) -> None:
    """Rename a file within one filesystem (a copy and a delete on object stores)."""
    fs, a = filesystem(src)
    fs.move(a, filesystem(dest)[1])


def list_dirs(path: PathLike) -> list[str]:
    """Names of the folders directly in `path`, sorted; [] if it does not exist."""
    fs, p = filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def file_sizes(path: PathLike) -> dict[str, int]:
    """{name: bytes} of the files directly in the folder `path`; {} if it does not exist."""
    fs, p = filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    return {i.base_name: i.size for i in infos if i.type == pafs.FileType.File}


def upload(local: PathLike, dest: PathLike, names: Iterable[str] | None = None) -> None:
    """Copy a local file or folder to `dest`; with `names`, only those files (relative to the folder `local`)."""
    fs, root = filesystem(dest)
    src = os.path.abspath(local)
    for a, b in [(src, root)] if names is None else [(join(src, n), join(root, n)) for n in names]:
        _copy(pafs.LocalFileSystem(), a, fs, b)


def download(src: PathLike, local: PathLike) -> None:
    """Copy a file or folder at `src` to the local path `local`."""
    fs, path = filesystem(src)
    _copy(fs, path, pafs.LocalFileSystem(), os.path.abspath(local))


def _copy(src_fs: pafs.FileSystem, src: str, fs: pafs.FileSystem, dest: str) -> None:
    # pyarrow's copy_files makes the folders inside a copied folder, not the destination's own folder.
    if src_fs.get_file_info(src).type == pafs.FileType.Directory:
        fs.create_dir(dest, recursive=True)
    else:
        _make_parent(fs, dest)
    pafs.copy_files(src, dest, source_filesystem=src_fs, destination_filesystem=fs)
