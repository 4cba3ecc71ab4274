"""Checkpoints: one directory with G, D, both optimizers, step/epoch, the config, the RF table and the
dataset facts a checkpoint is only valid for (electrode count, image size, response statistics).

Loading uses `torch.load(weights_only=True)`: a checkpoint cannot run code. The frozen VGG net is never saved.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rfgan import __version__, storage
from rfgan.config import Config
from rfgan.data.format import DatasetInfo
from rfgan.data.rf import RFTable
from rfgan.errors import DataError
from rfgan.gan.build import GAN, Optimizers

NETS_FILE, CONFIG_FILE, STATE_FILE, RFS_FILE, DATASET_FILE = (
    "nets.pt", "config.json", "state.json", "rfs.csv", "dataset.json")
CHECKPOINT_VERSION = 1
# Checkpoints are ranked by validation SSIM: a reconstruction metric, comparable across runs and configs (the
# adversarial losses are not).
SCORE = "val_ssim"


def unwrap(module: nn.Module | None) -> nn.Module | None:
    """The bare module inside a DDP (or similar) wrapper, so checkpoints load with or without DDP."""
    return getattr(module, "module", module)


@dataclass
class Checkpoint:
    config: Config
    info: DatasetInfo
    rfs: RFTable
    epoch: int
    step: int
    nets: dict[str, Any]  # state dicts: generator, discriminator, opt_g, opt_d (the last three may be None)
    metrics: dict[str, float]

    def check_matches(self, info: DatasetInfo, where: str = "this dataset") -> None:
        """Refuse data the checkpoint was not trained for (electrode count, image size, channels)."""
        mine = (self.info.n_electrodes, self.info.image_size, self.info.channels)
        theirs = (info.n_electrodes, info.image_size, info.channels)
        if mine != theirs:
            raise DataError(
                f"the checkpoint was trained for {mine[0]} electrodes and {mine[1][0]}x{mine[1][1]}x{mine[2]} "
                f"images, but {where} has {theirs[0]} electrodes and {theirs[1][0]}x{theirs[1][1]}x{theirs[2]} "
                "images; use a checkpoint trained on data of this shape, or train a new one."
            )

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


def save_checkpoint(directory: str | os.PathLike, *, config: Config, info: DatasetInfo, rfs: RFTable, gan: GAN,
                    opts: Optimizers | None, epoch: int, step: int, metrics: dict[str, float] | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    nets = {
        "generator": unwrap(gan.generator).state_dict(),
        "discriminator": unwrap(gan.discriminator).state_dict() if gan.discriminator is not None else None,
        "opt_g": opts.g.state_dict() if opts is not None else None,
        "opt_d": opts.d.state_dict() if opts is not None and opts.d is not None else None,
    }
    torch.save(nets, directory / NETS_FILE)
    (directory / CONFIG_FILE).write_text(config.to_json() + "\n")
    (directory / DATASET_FILE).write_text(json.dumps(info.to_json(), indent=1) + "\n")
    rfs.to_csv(directory / RFS_FILE)
    (directory / STATE_FILE).write_text(json.dumps({
        "checkpoint_version": CHECKPOINT_VERSION, "rfgan_version": __version__, "epoch": epoch, "step": step,
        "metrics": metrics or {}}, indent=1) + "\n")
    return directory


def load_checkpoint(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    directory = Path(directory)
    missing = [f for f in (NETS_FILE, CONFIG_FILE, STATE_FILE, RFS_FILE, DATASET_FILE) if not (directory / f).exists()]
    if missing:
        raise DataError(f"{directory} is not an rfgan checkpoint: {missing} missing.")
    state = json.loads((directory / STATE_FILE).read_text())
    if state.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise DataError(f"{directory}: checkpoint_version {state.get('checkpoint_version')} is not supported "
                        f"(this rfgan reads version {CHECKPOINT_VERSION}).")
    config = Config.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
    info = DatasetInfo.from_json(json.loads((directory / DATASET_FILE).read_text()), str(directory / DATASET_FILE))
    rfs = RFTable.from_csv(directory / RFS_FILE)
    nets = torch.load(directory / NETS_FILE, map_location=map_location, weights_only=True)
    return Checkpoint(config, info, rfs, int(state["epoch"]), int(state["step"]), nets, state.get("metrics", {}))


def existing_checkpoints(run: str | os.PathLike) -> list[str]:
    """Names of the checkpoint directories in a run directory (local or a URI), sorted; [] if there is none."""
    return [name for name in storage.list_dirs(run) if name.startswith("checkpoint")]
