"""Sweeps with the real Ray Tune, OptunaSearch (TPE) and ASHA on a real local Ray."""

import csv
import json
import os
import re

import pytest
import yaml
from conftest import SMALL_NETS, one_line_error, set_flags, tree

from rfgan.cli import main
from rfgan.config import ConfigError, preset
from rfgan.run.artifacts import read_metrics_csv
from rfgan.sweep.space import (
    DEFAULT_SPACE,
    DefineByRun,
    Range,
    load_space,
    overrides_from_trial,
    start_point,
    validate_space,
)

SMALL = SMALL_NETS
SPACE = {
    "loss.lambda_adv": {"low": 0.001, "high": 1.0, "allow_zero": True},
    "loss.lambda_pix": {"low": 1.0, "high": 30.0},
    "optim.lr_g": {"low": 1e-4, "high": 3e-3},
    "optim.lr_d": {"low": 1e-5, "high": 1e-3},
    "optim.beta1": {"low": 0.0, "high": 0.9, "log": False},
}


def test_default_space_fits_every_preset_and_starts_at_its_defaults():
    for name in ("default", "reference", "rfmasked", "tiny"):
        validate_space(DEFAULT_SPACE, preset(name))
    point = start_point(DEFAULT_SPACE, preset("reference"))
    assert point["loss/lambda_adv_on"] is True and point["loss/lambda_adv"] == 1.0
    assert point["optim/lr_g"] == 2e-4 and point["optim/beta1"] == 0.8
    assert start_point(DEFAULT_SPACE, preset("rfmasked"))["loss/lambda_adv_on"] is False


def test_optuna_define_by_run_can_switch_the_adversarial_loss_off():
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    seen_off = seen_on = False
    for _ in range(20):
        trial = study.ask()
        DefineByRun(DEFAULT_SPACE)(trial)
        nested = {}
        for name, value in trial.params.items():
            section, key = name.split("/")
            nested.setdefault(section, {})[key] = value
        overrides = overrides_from_trial(nested, DEFAULT_SPACE)
        cfg = preset("default").with_overrides(overrides)
        seen_off |= cfg.loss.lambda_adv == 0
        seen_on |= cfg.loss.lambda_adv > 0 and 1e-3 <= cfg.loss.lambda_adv <= 2.0
        study.tell(trial, 0.0)
    assert seen_off and seen_on


def test_space_from_a_file_and_its_errors(tmp_path):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SPACE))
    assert load_space(tmp_path / "s.yaml")["optim.beta1"] == Range(0.0, 0.9, log=False)
    with pytest.raises(ConfigError, match="unknown config key 'loss.lambda_gan'"):
        validate_space({"loss.lambda_gan": Range(0.1, 1.0)}, preset("tiny"))
    with pytest.raises(ConfigError, match="low > 0 for log"):
        validate_space({"optim.lr_g": Range(0.0, 1.0)}, preset("tiny"))
    with pytest.raises(ConfigError, match="lr_d"):  # the range's end is an impossible config
        validate_space({"optim.lr_d": Range(-1.0, 1.0, log=False)}, preset("tiny"))
    # Third audit: a bound that YAML reads as a string was a traceback, and log: "no" (a string) a log range.
    for text, message in (
        ("optim.lr_g: {low: nan, high: 0.001}", "optim.lr_g: low must be a finite number, not 'nan'"),
        ("optim.lr_g: {low: '1e-4', high: 0.001}", "low must be a finite number, not '1e-4'"),
        ("optim.lr_g: {low: 0.0001, high: .inf}", "high must be a finite number, not inf"),
        ("optim.lr_g: {low: 0.0001, high: 0.001, log: 'no'}", "log must be true or false, not 'no'"),
        ("loss.lambda_adv: {low: 0.01, high: 1, allow_zero: 1}", "allow_zero must be true or false, not 1"),
    ):
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_space(tmp_path / "bad.yaml")


def sweep_args(data, out, space_file, trials, concurrent=2, **settings):
    sets = set_flags({**SMALL, **settings})
    return [
        "tune",
        "--data",
        str(data),
        "--preset",
        "tiny",
        *sets,
        "--space",
        str(space_file),
        "--out",
        str(out),
        "--trials",
        str(trials),
        "--epochs",
        "2",
        "--workers-per-trial",
        "1",
        "--max-concurrent",
        str(concurrent),
    ]


