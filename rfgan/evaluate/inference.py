"""Using a run: load its model (a GAN checkpoint, or the ridge weights of `rfgan baseline`) as one Decoder, evaluate
it on a dataset with the standard table, reconstruct images from new responses; and make the ridge baseline's run.
No Ray: a laptop with the run directory, or access to the bucket it was written to, is enough."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from rfgan import outputs, parse, storage
from rfgan.checkpoint import (
    ITS_OWN_DATA,
    Accept,
    check_data_matches,
    checkpoint_kind,
    existing_checkpoints,
    find_checkpoint,
    gan_checkpoint,
    local_copy,
    read_checkpoint,
)
from rfgan.data.format import DatasetInfo, check_outside_dataset, read_info, read_rfs, read_split, to_tensors
from rfgan.data.rf import RFTable
from rfgan.errors import DataError, UsageError
from rfgan.evaluate import learned
from rfgan.evaluate.features import FeatureNets
from rfgan.evaluate.grid import save_grid
from rfgan.evaluate.ridge import N_FEATURES, RIDGE_KIND, fit_ridge, load_ridge, save_ridge
from rfgan.evaluate.table import per_image_metrics, summarize
from rfgan.gan.build import build_gan
from rfgan.gan.learned_rf import MapRFs, learned_rfs

BATCH = 64
GRID_IMAGES = 8  # pairs in the eval grid
RECONSTRUCTIONS = "reconstructions.npy"

# What each command may replace (rfgan.outputs): its own earlier output, nothing else.
EVAL_TABLE = outputs.Kind("a table of rfgan eval", lambda path: b'"metrics"' in outputs.head(path))
EVAL_GRID = outputs.Kind("a PNG", lambda path: outputs.head(path, 8) == b"\x89PNG\r\n\x1a\n")
LEARNED_TABLE = outputs.Kind(
    "an RF table that rfgan eval wrote", lambda path: outputs.head(path, 32).startswith(b"electrode_id,x_deg")
)
LEARNED_MAPS = outputs.Kind("a .npy array", lambda path: outputs.head(path, 6) == b"\x93NUMPY")
# rfgan baseline writes a new run: it replaces nothing (an empty folder is not replaced, only filled).
NEW_RUN = outputs.Kind("an empty folder", lambda path: False, folder=True)


def _is_reconstruction(path: str) -> bool:
    names = storage.file_sizes(path)
    return (
        not storage.list_dirs(path)
        and RECONSTRUCTIONS in names
        and all(n == RECONSTRUCTIONS or re.fullmatch(r"\d+\.png", n) for n in names)
    )


# A folder that rfgan reconstruct wrote is replaced whole by the next one: no PNG of an earlier call stays.
RECONSTRUCTION = outputs.Kind(
    f"a folder of rfgan reconstruct's output ({RECONSTRUCTIONS} and numbered PNGs only)",
    _is_reconstruction,
    folder=True,
)


def check_device(device: str | torch.device) -> torch.device:
    """The torch device `device` names, refused in one line if it is not one or is not here."""
    try:
        chosen = torch.device(device)
    except RuntimeError as e:
        raise UsageError(f"--device {device}: not a torch device ({e}); use cpu, cuda or cuda:N.") from e
    # Third audit: meta, xla and the like, cpu:7, and mps where there is none failed later with a traceback or were
    # reported as a damaged checkpoint.
    if chosen.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {device}: rfgan runs on cpu, cuda[:N] or mps, not {chosen.type}.")
    if chosen.type == "cpu" and chosen.index not in (None, 0):
        raise UsageError(f"--device {device}: the CPU is one device; use --device cpu.")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: this machine has no Apple GPU (MPS); use --device cpu.")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"--device {device}: this process sees no CUDA GPU (torch.cuda.is_available() is False); use --device "
            "cpu, or run where a GPU is visible (check CUDA_VISIBLE_DEVICES and the driver)."
        )
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise UsageError(
            f"--device {device}: this process sees {torch.cuda.device_count()} GPU(s); use cuda:0 to "
            f"cuda:{torch.cuda.device_count() - 1}."
        )
    return chosen


@dataclass
class Decoder:
    """A trained model as eval, reconstruct and report use it, whatever it is."""

    kind: str  # "gan", or "ridge" (rfgan baseline)
    model: Callable[[Tensor], Tensor]  # responses (B, E) → images (B, C, H, W) in [0, 1]; in eval mode
    info: DatasetInfo  # the data it was trained on
    rfs: RFTable
    config: dict[str, Any]  # its resolved config
    checkpoint: str
    epoch: int
    mask: Tensor | None = None  # (1, 1, H, W) RF mask of a model trained inside it (data.mask), else None
    learned_rfs: nn.Module | None = None  # its learned RF layer (model.rf_layer gaussian or map), else None

    @torch.no_grad()
    def reconstruct(self, responses: Tensor, device: torch.device | str = "cpu") -> Tensor:
        """(N, E) responses → (N, C, H, W) images in [0, 1] on the CPU, a batch at a time on `device`."""
        batches = [responses[i : i + BATCH].to(device) for i in range(0, len(responses), BATCH)]
        return torch.cat([self.model(r).cpu() for r in batches])

    def check_matches(self, info: DatasetInfo, rfs: RFTable, where: str, accept: Accept = ITS_OWN_DATA) -> str | None:
        """check_data_matches for the data this model was trained on."""
        return check_data_matches(self.info, self.rfs, info, rfs, where, accept)


def load_decoder(checkpoint: str, device: str | torch.device = "cpu") -> Decoder:
    """The model of a checkpoint of any kind (local or a URI), on `device`."""
    check_device(device)
    with local_copy(checkpoint) as local:
        files = read_checkpoint(local, map_location=device)
        if checkpoint_kind(files.state) == RIDGE_KIND:
            model = load_ridge(files, checkpoint)
            return Decoder(RIDGE_KIND, model, files.info, files.rfs, files.config, checkpoint, files.state["epoch"])
    ckpt = gan_checkpoint(files, checkpoint)
    gan = build_gan(ckpt.config, ckpt.info, ckpt.rfs, with_vgg=False, with_d=False)
    ckpt.restore(gan)
    gan.generator.eval()  # dropout off, BatchNorm's running statistics used and never updated
    gan = gan.to(device)
    config = ckpt.config.to_dict()
    layer = learned_rfs(gan.generator)
    return Decoder("gan", gan.reconstruct, ckpt.info, ckpt.rfs, config, checkpoint, ckpt.epoch, gan.mask, layer)


def eval_file(run: str, split: str) -> str:
    """Where `rfgan eval` writes a run's table for a split."""
    return storage.join(run, f"eval_{split}.json")


