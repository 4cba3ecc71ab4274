"""The `rfgan` command line: synth, ingest, check."""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from rfgan.errors import DataError

DEFAULT_DATA = "data/synthetic"


@contextmanager
def _progress(total: int, desc: str, quiet: bool) -> Iterator:
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="rows", disable=quiet) as bar:
        yield bar.update


def _dir_size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def _add_synth(sub: argparse._SubParsersAction) -> None:
    from rfgan.synth import SynthSpec

    d = SynthSpec()
    p = sub.add_parser(
        "synth", help="write a dataset from a simulated recording",
        description="Simulate a recording: electrode arrays with Gaussian RFs (size growing with eccentricity), "
                    "natural-like images (1/f noise, shapes, edges, textures, crops of photographs shipped with "
                    "scikit-image) and responses from the linear RF model (response = sum over pixels of the "
                    "sum-normalised RF map times luminance), then write it in the rfgan dataset format. "
                    "Deterministic for a seed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=DEFAULT_DATA, help="dataset directory to write")
    p.add_argument("--n-train", type=int, default=d.n_train, help="training images (rows = images x repeats)")
    p.add_argument("--n-val", type=int, default=d.n_val, help="validation images")
    p.add_argument("--n-test", type=int, default=d.n_test, help="test images (0: no test split)")
    p.add_argument("--electrodes", type=int, default=d.electrodes, help="number of electrodes")
    p.add_argument("--size", type=int, default=d.size, help="images are SIZE x SIZE pixels")
    colour = p.add_mutually_exclusive_group()
    colour.add_argument("--color", dest="color", action="store_true", default=d.color, help="RGB images")
    colour.add_argument("--gray", dest="color", action="store_false", help="grayscale images")
    p.add_argument("--fov-deg", type=float, default=d.fov_deg, help="degrees of visual angle the image width spans")
    p.add_argument("--arrays", type=int, default=d.n_arrays, dest="n_arrays",
                   help="electrode arrays (about half V1, a third V4, the rest IT)")
    p.add_argument("--photo-fraction", type=float, default=d.photo_fraction,
                   help="share of images cropped from photographs; the rest are generated scenes")
    p.add_argument("--nonlinearity", choices=("linear", "relu"), default=d.nonlinearity,
                   help="relu rectifies the drive after subtracting --threshold")
    p.add_argument("--threshold", type=float, default=d.threshold, help="subtracted from the drive before the "
                   "nonlinearity")
    p.add_argument("--gain", type=float, default=d.gain, help="response units per unit drive (for Poisson noise: "
                   "expected spike count per unit drive)")
    p.add_argument("--noise", choices=("gaussian", "poisson", "none"), default=d.noise, help="response noise")
    p.add_argument("--noise-sd", type=float, default=d.noise_sd, help="sd of Gaussian noise, in response units")
    p.add_argument("--repeats", type=int, default=d.repeats,
                   help="presentations of each image, each with independent noise")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed; the same seed gives the same dataset")
    p.add_argument("--shard-rows", type=int, default=d.shard_rows, help="rows per Parquet file")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    from rfgan.data import write_dataset
    from rfgan.synth import SynthSpec, source_of, synth_splits

    spec = SynthSpec(
        n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, electrodes=args.electrodes, size=args.size,
        color=args.color, fov_deg=args.fov_deg, n_arrays=args.n_arrays, photo_fraction=args.photo_fraction,
        nonlinearity=args.nonlinearity, threshold=args.threshold, gain=args.gain, noise=args.noise,
        noise_sd=args.noise_sd, repeats=args.repeats, seed=args.seed, shard_rows=args.shard_rows,
    )
    try:
        spec.validate()
    except ValueError as e:
        raise DataError(str(e)) from e
    start = time.perf_counter()
    rfs, splits = synth_splits(spec)
    total = (spec.n_train + spec.n_val + spec.n_test) * spec.repeats
    with _progress(total, "synth", args.quiet) as update:
        info = write_dataset(args.out, rfs=rfs, fov_deg=spec.fov_deg, image_size=(spec.size, spec.size),
                             channels=spec.channels, splits=splits, source=source_of(spec),
                             overwrite=args.overwrite, on_rows=update)
    print(f"wrote {args.out}: {info.splits} rows, {info.n_electrodes} electrodes, "
          f"{info.image_size[0]}x{info.image_size[1]}x{info.channels} images, "
          f"{_dir_size_mb(Path(args.out)):.1f} MB, in {time.perf_counter() - start:.1f} s")
    return 0


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest", help="build a dataset from a lab's own arrays",
        description="Build an rfgan dataset from responses, images and an RF table. Everything is checked before "
                    "anything is written; on any error nothing is left behind.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--responses", required=True, help=".npy of shape (N, E): one row per stimulus presentation, "
                   "one column per electrode, in the order of the RF table's rows")
    p.add_argument("--images", required=True, help=".npy of shape (N, H, W) or (N, H, W, 3), uint8 or float in "
                   "[0, 1]; or a folder of image files (one per row, sorted by name, unless --image-index is given)")
    p.add_argument("--rfs", required=True, help="RF table CSV: electrode_id,x_deg,y_deg,sigma_deg[,area]; x/y in "
                   "degrees from the image centre (y up), sigma the Gaussian sd in degrees")
    p.add_argument("--fov-deg", type=float, required=True, help="degrees of visual angle the image width spans")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--image-index", help="CSV with a 'filename' column naming each row's image file in --images "
                   "(a file may repeat: repeats of one image)")
    p.add_argument("--image-ids", help=".npy of N integers: rows with equal ids show the same image (default: "
                   "rows with identical pixels, or the same file, are one image)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of distinct images for validation")
    p.add_argument("--test-fraction", type=float, default=0.0, help="share of distinct images for a test split")
    p.add_argument("--seed", type=int, default=0, help="seed of the split")
    p.add_argument("--drop-bad-rows", action="store_true",
                   help="drop rows with NaN/inf responses (and say how many) instead of refusing the input")
    p.add_argument("--shard-rows", type=int, default=1000, help="rows per Parquet file")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_ingest)