@pytest.fixture
def trial_fault(monkeypatch, tmp_path):
    """The first trial of a sweep to start raises, once; yields the file that says it did."""
    import ray.cloudpickle
    import sweep_faults

    from rfgan.sweep import runner

    marker = tmp_path / "raised"
    # The wrapper runs in a Ray actor, which cannot import the test folder: what it uses of sweep_faults must travel
    # by value (the closure itself would anyway; the module's globals would not).
    ray.cloudpickle.register_pickle_by_value(sweep_faults)
    monkeypatch.setattr(runner, "trial_driver", sweep_faults.raise_once(marker, runner.trial_driver))
    yield marker
    ray.cloudpickle.unregister_pickle_by_value(sweep_faults)


@pytest.fixture
def interrupt_after_one_trial(monkeypatch, tmp_path):
    """A new sweep interrupts itself (SIGINT, as Ctrl-C) once a trial has completed; yields the file that says it
    did. A resumed sweep brings the callback back from its state, not from here."""
    import sweep_faults

    from rfgan.sweep import runner

    marker, run_sweep = tmp_path / "interrupted", runner.run_sweep

    def interrupted(*args, resume=False, callbacks=None, **kwargs):
        callbacks = None if resume else [*(callbacks or []), sweep_faults.InterruptAfter(1, marker)]
        return run_sweep(*args, resume=resume, callbacks=callbacks, **kwargs)

    monkeypatch.setattr(runner, "run_sweep", interrupted)
    return marker


def test_sweep_of_three_trials_with_one_crash_writes_results_and_a_trainable_best_config(
    tune_ray, tiny_dataset, tmp_path, trial_fault, capsys
):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    out = tmp_path / "sweep"
    # Run settings of the user's own, which trials replace with the sweep's (no retries, one checkpoint kept) but
    # best_config.json keeps.
    user = {"run.max_failures": 2, "run.keep_checkpoints": 2}
    # Two trials at a time, the first to start raising: two finished trials are left to rank.
    assert main(sweep_args(tiny_dataset, out, tmp_path / "space.yaml", 3, **user)) == 0
    printed = capsys.readouterr().out
    assert trial_fault.read_text() == "raised"
    rows = table(out)
    assert len(rows) == 3 and "loss.lambda_adv" in rows[0] and "best_val_ssim" in rows[0]
    assert sorted(r["status"] == "ERROR" for r in rows) == [False, False, True]
    errored = next(r for r in rows if r["status"] == "ERROR")
    assert "raises on purpose" in errored["error"]
    assert all(float(r["best_val_ssim"]) > 0 for r in rows if r["status"] != "ERROR")
    assert "trial_id" in printed and "ERROR" in printed
    for plot in ("trials.png", "param_importances.png"):
        assert (out / plot).stat().st_size > 1000
    best = json.loads((out / "best_config.json").read_text())
    best_ssim = max(float(r["best_val_ssim"]) for r in rows if r["status"] != "ERROR")
    assert float(rows[0]["best_val_ssim"]) == best_ssim  # the table is sorted best first
    assert best["loss"]["lambda_pix"] == pytest.approx(float(rows[0]["loss.lambda_pix"]))
    assert best["run"]["max_failures"] == 2 and best["run"]["keep_checkpoints"] == 2 and best["run"]["epochs"] == 2
    assert best["model"]["ngf"] == SMALL["model.ngf"] and best["preset"] == "tiny"
    for row in rows:
        if row["status"] != "ERROR":  # trials keep one checkpoint (plus Ray's latest) and never retry
            run = out / "trials" / f"train-{row['trial_id']}"
            checkpoints = [p for p in run.glob("checkpoint_*") if p.is_dir()]
            assert 1 <= len(checkpoints) <= 2
            trained = json.loads((checkpoints[0] / "config.json").read_text())["run"]
            assert trained["keep_checkpoints"] == 1 and trained["max_failures"] == 0
    # `rfgan train --config` accepts the best config as it is.
    assert (
        main(
            [
                "train",
                "--config",
                str(out / "best_config.json"),
                "--data",
                str(tiny_dataset),
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "best-run"),
            ]
        )
        == 0
    )
    assert (tmp_path / "best-run" / "metrics.csv").exists()


