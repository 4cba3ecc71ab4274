"""When a Ray Train run is run again from its last checkpoint: one rule for `rfgan train` and for sweep trials.

Only a run that lost a process or a node is restarted. Ray Train's own retry (FailureConfig.max_failures) restarts
after any worker error, so a run that diverged, met bad data or a bad setting was run again to the same end, up to
run.max_failures times, before its reason reached the user; rfgan therefore asks Ray for no retries of its own and
restarts here instead. Preemptions stay with Ray Train (run.max_preemption_failures), which tells them apart from
plain losses by what the cloud announced before the node went.
"""

from __future__ import annotations

import time
from typing import Any

from rfgan.config import Config
from rfgan.errors import RfganError, user_error, wrapped_errors
from rfgan.run.cluster_checks import on_every_node
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
    # An actor whose constructor raised was not lost: it would raise again.
    return any(isinstance(e, lost) and not getattr(e, "actor_init_failed", False) for e in wrapped_errors(error))


def restarts_on(error: BaseException | None, restarts: int, budget: int) -> bool:
    """Whether a run that ended with `error` is run again, having been restarted `restarts` times of `budget`
    (run.max_failures, -1 for no limit): when it lost workers and no rank stopped on one of rfgan's own errors
    (a rank that diverged, or met bad data, would do so again)."""
    if error is None or not lost_workers(error):
        return False
    if isinstance(user_error(error), RfganError) or any(isinstance(e, RfganError) for e in wrapped_errors(error)):
        return False
    return budget == -1 or restarts < budget


def settle_nodes(timeout_s: float = 120.0) -> list[str]:
    """Wait until Ray knows the fate of every node it lists as alive: each either runs a probe or is declared dead
    (its probe then fails). A node whose raylet was killed stays listed as alive, with its resources free, until
    Ray's health checks give up on it (tens of seconds); a restart in that window places ranks on it and loses
    them again, spending the restart budget on one loss. Returns the ids of nodes still unsettled at `timeout_s`."""
    import ray

    @ray.remote(num_cpus=0, max_retries=0)
    def probe() -> None:
        return None

    return on_every_node(probe, timeout_s=timeout_s)[1]


def fit_restarting(
    cfg: Config, data: str, out: str, *, budget: int | None = None, label: str = "the run", **fit_kwargs: Any
) -> TrainResult:
    """fit(), run again from its last checkpoint in `out` while restarts_on says so, within `budget` restarts
    (default: cfg.run.max_failures)."""
    budget = cfg.run.max_failures if budget is None else budget
    restarts = 0
    while True:
        result = fit(cfg, data, out, **fit_kwargs)
        if not restarts_on(result.error, restarts, budget):
            return result
        restarts += 1
        note(
            f"{label} lost a worker or its node; restarting it from its last checkpoint "
            f"(restart {restarts} of {'unlimited' if budget == -1 else budget}) once Ray has settled which nodes "
            "are gone"
        )
        t0 = time.monotonic()
        unsettled = settle_nodes()
        if unsettled:
            note(f"{len(unsettled)} node(s) still unanswered after {time.monotonic() - t0:.0f} s; restarting anyway")
