"""Hyper-parameter sweeps: Ray Tune + OptunaSearch (TPE) + ASHA over the search space of rfgan.sweep.space.

Each trial is a plain driver function that runs one Ray Train job (`rfgan.run.train.fit`) and forwards its per-epoch
reports to Tune (`TuneReportCallback`), the Train V2 pattern. Trials are ranked by validation SSIM on the whole
validation split: the adversarial losses are not comparable across trials.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow.fs as pafs

from rfgan import storage
from rfgan.checkpoint import SCORE, Accept, check_data_matches, trained_data
from rfgan.config import Config, ConfigError, flatten
from rfgan.data.format import DatasetInfo, check_outside_dataset, read_info
from rfgan.data.rf import RFTable
from rfgan.errors import DataError, UsageError
from rfgan.run.cluster_checks import autoscaler_maximum, check_cluster, grown
from rfgan.run.restarts import fit_restarting
from rfgan.run.train import reads_on_driver, run_paths, train_split_mb
from rfgan.sweep.space import DEFAULT_SPACE, DefineByRun, Range, overrides_from_trial, start_point, validate_space

PARAM_SECTIONS = ("data", "model", "loss", "optim", "run", "perf")
# Settings of the sweep, not of the config it finds, so they are applied to trials only: a trial needs only its best
# checkpoint, and Ray Train never restarts a trial's run itself, because it would restart a diverged one too (a
# diverged or crashed trial is an answer: the sweep goes on without it). The trial driver restarts a run that lost a
# worker or its node instead, up to the base config's run.max_failures times (restarts_on).
TRIAL_ONLY: dict[str, Any] = {"run.max_failures": 0, "run.keep_checkpoints": 1}
# What each trial driver asks of the head node's built-in resource (one in all): a sliver, so that the head holds
# the drivers of every trial a sweep runs at once.
HEAD_SHARE = 0.001
SPACE_FILE = "space.json"
TRIAL_RUN = "train-"  # a trial's Train run is TRIALS_DIR/train-<trial id>


def trial_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's sampled parameters (Tune's config holds them beside the sweep's own entries), as dotted keys."""
    return flatten({k: v for k, v in config.items() if k in PARAM_SECTIONS})


def trial_config(config: Mapping[str, Any]) -> Config:
    """The sweep's base config with a trial's sampled parameters (what best_config.json holds for the best)."""
    space = {k: Range(**v) for k, v in config["space"].items()}
    return Config.from_dict(config["base"]).with_overrides(overrides_from_trial(trial_params(config), space))


def trial_resources() -> dict[str, float]:
    """What a trial driver asks of Ray. It only waits on its Train run, whose workers hold the real resources; it
    runs on the head node, as does the Train controller that Ray Train places on the driver's node, so that losing a
    worker node loses workers only, which restarts_on can restart. Ray's built-in head-node resource rather than a
    custom one: every Ray head has it, with no change to a cluster's manifests. No CPU: cluster heads have none."""
    from ray._common.constants import HEAD_NODE_RESOURCE_NAME

    return {"CPU": 0, HEAD_NODE_RESOURCE_NAME: HEAD_SHARE}


def trial_driver(config: dict[str, Any]) -> None:
    """One Tune trial: one Ray Train run, reporting every epoch to Tune; restarted from its last checkpoint when it
    lost workers. Tune sees one trial throughout (its iterations go on), and an error only when the trial's answer is
    one: it diverged, its config failed, or it lost workers more often than run.max_failures allows."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    base = trial_config(config)
    cfg = base.with_overrides(TRIAL_ONLY)
    trial_id = ray.tune.get_context().get_trial_id()
    # A name from the trial id, not a timestamp: a restarted run and a restored sweep re-enter the same Train run and
    # resume it.
    out = f"{config['trials_dir']}/{TRIAL_RUN}{trial_id}"
    result = fit_restarting(
        cfg,
        config["dataset_path"],
        out,
        budget=base.run.max_failures,
        label=f"trial {trial_id}: its run",
        run_config_kwargs={"callbacks": [TuneReportCallback()]},
        materialize=True,
    )
    if result.error is not None:
        raise result.error


@dataclass(frozen=True)
class SweepSpec:
    """The sweep's own settings; what each trial trains (epochs, workers, their CPUs and GPUs) is the base config."""

    data: str
    out: str  # sweep directory or URI
    trials: int = 20
    max_concurrent: int | None = None  # default: as many as fit in what the cluster can grow to (concurrency)
    seed: int = 0