def test_an_interrupted_sweep_resumes_with_its_own_space_without_repeating_finished_trials(
    tune_ray, tiny_dataset, tmp_path, interrupt_after_one_trial, capsys
):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    out = tmp_path / "sweep"
    # One trial at a time: interrupted as the first completes, the second is then unfinished (started or not).
    args = sweep_args(tiny_dataset, out, tmp_path / "space.yaml", 2, concurrent=1)
    assert main(args) == 0
    assert interrupt_after_one_trial.exists()
    first = {r["trial_id"]: r for r in table(out)}
    finished = {tid for tid, row in first.items() if row["status"] == "DONE"}
    assert len(finished) == 1
    # The finished trial's Train run must not run again: remember its files.
    runs = {p.name: sorted(q.name for q in p.iterdir()) for p in (out / "trials").iterdir()}
    # Another space is refused before anything is written.
    other = {**SPACE, "loss.lambda_pix": {"low": 1.0, "high": 40.0}}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    before = tree(out)
    capsys.readouterr()
    assert main([*sweep_args(tiny_dataset, out, tmp_path / "other.yaml", 2, concurrent=1), "--resume"]) == 2
    assert "--space differs from the space the sweep" in one_line_error(capsys, "tune")
    assert tree(out) == before
    # Without --space, the sweep goes on with its own (not the default space, which has other keys and ranges).
    space_flag = args.index("--space")
    assert main([*args[:space_flag], *args[space_flag + 2 :], "--resume"]) == 0
    second = {r["trial_id"]: r for r in table(out)}
    assert len(second) == 2 and all(r["status"] == "DONE" for r in second.values())
    assert set(SPACE) <= set(next(iter(second.values()))) and "loss.lambda_vgg" not in next(iter(second.values()))
    for tid in finished:
        assert second[tid] == first[tid]
        name = f"train-{tid}"
        assert sorted(q.name for q in (out / "trials" / name).iterdir()) == runs[name]


@pytest.fixture
def trial_workers(monkeypatch):
    """Call with a worker function (built in the test process: tests/worker_faults.py): the sweep's Train runs run it
    instead of rfgan's train_loop."""
    import sweep_faults

    from rfgan.sweep import runner

    def use(loop):
        monkeypatch.setattr(runner, "trial_driver", sweep_faults.with_train_loop(loop, runner.trial_driver))

    return use


def test_a_trial_that_lost_a_worker_is_restarted_and_resumes_its_own_run(
    tune_ray, tiny_dataset, tmp_path, trial_workers, monkeypatch
):
    from worker_faults import counting_starts, killed_once_before_reporting

    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    out, starts, killed = tmp_path / "sweep", tmp_path / "starts", tmp_path / "killed"
    # The worker is SIGKILLed as it is about to report epoch 2, once Ray has recorded epoch 1's checkpoint.
    trial_workers(counting_starts(starts, killed_once_before_reporting(2, str(killed))))
    # Paths relative to the working directory, as a user types them (Tune runs each trial in a directory of its own).
    monkeypatch.chdir(tmp_path)
    data = os.path.relpath(tiny_dataset, tmp_path)
    args = sweep_args(data, "sweep", "space.yaml", 1, concurrent=1, **{"run.max_failures": 1})
    assert main(args) == 0
    assert killed.exists()
    assert starts.read_text().count("started") == 2  # restarted once
    [row] = table(out)
    assert row["status"] == "DONE" and row["error"] == ""
    assert row["epochs"] == "2"  # Tune saw each epoch once
    run = out / "trials" / f"train-{row['trial_id']}"  # the trial's own run, resumed at epoch 2
    assert [r["epoch"] for r in read_metrics_csv((run / "metrics.csv").read_text())] == [1, 2]


