"""The generator's input layer: responses (B, E) times the electrodes' RF maps, and the first convolution that reads
that input without building it.

`RFProjection` turns responses into the generator input, dense (B, C, H, W) or compact (`RFInput`: the responses,
the fixed maps and the channel of each electrode). A generator's first convolution is an `RFConv2d`, which takes
either form; for the compact one it convolves the maps once and combines them per sample, so the B×E×H×W stack
is never built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from rfgan.data.rf import RFTable, rf_maps


class RFInput(NamedTuple):
    """The generator input (B, C, H, W) in compact form: channel c = Σ_{e: channel[e] = c} responses_e × maps_e, then
    the noise channel if any. The first convolution takes it as it is (RFConv2d), so the dense
    stack, B·E·H·W floats (2.4 GB at 1,024 electrodes, 96×96, batch 64), is never built; `dense()` builds it."""

    responses: torch.Tensor  # (B, E), standardised
    maps: torch.Tensor  # (E, H, W), fixed
    channel: torch.Tensor  # (E,) int64: the input channel of each electrode (itself, or its area)
    n_signal: int  # C without the noise channel
    noise: torch.Tensor | None  # (B, 1, H, W) or None
    unfolded: dict  # the projection's cache of unfolded maps, by conv geometry and device (see `unfold`)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.responses.shape[0], self.n_signal + (self.noise is not None), *self.maps.shape[1:]))

    def dense(self) -> torch.Tensor:
        """(B, C, H, W), as RFProjection.forward builds it."""
        onehot = F.one_hot(self.channel, self.n_signal).to(self.maps.dtype)  # (E, C)
        x = torch.einsum("be,ec,ehw->bchw", self.responses, onehot, self.maps)
        return x if self.noise is None else torch.cat([x, self.noise], dim=1)

    def signal_mean(self) -> torch.Tensor:
        """(B, 1, H, W): the mean over the response channels (what a conditional D sees), without the stack."""
        h, w = self.maps.shape[1:]
        return (self.responses @ self.maps.reshape(len(self.maps), h * w)).view(-1, 1, h, w) / self.n_signal

    def unfold(self, kernel: int, stride: int, padding: int) -> torch.Tensor:
        """(E, k·k, L) patches of the maps under a conv's geometry (L output pixels). The maps never change, so
        they are unfolded once per geometry and device and kept."""
        key = (kernel, stride, padding, self.maps.device, self.maps.dtype)
        if key not in self.unfolded:
            self.unfolded[key] = F.unfold(self.maps[:, None], kernel, padding=padding, stride=stride)
        return self.unfolded[key]


def _average_shared_pixels(maps: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Maps (E, H, W) divided, pixel by pixel, by the sum of their group's maps where that is not 0: a channel then
    holds the mean response of its electrodes on each pixel (MonkeySee's RF images, train_spatial.py:50-60)."""
    out = maps.copy()
    for group in dict.fromkeys(groups.tolist()):
        members = groups == group
        total = maps[members].sum(axis=0)
        out[members] = np.divide(maps[members], total, out=np.zeros_like(maps[members]), where=total > 0)
    return out


class RFProjection(nn.Module):
    """Responses (B, E) → generator input (B, C, H, W), on whatever device the responses are.

    Per-electrode mode: channel e = response_e × map_e, so C = E. Per-area mode (the reference's V1/V4 mode):
    channel a = Σ_{e in area a} response_e × map_e, so C = number of areas. `with_noise` appends one channel of
    standard Gaussian noise (the reference's "withNoise"). Optional per-electrode `mean`/`std` standardise the
    responses first, since recorded electrodes differ in scale by orders of magnitude.
    """

    def __init__(
        self,
        maps: torch.Tensor | np.ndarray,
        areas: Sequence[str] | None = None,
        sum_per_area: bool = False,
        with_noise: bool = False,
        mean: torch.Tensor | np.ndarray | None = None,
        std: torch.Tensor | np.ndarray | None = None,
    ):
        super().__init__()
        maps = torch.as_tensor(maps, dtype=torch.float32)
        if maps.ndim != 3:
            raise ValueError(f"maps must be (E, H, W), got shape {tuple(maps.shape)}")
        n_electrodes = maps.shape[0]
        self.register_buffer("maps", maps, persistent=False)
        self.sum_per_area = sum_per_area
        self.with_noise = with_noise
        self.area_names: list[str] = []
        if sum_per_area:
            if areas is None or len(areas) != n_electrodes:
                raise ValueError("sum_per_area needs one area label per electrode; the RF table has no 'area' column")
            self.area_names = list(dict.fromkeys(areas))
            onehot = torch.tensor([[a == name for a in areas] for name in self.area_names], dtype=torch.float32)
            self.register_buffer("groups", onehot, persistent=False)  # (A, E)
        channel = self.groups.argmax(dim=0) if sum_per_area else torch.arange(n_electrodes)
        self.register_buffer("channel", channel, persistent=False)  # (E,) input channel of each electrode
        self._unfolded: dict = {}
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std to standardise responses, or neither")
        if mean is not None:
            std = torch.as_tensor(std, dtype=torch.float32)
            if (std <= 0).any():
                raise ValueError("response std must be > 0 for every electrode")
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32), persistent=False)
            self.register_buffer("std", std, persistent=False)
        else:
            self.mean = self.std = None

    @classmethod
    def from_table(
        cls, rfs: RFTable, image_size: tuple[int, int], fov_deg: float, norm: str = "peak", **kwargs
    ) -> RFProjection:
        areas = rfs.area.tolist() if rfs.area is not None else None
        maps = rf_maps(rfs, image_size, fov_deg, norm=norm)
        if norm == "point" and kwargs.get("sum_per_area"):
            maps = _average_shared_pixels(maps, rfs.area)
        return cls(maps, areas=areas, **kwargs)

    @property
    def n_electrodes(self) -> int:
        return self.maps.shape[0]

    @property
    def out_channels(self) -> int:
        base = len(self.area_names) if self.sum_per_area else self.n_electrodes
        return base + int(self.with_noise)

    def _standardized(self, responses: torch.Tensor) -> torch.Tensor:
        if responses.ndim != 2 or responses.shape[1] != self.n_electrodes:
            raise ValueError(
                f"responses must be (B, {self.n_electrodes}) to match the RF table, got {tuple(responses.shape)}"
            )
        r = responses.to(self.maps.dtype)
        return r if self.mean is None else (r - self.mean) / self.std

    def _noise(self, r: torch.Tensor) -> torch.Tensor | None:
        if not self.with_noise:
            return None
        return torch.randn(r.shape[0], 1, *self.maps.shape[1:], device=r.device, dtype=r.dtype)

    def compact(self, responses: torch.Tensor) -> RFInput:
        """(B, E) responses → the generator input in compact form (same values as `forward`, same noise draw)."""
        r = self._standardized(responses)
        n_signal = len(self.area_names) if self.sum_per_area else self.n_electrodes
        return RFInput(r, self.maps, self.channel, n_signal, self._noise(r), self._unfolded)

    def forward(self, responses: torch.Tensor) -> torch.Tensor:
        r = self._standardized(responses)
        if self.sum_per_area:
            x = torch.einsum("be,ae,ehw->bahw", r, self.groups, self.maps)  # (B, A, H, W)
        else:
            x = r[:, :, None, None] * self.maps  # (B, E, H, W)
        noise = self._noise(r)
        return x if noise is None else torch.cat([x, noise], dim=1)


