"""docs/cluster.md's by-hand blocks, run as written from the repository's root: `ray start` nodes and an S3 server on
this machine; a run that loses a node, finishes, and is evaluated from the bucket; then `ray job submit` with the
shipped runtime env. The module sorts before the lane's in-process cluster starts: its ports are Ray's defaults, and
the `ray stop` that ends it stops every Ray on the machine."""

import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cluster_fixtures import FAST_HEALTH_CHECKS

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.cluster, pytest.mark.ray]


def by_hand_blocks() -> str:
    text = (ROOT / "docs" / "cluster.md").read_text()
    return "\n".join(re.findall(r"```bash\n(.*?)```", text[text.index("## On one machine") :], re.S))


class Bucket:
    """The blocks' bucket, through their S3 endpoint and keys."""

    def __init__(self):
        import boto3

        self.s3 = boto3.client(
            "s3",
            endpoint_url="http://127.0.0.1:9000",
            aws_access_key_id="x",
            aws_secret_access_key="x",
            region_name="us-east-1",
        )

    def text(self, key: str) -> str:
        return self.s3.get_object(Bucket="rfgan", Key=key)["Body"].read().decode()

    def epochs(self, run: str) -> list[int]:
        return [int(r["epoch"]) for r in csv.DictReader(io.StringIO(self.text(f"{run}/metrics.csv")))]

    def folders(self, prefix: str) -> list[str]:
        found = self.s3.list_objects_v2(Bucket="rfgan", Prefix=prefix, Delimiter="/").get("CommonPrefixes", [])
        return sorted(p["Prefix"][len(prefix) :].strip("/") for p in found)


def test_the_by_hand_cluster_trains_loses_a_node_finishes_evaluates_and_takes_jobs():
    # The shell of someone who followed the README: the venv's commands first, no Ray address or keys of ours.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(FAST_HEALTH_CHECKS)  # not the user's, but the blocks' node loss is then declared in seconds
    env["PATH"] = f"{BIN}:{env['PATH']}"
    shell = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", by_hand_blocks()],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the S3 server it leaves running is in this group
    )
    scratch = None
    try:
        out, _ = shell.communicate(timeout=1200)
        scratch = re.search(r"^logs in (.+)$", out, re.M)
        logs = {p.name: p.read_text() for p in Path(scratch.group(1)).glob("*.out")} if scratch else {}
        assert shell.returncode == 0, out[-3000:] + "".join(f"\n--- {k}\n{v[-3000:]}" for k, v in logs.items())
        train = logs["train.out"]
        assert "restarting it from its last checkpoint" in train and "epoch 5/5" in train, train
        bucket = Bucket()
        assert bucket.epochs("runs/demo") == [1, 2, 3, 4, 5]  # every epoch once across the restart
        starts = json.loads(bucket.text("runs/demo/workers.json"))
        assert len(starts) == 2 and starts[1]["first_epoch"] > 1  # from its checkpoint, not from scratch
        first, second = ({r["node_id"] for r in start["ranks"]} for start in starts)
        assert len(first) == 2 and len(first - second) == 1  # one rank on each worker node; one of them lost
        assert 0 < json.loads(bucket.text("runs/demo/eval_val.json"))["metrics"]["ssim"]["mean"] <= 1
        # The jobs: two runs named by their submission ids under RFGAN_STORAGE, one where --out= said.
        ids = sorted(re.search(r"raysubmit_\w+", logs[f"job{i}.out"]).group(0) for i in (1, 2))
        assert len(set(ids)) == 2 and bucket.folders("rfgan-runs/") == ids
        assert all(bucket.epochs(f"rfgan-runs/{i}") == [1] for i in ids) and bucket.epochs("runs/named") == [1]
    finally:
        if scratch:
            shutil.rmtree(scratch.group(1), ignore_errors=True)
        if shell.poll() is None:
            shell.kill()
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, env=env)
        try:
            os.killpg(shell.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
