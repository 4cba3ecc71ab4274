"""The `rfgan` command line: synth, ingest*, check, train, eval, baseline, report, reconstruct, tune, bench."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rfgan.errors import UsageError, user_error

DEFAULT_DATA = "data/synthetic"
DEMO_PRESET = "demo"
OVERWRITE_HELP = (
    "replace --out if it holds an rfgan dataset (any other folder, the current folder, a parent of it "
    "or a home folder is refused)"
)


IMAGE_ENCODING_HELP = (
    "how the dataset stores images: raw uint8 pixels (schema version 1, the fastest to write and read) or one "
    "lossless PNG per row (version 2: about half the size on disk, decoded as batches are read; see "
    "docs/benchmarks.md)"
)


def _add_image_encoding(p: argparse.ArgumentParser) -> None:
    from rfgan.data.format import IMAGE_ENCODINGS

    p.add_argument("--image-encoding", choices=IMAGE_ENCODINGS, default="raw", help=IMAGE_ENCODING_HELP)


@contextmanager
def _progress(total: int | None, desc: str, quiet: bool, unit: str = "rows") -> Iterator:
    """A bar and its callback `update(n, total=None)`: an ingest learns its row count only once it has checked its
    inputs, and tells it with the first call (rfgan.data.ingest.Plan.write)."""
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit=unit, disable=quiet) as bar:

        def update(n: int, total: int | None = None) -> None:
            if total is not None:
                bar.total = total
                bar.refresh()
            bar.update(n)

        yield update


class _DefaultsInWords(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where its help already says it in words ("default: ...")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


@contextmanager
def _nothing_written_if_interrupted() -> Iterator[None]:
    # The dataset writer removes what it staged before a Ctrl-C leaves it; it says so in the interrupt itself when
    # something was written after all (an old copy replaced).
    try:
        yield
    except KeyboardInterrupt as e:
        if str(e):
            raise
        raise KeyboardInterrupt("nothing was written") from None


def _dir_size_mb(path: str) -> float:
    import pyarrow.fs as pafs

    from rfgan.storage import filesystem

    fs, root = filesystem(path)
    entries = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return sum(e.size for e in entries if e.type == pafs.FileType.File) / 1e6


SYNTH_HELP = {
    "n_train": "training images (rows = images x repeats)",
    "n_val": "validation images",
    "n_test": "test images (0: no test split)",
    "electrodes": "number of electrodes",
    "size": "images are SIZE x SIZE pixels",
    "fov_deg": "degrees of visual angle the image width spans",
    "n_arrays": "electrode arrays (about half V1, a third V4, the rest IT)",
    "photo_fraction": "share of images cropped from photographs; the rest are generated scenes",
    "tuning": "color: each electrode weighs luminance plus a red-green/blue-yellow signal of its own hue "
    "(stronger in V4); luminance: every electrode sees luma only",
    "nonlinearity": "relu rectifies the drive after subtracting --threshold",
    "threshold": "subtracted from the drive before the nonlinearity",
    "gain": "response units per unit drive (for Poisson noise: expected spike count per unit drive)",
    "noise": "response noise",
    "noise_sd": "sd of Gaussian noise, in response units",
    "repeats": "presentations of each image, each with independent noise",
    "seed": "random seed; the same seed gives the same dataset",
    "shard_rows": "rows per Parquet file",
}


def _add_colour_flags(p: argparse.ArgumentParser, default: bool) -> None:
    # Said in words: both flags share the `color` default, which the formatter would print as True on each.
    colour = p.add_mutually_exclusive_group()
    said = f"default: {'colour' if default else 'gray'}"
    colour.add_argument("--color", dest="color", action="store_true", default=default, help=f"RGB images ({said})")
    colour.add_argument("--gray", dest="color", action="store_false", help=f"grayscale images ({said})")


def _add_synth(sub: argparse._SubParsersAction) -> None:
    from rfgan.data.synth import NOISE_KINDS, NONLINEARITIES, TUNINGS, SynthSpec

    p = sub.add_parser(
        "synth",
        help="write a dataset from a simulated recording",
        description="Simulate a recording: electrode arrays with Gaussian RFs (size growing with eccentricity), "
        "natural-like images (1/f noise, shapes, edges, textures, crops of photographs shipped with "
        "scikit-image) and responses from the linear RF model (response = sum over pixels of the "
        "sum-normalised RF map times the electrode's colour tuning: luminance plus a colour-opponent "
        "signal), then write it in the rfgan dataset format. "
        "Deterministic for a seed.",
        formatter_class=_DefaultsInWords,
    )
    p.add_argument("--out", default=DEFAULT_DATA, help="dataset directory to write")
    _add_spec_flags(
        p,
        SynthSpec,
        SYNTH_HELP,
        flags={"n_arrays": "--arrays"},
        choices={"tuning": TUNINGS, "nonlinearity": NONLINEARITIES, "noise": NOISE_KINDS},
        custom={"color": _add_colour_flags},
    )
    _add_image_encoding(p)
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    from rfgan.data.synth import SynthSpec, write_synth

    spec = _spec_from_args(SynthSpec, args)
    try:
        spec.validate()
    except ValueError as e:
        raise UsageError(str(e)) from e
    start = time.perf_counter()
    total = (spec.n_train + spec.n_val + spec.n_test) * spec.repeats
    with _progress(total, "synth", args.quiet) as update, _nothing_written_if_interrupted():
        info = write_synth(args.out, spec, overwrite=args.overwrite, on_rows=update, image_encoding=args.image_encoding)
    print(
        f"wrote {args.out}: {info.splits} rows, {info.n_electrodes} electrodes, "
        f"{info.image_size[0]}x{info.image_size[1]}x{info.channels} images, "
        f"{_dir_size_mb(args.out):.1f} MB, in {time.perf_counter() - start:.1f} s"
    )
    return 0


INGEST_HELP = {
    "responses": "FILE.npy, FILE.npz:KEY, FILE.h5:/GROUP/KEY or FILE.mat:KEY (MATLAB v7.3 or v5): N stimulus "
    "presentations x E electrodes, either way round (the axis as long as the RF table is the electrodes; "
    "MATLAB arrays in MATLAB's order), electrodes in the order of the RF table's rows; read a shard at a time",
    "images": "FILE.npy or FILE.h5:/KEY of shape (N, H, W) or (N, H, W, 3), uint8 or float in "
    "[0, 1]; or a folder of image files (one per row, sorted by name, unless --image-index is given)",
    "rfs": "RF table CSV: electrode_id,x_deg,y_deg,sigma_deg[,area][,mask_radius_deg]; x/y in "
    "degrees from the image centre (y up), sigma the Gaussian sd of the RF map in degrees, mask_radius_deg the "
    "RF mask's radius where it is not data.mask_radius_sigmas x sigma",
    "fov_deg": "degrees of visual angle the image width spans",
    "out": "dataset directory to write",
    "image_index": "CSV with a 'filename' column naming each row's image file in --images "
    "(a file may repeat: repeats of one image) (default: none)",
    "image_ids": ".npy of N integers: rows with equal ids show the same image (default: "
    "rows with identical pixels, or the same file, are one image)",
    "val_fraction": "share of distinct images for validation",
    "test_fraction": "share of distinct images for a test split",
    "seed": "seed of the split",
    "drop_bad_rows": "drop rows with NaN/inf responses (and say how many) instead of refusing the input",
    "shard_rows": "rows per Parquet file",
    "overwrite": OVERWRITE_HELP,
    "electrode_axis": "which axis of --responses holds the electrodes (first/last as the file's own tools show "
    "it); needed only when both axes are as long as the RF table",
    "image_encoding": IMAGE_ENCODING_HELP,
    "crop": "START:STOP: keep this part of each image axis, in percent (RF_GANsynth's stimuli: 27.5:67.5); "
    "--fov-deg and the RF table then describe the cropped window (default: none)",
    "resize": "store the images RESIZE x RESIZE (RF_GANsynth: 96) (default: as they are)",
}


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    from rfgan.data.ingest import IngestSpec

    p = sub.add_parser(
        "ingest",
        help="build a dataset from a lab's own arrays",
        description="Build an rfgan dataset from responses, images and an RF table. Everything is checked before "
        "anything is written; on any error nothing is left behind.",
        formatter_class=_DefaultsInWords,
    )
    _add_spec_flags(p, IngestSpec, INGEST_HELP, types={"crop": _percent_range})
    p.set_defaults(func=cmd_ingest)


def _percent_range(text: str) -> tuple[float, float]:
    """'27.5:67.5' → (0.275, 0.675)."""
    start, sep, stop = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return float(start) / 100, float(stop) / 100
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:STOP in percent, e.g. 27.5:67.5, got {text!r}") from None


def cmd_ingest(args: argparse.Namespace) -> int:
    from rfgan.data.ingest import IngestSpec, ingest

    spec = _spec_from_args(IngestSpec, args)
    with _progress(None, "ingest", args.quiet) as update, _nothing_written_if_interrupted():
        info, dropped = ingest(spec, on_rows=update)
    if dropped:
        print(f"dropped {dropped} row(s) with NaN/inf responses")
    print(
        f"wrote {args.out}: {info.splits} rows, {info.n_electrodes} electrodes, "
        f"{info.image_size[0]}x{info.image_size[1]}x{info.channels} images"
    )
    return 0


TVSD_HELP = {
    "mua": "THINGS_normMUA.mat (MATLAB v7.3): the normalised MUA",
    "imgs": "things_imgs.mat: the THINGS stimulus of each column of the MUA",
    "image_root": "the THINGS image folder (the one holding a folder per object); the stimulus paths are looked "
    "up under it, longest matching tail first",
    "rfs": "RF table: rfgan's CSV (electrode_id = 1-based channel, x_deg, y_deg, sigma_deg; channels missing or "
    "NaN are dropped) or an RF-fit .mat such as THINGS_RFs.mat (centres in stimulus pixels from its centre)",
    "out": "dataset directory to write",
    "px_per_deg": "screen pixels per degree of visual angle (converts the RF fit and sets the field of view)",
    "stimulus_px": "the stimulus's width on screen, in pixels",
    "train_key": "training responses [electrode x stimulus] in --mua",
    "test_key": "test responses, the mean over repeats [electrode x stimulus] in --mua",
    "test_reps_key": "test responses per repeat [electrode x stimulus x repeat] in --mua (with --test-repeats)",
    "reliab_key": "per-electrode reliability in --mua, averaged over its second axis",
    "train_imgs_key": "training stimulus paths in --imgs",
    "test_imgs_key": "test stimulus paths in --imgs",
    "imgs_field": "the field holding the path, when the stimulus lists are struct arrays",
    "rf_x_key": "RF centre x in the RF-fit .mat (pixels right of the stimulus centre)",
    "rf_y_key": "RF centre y in the RF-fit .mat (pixels above the centre; see --rf-y-down)",
    "rf_size_key": "RF size (Gaussian sd, pixels) in the RF-fit .mat (default: none; then --rf-sigma-deg)",
    "rf_sigma_deg": "one RF size (Gaussian sd, degrees) for every electrode, when the fit has none",
    "rf_y_down": "the fit's y grows downwards (image rows), not upwards",
    "min_reliability": "keep electrodes whose mean reliability exceeds this",
    "array_size": "channels per electrode array (consecutive channels)",
    "areas": "each array's area, AREA:FIRST-LAST over 1-based array numbers; channels of arrays not named are "
    "dropped (they differ by monkey)",
    "val_fraction": "share of the training images held out for validation",
    "seed": "seed of the validation split",
    "test_repeats": "the test split holds every presentation (repeat 0..R-1) instead of their mean",
    "crop_px": "keep the central CROP x CROP stimulus pixels (default: all)",
    "resize": "images are stored RESIZE x RESIZE",
    "electrode_axis": "which axis of the MUA arrays holds the electrodes (auto: the one as long as reliab)",
    "drop_bad_rows": "drop rows with NaN/inf responses (and say how many) instead of refusing the input",
    "shard_rows": "rows per Parquet file",
    "image_encoding": IMAGE_ENCODING_HELP,
    "overwrite": OVERWRITE_HELP,
}


def _add_spec_flags(
    p: argparse.ArgumentParser,
    spec: type,
    helps: dict[str, str],
    flags: dict[str, str] | None = None,
    *,
    types: dict[str, Callable[[str], Any]] | None = None,
    choices: dict[str, Sequence[str]] | None = None,
    custom: dict[str, Callable[[argparse.ArgumentParser, Any], None]] | None = None,
) -> None:
    """The one way a command's flags are made from the dataclass `spec` that its work takes (`_spec_from_args` reads
    them back): a flag for every field, named after it (or as `flags` says), its default the field's, parsed by
    `types` or the field's type, limited to `choices`; fields without a default are required flags. `custom` adds
    a field's flags itself, given the parser and the default. Then --quiet, which every such command has."""
    from rfgan.data.arrays import ELECTRODE_AXES

    flags, types, custom = flags or {}, types or {}, custom or {}
    choices = {"electrode_axis": ELECTRODE_AXES, **(choices or {})}
    kinds = {"int": int, "float": float, "int | None": int, "float | None": float}
    for field in dataclasses.fields(spec):
        flag = flags.get(field.name, "--" + field.name.replace("_", "-"))
        required = field.default is dataclasses.MISSING
        if field.name in custom:
            custom[field.name](p, field.default)
            continue
        common = {"dest": field.name, "help": helps[field.name]}
        if field.name == "image_encoding":
            _add_image_encoding(p)
        elif field.type == "bool":
            p.add_argument(flag, action="store_true", **common)
        elif field.type == "Sequence[str]":
            p.add_argument(flag, action="append", default=[], **common)
        else:
            default = argparse.SUPPRESS if required else field.default
            kind = types.get(field.name, kinds.get(field.type, str))
            p.add_argument(
                flag, type=kind, required=required, default=default, choices=choices.get(field.name), **common
            )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _spec_from_args(spec: type, args: argparse.Namespace):
    return spec(**{f.name: getattr(args, f.name) for f in dataclasses.fields(spec)})


