"""rfgan bench."""

from __future__ import annotations

import argparse
import json

from rfgan.cli.common import positive_int
from rfgan.cli.data import dataset_or_synth


def worker_counts(text: str) -> tuple[int, ...]:
    """--pipeline-workers: positive worker counts, comma-separated."""
    try:
        counts = tuple(int(n) for n in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of worker counts such as 1,2,4")
    return counts


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from rfgan.bench.presets import BENCH_PRESETS

    p = sub.add_parser(
        "bench",
        help="rfgan's step against the reference loop, side by side (and the data path, workers)",
        description="Times a re-creation of the reference RF_GANsynth loop's habits and rfgan's training step on "
        "the same model, data, batch and step count, alternating A B A B in one process; prints samples/s of each, "
        "their ratio, peak memory, FLOPs per sample and the fraction of the device's measured matmul rate. "
        "Pure PyTorch (no Ray) unless --pipeline is given.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--preset", default="tiny", choices=BENCH_PRESETS, help="bench preset (tiny takes seconds)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--rounds", type=positive_int, default=3, help="alternating A B pairs")
    p.add_argument("--steps", type=positive_int, help="steps per arm per round (default: the preset's)")
    p.add_argument("--electrodes", type=positive_int, help="electrodes (default: 191, as in the reference set)")
    p.add_argument("--size", type=positive_int, help="image side in pixels (default: 96)")
    p.add_argument("--batch-size", type=positive_int, help="batch (default: the preset's; larger on CUDA)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field of the rfgan arm, e.g. --set perf.compact_input=false (repeatable)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the per-arm peak-RSS processes on the CPU")
    p.add_argument("--profile", action="store_true", help="also print where rfgan's step spends its time")
    p.add_argument(
        "--pipeline",
        action="store_true",
        help="also measure the data path (Parquet -> Ray Data -> tensors) and Ray Train's samples/s with each of "
        "--pipeline-workers (starts Ray)",
    )
    p.add_argument(
        "--pipeline-workers",
        type=worker_counts,
        default=(1, 2),
        metavar="N,N,...",
        help="Ray Train worker counts that --pipeline times, each with its shard kept in memory and streamed",
    )
    p.add_argument("--data", help="dataset for --pipeline (default: the built-in synthetic dataset)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from rfgan.bench.step import format_table, profile_table, run_bench
    from rfgan.config import parse_sets

    if args.threads:
        torch.set_num_threads(args.threads)
    from rfgan.evaluate.inference import check_device

    device = str(check_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")))
    result = run_bench(
        args.preset,
        device,
        rounds=args.rounds,
        steps=args.steps,
        electrodes=args.electrodes,
        size=args.size,
        overrides={**({"optim.batch_size": args.batch_size} if args.batch_size else {}), **parse_sets(args.sets)},
        memory=not args.no_memory,
    )
    print(format_table(result))
    if args.profile:
        print(profile_table(args.preset, device))
    if args.pipeline:
        from rfgan.bench.pipeline import format_pipeline, run_pipeline
        from rfgan.run.launch import init_ray

        data = dataset_or_synth(args.data)
        init_ray(None, max(4, max(args.pipeline_workers) + 2))  # a CPU for Ray Data's reads beside the workers
        result["pipeline"] = run_pipeline(
            data, args.preset, step_samples_per_s=result["rfgan_samples_per_s"], workers=args.pipeline_workers
        )
        print(format_pipeline(result["pipeline"]))
    if args.json:
        print(json.dumps(result))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_bench(sub)
