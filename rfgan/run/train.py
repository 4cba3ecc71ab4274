"""Ray Train: the per-worker training loop and the TorchTrainer driver.

Each worker builds the GAN, wraps G and D separately in DDP (`prepare_model`), takes its shard of the training
split (a small split read once by the driver, perf.driver_read_mb; else streamed by Ray Data from Parquet straight
onto its device, kept in memory after the first epoch when it fits: shard_cache), and runs the pure-PyTorch epoch of
rfgan.run.epoch. Validation covers the whole validation split, which the driver reads
once into Ray's object store: every worker holds it, evaluates a 1/world share, and the metric sums are all-reduced.
Rank 0 writes checkpoints and artifacts and sends its progress to the driver's terminal; every rank reports equally
often.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch

from rfgan import storage
from rfgan.checkpoint import SCORE, Accept, intact_checkpoints, load_checkpoint, open_checkpoint, save_checkpoint
from rfgan.config import Config
from rfgan.data.format import DatasetInfo, open_split, read_info, read_rfs, read_split, split_files
from rfgan.data.rf import RFTable
from rfgan.errors import ConfigError
from rfgan.gan.build import GAN, autocast_dtype, build_gan, build_optimizers, check_compatible, on_device
from rfgan.gan.step import StepLosses
from rfgan.gan.vgg import load_vgg19_state_dict
from rfgan.run.artifacts import RunArtifacts, record_workers
from rfgan.run.console import ProgressSender, note
from rfgan.run.epoch import (
    ValBatch,
    all_reduce,
    broadcast_buffers,
    epoch_seed,
    replica_divergence,
    run_epoch,
    samples,
    validate,
)
from rfgan.run.shard_cache import ShardCache, kept_on

# Ray Train's record of a run's checkpoints, in the run directory (ray.train.v2 constants): set aside, never read,
# when it names a checkpoint that is gone (resume_point).
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"
VAL_BATCH = 64  # validation rows per forward pass
# Workers log rather than print: Ray Train tees a worker's print() to both stdout and its logger, which shows
# every line twice in the driver's output.
log = logging.getLogger("rfgan.run.train")


@dataclass(frozen=True)
class TrainResult:
    run_dir: str
    metrics: dict[str, Any]  # the last reported metrics
    best_checkpoint: str | None
    error: BaseException | None


def _prepared(gan: GAN) -> GAN:
    """G and D wrapped in DDP separately (never one parent module). D sees real and fake before one backward, so DDP
    must not re-broadcast its buffers between those forwards (rank 0's are broadcast once per epoch instead)."""
    import ray.train.torch

    ddp_kwargs = {"broadcast_buffers": False}
    return replace(
        gan,
        generator=ray.train.torch.prepare_model(gan.generator, parallel_strategy_kwargs=ddp_kwargs),
        discriminator=None
        if gan.discriminator is None
        else ray.train.torch.prepare_model(gan.discriminator, parallel_strategy_kwargs=ddp_kwargs),
    )


def _restore(loop_config: dict[str, Any], gan: GAN, opts, info: DatasetInfo, rfs: RFTable, device) -> tuple[int, int]:
    """(first epoch, step) after restoring Ray's own checkpoint (a restart within this run, or a resumed run), else
    the one rfgan chose on --resume when Ray's record of the run was damaged (resume_point)."""
    import ray.train

    checkpoint, ckpt = ray.train.get_checkpoint(), None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            ckpt = load_checkpoint(d, map_location=device)
    elif loop_config.get("resume_from"):
        ckpt = open_checkpoint(loop_config["resume_from"], map_location=device)
    if ckpt is None:
        return 1, 0
    ckpt.check_matches(info, rfs, "the training data", Accept("resume", other_data=loop_config["allow_other_data"]))
    ckpt.restore(gan, opts)
    return ckpt.epoch + 1, ckpt.step


def _val_batches(split: dict[str, Any]) -> list[ValBatch]:
    """The validation split (read once by the driver) in batches, as tensors; every rank holds all of it."""
    responses, image = (torch.tensor(split[k]) for k in ("responses", "image"))  # a copy: Ray's arrays are read-only
    return [(responses[i : i + VAL_BATCH], image[i : i + VAL_BATCH]) for i in range(0, len(responses), VAL_BATCH)]


def train_split_mb(info: DatasetInfo) -> float:
    """The training split's size as read: float32 responses, uint8 images."""
    return info.splits["train"] * (info.n_electrodes * 4 + info.image_numel) / 2**20


def reads_on_driver(cfg: Config, info: DatasetInfo) -> bool:
    """Whether the driver reads the training split and hands it to the workers (perf.driver_read_mb), rather than
    Ray Data streaming it."""
    mb = train_split_mb(info)
    return mb <= cfg.perf.driver_read_mb and mb / cfg.run.workers <= cfg.perf.cache_shard_mb


def rank_rows(split: dict[str, Any], rank: int, world: int, seed: int, device) -> dict[str, torch.Tensor]:
    """This rank's share of a training split the driver read: an equal number of rows per rank (as Ray Data's
    split gives), drawn by one permutation of the rows that every rank computes alike."""
    n = len(split["responses"])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    idx = order[rank::world][: n // world].numpy()
    # Fancy indexing copies out of Ray's read-only arrays.
    return kept_on({k: torch.from_numpy(split[k][idx]) for k in ("responses", "image")}, device)


def _shard_stream(shard, per_worker: int, device, cfg: Config, seed: int) -> Callable[[bool], Iterable]:
    """This rank's shard as Ray Data streams it, for ShardCache.epoch: `drop_last` is its to choose."""

    def stream(drop_last: bool) -> Iterable:
        return shard.iter_torch_batches(
            batch_size=per_worker,
            device=device,
            drop_last=drop_last,
            local_shuffle_buffer_size=4 * per_worker,
            local_shuffle_seed=seed,
            prefetch_batches=cfg.perf.prefetch_batches,
        )

    return stream


def _fewest(device) -> Callable[[int], int]:
    """The fewest of a number over the ranks (ShardCache.epoch's agreement)."""
    return lambda n: int(all_reduce(torch.tensor([n], device=device), "MIN"))


class _StepWatch:
    """Rank 0's view of an epoch's steps (run_epoch's on_step): its progress to the driver, and a log line every
    run.log_every steps."""

    def __init__(self, progress: ProgressSender, cfg: Config, epoch: int, first_step: int, per_step: int, total: int):
        self.progress, self.cfg, self.epoch, self.first_step = progress, cfg, epoch, first_step
        self.per_step, self.total, self.t0 = per_step, total, time.perf_counter()

    def __call__(self, losses: StepLosses, n: int) -> None:
        self.progress.step(self.epoch, n * self.per_step, self.total)
        step = self.first_step + n
        if step % self.cfg.run.log_every == 0:
            # One host sync per log line, not per step.
            line = "  ".join(f"{k}={v:.4f}" for k, v in zip(StepLosses._fields, losses) if v != 0)
            rate = n * self.per_step / (time.perf_counter() - self.t0)
            log.info("epoch %d step %d  %s  %.1f samples/s", self.epoch, step, line, rate)


def train_loop(loop_config: dict[str, Any]) -> None:
    """The Ray Train worker function: build, wrap in DDP, restore, then one epoch, validation and report at a time."""
    import ray
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

    # -- build: the same seed on every rank gives identical initial weights (DDP broadcasts rank 0's anyway)
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
    gan = _prepared(gan)
    opts = build_optimizers(cfg, gan)
    start_epoch, step = _restore(loop_config, gan, opts, info, rfs, device)
    if rank == 0 and start_epoch > 1:
        log.info("resumed from epoch %d (step %d)", start_epoch - 1, step)
    where = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname()}
    ranks = [where] * world
    if torch.distributed.is_initialized():
        torch.distributed.all_gather_object(ranks, where)
    if rank == 0:
        record_workers(loop_config["run_dir"], start_epoch, ranks)

    val_batches = _val_batches(ray.get(loop_config["val"]))
    artifacts = RunArtifacts(loop_config["run_dir"], resume_epoch=start_epoch - 1) if rank == 0 else None
    progress = ProgressSender(loop_config.get("progress")) if rank == 0 else None
    if loop_config.get("train") is not None:  # read by the driver (reads_on_driver): kept from the first epoch
        shard, cache = (
            None,
            ShardCache.holding(rank_rows(ray.get(loop_config["train"]), rank, world, cfg.run.seed, device)),
        )
        if rank == 0:
            log.info("training split read by the driver: %d rows per worker, kept in memory", cache.rows)
    else:
        shard = ray.train.get_dataset_shard("train")
        # Kept after this process's first epoch if more epochs follow and it fits (perf.cache_shard_mb).
        cache = ShardCache(cfg.perf.cache_shard_mb if cfg.run.epochs > start_epoch else 0, device)
    for epoch in range(start_epoch, cfg.run.epochs + 1):
        # -- train: one pass over this rank's shard, streamed by Ray Data or shuffled from memory
        seed = epoch_seed(cfg.run.seed, epoch, rank)
        torch.manual_seed(seed)
        from_memory, deciding = cache.ready, not cache.decided
        # Ray Data splits the rows evenly over the workers; the kept shard may have fewer (the fewest any rank kept).
        rows = cache.rows if from_memory else info.splits["train"] // world
        epoch_samples = rows // per_worker * per_worker * world
        watch = _StepWatch(progress, cfg, epoch, step, per_worker * world, epoch_samples) if rank == 0 else None
        stream = None if shard is None else _shard_stream(shard, per_worker, device, cfg, seed)
        batches = cache.epoch(stream, per_worker, seed, _fewest(device))
        totals = run_epoch(gan, opts, batches, cfg, epoch, device, on_step=watch)
        step += totals.steps
        if rank == 0 and deciding and cache.decided:
            if cache.ready:
                log.info(
                    "training shard kept in memory (%d rows per worker); later epochs shuffle it there",
                    cache.rows,
                )
            else:
                log.info(
                    "training shard not kept (over perf.cache_shard_mb=%d): each epoch streams it",
                    cfg.perf.cache_shard_mb,
                )

        # -- validate on the whole validation split, with rank 0's BatchNorm statistics on every rank
        broadcast_buffers(gan.generator)
        broadcast_buffers(gan.discriminator)
        val = validate(gan, val_batches, rank, world, device)
        metrics = {
            "epoch": epoch,
            "step": step,
            **totals.losses,
            **{f"val_{k}": v for k, v in val.items()},
            "samples_per_s": totals.rank_steps * per_worker / totals.seconds,
            "epoch_s": totals.seconds,
            "shard_in_memory": float(from_memory),  # 1: this epoch's rows came from the kept shard
            "ddp_divergence_g": replica_divergence(gan.generator),
            "ddp_divergence_d": replica_divergence(gan.discriminator),
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
            target, fake = samples(gan, val_batches, device)
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
            progress.epoch(metrics)
        ray.train.report(
            metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        )
        if checkpoint_dir:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)  # report (SYNC upload) has copied it to storage
    if artifacts is not None:
        artifacts.close()


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


def _ray_recorded(out: str) -> list[str] | None:
    """Names of the checkpoints Ray Train's record of the run lists, read through its public Result.from_path; []
    when there is no record, None when Ray cannot restore the run from it (it names a checkpoint that is gone)."""
    import ray.train

    if not storage.is_file(storage.join(out, RAY_SNAPSHOT)):
        return []
    try:
        result = ray.train.Result.from_path(storage.absolute(out))
    except Exception:  # Ray's CheckpointManagerInitializationError (internal), or a record it cannot parse
        return None
    return [os.path.basename(c.path.rstrip("/")) for c, _ in result.best_checkpoints or []]


def resume_point(out: str) -> str | None:
    """Where a re-run of `out` continues when Ray cannot: Ray Train restores a run from its own record, and refuses
    to start when a checkpoint folder it names is gone; nor does it know one that was cut short. Then the record is
    set aside (kept as .damaged) and the newest complete checkpoint (rfgan's state.json) is returned, from which the
    workers resume; None when Ray's own restore will do (or nothing exists)."""
    snapshot = storage.join(out, RAY_SNAPSHOT)
    intact, damaged = intact_checkpoints(out)
    named = _ray_recorded(out)
    newest = max(intact, key=lambda n: intact[n]["epoch"]) if intact else None
    # Ray's restore is right when it can read its record, every checkpoint it names is complete, and the newest
    # complete one is among them (a worker killed right after writing one can leave it unrecorded).
    if named is not None and not set(named) & set(damaged) and (newest is None or newest in named):
        return None
    for name in sorted(set(named or []) - set(intact) - set(damaged)) if named is not None else []:
        note(f"note: checkpoint {storage.join(out, name)} is gone")
    if named is None:
        note(f"note: Ray's record of {out} names a checkpoint that is gone")
    for why in damaged.values():
        note(f"note: skipping a damaged checkpoint: {why}")
    if storage.is_file(snapshot):
        storage.move(snapshot, snapshot + ".damaged")
    if newest is None:
        note(f"note: {out} has no complete checkpoint left; training starts from epoch 1")
        return None
    note(
        f"note: resuming from {storage.join(out, newest)} (epoch {intact[newest]['epoch']}), the newest complete "
        "checkpoint"
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
    note(
        f"linear base: ridge read-out fitted on {ridge.n_train} training rows, λ = {ridge.lam:.4g} "
        f"({time.perf_counter() - t0:.0f} s)"
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
    progress: Any | None = None,
    allow_other_data: bool = False,
) -> TrainResult:
    """Train with Ray Train on the connected Ray cluster (call `ray.init` first). Re-running with the same `out`
    continues from its last checkpoint. `materialize` reads the training split into Ray's object store first: for
    sweeps, where a trial stopped early must not leave a streaming read holding a CPU (when Ray Data reads it at
    all: reads_on_driver). `progress`: a
    ray.util.queue.Queue that rank 0 sends its progress and each epoch's metrics to (console.ProgressSender).
    `allow_other_data`: the workers restore a checkpoint of other data (the same RFs) rather than refuse it."""
    import ray
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
        # Every worker holds all of the validation split: read once here, not by a Ray Data job in each worker.
        "val": ray.put(read_split(data, "val")),
        "train": ray.put(read_split(data, "train")) if reads_on_driver(cfg, info) else None,
        "progress": progress,
        "allow_other_data": allow_other_data,
    }
    r = cfg.run
    datasets = {}
    if loop_config["train"] is None:
        train = open_split(data, "train")
        datasets["train"] = (train.materialize() if materialize else train).randomize_block_order(seed=r.seed)
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
            # Plain failures are restarted by rfgan, and only losses (rfgan.run.restarts); preemptions by Ray Train.
            failure_config=ray.train.FailureConfig(max_failures=0, max_preemption_failures=r.max_preemption_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=r.keep_checkpoints, checkpoint_score_attribute=SCORE, checkpoint_score_order="max"
            ),
            **(run_config_kwargs or {}),
        ),
        datasets=datasets,
    )
    try:
        with _train_metrics_unless_named_in_ascii(name):
            result = trainer.fit()
    except SystemExit:
        # Ray Train takes Ctrl-C itself (in the main thread): it aborts the run gracefully, then ends the driver
        # with SystemExit from inside fit(). Give callers the interrupt it was, so they can say what was kept.
        raise KeyboardInterrupt from None
    except (ray.train.TrainingFailedError, ray.exceptions.RayActorError) as e:
        # A failure, or more preemptions than run.max_preemption_failures; or Ray Train's controller raised in its
        # constructor (storage its node cannot reach, say): a reason to show. Any other lost actor is not ours.
        if isinstance(e, ray.exceptions.RayActorError) and not e.actor_init_failed:
            raise
        return TrainResult(run_dir=loop_config["run_dir"], metrics={}, best_checkpoint=None, error=e)
    return TrainResult(
        run_dir=loop_config["run_dir"],
        metrics=dict(result.metrics or {}),
        best_checkpoint=best_checkpoint(loop_config["run_dir"], result.best_checkpoints),
        error=result.error,
    )