def _add_ingest_tvsd(sub: argparse._SubParsersAction) -> None:
    from rfgan.data.tvsd import TVSDSpec, ingest_tvsd

    description = (
        "Build an rfgan dataset from TVSD (Papale et al. 2025): training and test MUA of the reliable "
        "electrodes with an RF fit, each electrode's area from its array, a validation split of the training "
        "images, the test images as 'test', the THINGS stimuli cropped and resized. Key names default to the "
        "dataset README's; a wrong one fails with the keys the file has. Nothing is written on any error."
    )
    help = "build a dataset from the THINGS Ventral Stream Spiking Dataset (TVSD)"
    _add_recipe(sub, "ingest-tvsd", TVSDSpec, ingest_tvsd, help, description, TVSD_HELP, {"crop_px": "--crop"})


def _add_recipe(sub, name: str, spec: type, ingest, help: str, description: str, helps: dict, flags: dict) -> None:
    """A command that ingests one kind of recording: its flags are the fields of `spec`, its work `ingest(spec)`."""
    p = sub.add_parser(name, help=help, description=description, formatter_class=_DefaultsInWords)
    _add_spec_flags(p, spec, helps, flags)
    p.set_defaults(func=lambda args: _run_recipe(ingest, _spec_from_args(spec, args), name, args.quiet))


