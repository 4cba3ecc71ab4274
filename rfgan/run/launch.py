"""`rfgan train` from the driver's side: refuse to overwrite a run, write its resolved config, start or connect to
Ray, train, and keep Ray's output in the run's log file while the terminal shows rfgan's progress."""

from __future__ import annotations

import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from rfgan import lease, outputs, parse, storage
from rfgan.checkpoint import (
    GAN_KIND,
    Accept,
    check_data_matches,
    checkpoint_kind,
    existing_checkpoints,
    newest_intact,
    read_state,
    trained_data,
)
from rfgan.config import Config, flatten
from rfgan.data.format import DatasetInfo, check_outside_dataset
from rfgan.data.rf import RFTable
from rfgan.errors import ConfigError, UsageError
from rfgan.lease import LEASE_FILE
from rfgan.run.cluster_checks import check_cluster
from rfgan.run.console import EpochProgress, QueueFollower, RunLog, note, sigterm_as_ctrl_c
from rfgan.run.restarts import fit_restarting
from rfgan.run.train import reads_on_driver, train_split_mb, write_resolved_config
from rfgan.run.watchdog import watch_this_driver

LOG_FILE = "train.log"


def on_cluster(address: str | None) -> bool:
    return bool(address or os.environ.get("RAY_ADDRESS"))


# Ray's default ports: the GCS of `ray start --head`, and the Ray Client server of a ray:// address.
GCS_PORT, CLIENT_PORT = 6379, 10001


def check_reachable(address: str | None) -> None:
    """Refuse a cluster address (--address, else $RAY_ADDRESS) where nothing answers, in seconds: ray.init would
    retry it for minutes with only Ray's warnings to show. "auto" and "local" name no host and are left to Ray."""
    given = address or os.environ.get("RAY_ADDRESS") or ""
    flag = "--address" if address else "$RAY_ADDRESS"
    if given in ("", "auto", "local"):
        return
    parts = urlsplit(given)
    client = parts.scheme == "ray"  # a Ray Client address; any other is the GCS's HOST:PORT
    hostport = parts.netloc if client else given
    host, _, port_text = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    host = host.strip("[]") or hostport
    try:
        port = int(port_text) if port_text else (CLIENT_PORT if client else GCS_PORT)
    except ValueError:
        raise UsageError(f"{flag} {given}: {port_text!r} is not a port; give HOST:PORT, e.g. 10.0.0.5:6379.") from None
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
        raise UsageError(
            f"nothing answers at {flag} {given} ({why}): start the cluster's head there (ray start --head) or give "
            "its address; without --address rfgan starts a Ray of its own on this machine."
        ) from None


def init_ray(address: str | None, min_cpus: int, dashboard: bool = False) -> bool:
    """Connect to the cluster at `address` ($RAY_ADDRESS), else start a local Ray; True when this call did either
    (the caller then shuts it down), False when Ray was running in this process already (a notebook, a test)."""
    import ray

    if ray.is_initialized():
        return False
    if on_cluster(address):
        check_reachable(address)
        ray.init(address=address)  # a cluster (also what `ray job submit` sets up)
        sigterm_as_ctrl_c()
        return True
    # A machine of one's own is not preempted: no watcher actor (a process start) for Train to poll.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    # Train's controller polls its workers every 2 s by default, so a run's end waits up to that long to be noticed;
    # a few local workers are cheap to poll more often.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # More logical CPUs than the workers take, so Ray Data's read tasks always get a slot. The dashboard's processes
    # start with Ray and take their share of a laptop's cores: only on request.
    # address="local": a Ray of its own even when `ray start` left one running on this machine, which a plain
    # ray.init() would join (the way to use that one is --address or $RAY_ADDRESS).
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, min_cpus), include_dashboard=dashboard)
    watch_this_driver()
    sigterm_as_ctrl_c()
    return True


def min_cpus(cfg: Config) -> int:
    """Logical CPUs a local Ray needs: the workers' and two for Ray Data and the driver's actors."""
    return math.ceil(cfg.run.workers * cfg.run.cpus_per_worker) + 2