def rf_conv2d(conv: nn.Conv2d, x: RFInput) -> Tensor:
    """conv(x.dense()) without building the dense input: conv is linear in it, and channel c of the input is
    Σ r_e·M_e over the electrodes e of channel c, so conv(x) = Σ_e r_e·(W[:, c(e)] ⋆ M_e) + conv(noise) + bias.
    The filtered maps W ⋆ M_e cost one sample's convolution (a batched matmul with the maps' patches, unfolded
    once), and the batch is one (B×E)·(E×C_out·L) matmul: about k² times fewer FLOPs than the direct conv.
    Returns (B, C_out, H', W')."""
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return conv(x.dense())  # geometries the generators do not use: build the stack
    (k, _), (stride, _), (pad, _) = conv.kernel_size, conv.stride, conv.padding
    weight = conv.weight  # (C_out, C_in, k, k)
    c_out, e = weight.shape[0], len(x.maps)
    patches = x.unfold(k, stride, pad)  # (E, k·k, L)
    per_electrode = weight[:, x.channel].transpose(0, 1).reshape(e, c_out, k * k)  # (E, C_out, k·k)
    h_out = (x.maps.shape[1] + 2 * pad - k) // stride + 1
    n_out = c_out * patches.shape[-1]
    chunk = max(1, FILTERED_MAPS_BYTES // (4 * n_out))
    if chunk >= e:
        out = _filtered_matmul(per_electrode, patches, x.responses)
    else:
        # Many electrodes × wide layers (1,024 × the SegNet's 64 maps at 96×96 is 2.4 GB of filtered maps): sum over
        # groups of electrodes, each recomputed in backward rather than kept, so memory stays bounded.
        out = sum(
            checkpoint(_filtered_matmul, per_electrode[i : i + chunk], patches[i : i + chunk],
                       x.responses[:, i : i + chunk], use_reentrant=False)
            for i in range(0, e, chunk)
        )  # fmt: skip
    out = out.view(-1, c_out, h_out, patches.shape[-1] // h_out)
    if x.noise is not None:
        out = out + F.conv2d(x.noise, weight[:, x.n_signal :], stride=stride, padding=pad)
    if conv.bias is not None:
        out = out + conv.bias[:, None, None]
    return out


# Above this many bytes of filtered maps (E × C_out × L float32), rf_conv2d works through the electrodes in groups.
FILTERED_MAPS_BYTES = 256 * 2**20


def _filtered_matmul(per_electrode: Tensor, patches: Tensor, responses: Tensor) -> Tensor:
    """Σ_e r_e·(W_e ⋆ M_e) over a group of electrodes: (E, C_out, k·k), (E, k·k, L), (B, E) → (B, C_out·L)."""
    filtered = torch.bmm(per_electrode.to(patches.dtype), patches)  # (E, C_out, L): W[:, c(e)] ⋆ M_e
    return responses @ filtered.reshape(len(filtered), -1)


class RFConv2d(nn.Conv2d):
    """A generator's first convolution: an nn.Conv2d (same parameters and state-dict keys) that also takes the
    compact input, through rf_conv2d."""

    def forward(self, x: Tensor | RFInput) -> Tensor:
        return rf_conv2d(self, x) if isinstance(x, RFInput) else super().forward(x)