def _run_recipe(ingest, spec, command: str, quiet: bool) -> int:
    """Run a recording's ingest with a progress bar, then print its report and what it wrote."""
    with _progress(None, command, quiet) as update, _nothing_written_if_interrupted():
        info, report = ingest(spec, on_rows=update)
    print("\n".join(report))
    print(
        f"wrote {spec.out}: {info.splits} rows, {info.n_electrodes} electrodes, "
        f"{info.image_size[0]}x{info.image_size[1]}x{info.channels} images, {info.fov_deg:.3g}° wide"
    )
    return 0


NWB_HELP = {
    "path": "the NWB file",
    "out": "dataset directory to write",
    "fov_deg": "degrees of visual angle the image width spans",
    "stimulus": "the IndexSeries in /stimulus of the image presentations (default: the only one)",
    "responses": "'units' (spike rates of the units table) or the name of a TimeSeries (T x E) in /acquisition or "
    "a processing module (its mean in the window)",
    "window": "START:STOP, seconds after each onset over which a response is taken",
    "area_windows": "AREA=START:STOP, the window of one area (repeatable), e.g. IT=0.1:0.3",
    "area_column": "the electrodes table's column naming each electrode's area",
    "rf_columns": "the electrodes table's RF columns X,Y,SIGMA (degrees from the image centre, y up)",
    "rfs": "RF table CSV (electrode_id,x_deg,y_deg,sigma_deg[,area]) instead of the RF columns, one row per "
    "response column (default: none)",
    "val_fraction": "share of distinct images for validation",
    "test_fraction": "share of distinct images for a test split",
    "seed": "seed of the split",
    "drop_bad_rows": "drop presentations without responses (a window past the recording) instead of refusing",
    "shard_rows": "rows per Parquet file",
    "image_encoding": IMAGE_ENCODING_HELP,
    "overwrite": OVERWRITE_HELP,
}


