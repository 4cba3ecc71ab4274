"""Sample grids: targets in the top row, their reconstructions below (training's samples/, eval's grid.png)."""

from __future__ import annotations

import os

import torch

# torchvision is imported where it is used: importing it costs about a second (it pulls in torch._dynamo), and
# the driver of `rfgan train` and the CLI's parser never need it.


def sample_grid(target: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Targets in the top row, their reconstructions below: (3, H', W') in [0, 1]."""
    if target.shape != fake.shape:
        raise ValueError(f"target {tuple(target.shape)} and reconstruction {tuple(fake.shape)} differ")
    from torchvision.utils import make_grid

    rows = torch.cat([target, fake]).float().clamp(0, 1).cpu()  # (2B, C, H, W)
    return make_grid(rows, nrow=len(target), padding=2, pad_value=1.0)


def save_grid(path: str | os.PathLike, target: torch.Tensor, fake: torch.Tensor) -> None:
    from torchvision.utils import save_image

    save_image(sample_grid(target, fake), path)
