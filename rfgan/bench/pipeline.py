"""`rfgan bench --pipeline`: what feeds the step and what scales it, on the connected Ray (call `ray.init` first).

- The data path: Parquet → Ray Data (read, decode) → tensors on the device, iterated the way a training worker
  iterates its shard (same batch size, local shuffle and prefetch), in samples/s, set against the samples/s the step
  consumes (from the step benchmark): the data path must not be what the step waits for.
- Worker scaling: the same training run (epochs, data, config) with each of a list of Ray Train worker counts (1 and
  2 by default, `--pipeline-workers`), each worker with one torch thread, in training samples/s of the last epoch
  (the first holds start-up), with each worker's shard kept in memory (the default: the driver reads a split this
  small, `perf.driver_read_mb`) and streamed from Parquet every epoch; each rate also as a multiple of the fewest
  workers' rate.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from rfgan.bench.step import bench_config
from rfgan.config import Config
from rfgan.data.format import open_split, read_info, to_tensors
from rfgan.data.synth import SynthSpec, write_synth


def data_path_rate(data: str, batch_size: int, prefetch_batches: int, epochs: int = 2) -> float:
    """Samples/s of one consumer reading the training split through Ray Data into tensors, over the last epoch."""
    ds = open_split(data, "train")
    rate = 0.0
    for _ in range(epochs):  # the first epoch pays for Ray Data's start-up
        n, t0 = 0, time.perf_counter()
        batches = ds.iter_torch_batches(
            batch_size=batch_size,
            drop_last=True,
            local_shuffle_buffer_size=4 * batch_size,
            prefetch_batches=prefetch_batches,
        )
        for batch in batches:
            responses, _ = to_tensors(batch)
            n += len(responses)
        rate = n / (time.perf_counter() - t0)
    return rate


def workers_rate(cfg: Config, data: str, workers: int, epochs: int = 2, keep_shard: bool = True) -> float:
    """Training samples/s of the last epoch of a run with `workers` Ray Train workers of one torch thread each;
    `keep_shard=False` streams the shard from Parquet every epoch (perf.cache_shard_mb=0)."""
    from rfgan.run.train import fit

    run_cfg = cfg.with_overrides(
        {"run.workers": workers, "run.epochs": epochs, "run.cpus_per_worker": 1}
        | ({} if keep_shard else {"perf.cache_shard_mb": 0})
    )
    with tempfile.TemporaryDirectory(prefix="rfgan-bench-") as out:
        result = fit(run_cfg, data, f"{out}/run", torch_threads=1)
    if result.error is not None:
        raise result.error
    return float(result.metrics["samples_per_s"])


SHARDS = ("kept", "streamed")


def run_pipeline(
    data: str,
    preset_name: str,
    step_samples_per_s: float,
    scaling_rows: int = 640,
    epochs: int = 2,
    workers: tuple[int, ...] = (1, 2),
) -> dict[str, Any]:
    """The data path on `data`, and each count of `workers` on a `scaling_rows`-row synthetic dataset of the same
    shapes (`epochs` each, the last one timed), the shard kept in memory and then streamed."""
    import torch

    cfg = bench_config(preset_name, torch.device("cpu"))
    batch = cfg.optim.batch_size
    rate = data_path_rate(data, batch, cfg.perf.prefetch_batches, epochs)
    info = read_info(data)
    counts = sorted(set(workers))
    with tempfile.TemporaryDirectory(prefix="rfgan-bench-data-") as tmp:
        spec = SynthSpec(n_train=scaling_rows, n_val=2 * batch, electrodes=info.n_electrodes, size=info.image_size[0])
        write_synth(f"{tmp}/data", spec)
        cfg = cfg.with_overrides({"run.log_every": 10**6})
        rates = {
            shard: {n: workers_rate(cfg, f"{tmp}/data", n, epochs, keep_shard=shard == "kept") for n in counts}
            for shard in SHARDS
        }
    return {
        "data": data,
        "batch": batch,
        "data_path_samples_per_s": rate,
        "step_samples_per_s": step_samples_per_s,
        "data_path_over_step": rate / step_samples_per_s,
        "scaling_rows": scaling_rows,
        "workers": scaling(rates),
    }


def scaling(rates: dict[str, dict[int, float]]) -> list[dict[str, Any]]:
    """{shard: {workers: samples/s}} as one row per run, each rate also as a multiple of its shard's fewest workers'."""
    rows = []
    for shard, by_count in rates.items():
        fewest = by_count[min(by_count)]
        rows += [
            {"workers": n, "shard": shard, "samples_per_s": r, "over_fewest": r / fewest}
            for n, r in sorted(by_count.items())
        ]
    return rows


def format_pipeline(p: dict[str, Any]) -> str:
    lines = [
        f"data path (Parquet -> Ray Data -> tensors, one consumer, batch {p['batch']}): "
        f"{p['data_path_samples_per_s']:.0f} samples/s = {p['data_path_over_step']:.1f}x what rfgan's step "
        f"consumes ({p['step_samples_per_s']:.1f} samples/s)",
        f"Ray Train, {p['scaling_rows']} rows, one torch thread per worker, samples/s (x the fewest workers'):",
    ]
    where = {
        "kept": "shard kept in memory",
        "streamed": "shard streamed from Parquet every epoch (perf.cache_shard_mb=0)",
    }
    for shard in SHARDS:
        runs = [r for r in p["workers"] if r["shard"] == shard]
        each = ", ".join(
            f"{r['workers']} worker{'s' * (r['workers'] > 1)} {r['samples_per_s']:.1f} ({r['over_fewest']:.2f}x)"
            for r in runs
        )
        lines.append(f"  {where[shard]}: {each}")
    return "\n".join(lines)
