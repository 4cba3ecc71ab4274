"""Checkpoints: one directory with G, D, both optimizers, step/epoch, the config, the RF table and the
dataset facts a checkpoint is only valid for (electrode count, image size, response statistics, and the content
hashes whose digest is the dataset's fingerprint).

Loading uses `torch.load(weights_only=True)`: a checkpoint cannot run code. The frozen VGG net is never saved.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from rfgan import __version__, parse, storage
from rfgan.config import Config
from rfgan.data.format import DatasetInfo, differences
from rfgan.data.rf import RFTable
from rfgan.errors import DataError
from rfgan.gan.build import GAN, Optimizers

NETS_FILE, CONFIG_FILE, STATE_FILE, RFS_FILE, DATASET_FILE = (
    "nets.pt",
    "config.json",
    "state.json",
    "rfs.csv",
    "dataset.json",
)
CONTENT_FILES = (NETS_FILE, CONFIG_FILE, RFS_FILE, DATASET_FILE)  # all but state.json, which lists their sizes
# Version 1 (rfgan before its first release) could hold configs and datasets this rfgan no longer reads; version 2
# holds dataset facts without content hashes, so the data it was trained on cannot be told from other data; version 3
# records its files' sizes but not their SHA-256, so bytes damaged in place went unnoticed. All are refused with the
# rfgan version that wrote them.
CHECKPOINT_VERSION = 4
# Checkpoints are ranked by validation SSIM: a reconstruction metric, comparable across runs and configs (the
# adversarial losses are not).
SCORE = "val_ssim"
# What a checkpoint holds (state.json "kind"): a GAN, or the ridge weights of `rfgan baseline`, which eval,
# reconstruct and report read too (rfgan.evaluate.inference).
GAN_KIND = "gan"
# The training curves a run directory holds beside its checkpoints (rfgan.run.artifacts writes them, the report
# page shows them).
CURVES_FILE = "curves.png"


def unwrap(module: nn.Module | None) -> nn.Module | None:
    """The bare module inside a DDP (or similar) wrapper, so checkpoints load with or without DDP."""
    return getattr(module, "module", module)


# What each use of a checkpoint offers when its data differs: (for other RFs, for other data of the same RFs).
ADVICE = {
    "eval": (
        "Use the training recording, or pass --allow-other-rfs to evaluate anyway",
        "pass --allow-other-data if evaluating on it is intended",
    ),
    "resume": (
        "Resume on the recording the run was trained on, or train a new run on this one (another --out)",
        "resume on the data the run was trained on, pass --allow-other-data if continuing on this data is intended "
        "(its checkpoints' validation scores then come from two datasets), or train a new run (another --out)",
    ),
    "sweep": (
        "Resume the sweep on the recording its trials were trained on, or start a new sweep (another --out)",
        "resume the sweep on the data its trials were trained on, or start a new sweep (another --out): its trials "
        "are compared on one dataset",
    ),
}


@dataclass(frozen=True)
class Accept:
    """What a use of a checkpoint accepts besides the data it was trained on, and so what its refusals advise."""

    use: str = "eval"  # "eval", "resume" or "sweep" (ADVICE)
    other_rfs: bool = False  # another recording of the same shape (eval's --allow-other-rfs)
    other_data: bool = False  # another dataset of the same RFs: re-made, other rows (--allow-other-data)


ITS_OWN_DATA = Accept()  # eval's default: nothing but the data the checkpoint was trained on


def check_data_matches(
    trained_info: DatasetInfo,
    trained_rfs: RFTable,
    info: DatasetInfo,
    rfs: RFTable,
    where: str = "this dataset",
    accept: Accept = ITS_OWN_DATA,
) -> str | None:
    """Refuse data a checkpoint (trained on `trained_info`, `trained_rfs`) was not trained for: electrode count, image
    size, channels; the RF table (a recording of the same shape with other RFs would be decoded through the wrong
    maps) unless `accept.other_rfs`; and any other dataset (another fingerprint: re-made with other rows, other
    statistics) unless `accept.other_data` or `accept.other_rfs`. The refusal says what changed and what the use
    offers. Returns a warning when data that differs was accepted, else None."""
    mine = (trained_info.n_electrodes, trained_info.image_size, trained_info.channels)
    theirs = (info.n_electrodes, info.image_size, info.channels)
    if mine != theirs:
        raise DataError(
            f"the checkpoint was trained for {mine[0]} electrodes and {mine[1][0]}x{mine[1][1]}x{mine[2]} "
            f"images, but {where} has {theirs[0]} electrodes and {theirs[1][0]}x{theirs[1][1]}x{theirs[2]} "
            "images; use a checkpoint trained on data of this shape, or train a new one."
        )
    other_rfs, other_data = ADVICE[accept.use]
    if not trained_rfs.equals(rfs):
        if not accept.other_rfs:
            raise DataError(
                f"{where} has other receptive fields than the data the checkpoint was trained on (its rfs.csv "
                "differs from the checkpoint's): it is another recording, which this model would decode through "
                f"the wrong RF maps. {other_rfs}."
            )
        return "evaluated on a dataset whose RF table differs from the training data's (--allow-other-rfs)"
    before, after = trained_info.fingerprint, info.fingerprint
    if before == after:
        return None
    changed = differences(trained_info, info)
    if not (accept.other_data or accept.other_rfs):
        raise DataError(
            f"{where} is not the dataset the checkpoint was trained on (fingerprint {after[:12]}, trained on "
            f"{before[:12]}): {changed}; {other_data}."
        )
    return f"the data differs from the training data (fingerprint {after[:12]}, trained on {before[:12]}): {changed}"


@dataclass
class Checkpoint:
    config: Config
    info: DatasetInfo
    rfs: RFTable
    epoch: int
    step: int
    nets: dict[str, Any]  # state dicts: generator, discriminator, opt_g, opt_d (the last three may be None)
    metrics: dict[str, float]

    def check_matches(
        self, info: DatasetInfo, rfs: RFTable, where: str = "this dataset", accept: Accept = ITS_OWN_DATA
    ) -> str | None:
        """check_data_matches for this checkpoint's data."""
        return check_data_matches(self.info, self.rfs, info, rfs, where, accept)

    def restore(self, gan: GAN, opts: Optimizers | None = None) -> None:
        """Load the saved states into the GAN's (possibly DDP-wrapped) nets and, if given, the optimizers."""
        unwrap(gan.generator).load_state_dict(self.nets["generator"])
        if gan.discriminator is not None:
            if self.nets["discriminator"] is None:
                raise DataError("the checkpoint has no discriminator (it was trained without one, lambda_adv=0)")
            unwrap(gan.discriminator).load_state_dict(self.nets["discriminator"])
        if opts is not None:
            opts.g.load_state_dict(self.nets["opt_g"])
            if opts.d is not None and self.nets["opt_d"] is not None:
                opts.d.load_state_dict(self.nets["opt_d"])


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    config: Config,
    info: DatasetInfo,
    rfs: RFTable,
    gan: GAN,
    opts: Optimizers | None,
    epoch: int,
    step: int,
    metrics: dict[str, float] | None = None,
) -> Path:
    nets = {
        "generator": unwrap(gan.generator).state_dict(),
        "discriminator": unwrap(gan.discriminator).state_dict() if gan.discriminator is not None else None,
        "opt_g": opts.g.state_dict() if opts is not None else None,
        "opt_d": opts.d.state_dict() if opts is not None and opts.d is not None else None,
    }
    return write_checkpoint(
        directory, nets=nets, config=config.to_dict(), info=info, rfs=rfs, epoch=epoch, step=step, metrics=metrics
    )


