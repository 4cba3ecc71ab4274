"""Ingest at TVSD scale: generate a recording in the TVSD layout (1,024 electrodes × 22,248 training + 100 test
images, MATLAB v7.3 MUA and image lists, a MATLAB v5 RF fit, a folder of 96×96 JPEGs), then time
`rfgan ingest-tvsd` on it in a child process and report its peak memory (the child's max RSS), rows/s and the
dataset's size against the raw size of its arrays.

    python benchmarks/bench_ingest.py --dir /tmp/tvsd-bench          # the full size (generating takes minutes)
    python benchmarks/bench_ingest.py --dir /tmp/tvsd-small --train 2000 --electrodes 256
    python benchmarks/bench_ingest.py --dir /tmp/tvsd-bench --image-encoding png   # PNG images (schema version 2)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

# The MATLAB v7.3 writer the tests use: one writer of that layout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data"))
from matfiles import Cell, write_mat73  # noqa: E402

from rfgan.data.synth import SynthSpec, make_image  # noqa: E402


def generate(root: Path, n_train: int, n_test: int, electrodes: int, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    names = [f"obj{k // 12}/obj{k // 12}_{k % 12:02d}s.jpg" for k in range(n_train + n_test)]
    scenes = SynthSpec(size=size, photo_fraction=0.3)
    for k, name in enumerate(names):  # synth's natural-like scenes: noise alone would not compress like photographs
        path = root / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(make_image(np.random.default_rng((seed, k)), scenes)).save(path, quality=90)
    write_mat73(
        root / "THINGS_normMUA.mat",
        {
            "train_MUA": rng.normal(size=(electrodes, n_train)).astype(np.float32),  # [electrode × stimulus]
            "test_MUA": rng.normal(size=(electrodes, n_test)).astype(np.float32),
            "reliab": rng.uniform(0.3, 0.9, (electrodes, 2)),
        },
    )
    write_mat73(root / "things_imgs.mat", {"train_imgs": Cell(names[:n_train]), "test_imgs": Cell(names[n_train:])})
    scipy.io.savemat(
        root / "THINGS_RFs.mat",
        {"all_centrex": rng.uniform(-40, 40, (1, electrodes)), "all_centrey": rng.uniform(-40, 40, (1, electrodes))},
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", required=True, help="where to generate the recording (reused if there)")
    p.add_argument("--train", type=int, default=22_248)
    p.add_argument("--test", type=int, default=100)
    p.add_argument("--electrodes", type=int, default=1024)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--shard-rows", type=int, default=1000)
    p.add_argument("--image-encoding", choices=("raw", "png"), default="raw", help="the dataset's image storage")
    args = p.parse_args()
    root = Path(args.dir)
    if not (root / "THINGS_RFs.mat").exists():
        start = time.perf_counter()
        generate(root, args.train, args.test, args.electrodes, args.size)
        print(f"generated {root} in {time.perf_counter() - start:.0f} s")
    out = root / "dataset"
    cmd = [sys.executable, "-m", "rfgan", "ingest-tvsd", "--mua", str(root / "THINGS_normMUA.mat")]
    cmd += ["--imgs", str(root / "things_imgs.mat"), "--image-root", str(root / "images")]
    cmd += ["--rfs", str(root / "THINGS_RFs.mat"), "--rf-sigma-deg", "1", "--px-per-deg", "12", "--stimulus-px"]
    cmd += [str(args.size), "--resize", str(args.size), "--shard-rows", str(args.shard_rows), "--out", str(out)]
    cmd += ["--image-encoding", args.image_encoding, "--overwrite", "--quiet"]
    start = time.perf_counter()
    child = subprocess.Popen(cmd)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        sys.exit(f"rfgan ingest-tvsd failed (status {status})")
    rows = args.train + args.test
    stored = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    raw_images = rows * args.size * args.size * 3
    raw_responses = rows * args.electrodes * 4
    print(
        f"{rows} rows x {args.electrodes} electrodes, {args.size}x{args.size} RGB, {args.image_encoding} images: "
        f"{wall:.0f} s, "
        f"{rows / wall:.0f} rows/s, peak RSS {usage.ru_maxrss / 1024:.0f} MB (Linux reports kB); dataset "
        f"{stored / 1e6:.0f} MB on disk vs raw {raw_images / 1e6:.0f} MB images + {raw_responses / 1e6:.0f} MB "
        "responses (float32)"
    )


if __name__ == "__main__":
    main()
