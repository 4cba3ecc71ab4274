"""The bench presets: their names and sizes, without torch, so that the CLI's parser can list them cheaply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BenchPreset:
    config: str  # the rfgan config preset
    batch: int
    steps: int  # per arm per round
    electrodes: int = 191
    size: int = 96
    overrides: tuple[tuple[str, Any], ...] = ()  # dotted config overrides


# Sizes: `tiny` takes seconds on a laptop CPU; `medium` is the default config (U-Net 64, PatchGAN 64, VGG19 feature
# loss with random-init weights: the same FLOPs as ImageNet's) at a CPU-sized batch; `reference` is RF_GANsynth's
# model (SegNet G of 53 M parameters, DCGAN D, VGG loss), a few steps on a CPU.
BENCH_PRESETS: dict[str, BenchPreset] = {
    "tiny": BenchPreset("tiny", batch=32, steps=4),
    "medium": BenchPreset("default", batch=16, steps=2),
    "reference": BenchPreset("reference", batch=8, steps=1),
}
GPU_BATCH = {"tiny": 256, "medium": 128, "reference": 256}
