"""Ray Train: the per-worker training loop and the TorchTrainer driver.

Each worker builds the GAN, wraps G and D separately in DDP (`prepare_model`), streams its shard of the training
split from Parquet straight onto its device, builds the generator input there with the RF projection, and runs the
pure-PyTorch step. Validation covers the whole validation split: every worker holds it, evaluates a 1/world share,
and the metric sums are all-reduced. Rank 0 writes checkpoints and artifacts; every rank reports equally often.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist

from rfgan import storage
from rfgan.checkpoint import SCORE, intact_checkpoints, load_checkpoint, open_checkpoint, save_checkpoint, unwrap
from rfgan.config import Config
from rfgan.data.format import DatasetInfo, open_split, read_info, read_rfs, split_files, to_tensors
from rfgan.data.rf import RFTable
from rfgan.errors import ConfigError, TrainingDiverged
from rfgan.evaluate.metrics import MetricAccumulator, eval_mode
from rfgan.gan.build import GAN, autocast_dtype, build_gan, build_optimizers, check_compatible, on_device
from rfgan.gan.losses import apply_mask
from rfgan.gan.step import StepLosses, train_step
from rfgan.gan.vgg import load_vgg19_state_dict
from rfgan.run.artifacts import RunArtifacts
from rfgan.run.shard_cache import ShardCache

# Ray Train's record of a run's checkpoints, in the run directory (ray.train.v2 constants).
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"
N_SAMPLES = 8  # pairs in each sample grid
# Workers log rather than print: Ray Train tees a worker's print() to both stdout and its logger, which shows
# every line twice in the driver's output.
log = logging.getLogger("rfgan.run.train")


@dataclass(frozen=True)
class TrainResult:
    run_dir: str
    metrics: dict[str, Any]  # the last reported metrics
    best_checkpoint: str | None
    error: BaseException | None


def _all_reduce(t: torch.Tensor, op: str = "SUM") -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return t


def _streamed(batches, per_worker: int, cache: ShardCache):
    """The first epoch's batches from Ray Data, each also given to the cache; only full batches are trained on."""
    for batch in batches:
        cache.add(batch)
        if len(batch["responses"]) == per_worker:
            yield batch


def _broadcast_buffers(module: torch.nn.Module | None) -> None:
    """Give every rank rank 0's BatchNorm statistics. DDP runs with broadcast_buffers=False (D runs on real and
    fake before one backward; re-broadcasting buffers between those forwards breaks autograd), so ranks drift
    apart; evaluation and checkpoints must not depend on which rank computed them."""
    if module is not None and dist.is_available() and dist.is_initialized():
        for b in unwrap(module).buffers():
            dist.broadcast(b, src=0)