def write_checkpoint(
    directory: str | os.PathLike,
    *,
    nets: dict[str, Any],
    config: dict[str, Any],
    info: DatasetInfo,
    rfs: RFTable,
    epoch: int,
    step: int,
    metrics: dict[str, float] | None = None,
    kind: str = GAN_KIND,
) -> Path:
    """The checkpoint files of any kind of model (a GAN's, or rfgan baseline's ridge weights): `nets` (tensors
    only), its config, the dataset facts and RF table, then state.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(nets, directory / NETS_FILE)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    (directory / DATASET_FILE).write_text(json.dumps(info.to_json(), indent=1) + "\n")
    rfs.to_csv(directory / RFS_FILE)
    # state.json last, with every other file's size: a checkpoint cut short (a crash while writing, an interrupted
    # upload, a truncated copy) is told from a complete one without loading it.
    sizes = {name: (directory / name).stat().st_size for name in CONTENT_FILES}
    # And their hashes: damage that keeps a file's size (a flipped byte on disk, an edited RF table) is told when the
    # checkpoint is loaded, which reads every byte anyway.
    hashes = {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in CONTENT_FILES}
    (directory / STATE_FILE).write_text(
        json.dumps(
            {
                "checkpoint_version": CHECKPOINT_VERSION,
                "rfgan_version": __version__,
                "kind": kind,
                "epoch": epoch,
                "step": step,
                "metrics": metrics or {},
                "files": sizes,
                "sha256": hashes,
            },
            indent=1,
        )
        + "\n"
    )
    return directory


def read_state(directory: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's state.json (local or a URI), checked to be complete: every file present with the size
    recorded when it was written. Raises DataError naming the file that is missing, short or unreadable."""
    directory = os.fspath(directory)
    state_file = storage.join(directory, STATE_FILE)
    if not storage.is_file(state_file):
        raise DataError(f"{directory} is not an rfgan checkpoint, or not a complete one: {STATE_FILE} is missing.")
    try:
        state = parse.loads(storage.read_bytes(state_file), STATE_FILE, DataError)
        if not isinstance(state, dict):
            raise DataError("not a JSON object")
    except DataError as e:
        raise DataError(f"{state_file}: cannot read it ({e}); the checkpoint is damaged.") from e
    if state.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise DataError(
            f"{directory}: checkpoint_version {state.get('checkpoint_version')!r}, written by rfgan "
            f"{state.get('rfgan_version', '(unknown)')}, is not read by this rfgan {__version__} (it reads version "
            f"{CHECKPOINT_VERSION}): train the model again with this rfgan, or read it with the rfgan that wrote it."
        )
    _check_state_values(state, state_file)
    sizes = storage.file_sizes(directory)
    for name in CONTENT_FILES:
        if name not in sizes:
            raise DataError(f"{storage.join(directory, name)} is missing; the checkpoint is incomplete.")
        expected = state.get("files", {}).get(name)
        if sizes[name] != expected:
            raise DataError(
                f"{storage.join(directory, name)} has {sizes[name]} bytes, {expected} were written; "
                "the checkpoint is damaged (cut short)."
            )
    return state


