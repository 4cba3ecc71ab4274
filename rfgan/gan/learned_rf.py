"""Learned RF input layers (`model.rf_layer`): the electrodes' maps in the generator input become parameters.

The RF table is a fit, and fits are noisy: centres off, sizes wrong, IT sites with none. With `fixed` (the default,
RF_GANsynth's) a bad fit is a permanent loss. Here the maps are made from parameters at every forward and trained
with the generator:

- `gaussian` (`GaussianRFs`): each electrode keeps a Gaussian map, but its centre and size are parameters,
  initialised from the table: the centre as an offset in units of the fitted sigma, the size as a log factor, so
  that one learning rate suits small V1 and large IT fields alike.
- `map` (`MapRFs`): each electrode's map is a free low-resolution field, initialised from its Gaussian and upsampled
  bilinearly, with smoothness and sparsity penalties (MonkeySee's learned RF layer, Le et al. 2024, is the anchor;
  docs/learned-rfs.md says where rfgan differs).

`LearnedRFGenerator` wraps a generator: it takes the compact input (`RFInput`) and swaps in the learned maps, so the
first convolution still never builds the B×E×H×W stack, and the parameters are the generator's (checkpointed,
DDP-wrapped and optimised with it).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rfgan.data.rf import RFTable, pixel_grid
from rfgan.gan.rf_input import RFInput

LEARNABLE_NORMS = ("peak", "sum", "sum_full")  # "point" maps have no shape to learn


# exp(-x) underflows to 0 in float64 beyond x ≈ 745: rf_maps (NumPy, float64) leaves such an RF's map all zeros.
FLOAT64_UNDERFLOW = 745.0


class GaussianRFs(nn.Module):
    """Isotropic Gaussian maps whose centres and sizes are parameters. `forward()` → (E, H, W) maps, equal to
    rf_maps(table) at initialisation."""

    def __init__(self, rfs: RFTable, image_size: tuple[int, int], fov_deg: float, norm: str = "peak") -> None:
        super().__init__()
        if norm not in LEARNABLE_NORMS:
            raise ValueError(f"learned RFs need data.rf_norm in {LEARNABLE_NORMS}, not {norm!r}")
        gx, gy = pixel_grid(image_size, fov_deg)
        self.register_buffer("gx", torch.from_numpy(gx).float(), persistent=False)
        self.register_buffer("gy", torch.from_numpy(gy).float(), persistent=False)
        # The fit is part of the state: a checkpoint's learned RFs are read back without the dataset.
        self.register_buffer("x0", torch.as_tensor(rfs.x_deg, dtype=torch.float32))
        self.register_buffer("y0", torch.as_tensor(rfs.y_deg, dtype=torch.float32))
        self.register_buffer("sigma0", torch.as_tensor(rfs.sigma_deg, dtype=torch.float32))
        self.shift = nn.Parameter(torch.zeros(len(rfs), 2))  # centre offset, in fitted sigmas
        self.log_scale = nn.Parameter(torch.zeros(len(rfs)))  # log(sigma / fitted sigma)
        self.norm = norm
        self.deg_per_px = fov_deg / image_size[1]

    def centres(self) -> tuple[Tensor, Tensor]:
        return self.x0 + self.shift[:, 0] * self.sigma0, self.y0 + self.shift[:, 1] * self.sigma0

    def sigma(self) -> Tensor:
        return self.sigma0 * self.log_scale.exp()

    def forward(self) -> Tensor:
        """rf_maps' normalisations, computed from the exponent so that an RF far from the window, whose Gaussian is
        tiny on every pixel, keeps finite gradients (normalising exp(-d²/2σ²) by its own max or sum divides by
        nearly 0: its gradient was NaN, and NaN parameters followed)."""
        x, y = self.centres()
        sigma = self.sigma()
        d2 = (self.gx - x[:, None, None]) ** 2 + (self.gy - y[:, None, None]) ** 2
        logits = -d2 / (2 * sigma[:, None, None] ** 2)  # (E, H, W)
        if self.norm == "sum_full":
            return torch.exp(logits) / (2 * math.pi * (sigma / self.deg_per_px)[:, None, None] ** 2)
        top = logits.amax(dim=(1, 2), keepdim=True)
        if self.norm == "sum":
            maps = torch.softmax(logits.flatten(1), dim=1).view_as(logits)
        else:  # peak
            maps = torch.exp(logits - top)
        return torch.where(top < -FLOAT64_UNDERFLOW, torch.zeros_like(maps), maps)

    def table(self, rfs: RFTable) -> RFTable:
        """The learned RFs as a table with `rfs`' ids and areas."""
        x, y = self.centres()
        return RFTable(
            rfs.electrode_id,
            x.detach().double().cpu().numpy(),
            y.detach().double().cpu().numpy(),
            self.sigma().detach().double().cpu().numpy(),
            rfs.area,
        )