def _replica_divergence(module: torch.nn.Module | None) -> float:
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


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one rank's random streams in one epoch (dropout, the noise channel, shuffling). A function of
    (seed, epoch, rank) only: a resumed or restarted run draws exactly what an uninterrupted one would, and ranks
    draw differently. The multipliers are primes, so distinct triples rarely collide."""
    return seed * 1_000_003 + epoch * 1009 + rank


def train_loop(loop_config: dict[str, Any]) -> None:
    """The Ray Train worker function."""
    import ray.train
    import ray.train.torch

    cfg = Config.from_dict(loop_config["config"])
    info = DatasetInfo.from_json(loop_config["dataset"], "train_loop_config['dataset']")
    rfs = RFTable.from_dict(loop_config["rfs"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if loop_config.get("torch_threads"):
        torch.set_num_threads(loop_config["torch_threads"])
    device = ray.train.torch.get_device()
    per_worker = cfg.optim.batch_size // world
    if per_worker < 1:
        raise ValueError(f"optim.batch_size={cfg.optim.batch_size} is smaller than the {world} workers")

    # The same seed on every rank: identical initial weights (DDP broadcasts rank 0's anyway) and a known start.
    torch.manual_seed(cfg.run.seed)
    gan = on_device(build_gan(cfg, info, rfs), cfg, device)
    if rank == 0:
        dtype = autocast_dtype(cfg, device)
        log.info(
            "precision: %s (optim.precision=%s) on %s",
            "bf16 autocast" if dtype is not None else "fp32",
            cfg.optim.precision,
            device,
        )
    if loop_config.get("readout") is not None:  # model.linear_base: the ridge read-out G refines
        gan.generator.set_readout(*(loop_config["readout"][k].to(device) for k in ("weight", "bias")))
    # G and D wrapped separately (never one parent module); D sees real and fake before one backward, so DDP must
    # not re-broadcast its buffers between those forwards (rank 0's are broadcast once per epoch instead).
    ddp_kwargs = {"broadcast_buffers": False}
    gan = replace(
        gan,
        generator=ray.train.torch.prepare_model(gan.generator, parallel_strategy_kwargs=ddp_kwargs),
        discriminator=None
        if gan.discriminator is None
        else ray.train.torch.prepare_model(gan.discriminator, parallel_strategy_kwargs=ddp_kwargs),
    )
    opts = build_optimizers(cfg, gan)

    start_epoch, step = 1, 0
    # Ray's own checkpoint (a restart within this run, or a resumed run); else the one rfgan chose on --resume when
    # Ray's record of the run was damaged (resume_point).
    checkpoint, ckpt = ray.train.get_checkpoint(), None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            ckpt = load_checkpoint(d, map_location=device)
    elif loop_config.get("resume_from"):
        ckpt = open_checkpoint(loop_config["resume_from"], map_location=device)
    if ckpt is not None:
        ckpt.check_matches(info, rfs, "the training data")
        ckpt.restore(gan, opts)
        start_epoch, step = ckpt.epoch + 1, ckpt.step
        if rank == 0:
            log.info("resumed from epoch %d (step %d)", ckpt.epoch, ckpt.step)

    val_batches = [
        (b["responses"], b["image"]) for b in ray.train.get_dataset_shard("val").iter_torch_batches(batch_size=64)
    ]
    artifacts = RunArtifacts(loop_config["run_dir"], resume_epoch=start_epoch - 1) if rank == 0 else None

    # The shard is kept after this process's first epoch if more epochs follow and it fits (perf.cache_shard_mb).
    cache = ShardCache(cfg.perf.cache_shard_mb if cfg.run.epochs > start_epoch else 0)
    for epoch in range(start_epoch, cfg.run.epochs + 1):
        # -- train: one pass over this rank's shard
        torch.manual_seed(epoch_seed(cfg.run.seed, epoch, rank))
        gan.train()
        sums = torch.zeros(len(StepLosses._fields), device=device)
        n_steps, t0 = 0, time.perf_counter()
        from_memory = cache.ready
        if from_memory:
            batches = cache.batches(per_worker, epoch_seed(cfg.run.seed, epoch, rank))
        else:
            batches = _streamed(
                ray.train.get_dataset_shard("train").iter_torch_batches(
                    batch_size=per_worker,
                    device=device,
                    drop_last=cache.decided,  # else the short last batch is kept, not trained on
                    local_shuffle_buffer_size=4 * per_worker,
                    local_shuffle_seed=epoch_seed(cfg.run.seed, epoch, rank),
                    prefetch_batches=cfg.perf.prefetch_batches,
                ),
                per_worker,
                cache,
            )
        for batch in batches:
            responses, target = to_tensors(batch, device)
            losses = train_step(gan, opts, responses, target, cfg)
            sums += torch.stack(losses)
            n_steps += 1
            step += 1
            if rank == 0 and step % cfg.run.log_every == 0:
                # One host sync per log line, not per step.
                line = "  ".join(f"{k}={v:.4f}" for k, v in zip(StepLosses._fields, losses) if v != 0)
                rate = n_steps * per_worker * world / (time.perf_counter() - t0)
                log.info("epoch %d step %d  %s  %.1f samples/s", epoch, step, line, rate)
        if n_steps == 0:
            raise ValueError(f"no full batch of {per_worker} training rows per worker; lower optim.batch_size")
        elapsed = time.perf_counter() - t0
        if not cache.decided:  # after this process's first epoch, on every rank together
            # Every rank keeps its shard, or none does; all keep the fewest rows any kept (equal steps for DDP). A rank
            # that overflowed kept 0, and a rank with fewer rows than a batch stopped above (n_steps == 0).
            cache.agree(int(_all_reduce(torch.tensor([cache.kept_rows()], device=device), "MIN")))
            if rank == 0 and cache.ready:
                log.info(
                    "training shard kept in memory (%d rows per worker); later epochs shuffle it there", cache.rows
                )
            elif rank == 0:
                log.info(
                    "training shard not kept (over perf.cache_shard_mb=%d): each epoch streams it",
                    cfg.perf.cache_shard_mb,
                )
        # -- losses of the epoch, over all ranks; a NaN stops the run with its reason
        totals = _all_reduce(torch.cat([sums, torch.tensor([n_steps], device=device, dtype=sums.dtype)]))
        if not torch.isfinite(totals).all():
            bad = [k for k, v in zip(StepLosses._fields, totals.tolist()) if not math.isfinite(v)]
            raise TrainingDiverged(
                f"training diverged in epoch {epoch}: {', '.join(bad)} became NaN/inf. Lower the learning rates "
                "(optim.lr_g, optim.lr_d) or loss.lambda_adv, or try optim.precision=fp32."
            )
        train = {f"train_{k}": v for k, v in zip(StepLosses._fields, (totals[:-1] / totals[-1]).tolist())}

        # -- validate on the whole validation split, with rank 0's BatchNorm statistics on every rank
        _broadcast_buffers(gan.generator)
        _broadcast_buffers(gan.discriminator)
        val = _validate(gan, val_batches, rank, world, device)
        metrics = {
            "epoch": epoch,
            "step": step,
            **train,
            **{f"val_{k}": v for k, v in val.items()},
            "samples_per_s": float(totals[-1]) * per_worker / elapsed,
            "epoch_s": elapsed,
            "shard_in_memory": float(from_memory),  # 1: this epoch's rows came from the kept shard
            "ddp_divergence_g": _replica_divergence(gan.generator),
            "ddp_divergence_d": _replica_divergence(gan.discriminator),
        }
        if rank == 0:
            log.info(
                "epoch %d/%d  %s",
                epoch,
                cfg.run.epochs,
                "  ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "epoch"),
            )
        # -- report from every rank (a barrier); rank 0 adds the artifacts and the checkpoint
        checkpoint_dir = None
        if rank == 0:
            target, fake = _samples(gan, val_batches, device)
            artifacts.epoch(metrics, target, fake)
            checkpoint_dir = tempfile.mkdtemp(prefix="rfgan-ckpt-")
            save_checkpoint(
                checkpoint_dir,
                config=cfg,
                info=info,
                rfs=rfs,
                gan=gan,
                opts=opts,
                epoch=epoch,
                step=step,
                metrics=metrics,
            )
        ray.train.report(
            metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        )
        if checkpoint_dir:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)  # report (SYNC upload) has copied it to storage
    if artifacts is not None:
        artifacts.close()


def _validate(gan: GAN, val_batches, rank: int, world: int, device) -> dict[str, float]:
    """Metrics over the whole validation split: this rank's share, summed over ranks; inside the RF mask, if any."""
    acc = MetricAccumulator()
    with eval_mode(gan.generator), torch.no_grad():
        for responses, image in val_batches[rank::world]:
            responses, target = to_tensors({"responses": responses, "image": image}, device)
            # Masked training is judged, and its checkpoints ranked, on masked images (as RFmasked did)
            acc.update(apply_mask(gan.reconstruct(responses), gan.mask), apply_mask(target, gan.mask), vgg=gan.vgg)
    state = acc.state().to(device)
    return MetricAccumulator.from_state(_all_reduce(state)).compute()


