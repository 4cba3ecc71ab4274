"""Faults that tests/sweep/test_sweep.py's fixtures inject into real sweeps: a trial that raises once, trials whose
Train workers run another worker function (tests/worker_faults.py's), and a Tune callback that interrupts the sweep
as Ctrl-C does.

Trials run in Ray actors, which cannot import this test folder (their sys.path has the driver's working directory,
not pytest's additions): the trial fault's fixture registers this module with
`ray.cloudpickle.register_pickle_by_value`, so what a trial uses of it travels by value.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback


def raise_once(marker: Path, driver: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """`driver`, except that the first trial to start raises instead. Once in the whole sweep, even with trials
    starting together: the first to create `marker` raises."""

    def trial_driver(config: dict[str, Any]) -> None:  # the name Tune gives the trainable, as without the fault
        try:
            with open(marker, "x") as f:
                f.write("raised")
        except FileExistsError:
            return driver(config)
        raise RuntimeError("injected fault: this trial raises on purpose")

    return trial_driver


def with_train_loop(loop: Callable[[dict[str, Any]], None], driver: Callable[[dict[str, Any]], None]):
    """`driver`, except that its Train runs' workers run `loop` instead of rfgan's train_loop: set in the trial's own
    process, where fit() looks train_loop up."""

    def trial_driver(config: dict[str, Any]) -> None:  # the name Tune gives the trainable, as without the fault
        from rfgan.run import train

        train.train_loop = loop
        return driver(config)

    return trial_driver


class InterruptAfter(Callback):
    """SIGINT to the sweep's own process, as Ctrl-C, once `n` trials have completed. Once: Tune keeps callbacks with
    the sweep's state and brings them back with a resumed sweep, where `marker` (written on interrupting) stops it."""

    def __init__(self, n: int, marker: Path) -> None:
        self.n, self.marker, self.completed = n, marker, 0

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.completed += 1
        if self.completed == self.n and not self.marker.exists():
            self.marker.write_text(f"interrupted after {self.n} trials")
            os.kill(os.getpid(), signal.SIGINT)
