"""What a user looks at during and after a run: sample grids, metrics.csv, training curves, TensorBoard logs.

Written to a local staging folder; each epoch, what it changed is copied to the run directory, which may be local
or remote (`s3://`, `gs://`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rfgan import storage
from rfgan.checkpoint import CURVES_FILE
from rfgan.evaluate.grid import sample_grid, save_grid

METRICS_FILE = "metrics.csv"
SAMPLES_DIR = "samples"
TENSORBOARD_DIR = "tensorboard"
WORKERS_FILE = "workers.json"


def record_workers(run_dir: str, first_epoch: int, ranks: list[Mapping[str, Any]]) -> None:
    """Add one start of the worker group to the run's workers.json: the epoch it began with and where each rank ran
    (on a cluster, what placement and a lost node did to the run)."""
    path = storage.join(run_dir, WORKERS_FILE)
    starts = json.loads(storage.read_text(path)) if storage.is_file(path) else []
    starts.append({"first_epoch": first_epoch, "ranks": list(ranks)})
    storage.write_bytes(path, (json.dumps(starts, indent=1) + "\n").encode())


def read_metrics_csv(text: str) -> list[dict[str, Any]]:
    """metrics.csv's rows; integers (epoch, step) stay integers, so rows written again after a resume read the same."""
    return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]


def _number(text: str | None) -> int | float | None:
    if text in ("", None):
        return None
    try:
        return int(text)
    except ValueError:
        return float(text)


def metrics_csv(rows: list[Mapping[str, Any]]) -> str:
    """One row per epoch; columns: `epoch` first, then every key seen in any row (blank where absent)."""
    columns = ["epoch"] + sorted({k for r in rows for k in r} - {"epoch"})
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k, "") for k in columns})
    return out.getvalue()


def plot_curves(rows: list[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Training losses and validation metrics per epoch, one panel each."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    keys = [k for k in rows[0] if k.startswith(("train_", "val_"))] if rows else []
    keys = [k for k in keys if any(r.get(k) is not None for r in rows)]
    n = max(1, len(keys))
    cols = min(4, n)
    fig, axes = plt.subplots(
        (n + cols - 1) // cols, cols, figsize=(3.2 * cols, 2.4 * ((n + cols - 1) // cols)), squeeze=False
    )
    epochs = [r["epoch"] for r in rows]
    for ax, key in zip(axes.flat, keys):
        ax.plot(epochs, [r.get(key) for r in rows], marker="o", markersize=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class RunArtifacts:
    """Rank 0's writer of per-epoch artifacts into `run_dir` (local or remote)."""

    # A local run directory takes the same path as a bucket: staging, then copying a few files, costs little,
    # and every local run and test then exercises what remote runs do.
    def __init__(self, run_dir: str, resume_epoch: int = 0):
        self.run_dir = run_dir
        self.staging = Path(tempfile.mkdtemp(prefix="rfgan-artifacts-"))
        (self.staging / SAMPLES_DIR).mkdir()
        self.rows = [r for r in self._existing_rows() if r["epoch"] <= resume_epoch]
        self._tb = None

    def _existing_rows(self) -> list[dict[str, Any]]:
        path = storage.join(self.run_dir, METRICS_FILE)
        return read_metrics_csv(storage.read_text(path)) if storage.is_file(path) else []

    def tensorboard(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.staging / TENSORBOARD_DIR))
        return self._tb

    def epoch(self, metrics: Mapping[str, Any], target: torch.Tensor, fake: torch.Tensor) -> list[str]:
        """Write this epoch's artifacts; returns the names (relative to the run directory) it copied there."""
        epoch = int(metrics["epoch"])
        self.rows.append(dict(metrics))
        grid = f"{SAMPLES_DIR}/epoch_{epoch:04d}.png"
        save_grid(self.staging / grid, target, fake)
        (self.staging / METRICS_FILE).write_text(metrics_csv(self.rows))
        plot_curves(self.rows, self.staging / CURVES_FILE)
        tb = self.tensorboard()
        for key, value in metrics.items():
            if key.startswith(("train_", "val_")) or key == "samples_per_s":
                tb.add_scalar(key.replace("_", "/", 1), value, epoch)
        tb.add_image("samples", sample_grid(target, fake), epoch)
        tb.flush()
        # Only what this epoch changed: earlier grids are already there, and copying them again would make the
        # writes per epoch grow with the epoch count. This writer's event file(s) are appended to every epoch.
        events = sorted(
            p.relative_to(self.staging).as_posix() for p in (self.staging / TENSORBOARD_DIR).rglob("*") if p.is_file()
        )
        names = [grid, METRICS_FILE, CURVES_FILE, *events]
        storage.upload(self.staging, self.run_dir, names)
        (self.staging / grid).unlink()  # never needed again
        return names

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        shutil.rmtree(self.staging, ignore_errors=True)
