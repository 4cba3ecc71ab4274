"""rfgan on several Ray nodes with its data and runs in an S3 bucket (tests/cluster/conftest.py): placement, the
driver's refusals, and the loss of a node, plain or drained as a preemption."""

import contextlib
import csv
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
from cluster_fixtures import WORKER_CPUS, worker_nodes
from conftest import SMALL_NETS, TINY, make_synth, set_flags

from rfgan import storage
from rfgan.cli import main
from rfgan.run.artifacts import read_metrics_csv
from rfgan.run.train import RAY_SNAPSHOT

# One worker per node: each takes all of a node's CPUs, so two workers must use two nodes.
SPREAD = {**SMALL_NETS, "run.workers": 2, "run.cpus_per_worker": WORKER_CPUS, "run.epochs": 2}
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def bucket_data(s3):
    data = f"{s3}/data/tiny"
    make_synth(data)
    return data


@pytest.fixture(scope="module")
def longer_data(s3):
    """Enough rows that an epoch outlasts the removal of a node and the start of another."""
    data = f"{s3}/data/longer"
    make_synth(data, dataclasses.replace(TINY, n_train=240))
    return data


def train(data, out, settings, *flags) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["train", "--data", data, "--preset", "tiny", *set_flags(settings), "--out", out, *flags])
    return code, err.getvalue()


def workers(run) -> list[dict]:
    return json.loads(storage.read_text(f"{run}/workers.json"))


def log_tail(run) -> str:
    """The end of the run's train.log, for a failure's message: the bucket is gone after the session."""
    return storage.read_text(f"{run}/train.log")[-4000:] if storage.is_file(f"{run}/train.log") else ""


def epochs(run) -> list[int]:
    return [r["epoch"] for r in read_metrics_csv(storage.read_text(f"{run}/metrics.csv"))]


def test_two_workers_train_on_two_nodes_from_the_bucket_into_it(ray_cluster, bucket_data, s3, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land on the local disk
    run = f"{s3}/runs/spread"
    assert train(bucket_data, run, SPREAD)[0] == 0
    assert epochs(run) == [1, 2]
    [start] = workers(run)
    nodes = {r["node_id"] for r in start["ranks"]}
    assert len(nodes) == 2 and ray_cluster.head_node.node_id not in nodes
    assert nodes == {n.node_id for n in worker_nodes(ray_cluster)}
    # Evaluated straight from the bucket, as a user would.
    assert main(["eval", "--run", run, "--data", bucket_data, "--no-feature-metrics"]) == 0
    assert storage.is_file(f"{run}/eval_val.json")
    assert list(tmp_path.iterdir()) == []


def test_paths_other_nodes_cannot_see_are_refused_before_anything_starts(ray_cluster, bucket_data, s3, tmp_path):
    local_out = tmp_path / "run"
    t0 = time.perf_counter()
    code, err = train(bucket_data, str(local_out), SPREAD)
    assert code == 2 and f"--out {local_out} is a path on this machine" in err and len(err.strip().splitlines()) == 1
    assert not local_out.exists()
    # A local dataset is refused once Ray Data would read it on other nodes (the driver reads a small one itself).
    local_data = tmp_path / "data"
    make_synth(local_data)
    run = f"{s3}/runs/refused"
    code, err = train(str(local_data), run, {**SPREAD, "perf.driver_read_mb": 0})
    assert code == 2 and f"--data {local_data} is a path on this machine" in err
    assert storage.list_dirs(f"{s3}/runs") == ["spread"] or "refused" not in storage.list_dirs(f"{s3}/runs")
    assert time.perf_counter() - t0 < 60


def test_workers_that_leave_ray_data_no_cpu_are_refused(ray_cluster, bucket_data, s3):
    run = f"{s3}/runs/starved"
    code, err = train(bucket_data, run, {**SPREAD, "perf.driver_read_mb": 0})
    assert code == 2 and "take 4 of the cluster's 4 CPUs" in err and "perf.driver_read_mb=" in err
    assert "starved" not in storage.list_dirs(f"{s3}/runs")


def _lose_a_node_mid_run(cluster, command, runs, drain: bool, rank: int = 1):
    """Run `command` in a thread; once one of `runs()` has its first checkpoint committed in the bucket, take away the
    node of its rank `rank` (drained first as a spot preemption when `drain`) without grace, and add a fresh node.
    What `command` returned."""
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(command()), daemon=True)
    thread.start()
    deadline = time.time() + 300
    # Ray's record of the run's checkpoints is written once one is committed (a folder alone may be mid-upload).
    while not (run := next((r for r in runs() if storage.is_file(f"{r}/{RAY_SNAPSHOT}")), None)):
        assert thread.is_alive() and time.time() < deadline, outcome
        time.sleep(0.2)
    victim_id = next(r["node_id"] for r in workers(run)[0]["ranks"] if r["rank"] == rank)
    victim = next(n for n in worker_nodes(cluster) if n.node_id == victim_id)
    if drain:
        subprocess.run(
            [
                str(BIN / "ray"),
                "drain-node",
                f"--address={cluster.address}",
                f"--node-id={victim_id}",
                "--reason=DRAIN_NODE_REASON_PREEMPTION",
                "--reason-message=spot instance reclaimed",
                "--deadline-remaining-seconds=5",
            ],
            check=True,
            capture_output=True,
        )
        time.sleep(2)  # the cloud takes the node at its deadline; Train sees the drain first
    cluster.remove_node(victim, allow_graceful=False)
    cluster.add_node(num_cpus=WORKER_CPUS)
    thread.join(timeout=600)
    assert outcome, "the run did not end"
    # The next test's run must not be placed on the removed node before Ray's health checks declare it dead.
    while any(n["NodeID"] == victim_id and n["Alive"] for n in ray.nodes()):
        assert time.time() < deadline + 600, "Ray never declared the removed node dead"
        time.sleep(0.5)
    return outcome[0]


