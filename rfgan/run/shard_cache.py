"""A training worker's shard, kept in memory after the first epoch when it fits (`perf.cache_shard_mb`), or from the
start when the driver read the split (`ShardCache.holding`, perf.driver_read_mb).

Ray Data re-reads and re-decodes the Parquet shard every epoch: its read tasks, its split coordinator and the
worker's own Arrow → tensor conversion take CPU the step would otherwise use. On a machine with few cores per worker
that is most of what keeps 2 workers from running at twice the rate of one (docs/benchmarks.md). The rows as read
(uint8 images, float32 responses: a quarter of the float images' bytes) are small next to RAM at this task's sizes,
4,000 rows of 96×96 RGB are 110 MB, the THINGS set's 22,248 are 0.7 GB, so later epochs shuffle the kept rows with
one permutation per epoch instead: on a GPU, on the device when they take at most DEVICE_SHARE of its free memory (no
batch crosses the bus again), else in pinned host memory (kept_on).

What changes is only which rows form each batch: a full permutation of the shard each epoch (seeded by the epoch
seed, so a restarted run draws the same), where Ray Data's local shuffle mixes a window of 4 batches. Pure PyTorch,
no Ray: `epoch` is the one call a training loop makes; it streams, keeps, and at the end of the first epoch decides
with every rank whether all kept their shard (`agree` with the fewest rows any rank kept, 0 when one kept none).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import torch

Batch = dict[str, torch.Tensor]  # {"responses": (B, E) float32, "image": (B, H, W, C) uint8}, as Ray Data yields
# The most of a GPU's free memory that kept rows may take there: the nets, their activations and other runs sharing
# the device (sweep trials with fractional GPUs) need the rest. Rows that do not fit stay in pinned host memory.
DEVICE_SHARE = 0.25


def placement(nbytes: int, device: torch.device | str, free_bytes: int | None) -> str:
    """Where `nbytes` of kept rows live for a worker on `device` whose free memory is `free_bytes` (None off CUDA):
    "device", "pinned" host memory (each batch is copied to the device as it is used), or plain "host" memory."""
    if torch.device(device).type != "cuda":
        return "host"
    return "device" if free_bytes is not None and nbytes <= DEVICE_SHARE * free_bytes else "pinned"


def kept_on(rows: Batch, device: torch.device | str) -> Batch:
    """`rows` (on the host) where they are kept for a worker on `device` (placement)."""
    device = torch.device(device)
    nbytes = sum(t.numel() * t.element_size() for t in rows.values())
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    where = placement(nbytes, device, free)
    if where == "device":
        return {k: v.to(device) for k, v in rows.items()}
    return {k: v.pin_memory() for k, v in rows.items()} if where == "pinned" else rows


class ShardCache:
    def __init__(self, budget_mb: int, device: torch.device | str = "cpu") -> None:
        self.budget, self.device = budget_mb * 2**20, device
        self.parts: list[Batch] = []
        self.nbytes = 0
        self.overflowed = budget_mb <= 0
        # With no budget there is nothing for the ranks to agree on (they share the config); else `agree` decides,
        # once, on every rank together.
        self.decided = self.overflowed
        self._kept: Batch | None = None

    @classmethod
    def holding(cls, rows: Batch) -> ShardCache:
        """A cache that already keeps `rows` (the whole shard, the same number of rows on every rank): every epoch
        shuffles them, and no stream is read."""
        cache = cls(0)
        cache._kept, cache.overflowed = rows, False
        return cache

    @property
    def ready(self) -> bool:
        """True once the shard is kept and every rank agreed to use it (`agree`)."""
        return self._kept is not None

    @property
    def rows(self) -> int:
        """Rows kept for the later epochs (0 until `agree` kept any)."""
        return 0 if self._kept is None else len(self._kept["responses"])

    def add(self, batch: Mapping[str, torch.Tensor]) -> None:
        """Keep one batch of the first epoch's stream; past the budget keep nothing (the stream goes on)."""
        if self.overflowed:
            return
        # Kept on the host while the first epoch streams, so that sealing (one concatenation) never holds two
        # copies on a GPU; kept_on decides where the sealed rows live.
        part = {k: torch.as_tensor(batch[k]).cpu() for k in ("responses", "image")}
        self.nbytes += sum(t.numel() * t.element_size() for t in part.values())
        if self.nbytes > self.budget:
            self.overflowed, self.parts = True, []
            return
        self.parts.append(part)

    def agree(self, rows: int) -> None:
        """Seal the cache with `rows`, the fewest rows any rank kept (`kept_rows`, all-reduced by MIN): all ranks then
        run the same number of steps, as DDP needs. 0 (some rank overflowed, so kept none) frees it on every rank."""
        self.decided = True
        if rows <= 0 or self.overflowed:
            self.parts, self.overflowed = [], True
            return
        kept = {k: torch.cat([p[k] for p in self.parts])[:rows] for k in ("responses", "image")}
        self.parts = []
        self._kept = kept_on(kept, self.device)

    def kept_rows(self) -> int:
        """Rows this rank has kept so far (0 once it overflowed)."""
        return 0 if self.overflowed else sum(len(p["responses"]) for p in self.parts)

    def batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        """One epoch: the kept rows in a fresh permutation, in full batches (the remainder is dropped, as in the
        streamed epochs)."""
        assert self._kept is not None, "batches() before agree()"
        device = self._kept["responses"].device
        order = torch.randperm(self.rows, generator=torch.Generator().manual_seed(seed)).to(device)
        for start in range(0, self.rows - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            yield {k: v.index_select(0, idx) for k, v in self._kept.items()}

    def epoch(
        self,
        stream: Callable[[bool], Iterable[Batch]] | None,
        batch_size: int,
        seed: int,
        fewest: Callable[[int], int],
    ) -> Iterator[Batch]:
        """One epoch's full batches of `batch_size`: the kept rows reshuffled (`batches`) once the ranks agreed to
        keep them, else `stream(drop_last)`'s (Ray Data's). Before that agreement the stream keeps its short last
        batch, so that its rows are kept too (not trained on), and its batches are kept as they pass; when it ends,
        the ranks agree through `fewest(rows)`, the fewest rows any rank kept (an all-reduce MIN over the ranks:
        every rank must run this epoch to its end)."""
        if self.ready:
            yield from self.batches(batch_size, seed)
            return
        assert stream is not None, "a cache that keeps no rows needs a stream"
        deciding = not self.decided
        for batch in stream(not deciding):
            if deciding:
                self.add(batch)
            if len(batch["responses"]) == batch_size:
                yield batch
        if deciding:
            self.agree(fewest(self.kept_rows()))
