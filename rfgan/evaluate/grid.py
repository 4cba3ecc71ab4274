"""Sample grids: targets in the top row, their reconstructions below (training's samples/, eval's grid.png)."""

from __future__ import annotations

import os

import torch
from torchvision.utils import make_grid, save_image


def sample_grid(target: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Targets in the top row, their reconstructions below: (3, H', W') in [0, 1]."""
    if target.shape != fake.shape:
        raise ValueError(f"target {tuple(target.shape)} and reconstruction {tuple(fake.shape)} differ")
    rows = torch.cat([target, fake]).float().clamp(0, 1).cpu()  # (2B, C, H, W)
    return make_grid(rows, nrow=len(target), padding=2, pad_value=1.0)


def save_grid(path: str | os.PathLike, target: torch.Tensor, fake: torch.Tensor) -> None:
    save_image(sample_grid(target, fake), path)