def _add_ingest_nwb(sub: argparse._SubParsersAction) -> None:
    from rfgan.data.nwb import NWBSpec, ingest_nwb

    description = (
        "Build an rfgan dataset from an NWB file: responses in a window after each presentation of an "
        "IndexSeries over an Images container, from the units table or a time series, RFs and areas from the "
        "electrodes table. Needs pynwb (pip install 'rfgan[nwb]'). Nothing is written on any error."
    )
    help = "build a dataset from an NWB file (units or a time series, image presentations)"
    flags = {"path": "--nwb", "area_windows": "--area-window"}
    _add_recipe(sub, "ingest-nwb", NWBSpec, ingest_nwb, help, description, NWB_HELP, flags)


def _add_export(sub: argparse._SubParsersAction) -> None:
    from rfgan.data.format import SPLITS

    p = sub.add_parser(
        "export",
        help="write a dataset as an NWB file (to share on DANDI)",
        description="Write a dataset as one NWB file in the layout `rfgan ingest-nwb` reads (docs/ingest.md): "
        "the electrodes table with the RF columns, the images as an Images container, the presentations as an "
        "IndexSeries, the responses as a TimeSeries, each row's split and ids in the trials table. Needs pynwb "
        "(pip install 'rfgan[nwb]'). The file appears only when complete.",
        formatter_class=_DefaultsInWords,
    )
    p.add_argument("--data", required=True, help="the dataset to export")
    p.add_argument("--out", required=True, help="the NWB file to write (FILE.nwb)")
    p.add_argument(
        "--split",
        action="append",
        choices=SPLITS,
        help="a split to export, repeatable (default: all the dataset's splits)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from rfgan.data.nwb_export import SERIES, export_nwb

    bar = _progress(None, "export (rows, then images)", args.quiet, unit="items")
    with bar as update, _nothing_written_if_interrupted():
        done = export_nwb(args.data, args.out, args.split, args.overwrite, on_rows=update)
    print(
        f"wrote {args.out}: {done['rows']} presentations of {done['images']} images, {done['electrodes']} "
        f"electrodes, splits {done['splits']}; read it back with rfgan ingest-nwb --nwb {args.out} "
        f"--responses {SERIES} --fov-deg {done['fov_deg']:g} --out DIR"
    )
    return 0


def dataset_or_synth(path: str | None) -> str:
    """`path`, or the built-in synthetic dataset, written with the default `rfgan synth` if it is not there yet."""
    if path is not None:
        return path
    if not Path(DEFAULT_DATA, "metadata.json").exists():
        cmd_synth(build_parser().parse_args(["synth", "--out", DEFAULT_DATA]))
        return DEFAULT_DATA
    from rfgan.data.format import read_info
    from rfgan.data.synth import SynthSpec, source_of

    # It may be an older rfgan's, or one made with other `rfgan synth` options: used as it is (it may be someone's
    # work), but said, since the demo's figures in the README are for the default one.
    source, default = read_info(DEFAULT_DATA).source, source_of(SynthSpec())
    differ = sorted(k for k in default.keys() | source.keys() if source.get(k) != default.get(k))
    if differ:
        print(
            f"note: {DEFAULT_DATA} is not the default synthetic dataset (it differs in {', '.join(differ)}); "
            f"using it as it is. To remake the default one: rfgan synth --overwrite",
            file=sys.stderr,
        )
    return DEFAULT_DATA


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="validate a dataset and read it end to end through Ray Data",
        description="Check a dataset's metadata, RF table and Parquet schema, then stream every split through Ray "
        "Data and the RF projection, as training reads it. With no --data, makes the built-in "
        f"synthetic dataset at {DEFAULT_DATA} first (if it is not there yet).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", help="dataset directory (default: the built-in synthetic dataset)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per batch")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from rfgan.run.check import check_dataset

    data = dataset_or_synth(args.data)
    for line in check_dataset(data, batch_size=args.batch_size, address=args.address):
        print(line)
    return 0