def grid_file(run: str, split: str) -> str:
    """Where `rfgan eval` writes a run's grid of reconstructions for a split."""
    return storage.join(run, f"eval_{split}.png")


def feature_nets(feature_metrics: bool, device: str | torch.device = "cpu") -> FeatureNets | None:
    """The pretrained nets of the feature metrics (downloaded if absent), or None without feature metrics."""
    return FeatureNets.pretrained().to(device) if feature_metrics else None


def evaluate_run(
    run: str,
    data: str,
    split: str = "val",
    which: str = "best",
    device: str = "cpu",
    allow_other_rfs: bool = False,
    feature_metrics: bool = True,
    allow_other_data: bool = False,
) -> dict[str, Any]:
    """The standard table (rfgan.evaluate.table) of a run's checkpoint on a dataset split, written with a grid PNG
    into the run directory. A dataset with other RFs than the training data is refused unless `allow_other_rfs`,
    another dataset of the same RFs (another fingerprint) unless `allow_other_data` (then the JSON says so). Without
    `feature_metrics` no pretrained net is needed. Its earlier table and grid of the split are replaced; another file
    under their names is refused before any work."""
    outputs.check_target(eval_file(run, split), EVAL_TABLE)
    outputs.check_target(grid_file(run, split), EVAL_GRID)
    decoder = load_decoder(find_checkpoint(run, which), device)
    accept = Accept("eval", other_rfs=allow_other_rfs, other_data=allow_other_data)
    info = read_info(data)
    warning = decoder.check_matches(info, read_rfs(data, info), str(data), accept)
    nets = feature_nets(feature_metrics, device)
    return write_evaluation(run, decoder, data, split, nets, device, warning, info=info)


