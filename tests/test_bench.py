"""`rfgan bench`: the reference re-creation keeps the original loop's habits, rfgan's step does not, and the
command prints the side-by-side figures (small sizes; the figures themselves are benchmarks, never asserted)."""

import json

import pytest
import torch

from rfgan.bench.pipeline import format_pipeline, scaling
from rfgan.bench.reference_loop import reference_step, trainable_vgg
from rfgan.bench.step import bench_config, build_seeded, make_arm, run_bench, synthetic_problem
from rfgan.cli import main
from rfgan.cli.bench import worker_counts
from rfgan.errors import UsageError
from rfgan.gan.build import build_optimizers, on_device
from rfgan.gan.step import train_step

CPU = torch.device("cpu")


def small_config():
    # The default config (VGG loss, PatchGAN D) at a test size: every habit of the reference loop is exercised.
    return bench_config("medium", CPU, {"model.ngf": 8, "model.n_down": 3, "model.ndf": 8, "optim.batch_size": 4})


def counting_forwards(module):
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_the_reference_recreation_keeps_the_original_habits_and_rfgan_drops_them(monkeypatch):
    cfg = small_config()
    ref = cfg.with_overrides({"perf.compact_input": False})
    info, rfs, responses, images = synthetic_problem(cfg, electrodes=12, size=32)

    # Reference: the dense input built on the host, G twice, D's and VGG's weights given gradients, six reads.
    gan = build_seeded(ref, info, rfs)
    vgg = trainable_vgg(gan.vgg)
    g_calls, syncs = counting_forwards(gan.generator), []
    # Reads of values back to the host, other than Adam's own bookkeeping of its step count.
    item, adam_step, in_adam = torch.Tensor.item, torch.optim.Adam.step, []

    def counted_item(t):
        if not in_adam:
            syncs.append(1)
        return item(t)

    def adam(self, *args, **kwargs):
        in_adam.append(1)
        try:
            return adam_step(self, *args, **kwargs)
        finally:
            in_adam.pop()

    monkeypatch.setattr(torch.Tensor, "item", counted_item)
    monkeypatch.setattr(torch.optim.Adam, "step", adam)
    reference_step(gan.train(), build_optimizers(ref, gan), vgg, responses, images, ref, CPU)
    assert len(g_calls) == 2 and len(syncs) == 6
    assert all(p.grad is not None for p in vgg.parameters())  # the "frozen" VGG got weight gradients
    d_grads = [p.grad.clone() for p in gan.discriminator.parameters()]
    assert all(g.abs().sum() > 0 for g in d_grads)  # D's gradients from G's loss, left for the next zero_grad

    # rfgan: the compact input, G once, VGG frozen, no host reads inside the step.
    gan = on_device(build_seeded(cfg, info, rfs), cfg, CPU)
    g_calls, syncs[:] = counting_forwards(gan.generator), []
    stack_built = []
    projection_forward = type(gan.projection).forward
    monkeypatch.setattr(type(gan.projection), "forward", lambda *a: stack_built.append(1) or projection_forward(*a))
    train_step(gan, build_optimizers(cfg, gan), responses, images, cfg)
    assert len(g_calls) == 1 and not syncs and not stack_built
    assert all(p.grad is None for p in gan.vgg.parameters())


def test_both_arms_start_from_the_same_weights():
    cfg = small_config()
    info, rfs, _, _ = synthetic_problem(cfg, 12, 32)
    weights = []
    for compact in (False, True):
        gan = build_seeded(cfg.with_overrides({"perf.compact_input": compact}), info, rfs)
        weights.append(torch.cat([p.flatten() for p in gan.generator.parameters()]))
    assert torch.equal(*weights)
    for which in ("reference", "rfgan"):
        make_arm(which, cfg, 12, 32, CPU).step()  # each arm runs as built


