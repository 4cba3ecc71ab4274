import torch

from rfgan.run.shard_cache import ShardCache


def _stream(rows: int, batch: int, electrodes: int = 5, size: int = 4):
    """Batches as Ray Data yields them: row i has response i in every electrode and image pixels i % 256."""
    for start in range(0, rows, batch):
        ids = torch.arange(start, min(start + batch, rows))
        yield {
            "responses": ids[:, None].float().expand(-1, electrodes).clone(),
            "image": (ids % 256).to(torch.uint8)[:, None, None, None].expand(-1, size, size, 3).clone(),
        }


def _filled(rows: int, batch: int, budget_mb: int = 1) -> ShardCache:
    cache = ShardCache(budget_mb)
    for b in _stream(rows, batch):
        cache.add(b)
    return cache


def test_kept_shard_is_reshuffled_each_epoch_with_rows_intact():
    cache = _filled(rows=50, batch=8)
    assert not cache.decided and cache.kept_rows() == 50
    cache.agree(50)
    assert cache.decided and cache.ready and cache.rows == 50

    epoch = list(cache.batches(8, seed=3))
    assert len(epoch) == 6  # 50 rows in full batches of 8: the remainder of 2 is dropped, as when streamed
    ids = torch.cat([b["responses"][:, 0] for b in epoch]).long()
    assert len(set(ids.tolist())) == 48 and set(ids.tolist()) <= set(range(50))
    for b in epoch:  # each row's response and image travel together
        assert b["responses"].shape == (8, 5) and b["image"].shape == (8, 4, 4, 3)
        assert torch.equal(b["image"][:, 0, 0, 0].long(), b["responses"][:, 0].long() % 256)
        assert torch.equal(b["responses"], b["responses"][:, :1].expand(-1, 5))

    again = torch.cat([b["responses"][:, 0] for b in cache.batches(8, seed=3)]).long()
    other = torch.cat([b["responses"][:, 0] for b in cache.batches(8, seed=4)]).long()
    assert torch.equal(ids, again)  # the epoch seed decides the order: a restarted run draws the same
    assert not torch.equal(ids, other)
    assert ids.tolist() != sorted(ids.tolist())


def test_ranks_keep_the_fewest_rows_any_rank_kept():
    cache = _filled(rows=50, batch=8)
    cache.agree(41)  # another rank kept 41: every rank runs 41 // 8 = 5 steps
    assert cache.rows == 41 and len(list(cache.batches(8, seed=0))) == 5
    ids = torch.cat([b["responses"][:, 0] for b in cache.batches(8, seed=0)]).long()
    assert set(ids.tolist()) <= set(range(41))


def test_a_shard_over_the_budget_is_not_kept():
    cache = ShardCache(budget_mb=1)
    for b in _stream(200, 16, size=96):  # 200 rows of 96×96×3 bytes: 5.5 MB
        cache.add(b)
    assert cache.overflowed and cache.kept_rows() == 0 and not cache.parts
    cache.agree(cache.kept_rows())
    assert cache.decided and not cache.ready


def test_no_rank_keeps_its_shard_unless_all_did():
    cache = _filled(rows=50, batch=8)
    cache.agree(0)  # another rank overflowed: it kept 0 rows, the fewest
    assert cache.decided and not cache.ready and not cache.parts


def test_no_budget_means_nothing_to_agree_on():
    cache = ShardCache(0)
    assert cache.decided and not cache.ready
    cache.add(next(_stream(8, 8)))
    assert cache.kept_rows() == 0


def test_a_cache_holding_the_whole_shard_shuffles_it_from_the_first_epoch():
    rows = next(_stream(50, 50))
    cache = ShardCache.holding(rows)
    assert cache.decided and cache.ready and cache.rows == 50

    def no_stream(drop_last):
        raise AssertionError("a held shard reads no stream")

    first = list(cache.epoch(no_stream, 8, seed=1, fewest=lambda n: n))
    assert len(first) == 6  # full batches only, as in every epoch
    ids = torch.cat([b["responses"][:, 0] for b in first]).long().tolist()
    assert len(set(ids)) == 48 and ids != sorted(ids)
    second = torch.cat([b["responses"][:, 0] for b in cache.epoch(None, 8, seed=2, fewest=lambda n: n)]).long()
    assert second.tolist() != ids


def test_kept_rows_go_on_a_gpu_only_when_they_leave_most_of_its_free_memory():
    from rfgan.run.shard_cache import DEVICE_SHARE, kept_on, placement

    gib = 2**30
    assert placement(gib, "cuda:0", free_bytes=int(gib / DEVICE_SHARE)) == "device"
    assert placement(gib + 1, "cuda:0", free_bytes=int(gib / DEVICE_SHARE)) == "pinned"  # trials sharing the GPU
    assert placement(gib, "cuda:1", free_bytes=None) == "pinned"
    assert placement(10 * gib, "cpu", free_bytes=None) == "host"
    rows = next(_stream(8, 8))
    assert kept_on(rows, "cpu") is rows