def write_evaluation(
    run: str,
    decoder: Decoder,
    data: str,
    split: str,
    nets: FeatureNets | None,
    device: str | torch.device = "cpu",
    warning: str | None = None,
    into: str | None = None,
    info: DatasetInfo | None = None,
) -> dict[str, Any]:
    """Evaluate `decoder` on a split: RUN/eval_SPLIT.json (the table, and what was evaluated how) and a grid PNG,
    each staged and renamed into place (rfgan.outputs), the table last; written into `into` (a run being staged)
    when given, named as in `run`. `info`: the dataset's metadata when the caller has read it."""
    info = info or read_info(data)
    rows = read_split(data, split, info)
    responses, targets = to_tensors(rows)
    fakes = decoder.reconstruct(responses, device)
    ids = torch.from_numpy(np.array(rows["image_id"]))
    values = per_image_metrics(fakes, targets, ids, nets, decoder.mask, device)
    grid, into = grid_file(run, split), into or run
    outputs.write_file(
        grid_file(into, split),
        EVAL_GRID,
        lambda p: save_grid(p, targets[:GRID_IMAGES], fakes[:GRID_IMAGES]),
        suffix=".png",  # PIL writes the format the name says
    )
    result = {
        "metrics": summarize(values),
        # Each image's values, so that two runs' tables give paired differences (rfgan report); NaN as null.
        "per_image": {k: [None if not np.isfinite(x) else round(x, 6) for x in v.tolist()] for k, v in values.items()},
        "image_ids": ids.tolist(),
        "kind": decoder.kind,
        "checkpoint": decoder.checkpoint,
        "epoch": decoder.epoch,
        "data": storage.absolute(data),
        "data_fingerprint": info.fingerprint,
        "split": split,
        "n_images": len(rows["sample_id"]),
        "masked": decoder.mask is not None,
        "feature_nets": nets.description if nets is not None else None,
        "grid": grid,
    }
    if decoder.learned_rfs is not None:
        result["learned_rfs"] = _write_learned_rfs(run, into, decoder, info)
    if warning is not None:
        result["warning"] = warning
    outputs.write_bytes(eval_file(into, split), parse.dumps(result).encode(), EVAL_TABLE)  # undefined: null
    return result


def _write_learned_rfs(run: str, into: str, decoder: Decoder, info: DatasetInfo) -> dict[str, Any]:
    """RUN/learned_rfs.csv (and for free maps RUN/learned_rf_maps.npy, (E, H, W) float32) of the decoder's learned RF
    layer, and their scores (rfgan.evaluate.learned.scores) against its table and, when known, the true RFs."""
    layer = decoder.learned_rfs
    table = learned.learned_table(layer, decoder.rfs, decoder.info)
    outputs.write_file(storage.join(into, learned.LEARNED_RFS), LEARNED_TABLE, table.to_csv, suffix=".csv")
    written = {"layer": decoder.config["model"]["rf_layer"], "table": storage.join(run, learned.LEARNED_RFS)}
    if isinstance(layer, MapRFs):
        maps = layer.maps_array()
        outputs.write_file(
            storage.join(into, learned.LEARNED_MAPS), LEARNED_MAPS, lambda p: np.save(p, maps), suffix=".npy"
        )
        written["maps"] = storage.join(run, learned.LEARNED_MAPS)
    truth = learned.true_rfs(info, decoder.rfs)
    return {**written, **learned.scores(decoder.rfs, table, truth)}