def test_run_bench_reports_both_arms_and_their_memory():
    r = run_bench("tiny", "cpu", rounds=2, steps=1, electrodes=12, size=32, memory=True, log=lambda _: None)
    assert r["reference_samples_per_s"] > 0 and r["rfgan_samples_per_s"] > 0
    assert len(r["speedup_per_round"]) == 2 and r["speedup"] > 0
    # The compact first layer does fewer FLOPs than the dense one on the same model.
    assert 0 < r["rfgan_gflop_per_sample"] < r["reference_gflop_per_sample"]
    assert r["rfgan_peak_memory_mb"] > r["baseline_rss_mb"] > 0 and r["reference_peak_memory_mb"] > 0
    with pytest.raises(UsageError, match="bench presets"):
        run_bench("huge")


def test_bench_command_prints_the_table_and_json(capsys):
    argv = ["bench", "--preset", "tiny", "--rounds", "1", "--steps", "1", "--electrodes", "12", "--size", "32"]
    assert main([*argv, "--no-memory", "--json", "--set", "perf.compact_input=false"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(out[-1])
    assert {"reference_samples_per_s", "rfgan_samples_per_s", "speedup"} <= set(figures)
    assert any(line.startswith("samples/s") for line in out) and any("speedup" in line for line in out)


def test_the_step_benchmark_imports_neither_ray_nor_optuna():
    """The GPU check runs where neither is installed (benchmarks/gpu_check.sh)."""
    import subprocess
    import sys

    code = (
        "import sys, rfgan.cli, rfgan.bench.step; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'optuna'}))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_worker_scaling_is_each_rate_over_its_shards_fewest_workers_and_printed_so():
    rates = {"kept": {4: 30.0, 1: 10.0, 2: 18.0}, "streamed": {2: 12.0, 4: 18.0}}
    rows = scaling(rates)
    assert [(r["shard"], r["workers"], r["over_fewest"]) for r in rows] == [
        ("kept", 1, 1.0),
        ("kept", 2, 1.8),
        ("kept", 4, 3.0),
        ("streamed", 2, 1.0),
        ("streamed", 4, 1.5),
    ]
    figures = {"batch": 8, "data_path_samples_per_s": 400.0, "data_path_over_step": 4.0, "step_samples_per_s": 100.0}
    text = format_pipeline({**figures, "scaling_rows": 64, "workers": rows})
    assert "1 worker 10.0 (1.00x), 2 workers 18.0 (1.80x), 4 workers 30.0 (3.00x)" in text
    assert "streamed from Parquet every epoch (perf.cache_shard_mb=0): 2 workers 12.0 (1.00x)" in text


@pytest.mark.parametrize("flag, counts", [("1,2,4", (1, 2, 4)), ("2", (2,)), ("0,2", None), ("two", None), ("", None)])
def test_pipeline_worker_counts_are_positive_integers(flag, counts, capsys):
    if counts:
        assert worker_counts(flag) == counts
        return
    with pytest.raises(SystemExit) as stop:
        main(["bench", "--pipeline", "--pipeline-workers", flag])
    assert stop.value.code == 2 and "is not a list of worker counts such as 1,2,4" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        # Third audit: 0 ran with the preset's value and reported it; the others were tracebacks.
        (["--steps", "0"], "--steps: 0 is below 1"),
        (["--electrodes", "0"], "--electrodes: 0 is below 1"),
        (["--batch-size", "0"], "--batch-size: 0 is below 1"),
        (["--threads", "-1"], "--threads: -1 is below 1"),
        (["--rounds", "0"], "--rounds: 0 is below 1"),
    ],
)
def test_bench_refuses_counts_below_one(flags, message, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["bench", *flags])
    assert exit.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--device", "foo"], "--device foo: not a torch device"),
        (["--device", "meta"], "rfgan runs on cpu, cuda[:N] or mps, not meta"),
        (["--device", "cpu:7"], "the CPU is one device"),
        (["--size", "4"], "images are 4x4 but the unet generator needs sides"),
    ],
)
def test_bench_refuses_a_device_or_size_it_cannot_run_in_one_line(flags, message, capsys):
    from conftest import one_line_error

    assert main(["bench", "--rounds", "1", "--steps", "1", "--no-memory", *flags]) == 2
    assert message in one_line_error(capsys, "bench")
