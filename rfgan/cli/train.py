"""rfgan train."""

from __future__ import annotations

import argparse
import sys
import time

from rfgan.cli.common import DASHBOARD_HELP, DEFAULT_DATA, DEMO_PRESET, VERBOSE_HELP, config_from_args
from rfgan.cli.data import dataset_or_synth
from rfgan.errors import failure_reason


def _add_train(sub: argparse._SubParsersAction) -> None:
    from rfgan.config import PRESETS

    p = sub.add_parser(
        "train",
        help="train an RF-GAN with Ray Train (local Ray, or a cluster)",
        description="Train on a dataset with Ray Train: DDP across --workers (CPU or GPU), data sharded from "
        "Parquet by Ray Data, a checkpoint every epoch (best N kept by validation SSIM), sample grids, "
        "TensorBoard logs, metrics.csv and curves.png in the run directory. With no --data it trains "
        f"on the built-in synthetic dataset ({DEFAULT_DATA}, made first if absent) with the "
        f"'{DEMO_PRESET}' preset unless --preset is given.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", help="dataset directory (default: the built-in synthetic dataset)")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help=f"starting config (default: 'default' with --data, '{DEMO_PRESET}' without)",
    )
    p.add_argument(
        "--config",
        help="JSON/YAML config file (e.g. a sweep's best_config.json); its 'preset' key, if any, picks the base",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set loss.lambda_adv=0.5 (repeatable)",
    )
    p.add_argument("--workers", type=int, help="Ray Train workers (run.workers)")
    p.add_argument("--gpu", action="store_true", default=None, help="one GPU per worker (run.use_gpu)")
    p.add_argument("--epochs", type=int, help="run.epochs")
    p.add_argument("--batch-size", type=int, help="global batch size, split across workers (optim.batch_size)")
    p.add_argument("--out", help="run directory or storage URI (s3://bucket/runs/NAME); default runs/PRESET-TIME")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (epoch, optimizers, RNG)",
    )
    p.add_argument(
        "--allow-other-data",
        action="store_true",
        help="with --resume: continue on a dataset other than the run's (re-made, other rows or statistics; the same "
        "RFs), which is refused otherwise",
    )
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and parameter counts, exit")
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p.add_argument("--dashboard", action="store_true", help=DASHBOARD_HELP)
    p.set_defaults(func=cmd_train)


def _describe_input(cfg) -> str:
    """The generator input of a config in words (what `rfgan train --dry-run` says of it)."""
    d = cfg.data
    responses = "z-scored responses" if d.standardize else "raw responses (not standardised)"
    maps = {
        "peak": "RF maps peaking at 1",
        "sum": "RF maps summing to 1 over the image",
        "sum_full": "RF maps summing to 1 over the whole visual field",
        "point": "the pixel of each RF centre",
    }[d.rf_norm]
    channels = "one channel per area" if d.sum_per_area else "one channel per electrode"
    return f"{responses} x {maps}, {channels}" + (", plus a channel of N(0, 1) noise" if d.with_noise else "")


def cmd_train(args: argparse.Namespace) -> int:
    from rfgan.config import PRESETS, parse_sets, preset
    from rfgan.gan.build import build_gan
    from rfgan.gan.models import count_parameters
    from rfgan.run import launch
    from rfgan.run.console import final_table
    from rfgan.run.train import preflight

    flags = {
        "run.workers": args.workers,
        "run.use_gpu": args.gpu,
        "run.epochs": args.epochs,
        "optim.batch_size": args.batch_size,
    }
    saved = launch.saved_config(args.out) if args.resume and args.out and not (args.preset or args.config) else None
    if saved is not None:
        # --resume without --preset/--config continues the run with its own config, and the flags given.
        given = {"data.path": args.data, **flags}
        cfg = saved.with_overrides({**parse_sets(args.set), **{k: v for k, v in given.items() if v is not None}})
        launch.check_resumed_config(args.out, cfg)  # a --set of the model's would not load its nets
    else:
        cfg = config_from_args(args, flags)
        if args.resume and args.out:
            launch.check_resumed_config(args.out, cfg)  # before the data's checks, which could blame the data
    data = dataset_or_synth(cfg.data.path)
    # A dry run builds no VGG and trains on no batch: it checks only that the nets fit the data.
    info, rfs = preflight(cfg, data, training=not args.dry_run)
    if args.dry_run:
        print(f"config (preset {cfg.preset!r}, data {data}):\n{cfg.to_json()}")
        gan = build_gan(cfg, info, rfs, with_vgg=False)
        print(
            f"generator: {count_parameters(gan.generator):,} parameters, {gan.projection.out_channels} input "
            f"channels -> {info.channels}x{info.image_size[0]}x{info.image_size[1]}"
        )
        print(f"input: {_describe_input(cfg)}")
        if gan.mask is not None:
            print(
                f"mask: target and output multiplied by the RF mask ({gan.mask.mean().item():.0%} of the pixels) "
                "before D, VGG and the pixel loss; validation and checkpoint ranking on masked images"
            )
        print(
            f"discriminator: {count_parameters(gan.discriminator):,} parameters"
            if gan.discriminator is not None
            else "discriminator: none (loss.lambda_adv = 0)"
        )
        return 0
    out = args.out or f"runs/{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    # What differs from the preset, not the whole config (that is in the run's config.json, and --dry-run prints it).
    changed = cfg.changes_from(preset(cfg.preset)) if cfg.preset in PRESETS else {}
    print(
        f"config: preset {cfg.preset!r}"
        + (f" with {', '.join(f'{k}={v}' for k, v in changed.items())}" if changed else "")
        + f"; data {data}; all of it in {out}/config.json"
    )
    run = launch.train(
        cfg,
        data,
        out,
        (info, rfs),
        resume=args.resume,
        allow_other_data=args.allow_other_data,
        address=args.address,
        verbose=args.verbose,
        dashboard=args.dashboard,
    )
    if run.error is not None:
        r = cfg.run
        print(
            f"rfgan train: training failed after {run.wall_s:.0f} s: {failure_reason(run.error)} (restarts allowed: "
            f"run.max_failures={r.max_failures}, run.max_preemption_failures={r.max_preemption_failures}); "
            f"{run.resume_hint}; Ray's log: {run.log_file}",
            file=sys.stderr,
        )
        return 1
    print(f"done in {run.wall_s:.0f} s: {run.metrics.get('epoch')} epochs")
    print(final_table(run.metrics))
    print(
        f"run directory: {run.run_dir}\nbest checkpoint: {run.best_checkpoint}\n"
        f"samples: {run.run_dir}/samples/  curves: {run.run_dir}/curves.png  "
        f"tensorboard --logdir {run.run_dir}/tensorboard\nlog (Ray's output too): {run.log_file}"
    )
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_train(sub)
