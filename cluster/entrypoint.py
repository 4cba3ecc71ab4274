"""`ray job submit` entrypoint: `rfgan train` on the cluster the job was submitted to.

Runs from the job's working directory (uploaded by `--working-dir` / the runtime_env), so rfgan need not be
installed on the cluster, only its dependencies. Defaults suited to a cluster, each overridable by the same
`rfgan train` flags:
- `--out`: $RFGAN_STORAGE/<job id> (e.g. s3://my-bucket/rfgan-runs/raysubmit_xyz) when RFGAN_STORAGE is set,
  so every node and a restarted head see the checkpoints; a fixed --out (and --resume) continues a run.
- `--address`: none, so Ray connects to the cluster the job runs on.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rfgan.cli import main  # noqa: E402


def job_args(argv: list[str]) -> list[str]:
    args = ["train", *argv]
    storage = os.environ.get("RFGAN_STORAGE")
    if storage and "--out" not in argv:
        job_id = os.environ.get("RAY_JOB_SUBMISSION_ID") or os.environ.get("RAY_JOB_ID") or "job"
        args += ["--out", f"{storage.rstrip('/')}/{job_id}"]
    return args


if __name__ == "__main__":
    raise SystemExit(main(job_args(sys.argv[1:])))