VERBOSE_HELP = "also show Ray's own output on the terminal (it is always in the log file in --out)"
DASHBOARD_HELP = "start a local Ray with its dashboard (off by default: its processes slow the start on few cores)"


def _add_train(sub: argparse._SubParsersAction) -> None:
    from rfgan.config import PRESETS

    p = sub.add_parser(
        "train",
        help="train an RF-GAN with Ray Train (local Ray, or a cluster)",
        description="Train on a dataset with Ray Train: DDP across --workers (CPU or GPU), data sharded from "
        "Parquet by Ray Data, a checkpoint every epoch (best N kept by validation SSIM), sample grids, "
        "TensorBoard logs, metrics.csv and curves.png in the run directory. With no --data it trains "
        f"on the built-in synthetic dataset ({DEFAULT_DATA}, made first if absent) with the "
        f"'{DEMO_PRESET}' preset unless --preset is given.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", help="dataset directory (default: the built-in synthetic dataset)")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help=f"starting config (default: 'default' with --data, '{DEMO_PRESET}' without)",
    )
    p.add_argument(
        "--config",
        help="JSON/YAML config file (e.g. a sweep's best_config.json); its 'preset' key, if any, picks the base",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set loss.lambda_adv=0.5 (repeatable)",
    )
    p.add_argument("--workers", type=int, help="Ray Train workers (run.workers)")
    p.add_argument("--gpu", action="store_true", default=None, help="one GPU per worker (run.use_gpu)")
    p.add_argument("--epochs", type=int, help="run.epochs")
    p.add_argument("--batch-size", type=int, help="global batch size, split across workers (optim.batch_size)")
    p.add_argument("--out", help="run directory or storage URI (s3://bucket/runs/NAME); default runs/PRESET-TIME")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (epoch, optimizers, RNG)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and parameter counts, exit")
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p.add_argument("--dashboard", action="store_true", help=DASHBOARD_HELP)
    p.set_defaults(func=cmd_train)


def _config(args: argparse.Namespace, flags: dict):
    """The config of train and tune: their shared --preset/--config/--set/--data, then `flags`, the command's own
    flags as dotted keys (None: not given)."""
    from rfgan.config import resolve

    return resolve(
        preset=args.preset,
        config_file=args.config,
        sets=args.set,
        overrides={"data.path": args.data, **flags},
        default_preset="default" if args.data else DEMO_PRESET,
    )


def _describe_input(cfg) -> str:
    """The generator input of a config in words (what `rfgan train --dry-run` says of it)."""
    d = cfg.data
    responses = "z-scored responses" if d.standardize else "raw responses (not standardised)"
    maps = {
        "peak": "RF maps peaking at 1",
        "sum": "RF maps summing to 1 over the image",
        "sum_full": "RF maps summing to 1 over the whole visual field",
        "point": "the pixel of each RF centre",
    }[d.rf_norm]
    channels = "one channel per area" if d.sum_per_area else "one channel per electrode"
    return f"{responses} x {maps}, {channels}" + (", plus a channel of N(0, 1) noise" if d.with_noise else "")


