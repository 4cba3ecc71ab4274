"""rfgan tune."""

from __future__ import annotations

import argparse
import time

from rfgan.cli.common import DASHBOARD_HELP, DEMO_PRESET, VERBOSE_HELP, config_from_args
from rfgan.cli.data import dataset_or_synth
from rfgan.errors import UsageError


def _add_tune(sub: argparse._SubParsersAction) -> None:
    from rfgan.config import PRESETS

    p = sub.add_parser(
        "tune",
        help="search loss weights and learning rates with Ray Tune + Optuna",
        description="A Ray Tune sweep: OptunaSearch (TPE, seeded, the preset's values as the first trial) and ASHA "
        "early stopping on validation SSIM, each trial a Ray Train run. Writes trials.csv (also "
        "printed), best_config.json (for rfgan train --config), trials.png and "
        "param_importances.png to --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", help="dataset directory or URI (default: the built-in synthetic dataset)")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help=f"base config (default: 'default' with --data, '{DEMO_PRESET}' without)",
    )
    p.add_argument("--config", help="base config file instead of a preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the base config")
    p.add_argument(
        "--space",
        help="search space file (YAML/JSON) replacing the default space "
        "(rfgan.sweep.space.DEFAULT_SPACE; see tune/space.yaml); --resume takes the sweep's own",
    )
    p.add_argument("--out", help="sweep directory or storage URI (s3://...); default sweeps/PRESET-TIME")
    p.add_argument("--trials", type=int, default=20, help="number of trials")
    p.add_argument(
        "--epochs", type=int, default=10, help="epochs per trial (run.epochs; ASHA stops weak trials earlier)"
    )
    p.add_argument("--workers-per-trial", type=int, help="Ray Train workers per trial (run.workers)")
    p.add_argument("--cpus-per-worker", type=float, help="CPUs per Train worker (run.cpus_per_worker)")
    p.add_argument(
        "--gpus-per-worker",
        type=float,
        help="GPUs per Train worker, fractions share a GPU, 0 none (run.gpus_per_worker, run.use_gpu)",
    )
    p.add_argument(
        "--max-concurrent",
        type=int,
        help="trials at once (default: as many as fit in what the cluster can grow to; all of them on a cluster "
        "that does not say how far it grows)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep in --out")
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p.add_argument("--dashboard", action="store_true", help=DASHBOARD_HELP)
    p.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from rfgan.sweep.results import summarize, table_text
    from rfgan.sweep.runner import SweepSpec, check_sweep_target, resumed_space, sweep
    from rfgan.sweep.space import load_space

    gpus = args.gpus_per_worker
    cfg = config_from_args(
        args,
        {
            "run.epochs": args.epochs,
            "run.workers": args.workers_per_trial,
            "run.cpus_per_worker": args.cpus_per_worker,
            "run.use_gpu": None if gpus is None else gpus > 0,
            "run.gpus_per_worker": gpus or None,
        },
    )
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UsageError(f"--max-concurrent must be at least 1, not {args.max_concurrent}")
    if args.trials < 1:
        raise UsageError(f"--trials must be at least 1, not {args.trials}")
    if not 0 <= args.seed < 2**32:
        raise UsageError(f"--seed must be between 0 and 2**32 - 1 (Optuna's sampler takes such seeds), not {args.seed}")
    out = args.out or f"sweeps/{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_sweep_target(out, args.resume)
    given = load_space(args.space) if args.space else None
    space = resumed_space(out, given) if args.resume else load_space(args.space)
    data = dataset_or_synth(cfg.data.path)
    spec = SweepSpec(data=data, out=out, trials=args.trials, max_concurrent=args.max_concurrent, seed=args.seed)
    results = sweep(
        cfg, spec, space, resume=args.resume, address=args.address, verbose=args.verbose, dashboard=args.dashboard
    )
    rows = summarize(results, space, out)
    print(table_text(rows, space))
    print(
        f"sweep directory: {out}\nbest config: {out}/best_config.json  (rfgan train --config "
        f"{out}/best_config.json)\nplots: {out}/trials.png {out}/param_importances.png\n"
        f"log (Ray's output too): {out}/tune.log"
    )
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_tune(sub)