def concurrency(base: Config, spec: SweepSpec, capacity: Mapping[str, float] | None) -> int:
    """Trials at once: --max-concurrent, else as many as fit in `capacity` (each takes its workers' CPUs and GPUs and
    a CPU for Ray Data's reads), the resources the cluster can grow to (cluster_capacity); every trial when that is
    not known. Tune sees only the trial drivers' sliver of the head: a Train run that does not fit waits for its
    workers, and an autoscaler scales to that demand, up to its own maximum."""
    if spec.max_concurrent:
        return min(spec.max_concurrent, spec.trials)
    if capacity is None:
        return spec.trials
    run = base.run
    per_trial_cpu = run.workers * run.cpus_per_worker + 1
    n = max(1, math.floor(capacity.get("CPU", 0) / per_trial_cpu))
    if run.use_gpu:
        n = min(n, max(1, math.floor(capacity.get("GPU", 0) / (run.workers * run.gpus_per_worker))))
    return min(n, spec.trials)


def cluster_capacity(can_grow: bool) -> dict[str, float] | None:
    """The resources the connected cluster can grow to: those it has when it cannot grow (a local Ray), else the
    autoscaler's maximum where Ray publishes it (what Ray Train checks a worker group against), else None (unknown:
    the autoscaler's own maximum then limits the trials)."""
    import ray

    now = ray.cluster_resources()
    if not can_grow:
        return now
    return grown(now, autoscaler_maximum())


def stored_space(out: str) -> dict[str, Range] | None:
    """The search space the sweep in `out` was started with; None when it holds none."""
    path = storage.join(out, SPACE_FILE)
    if not storage.is_file(path):
        return None
    return {k: Range(**v) for k, v in json.loads(storage.read_text(path)).items()}


def resumed_space(out: str, given: Mapping[str, Range] | None) -> dict[str, Range]:
    """The space of the sweep in `out`, for --resume: the stored one, which `given` (--space) must equal. A sweep
    started before spaces were stored resumes with `given` or the default."""
    stored = stored_space(out)
    if stored is None:
        return dict(given or DEFAULT_SPACE)
    if given is not None and dict(given) != stored:
        raise UsageError(
            f"--space differs from the space the sweep in {out} was started with ({storage.join(out, SPACE_FILE)}); "
            "resume without --space, or start a new sweep with another --out."
        )
    return stored


def check_trials_data(out: str, data: str, dataset: tuple[DatasetInfo, RFTable]) -> None:
    """Before Ray starts: refuse to resume the sweep in `out` on data other than its trials' checkpoints were trained
    on (the dataset re-made in place, other RFs), saying what changed. Otherwise every unfinished trial would fail
    in its workers, one by one, each ending ERROR."""
    trials = storage.join(out, "trials")
    for name in storage.list_dirs(trials):
        trained = trained_data(storage.join(trials, name)) if name.startswith(TRIAL_RUN) else None
        if trained is not None:
            checkpoint, info, rfs = trained
            try:
                check_data_matches(info, rfs, *dataset, data, Accept("sweep"))
            except DataError as e:
                raise DataError(f"--resume: {checkpoint} (trial {name.removeprefix(TRIAL_RUN)}): {e}") from None


def early_stopping(base: Config):
    """ASHA on validation SSIM, keyed on the epoch that every report carries, not on Tune's iteration count: a trial
    that a restored sweep resumes starts again at training_iteration 1 while its Train run goes on at its next
    epoch."""
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        metric=SCORE, mode="max", time_attr="epoch", max_t=base.run.epochs, grace_period=1, reduction_factor=2
    )


