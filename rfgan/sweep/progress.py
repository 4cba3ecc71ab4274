"""`rfgan tune`'s terminal: one line per finished trial (Tune's own status tables stay in the sweep's log file)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray.tune import Callback

from rfgan.checkpoint import SCORE
from rfgan.run.console import say
from rfgan.sweep.runner import trial_params


def trial_line(trial_id: str, status: str, last: Mapping[str, Any], params: Mapping[str, Any], epochs: int) -> str:
    """A finished trial in one line: how it ended, its last validation SSIM and the parameters it tried."""
    epoch = last.get("epoch")
    if status == "ERROR":
        ended = f"failed after {epoch or 0} epoch(s)"
    elif epoch is not None and epoch < epochs:
        ended = f"stopped early after {epoch}/{epochs} epochs"
    else:
        ended = f"done, {epoch}/{epochs} epochs"
    score = f"{SCORE} {last[SCORE]:.4g}" if last.get(SCORE) is not None else f"no {SCORE}"
    tried = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))
    return f"trial {trial_id}: {ended}, {score}  ({tried})"


class TrialLines(Callback):
    """Says each trial's end on the terminal. Kept in a sweep's saved state, so a resumed sweep says them too."""

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        say(_line(trial, "DONE"))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        say(_line(trial, "ERROR"))


def _line(trial, status: str) -> str:
    config = trial.config or {}
    epochs = config.get("base", {}).get("run", {}).get("epochs", 0)
    return trial_line(trial.trial_id, status, trial.last_result or {}, trial_params(config), epochs)
