"""A demo `rfgan train` (`--preset tiny` on the built-in dataset) with two versions of rfgan, alternating A B A B.

    python benchmarks/ab_demo.py --before d68e766 [--after WORKTREE] [--pairs 2] [--epochs 1] [--data data/synthetic]

`--before` is a git revision, checked out into a temporary worktree; `--after` is this working tree unless given.
Each run is a fresh `python -m rfgan train` process (Ray's start-up included) on the same dataset, the pairs
alternate (before, after, before, after, ...), and the ratios are taken pair by pair, so a machine that slows down
during the run slows both runs of a pair. Printed: each run's wall time, training rate (samples/s of its epochs, from
`metrics.csv`) and last validation PSNR/SSIM; the median ratios; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_demo(tree: Path, data: Path, out: Path, epochs: int, sets: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    argv = [
        sys.executable,
        "-m",
        "rfgan",
        "train",
        "--preset",
        "tiny",
        "--data",
        str(data),
        "--out",
        str(out),
        "--set",
        f"run.epochs={epochs}",
    ]
    for s in sets:
        argv += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"ab_demo: {' '.join(argv)} failed in {tree}:\n{proc.stderr[-3000:]}")
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    samples = sum(float(r["samples_per_s"]) * float(r["epoch_s"]) for r in rows)
    train_s = sum(float(r["epoch_s"]) for r in rows)
    return {
        "wall_s": wall,
        "train_s": train_s,
        "samples_per_s": samples / train_s,
        "val_psnr": float(rows[-1]["val_psnr"]),
        "val_ssim": float(rows[-1]["val_ssim"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="git revision of the version to compare against")
    p.add_argument("--after", type=Path, default=ROOT, help="source tree of the new version (default: this one)")
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--data", type=Path, default=ROOT / "data" / "synthetic", help="an existing dataset")
    p.add_argument("--set", action="append", default=[], help="a config override given to both versions")
    args = p.parse_args()
    if not (args.data / "metadata.json").exists():
        sys.exit(f"ab_demo: no dataset at {args.data}; make one with `rfgan synth --out {args.data}`")
    data = args.data.resolve()
    with tempfile.TemporaryDirectory(prefix="ab-demo-") as tmp:
        before = Path(tmp) / "before"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(before), args.before], check=True
        )
        try:
            results: dict[str, list[dict]] = {"before": [], "after": []}
            for i in range(args.pairs):
                for name, tree in (("before", before), ("after", args.after.resolve())):
                    r = run_demo(tree, data, Path(tmp) / f"{name}-{i}", args.epochs, args.set)
                    results[name].append(r)
                    print(
                        f"pair {i + 1} {name:6s}: wall {r['wall_s']:6.1f} s, training {r['train_s']:6.1f} s at "
                        f"{r['samples_per_s']:5.1f} samples/s, val PSNR {r['val_psnr']:.2f} SSIM {r['val_ssim']:.3f}",
                        flush=True,
                    )
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], check=False)
    pairs = list(zip(results["before"], results["after"]))
    train_ratios = [b["train_s"] / a["train_s"] for b, a in pairs]
    wall_ratios = [b["wall_s"] / a["wall_s"] for b, a in pairs]
    print(
        f"training time: after is {statistics.median(train_ratios):.2f}x faster (pairs: "
        f"{', '.join(f'{x:.2f}' for x in train_ratios)}); whole command: {statistics.median(wall_ratios):.2f}x "
        f"({', '.join(f'{x:.2f}' for x in wall_ratios)})"
    )
    print(
        json.dumps(
            {
                "before": args.before,
                "epochs": args.epochs,
                "sets": args.set,
                "runs": results,
                "train_speedup": statistics.median(train_ratios),
                "wall_speedup": statistics.median(wall_ratios),
            }
        )
    )


if __name__ == "__main__":
    main()
