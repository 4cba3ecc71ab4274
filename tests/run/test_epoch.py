"""The training epoch without Ray: tiny real nets, real steps, real batches of the tiny dataset."""

import warnings

import pytest
import torch

from rfgan.config import preset
from rfgan.data.format import read_info, read_rfs, read_split
from rfgan.errors import TrainingDiverged
from rfgan.gan.build import build_gan, build_optimizers
from rfgan.gan.step import StepLosses
from rfgan.run.epoch import epoch_seed, run_epoch, samples, validate
from rfgan.run.shard_cache import ShardCache

SMALL = {"model.ngf": 8, "model.n_down": 3, "model.ndf": 8, "model.d_layers": 2, "optim.batch_size": 8}


def _gan(tiny_dataset, **overrides):
    cfg = preset("tiny").with_overrides({**SMALL, **overrides})
    info, rfs = read_info(tiny_dataset), read_rfs(tiny_dataset)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "VGGFeatures.random_init")
        gan = build_gan(cfg, info, rfs)
    return cfg, gan, build_optimizers(cfg, gan)


def _batches(tiny_dataset, size=8, split="train"):
    rows = read_split(tiny_dataset, split)
    n = len(rows["responses"])
    return [
        {k: torch.as_tensor(rows[k][i : i + size].copy()) for k in ("responses", "image")} for i in range(0, n, size)
    ]


def test_an_epoch_trains_every_batch_and_returns_mean_losses(tiny_dataset):
    cfg, gan, opts = _gan(tiny_dataset)
    batches = _batches(tiny_dataset)  # 40 rows: 5 batches of 8
    before = [p.clone() for p in gan.generator.parameters()]
    seen = []
    totals = run_epoch(gan, opts, batches, cfg, epoch=1, on_step=lambda losses, n: seen.append((losses, n)))
    assert totals.steps == totals.rank_steps == 5 and [n for _, n in seen] == [1, 2, 3, 4, 5]
    assert set(totals.losses) == {f"train_{k}" for k in StepLosses._fields}
    pix = torch.stack([losses.pix for losses, _ in seen]).mean()
    assert totals.losses["train_pix"] == pytest.approx(float(pix))
    assert any(not torch.equal(a, b) for a, b in zip(before, gan.generator.parameters()))
    assert totals.seconds > 0
    # A second epoch from the same weights goes on lowering the pixel loss.
    again = run_epoch(gan, opts, batches, cfg, epoch=2)
    assert again.losses["train_pix"] < totals.losses["train_pix"]


def test_an_epoch_is_the_same_for_the_same_seed(tiny_dataset):
    runs = []
    for _ in range(2):
        cfg, gan, opts = _gan(tiny_dataset, **{"data.with_noise": True})
        torch.manual_seed(epoch_seed(cfg.run.seed, 1, 0))
        runs.append(run_epoch(gan, opts, _batches(tiny_dataset), cfg, epoch=1).losses)
    assert runs[0] == runs[1]


def test_a_diverging_epoch_stops_with_its_reason(tiny_dataset):
    cfg, gan, opts = _gan(tiny_dataset, **{"loss.adversarial": "lsgan", "optim.lr_d": 1e12, "optim.lr_g": 1e12})
    with pytest.raises(TrainingDiverged, match=r"training diverged in epoch 3: .*NaN/inf\. Lower the learning rates"):
        run_epoch(gan, opts, _batches(tiny_dataset), cfg, epoch=3)


def test_an_epoch_without_a_full_batch_says_so(tiny_dataset):
    cfg, gan, opts = _gan(tiny_dataset)
    with pytest.raises(ValueError, match="no full batch of 8 training rows per worker"):
        run_epoch(gan, opts, [], cfg, epoch=1)


def test_the_kept_shard_feeds_later_epochs_after_one_call_per_epoch(tiny_dataset):
    """ShardCache.epoch: the first epoch streams (and keeps, with the short last batch), the ranks agree, and later
    epochs reshuffle the kept rows: what train_loop does each epoch, with a stream in place of Ray Data's."""
    cfg, gan, opts = _gan(tiny_dataset)
    rows = _batches(tiny_dataset, size=12)  # 40 rows as Ray Data might yield them: 12, 12, 12, 4
    asked, agreed = [], []

    def stream(drop_last):
        asked.append(drop_last)
        return iter(rows)

    def fewest(n):
        agreed.append(n)
        return n

    cache = ShardCache(budget_mb=16)
    first = run_epoch(gan, opts, cache.epoch(stream, 12, seed=1, fewest=fewest), cfg, epoch=1)
    assert first.steps == 3 and asked == [False] and agreed == [40] and cache.ready and cache.rows == 40
    second = run_epoch(gan, opts, cache.epoch(stream, 12, seed=2, fewest=fewest), cfg, epoch=2)
    assert second.steps == 3 and asked == [False] and agreed == [40]  # from memory: no stream, no agreement


def test_validation_and_the_sample_grid(tiny_dataset):
    _, gan, _ = _gan(tiny_dataset)
    val = read_split(tiny_dataset, "val")  # 12 rows
    batches = [(torch.tensor(val["responses"][i : i + 8]), torch.tensor(val["image"][i : i + 8])) for i in (0, 8)]
    whole = validate(gan, batches, rank=0, world=1, device="cpu")
    assert {"psnr", "ssim", "pixel_corr"} <= set(whole) and 0 < whole["ssim"] < 1
    # A rank's share without DDP is its own batches only.
    assert validate(gan, batches, rank=1, world=2, device="cpu") != whole
    target, fake = samples(gan, batches, "cpu")
    assert target.shape == fake.shape == (8, 3, 32, 32)