def cmd_train(args: argparse.Namespace) -> int:
    from rfgan.gan.build import build_gan
    from rfgan.gan.models import count_parameters
    from rfgan.run import launch
    from rfgan.run.console import final_table
    from rfgan.run.train import preflight

    cfg = _config(
        args,
        {
            "run.workers": args.workers,
            "run.use_gpu": args.gpu,
            "run.epochs": args.epochs,
            "optim.batch_size": args.batch_size,
        },
    )
    data = dataset_or_synth(cfg.data.path)
    # A dry run builds no VGG and trains on no batch: it checks only that the nets fit the data.
    info, rfs = preflight(cfg, data, training=not args.dry_run)
    print(f"config (preset {cfg.preset!r}, data {data}):\n{cfg.to_json()}")
    if args.dry_run:
        gan = build_gan(cfg, info, rfs, with_vgg=False)
        print(
            f"generator: {count_parameters(gan.generator):,} parameters, {gan.projection.out_channels} input "
            f"channels -> {info.channels}x{info.image_size[0]}x{info.image_size[1]}"
        )
        print(f"input: {_describe_input(cfg)}")
        if gan.mask is not None:
            print(
                f"mask: target and output multiplied by the RF mask ({gan.mask.mean().item():.0%} of the pixels) "
                "before D, VGG and the pixel loss; validation and checkpoint ranking on masked images"
            )
        print(
            f"discriminator: {count_parameters(gan.discriminator):,} parameters"
            if gan.discriminator is not None
            else "discriminator: none (loss.lambda_adv = 0)"
        )
        return 0
    out = args.out or f"runs/{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = launch.train(
        cfg,
        data,
        out,
        (info, rfs),
        resume=args.resume,
        address=args.address,
        verbose=args.verbose,
        dashboard=args.dashboard,
    )
    if run.error is not None:
        reason = user_error(run.error) or run.error  # rfgan's own reason, if Ray wrapped one
        print(
            f"rfgan train: training failed after {run.wall_s:.0f} s: {str(reason).strip().splitlines()[0]}; "
            f"{run.resume_hint}; Ray's log: {run.log_file}",
            file=sys.stderr,
        )
        return 1
    print(f"done in {run.wall_s:.0f} s: {run.metrics.get('epoch')} epochs")
    print(final_table(run.metrics))
    print(
        f"run directory: {run.run_dir}\nbest checkpoint: {run.best_checkpoint}\n"
        f"samples: {run.run_dir}/samples/  curves: {run.run_dir}/curves.png  "
        f"tensorboard --logdir {run.run_dir}/tensorboard\nlog (Ray's output too): {run.log_file}"
    )
    return 0


def _add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    """Which trained generator to use, and where: shared by eval and reconstruct."""
    p.add_argument("--run", required=True, help="run directory or URI (from rfgan train --out)")
    p.add_argument("--checkpoint", default="best", help="best, last, or a checkpoint directory")
    p.add_argument("--device", default="cpu", help="torch device")


NO_FEATURES_HELP = (
    "leave out the feature metrics (AlexNet, VGG19), which need torchvision's ImageNet weights in the torch hub cache "
    "(downloaded there on first use when a network is reachable)"
)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="the standard metric table of a trained run on a dataset",
        description="The standard table of image-reconstruction papers for a run's best or last checkpoint (a GAN, or "
        "rfgan baseline's ridge decoder), each value the mean ± standard error over images: PSNR and SSIM on "
        "luma, PixCorr, two-way identification on pixels and on pretrained AlexNet (layers 2, 5) and VGG19 "
        "features, top-1 and top-5 retrieval, AlexNet layer-wise and VGG19 feature correlation, and inside "
        "the RF mask for runs trained in one. Written to RUN/eval_SPLIT.json with a grid PNG.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_checkpoint_args(p)
    p.add_argument("--data", required=True, help="dataset directory or URI")
    p.add_argument("--split", default="val", help="dataset split")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-feature-metrics", action="store_true", help=NO_FEATURES_HELP)
    p.add_argument(
        "--allow-other-rfs",
        action="store_true",
        help="evaluate on a dataset whose RF table differs from the training data's (refused otherwise; "
        "the JSON then carries a warning)",
    )
    p.set_defaults(func=cmd_eval)


def _print_evaluation(result: dict, as_json: bool) -> None:
    from rfgan.evaluate.table import feature_nets_text, table_text

    if as_json:
        print(json.dumps(result, indent=1))
        return
    print(
        f"{result['checkpoint']} ({result['kind']}, epoch {result['epoch']}) on {result['data']}/{result['split']} "
        f"({result['n_images']} images); feature nets: {feature_nets_text(result['feature_nets'])}\n"
        f"{table_text(result['metrics'])}\ngrid: {result['grid']}"
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from rfgan.evaluate.inference import evaluate_run

    result = evaluate_run(
        args.run,
        args.data,
        args.split,
        args.checkpoint,
        args.device,
        allow_other_rfs=args.allow_other_rfs,
        feature_metrics=not args.no_feature_metrics,
    )
    _print_evaluation(result, args.json)
    return 0


def _add_baseline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "baseline",
        help="a ridge-regression decoder, scored like a trained run",
        description="Fit ridge regression from the standardised responses to the pixels (closed form, normal "
        "equations summed over batches of the training split; the penalty chosen on the validation split "
        "over a log grid), write it as a run (checkpoint, config.json) that eval, reconstruct and report "
        "take like a trained one, and score it with the table of rfgan eval (RUN/eval_val.json, a grid). "
        f"With no --data, on the built-in synthetic dataset ({DEFAULT_DATA}, made first if absent).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", help="dataset directory or URI (default: the built-in synthetic dataset)")
    p.add_argument("--out", help="run directory or URI to write; default runs/ridge-TIME")
    p.add_argument("--json", action="store_true", help="print the config and the eval result as JSON")
    p.add_argument("--device", default="cpu", help="torch device of the fit and the evaluation")
    p.add_argument("--no-feature-metrics", action="store_true", help=NO_FEATURES_HELP)
    p.set_defaults(func=cmd_baseline)


