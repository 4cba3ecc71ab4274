"""`rfgan bench --pipeline` on a real local Ray: the data path and 1 against 2 Ray Train workers (small sizes; the
figures are benchmarks, never asserted). In tests/run so that it runs beside the other Ray Train tests."""


def test_pipeline_measures_the_data_path_and_one_against_two_workers(ray_session, tiny_dataset):
    from rfgan.bench.pipeline import format_pipeline, run_pipeline

    # Two epochs, so that the second runs from the kept shard (or, streamed, from Parquet again).
    p = run_pipeline(str(tiny_dataset), "tiny", step_samples_per_s=10.0, scaling_rows=64, epochs=2)
    assert p["data_path_samples_per_s"] > 0 and p["data_path_over_step"] == p["data_path_samples_per_s"] / 10.0
    for k in ("one_worker", "two_workers", "one_worker_streamed", "two_workers_streamed"):
        assert p[f"{k}_samples_per_s"] > 0
    text = format_pipeline(p)
    assert "data path" in text and "2 workers" in text and "streamed" in text