class MapRFs(nn.Module):
    """Free maps: a (E, h, w) field per electrode at low resolution, upsampled bilinearly to the image; initialised
    from the table's Gaussians (area-averaged down). `penalty()`: λ_smooth · mean squared difference of neighbouring
    field values + λ_sparse · mean |field|, each relative to the initial field's scale."""

    def __init__(
        self,
        rfs: RFTable,
        image_size: tuple[int, int],
        fov_deg: float,
        norm: str = "peak",
        resolution: int = 24,
        smooth: float = 1.0,
        sparse: float = 0.1,
    ) -> None:
        super().__init__()
        with torch.no_grad():
            init = GaussianRFs(rfs, image_size, fov_deg, norm)()
        self.image_size = tuple(image_size)
        h = min(resolution, image_size[0])
        w = min(resolution, image_size[1])
        field = F.adaptive_avg_pool2d(init[:, None], (h, w))[:, 0]
        scale = field.flatten(1).abs().amax(dim=1).clamp(min=1e-12)  # (E,)
        self.register_buffer("scale", scale)
        self.field = nn.Parameter(field / scale[:, None, None])  # each electrode's field peaks at 1 at the start
        self.smooth, self.sparse = smooth, sparse

    def forward(self) -> Tensor:
        up = F.interpolate(self.field[:, None], size=self.image_size, mode="bilinear", align_corners=False)
        return up[:, 0] * self.scale[:, None, None]

    def penalty(self) -> Tensor:
        f = self.field
        rough = (f[:, 1:] - f[:, :-1]).pow(2).mean() + (f[:, :, 1:] - f[:, :, :-1]).pow(2).mean()
        return self.smooth * rough + self.sparse * f.abs().mean()

    def maps_array(self) -> np.ndarray:
        with torch.no_grad():
            return self().float().cpu().numpy()


class LearnedRFGenerator(nn.Module):
    """A generator whose compact input's maps are `rfs()`, the learned ones, instead of the fixed ones."""

    def __init__(self, net: nn.Module, rfs: GaussianRFs | MapRFs) -> None:
        super().__init__()
        self.net = net
        self.rfs = rfs

    def forward(self, x: Tensor | RFInput) -> Tensor:
        if not isinstance(x, RFInput):
            raise TypeError("learned RF layers take the compact input (perf.compact_input=true)")
        maps = self.rfs().to(x.maps.dtype)
        # A fresh unfold cache: the maps change at every step.
        return self.net(x._replace(maps=maps, unfolded={}))


def learned_rfs(generator: nn.Module) -> GaussianRFs | MapRFs | None:
    """The learned RF layer inside a generator (DDP-wrapped, under a linear base, or bare), or None."""
    for module in generator.modules():
        if isinstance(module, (GaussianRFs, MapRFs)):
            return module
    return None


def rf_penalty(generator: nn.Module) -> Tensor | None:
    """The learned maps' penalty (MapRFs), or None when there is nothing to add to G's loss."""
    layer = learned_rfs(generator)
    return layer.penalty() if isinstance(layer, MapRFs) and (layer.smooth or layer.sparse) else None
