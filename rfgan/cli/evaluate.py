"""The commands that use a trained run or a baseline: eval, baseline, report, reconstruct."""

from __future__ import annotations

import argparse

from rfgan import parse
from rfgan.cli.common import DEFAULT_DATA, positive_int, split_name
from rfgan.cli.data import dataset_or_synth


def _add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    """Which trained generator to use, and where: shared by eval and reconstruct."""
    p.add_argument("--run", required=True, help="run directory or URI (from rfgan train --out)")
    p.add_argument("--checkpoint", default="best", help="best, last, or a checkpoint directory")
    p.add_argument("--device", default="cpu", help="torch device")


NO_FEATURES_HELP = (
    "leave out the feature metrics (AlexNet, VGG19), which need torchvision's ImageNet weights in the torch hub cache "
    "(downloaded there on first use when a network is reachable)"
)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="the standard metric table of a trained run on a dataset",
        description="The standard table of image-reconstruction papers for a run's best or last checkpoint (a GAN, or "
        "rfgan baseline's ridge decoder), each value the mean ± standard error over images: PSNR and SSIM on "
        "luma, PixCorr, two-way identification on pixels and on pretrained AlexNet (layers 2, 5) and VGG19 "
        "features, top-1 and top-5 retrieval, AlexNet layer-wise and VGG19 feature correlation, and inside "
        "the RF mask for runs trained in one. Written to RUN/eval_SPLIT.json with a grid PNG.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_checkpoint_args(p)
    p.add_argument("--data", required=True, help="dataset directory or URI")
    p.add_argument("--split", default="val", type=split_name, help="dataset split")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-feature-metrics", action="store_true", help=NO_FEATURES_HELP)
    p.add_argument(
        "--allow-other-rfs",
        action="store_true",
        help="evaluate on a dataset whose RF table differs from the training data's (refused otherwise; "
        "the JSON then carries a warning)",
    )
    p.add_argument(
        "--allow-other-data",
        action="store_true",
        help="evaluate on a dataset other than the training data (another fingerprint: re-made, other rows or "
        "statistics; the same RFs), refused otherwise; the JSON then carries a warning saying what differs",
    )
    p.set_defaults(func=cmd_eval)


def _print_evaluation(result: dict, as_json: bool) -> None:
    from rfgan.evaluate.table import feature_nets_text, table_text

    if as_json:
        print(parse.dumps(result), end="")
        return
    print(
        f"{result['checkpoint']} ({result['kind']}, epoch {result['epoch']}) on {result['data']}/{result['split']} "
        f"({result['n_images']} images); feature nets: {feature_nets_text(result['feature_nets'])}\n"
        f"{table_text(result['metrics'])}\ngrid: {result['grid']}"
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from rfgan.evaluate.inference import evaluate_run

    result = evaluate_run(
        args.run,
        args.data,
        args.split,
        args.checkpoint,
        args.device,
        allow_other_rfs=args.allow_other_rfs,
        allow_other_data=args.allow_other_data,
        feature_metrics=not args.no_feature_metrics,
    )
    _print_evaluation(result, args.json)
    return 0


def _add_baseline(sub: argparse._SubParsersAction) -> None:
    from rfgan.evaluate.ridge import N_FEATURES

    p = sub.add_parser(
        "baseline",
        help="a ridge-regression decoder, scored like a trained run",
        description="Fit ridge regression from the standardised responses to the pixels (closed form, normal "
        "equations summed over batches of the training split; the penalty chosen on the validation split "
        "over a log grid), write it as a run (checkpoint, config.json) that eval, reconstruct and report "
        "take like a trained one, and score it with the table of rfgan eval (RUN/eval_val.json, a grid). "
        f"With no --data, on the built-in synthetic dataset ({DEFAULT_DATA}, made first if absent).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", help="dataset directory or URI (default: the built-in synthetic dataset)")
    p.add_argument("--out", help="run directory or URI to write; default runs/ridge-TIME")
    p.add_argument("--json", action="store_true", help="print the config and the eval result as JSON")
    p.add_argument("--device", default="cpu", help="torch device of the fit and the evaluation")
    p.add_argument("--no-feature-metrics", action="store_true", help=NO_FEATURES_HELP)
    p.add_argument(
        "--nonlinear",
        action="store_true",
        help="ridge on the responses and their random Fourier features (approximately kernel ridge with a Gaussian "
        "kernel, its width chosen on the validation split), a classical decoder for responses that are not linear "
        "in the image",
    )
    p.add_argument(
        "--n-features",
        type=positive_int,
        default=N_FEATURES,
        help="random features of --nonlinear (the checkpoint holds (electrodes + N) x pixels weights)",
    )
    p.set_defaults(func=cmd_baseline)


def cmd_baseline(args: argparse.Namespace) -> int:
    from rfgan.evaluate.inference import baseline

    config, result = baseline(
        dataset_or_synth(args.data),
        args.out,
        args.device,
        feature_metrics=not args.no_feature_metrics,
        features="random" if args.nonlinear else "linear",
        n_features=args.n_features,
    )
    if args.json:
        print(parse.dumps({"config": config, "eval": result}), end="")
        return 0
    edge = " (at the edge of the grid)" if config["lambda_at_grid_edge"] else ""
    random = f", {config['n_features']} random features of width {config['bandwidth']:.3g}" if args.nonlinear else ""
    print(f"ridge: lambda = {config['lambda']:.4g}{edge}{random}, fitted on {config['n_train']} training rows")
    _print_evaluation(result, as_json=False)
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="one HTML page comparing runs: images, metric table, curves, configs",
        description="A self-contained HTML page (images inlined) comparing runs evaluated on the same dataset split "
        "(rfgan eval, or rfgan baseline for the ridge decoder): the same images as target | each run, the "
        "standard table side by side (mean ± SE, the best of each row marked), the training curves and "
        "each run's resolved config.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--run", required=True, help="run directory or URI")
    p.add_argument("--compare", nargs="+", default=[], metavar="RUN", help="more runs to compare with --run")
    p.add_argument("--out", help="the page to write (default: RUN/report.html)")
    p.add_argument(
        "--split", default="val", type=split_name, help="the split the runs were evaluated on (their eval_SPLIT.json)"
    )
    p.add_argument("--device", default="cpu", help="torch device for the reconstructions of the grid")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from rfgan.evaluate.report import write_report

    print(f"wrote {write_report([args.run, *args.compare], args.out, args.split, args.device)}")
    return 0


def _add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconstruct",
        help="images from new responses with a trained run",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_checkpoint_args(p)
    p.add_argument("--responses", required=True, help=".npy (N, E), electrodes in the run's rfs.csv order")
    p.add_argument("--out", required=True, help="folder for reconstructions.npy and one PNG per row")
    p.set_defaults(func=cmd_reconstruct)


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from rfgan.evaluate.inference import reconstruct

    out = reconstruct(args.run, args.responses, args.out, args.checkpoint, args.device)
    print(f"wrote {out}/reconstructions.npy and PNGs")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_eval(sub)
    _add_baseline(sub)
    _add_report(sub)
    _add_reconstruct(sub)
