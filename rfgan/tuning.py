"""Hyper-parameter sweeps: Ray Tune + OptunaSearch (TPE) + ASHA over the search space of rfgan.search.

Each trial is a plain driver function that runs one Ray Train job (`rfgan.train.fit`) and forwards its per-epoch
reports to Tune (`TuneReportCallback`), the Train V2 pattern. Trials are ranked by validation SSIM on the whole
validation split: the adversarial losses are not comparable across trials.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import pyarrow.fs as pafs

from rfgan.checkpoint import SCORE
from rfgan.config import Config, ConfigError
from rfgan.data import filesystem
from rfgan.search import (SEP, SWITCH_SUFFIX, DefineByRun, Range, overrides_from_trial, start_point,
                          validate_space)
from rfgan.train import fit, run_paths

TRIALS_FILE, BEST_FILE = "trials.csv", "best_config.json"
SCORE_PLOT, IMPORTANCE_PLOT = "trials.png", "param_importances.png"
PARAM_SECTIONS = ("data", "model", "loss", "optim", "run")


class TrialFault(RuntimeError):
    """Raised by the test-only fault hook."""


def trial_config(config: Mapping[str, Any]) -> Config:
    """The Config a trial trains: the sweep's base with the trial's sampled parameters."""
    space = {k: Range(**v) for k, v in config["space"].items()}
    params = {k: v for k, v in config.items() if k in PARAM_SECTIONS}
    return Config.from_dict(config["base"]).with_overrides(overrides_from_trial(params, space))


def trial_driver(config: dict[str, Any]) -> None:
    """One Tune trial: one Ray Train run, reporting every epoch to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    marker = config.get("fault_marker")
    if marker and not os.path.exists(marker):
        Path(marker).write_text("raised once")
        raise TrialFault("test fault: this trial raises on purpose")
    cfg = trial_config(config)
    trial_id = ray.tune.get_context().get_trial_id()
    # A name from the trial id, not a timestamp: a restored sweep re-enters the same Train run and resumes it.
    out = f"{config['trials_dir']}/train-{trial_id}"
    result = fit(cfg, config["dataset_path"], out, run_config_kwargs={"callbacks": [TuneReportCallback()]},
                 materialize=True)
    if result.error is not None:
        raise result.error


@dataclass(frozen=True)
class SweepSpec:
    data: str
    out: str  # sweep directory or URI
    trials: int = 20
    epochs: int = 10
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_concurrent: int | None = None  # default: as many as the cluster's resources allow
    seed: int = 0


def concurrency(spec: SweepSpec, resources: Mapping[str, float]) -> int:
    """Trials that fit at once: CPUs (workers + one for Ray Data's reads) and GPUs of the cluster."""
    per_trial_cpu = spec.workers_per_trial * spec.cpus_per_worker + 1
    n = max(1, math.floor(resources.get("CPU", 1) / per_trial_cpu))
    if spec.gpus_per_worker > 0:
        n = min(n, max(1, math.floor(resources.get("GPU", 0) / (spec.workers_per_trial * spec.gpus_per_worker))))
    if spec.max_concurrent:
        n = min(n, spec.max_concurrent)
    return min(n, spec.trials)


def sweep_base(base: Config, spec: SweepSpec) -> Config:
    # Trials are not retried: a diverged or crashed trial is an answer, and the sweep goes on without it.
    return base.with_overrides({"run.epochs": spec.epochs, "run.workers": spec.workers_per_trial,
                                "run.cpus_per_worker": spec.cpus_per_worker,
                                "run.use_gpu": spec.gpus_per_worker > 0,
                                "run.gpus_per_worker": spec.gpus_per_worker or 1.0, "run.max_failures": 0,
                                "run.keep_checkpoints": 1})


def _interrupt_after(n: int):
    """Test-only: a Tune callback that interrupts the sweep (SIGINT, as Ctrl-C does) once n trials completed."""
    import signal

    from ray.tune import Callback

    class InterruptAfter(Callback):
        def __init__(self) -> None:
            self.completed = 0

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self.completed += 1
            if self.completed == n:
                os.kill(os.getpid(), signal.SIGINT)

    return InterruptAfter()