def cmd_ingest(args: argparse.Namespace) -> int:
    from rfgan.ingest import IngestSpec, ingest

    spec = IngestSpec(
        responses=args.responses, images=args.images, rfs=args.rfs, fov_deg=args.fov_deg, out=args.out,
        image_index=args.image_index, image_ids=args.image_ids, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, seed=args.seed, drop_bad_rows=args.drop_bad_rows,
        shard_rows=args.shard_rows, overwrite=args.overwrite,
    )
    with _progress(None, "ingest", args.quiet) as update:
        info, dropped = ingest(spec, on_rows=update)
    if dropped:
        print(f"dropped {dropped} row(s) with NaN/inf responses")
    print(f"wrote {args.out}: {info.splits} rows, {info.n_electrodes} electrodes, "
          f"{info.image_size[0]}x{info.image_size[1]}x{info.channels} images")
    return 0


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check", help="validate a dataset and read it end to end through Ray Data",
        description="Check a dataset's metadata, RF table and Parquet schema, then stream every split through Ray "
                    "Data and the RF projection, as training reads it. With no --data, makes the built-in "
                    f"synthetic dataset at {DEFAULT_DATA} first (if it is not there yet).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", help="dataset directory (default: the built-in synthetic dataset)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per batch")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from rfgan.check import check_dataset

    data = args.data
    if data is None:
        data = DEFAULT_DATA
        if not Path(data, "metadata.json").exists():
            cmd_synth(build_parser().parse_args(["synth", "--out", data]))
    for line in check_dataset(data, batch_size=args.batch_size, address=args.address):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from rfgan import __version__

    parser = argparse.ArgumentParser(
        prog="rfgan", description="Reconstruct seen images from electrode responses through their receptive "
                                  "fields, with a GAN, on a laptop or a Ray cluster.")
    parser.add_argument("--version", action="version", version=f"rfgan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_synth(sub)
    _add_ingest(sub)
    _add_check(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DataError as e:
        print(f"rfgan {args.command}: error: {e}", file=sys.stderr)
        return 2
