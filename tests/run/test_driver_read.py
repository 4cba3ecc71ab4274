"""A training split the driver reads (perf.driver_read_mb): which splits, and each rank's share of the rows. The Ray
Train runs that use it are in test_train.py and test_bench_pipeline.py; this is the arithmetic, without Ray."""

import dataclasses

import numpy as np
import torch

from rfgan.config import preset
from rfgan.data.format import read_info
from rfgan.run.train import rank_rows, reads_on_driver


def test_a_split_within_driver_read_mb_whose_share_fits_the_cache_is_read_by_the_driver(tiny_dataset):
    info = read_info(tiny_dataset)
    row = info.n_electrodes * 4 + info.image_numel  # float32 responses, uint8 pixels
    at_1mb = 2**20 // row
    cfg = preset("tiny").with_overrides({"perf.driver_read_mb": 1})
    assert reads_on_driver(preset("tiny"), info)  # the default: a small split
    assert reads_on_driver(cfg, dataclasses.replace(info, splits={**info.splits, "train": at_1mb}))
    assert not reads_on_driver(cfg, dataclasses.replace(info, splits={**info.splits, "train": at_1mb + 1}))
    assert not reads_on_driver(preset("tiny").with_overrides({"perf.driver_read_mb": 0}), info)
    # Each worker keeps its share: 3 MB over 2 workers is 1.5 MB each, over a 1 MB cache but within a 2 MB one.
    big = dataclasses.replace(info, splits={**info.splits, "train": 3 * at_1mb})
    two = {"perf.driver_read_mb": 4, "run.workers": 2}
    assert not reads_on_driver(preset("tiny").with_overrides({**two, "perf.cache_shard_mb": 1}), big)
    assert reads_on_driver(preset("tiny").with_overrides({**two, "perf.cache_shard_mb": 2}), big)
    assert not reads_on_driver(preset("tiny").with_overrides({"perf.cache_shard_mb": 0}), info)


def _split(n: int) -> dict[str, np.ndarray]:
    """Row i has response i in each of 3 electrodes and pixels i % 256, read-only as Ray's arrays are."""
    ids = np.arange(n)
    split = {
        "responses": np.repeat(ids[:, None], 3, axis=1).astype(np.float32),
        "image": np.broadcast_to((ids % 256).astype(np.uint8)[:, None, None, None], (n, 4, 4, 3)).copy(),
    }
    for a in split.values():
        a.flags.writeable = False
    return split


def test_each_rank_gets_an_equal_disjoint_share_that_every_rank_computes_alike():
    split, world = _split(41), 3
    shares = [rank_rows(split, rank, world, seed=7, device="cpu") for rank in range(world)]
    ids = [s["responses"][:, 0].long().tolist() for s in shares]
    assert [len(i) for i in ids] == [13, 13, 13]  # 41 // 3 each, as Ray Data's equal split gives
    assert len(set(sum(ids, []))) == 39 and set(sum(ids, [])) <= set(range(41))
    for s in shares:  # a row's response and image stay together, and the tensors are writable copies
        assert torch.equal(s["image"][:, 0, 0, 0].long(), s["responses"][:, 0].long() % 256)
        s["responses"] += 1
    again = rank_rows(split, 1, world, seed=7, device="cpu")["responses"][:, 0].long().tolist()
    other = rank_rows(split, 1, world, seed=8, device="cpu")["responses"][:, 0].long().tolist()
    assert again == ids[1] and other != ids[1]
    assert ids[0] != sorted(ids[0])  # a permutation, not the file's order