def baseline(
    data: str,
    out: str | None = None,
    device: str = "cpu",
    feature_metrics: bool = True,
    features: str = "linear",
    n_features: int = N_FEATURES,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`rfgan baseline`: fit the ridge decoder (rfgan.evaluate.ridge), write it as a run in `out` (its checkpoint,
    config.json) and evaluate it on the validation split as `rfgan eval` does. Returns (its config, the eval result).
    Bad input (the data, a used --out, missing feature weights) is refused before anything is written; the run is
    written in a staging folder and renamed into place when complete (rfgan.outputs)."""
    out = out or f"runs/ridge-{time.strftime('%Y%m%d-%H%M%S')}"
    if not storage.is_file(out) and existing_checkpoints(out):
        raise UsageError(f"{out} already holds a run; choose another --out.")
    check_outside_dataset(out, "a baseline run")
    outputs.check_target(out, NEW_RUN)  # a file there: "is a file, not a folder"
    check_device(device)
    info = read_info(data)
    rfs = read_rfs(data, info)
    nets = feature_nets(feature_metrics, device)
    fit = fit_ridge(data, device, features=features, n_features=n_features)
    config = fit.config(storage.absolute(data))
    result = {}

    def fill(staged: Path) -> None:
        checkpoint = storage.join(out, storage.split(save_ridge(fit, str(staged), info, rfs, config))[1])
        (staged / "config.json").write_text(parse.dumps(config, indent=2))
        decoder = Decoder(RIDGE_KIND, fit.decoder.to(device), info, rfs, config, checkpoint, epoch=0)
        result.update(write_evaluation(out, decoder, data, "val", nets, device, into=str(staged), info=info))

    outputs.write_folder(out, NEW_RUN, fill)
    return config, result


def reconstruct(run: str, responses_path: str, out: str, which: str = "best", device: str = "cpu") -> str:
    """Images from new responses (N, E): `out/reconstructions.npy` (N, H, W, C) uint8 and one PNG per row, in a
    folder (a path or URI) that replaces an earlier reconstruct's whole; anything else there is refused first."""
    check_outside_dataset(out, "reconstructions")
    if not storage.is_remote(out) and Path(os.path.realpath(responses_path)).is_relative_to(os.path.realpath(out)):
        raise UsageError(
            f"--responses {responses_path} lies inside --out {out}, which rfgan reconstruct replaces whole; choose "
            "another --out (or move the responses out of it)."
        )
    outputs.check_target(out, RECONSTRUCTION)
    decoder = load_decoder(find_checkpoint(run, which), device)
    try:
        responses = np.load(responses_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{responses_path}: cannot read it as a .npy array ({e}).") from e
    if isinstance(responses, np.lib.npyio.NpzFile):  # np.load gives an archive of arrays for a .npz
        names = sorted(responses.files)
        raise DataError(
            f"{responses_path} is a .npz archive of {names}; save the responses as one .npy array "
            f"(numpy.save('responses.npy', numpy.load('{responses_path}')['{names[0] if names else 'KEY'}']))."
        )
    e = decoder.info.n_electrodes
    if responses.ndim != 2 or responses.shape[1] != e or len(responses) == 0:
        raise DataError(
            f"{responses_path}: responses are {responses.shape}; this model needs (N, {e}) with N >= 1, one row "
            "per stimulus and one column per electrode in the order of the run's rfs.csv."
        )
    if not (np.issubdtype(responses.dtype, np.integer) or np.issubdtype(responses.dtype, np.floating)):
        raise DataError(
            f"{responses_path}: responses are {responses.dtype}; give real numbers (for complex values, e.g. their "
            "magnitude, numpy.abs)."
        )
    with np.errstate(over="ignore"):
        # The models compute in float32: a value beyond its range (±3.4e38) would become inf, and a black image.
        as_float32 = responses.astype(np.float32)
    bad = ~np.isfinite(as_float32).all(axis=1)
    if bad.any():
        raise DataError(
            f"{responses_path}: rows {np.flatnonzero(bad)[:10].tolist()} hold NaN, infinite or out-of-range "
            "responses (beyond float32's ±3.4e38); fix or drop those rows."
        )
    fake = decoder.reconstruct(torch.from_numpy(as_float32), device)  # (N, C, H, W) in [0, 1]
    if not torch.isfinite(fake).all():
        raise DataError(
            f"{responses_path}: the model's output is NaN for some rows (responses far outside the training "
            "data's range?); nothing was written."
        )
    images = (fake.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)

    def fill(staged: Path) -> None:
        np.save(staged / RECONSTRUCTIONS, images)
        for i, im in enumerate(images):
            Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(staged / f"{i:05d}.png")

    outputs.write_folder(out, RECONSTRUCTION, fill)
    return out
