"""rfgan.storage on real files, through a local path and a file:// URI (pyarrow's filesystem layer, the code path of
s3:// and gs://); and the rule that no other module tells local paths and URIs apart."""

import ast
from pathlib import Path

import pytest
from conftest import one_line_error

import rfgan
from rfgan import storage


@pytest.fixture(params=["local", "uri"])
def where(request, tmp_path):
    """(a folder's real path, how it is named to storage)."""
    path = tmp_path / "store"
    return path, str(path) if request.param == "local" else path.as_uri()


def test_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.is_remote("s3://bucket/runs/a") and storage.is_remote(tmp_path.as_uri())
    assert not storage.is_remote("runs/a") and not storage.is_remote(tmp_path)
    assert storage.absolute("runs/a") == str(tmp_path / "runs" / "a")
    assert storage.absolute("gs://b/runs/a") == "gs://b/runs/a"
    assert storage.split("runs/a/") == (str(tmp_path / "runs"), "a")
    assert storage.split("s3://bucket/runs/a/") == ("s3://bucket/runs", "a")
    assert storage.join("s3://bucket/runs/", "a", "b.json") == "s3://bucket/runs/a/b.json"
    assert storage.join(Path("runs"), "a") == "runs/a"
    fs, path = storage.filesystem("runs/a")
    assert path == str(tmp_path / "runs" / "a") and fs.type_name == "local"
    fs, path = storage.filesystem((tmp_path / "x").as_uri())
    assert path == str(tmp_path / "x") and fs.type_name == "local"


# One way to reach MinIO or Ceph: the endpoint in the URI's query, which pyarrow reads.
MINIO = "endpoint_override=127.0.0.1:9000&scheme=http"


def test_names_of_uris_with_a_query_keep_it_after_their_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = f"s3://bucket/runs/x?{MINIO}"
    assert storage.is_remote(run) and storage.absolute(run) == run
    assert storage.join(run, "checkpoint_1", "state.json") == f"s3://bucket/runs/x/checkpoint_1/state.json?{MINIO}"
    assert storage.join(f"s3://bucket/runs/?{MINIO}", "x") == run
    assert storage.split(run) == (f"s3://bucket/runs?{MINIO}", "x")
    assert storage.split(f"s3://bucket/runs/x/?{MINIO}") == (f"s3://bucket/runs?{MINIO}", "x")
    assert storage.split(storage.join(run, "y")) == (run, "y")
    assert storage.split(f"s3://bucket/x?{MINIO}") == (f"s3://bucket?{MINIO}", "x")
    # Without a query as before; a '#' is part of an object's name, not a fragment.
    assert storage.join("gs://b/a#1", "c") == "gs://b/a#1/c" and storage.split("gs://b/a#1/c") == ("gs://b/a#1", "c")
    assert storage.split("s3://bucket/x") == ("s3://bucket", "x")
    assert storage.split((tmp_path / "a").as_uri()) == (tmp_path.as_uri(), "a")
    # In a local path '?' is a character of the name.
    assert not storage.is_remote("runs/x?a=b")
    assert storage.join("runs/x?a=b", "c") == "runs/x?a=b/c"
    assert storage.split("runs/x?a=b") == (str(tmp_path / "runs"), "x?a=b")


def test_filesystem_of_a_uri_with_a_query_reaches_the_endpoint_it_names():
    """pyarrow's real S3 filesystem, made from the URI without contacting the endpoint (given an endpoint, pyarrow
    does not ask AWS for the bucket's region). Its options are read back as pickling reads them, which is how Ray
    hands the filesystem to its workers."""
    fs, path = storage.filesystem(storage.join(f"s3://bucket/runs/x?{MINIO}", "metrics.csv"))
    assert fs.type_name == "s3" and path == "bucket/runs/x/metrics.csv"
    options = fs.__reduce__()[1][0]
    assert options["endpoint_override"] == "127.0.0.1:9000" and options["scheme"] == "http"


def test_files_round_trip(where):
    path, root = where
    name = storage.join(root, "a", "b", "c.txt")
    assert not storage.is_file(name)
    storage.write_bytes(name, "ünïcode\n".encode())  # its folders do not exist yet
    assert (path / "a" / "b" / "c.txt").read_text() == "ünïcode\n"
    assert storage.read_bytes(name) == "ünïcode\n".encode() and storage.read_text(name) == "ünïcode\n"
    assert storage.is_file(name) and not storage.is_file(storage.join(root, "a"))
    storage.write_bytes(name, b"again")
    assert storage.read_bytes(name) == b"again"
    (path / "z").mkdir()
    assert storage.list_dirs(root) == ["a", "z"]  # folders only, sorted
    assert storage.list_dirs(storage.join(root, "missing")) == []
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(root, "missing.txt"))


