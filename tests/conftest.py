"""Shared fixtures: one real local Ray per test session, and tiny real datasets on disk."""

from __future__ import annotations

import os

import numpy as np
import pytest

from rfgan.data.format import read_info, read_rfs, read_split, to_tensors
from rfgan.data.synth import SynthSpec, write_synth

TINY = SynthSpec(n_train=40, n_val=12, electrodes=12, size=32, n_arrays=3, shard_rows=16, seed=3)


# Small nets and batches on the tiny dataset: what the Ray Train and Tune tests train.
SMALL_NETS = {
    "model.ngf": 8,
    "model.n_down": 3,
    "model.ndf": 8,
    "model.d_layers": 2,
    "optim.batch_size": 8,
    "run.log_every": 1000,
}


def set_flags(overrides) -> list[str]:
    """Dotted-key overrides as `rfgan` command-line flags: --set KEY=VALUE ..."""
    return [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]


def interruptible() -> None:
    """Popen's preexec_fn for a child that a test interrupts as Ctrl-C does (SIGINT): SIGINT's default disposition,
    which a child of a test run started in the background would lack (a shell ignores SIGINT for background jobs,
    and an ignored signal stays ignored across exec, so Python never installs its KeyboardInterrupt)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def make_synth(out, spec: SynthSpec = TINY, **kwargs):
    return write_synth(out, spec, **kwargs)


# Fixtures that start Ray: a test using one is in the slow lane (marker `ray`); the rest is pure PyTorch/NumPy. A test
# that starts Ray another way (a subprocess running `rfgan train`) carries the marker itself.
RAY_FIXTURES = {"ray_session", "tune_ray"}
pytest_plugins = ["cluster_fixtures"]
# The cluster lane's (tests/cluster): several Ray nodes and an S3 endpoint. Its tests are in the `ray` lane too, and
# need a process of their own (one Ray per driver process): `pytest -m cluster`.
CLUSTER_FIXTURES = {"ray_cluster", "s3"}


def pytest_collection_modifyitems(items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if CLUSTER_FIXTURES & used:
            item.add_marker(pytest.mark.cluster)
        if (RAY_FIXTURES | CLUSTER_FIXTURES) & used:
            item.add_marker(pytest.mark.ray)
        if "tune_ray" in used:
            item.add_marker(pytest.mark.tune)
    # The Train runs of tests/run/test_train.py last: after them the session driver's link to Ray's GCS was seen to
    # stop answering (a Ray call then waits forever), so no test that needs the session's Ray comes after them.
    items.sort(key=lambda item: item.path.name == "test_train.py" and item.path.parent.name == "run")


@pytest.fixture(autouse=True)
def _ray_stays_in_its_lane(request, monkeypatch):
    """Outside the `ray` lane, starting Ray in this process (`ray.init`, also Ray Data's automatic one) fails the test:
    otherwise a test that reaches Ray through `main([...])` would slip into the fast lane unmarked and slow it down."""
    if request.node.get_closest_marker("ray"):
        return
    import ray

    def refuse(*args, **kwargs):
        pytest.fail(f"{request.node.nodeid} starts Ray: give it the ray_session fixture (or mark it ray)")

    monkeypatch.setattr(ray, "init", refuse)


# More logical CPUs than cores: Train workers and Ray Data's read tasks must all get a slot (RAY-NOTES).
# address="local": a Ray of its own, even if another one on this machine left its address behind.
RAY_ARGS = {"address": "local", "num_cpus": 8, "include_dashboard": False, "log_to_driver": False}


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(**RAY_ARGS)
    yield ray
    shut_down(ray)


@pytest.fixture(scope="session")
def tune_ray(ray_session):
    """The session's Ray, for a test of the sweep layer on Ray: such tests are marked `tune` and run in a pytest process
    of their own (`make test-all`). A Tune controller in a driver that had run the Train tests waited forever for
    trial actors that Ray had created (the driver never heard they were alive), and that driver's ray.shutdown()
    could hang the same way: its subscription to Ray's GCS had stopped answering. `rfgan tune` is always a fresh
    driver, as this process is."""
    return ray_session


# Set when ray.shutdown() of the session's Ray did not return (pytest_unconfigure then ends the process).
_SHUTDOWN_STUCK: list[int] = []


def shut_down(ray, timeout_s: float = 10.0) -> bool:
    """ray.shutdown(), given `timeout_s` to return (about 2 s when it does). After the Ray lane's Train runs it has
    waited for ever for the driver's error-listener thread, whose subscription to Ray's GCS had stopped answering
    (seen in CI runs after every test had passed): the test run must end all the same."""
    import threading

    stopping = threading.Thread(target=ray.shutdown, daemon=True)
    stopping.start()
    stopping.join(timeout_s)
    if stopping.is_alive():
        _SHUTDOWN_STUCK.append(1)
        print(f"\nray.shutdown() did not return within {timeout_s:.0f} s; the test run ends without it")
        return False
    return True


def pytest_sessionfinish(session, exitstatus):
    session.config._rfgan_exitstatus = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    # A stuck ray.shutdown() holds Ray's lock, and Ray's own atexit shutdown would wait on it forever: leave at once,
    # with the run's own status, once pytest has reported.
    if _SHUTDOWN_STUCK:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(getattr(config, "_rfgan_exitstatus", 1))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "tiny"
    make_synth(out)
    return out


@pytest.fixture(scope="session")
def feature_weights_home(tmp_path_factory):
    """A torch hub cache with the two files the feature metrics read, made here (machines are offline): randomly
    initialised torchvision AlexNet and VGG19 conv weights under torchvision's file names. Not torchvision's files,
    so evaluations made with them say "pretrained": false."""
    import warnings

    import torch
    import torchvision

    from rfgan.evaluate.features import ALEXNET, VGG19
    from rfgan.gan.vgg import VGGFeatures

    home = tmp_path_factory.mktemp("torch_home")
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), checkpoints / ALEXNET.url.rsplit("/", 1)[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vgg = VGGFeatures(random_init=True).features  # conv weights up to relu5_1, a features-only state dict
    torch.save(vgg.state_dict(), checkpoints / VGG19.url.rsplit("/", 1)[1])
    return home


@pytest.fixture
def feature_weights(feature_weights_home, monkeypatch):
    """TORCH_HOME set to feature_weights_home for one test."""
    monkeypatch.setenv("TORCH_HOME", str(feature_weights_home))
    return feature_weights_home


def trained(tiny_dataset, seed=0, steps=3, cfg=None):
    """A GAN (the `tiny` preset, or `cfg`) after `steps` real training steps on 8 rows of `tiny_dataset`, without Ray:
    (cfg, info, rfs, gan, opts, the 8 rows' responses)."""
    import warnings

    import torch

    from rfgan.config import preset
    from rfgan.data.format import read_info, read_rfs, read_split, to_tensors
    from rfgan.gan.build import build_gan, build_optimizers
    from rfgan.gan.step import train_step

    info, rfs = read_info(tiny_dataset), read_rfs(tiny_dataset)
    cfg = cfg or preset("tiny")
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "VGGFeatures.random_init")
        gan = build_gan(cfg, info, rfs)
    opts = build_optimizers(cfg, gan)
    batch = read_split(tiny_dataset, "train")
    responses, images = to_tensors({k: batch[k][:8] for k in ("responses", "image")})
    for _ in range(steps):
        train_step(gan, opts, responses, images, cfg)
    return cfg, info, rfs, gan, opts, responses


def make_gan_run(run, tiny_dataset, cfg=None, steps=3):
    """A run directory as rfgan train leaves one (config.json, a checkpoint, curves.png), of a GAN trained a few
    steps without Ray (trained)."""
    from rfgan.checkpoint import save_checkpoint
    from rfgan.run.artifacts import plot_curves

    cfg, info, rfs, gan, opts, _ = trained(tiny_dataset, steps=steps, cfg=cfg)
    save_checkpoint(
        run / "checkpoint_000001",
        config=cfg,
        info=info,
        rfs=rfs,
        gan=gan,
        opts=opts,
        epoch=1,
        step=steps,
        metrics={"val_ssim": 0.1},
    )
    (run / "config.json").write_text(cfg.to_json() + "\n")
    plot_curves(
        [{"epoch": 1, "train_pix": 0.3, "val_ssim": 0.1}, {"epoch": 2, "train_pix": 0.2, "val_ssim": 0.2}],
        run / "curves.png",
    )
    return run


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
    from rfgan.data import write as writer

    write_table, calls = writer.pq.write_table, []

    def write(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return write_table(*args, **kwargs)

    monkeypatch.setattr(writer.pq, "write_table", write)


def run_interrupted(argv) -> int:
    """rfgan's main(argv), failing the test (not ending the session) if a KeyboardInterrupt gets out of it."""
    from rfgan.cli import main

    try:
        return main(argv)
    except KeyboardInterrupt:
        pytest.fail("the KeyboardInterrupt left main() as a traceback")


@pytest.fixture(scope="module")
def problem(tiny_dataset):
    """16 fixed samples of the tiny synthetic dataset (12 electrodes in V1/V4/IT, 32×32 RGB)."""
    info, rfs = read_info(tiny_dataset), read_rfs(tiny_dataset)
    batch = read_split(tiny_dataset, "train")
    responses, images = to_tensors({k: batch[k][:16] for k in ("responses", "image")})
    return info, rfs, responses, images


def record_shards(path) -> None:
    """metadata.json made to list every shard of the dataset at `path` as it now is (rows, bytes, SHA-256): a dataset
    whose writer wrote those shards, for tests of what readers do past the content hashes."""
    import hashlib
    import json

    import pyarrow.parquet as pq

    meta = json.loads((path / "metadata.json").read_text())
    for entries in meta["shards"].values():
        for entry in entries:
            shard = path / entry["file"]
            data = shard.read_bytes()
            entry.update(
                rows=pq.read_metadata(shard).num_rows, bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
            )
    (path / "metadata.json").write_text(json.dumps(meta))
