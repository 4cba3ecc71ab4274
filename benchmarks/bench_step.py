"""Training-step throughput of a preset on one device, without Ray or data loading: the GAN step alone.

    python benchmarks/bench_step.py --preset reference --device cuda --batch-size 64 --steps 200
    python benchmarks/bench_step.py --preset tiny --device cpu --steps 20

Prints samples/s (and peak GPU memory on CUDA). Random responses and images of the preset's shapes stand in for
data; VGG features are random-init unless --vgg-weights is given (same FLOPs either way).
"""

import argparse
import time
import warnings

import numpy as np
import torch

from rfgan.config import preset
from rfgan.data.format import DatasetInfo
from rfgan.data.synth import SynthSpec, make_rfs
from rfgan.gan.build import build_gan, build_optimizers
from rfgan.gan.step import train_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="reference")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, help="default: the preset's")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--electrodes", type=int, default=191)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--vgg-weights", help="VGG19 weights file (default: random-init features)")
    args = p.parse_args()

    overrides = {
        "loss.vgg_random_init": args.vgg_weights is None,
        "loss.vgg_weights": args.vgg_weights,
        "optim.bf16": args.bf16,
    }
    if args.batch_size:
        overrides["optim.batch_size"] = args.batch_size
    cfg = preset(args.preset).with_overrides(overrides)
    rfs = make_rfs(SynthSpec(electrodes=args.electrodes, size=args.size))
    info = DatasetInfo(
        image_size=(args.size, args.size),
        channels=3,
        fov_deg=10.0,
        n_electrodes=args.electrodes,
        splits={"train": 1, "val": 1},
        response_mean=(0.0,) * args.electrodes,
        response_std=(1.0,) * args.electrodes,
    )
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gan = build_gan(cfg, info, rfs).to(args.device)
    opts = build_optimizers(cfg, gan)
    b = cfg.optim.batch_size
    responses = torch.randn(b, args.electrodes, device=args.device)
    target = torch.rand(b, 3, args.size, args.size, device=args.device)
    cuda = args.device.startswith("cuda")

    def run(n: int) -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            train_step(gan, opts, responses, target, cfg)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    run(args.warmup)
    times = [run(max(1, args.steps // 5)) / max(1, args.steps // 5) for _ in range(5)]
    rate = b / np.median(times)
    device = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"preset={args.preset} batch={b} electrodes={args.electrodes} size={args.size} bf16={args.bf16} "
        f"device={device}: {rate:.1f} samples/s (median of 5 x {max(1, args.steps // 5)} steps)"
    )
    if cuda:
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