def test_upload_and_download(where, tmp_path):
    path, root = where
    local = tmp_path / "local"
    (local / "sub").mkdir(parents=True)
    (local / "top.txt").write_text("top")
    (local / "sub" / "deep.txt").write_text("deep")
    (local / "other.txt").write_text("other")

    storage.upload(local, storage.join(root, "all"))
    assert sorted(p.relative_to(path / "all").as_posix() for p in (path / "all").rglob("*") if p.is_file()) == [
        "other.txt",
        "sub/deep.txt",
        "top.txt",
    ]
    storage.upload(local, storage.join(root, "some"), ["sub/deep.txt", "top.txt"])  # into folders not yet made
    assert sorted(p.relative_to(path / "some").as_posix() for p in (path / "some").rglob("*") if p.is_file()) == [
        "sub/deep.txt",
        "top.txt",
    ]
    storage.upload(local / "top.txt", storage.join(root, "one", "copy.txt"))
    assert (path / "one" / "copy.txt").read_text() == "top"
    storage.upload(local / "sub", storage.join(root, "flat", "x"))  # a folder without folders, to a new place
    assert [p.name for p in (path / "flat" / "x").iterdir()] == ["deep.txt"]

    storage.download(storage.join(root, "all"), tmp_path / "back")
    assert (tmp_path / "back" / "sub" / "deep.txt").read_text() == "deep"
    storage.download(storage.join(root, "flat", "x"), tmp_path / "back2" / "x")
    assert (tmp_path / "back2" / "x" / "deep.txt").read_text() == "deep"
    storage.download(storage.join(root, "one", "copy.txt"), tmp_path / "new" / "copy.txt")
    assert (tmp_path / "new" / "copy.txt").read_text() == "top"


def uri_tests(source: str) -> list[int]:
    """Lines of `source` that tell URIs from paths by their text: the string "://" itself, or a comparison or
    startswith/find-style call with a string holding "://" (such as `path.startswith("s3://")`)."""

    def has_scheme(node) -> bool:
        return isinstance(node, ast.Constant) and isinstance(node.value, str) and "://" in node.value

    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and node.value == "://":
            lines.append(node.lineno)
        elif isinstance(node, ast.Compare) and any(has_scheme(n) for n in [node.left, *node.comparators]):
            lines.append(node.lineno)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("startswith", "find", "index", "split", "partition", "rpartition", "count")
            and any(has_scheme(a) for a in node.args)
        ):
            lines.append(node.lineno)
    return sorted(set(lines))


def test_only_storage_tells_uris_from_local_paths():
    package = Path(rfgan.__file__).parent
    found = {
        p.relative_to(package.parent).as_posix(): lines
        for p in sorted(package.rglob("*.py"))
        if (lines := uri_tests(p.read_text()))
    }
    assert list(found) == ["rfgan/storage.py"], found
    assert uri_tests('if "://" in out: pass') == [1] and uri_tests("x = out.startswith('gs://')") == [1]
    assert uri_tests('"""Reads s3://bucket/x."""\nhelp = "a URI (s3://...)"') == []  # prose is not a test


@pytest.mark.parametrize(
    "argv",
    [
        ["synth", "--out", "foo://bar/ds", "--n-train", "2", "--n-val", "1"],
        ["synth", "--out", "file://relative/ds", "--n-train", "2", "--n-val", "1"],
        ["check", "--data", "http://127.0.0.1:1/ds"],
        ["eval", "--run", "foo://x", "--data", "DATA"],
        ["train", "--data", "DATA", "--preset", "tiny", "--batch-size", "8", "--out", "foo://x/run"],
        ["tune", "--data", "DATA", "--out", "foo://x/sweep"],
        ["report", "--run", "foo://x", "--out", "foo://x/r.html"],
    ],
    ids=lambda argv: " ".join(argv[:3]),
)
def test_a_uri_no_filesystem_serves_is_one_line_exit_2(argv, tiny_dataset, capsys):
    """Third audit: pyarrow's ArrowInvalid traceback for unknown schemes and file://relative paths."""
    from rfgan.cli import main

    argv = [str(tiny_dataset) if a == "DATA" else a for a in argv]
    assert main(argv) == 2
    assert "not a path or URI rfgan can reach" in one_line_error(capsys, argv[0])
