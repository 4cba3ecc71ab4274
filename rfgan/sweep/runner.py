"""Hyper-parameter sweeps: Ray Tune + OptunaSearch (TPE) + ASHA over the search space of rfgan.sweep.space.

Each trial is a plain driver function that runs one Ray Train job (`rfgan.run.train.fit`) and forwards its per-epoch
reports to Tune (`TuneReportCallback`), the Train V2 pattern. Trials are ranked by validation SSIM on the whole
validation split: the adversarial losses are not comparable across trials.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rfgan import storage
from rfgan.checkpoint import SCORE
from rfgan.config import Config, ConfigError, flatten
from rfgan.run.train import fit, run_paths
from rfgan.sweep.space import DefineByRun, Range, overrides_from_trial, start_point, validate_space

PARAM_SECTIONS = ("data", "model", "loss", "optim", "run", "perf")
# Settings of the sweep, not of the config it finds, so they are applied to trials only: a diverged or crashed trial
# is an answer and is not retried (the sweep goes on without it), and a trial needs only its best checkpoint.
TRIAL_ONLY: dict[str, Any] = {"run.max_failures": 0, "run.keep_checkpoints": 1}


def trial_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's sampled parameters (Tune's config holds them beside the sweep's own entries), as dotted keys."""
    return flatten({k: v for k, v in config.items() if k in PARAM_SECTIONS})


def trial_config(config: Mapping[str, Any]) -> Config:
    """The sweep's base config with a trial's sampled parameters (what best_config.json holds for the best)."""
    space = {k: Range(**v) for k, v in config["space"].items()}
    return Config.from_dict(config["base"]).with_overrides(overrides_from_trial(trial_params(config), space))


def trial_driver(config: dict[str, Any]) -> None:
    """One Tune trial: one Ray Train run, reporting every epoch to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = trial_config(config).with_overrides(TRIAL_ONLY)
    trial_id = ray.tune.get_context().get_trial_id()
    # A name from the trial id, not a timestamp: a restored sweep re-enters the same Train run and resumes it.
    out = f"{config['trials_dir']}/train-{trial_id}"
    result = fit(
        cfg, config["dataset_path"], out, run_config_kwargs={"callbacks": [TuneReportCallback()]}, materialize=True
    )
    if result.error is not None:
        raise result.error


@dataclass(frozen=True)
class SweepSpec:
    """The sweep's own settings; what each trial trains (epochs, workers, their CPUs and GPUs) is the base config."""

    data: str
    out: str  # sweep directory or URI
    trials: int = 20
    max_concurrent: int | None = None  # default: as many as the cluster's resources allow
    seed: int = 0


def concurrency(base: Config, spec: SweepSpec, resources: Mapping[str, float]) -> int:
    """Trials that fit at once: CPUs (workers + one for Ray Data's reads) and GPUs of the cluster."""
    run = base.run
    per_trial_cpu = run.workers * run.cpus_per_worker + 1
    n = max(1, math.floor(resources.get("CPU", 1) / per_trial_cpu))
    if run.use_gpu:
        n = min(n, max(1, math.floor(resources.get("GPU", 0) / (run.workers * run.gpus_per_worker))))
    if spec.max_concurrent:
        n = min(n, spec.max_concurrent)
    return min(n, spec.trials)


LOG_FILE = "tune.log"


def sweep(
    base: Config,
    spec: SweepSpec,
    space: Mapping[str, Range],
    *,
    resume: bool = False,
    address: str | None = None,
    verbose: bool = False,
    dashboard: bool = False,
):
    """`rfgan tune`: check the data, start or connect to Ray, run (or continue) the sweep with a line per finished
    trial on the terminal, Ray's output in the sweep's log file (and on the terminal too when `verbose`); returns
    Tune's ResultGrid."""
    from rfgan.run import launch
    from rfgan.run.train import preflight
    from rfgan.sweep.progress import TrialLines

    preflight(base, spec.data)
    with launch.run_log(spec.out, LOG_FILE, verbose) as log:
        started = launch.init_ray(address, launch.min_cpus(base), dashboard)
        log.after_ray_init()
        try:
            return run_sweep(
                base, spec, space, resume=resume, callbacks=None if resume else [TrialLines()], verbose=verbose
            )
        finally:
            if started:
                import ray

                ray.shutdown()


def run_sweep(
    base: Config,
    spec: SweepSpec,
    space: Mapping[str, Range],
    resume: bool = False,
    callbacks: Sequence[Any] | None = None,
    verbose: bool = False,
):
    """Run (or, with `resume`, continue) a sweep of `base` on the connected Ray cluster; returns Tune's ResultGrid.
    `callbacks` are Ray Tune callbacks for a new sweep: a resumed one runs with those it started with, which Tune
    keeps in the sweep's state. Tune's status tables only when `verbose`."""
    import optuna
    import ray
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    validate_space(space, base)
    storage_path, name = run_paths(spec.out)
    sweep_dir = storage.absolute(spec.out)
    # The driver function only waits on its Train run; its workers hold the real resources.
    trainable = ray.tune.with_resources(trial_driver, {"CPU": 0.01})
    if resume:
        if callbacks:
            raise ValueError("callbacks are for a new sweep; Tune restores a resumed sweep with its own")
        if not ray.tune.Tuner.can_restore(sweep_dir):
            raise ConfigError(f"{spec.out} holds no sweep to resume; start one without --resume.")
        # Unfinished trials continue (their Train runs resume from their checkpoints); finished and errored
        # ones are kept as they are.
        tuner = ray.tune.Tuner.restore(sweep_dir, trainable=trainable, resume_unfinished=True, resume_errored=False)
        return tuner.fit()
    # metric/mode go to the searcher and the scheduler themselves: with a define-by-run space, Tune cannot set
    # them on the searcher from TuneConfig.
    search = OptunaSearch(
        space=DefineByRun(space),
        metric=SCORE,
        mode="max",
        points_to_evaluate=[start_point(space, base)],
        sampler=optuna.samplers.TPESampler(seed=spec.seed),
    )
    scheduler = ASHAScheduler(
        metric=SCORE,
        mode="max",
        time_attr="training_iteration",
        max_t=base.run.epochs,
        grace_period=1,
        reduction_factor=2,
    )
    tuner = ray.tune.Tuner(
        trainable,
        param_space={
            "base": base.to_dict(),
            "space": {k: asdict(v) for k, v in space.items()},
            "dataset_path": spec.data,
            "trials_dir": f"{sweep_dir}/trials",
        },
        tune_config=ray.tune.TuneConfig(
            search_alg=search,
            scheduler=scheduler,
            num_samples=spec.trials,
            max_concurrent_trials=concurrency(base, spec, ray.cluster_resources()),
            trial_dirname_creator=trial_dirname,
        ),
        run_config=ray.tune.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=ray.tune.FailureConfig(max_failures=0),
            callbacks=list(callbacks or []),
            verbose=None if verbose else 0,
        ),
    )
    return tuner.fit()


def trial_dirname(trial) -> str:
    # Tune's default name spells out the whole (large) config.
    return f"trial_{trial.trial_id}"