@contextmanager
def run_log(out: str, name: str, verbose: bool, made: bool | None = None) -> Iterator[RunLog]:
    """RunLog into `out`/`name`; written locally first when `out` is a URI, and uploaded when the run ends. A run
    refused inside it (UsageError, ConfigError: before anything else was written) leaves no log behind, nor the
    folder it made for it (`made`: whether that folder is new, when the caller made it; else whether it exists)."""
    if not storage.is_remote(out):
        made = not os.path.exists(out) if made is None else made
        os.makedirs(out, exist_ok=True)
        try:
            with RunLog(os.path.join(out, name), verbose) as log:
                yield log
        except (UsageError, ConfigError):
            if made:
                shutil.rmtree(out, ignore_errors=True)
            raise
        return
    with tempfile.TemporaryDirectory(prefix="rfgan-log-") as tmp:
        refused = False
        try:
            with RunLog(os.path.join(tmp, name), verbose) as log:
                yield log
        except (UsageError, ConfigError):
            refused = True
            raise
        finally:
            if not refused:
                storage.upload(tmp, out, [name])


@dataclass(frozen=True)
class TrainOutcome:
    run_dir: str
    log_file: str
    wall_s: float
    metrics: dict[str, Any]  # the last epoch's
    best_checkpoint: str | None
    error: BaseException | None  # what stopped training (rfgan's own reason, if Ray wrapped one: errors.user_error)

    @property
    def resume_hint(self) -> str:
        return resume_hint(self.run_dir)


def resume_hint(out: str) -> str:
    return f"`rfgan train --out {out} --resume` continues the run from its last checkpoint"


# What a resume may change: how the run goes on (epochs, workers, devices, budgets, speed switches), the batch that
# more workers need, and where the data is (its identity is check_resumed_data's). Anything else would continue a
# run as another model: the nets would not even load, and only inside Ray's workers.
RESUMABLE = ("run.", "perf.", "data.path", "optim.batch_size")


def saved_config(out: str) -> Config | None:
    """The config a run's nets were built with: its newest complete checkpoint's, else RUN/config.json (written at
    each start, for people to read: an edit of it, or its loss, does not change what the checkpoints hold)."""
    newest = newest_intact(out)
    if newest is not None and checkpoint_kind(read_state(newest)) != GAN_KIND:
        kind = checkpoint_kind(read_state(newest))
        raise UsageError(
            f"{out} is a run of rfgan baseline (its checkpoint is a {kind} decoder), which is fitted in one go, not "
            "trained: there is nothing to resume; train a GAN into another --out."
        )
    path = storage.join(newest or out, "config.json")
    if not storage.is_file(path):
        return None
    return Config.from_dict(parse.loads(storage.read_bytes(path), path))


def check_resumed_config(out: str, cfg: Config) -> None:
    """Refuse to resume `out` with a config that differs from the run's own in anything but RESUMABLE settings."""
    saved = saved_config(out)
    if saved is None:
        return
    was = flatten(saved.to_dict())
    changed = {k: v for k, v in cfg.changes_from(saved).items() if not k.startswith(RESUMABLE)}
    if changed:
        keys = sorted(changed, key=lambda k: (k != "preset", k))[:6]  # another preset says most, first
        listed = ", ".join(f"{k}={changed[k]!r} (was {was.get(k)!r})" for k in keys)
        raise UsageError(
            f"--resume continues {out} as it was configured (its checkpoints' config.json), but this command "
            f"changes {listed}{' and more' if len(changed) > 6 else ''}; drop --preset/--config and --set of those "
            "(--resume then takes the run's own) and keep only run settings such as --epochs, or train a new run "
            "with another --out."
        )


