"""Shared fixtures: one real local Ray per test session, and tiny real datasets on disk."""

from __future__ import annotations

import numpy as np
import pytest

from rfgan.data.synth import SynthSpec, write_synth

TINY = SynthSpec(n_train=40, n_val=12, electrodes=12, size=32, n_arrays=3, shard_rows=16, seed=3)


def make_synth(out, spec: SynthSpec = TINY, **kwargs):
    return write_synth(out, spec, **kwargs)


# Fixtures that start Ray: a test using one is in the slow lane (marker `ray`); the rest is pure PyTorch/NumPy.
RAY_FIXTURES = {"ray_session", "head_node"}


def pytest_collection_modifyitems(items):
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    # More logical CPUs than cores: Train workers and Ray Data's read tasks must all get a slot (RAY-NOTES).
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "tiny"
    make_synth(out)
    return out


def concat_chunks(chunks) -> dict[str, np.ndarray]:
    chunks = list(chunks)
    return {
        "sample_id": np.concatenate([c.sample_id for c in chunks]),
        "image_id": np.concatenate([c.image_id for c in chunks]),
        "responses": np.concatenate([c.responses for c in chunks]),
        "image": np.concatenate([c.images for c in chunks]),
    }


def tree(folder) -> dict[str, bytes | None]:
    """Every path under `folder` (hidden ones too) with its bytes (None for a folder): what a test asserts survives."""
    return {p.relative_to(folder).as_posix(): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")}


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"rfgan {command}: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def interrupt_on_shard(monkeypatch, n: int) -> None:
    """Ctrl-C arriving while the dataset writer writes its n-th shard."""
    from rfgan.data import format as fmt

    write_table, calls = fmt.pq.write_table, []

    def write(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return write_table(*args, **kwargs)

    monkeypatch.setattr(fmt.pq, "write_table", write)


def run_interrupted(argv) -> int:
    """rfgan's main(argv), failing the test (not ending the session) if a KeyboardInterrupt gets out of it."""
    from rfgan.cli import main

    try:
        return main(argv)
    except KeyboardInterrupt:
        pytest.fail("the KeyboardInterrupt left main() as a traceback")