@contextlib.contextmanager
def _train_metrics_unless_named_in_ascii(name: str):
    """Ray Train tags its metrics with the run's name, and Ray's metrics take ASCII tags only: a run named in another
    script (`--out 'runs/rün #1'`) lost its controller to a UnicodeEncodeError. Such a run goes without Train's
    metrics (Train reads the switch when fit() builds its callbacks, in this process)."""
    if name.isascii():
        yield
        return
    before = os.environ.get(TRAIN_METRICS_ENV)
    os.environ[TRAIN_METRICS_ENV] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TRAIN_METRICS_ENV, None)
        else:
            os.environ[TRAIN_METRICS_ENV] = before


TRAIN_METRICS_ENV = "RAY_TRAIN_METRICS_ENABLED"


def best_checkpoint(run_dir: str, checkpoints: list[tuple[Any, dict[str, Any]]] | None) -> str | None:
    """The best of a run's (ray.train.Checkpoint, metrics) by validation score, named in the run directory's own
    form. Checkpoint.path is the path within its filesystem (`bucket/key` on S3: no scheme, no query), which read
    back as a path would be a local one; Ray Train keeps every checkpoint directly in the run directory."""
    if not checkpoints:
        return None
    best = max(checkpoints, key=lambda cm: cm[1].get(SCORE, float("-inf")))[0]
    return storage.join(run_dir, os.path.basename(best.path.rstrip("/")))


def write_resolved_config(cfg: Config, out: str) -> None:
    storage.write_bytes(storage.join(out, "config.json"), (cfg.to_json() + "\n").encode())