def check_resumed_data(out: str, data: str, dataset: tuple[DatasetInfo, RFTable], allow_other_data: bool) -> None:
    """Before Ray starts: refuse to resume `out` on data other than its newest checkpoint was trained on (another
    fingerprint: the dataset re-made in place, other RFs), saying what changed; with `allow_other_data` (same RFs
    only), say it and go on. The workers check again as they restore (a restart may meet data changed since)."""
    trained = trained_data(out)
    if trained is None:
        return
    checkpoint, trained_info, trained_rfs = trained
    accept = Accept("resume", other_data=allow_other_data)
    warning = check_data_matches(trained_info, trained_rfs, *dataset, data, accept)
    if warning is not None:
        note(f"note: --allow-other-data: {checkpoint} was trained on other data; {warning}")


def _is_run(path: str) -> bool:
    """Whether a folder holds what a training writes first (its lease, config.json or log) or its checkpoints."""
    return any(
        n in ("config.json", LOG_FILE, LEASE_FILE) or n.startswith("checkpoint") for n in storage.file_sizes(path)
    ) or bool(existing_checkpoints(path))


RUN = outputs.Kind("an rfgan training run", _is_run, folder=True)


def check_run_target(out: str) -> None:
    """Refuse an --out that is a dataset or lies inside one (re-making the dataset would delete the run, and the run's
    files sit among its shards), or a folder of anything but a run."""
    check_outside_dataset(out, "a run")
    outputs.check_target(out, RUN)


def train(
    cfg: Config,
    data: str,
    out: str,
    dataset: tuple[DatasetInfo, RFTable],
    *,
    resume: bool = False,
    allow_other_data: bool = False,
    address: str | None = None,
    verbose: bool = False,
    dashboard: bool = False,
) -> TrainOutcome:
    """Train `cfg` on `data` into `out` (a new run, or with `resume` the one there), on a local Ray or the cluster at
    `address`, showing each epoch on the terminal. Ctrl-C ends it with a KeyboardInterrupt saying how to go on.
    The run directory's lease (rfgan.lease) is held throughout: a second training of `out` is refused. A resume on
    data other than the run's is refused unless `allow_other_data` (check_resumed_data)."""
    check_run_target(out)
    made = not storage.is_remote(out) and not os.path.exists(out)
    with lease.held(out):
        found = existing_checkpoints(out)
        if found and not resume:
            raise UsageError(
                f"{out} already holds {len(found)} checkpoint(s); pass --resume to continue that run, or choose "
                "another --out."
            )
        if resume and not found:
            print(f"--resume: {out} has no checkpoint yet; starting from epoch 1")
        if resume:
            check_resumed_data(out, data, dataset, allow_other_data)
        start = time.perf_counter()
        info = dataset[0]
        with run_log(out, LOG_FILE, verbose, made) as log:
            started = init_ray(address, min_cpus(cfg), dashboard)
            log.after_ray_init()
            try:
                streams = not reads_on_driver(cfg, info)
                check_cluster(cfg, data, {"--out": out}, streams=streams, split_mb=train_split_mb(info))
                write_resolved_config(cfg, out)
                import ray
                from ray.util.queue import Queue
                from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

                # Torch threads that share the machine's cores among the local workers; a cluster's nodes decide
                # their own.
                threads = None if on_cluster(address) else max(1, (os.cpu_count() or 1) // cfg.run.workers)
                # The progress queue's actor lives on the driver's node, which lasts as long as the run: placed on a
                # worker node it died with that node, and every restart of the run then failed on its first put.
                here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
                events = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
                progress = EpochProgress(cfg.run.epochs, log.out, log.err)
                follower = QueueFollower(events, progress.handle)
                try:
                    result = fit_restarting(
                        cfg,
                        data,
                        out,
                        dataset=dataset,
                        torch_threads=threads,
                        progress=events,
                        allow_other_data=allow_other_data,
                    )
                except KeyboardInterrupt:
                    raise KeyboardInterrupt(resume_hint(out)) from None
                finally:
                    follower.stop()
                    progress.close()
            finally:
                if started:
                    import ray

                    ray.shutdown()
        return TrainOutcome(
            run_dir=result.run_dir,
            log_file=storage.join(result.run_dir, LOG_FILE),
            wall_s=time.perf_counter() - start,
            metrics=result.metrics,
            best_checkpoint=result.best_checkpoint,
            error=result.error,
        )
