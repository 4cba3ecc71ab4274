"""`rfgan bench`: the reference loop's habits against rfgan's step, side by side in one process, on the same model,
data, batch and step count, alternating A B A B; pure PyTorch (no Ray, no Optuna), so it runs on any box with torch.

Each round times `steps` iterations of the reference re-creation (rfgan.bench.reference_loop) and then of rfgan's
step (rfgan.gan.step.train_step with the config's perf settings); the speedup is the median of the rounds' ratios,
so a machine that slows down between rounds slows both arms of a pair. Peak memory is measured per arm: on CUDA by
the allocator, on the CPU as the peak RSS of a fresh process running only that arm. The FLOPs of a step are counted
with torch's FlopCounterMode, and set against the device's own measured matmul rate.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import resource
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rfgan.bench.presets import BENCH_PRESETS, GPU_BATCH
from rfgan.config import Config, preset
from rfgan.data.format import DatasetInfo
from rfgan.data.synth import SynthSpec, make_rfs
from rfgan.errors import UsageError
from rfgan.gan.build import autocast_dtype, build_gan, build_optimizers, check_compatible, on_device
from rfgan.gan.step import train_step


@dataclass
class Arm:
    name: str
    step: Callable[[], object]
    times: list[float] = dataclasses.field(default_factory=list)
    peak_bytes: int | None = None
    flops_per_sample: float | None = None


def bench_config(name: str, device: torch.device, overrides: dict[str, Any] | None = None) -> Config:
    """The rfgan arm's config: the preset's, random VGG features (no download), and on CUDA the GPU settings."""
    p = BENCH_PRESETS[name]
    cuda = device.type == "cuda"
    changes: dict[str, Any] = {
        "loss.vgg_random_init": True,
        "optim.batch_size": GPU_BATCH[name] if cuda else p.batch,
        "perf.channels_last": cuda,
        **dict(p.overrides),
        **(overrides or {}),
    }
    return preset(p.config).with_overrides(changes)


def synthetic_problem(cfg: Config, electrodes: int, size: int, seed: int = 0):
    """RFs as `rfgan synth` lays them out, standard-normal responses and uniform images of the preset's shapes."""
    rfs = make_rfs(SynthSpec(electrodes=electrodes, size=size))
    info = DatasetInfo(
        image_size=(size, size),
        channels=3,
        fov_deg=SynthSpec().fov_deg,
        n_electrodes=electrodes,
        splits={"train": cfg.optim.batch_size, "val": 1},
        response_mean=(0.0,) * electrodes,
        response_std=(1.0,) * electrodes,
    )
    check_compatible(cfg, info)  # --size 4: the nets' own error, a traceback, otherwise
    g = torch.Generator().manual_seed(seed)
    responses = torch.randn(cfg.optim.batch_size, electrodes, generator=g)  # (B, E)
    images = torch.rand(cfg.optim.batch_size, 3, size, size, generator=g)  # (B, 3, H, W)
    return info, rfs, responses, images


def build_seeded(cfg: Config, info, rfs):
    torch.manual_seed(cfg.run.seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "VGGFeatures.random_init")
        gan = build_gan(cfg, info, rfs)
    return gan