def _train_losing_a_node(cluster, run, settings, data, drain: bool) -> tuple[int, str]:
    """`rfgan train` into `run`, losing the node of rank 1 after its first checkpoint. (exit code, stderr)"""
    return _lose_a_node_mid_run(cluster, lambda: train(data, run, settings), lambda: [run], drain)


# A plain node loss that the run survives is test_by_hand.py's (docs/cluster.md's blocks), on `ray start` nodes.
LOSS = {**SPREAD, "run.epochs": 5}


def test_a_plain_node_loss_is_charged_to_max_failures(ray_cluster, longer_data, s3):
    run = f"{s3}/runs/no-failures-left"
    code, err = _train_losing_a_node(ray_cluster, run, {**LOSS, "run.max_failures": 0}, longer_data, drain=False)
    # The rank on the lost node, with what Ray says of it (ActorUnavailableError or ActorDiedError), and the budget.
    assert code == 1 and "rank 1: Actor" in err and "run.max_failures=0" in err, err


def test_a_preemption_is_charged_to_its_own_budget(ray_cluster, longer_data, s3):
    run = f"{s3}/runs/preempted"
    code, err = _train_losing_a_node(ray_cluster, run, {**LOSS, "run.max_failures": 0}, longer_data, drain=True)
    assert code == 0, err + log_tail(run)
    assert epochs(run) == [1, 2, 3, 4, 5] and len(workers(run)) == 2


def tune_args(data, out, trials, epochs, *flags) -> list[str]:
    """`rfgan tune` of one-worker trials that take a whole node each, searching only the generator's learning rate."""
    space = {"optim.lr_g": {"low": 1e-4, "high": 1e-2, "log": True}}
    space_file = f"{out}.space.json"
    storage.write_bytes(space_file, json.dumps(space).encode())
    return [
        "tune", "--data", data, "--preset", "tiny", "--out", out, "--space", space_file,
        "--trials", str(trials), "--epochs", str(epochs), "--workers-per-trial", "1",
        "--cpus-per-worker", str(WORKER_CPUS), *set_flags(SMALL_NETS), *flags,
    ]  # fmt: skip


