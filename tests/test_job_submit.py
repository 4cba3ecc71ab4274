"""`ray start --head`, then the `ray job submit` command of docs/cluster.md trains tiny runs to completion: one with
its own --out, two named by their submission ids in $RFGAN_STORAGE. One head serves the module's tests."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head_node(tmp_path_factory):
    """A separate Ray head on this machine, in its own process group so that stopping it leaves the test
    session's Ray alone (`ray stop` would kill every Ray on the machine)."""
    tmp_path = tmp_path_factory.mktemp("head")
    dashboard = free_port()
    temp_dir = Path("/tmp") / f"rfgan-head-{os.getpid()}"  # short: Ray's socket paths have a length limit
    proc = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={free_port()}",
            "--num-cpus=6",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--temp-dir={temp_dir}",
            "--include-dashboard=true",
            # Ports of its own: the test session's Ray already holds the defaults (agent 52365, metrics, client).
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
        ],
        # The venv first on PATH, as after `. .venv/bin/activate`: the job's `python` is the cluster's.
        start_new_session=True,
        stdout=open(tmp_path / "head.log", "w"),
        stderr=subprocess.STDOUT,
        env=job_env(),
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        # Ready when it runs a job: the job API answers before the node's agent can take jobs.
        deadline = time.time() + 180
        while (
            subprocess.run(
                [str(BIN / "ray"), "job", "submit", "--address", address, "--", "python", "-c", "print('ready')"],
                capture_output=True,
                env=job_env(),
            ).returncode
            != 0
        ):
            assert proc.poll() is None, (tmp_path / "head.log").read_text()
            assert time.time() < deadline, "the Ray head did not take a job within 180 s"
            time.sleep(3)
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def job_env():
    # RAY_AUTH_MODE=token: Ray's token authentication is on for the cluster (its default); the job CLI then reads
    # the token from ~/.ray/auth_token.
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", RAY_AUTH_MODE="token")
    env.pop("RAY_ADDRESS", None)
    return env


# A tiny run's flags, after the entrypoint.
TINY_RUN = [
    "--preset",
    "tiny",
    "--set",
    "model.ngf=8",
    "--set",
    "model.n_down=3",
    "--set",
    "model.ndf=8",
    "--set",
    "model.d_layers=2",
    "--batch-size",
    "8",
    "--epochs",
    "1",
]


def submit(address: str, *args: str) -> list[str]:
    """docs/cluster.md's command: `ray job submit` of the entrypoint, the repository as its working directory."""
    return [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        str(ROOT),
        *args,
    ]


def submission_id(log: str) -> str:
    return re.search(r"raysubmit_\w+", log).group(0)


def job_status(address: str, job_id: str) -> str:
    # Ray's job SDK reads the auth mode when Ray is imported, so ask from a process started with job_env().
    status = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from ray.job_submission import JobSubmissionClient as C; "
            "print(C(sys.argv[1]).get_job_status(sys.argv[2]).value)",
            address,
            job_id,
        ],
        capture_output=True,
        text=True,
        env=job_env(),
    )
    assert status.returncode == 0, status.stderr[-2000:]
    return status.stdout.strip()


def test_job_submit_trains_a_tiny_run(head_node, tiny_dataset, tmp_path):
    out = tmp_path / "job-run"
    # `--out=X` names the run as `--out X` does, also with RFGAN_STORAGE set.
    env = json.dumps({"env_vars": {"RFGAN_STORAGE": str(tmp_path / "storage")}})
    command = submit(
        head_node,
        "--runtime-env-json",
        env,
        "--",
        "python",
        "cluster/entrypoint.py",
        "--data",
        str(tiny_dataset),
        *TINY_RUN,
        f"--out={out}",
    )
    submitted = subprocess.run(command, capture_output=True, text=True, env=job_env(), timeout=600, cwd=ROOT)
    log = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, log[-4000:]
    assert job_status(head_node, submission_id(log)) == "SUCCEEDED"
    assert (out / "metrics.csv").exists() and list(out.glob("checkpoint_*"))
    assert not (tmp_path / "storage").exists()


def test_jobs_without_out_get_runs_named_by_their_submission_ids(head_node, tiny_dataset, tmp_path):
    """Two jobs at once, as a team submits them: each in $RFGAN_STORAGE/<its submission id>."""
    runs = tmp_path / "runs"
    env = json.dumps({"env_vars": {"RFGAN_STORAGE": str(runs)}})
    command = submit(
        head_node, "--runtime-env-json", env, "--", "python", "cluster/entrypoint.py", "--data", str(tiny_dataset)
    )
    jobs = [
        subprocess.Popen(
            [*command, *TINY_RUN], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=job_env(), cwd=ROOT
        )
        for _ in range(2)
    ]
    logs = [job.communicate(timeout=600)[0] for job in jobs]
    for job, log in zip(jobs, logs):
        assert job.returncode == 0, log[-4000:]
    ids = sorted(submission_id(log) for log in logs)
    assert len(set(ids)) == 2 and all(job_status(head_node, i) == "SUCCEEDED" for i in ids)
    assert sorted(p.name for p in runs.iterdir()) == ids
    for i in ids:
        assert (runs / i / "metrics.csv").exists() and list((runs / i).glob("checkpoint_*"))
