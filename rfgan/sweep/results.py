"""What a sweep leaves for people: the trials table (trials.csv, and as text), best_config.json, and plots of
validation SSIM per trial and of Optuna's parameter importances."""

from __future__ import annotations

import csv
import math
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rfgan import storage
from rfgan.checkpoint import SCORE
from rfgan.sweep.runner import trial_config, trial_params
from rfgan.sweep.space import SWITCH_SUFFIX, Range

TRIALS_FILE, BEST_FILE = "trials.csv", "best_config.json"
SCORE_PLOT, IMPORTANCE_PLOT = "trials.png", "param_importances.png"


def _trial_id(result) -> str:
    return (result.metrics or {}).get("trial_id") or Path(result.path).name.removeprefix("trial_")


def summarize(results, space: Mapping[str, Range], out: str) -> list[dict[str, Any]]:
    """trials.csv, best_config.json and the plots in the sweep directory; returns the table's rows, best first."""
    rows, best = [], None
    for r in results:
        if not r.config or "space" not in r.config:
            # Nothing reported: it failed before its first epoch (a resumed sweep restores its error, not its
            # config), or it had not started when the sweep was interrupted.
            if r.error:
                rows.append({"trial_id": _trial_id(r), "status": "ERROR", "error": _first_line(r.error)})
            else:
                rows.append({"trial_id": _trial_id(r), "status": "PENDING"})
            continue
        cfg = trial_config(r.config)
        history = r.metrics_dataframe
        scores = history[SCORE].tolist() if history is not None and SCORE in history else []
        last = r.metrics or {}
        rows.append(
            {
                "trial_id": _trial_id(r),
                "status": "ERROR" if r.error else ("DONE" if last.get("done") else "UNFINISHED"),
                **{k: cfg.get(k) for k in space},
                "epochs": len(scores),
                "best_" + SCORE: max(scores) if scores else None,
                **{k: last.get(k) for k in ("val_psnr", SCORE, "val_pixel_corr", "val_feature_corr")},
                "error": _first_line(r.error),
            }
        )
        if scores and (best is None or max(scores) > best[0]):
            best = (max(scores), cfg)
    rows.sort(key=lambda row: -(row.get("best_" + SCORE) if row.get("best_" + SCORE) is not None else -math.inf))
    # Written locally, then copied: the sweep directory may be on cloud storage.
    root = Path(tempfile.mkdtemp(prefix="rfgan-sweep-"))
    with open(root / TRIALS_FILE, "w", newline="") as f:
        writer = csv.DictWriter(f, max((list(r) for r in rows), key=len, default=["trial_id"]), restval="")
        writer.writeheader()
        writer.writerows(rows)
    if best is not None:
        # The user's base config with the best trial's parameters: trials' own settings (runner.TRIAL_ONLY) are
        # not in it, so `rfgan train --config` trains the winner as the user configured everything else.
        (root / BEST_FILE).write_text(best[1].to_json() + "\n")
    plot_trials(results, root / SCORE_PLOT)
    plot_importances(results, space, root / IMPORTANCE_PLOT)
    storage.upload(root, out)
    shutil.rmtree(root, ignore_errors=True)
    return rows


def _first_line(error: BaseException | None) -> str:
    if error is None:
        return ""
    text = str(error).strip().splitlines()
    # Ray wraps errors; the innermost line naming the cause is the useful one.
    causes = [line for line in text if "Error" in line or "error" in line]
    return (causes[-1] if causes else (text[-1] if text else type(error).__name__))[:200]


def plot_trials(results, path: Path) -> None:
    """Validation SSIM per epoch, one line per trial (ASHA's early stops show as short lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        history = r.metrics_dataframe
        if history is not None and SCORE in history:
            ax.plot(history["epoch"], history[SCORE], marker="o", markersize=3, label=_trial_id(r)[-8:])
    ax.set_xlabel("epoch")
    ax.set_ylabel(SCORE)
    ax.set_title("validation SSIM per trial")
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_importances(results, space: Mapping[str, Range], path: Path) -> None:
    """Optuna's fANOVA parameter importances over the finished trials, from Optuna's own matplotlib plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    study = optuna.create_study(direction="maximize")
    for r in results:
        history = r.metrics_dataframe
        if r.error or history is None or SCORE not in history:
            continue
        params, distributions = {}, {}
        flat = trial_params(r.config)
        for key, rng in space.items():
            if rng.allow_zero:
                on = flat.get(key + SWITCH_SUFFIX, True)
                params[key + SWITCH_SUFFIX] = on
                distributions[key + SWITCH_SUFFIX] = optuna.distributions.CategoricalDistribution([True, False])
                if not on:
                    continue
            if key in flat:
                params[key] = flat[key]
                distributions[key] = (
                    optuna.distributions.IntDistribution(int(rng.low), int(rng.high), log=rng.log)
                    if rng.type == "int"
                    else optuna.distributions.FloatDistribution(rng.low, rng.high, log=rng.log)
                )
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=distributions, value=float(history[SCORE].max()))
        )
    fig, ax = plt.subplots(figsize=(6, 4))
    if len(study.trials) >= 2:
        optuna.visualization.matplotlib.plot_param_importances(study)
        plt.gcf().savefig(path, dpi=100, bbox_inches="tight")
    else:
        ax.text(0.5, 0.5, "parameter importances need at least 2 finished trials", ha="center", va="center")
        ax.axis("off")
        fig.savefig(path, dpi=100)
    plt.close("all")


def table_text(rows: list[dict[str, Any]], space: Mapping[str, Range]) -> str:
    """The trials table as aligned text, for the terminal."""
    cols = ["trial_id", "status", *space, "epochs", "best_" + SCORE, "error"]
    cells = [[_fmt(row.get(c)) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