def tune(data, out, trials, epochs, *flags) -> int:
    return main(tune_args(data, out, trials, epochs, *flags))


def tune_process(args, cluster, log: Path) -> subprocess.Popen:
    """`rfgan tune ARGS` as its own driver process on `cluster`, as a user runs it, its output in `log`. (After the
    Train runs of this module, a further Tune run in this process was seen to wait for ever for its first trial's
    actors.)"""
    with open(log, "a") as sink:
        return subprocess.Popen(
            [str(BIN / "rfgan"), *args, "--address", cluster.address],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def trial_runs(out) -> list[str]:
    return [f"{out}/trials/{d}" for d in storage.list_dirs(f"{out}/trials") if d.startswith("train-")]


def test_sweep_trials_run_on_different_nodes_with_the_sweep_in_the_bucket(ray_cluster, bucket_data, s3):
    out = f"{s3}/sweeps/spread"
    assert tune(bucket_data, out, 2, 1, "--max-concurrent", "2") == 0
    runs = trial_runs(out)
    nodes = [workers(run)[0]["ranks"][0]["node_id"] for run in runs]
    assert len(runs) == 2 and len(set(nodes)) == 2  # both at once, one per node
    assert storage.is_file(f"{out}/trials.csv") and storage.is_file(f"{out}/best_config.json")


def test_a_trial_whose_node_is_lost_is_restarted_from_its_checkpoint(ray_cluster, longer_data, s3, tmp_path):
    out, log = f"{s3}/sweeps/lost-node", tmp_path / "tune.log"
    args = tune_args(longer_data, out, 1, 5)
    code = _lose_a_node_mid_run(
        ray_cluster, lambda: tune_process(args, ray_cluster, log).wait(), lambda: trial_runs(out), drain=False, rank=0
    )
    assert code == 0, log.read_text()[-4000:]
    [run] = trial_runs(out)
    first, second = workers(run)
    assert second["first_epoch"] > 1 and epochs(run) == [1, 2, 3, 4, 5]
    assert {r["node_id"] for r in first["ranks"]} != {r["node_id"] for r in second["ranks"]}


def test_a_killed_sweep_driver_resumes_from_the_bucket_with_its_stored_space(ray_cluster, longer_data, s3, tmp_path):
    out, epochs_per_trial = f"{s3}/sweeps/killed", 20
    args = tune_args(longer_data, out, 1, epochs_per_trial)
    # `rfgan tune` as its own process on the cluster, killed without warning (a lost laptop, a killed job's driver)
    # once its trial has committed a checkpoint and Tune has saved the sweep's state.
    log = tmp_path / "tune.log"
    driver = tune_process(args, ray_cluster, log)
    deadline = time.time() + 300
    while not (
        any(storage.is_file(f"{r}/{RAY_SNAPSHOT}") for r in trial_runs(out))
        and any(n.startswith("experiment_state") for n in storage.file_sizes(out))
    ):
        assert driver.poll() is None and time.time() < deadline, log.read_text()[-4000:]
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    [run] = trial_runs(out)
    assert len(epochs(run)) < epochs_per_trial  # killed mid-run
    stored = storage.read_text(f"{out}/space.json")
    # Without --space: the sweep goes on with the space it stored in the bucket.
    space_flag = args.index("--space")
    resumed = tune_process([*args[:space_flag], *args[space_flag + 2 :], "--resume"], ray_cluster, log)
    assert resumed.wait(timeout=600) == 0, log.read_text()[-4000:]
    assert storage.read_text(f"{out}/space.json") == stored
    [row] = csv.DictReader(io.StringIO(storage.read_text(f"{out}/trials.csv")))
    assert row["status"] == "DONE" and trial_runs(out) == [run]
    assert epochs(run) == list(range(1, epochs_per_trial + 1))  # every epoch once
    first, second = workers(run)
    assert second["first_epoch"] > 1  # the trial went on from its checkpoint, not from epoch 1
