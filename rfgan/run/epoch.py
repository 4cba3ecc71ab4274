"""One training epoch and one validation pass: pure PyTorch, no Ray.

What a training worker does between two reports, as functions of the nets, the optimizers, an iterable of batches
and the config. Under DDP (torch.distributed initialised, as Ray Train does in its workers) the sums are all-reduced
over the ranks; without it they are this process's own, so the fast tests run them as they are.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rfgan.checkpoint import unwrap
from rfgan.config import Config
from rfgan.data.format import to_tensors
from rfgan.errors import TrainingDiverged
from rfgan.evaluate.metrics import MetricAccumulator, eval_mode
from rfgan.gan.build import GAN
from rfgan.gan.losses import apply_mask
from rfgan.gan.step import StepLosses, train_step

N_SAMPLES = 8  # pairs in each sample grid
ValBatch = tuple[torch.Tensor, torch.Tensor]  # (responses (B, E), images (B, H, W, C) uint8), as read


def all_reduce(t: torch.Tensor, op: str = "SUM") -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return t


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one rank's random streams in one epoch (dropout, the noise channel, shuffling). A function of
    (seed, epoch, rank) only, so ranks draw differently and a resumed or restarted run draws what an uninterrupted
    one would from the same rows. The rows themselves are the same only where the driver read the split (each rank's
    share is a seeded permutation: rank_rows); a split that Ray Data streams is dealt to the ranks in blocks as they
    arrive, which can differ between runs and nodes, and the shard cache keeps what epoch 1 dealt. The multipliers
    are primes, so distinct triples rarely collide."""
    return seed * 1_000_003 + epoch * 1009 + rank


@dataclass(frozen=True)
class EpochTotals:
    """An epoch's losses over all ranks: each StepLosses component's mean per step, and the steps of all ranks."""

    losses: dict[str, float]  # train_<component>: mean over every rank's steps
    steps: int  # steps of this rank (the same on every rank under DDP)
    rank_steps: int  # steps summed over the ranks
    seconds: float


def run_epoch(
    gan: GAN,
    opts,
    batches: Iterable[Mapping[str, torch.Tensor]],
    cfg: Config,
    epoch: int,
    device: torch.device | str = "cpu",
    on_step: Callable[[StepLosses, int], None] | None = None,
) -> EpochTotals:
    """Train one pass over `batches` (this rank's), then sum the losses over the ranks. `on_step(losses, n)` is
    called after the n-th step (rank 0 logs and shows progress with it). A NaN/inf loss stops the run with its
    reason, on every rank alike (the check is on the all-reduced sums)."""
    gan.train()
    sums = torch.zeros(len(StepLosses._fields), device=device)
    n_steps, t0 = 0, time.perf_counter()
    for batch in batches:
        responses, target = to_tensors(batch, device)
        losses = train_step(gan, opts, responses, target, cfg)
        sums += torch.stack(losses)
        n_steps += 1
        if on_step is not None:
            on_step(losses, n_steps)
    if n_steps == 0:
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        per_worker = cfg.optim.batch_size // world
        raise ValueError(f"no full batch of {per_worker} training rows per worker; lower optim.batch_size")
    seconds = time.perf_counter() - t0
    totals = all_reduce(torch.cat([sums, torch.tensor([n_steps], device=device, dtype=sums.dtype)]))
    if not torch.isfinite(totals).all():
        bad = [k for k, v in zip(StepLosses._fields, totals.tolist()) if not math.isfinite(v)]
        raise TrainingDiverged(
            f"training diverged in epoch {epoch}: {', '.join(bad)} became NaN/inf. Lower the learning rates "
            "(optim.lr_g, optim.lr_d) or loss.lambda_adv, or try optim.precision=fp32."
        )
    means = (totals[:-1] / totals[-1]).tolist()
    return EpochTotals(
        losses={f"train_{k}": v for k, v in zip(StepLosses._fields, means)},
        steps=n_steps,
        rank_steps=int(totals[-1]),
        seconds=seconds,
    )


def broadcast_buffers(module: torch.nn.Module | None) -> None:
    """Give every rank rank 0's BatchNorm statistics. DDP runs with broadcast_buffers=False (D runs on real and
    fake before one backward; re-broadcasting buffers between those forwards breaks autograd), so ranks drift
    apart; evaluation and checkpoints must not depend on which rank computed them."""
    if module is not None and dist.is_available() and dist.is_initialized():
        for b in unwrap(module).buffers():
            dist.broadcast(b, src=0)


def replica_divergence(module: torch.nn.Module | None) -> float:
    """Largest difference between this rank's parameters and rank 0's, over all ranks: 0 when DDP keeps the
    replicas in step. One broadcast of the parameters per epoch, so a desync is reported, not silently trained on.
    """
    if module is None or not (dist.is_available() and dist.is_initialized()):
        return 0.0
    flat = torch.nn.utils.parameters_to_vector(unwrap(module).parameters()).detach()
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    diff = (flat - reference).abs().max()
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)


def validate(gan: GAN, val_batches: list[ValBatch], rank: int, world: int, device) -> dict[str, float]:
    """Metrics over the whole validation split: this rank's share, summed over ranks; inside the RF mask, if any."""
    acc = MetricAccumulator()
    with eval_mode(gan.generator), torch.no_grad():
        for responses, image in val_batches[rank::world]:
            responses, target = to_tensors({"responses": responses, "image": image}, device)
            # Masked training is judged, and its checkpoints ranked, on masked images (as RFmasked did)
            acc.update(apply_mask(gan.reconstruct(responses), gan.mask), apply_mask(target, gan.mask), vgg=gan.vgg)
    state = acc.state().to(device)
    return MetricAccumulator.from_state(all_reduce(state)).compute()


def samples(gan: GAN, val_batches: list[ValBatch], device) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed first validation images and their reconstructions, for the grid."""
    responses, image = val_batches[0]
    responses, target = to_tensors({"responses": responses[:N_SAMPLES], "image": image[:N_SAMPLES]}, device)
    with eval_mode(gan.generator), torch.no_grad():
        fake = gan.reconstruct(responses)
    return target.cpu(), fake.cpu()