def test_a_diverging_trial_is_not_restarted(tune_ray, tiny_dataset, tmp_path, trial_workers):
    from worker_faults import counting_starts

    from rfgan.run import train

    (tmp_path / "space.yaml").write_text(
        yaml.safe_dump({key: {"low": 1e12, "high": 1e13} for key in ("optim.lr_g", "optim.lr_d")})
    )
    out, starts = tmp_path / "sweep", tmp_path / "starts"
    trial_workers(counting_starts(starts, train.train_loop))
    # Restarts allowed, and the losses become NaN/inf in epoch 1 (as tests/run's diverging run).
    settings = {"run.max_failures": 2, "loss.adversarial": "lsgan", "loss.lambda_adv": 1.0}
    args = sweep_args(tiny_dataset, out, tmp_path / "space.yaml", 1, concurrent=1, **settings)
    assert main([*args, "--epochs", "1"]) == 0
    [row] = table(out)
    assert row["status"] == "ERROR" and "training diverged in epoch 1" in row["error"]
    assert starts.read_text().count("started") == 1


def table(out):
    with open(out / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_the_space_file_in_tune_is_the_default_space():
    from pathlib import Path

    assert load_space(Path(__file__).resolve().parents[2] / "tune" / "space.yaml") == DEFAULT_SPACE


def test_concurrent_trials_are_the_flag_else_what_the_cluster_can_grow_to():
    from rfgan.run.cluster_checks import grown
    from rfgan.sweep.runner import SweepSpec, concurrency

    def base(**run):
        return preset("default").with_overrides({"run": run})

    spec = SweepSpec(data="d", out="o", trials=20)
    two_workers = base(workers=2, cpus_per_worker=1.0)
    # A Ray of fixed size: what it has.
    assert concurrency(two_workers, spec, {"CPU": 8}) == 2  # 2 workers + 1 CPU for Ray Data per trial
    assert concurrency(two_workers, spec, {"CPU": 2}) == 1
    assert concurrency(base(), SweepSpec(data="d", out="o", trials=3), {"CPU": 64}) == 3
    # ray_cluster.yaml as a sweep starts: a head of 0 CPUs, no worker yet, up to 8 workers of 8 CPUs and a GPU.
    head_only, autoscaler_max = {"CPU": 0.0, "memory": 3e10}, {"CPU": 64, "GPU": 8}
    gpu = base(workers=1, cpus_per_worker=4.0, use_gpu=True, gpus_per_worker=1.0)
    assert concurrency(gpu, spec, grown(head_only, autoscaler_max)) == 8
    half_gpu = base(workers=1, cpus_per_worker=2.0, use_gpu=True, gpus_per_worker=0.5)
    assert concurrency(half_gpu, spec, grown(head_only, autoscaler_max)) == 16  # two trials share each GPU
    # How far the cluster grows is unknown: every trial at once (Train runs wait for their workers).
    assert grown(head_only, None) is None and concurrency(gpu, spec, None) == 20
    # --max-concurrent as given, also beyond what fits now; never more than the trials.
    assert concurrency(two_workers, SweepSpec(data="d", out="o", trials=20, max_concurrent=6), {"CPU": 2}) == 6
    assert concurrency(two_workers, SweepSpec(data="d", out="o", trials=4, max_concurrent=6), None) == 4


def test_a_ray_without_an_autoscaler_can_grow_to_what_it_has_or_an_unknown_size(tune_ray):
    from rfgan.sweep.runner import cluster_capacity

    assert cluster_capacity(False) == tune_ray.cluster_resources()  # a local Ray: fixed
    assert cluster_capacity(True) is None  # a cluster without a published maximum


def test_trial_drivers_ask_only_for_the_head_node():
    from ray._common.constants import HEAD_NODE_RESOURCE_NAME

    from rfgan.sweep.runner import trial_resources

    assert trial_resources() == {"CPU": 0, HEAD_NODE_RESOURCE_NAME: 0.001}


def test_only_a_run_that_lost_workers_is_restarted_and_within_its_budget():
    """The rule of rfgan.run.restarts, for `rfgan train` and sweep trials alike."""
    from ray.exceptions import ActorDiedError, NodeDiedError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback, WorkerHealthCheckFailedError
    from ray.train.v2.api.exceptions import WorkerGroupError

    from rfgan.errors import TrainingDiverged
    from rfgan.run.restarts import lost_workers, restarts_on

    def raised(e):
        return UserExceptionWithTraceback(e, f"Traceback ...\n{type(e).__name__}: {e}")

    # Rank 0 killed; rank 1 then fails in a collective.
    died = WorkerGroupError(
        "rank 0 died",
        {
            0: WorkerHealthCheckFailedError("A worker health check failed.", ActorDiedError()),
            1: raised(RuntimeError("Connection reset by peer")),
        },
    )
    diverged = WorkerGroupError("rank 0 raised", {0: raised(TrainingDiverged("training diverged in epoch 1"))})
    # A health check that failed on a value that cannot be pickled: the worker is alive.
    unpicklable = WorkerGroupError("", {0: WorkerHealthCheckFailedError("failed", TypeError("cannot pickle"))})
    assert lost_workers(died) and lost_workers(NodeDiedError("node gone"))
    assert not lost_workers(diverged) and not lost_workers(unpicklable) and not lost_workers(ConfigError("bad"))
    assert restarts_on(died, 0, 1) and not restarts_on(died, 1, 1) and restarts_on(died, 7, -1)
    assert not restarts_on(diverged, 0, -1) and not restarts_on(None, 0, 1)
    # A rank lost while another stopped on rfgan's own error: running it again would stop there again.
    both = WorkerGroupError("", {0: raised(TrainingDiverged("training diverged in epoch 1")), 1: ActorDiedError()})
    assert lost_workers(both) and not restarts_on(both, 0, -1)


def test_asha_judges_a_resumed_trial_at_its_epoch_not_at_tunes_iteration_count():
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from rfgan.sweep.runner import early_stopping

    asha = early_stopping(preset("tiny").with_overrides({"run.epochs": 4}))
    fresh, resumed = (Trial("trial_driver", stub=True, trial_id=tid) for tid in ("fresh", "resumed"))
    for trial in (fresh, resumed):
        asha.on_trial_add(None, trial)
    for epoch, ssim in ((1, 0.9), (2, 0.2)):  # the rungs of epochs 1 and 2
        assert asha.on_trial_result(None, fresh, {"epoch": epoch, "training_iteration": epoch, "val_ssim": ssim}) == (
            TrialScheduler.CONTINUE
        )
    # A trial that a restored sweep resumed at epoch 3: Tune counts its first report as iteration 1. Above epoch 2's
    # cutoff (0.2) it goes on; judged at epoch 1's (0.9), it would stop.
    result = {"epoch": 3, "training_iteration": 1, "val_ssim": 0.5}
    assert asha.on_trial_result(None, resumed, result) == TrialScheduler.CONTINUE


class _Stop(Exception):
    pass


@pytest.mark.parametrize(
    "flags, run",
    [
        ([], {"epochs": 10}),
        (
            ["--epochs", "3", "--workers-per-trial", "1", "--cpus-per-worker", "0.5", "--gpus-per-worker", "0.25"],
            {"epochs": 3, "workers": 1, "cpus_per_worker": 0.5, "use_gpu": True, "gpus_per_worker": 0.25},
        ),
        (
            ["--workers-per-trial", "2", "--cpus-per-worker", "0.5", "--gpus-per-worker", "1"],
            {"epochs": 10, "workers": 2, "cpus_per_worker": 0.5, "use_gpu": True, "gpus_per_worker": 1.0},
        ),
        (["--set", "run.use_gpu=true"], {"epochs": 10, "use_gpu": True}),
        (["--set", "run.use_gpu=true", "--gpus-per-worker", "0"], {"epochs": 10, "use_gpu": False}),
        (["--set", "run.workers=3", "--set", "run.max_failures=2"], {"epochs": 10, "workers": 3, "max_failures": 2}),
    ],
)
def test_tune_flags_are_run_settings_of_the_base_config(tiny_dataset, tmp_path, monkeypatch, flags, run):
    from rfgan.run import launch
    from rfgan.sweep import runner

    seen = {}

    def run_sweep(base, spec, space, resume=False, **kwargs):
        seen.update(base=base, spec=spec)
        raise _Stop

    monkeypatch.setattr(runner, "run_sweep", run_sweep)
    monkeypatch.setattr(launch, "init_ray", lambda *args: False)
    with pytest.raises(_Stop):
        main(
            [
                "tune",
                "--data",
                str(tiny_dataset),
                "--preset",
                "tiny",
                "--out",
                str(tmp_path),
                "--trials",
                "3",
                "--seed",
                "5",
                *flags,
            ]
        )
    assert seen["base"] == preset("tiny").with_overrides({"data.path": str(tiny_dataset), "run": run})
    assert seen["spec"] == runner.SweepSpec(data=str(tiny_dataset), out=str(tmp_path), trials=3, seed=5)


def test_fractional_gpus_for_several_workers_per_trial_are_refused(tiny_dataset, tmp_path, monkeypatch, capsys):
    """Ray packs the 0.25-GPU workers of one trial onto one device, where NCCL stops ("Duplicate GPU detected")
    once training starts: refused with the config, before Ray starts and before anything is written."""
    from rfgan.run import launch
    from rfgan.sweep import runner

    def run_sweep(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(runner, "run_sweep", run_sweep)
    monkeypatch.setattr(launch, "init_ray", lambda *args: False)
    out = tmp_path / "sweep"
    flags = ["--workers-per-trial", "2", "--gpus-per-worker", "0.25"]
    assert main(["tune", "--data", str(tiny_dataset), "--preset", "tiny", "--out", str(out), *flags]) == 2
    err = one_line_error(capsys, "tune")
    assert "run.gpus_per_worker=0.25 with run.workers=2" in err and "run.workers=1" in err
    assert not out.exists()


def test_a_trial_that_failed_before_reporting_is_an_error_not_pending(tmp_path):
    """A resumed sweep gets back such a trial with its error but no config: it is listed as ERROR with its reason;
    only a trial with neither (not started when the sweep stopped) is PENDING."""
    from ray.tune import Result

    from rfgan.sweep.results import summarize

    failed = Result(
        metrics=None,
        checkpoint=None,
        error=RuntimeError("Traceback\nValueError: no full batch"),
        path=str(tmp_path / "trial_a"),
    )
    waiting = Result(metrics=None, checkpoint=None, error=None, path=str(tmp_path / "trial_b"))
    rows = summarize([failed, waiting], {}, str(tmp_path / "sweep"))
    assert {r["trial_id"]: (r["status"], r.get("error")) for r in rows} == {
        "a": ("ERROR", "ValueError: no full batch"),
        "b": ("PENDING", None),
    }


@pytest.mark.parametrize("flag, value", [("--trials", "0"), ("--trials", "-1"), ("--max-concurrent", "0")])
def test_no_trials_or_no_concurrency_is_refused_before_anything_is_written(tiny_dataset, tmp_path, flag, value, capsys):
    """`--trials 0` was a traceback in the results table, after Tune had written its state, plots and log."""
    out = tmp_path / "sweep"
    assert main(["tune", "--data", str(tiny_dataset), "--preset", "tiny", "--out", str(out), flag, value]) == 2
    assert f"{flag} must be at least 1, not {value}" in one_line_error(capsys, "tune")
    assert not out.exists()


@pytest.mark.parametrize("case", ["user's folder", "a finished sweep", "the dataset", "inside the dataset", "seed"])
def test_an_out_tune_must_not_write_is_refused_before_anything_is_written(tiny_dataset, tmp_path, capsys, case):
    """Third audit: a user's trials.csv was overwritten, a second sweep mixed into a finished one's folder (no
    --resume), and a sweep written inside a dataset (deleted with it when the dataset is re-made)."""
    out = tmp_path / "sweep"
    out.mkdir()
    flags = []
    if case == "user's folder":
        (out / "trials.csv").write_text("mine")
    elif case == "a finished sweep":
        (out / "space.json").write_text("{}")
        (out / "trials.csv").write_text("its results")
    elif case == "the dataset":
        out = tiny_dataset
    elif case == "inside the dataset":
        out = tiny_dataset / "sweeps" / "one"
    else:
        flags = ["--seed", "-1"]
    before = tree(tmp_path), tree(tiny_dataset)
    assert main(["tune", "--data", str(tiny_dataset), "--preset", "tiny", "--out", str(out), *flags]) == 2
    err = one_line_error(capsys, "tune")
    assert {
        "user's folder": "holds other files than a sweep",
        "a finished sweep": "already holds a sweep; pass --resume to continue it",
        "the dataset": f"is the dataset {tiny_dataset}: a sweep among the dataset's files",
        "inside the dataset": f"is inside the dataset {tiny_dataset}",
        "seed": "--seed must be between 0 and 2**32 - 1",
    }[case] in err
    assert (tree(tmp_path), tree(tiny_dataset)) == before
