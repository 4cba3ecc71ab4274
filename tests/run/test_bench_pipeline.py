"""`rfgan bench --pipeline` on a real local Ray: the data path and 2 Ray Train workers, with the
shard kept in memory and streamed (small sizes; the figures are benchmarks, never asserted: what is asserted is what
they are figures of). In tests/run so that it runs beside the other Ray Train tests."""

import torch
from conftest import TINY

from rfgan.bench import pipeline
from rfgan.bench.step import bench_config
from rfgan.run import train
from rfgan.run.artifacts import read_metrics_csv


def test_pipeline_times_the_last_epoch_of_kept_and_streamed_runs_over_every_row(ray_session, tiny_dataset, monkeypatch):
    # The real functions, watched: the rows the data path turns into tensors, and each run's config and epochs (read
    # before the pipeline removes its temporary run directory).
    tensor_rows, runs = [], []
    to_tensors, fit = pipeline.to_tensors, train.fit

    def counted(batch, *args, **kwargs):
        tensor_rows.append(len(batch["responses"]))
        return to_tensors(batch, *args, **kwargs)

    def recorded(cfg, data, out, **kwargs):
        result = fit(cfg, data, out, **kwargs)
        runs.append((cfg, read_metrics_csv(open(f"{out}/metrics.csv").read()), result.metrics["samples_per_s"]))
        return result

    monkeypatch.setattr(pipeline, "to_tensors", counted)
    monkeypatch.setattr(train, "fit", recorded)
    batch, rows, epochs = bench_config("tiny", torch.device("cpu")).optim.batch_size, 64, 2
    # Two workers only (the scaling ratio of several counts is test_bench.py's, without Ray): DDP and the split of the
    # shard between workers are what a one-worker run would not exercise.
    p = pipeline.run_pipeline(
        str(tiny_dataset), "tiny", step_samples_per_s=10.0, scaling_rows=rows, epochs=epochs, workers=(2,)
    )

    # The data path reads every full batch of the training split, every epoch.
    assert sum(tensor_rows) == epochs * (TINY.n_train // batch * batch) and p["batch"] == batch
    assert p["data_path_over_step"] == p["data_path_samples_per_s"] / 10.0
    # Two runs, each figure from its own run's last epoch: the shard kept in memory, then streamed from Parquet.
    assert [(cfg.run.workers, cfg.perf.cache_shard_mb > 0) for cfg, _, _ in runs] == [(2, True), (2, False)]
    figures = [(r["workers"], r["shard"], r["over_fewest"]) for r in p["workers"]]
    assert figures == [(2, "kept", 1.0), (2, "streamed", 1.0)]
    for figure, (cfg, history, reported) in zip(p["workers"], runs):
        assert [r["epoch"] for r in history] == list(range(1, epochs + 1)), figure
        # Kept: the driver reads a split this small and every epoch shuffles it in memory. Streamed: Parquet each time.
        kept = cfg.perf.cache_shard_mb > 0
        assert [r["shard_in_memory"] for r in history] == [int(kept)] * epochs, figure
        # Every epoch trains all of the rows in full batches, whether from Parquet or from memory.
        assert [r["step"] * batch for r in history] == [e * (rows // batch * batch) for e in range(1, epochs + 1)]
        assert figure["samples_per_s"] == reported == history[-1]["samples_per_s"], figure
    text = pipeline.format_pipeline(p)
    assert "data path" in text and "2 workers" in text and "streamed" in text
