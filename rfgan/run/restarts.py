"""When a Ray Train run is run again from its last checkpoint: one rule for `rfgan train` and for sweep trials.

Only a run that lost a process or a node is restarted. Ray Train's own retry (FailureConfig.max_failures) restarts
after any worker error, so a run that diverged, met bad data or a bad setting was run again to the same end, up to
run.max_failures times, before its reason reached the user; rfgan therefore asks Ray for no retries of its own and
restarts here instead. Preemptions stay with Ray Train (run.max_preemption_failures), which tells them apart from
plain losses by what the cloud announced before the node went.
"""

from __future__ import annotations

import itertools
from typing import Any

from rfgan.config import Config
from rfgan.errors import RfganError, user_error, wrapped_errors
from rfgan.run.console import note
from rfgan.run.train import TrainResult, fit


def lost_workers(error: BaseException) -> bool:
    """Whether a Train run failed because Ray lost a process or a node (a worker killed, its node gone, an object
    that lived there), not because of what it computed: then running it again from its checkpoint can succeed. Any
    such loss counts, as Ray Train's own preemption rule does: when one rank dies, the others fail with collateral
    errors."""
    import ray.exceptions

    lost = (
        ray.exceptions.RayActorError,  # ActorDiedError, ActorUnavailableError
        ray.exceptions.NodeDiedError,
        ray.exceptions.WorkerCrashedError,
        ray.exceptions.LocalRayletDiedError,
        ray.exceptions.ObjectLostError,
    )
    return any(isinstance(e, lost) for e in wrapped_errors(error))


def restarts_on(error: BaseException | None, restarts: int, budget: int) -> bool:
    """Whether a run that ended with `error` is run again, having been restarted `restarts` times of `budget`
    (run.max_failures, -1 for no limit): when it lost workers and no rank stopped on one of rfgan's own errors
    (a rank that diverged, or met bad data, would do so again)."""
    if error is None or not lost_workers(error):
        return False
    if isinstance(user_error(error), RfganError) or any(isinstance(e, RfganError) for e in wrapped_errors(error)):
        return False
    return budget == -1 or restarts < budget


def fit_restarting(
    cfg: Config, data: str, out: str, *, budget: int | None = None, label: str = "the run", **fit_kwargs: Any
) -> TrainResult:
    """fit(), run again from its last checkpoint in `out` while restarts_on says so, within `budget` restarts
    (default: cfg.run.max_failures)."""
    budget = cfg.run.max_failures if budget is None else budget
    for restarts in itertools.count():
        result = fit(cfg, data, out, **fit_kwargs)
        if not restarts_on(result.error, restarts, budget):
            return result
        note(
            f"{label} lost a worker or its node; restarting it from its last checkpoint "
            f"(restart {restarts + 1} of {'unlimited' if budget == -1 else budget})"
        )
    raise AssertionError("unreachable")
