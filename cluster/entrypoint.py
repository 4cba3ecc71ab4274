"""`ray job submit` entrypoint: `rfgan train` on the cluster the job was submitted to.

Runs from the job's working directory (uploaded by `--working-dir` / the runtime_env), so rfgan need not be
installed on the cluster, only its dependencies. Defaults suited to a cluster, each overridable by the same
`rfgan train` flags:
- `--out`: $RFGAN_STORAGE/<submission id> (e.g. s3://my-bucket/rfgan-runs/raysubmit_xyz) when RFGAN_STORAGE is
  set, so every node and a restarted head see the checkpoints, and each job has a run of its own; a fixed --out
  (and --resume) continues a run.
- `--address`: none, so Ray connects to the cluster the job runs on.
"""

import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR  # noqa: E402
from ray.dashboard.modules.job.common import JOB_ID_METADATA_KEY  # noqa: E402

from rfgan import storage  # noqa: E402
from rfgan.cli import build_parser, main  # noqa: E402


def submission_id() -> str | None:
    """The id `ray job submit` gave this job, None outside a submitted job. Ray's job supervisor sets neither
    RAY_JOB_SUBMISSION_ID nor RAY_JOB_ID in the driver (it strips the latter as an internal flag): the id travels
    only in the metadata of the job config it passes as JSON (ray/dashboard/modules/job/job_supervisor.py)."""
    job_config = os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR)
    if not job_config:
        return None
    return json.loads(job_config).get("metadata", {}).get(JOB_ID_METADATA_KEY)


def gives_out(argv: list[str]) -> bool:
    """Whether the flags name the run, read by `rfgan train`'s own parser (`--out X`, `--out=X`, an abbreviation).
    Flags it refuses name nothing: `rfgan train` then says what is wrong with them."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            return build_parser().parse_args(["train", *argv]).out is not None
        except SystemExit:
            return False


def job_args(argv: list[str]) -> list[str]:
    args = ["train", *argv]
    runs = os.environ.get("RFGAN_STORAGE")
    if runs and not gives_out(argv):
        # Run by hand rather than submitted: a name of its own all the same, as rfgan train gives one.
        name = submission_id() or time.strftime("job-%Y%m%d-%H%M%S")
        args += ["--out", storage.join(runs, name)]
    return args


if __name__ == "__main__":
    raise SystemExit(main(job_args(sys.argv[1:])))
