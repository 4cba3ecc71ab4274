"""Errors a user can act on: each message is one line that says what is wrong, where, and how to fix it.

Every user-facing failure derives from RfganError; `rfgan` prints its message on one line and exits 2. The extra
bases (ValueError, FileNotFoundError, RuntimeError) keep each error catchable by the generic type it also is.
"""

from __future__ import annotations

import re


class RfganError(Exception):
    """The root of rfgan's user-facing errors."""


class UsageError(RfganError, ValueError):
    """A command line that cannot work as given (conflicting or malformed flags)."""


class ConfigError(RfganError, ValueError):
    """An impossible or unknown configuration value."""


class DataError(RfganError, ValueError):
    """Bad input data: a dataset, an RF table, arrays given to ingest, a checkpoint that does not fit."""


class MissingVGGWeightsError(RfganError, FileNotFoundError):
    """The VGG19 weights file is absent or does not hold a state dict."""


class MissingFeatureWeightsError(RfganError, FileNotFoundError):
    """The ImageNet weights of a feature net of the standard metrics (AlexNet, VGG19) are absent and cannot be
    downloaded."""


class TrainingDiverged(RfganError, RuntimeError):
    """A loss became NaN or infinite: the run stops rather than train on garbage."""


def user_error(exc: BaseException) -> BaseException | None:
    """The error to show a user for `exc`: an RfganError or OSError, found also inside the wrappers that Ray puts
    around a task's exception (RayTaskError's `cause`, Ray Data's UserCodeException as `__cause__`); else None,
    an internal error whose traceback is the useful report."""
    seen: set[int] = set()
    text = str(exc)
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (RfganError, OSError)):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__
    # A chain that crossed processes keeps only its text (pickling drops __cause__: Ray Data's UserCodeException
    # arrives without the error it wraps), and the text ends with the worker's traceback: its last line of ours.
    found = re.findall(r"^rfgan\.errors\.(\w+): (.+)$", text, flags=re.M)
    if found and isinstance(globals().get(found[-1][0]), type) and issubclass(globals()[found[-1][0]], RfganError):
        return globals()[found[-1][0]](found[-1][1])
    return None


def rank_failures(exc: BaseException) -> dict[int, BaseException]:
    """What each failed rank of a Ray Train run died of, by rank: empty unless `exc` is Train's worker-group error.
    Train wraps a rank that stopped answering in a health-check error around what killed it; this unwraps it."""
    failures = getattr(exc, "worker_failures", None) or {}
    return {r: getattr(e, "health_check_failure", None) or e for r, e in failures.items()}


def wrapped_errors(exc: BaseException | None):
    """`exc` and every error Ray keeps inside it: each failed rank's (rank_failures), a controller's failure, a
    worker's own exception (UserExceptionWithTraceback keeps it privately), a task error's `cause`, `__cause__`."""
    seen, stack = set(), [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += list(rank_failures(e).values())
        stack += [getattr(e, name, None) for name in ("controller_failure", "_base_exc", "cause", "__cause__")]


def failure_reason(exc: BaseException) -> str:
    """One line saying why a run failed: rfgan's own reason if one is inside (user_error); for Ray Train's worker
    group, what the first failed rank died of (a lost node, a killed process, an error), whose text otherwise sits
    below a header line that says only "Training failed due to worker errors:"."""
    reason = user_error(exc)
    if reason is None:  # one of rfgan's own, deeper: a rank's Ray Data read that met bad data, say
        reason = next((r for e in wrapped_errors(exc) if isinstance(r := user_error(e), RfganError)), None)
    if reason is not None:
        return _first_line(str(reason))
    failures = rank_failures(exc)
    if failures:
        # A rank whose process died (Ray's RayActorError: a lost node, a kill) before one that failed as a result
        # (the collective it was in broke); then the lowest.
        rank = min(failures, key=lambda r: (not hasattr(failures[r], "actor_id"), r))
        more = f" (and {len(failures) - 1} more rank(s))" if len(failures) > 1 else ""
        return f"rank {rank}: {type(failures[rank]).__name__}: {_first_line(str(failures[rank]))}{more}"
    if getattr(exc, "actor_init_failed", False):
        # Ray's text: "The actor died because of an error raised in its creation task, ray::Class.__init__() (…)",
        # the traceback, and last the exception's own line.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        where = re.search(r"ray::(\w+)\.__init__", str(exc))
        actor = where.group(1) if where else "an actor"
        return f"{actor} could not start: {lines[-1] if lines else type(exc).__name__}"
    controller = getattr(exc, "controller_failure", None)  # ray.train's ControllerError: its header says only that
    if controller is not None:
        return f"Ray Train's controller failed: {type(controller).__name__}: {_first_line(str(controller))}"
    return _first_line(str(exc)) or type(exc).__name__


def _first_line(text: str) -> str:
    """The first line of `text` with words, without the colour codes Ray puts in its tasks' names."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return next((line.strip() for line in text.splitlines() if line.strip()), "")