def _check_state_values(state: dict[str, Any], where: str) -> None:
    """The types every reader of state.json relies on (ranking by metrics, `last` by epoch)."""
    for key in ("epoch", "step"):
        if isinstance(state.get(key), bool) or not isinstance(state.get(key), int):
            raise DataError(f"{where}: {key} is {state.get(key)!r}, not a whole number; the checkpoint is damaged.")
    hashes = state.get("sha256")
    if not isinstance(hashes, dict) or not all(
        isinstance(hashes.get(name), str) and len(hashes[name]) == 64 for name in CONTENT_FILES
    ):
        raise DataError(
            f"{where}: sha256 does not list a hash of each of {list(CONTENT_FILES)}; the checkpoint is damaged."
        )
    metrics = state.get("metrics")
    if not isinstance(metrics, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()
    ):
        raise DataError(
            f"{where}: metrics is {metrics!r}, not a mapping of metric names to numbers; the checkpoint is damaged."
        )


class CheckpointFiles(NamedTuple):
    """A checkpoint of any kind as read: state.json, config.json (not yet parsed as a Config), dataset facts, RF
    table, and the tensors of nets.pt."""

    state: dict[str, Any]
    config: dict[str, Any]
    info: DatasetInfo
    rfs: RFTable
    nets: dict[str, Any]