def make_arm(which: str, cfg: Config, electrodes: int, size: int, device: torch.device) -> Arm:
    """The reference re-creation ("reference") or rfgan's step ("rfgan"), built from the same seed."""
    from rfgan.bench.reference_loop import reference_step, trainable_vgg

    info, rfs, responses, images = synthetic_problem(cfg, electrodes, size)
    if which == "reference":
        ref_cfg = cfg.with_overrides(
            {"optim.precision": "fp32", "perf.channels_last": False, "perf.compact_input": False}
        )
        gan = build_seeded(ref_cfg, info, rfs)
        projection = gan.projection  # stays on the host: the reference builds its input there
        gan = gan.to(device)
        gan.projection = projection.cpu()
        if gan.mask is not None:
            gan.mask = gan.mask.to(device)
        # Adam as the original makes it (no fused kernel); the reference's VGG is not frozen.
        opts = build_optimizers(ref_cfg.with_overrides({"perf.fused_adam": False}), gan)
        vgg = trainable_vgg(gan.vgg)
        gan.train()
        return Arm("reference", lambda: reference_step(gan, opts, vgg, responses, images, ref_cfg, device))
    gan = on_device(build_seeded(cfg, info, rfs), cfg, device)
    opts = build_optimizers(cfg, gan)
    # Batches arrive on the device (Ray Data prefetches them there); channels_last images on a channels_last net.
    r = responses.to(device)
    target = images.to(device, memory_format=torch.channels_last if cfg.perf.channels_last else torch.preserve_format)
    gan.train()
    return Arm("rfgan", lambda: train_step(gan, opts, r, target, cfg))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(arm: Arm, batch: int) -> float:
    """FLOPs per sample of one step of `arm`, as torch counts them (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        arm.step()
    return counter.get_total_flops() / batch


def matmul_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """The device's own matmul rate in TFLOP/s at `dtype`: the peak a step's FLOP rate is set against."""
    n, reps = (8192, 20) if device.type == "cuda" else (1024, 8)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def peak_rss() -> int:
    """This process's peak resident set in bytes. Linux's VmHWM starts afresh with each program, where getrusage's
    ru_maxrss keeps the peak of the process that forked it (a spawned child would report its parent's)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_rss_child(which: str, cfg_dict: dict, electrodes: int, size: int, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    before = peak_rss()
    arm = make_arm(which, Config.from_dict(cfg_dict), electrodes, size, torch.device("cpu"))
    for _ in range(2):
        arm.step()
    queue.put((before, peak_rss()))


def cpu_peak_rss(which: str, cfg: Config, electrodes: int, size: int) -> tuple[int, int]:
    """(RSS after imports, peak RSS) in bytes of a fresh process that builds `which` and runs two of its steps."""
    ctx = multiprocessing.get_context("spawn")  # a fresh process: this one's peak already holds both arms
    queue = ctx.Queue()
    child = ctx.Process(
        target=_peak_rss_child, args=(which, cfg.to_dict(), electrodes, size, torch.get_num_threads(), queue)
    )
    child.start()
    result = queue.get()
    child.join()
    return result


def run_bench(
    name: str,
    device: str = "cpu",
    rounds: int = 3,
    steps: int | None = None,
    electrodes: int | None = None,
    size: int | None = None,
    overrides: dict[str, Any] | None = None,
    memory: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Time both arms alternately; return the figures `rfgan bench --json` prints."""
    if name not in BENCH_PRESETS:
        raise UsageError(f"unknown bench preset {name!r}; bench presets: {sorted(BENCH_PRESETS)}")
    p = BENCH_PRESETS[name]
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is visible to PyTorch here; use --device cpu")
    cfg = bench_config(name, dev, overrides)
    electrodes, size = electrodes or p.electrodes, size or p.size
    steps = steps or (p.steps * (10 if dev.type == "cuda" else 1))
    batch = cfg.optim.batch_size
    arms = [make_arm(w, cfg, electrodes, size, dev) for w in ("reference", "rfgan")]
    for arm in arms:  # warm-up (allocator, cuDNN autotuning), then the step's FLOPs
        arm.step()
        arm.flops_per_sample = count_flops(arm, batch)
    log(
        f"bench {name}: config preset {cfg.preset!r}, {electrodes} electrodes, {size}x{size}, batch {batch}, "
        f"{steps} step(s) per arm per round, {rounds} rounds, A B alternating"
    )
    for r in range(rounds):
        for arm in arms:
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            _sync(dev)
            t0 = time.perf_counter()
            for _ in range(steps):
                arm.step()
            _sync(dev)
            arm.times.append(time.perf_counter() - t0)
            if dev.type == "cuda":
                arm.peak_bytes = max(arm.peak_bytes or 0, torch.cuda.max_memory_allocated(dev))
        ref, fast = (batch * steps / arm.times[-1] for arm in arms)
        log(f"  round {r + 1}: reference {ref:.1f} samples/s, rfgan {fast:.1f} samples/s, ratio {fast / ref:.2f}")
    baseline = None
    if memory and dev.type == "cpu":
        for arm in arms:
            baseline, arm.peak_bytes = cpu_peak_rss(arm.name, cfg, electrodes, size)
    peak_dtype = autocast_dtype(cfg, dev) or torch.float32
    peak = matmul_tflops(dev, peak_dtype)
    rates = {arm.name: batch * steps / statistics.median(arm.times) for arm in arms}
    ratios = [ta / tb for ta, tb in zip(arms[0].times, arms[1].times)]  # same work: time ratio = rate ratio
    result: dict[str, Any] = {
        "preset": name,
        "config_preset": cfg.preset,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "electrodes": electrodes,
        "image_size": size,
        "batch": batch,
        "steps_per_round": steps,
        "rounds": rounds,
        "bf16": autocast_dtype(cfg, dev) is not None,
        "reference_samples_per_s": rates["reference"],
        "rfgan_samples_per_s": rates["rfgan"],
        "speedup": statistics.median(ratios),
        "speedup_per_round": ratios,
        "reference_gflop_per_sample": arms[0].flops_per_sample / 1e9,
        "rfgan_gflop_per_sample": arms[1].flops_per_sample / 1e9,
        "device_matmul_tflops": peak,
        "rfgan_fraction_of_matmul_peak": rates["rfgan"] * arms[1].flops_per_sample / 1e12 / peak,
        "reference_peak_memory_mb": None if arms[0].peak_bytes is None else arms[0].peak_bytes / 2**20,
        "rfgan_peak_memory_mb": None if arms[1].peak_bytes is None else arms[1].peak_bytes / 2**20,
        "memory_kind": "CUDA allocator peak" if dev.type == "cuda" else "peak RSS of a process running one arm",
        "baseline_rss_mb": None if baseline is None else baseline / 2**20,
    }
    return result


def format_table(r: dict[str, Any]) -> str:
    def mb(v):
        return "-" if v is None else f"{v:,.0f} MB"

    rows = [
        ("", "reference loop", "rfgan"),
        ("samples/s", f"{r['reference_samples_per_s']:.1f}", f"{r['rfgan_samples_per_s']:.1f}"),
        (
            "GFLOP per sample per step",
            f"{r['reference_gflop_per_sample']:.2f}",
            f"{r['rfgan_gflop_per_sample']:.2f}",
        ),
        (f"peak memory ({r['memory_kind']})", mb(r["reference_peak_memory_mb"]), mb(r["rfgan_peak_memory_mb"])),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows
    ]
    lines.append(
        f"speedup {r['speedup']:.2f}x (median of {r['rounds']} alternating pairs: "
        f"{', '.join(f'{x:.2f}' for x in r['speedup_per_round'])}); device {r['device']}, torch {r['torch']}"
    )
    lines.append(
        f"rfgan reaches {r['rfgan_fraction_of_matmul_peak']:.1%} of this device's measured "
        f"{'bf16' if r['bf16'] else 'fp32'} matmul rate ({r['device_matmul_tflops']:.2f} TFLOP/s)"
    )
    if r["baseline_rss_mb"] is not None:
        lines.append(f"(RSS after importing torch and rfgan, before any net: {r['baseline_rss_mb']:,.0f} MB)")
    return "\n".join(lines)


def profile_table(name: str, device: str = "cpu", steps: int = 3, rows: int = 25) -> str:
    """Where rfgan's step spends its time: torch.profiler's table of the top operators."""
    from torch.profiler import ProfilerActivity, profile

    dev = torch.device(device)
    cfg = bench_config(name, dev)
    arm = make_arm("rfgan", cfg, BENCH_PRESETS[name].electrodes, BENCH_PRESETS[name].size, dev)
    arm.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            arm.step()
        _sync(dev)
    key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)