LOG_FILE = "tune.log"
# What a sweep folder holds besides what this module writes: Tune's experiment state and the trials' runs.
SWEEP_MARKS = (SPACE_FILE, LOG_FILE, "tuner.pkl")


def is_sweep(out: str) -> bool:
    """Whether `out` holds a sweep that rfgan tune started (its stored space or Tune's saved tuner)."""
    names = storage.file_sizes(out)
    return any(mark in names for mark in SWEEP_MARKS) or any(n.startswith("experiment_state") for n in names)


def check_sweep_target(out: str, resume: bool) -> None:
    """Before anything is written: refuse an --out that is or lies in a dataset, one that holds a sweep when this is
    not --resume (a new sweep there would overwrite its results and mix the two), and a folder of other files."""
    check_outside_dataset(out, "a sweep")
    fs, path = storage.filesystem(out)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.File:
        raise UsageError(f"--out {out} is a file, not a folder; choose another --out.")
    if kind == pafs.FileType.NotFound or not fs.get_file_info(pafs.FileSelector(path)):
        return
    if is_sweep(out):
        if not resume:
            raise UsageError(
                f"--out {out} already holds a sweep; pass --resume to continue it, or choose another --out."
            )
        return
    raise UsageError(
        f"--out {out} already exists and holds other files than a sweep; choose a new or empty folder (rfgan tune "
        "writes trials.csv, best_config.json and the trials' runs there)."
    )


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

    info, rfs = preflight(base, spec.data)
    if resume:
        check_trials_data(spec.out, spec.data, (info, rfs))
    with launch.run_log(spec.out, LOG_FILE, verbose) as log:
        started = launch.init_ray(address, launch.min_cpus(base), dashboard)
        log.after_ray_init()
        try:
            return run_sweep(
                base,
                spec,
                space,
                resume=resume,
                callbacks=None if resume else [TrialLines()],
                verbose=verbose,
                can_grow=started and launch.on_cluster(address),
                info=info,
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
    can_grow: bool = False,
    info: DatasetInfo | None = None,
):
    """Run (or, with `resume`, continue) a sweep of `base` on the connected Ray cluster; returns Tune's ResultGrid.
    `callbacks` are Ray Tune callbacks for a new sweep: a resumed one runs with those it started with, which Tune
    keeps in the sweep's state. Tune's status tables only when `verbose`. `can_grow`: the cluster may gain nodes
    (cluster_capacity); a new sweep stores its space in the sweep directory (resumed_space). `info`: the dataset's
    metadata when the caller has read it already."""
    import optuna
    import ray.tune
    from ray.tune.search.optuna import OptunaSearch

    validate_space(space, base)
    info = info or read_info(spec.data)
    # Trials write their runs from any node, and stream their data there unless their drivers read it.
    streams = not reads_on_driver(base, info)
    check_cluster(base, spec.data, {"--out": spec.out}, streams=streams, split_mb=train_split_mb(info))
    storage_path, name = run_paths(spec.out)
    sweep_dir = storage.absolute(spec.out)
    trainable = ray.tune.with_resources(trial_driver, trial_resources())
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
    stored = {k: asdict(v) for k, v in space.items()}
    storage.write_bytes(storage.join(sweep_dir, SPACE_FILE), (json.dumps(stored, indent=1) + "\n").encode())
    tuner = ray.tune.Tuner(
        trainable,
        param_space={
            "base": base.to_dict(),
            "space": stored,
            # Absolute: Tune runs each trial in its own working directory.
            "dataset_path": storage.absolute(spec.data),
            "trials_dir": f"{sweep_dir}/trials",
        },
        tune_config=ray.tune.TuneConfig(
            search_alg=search,
            scheduler=early_stopping(base),
            num_samples=spec.trials,
            # Kept in the sweep's state: a resumed sweep runs as many at once.
            max_concurrent_trials=concurrency(base, spec, cluster_capacity(can_grow)),
            trial_dirname_creator=trial_dirname,
            # A finished trial's driver process takes the next trial: its imports (torch, rfgan) are paid once per
            # concurrent trial, not once per trial. Every trial asks for the same resources, so any can take it.
            reuse_actors=True,
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