def _samples(gan: GAN, val_batches, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed first validation images and their reconstructions, for the grid."""
    responses, image = val_batches[0]
    responses, target = to_tensors({"responses": responses[:N_SAMPLES], "image": image[:N_SAMPLES]}, device)
    with eval_mode(gan.generator), torch.no_grad():
        fake = gan.reconstruct(responses)
    return target.cpu(), fake.cpu()


def run_paths(out: str) -> tuple[str, str]:
    """(storage_path, name) of a run directory or URI: Ray Train keeps the run in storage_path/name."""
    return storage.split(out)


def preflight(cfg: Config, data: str, training: bool = True) -> tuple[DatasetInfo, RFTable]:
    """Check, before Ray starts, what would otherwise fail on every worker: the dataset's metadata and RF table and
    an image size the generator can round-trip; for `training` (not a dry run) also the shards metadata.json lists,
    a batch every worker can fill and the VGG weights if the loss needs them."""
    info, rfs = read_info(data), read_rfs(data)
    check_compatible(cfg, info)
    if not training:
        return info, rfs
    # A lost, extra or cut-short shard: refused here, from the Parquet footers, rather than by Ray Data's reads.
    for split in ("train", "val"):
        split_files(data, split, info)
    # Ray Data splits the training rows evenly over the workers, and each drops its last partial batch: every
    # worker needs one full batch, or its epoch has no step.
    batch, workers, rows = cfg.optim.batch_size, cfg.run.workers, info.splits["train"]
    if batch < workers or rows // workers < batch // workers:
        raise ConfigError(
            f"optim.batch_size={batch} over {workers} worker(s) needs at least {max(batch, workers)} training rows "
            f"and a batch of at least one row per worker, but {data} has {rows} training rows; lower --batch-size "
            f"(at most {rows // workers * workers}) or --workers."
        )
    if cfg.loss.lambda_vgg > 0 and not cfg.loss.vgg_random_init:
        load_vgg19_state_dict(cfg.loss.vgg_weights)
    return info, rfs


def resume_point(out: str) -> str | None:
    """Where a re-run of `out` continues when Ray cannot: Ray Train restores a run from its snapshot
    (checkpoint_manager_snapshot.json), and refuses to start when a checkpoint folder it names is gone; nor does it
    know one that was cut short. Then the snapshot is set aside (kept as .damaged) and the newest complete
    checkpoint is returned, from which the workers resume; None when Ray's own restore will do (or nothing exists)."""
    snapshot = storage.join(out, RAY_SNAPSHOT)
    intact, damaged = intact_checkpoints(out)
    named = (
        re.findall(r'"checkpoint_dir_name":\s*"([^"]+)"', storage.read_text(snapshot))
        if storage.is_file(snapshot)
        else []
    )
    gone = [n for n in named if n not in intact and n not in damaged]
    newest = max(intact, key=lambda n: intact[n]["epoch"]) if intact else None
    # Ray's restore is right when every checkpoint it names is there and complete, and the newest complete one
    # is among them (a worker killed right after writing one can leave it unrecorded).
    if not gone and not set(named) & set(damaged) and (newest is None or newest in named):
        return None
    for name in gone:
        print(f"note: checkpoint {storage.join(out, name)} is gone", file=sys.stderr)
    for why in damaged.values():
        print(f"note: skipping a damaged checkpoint: {why}", file=sys.stderr)
    if storage.is_file(snapshot):
        storage.move(snapshot, snapshot + ".damaged")
    if newest is None:
        print(f"note: {out} has no complete checkpoint left; training starts from epoch 1", file=sys.stderr)
        return None
    print(
        f"note: resuming from {storage.join(out, newest)} (epoch {intact[newest]['epoch']}), the newest complete "
        "checkpoint",
        file=sys.stderr,
    )
    return storage.join(storage.absolute(out), newest)


def linear_readout(cfg: Config, data: str) -> dict[str, Any] | None:
    """The linear read-out that a `model.linear_base` generator refines, as weights on the responses it is given:
    the ridge decoder of `rfgan baseline` (fitted on the training split, λ chosen on the validation split). None
    without model.linear_base. A resumed run gets the same fit, and its checkpoint's copy wins anyway."""
    if not cfg.model.linear_base:
        return None
    from rfgan.evaluate.ridge import fit_ridge

    t0 = time.perf_counter()
    ridge = fit_ridge(data)
    weight, bias = ridge.decoder.weight, ridge.decoder.bias
    if not cfg.data.standardize:  # G is given raw responses: fold the standardisation into the weights
        weight = weight / ridge.decoder.std[:, None]
        bias = bias - ridge.decoder.mean @ weight
    print(
        f"linear base: ridge read-out fitted on {ridge.n_train} training rows, λ = {ridge.lam:.4g} "
        f"({time.perf_counter() - t0:.0f} s)",
        file=sys.stderr,
    )
    return {"weight": weight, "bias": bias}


def fit(
    cfg: Config,
    data: str,
    out: str,
    *,
    dataset: tuple[DatasetInfo, RFTable] | None = None,
    run_config_kwargs: dict[str, Any] | None = None,
    torch_threads: int | None = None,
    materialize: bool = False,
) -> TrainResult:
    """Train with Ray Train on the connected Ray cluster (call `ray.init` first). Re-running with the same `out`
    continues from its last checkpoint. `materialize` reads the dataset into Ray's object store first: for sweeps,
    where a trial stopped early must not leave a streaming read holding a CPU."""
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    info, rfs = dataset or preflight(cfg, data)
    # Per-operator progress bars from every worker drown the training log; epoch lines report progress.
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    storage_path, name = run_paths(out)
    loop_config: dict[str, Any] = {
        "config": cfg.to_dict(),
        "dataset": info.to_json(),
        "rfs": rfs.to_dict(),
        "run_dir": storage.absolute(out),
        "torch_threads": torch_threads,
        "resume_from": resume_point(out),
        "readout": linear_readout(cfg, data),
    }
    r = cfg.run
    datasets = {"train": open_split(data, "train"), "val": open_split(data, "val")}
    if materialize:
        datasets = {k: v.materialize() for k, v in datasets.items()}
    resources = {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=r.workers, use_gpu=r.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=r.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=r.keep_checkpoints, checkpoint_score_attribute=SCORE, checkpoint_score_order="max"
            ),
            **(run_config_kwargs or {}),
        ),
        datasets={"train": datasets["train"].randomize_block_order(seed=r.seed), "val": datasets["val"]},
        # Only the training split is sharded: every worker holds all of val and evaluates its share.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    try:
        result = trainer.fit()
    except SystemExit:
        # Ray Train takes Ctrl-C itself (in the main thread): it aborts the run gracefully, then ends the driver
        # with SystemExit from inside fit(). Give callers the interrupt it was, so they can say what was kept.
        raise KeyboardInterrupt from None
    except ray.train.TrainingFailedError as e:  # workers failed more often than run.max_failures allows
        return TrainResult(run_dir=loop_config["run_dir"], metrics={}, best_checkpoint=None, error=e)
    best = None
    if result.best_checkpoints:
        best = max(result.best_checkpoints, key=lambda cm: cm[1].get(SCORE, float("-inf")))[0].path
    return TrainResult(
        run_dir=loop_config["run_dir"], metrics=dict(result.metrics or {}), best_checkpoint=best, error=result.error
    )


def write_resolved_config(cfg: Config, out: str) -> None:
    storage.write_bytes(storage.join(out, "config.json"), (cfg.to_json() + "\n").encode())