def read_checkpoint(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> CheckpointFiles:
    """A local checkpoint directory of any kind, verified (read_state) before anything is loaded."""
    directory = Path(directory)
    state = read_state(directory)
    raw = {name: (directory / name).read_bytes() for name in CONTENT_FILES}
    for name, data in raw.items():
        digest, recorded = hashlib.sha256(data).hexdigest(), state["sha256"][name]
        if digest != recorded:
            raise DataError(
                f"{directory / name}: its content is not what was written (SHA-256 {digest[:12]}…, {STATE_FILE} "
                f"lists {recorded[:12]}…); the checkpoint is damaged: use another (--checkpoint), or copy the run "
                "again from a good source."
            )
    try:
        config = json.loads(raw[CONFIG_FILE])
        info = DatasetInfo.from_json(json.loads(raw[DATASET_FILE]), str(directory / DATASET_FILE))
    except ValueError as e:  # JSONDecodeError, DataError
        raise DataError(
            f"{directory}: cannot read its config or dataset facts ({e}); the checkpoint is damaged."
        ) from e
    rfs = RFTable.from_csv_text(raw[RFS_FILE].decode(), str(directory / RFS_FILE))
    try:
        nets = torch.load(io.BytesIO(raw[NETS_FILE]), map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise DataError(
            f"{directory / NETS_FILE}: cannot load it ({str(e).splitlines()[0]}); the checkpoint is damaged."
        ) from e
    return CheckpointFiles(state, config, info, rfs, nets)


def load_checkpoint(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """A local GAN checkpoint directory, verified (read_state) before anything is loaded."""
    return gan_checkpoint(read_checkpoint(directory, map_location), directory)


def gan_checkpoint(files: CheckpointFiles, where: str | os.PathLike) -> Checkpoint:
    """The GAN checkpoint that `files` (read_checkpoint of `where`) hold; refuses another kind of model."""
    kind = checkpoint_kind(files.state)
    if kind != GAN_KIND:
        raise DataError(
            f"{where} holds a {kind} model (from rfgan baseline), not a GAN: it cannot be trained or resumed."
        )
    try:
        config = Config.from_dict(files.config)
    except ValueError as e:  # ConfigError
        raise DataError(f"{where}: cannot read its config ({e}); the checkpoint is damaged.") from e
    state = files.state
    return Checkpoint(
        config, files.info, files.rfs, int(state["epoch"]), int(state["step"]), files.nets, state.get("metrics", {})
    )


def checkpoint_kind(state: dict[str, Any]) -> str:
    """The kind of model a checkpoint's state.json describes."""
    return str(state.get("kind"))


@contextmanager
def local_copy(directory: str | os.PathLike) -> Iterator[Path]:
    """A checkpoint directory as a local path: itself, or a temporary copy of a URI's (a few files)."""
    directory = os.fspath(directory)
    if not storage.is_remote(directory):
        yield Path(directory)
        return
    with tempfile.TemporaryDirectory(prefix="rfgan-checkpoint-") as tmp:
        storage.download(directory, tmp)
        yield Path(tmp)


def open_checkpoint(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """load_checkpoint of a local directory or a URI."""
    with local_copy(directory) as local:
        return load_checkpoint(local, map_location)


def intact_checkpoints(run: str | os.PathLike) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The run's checkpoints that are complete ({name: state}) and those that are not ({name: why})."""
    intact, damaged = {}, {}
    for name in existing_checkpoints(run):
        try:
            intact[name] = read_state(storage.join(run, name))
        except DataError as e:
            damaged[name] = str(e)
    return intact, damaged


def find_checkpoint(run: str | os.PathLike, which: str = "best") -> str:
    """`best` (highest validation SSIM), `last` (highest epoch), or a checkpoint directory's path, among the
    complete checkpoints of a run (local or a URI; so is the answer). Damaged ones are skipped with a note."""
    run = os.fspath(run)
    if which not in ("best", "last"):
        # One of the run's own: what is written into the run (its eval table) would otherwise be another run's.
        if storage.split(which)[0] != storage.absolute(run):
            raise DataError(
                f"--checkpoint {which} is not a checkpoint of --run {run}: give one of its checkpoint folders, best "
                "or last (for a checkpoint of another run, give that run as --run)."
            )
        read_state(which)
        return os.fspath(which)
    states, damaged = intact_checkpoints(run)
    for why in damaged.values():
        print(f"note: skipping a damaged checkpoint: {why}", file=sys.stderr)
    if damaged and not states:
        first = next(iter(damaged.values())).rstrip(".")
        raise DataError(
            f"{run} holds {len(damaged)} checkpoint(s) but none is complete (e.g. {first}); copy the run's "
            "checkpoint folders whole again, or train again."
        )
    if not states:
        raise DataError(f"{run} holds no checkpoint; train first (`rfgan train --out {run}`).")
    if which == "last":
        name = max(states, key=lambda c: states[c]["epoch"])
    else:
        name = max(states, key=lambda c: (states[c]["metrics"].get(SCORE, float("-inf")), states[c]["epoch"]))
    return storage.join(run, name)


def newest_intact(run: str | os.PathLike) -> str | None:
    """The run's newest complete checkpoint (the one a resume continues from), or None."""
    intact, _ = intact_checkpoints(run)
    return storage.join(run, max(intact, key=lambda name: intact[name]["epoch"])) if intact else None


def trained_data(run: str | os.PathLike) -> tuple[str, DatasetInfo, RFTable] | None:
    """(checkpoint, its dataset facts, its RF table) of the run's newest complete checkpoint, the one a resume
    continues from, read from its small files alone (local or a URI); None when the run has none."""
    directory = newest_intact(run)
    if directory is None:
        return None
    dataset_file, rfs_file = storage.join(directory, DATASET_FILE), storage.join(directory, RFS_FILE)
    try:
        info = DatasetInfo.from_json(json.loads(storage.read_bytes(dataset_file)), dataset_file)
        text = storage.read_text(rfs_file)
    except (OSError, ValueError) as e:  # JSONDecodeError, UnicodeDecodeError, DataError
        raise DataError(f"{directory}: cannot read its dataset facts ({e}); the checkpoint is damaged.") from e
    return directory, info, RFTable.from_csv_text(text, rfs_file)


def existing_checkpoints(run: str | os.PathLike) -> list[str]:
    """Names of the checkpoint directories in a run directory (local or a URI), sorted; [] if there is none."""
    return [name for name in storage.list_dirs(run) if name.startswith("checkpoint")]