def run_sweep(base: Config, spec: SweepSpec, space: Mapping[str, Range], resume: bool = False,
              fault_marker: str | None = None, interrupt_after: int | None = None):
    """Run (or, with `resume`, continue) a sweep on the connected Ray cluster; returns Tune's ResultGrid.
    `fault_marker` and `interrupt_after` are test-only hooks (a trial that raises once; an interrupted sweep)."""
    import optuna
    import ray
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    cfg = sweep_base(base, spec)
    validate_space(space, cfg)
    storage_path, name = run_paths(spec.out)
    sweep_dir = spec.out if "://" in spec.out else str(Path(spec.out).absolute())
    # The driver function only waits on its Train run; its workers hold the real resources.
    trainable = ray.tune.with_resources(trial_driver, {"CPU": 0.01})
    if resume:
        if not ray.tune.Tuner.can_restore(sweep_dir):
            raise ConfigError(f"{spec.out} holds no sweep to resume; start one without --resume.")
        # Unfinished trials continue (their Train runs resume from their checkpoints); finished and errored
        # ones are kept as they are.
        tuner = ray.tune.Tuner.restore(sweep_dir, trainable=trainable, resume_unfinished=True,
                                       resume_errored=False)
        return tuner.fit()
    # metric/mode go to the searcher and the scheduler themselves: with a define-by-run space, Tune cannot set
    # them on the searcher from TuneConfig.
    search = OptunaSearch(space=DefineByRun(space), metric=SCORE, mode="max",
                          points_to_evaluate=[start_point(space, cfg)],
                          sampler=optuna.samplers.TPESampler(seed=spec.seed))
    scheduler = ASHAScheduler(metric=SCORE, mode="max", time_attr="training_iteration", max_t=spec.epochs,
                              grace_period=1, reduction_factor=2)
    param_space = {"base": cfg.to_dict(), "space": {k: asdict(v) for k, v in space.items()},
                   "dataset_path": spec.data,
                   "trials_dir": f"{sweep_dir}/trials"}
    if fault_marker:
        param_space["fault_marker"] = fault_marker
    tuner = ray.tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=ray.tune.TuneConfig(search_alg=search, scheduler=scheduler, num_samples=spec.trials,
                                        max_concurrent_trials=concurrency(spec, ray.cluster_resources()),
                                        trial_dirname_creator=trial_dirname),
        run_config=ray.tune.RunConfig(name=name, storage_path=storage_path,
                                      failure_config=ray.tune.FailureConfig(max_failures=0),
                                      callbacks=[_interrupt_after(interrupt_after)] if interrupt_after else None),
    )
    return tuner.fit()


def trial_dirname(trial) -> str:
    # Tune's default name spells out the whole (large) config.
    return f"trial_{trial.trial_id}"


def _trial_id(result) -> str:
    return (result.metrics or {}).get("trial_id") or Path(result.path).name.removeprefix("trial_")


def summarize(results, space: Mapping[str, Range], out: str) -> list[dict[str, Any]]:
    """trials.csv, best_config.json and the plots in the sweep directory; returns the table's rows, best first."""
    rows, best = [], None
    for r in results:
        if not r.config or "space" not in r.config:  # interrupted before it started: nothing to show yet
            rows.append({"trial_id": _trial_id(r), "status": "PENDING"})
            continue
        cfg = trial_config(r.config)
        history = r.metrics_dataframe
        scores = history[SCORE].tolist() if history is not None and SCORE in history else []
        last = r.metrics or {}
        rows.append({
            "trial_id": _trial_id(r),
            "status": "ERROR" if r.error else ("DONE" if last.get("done") else "UNFINISHED"),
            **{k: cfg_value(cfg, k) for k in space},
            "epochs": len(scores), "best_" + SCORE: max(scores) if scores else None,
            **{k: last.get(k) for k in ("val_psnr", SCORE, "val_pixel_corr", "val_feature_corr")},
            "error": _first_line(r.error)})
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
        # What was trained, minus the sweep's own settings (no retries, one checkpoint kept).
        best_cfg = replace(best[1], run=replace(best[1].run, max_failures=Config().run.max_failures,
                                                keep_checkpoints=Config().run.keep_checkpoints))
        (root / BEST_FILE).write_text(best_cfg.to_json() + "\n")
    plot_trials(results, root / SCORE_PLOT)
    plot_importances(results, space, root / IMPORTANCE_PLOT)
    fs, dest = filesystem(out)
    fs.create_dir(dest, recursive=True)
    pafs.copy_files(str(root), dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    shutil.rmtree(root, ignore_errors=True)
    return rows


def cfg_value(cfg: Config, key: str) -> Any:
    section, field = key.split(".", 1)
    return getattr(getattr(cfg, section), field)


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
        flat = {k.replace(SEP, "."): v for k, v in _flatten_params(r.config).items()}
        for key, rng in space.items():
            if rng.allow_zero:
                on = flat.get(key + SWITCH_SUFFIX, True)
                params[key + SWITCH_SUFFIX] = on
                distributions[key + SWITCH_SUFFIX] = optuna.distributions.CategoricalDistribution([True, False])
                if not on:
                    continue
            if key in flat:
                params[key] = flat[key]
                distributions[key] = (optuna.distributions.IntDistribution(int(rng.low), int(rng.high), log=rng.log)
                                      if rng.type == "int" else
                                      optuna.distributions.FloatDistribution(rng.low, rng.high, log=rng.log))
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions,
                                                  value=float(history[SCORE].max())))
    fig, ax = plt.subplots(figsize=(6, 4))
    if len(study.trials) >= 2:
        optuna.visualization.matplotlib.plot_param_importances(study)
        plt.gcf().savefig(path, dpi=100, bbox_inches="tight")
    else:
        ax.text(0.5, 0.5, "parameter importances need at least 2 finished trials", ha="center", va="center")
        ax.axis("off")
        fig.savefig(path, dpi=100)
    plt.close("all")


def _flatten_params(config: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for section in PARAM_SECTIONS:
        for k, v in (config.get(section) or {}).items():
            out[f"{section}.{k}"] = v
    return out


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

