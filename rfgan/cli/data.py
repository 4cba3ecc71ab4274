"""The dataset commands: synth, ingest, ingest-tvsd, ingest-nwb, export, check."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rfgan.cli.common import (
    DEFAULT_DATA,
    IMAGE_ENCODING_HELP,
    OVERWRITE_HELP,
    DefaultsInWords,
    add_image_encoding,
    add_spec_flags,
    dir_size_mb,
    nothing_written_if_interrupted,
    progress,
    spec_from_args,
)
from rfgan.errors import DataError, UsageError

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
    "response_model": "linear: RF_GANsynth's model, the RF-weighted mean of the image; energy: contrast energy in "
    "Gabor bands pooled by the RF, tuned by area (V1, V4, IT), a smaller linear part, divisive normalisation and "
    "rectification (docs/simulator.md)",
    "nonlinearity": "relu rectifies the drive after subtracting --threshold (the energy model always rectifies)",
    "threshold": "subtracted from the drive before the nonlinearity",
    "gain": "response units per unit drive (for Poisson noise: expected spike count per unit drive)",
    "noise": "response noise",
    "noise_sd": "sd of Gaussian noise, in response units",
    "repeats": "presentations of each image, each with independent noise",
    "seed": "random seed; the same seed gives the same dataset",
    "shard_rows": "rows per Parquet file",
    "rf_fit_error": "write an RF table that is a fit of the simulated RFs: centres off by RF_FIT_ERROR RF sigmas "
    "(sd, per axis), sizes by a log-normal factor; the true RFs go in metadata.json (0: the true RFs)",
    "rf_unfitted_it": "share of IT sites without an RF fit, written as a broad prior at the fovea",
}


def _add_colour_flags(p: argparse.ArgumentParser, default: bool) -> None:
    # Said in words: both flags share the `color` default, which the formatter would print as True on each.
    colour = p.add_mutually_exclusive_group()
    said = f"default: {'colour' if default else 'gray'}"
    colour.add_argument("--color", dest="color", action="store_true", default=default, help=f"RGB images ({said})")
    colour.add_argument("--gray", dest="color", action="store_false", help=f"grayscale images ({said})")


def _add_synth(sub: argparse._SubParsersAction) -> None:
    from rfgan.data.synth import NOISE_KINDS, NONLINEARITIES, RESPONSE_MODELS, TUNINGS, SynthSpec

    p = sub.add_parser(
        "synth",
        help="write a dataset from a simulated recording",
        description="Simulate a recording: electrode arrays with Gaussian RFs (size growing with eccentricity), "
        "natural-like images (1/f noise, shapes, edges, textures, crops of photographs shipped with "
        "scikit-image) and responses from the linear RF model (response = sum over pixels of the "
        "sum-normalised RF map times the electrode's colour tuning: luminance plus a colour-opponent "
        "signal) or the contrast-energy model (--response-model energy), then write it in the rfgan dataset "
        "format. "
        "Deterministic for a seed.",
        formatter_class=DefaultsInWords,
    )
    p.add_argument("--out", default=DEFAULT_DATA, help="dataset directory to write")
    add_spec_flags(
        p,
        SynthSpec,
        SYNTH_HELP,
        flags={"n_arrays": "--arrays"},
        choices={
            "tuning": TUNINGS,
            "nonlinearity": NONLINEARITIES,
            "noise": NOISE_KINDS,
            "response_model": RESPONSE_MODELS,
        },
        custom={"color": _add_colour_flags},
    )
    add_image_encoding(p)
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    from rfgan.data.synth import SynthSpec, write_synth

    spec = spec_from_args(SynthSpec, args)
    try:
        spec.validate()
    except ValueError as e:
        raise UsageError(str(e)) from e
    start = time.perf_counter()
    total = (spec.n_train + spec.n_val + spec.n_test) * spec.repeats
    with progress(total, "synth", args.quiet) as update, nothing_written_if_interrupted():
        info = write_synth(args.out, spec, overwrite=args.overwrite, on_rows=update, image_encoding=args.image_encoding)
    print(
        f"wrote {args.out}: {info.splits} rows, {info.n_electrodes} electrodes, "
        f"{info.image_size[0]}x{info.image_size[1]}x{info.channels} images, "
        f"{dir_size_mb(args.out):.1f} MB, in {time.perf_counter() - start:.1f} s"
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
        formatter_class=DefaultsInWords,
    )
    add_spec_flags(p, IngestSpec, INGEST_HELP, types={"crop": _percent_range})
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

    spec = spec_from_args(IngestSpec, args)
    with progress(None, "ingest", args.quiet) as update, nothing_written_if_interrupted():
        info, dropped = ingest(spec, on_rows=update)
    if dropped:
        print(f"dropped {dropped} row(s) with NaN/inf responses")
    constant = info.source.get("constant_electrodes")
    if constant:
        print(
            f"note: electrode(s) {constant[:10]}{'…' if len(constant) > 10 else ''} ({len(constant)} of "
            f"{info.n_electrodes}) give the same response to every row (dead or disconnected channels?); they are "
            "kept, and carry no information",
            file=sys.stderr,
        )
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
    p = sub.add_parser(name, help=help, description=description, formatter_class=DefaultsInWords)
    add_spec_flags(p, spec, helps, flags)
    p.set_defaults(func=lambda args: _run_recipe(ingest, spec_from_args(spec, args), name, args.quiet))


def _run_recipe(ingest, spec, command: str, quiet: bool) -> int:
    """Run a recording's ingest with a progress bar, then print its report and what it wrote."""
    with progress(None, command, quiet) as update, nothing_written_if_interrupted():
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
        formatter_class=DefaultsInWords,
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

    bar = progress(None, "export (rows, then images)", args.quiet, unit="items")
    with bar as update, nothing_written_if_interrupted():
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
        from rfgan.cli import build_parser  # the whole parser, whose defaults synth takes

        cmd_synth(build_parser().parse_args(["synth", "--out", DEFAULT_DATA]))
        return DEFAULT_DATA
    from rfgan.data.format import read_info
    from rfgan.data.synth import SynthSpec, source_of

    # It may be an older rfgan's, or one made with other `rfgan synth` options: used as it is (it may be someone's
    # work), but said, since the demo's figures in the README are for the default one.
    try:
        info = read_info(DEFAULT_DATA)
    except DataError as e:  # e.g. an older rfgan's, of a format this one does not read
        raise DataError(f"{e} (It is the built-in synthetic dataset: `rfgan synth --overwrite` remakes it.)") from e
    source, default = info.source, source_of(SynthSpec())
    # A setting an older rfgan did not record (response_model, say) was its default.
    differ = sorted(k for k in default.keys() | source.keys() if source.get(k, default.get(k)) != default.get(k))
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

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, not {args.batch_size}")
    data = dataset_or_synth(args.data)
    for line in check_dataset(data, batch_size=args.batch_size, address=args.address):
        print(line)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_synth(sub)
    _add_ingest(sub)
    _add_ingest_tvsd(sub)
    _add_ingest_nwb(sub)
    _add_export(sub)
    _add_check(sub)