def cmd_baseline(args: argparse.Namespace) -> int:
    from rfgan.evaluate.inference import baseline

    config, result = baseline(
        dataset_or_synth(args.data), args.out, args.device, feature_metrics=not args.no_feature_metrics
    )
    if args.json:
        print(json.dumps({"config": config, "eval": result}, indent=1))
        return 0
    edge = " (at the edge of the grid)" if config["lambda_at_grid_edge"] else ""
    print(f"ridge: lambda = {config['lambda']:.4g}{edge}, fitted on {config['n_train']} training rows")
    _print_evaluation(result, as_json=False)
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="one HTML page comparing runs: images, metric table, curves, configs",
        description="A self-contained HTML page (images inlined) comparing runs evaluated on the same dataset split "
        "(rfgan eval, or rfgan baseline for the ridge decoder): the same images as target | each run, the "
        "standard table side by side (mean ± SE, the best of each row marked), the training curves and "
        "each run's resolved config.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--run", required=True, help="run directory or URI")
    p.add_argument("--compare", nargs="+", default=[], metavar="RUN", help="more runs to compare with --run")
    p.add_argument("--out", help="the page to write (default: RUN/report.html)")
    p.add_argument("--split", default="val", help="the split the runs were evaluated on (their eval_SPLIT.json)")
    p.add_argument("--device", default="cpu", help="torch device for the reconstructions of the grid")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from rfgan.evaluate.report import write_report

    print(f"wrote {write_report([args.run, *args.compare], args.out, args.split, args.device)}")
    return 0


def _add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconstruct",
        help="images from new responses with a trained run",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_checkpoint_args(p)
    p.add_argument("--responses", required=True, help=".npy (N, E), electrodes in the run's rfs.csv order")
    p.add_argument("--out", required=True, help="folder for reconstructions.npy and one PNG per row")
    p.set_defaults(func=cmd_reconstruct)


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from rfgan.evaluate.inference import reconstruct

    out = reconstruct(args.run, args.responses, args.out, args.checkpoint, args.device)
    print(f"wrote {out}/reconstructions.npy and PNGs")
    return 0


