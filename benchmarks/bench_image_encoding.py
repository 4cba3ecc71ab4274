"""Image storage: the same synthetic recording written with raw pixels (schema version 1) and with one PNG per row
(version 2); for each, the size on disk, the write time and the rows/s of reading it back decoded with
`iter_split` (what the ridge baseline and the NWB export read; Ray Data's map tasks run the same `decode_table`).

    python benchmarks/bench_image_encoding.py --dir /tmp/enc-bench            # 2,000 images at 96x96, 256 electrodes
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from rfgan.data.format import iter_split
from rfgan.data.synth import SynthSpec, write_synth


def folder_mb(path: Path, pattern: str = "*.parquet") -> float:
    return sum(p.stat().st_size for p in path.rglob(pattern)) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True, help="where the two datasets are written (replaced if there)")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--electrodes", type=int, default=256)
    ap.add_argument("--reads", type=int, default=3, help="passes over the training split; the best is reported")
    ap.add_argument("--reuse", action="store_true", help="read the datasets already in --dir, do not write them")
    args = ap.parse_args()
    spec = SynthSpec(n_train=args.images, n_val=10, electrodes=args.electrodes, size=args.size, shard_rows=1000)
    pixels = args.images * args.size * args.size * spec.channels / 1e6
    responses = args.images * args.electrodes * 4 / 1e6
    print(
        f"{args.images} images {args.size}x{args.size}x{spec.channels}: raw arrays {pixels:.1f} MB of pixels "
        f"+ {responses:.1f} MB of float32 responses"
    )
    for encoding in ("raw", "png"):
        out = Path(args.dir, encoding)
        start = time.perf_counter()
        if not args.reuse:
            write_synth(out, spec, overwrite=True, image_encoding=encoding)
        written = time.perf_counter() - start
        best = best_cpu = 0.0
        for _ in range(args.reads):
            # Wall time and this process's CPU time: on a machine shared with other jobs the CPU figure says what
            # decoding costs, the wall figure what this run happened to get.
            start, cpu, rows = time.perf_counter(), time.process_time(), 0
            for batch in iter_split(out, "train", batch_rows=256):
                rows += len(batch["image"])
                np.asarray(batch["image"]).sum()  # touch the pixels, as a consumer would
            best = max(best, rows / (time.perf_counter() - start))
            best_cpu = max(best_cpu, rows / (time.process_time() - cpu))
        print(
            f"{encoding}: train split {folder_mb(out / 'train'):.1f} MB on disk, "
            + ("" if args.reuse else f"written (with synth's generation) in {written:.1f} s, ")
            + f"read back decoded at {best:,.0f} rows/s wall, {best_cpu:,.0f} rows per CPU second "
            f"(best of {args.reads})"
        )


if __name__ == "__main__":
    main()
