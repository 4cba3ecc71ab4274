"""The hyper-parameter search space: defined once, next to the config it searches, and editable from a file.

A space maps config fields (dotted keys) to ranges::

    loss.lambda_adv: {low: 0.001, high: 1.0, log: true, allow_zero: true}   # may also be switched off (0)
    optim.d_steps:   {low: 1, high: 3, type: int}

`allow_zero` adds an on/off choice before the range, so a log-uniform weight can still reach exactly 0: for the
adversarial weight, that lets the non-adversarial model compete in the same sweep.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rfgan import parse, storage
from rfgan.config import Config, ConfigError, flatten

SEP = "/"  # Ray Tune unflattens "/"-separated names into nested dicts: "loss/lambda_adv" → {"loss": {...}}
SWITCH_SUFFIX = "_on"


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = True
    type: str = "float"  # or "int"
    allow_zero: bool = False


DEFAULT_SPACE: dict[str, Range] = {
    "loss.lambda_adv": Range(1e-3, 2.0, allow_zero=True),
    # Switchable like the adversarial weight: a preset without the VGG loss (tiny) starts the sweep as itself rather
    # than with a VGG19 forward and backward in every step, and the sweep can weigh the loss against its cost.
    "loss.lambda_vgg": Range(0.1, 10.0, allow_zero=True),
    "loss.lambda_pix": Range(0.1, 100.0),
    "optim.lr_g": Range(1e-5, 3e-3),
    "optim.lr_d": Range(1e-5, 3e-3),
    "optim.beta1": Range(0.0, 0.9, log=False),
    "optim.d_steps": Range(1, 3, log=False, type="int"),
}


def load_space(path: str | os.PathLike | None) -> dict[str, Range]:
    """The default space, or the one in a JSON/YAML file, local or a URI (which replaces it whole)."""
    if path is None:
        return dict(DEFAULT_SPACE)
    raw = parse.loads(storage.read_bytes(path), str(path))
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"{path}: a search space is a non-empty mapping of config keys to ranges")
    space = {}
    for key, spec in raw.items():
        try:
            space[key] = Range(**spec)
        except TypeError as e:
            raise ConfigError(
                f"{path}: {key}: {e}; a range has low, high and optionally log, type, allow_zero"
            ) from None
        _check_types(space[key], f"{path}: {key}")
    return space


def _check_types(r: Range, where: str) -> None:
    """A range's fields of the right kinds (third audit: a bound "1e-4" or nan was a traceback, and log: "no" a
    log range, since any string is true)."""
    for name in ("low", "high"):
        value = getattr(r, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: {name} must be a finite number, not {value!r}")
    for name in ("log", "allow_zero"):
        if not isinstance(getattr(r, name), bool):
            raise ConfigError(f"{where}: {name} must be true or false, not {getattr(r, name)!r}")


def validate_space(space: Mapping[str, Range], base: Config) -> None:
    """Every key is a config field, every range is possible, and both ends give a valid config."""
    for key, r in space.items():
        if r.type not in ("float", "int"):
            raise ConfigError(f"search space {key}: type must be 'float' or 'int', not {r.type!r}")
        if not r.low < r.high or (r.log and r.low <= 0):
            raise ConfigError(
                f"search space {key}: need low < high (and low > 0 for log ranges), got [{r.low}, {r.high}]"
            )
        for value in (r.low, r.high) + ((0,) if r.allow_zero else ()):
            base.with_overrides({key: int(value) if r.type == "int" else value})


class DefineByRun:
    """An Optuna define-by-run function for OptunaSearch (the on/off switches are conditional, which needs
    define-by-run). A class rather than a closure: Tune pickles the searcher with its experiment state."""

    def __init__(self, space: Mapping[str, Range]):
        self.space = dict(space)

    def __call__(self, trial) -> None:
        for key, r in self.space.items():
            name = key.replace(".", SEP)
            if r.allow_zero and not trial.suggest_categorical(name + SWITCH_SUFFIX, [True, False]):
                continue
            if r.type == "int":
                trial.suggest_int(name, int(r.low), int(r.high), log=r.log)
            else:
                trial.suggest_float(name, r.low, r.high, log=r.log)


def start_point(space: Mapping[str, Range], base: Config) -> dict[str, Any]:
    """The preset's own values as Optuna parameters (clipped into the ranges): the sweep's first trial."""
    point: dict[str, Any] = {}
    for key, r in space.items():
        name, value = key.replace(".", SEP), base.get(key)
        if r.allow_zero:
            point[name + SWITCH_SUFFIX] = value != 0
            if value == 0:
                continue
        value = min(max(value, r.low), r.high)
        point[name] = int(value) if r.type == "int" else float(value)
    return point


def overrides_from_trial(params: Mapping[str, Any], space: Mapping[str, Range]) -> dict[str, Any]:
    """A trial's parameters (nested, as Tune hands them over, or dotted) → dotted config overrides."""
    flat = flatten(params)
    overrides = {}
    for key, r in space.items():
        if r.allow_zero and not flat.get(key + SWITCH_SUFFIX, True):
            overrides[key] = 0.0
        elif key in flat:
            overrides[key] = flat[key]
    return overrides
