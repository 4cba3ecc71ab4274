"""Faults injected into the workers of real Ray Train runs, shared by the tests of runs (tests/run) and of sweeps
(tests/sweep).

Each fault is a worker function built here, in the test process, as a closure: Ray pickles such a function by value,
so it reaches Train's workers (which cannot import this test folder) with what it captured.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rfgan.run import train


def killed_once_before_reporting(epoch: int, marker: str):
    """A worker function that runs rfgan's own, except that rank 0's process is SIGKILLed when it is about to report
    `epoch`, the first time only: a real crash of one worker of the group, one epoch after the last checkpoint.
    It wraps ray.train.report inside the worker process, so production code carries no test hook."""
    real_loop = train.train_loop

    def loop(loop_config):
        import ray.train

        # Defined in here so that it travels with the function: Ray's workers cannot import this test module.
        def wait_for_recorded(run_dir: str, recorded: int, timeout_s: float = 120.0) -> None:
            """Until Ray's record of the run, as Ray's public API reads it back, holds a checkpoint of epoch
            `recorded`."""
            deadline, last = time.monotonic() + timeout_s, None
            while time.monotonic() < deadline:
                try:
                    result = ray.train.Result.from_path(run_dir)
                    if any(metrics["epoch"] == recorded for _, metrics in result.best_checkpoints):
                        return
                except Exception as e:  # Ray's record not written yet, or read while Ray rewrites it
                    last = e
                time.sleep(0.2)
            raise AssertionError(f"Ray recorded no checkpoint of epoch {recorded} in {timeout_s:.0f} s ({last!r})")

        real_report = ray.train.report

        def report(metrics, checkpoint=None, **kwargs):
            if (
                metrics["epoch"] == epoch
                and ray.train.get_context().get_world_rank() == 0
                and not os.path.exists(marker)
            ):
                # Ray Train's controller takes in reports by polling the workers: a worker killed within a poll of
                # its last report loses that report, and the group restarts from the one before (Ray's behaviour;
                # an epoch from the kept shard can take a fifth of a second here). Crash once Ray has recorded the
                # previous epoch's checkpoint, as a crash an epoch later would find it.
                wait_for_recorded(loop_config["run_dir"], epoch - 1)
                Path(marker).write_text("killed once")
                os.kill(os.getpid(), signal.SIGKILL)
            real_report(metrics, checkpoint=checkpoint, **kwargs)

        ray.train.report = report
        real_loop(loop_config)

    return loop


def counting_starts(starts: Path, loop: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """`loop`, which first adds a line to `starts` in rank 0: one line per start of a Train run's worker group."""

    def counted(loop_config: dict[str, Any]) -> None:
        import ray.train

        if ray.train.get_context().get_world_rank() == 0:
            with open(starts, "a") as f:
                f.write("started\n")
        return loop(loop_config)

    return counted
