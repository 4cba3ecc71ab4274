"""What the command groups share: flags made from a spec dataclass, progress bars, help texts, and the config of
train and tune."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

DEFAULT_DATA = "data/synthetic"
DEMO_PRESET = "demo"
OVERWRITE_HELP = (
    "replace --out if it holds an rfgan dataset (any other folder, the current folder, a parent of it "
    "or a home folder is refused)"
)
IMAGE_ENCODING_HELP = (
    "how the dataset stores images: raw uint8 pixels (the fastest to write and read) or one lossless PNG per row "
    "(about half the size on disk, decoded as batches are read; see docs/benchmarks.md)"
)


def split_name(text: str) -> str:
    """--split: a plain split name (a path in it would reach outside the dataset or the run)."""
    from rfgan.data.format import SPLIT_NAME

    if not SPLIT_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a split name: a plain word such as train, val or test")
    return text


def positive_int(text: str) -> int:
    """An integer flag that must be at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1; give a whole number >= 1")
    return value


def add_image_encoding(p: argparse.ArgumentParser) -> None:
    from rfgan.data.format import IMAGE_ENCODINGS

    p.add_argument("--image-encoding", choices=IMAGE_ENCODINGS, default="raw", help=IMAGE_ENCODING_HELP)


@contextmanager
def progress(total: int | None, desc: str, quiet: bool, unit: str = "rows") -> Iterator:
    """A bar and its callback `update(n, total=None)`: an ingest learns its row count only once it has checked its
    inputs, and tells it with the first call (rfgan.data.ingest.Plan.write). The bar appears with that first call, so
    input refused before any row is written is its one error line, with no empty bar before it."""
    from tqdm import tqdm

    bars = []

    def update(n: int, total: int | None = None) -> None:
        if not bars:
            bars.append(tqdm(total=first_total, desc=desc, unit=unit, disable=quiet))
        bar = bars[0]
        if total is not None:
            bar.total = total
            bar.refresh()
        bar.update(n)

    first_total = total
    try:
        yield update
    finally:
        for bar in bars:
            bar.close()


class DefaultsInWords(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where its help already says it in words ("default: ...")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


@contextmanager
def nothing_written_if_interrupted() -> Iterator[None]:
    # The dataset writer removes what it staged before a Ctrl-C leaves it; it says so in the interrupt itself when
    # something was written after all (an old copy replaced).
    try:
        yield
    except KeyboardInterrupt as e:
        if str(e):
            raise
        raise KeyboardInterrupt("nothing was written") from None


def dir_size_mb(path: str) -> float:
    import pyarrow.fs as pafs

    from rfgan.storage import filesystem

    fs, root = filesystem(path)
    entries = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return sum(e.size for e in entries if e.type == pafs.FileType.File) / 1e6


def add_spec_flags(
    p: argparse.ArgumentParser,
    spec: type,
    helps: dict[str, str],
    flags: dict[str, str] | None = None,
    *,
    types: dict[str, Callable[[str], Any]] | None = None,
    choices: dict[str, Sequence[str]] | None = None,
    custom: dict[str, Callable[[argparse.ArgumentParser, Any], None]] | None = None,
) -> None:
    """The one way a command's flags are made from the dataclass `spec` that its work takes (`spec_from_args` reads
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
            add_image_encoding(p)
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


def spec_from_args(spec: type, args: argparse.Namespace):
    return spec(**{f.name: getattr(args, f.name) for f in dataclasses.fields(spec)})


VERBOSE_HELP = "also show Ray's own output on the terminal (it is always in the log file in --out)"


DASHBOARD_HELP = "start a local Ray with its dashboard (off by default: its processes slow the start on few cores)"


def config_from_args(args: argparse.Namespace, flags: dict):
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