def _add_tune(sub: argparse._SubParsersAction) -> None:
    from rfgan.config import PRESETS

    p = sub.add_parser(
        "tune",
        help="search loss weights and learning rates with Ray Tune + Optuna",
        description="A Ray Tune sweep: OptunaSearch (TPE, seeded, the preset's values as the first trial) and ASHA "
        "early stopping on validation SSIM, each trial a Ray Train run. Writes trials.csv (also "
        "printed), best_config.json (for rfgan train --config), trials.png and "
        "param_importances.png to --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", help="dataset directory or URI (default: the built-in synthetic dataset)")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help=f"base config (default: 'default' with --data, '{DEMO_PRESET}' without)",
    )
    p.add_argument("--config", help="base config file instead of a preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the base config")
    p.add_argument(
        "--space",
        help="search space file (YAML/JSON) replacing the default space "
        "(rfgan.sweep.space.DEFAULT_SPACE; see tune/space.yaml)",
    )
    p.add_argument("--out", help="sweep directory or storage URI (s3://...); default sweeps/PRESET-TIME")
    p.add_argument("--trials", type=int, default=20, help="number of trials")
    p.add_argument(
        "--epochs", type=int, default=10, help="epochs per trial (run.epochs; ASHA stops weak trials earlier)"
    )
    p.add_argument("--workers-per-trial", type=int, help="Ray Train workers per trial (run.workers)")
    p.add_argument("--cpus-per-worker", type=float, help="CPUs per Train worker (run.cpus_per_worker)")
    p.add_argument(
        "--gpus-per-worker",
        type=float,
        help="GPUs per Train worker, fractions share a GPU, 0 none (run.gpus_per_worker, run.use_gpu)",
    )
    p.add_argument("--max-concurrent", type=int, help="cap on trials at once (default: what the resources allow)")
    p.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep in --out")
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p.add_argument("--dashboard", action="store_true", help=DASHBOARD_HELP)
    p.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from rfgan.sweep.results import summarize, table_text
    from rfgan.sweep.runner import SweepSpec, sweep
    from rfgan.sweep.space import load_space

    gpus = args.gpus_per_worker
    cfg = _config(
        args,
        {
            "run.epochs": args.epochs,
            "run.workers": args.workers_per_trial,
            "run.cpus_per_worker": args.cpus_per_worker,
            "run.use_gpu": None if gpus is None else gpus > 0,
            "run.gpus_per_worker": gpus or None,
        },
    )
    data = dataset_or_synth(cfg.data.path)
    out = args.out or f"sweeps/{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    space = load_space(args.space)
    spec = SweepSpec(data=data, out=out, trials=args.trials, max_concurrent=args.max_concurrent, seed=args.seed)
    results = sweep(
        cfg, spec, space, resume=args.resume, address=args.address, verbose=args.verbose, dashboard=args.dashboard
    )
    rows = summarize(results, space, out)
    print(table_text(rows, space))
    print(
        f"sweep directory: {out}\nbest config: {out}/best_config.json  (rfgan train --config "
        f"{out}/best_config.json)\nplots: {out}/trials.png {out}/param_importances.png\n"
        f"log (Ray's output too): {out}/tune.log"
    )
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from rfgan.bench.step import BENCH_PRESETS

    p = sub.add_parser(
        "bench",
        help="rfgan's step against the reference loop, side by side (and the data path, workers)",
        description="Times a re-creation of the reference RF_GANsynth loop's habits and rfgan's training step on "
        "the same model, data, batch and step count, alternating A B A B in one process; prints samples/s of each, "
        "their ratio, peak memory, FLOPs per sample and the fraction of the device's measured matmul rate. "
        "Pure PyTorch (no Ray) unless --pipeline is given.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--preset", default="tiny", choices=BENCH_PRESETS, help="bench preset (tiny takes seconds)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--rounds", type=int, default=3, help="alternating A B pairs")
    p.add_argument("--steps", type=int, help="steps per arm per round (default: the preset's)")
    p.add_argument("--electrodes", type=int, help="electrodes (default: 191, as in the reference set)")
    p.add_argument("--size", type=int, help="image side in pixels (default: 96)")
    p.add_argument("--batch-size", type=int, help="batch (default: the preset's; larger on CUDA)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field of the rfgan arm, e.g. --set perf.compact_input=false (repeatable)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the per-arm peak-RSS processes on the CPU")
    p.add_argument("--profile", action="store_true", help="also print where rfgan's step spends its time")
    p.add_argument(
        "--pipeline",
        action="store_true",
        help="also measure the data path (Parquet -> Ray Data -> tensors) and 1 vs 2 Ray Train workers (starts Ray)",
    )
    p.add_argument("--data", help="dataset for --pipeline (default: the built-in synthetic dataset)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from rfgan.bench.step import format_table, profile_table, run_bench
    from rfgan.config import parse_sets

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    result = run_bench(
        args.preset,
        device,
        rounds=args.rounds,
        steps=args.steps,
        electrodes=args.electrodes,
        size=args.size,
        overrides={**({"optim.batch_size": args.batch_size} if args.batch_size else {}), **parse_sets(args.sets)},
        memory=not args.no_memory,
    )
    print(format_table(result))
    if args.profile:
        print(profile_table(args.preset, device))
    if args.pipeline:
        from rfgan.bench.pipeline import format_pipeline, run_pipeline
        from rfgan.run.launch import init_ray

        data = dataset_or_synth(args.data)
        init_ray(None, 4)
        result["pipeline"] = run_pipeline(data, args.preset, step_samples_per_s=result["rfgan_samples_per_s"])
        print(format_pipeline(result["pipeline"]))
    if args.json:
        print(json.dumps(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from rfgan import __version__

    parser = argparse.ArgumentParser(
        prog="rfgan",
        description="Reconstruct seen images from electrode responses through their receptive "
        "fields, with a GAN, on a laptop or a Ray cluster.",
    )
    parser.add_argument("--version", action="version", version=f"rfgan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_synth(sub)
    _add_ingest(sub)
    _add_ingest_tvsd(sub)
    _add_ingest_nwb(sub)
    _add_export(sub)
    _add_check(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_baseline(sub)
    _add_report(sub)
    _add_reconstruct(sub)
    _add_tune(sub)
    _add_bench(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt as e:
        # Ctrl-C is the user's own doing: one line, with what the command knows about what it left (the
        # interrupt's message), and 130, what a shell reports for a command stopped by SIGINT.
        print(f"rfgan {args.command}: interrupted{f'; {e}' if str(e) else ''}", file=sys.stderr)
        return 130
    except Exception as e:
        # rfgan's own errors, and OSErrors (unreadable paths, missing buckets, refused credentials: the system's
        # message says which), also when Ray wrapped them in a task's error: one line, exit 2. Anything else is a
        # bug, and its traceback is the report.
        shown = user_error(e)
        if shown is None:
            raise
        print(f"rfgan {args.command}: error: {str(shown).strip().replace(chr(10), ' ')}", file=sys.stderr)
        return 2
