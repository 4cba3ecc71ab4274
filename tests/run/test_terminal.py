"""What `rfgan train` prints, as a newcomer reads it: rfgan's lines on the terminal, Ray's in the run's log file."""

import subprocess
import sys

import pytest
from conftest import SMALL_NETS, set_flags

RAY_INTERNALS = ("pid=", "core_worker", "PreemptionWatcher", "TrainingReport", "Moving model", "raylet", "Dataset ")


@pytest.mark.ray
def test_train_prints_an_epoch_line_each_and_keeps_ray_in_the_log_file(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    sets = set_flags({**SMALL_NETS, "run.cpus_per_worker": 1})
    argv = [sys.executable, "-m", "rfgan", "train", "--data", str(tiny_dataset), "--preset", "tiny", *sets]
    done = subprocess.run(
        [*argv, "--epochs", "2", "--out", str(run)], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    terminal = done.stdout + done.stderr
    assert "\x1b[" not in terminal  # not a terminal: no colour codes, no progress bars
    assert not [line for line in terminal.splitlines() if any(s in line for s in RAY_INTERNALS)], terminal
    epochs = [line for line in done.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"] and all("val SSIM" in line for line in epochs)
    assert "SSIM" in done.stdout and f"log (Ray's output too): {run}/train.log" in done.stdout
    log = (run / "train.log").read_text()
    assert "(RayTrainWorker pid=" in log and "Reporting training result 2" in log and "\x1b[" not in log
