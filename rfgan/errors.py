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
