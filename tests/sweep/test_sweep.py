"""Sweeps with the real Ray Tune, OptunaSearch (TPE) and ASHA on a real local Ray."""

import csv
import json

import pytest
import yaml
from conftest import SMALL_NETS, one_line_error, set_flags

from rfgan.cli import main
from rfgan.config import ConfigError, preset
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
    ray_session, tiny_dataset, tmp_path, trial_fault, capsys
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


def test_an_interrupted_sweep_resumes_without_repeating_finished_trials(
    ray_session, tiny_dataset, tmp_path, interrupt_after_one_trial
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
    assert main([*args, "--resume"]) == 0
    second = {r["trial_id"]: r for r in table(out)}
    assert len(second) == 2 and all(r["status"] == "DONE" for r in second.values())
    for tid in finished:
        assert second[tid] == first[tid]
        name = f"train-{tid}"
        assert sorted(q.name for q in (out / "trials" / name).iterdir()) == runs[name]


def table(out):
    with open(out / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_the_space_file_in_tune_is_the_default_space():
    from pathlib import Path

    assert load_space(Path(__file__).resolve().parents[2] / "tune" / "space.yaml") == DEFAULT_SPACE


def test_concurrent_trials_follow_from_the_resources():
    from rfgan.sweep.runner import SweepSpec, concurrency

    def base(**run):
        return preset("default").with_overrides({"run": run})

    spec = SweepSpec(data="d", out="o", trials=20)
    two_workers = base(workers=2, cpus_per_worker=1.0)
    assert concurrency(two_workers, spec, {"CPU": 8}) == 2  # 2 workers + 1 CPU for Ray Data per trial
    assert concurrency(two_workers, spec, {"CPU": 2}) == 1
    gpu = base(workers=1, cpus_per_worker=2.0, use_gpu=True, gpus_per_worker=0.5)
    assert concurrency(gpu, spec, {"CPU": 64, "GPU": 2}) == 4  # two trials share each GPU
    assert concurrency(base(), SweepSpec(data="d", out="o", trials=3), {"CPU": 64}) == 3
    assert concurrency(base(), SweepSpec(data="d", out="o", trials=20, max_concurrent=2), {"CPU": 64}) == 2


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
