"""Receptive fields: the RF table, RF maps in image space, the RF projection that builds the generator input,
and the RF mask.

Geometry (used everywhere in rfgan): the image spans `fov_deg` degrees of visual angle horizontally, pixels are
square, (0, 0) is the image centre, x grows to the right and y grows *upwards* (visual-field convention), so
row 0 of the image is the top of the field.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rfgan.config import RF_NORMS
from rfgan.errors import DataError

RF_COLUMNS = ("electrode_id", "x_deg", "y_deg", "sigma_deg")
# Optional columns: the area label, and the RF mask's radius when it is not a multiple of the map's sigma (the
# originals draw maps of sigma √std but masks of radius std; docs/fidelity.md).
OPTIONAL_COLUMNS = ("area", "mask_radius_deg")
# An RF whose centre lies further than this many sigmas outside the window contributes < 1.2% of its mass.
OUTSIDE_SIGMAS = 3.0


@dataclass(frozen=True, eq=False)
class RFTable:
    """One row per electrode, in the order of the columns of the responses."""

    electrode_id: np.ndarray  # (E,) int64
    x_deg: np.ndarray  # (E,) float64
    y_deg: np.ndarray  # (E,) float64
    sigma_deg: np.ndarray  # (E,) float64
    area: np.ndarray | None = None  # (E,) str, e.g. "V1", "V4", "IT"
    mask_radius_deg: np.ndarray | None = None  # (E,) float64; None = data.mask_radius_sigmas · sigma_deg

    def __len__(self) -> int:
        return len(self.electrode_id)

    def equals(self, other: RFTable) -> bool:
        same_area = (self.area is None and other.area is None) or (
            self.area is not None and other.area is not None and np.array_equal(self.area, other.area)
        )
        same_radius = (self.mask_radius_deg is None and other.mask_radius_deg is None) or (
            self.mask_radius_deg is not None
            and other.mask_radius_deg is not None
            and np.allclose(self.mask_radius_deg, other.mask_radius_deg)
        )
        return (
            np.array_equal(self.electrode_id, other.electrode_id)
            and np.allclose(self.x_deg, other.x_deg)
            and np.allclose(self.y_deg, other.y_deg)
            and np.allclose(self.sigma_deg, other.sigma_deg)
            and same_area
            and same_radius
        )

    def area_names(self) -> list[str]:
        """Distinct areas in order of first appearance."""
        if self.area is None:
            return []
        return list(dict.fromkeys(self.area.tolist()))

    def validate(self, source: str) -> None:
        """Raise DataError naming `source` if ids repeat or a value is not finite or sigma <= 0."""
        if len(self) == 0:
            raise DataError(f"{source}: the RF table has no rows; it needs one row per electrode.")
        radius = () if self.mask_radius_deg is None else ("mask_radius_deg",)
        for name in ("x_deg", "y_deg", "sigma_deg", *radius):
            bad = np.flatnonzero(~np.isfinite(getattr(self, name)))
            if bad.size:
                raise DataError(
                    f"{source}: column {name!r} is not finite for electrode(s) {self.electrode_id[bad][:10].tolist()}."
                )
        bad = np.flatnonzero(self.sigma_deg <= 0)
        if bad.size:
            raise DataError(
                f"{source}: sigma_deg must be > 0, but electrode(s) {self.electrode_id[bad][:10].tolist()} have "
                f"{self.sigma_deg[bad][:10].tolist()}. RF sizes are Gaussian standard deviations in degrees."
            )
        if self.mask_radius_deg is not None and (self.mask_radius_deg <= 0).any():
            bad = np.flatnonzero(self.mask_radius_deg <= 0)
            raise DataError(
                f"{source}: mask_radius_deg must be > 0, but electrode(s) {self.electrode_id[bad][:10].tolist()} have "
                f"{self.mask_radius_deg[bad][:10].tolist()}."
            )
        ids, counts = np.unique(self.electrode_id, return_counts=True)
        if (counts > 1).any():
            raise DataError(f"{source}: electrode_id repeats: {ids[counts > 1][:10].tolist()}; ids must be unique.")

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> RFTable:
        """Read `electrode_id,x_deg,y_deg,sigma_deg[,area][,mask_radius_deg]` (x/y from the image centre, y up) and
        validate it."""
        path = os.fspath(path)
        try:
            with open(path, newline="") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: cannot read the RF table ({e}).") from e
        return cls.from_csv_text(text, path)

    @classmethod
    def from_csv_text(cls, text: str, path: str) -> RFTable:
        """Parse the CSV text of an RF table; `path` names it in errors."""
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""))
            rows = list(reader)
            header = [h.strip() for h in (reader.fieldnames or [])]
        except csv.Error as e:
            raise DataError(f"{path}: cannot read the RF table ({e}).") from e
        missing = [c for c in RF_COLUMNS if c not in header]
        if missing:
            raise DataError(
                f"{path}: the RF table lacks column(s) {missing}; it has {header}. "
                f"Expected a CSV header of {','.join(RF_COLUMNS)}[,area]."
            )
        numeric = RF_COLUMNS + (("mask_radius_deg",) if "mask_radius_deg" in header else ())
        columns: dict[str, list] = {c: [] for c in numeric}
        areas = []
        for line, row in enumerate(rows, start=2):
            row = {k.strip(): v for k, v in row.items() if k is not None}
            for c in numeric:
                text = (row.get(c) or "").strip()
                try:
                    columns[c].append(int(text) if c == "electrode_id" else float(text))
                except ValueError:
                    raise DataError(
                        f"{path}, line {line}: column {c!r} holds {text!r}, which is not "
                        f"{'an integer' if c == 'electrode_id' else 'a number'}."
                    ) from None
            if "area" in header:
                areas.append((row.get("area") or "").strip())
        table = cls(
            electrode_id=np.asarray(columns["electrode_id"], dtype=np.int64),
            x_deg=np.asarray(columns["x_deg"], dtype=np.float64),
            y_deg=np.asarray(columns["y_deg"], dtype=np.float64),
            sigma_deg=np.asarray(columns["sigma_deg"], dtype=np.float64),
            area=np.asarray(areas, dtype=str) if "area" in header else None,
            mask_radius_deg=np.asarray(columns["mask_radius_deg"], np.float64) if "mask_radius_deg" in header else None,
        )
        table.validate(path)
        return table

    def to_dict(self) -> dict[str, list]:
        """Plain lists, for configs passed to Ray workers."""
        return {c: getattr(self, c).tolist() for c in RF_COLUMNS + OPTIONAL_COLUMNS if getattr(self, c) is not None}

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> RFTable:
        return cls(
            np.asarray(d["electrode_id"], np.int64),
            np.asarray(d["x_deg"], np.float64),
            np.asarray(d["y_deg"], np.float64),
            np.asarray(d["sigma_deg"], np.float64),
            np.asarray(d["area"], dtype=str) if "area" in d else None,
            np.asarray(d["mask_radius_deg"], np.float64) if "mask_radius_deg" in d else None,
        )

    def to_csv(self, path: str | os.PathLike) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            optional = [c for c in OPTIONAL_COLUMNS if getattr(self, c) is not None]
            w.writerow(RF_COLUMNS + tuple(optional))
            for i in range(len(self)):
                row = [int(self.electrode_id[i])] + [repr(float(getattr(self, c)[i])) for c in RF_COLUMNS[1:]]
                extra = [str(self.area[i]) if c == "area" else repr(float(self.mask_radius_deg[i])) for c in optional]
                w.writerow(row + extra)


def pixel_grid(image_size: tuple[int, int], fov_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in degrees, each (H, W): x to the right, y upwards, (0, 0) at the image centre."""
    h, w = image_size
    deg_per_px = fov_deg / w
    xs = (np.arange(w) + 0.5 - w / 2) * deg_per_px
    ys = (h / 2 - np.arange(h) - 0.5) * deg_per_px
    return np.meshgrid(xs, ys)


def rfs_outside_window(rfs: RFTable, image_size: tuple[int, int], fov_deg: float) -> np.ndarray:
    """(E,) bool: RFs whose centre lies more than OUTSIDE_SIGMAS sigma outside the image window."""
    h, w = image_size
    half_w, half_h = fov_deg / 2, fov_deg * h / w / 2
    dx = np.maximum(np.abs(rfs.x_deg) - half_w, 0.0)
    dy = np.maximum(np.abs(rfs.y_deg) - half_h, 0.0)
    return np.hypot(dx, dy) > OUTSIDE_SIGMAS * rfs.sigma_deg


def rf_maps(rfs: RFTable, image_size: tuple[int, int], fov_deg: float, norm: str = "sum") -> np.ndarray:
    """RF maps, (E, H, W) float32: isotropic Gaussians of sd `sigma_deg`, or single pixels.

    norm="sum": each map sums to 1 over the window, so map·image is the RF-weighted mean luminance (the linear
    response model). norm="sum_full": each map sums to 1 over the whole visual field sampled at the pixel pitch, so
    RFs reaching past the window keep only their share inside it (the originals normalise their maps over a 2.5×
    larger grid, then crop: RF_module.py:108-135); the peak is pixel area / (2π sigma²), about 1e-3 for the originals.
    norm="peak": each map peaks at 1, so a channel of the generator input equals the response at the RF centre
    whatever the RF size (sum-normalised maps would shrink large-RF channels by 1/sigma^2). norm="point": 1 at the
    pixel holding the RF centre, 0 elsewhere and for centres outside the window (MonkeySee's RF location images;
    RFProjection.from_table averages the electrodes of one channel that share a pixel).
    """
    if norm not in RF_NORMS:
        raise ValueError(f"norm must be one of {RF_NORMS}, not {norm!r}")
    gx, gy = pixel_grid(image_size, fov_deg)
    if norm == "point":
        h, w = image_size
        deg_per_px = fov_deg / w
        col = np.floor(rfs.x_deg / deg_per_px + w / 2).astype(np.int64)
        row = np.floor(h / 2 - rfs.y_deg / deg_per_px).astype(np.int64)
        inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        maps = np.zeros((len(rfs), h, w), np.float32)
        maps[np.flatnonzero(inside), row[inside], col[inside]] = 1.0
        return maps
    d2 = (gx[None] - rfs.x_deg[:, None, None]) ** 2 + (gy[None] - rfs.y_deg[:, None, None]) ** 2
    maps = np.exp(-d2 / (2 * rfs.sigma_deg[:, None, None] ** 2))
    if norm == "sum_full":
        # The sum over the infinite pixel grid: 2π sigma² / pixel area (Poisson summation: exact to 1e-8 for
        # sigma above one pixel).
        denom = 2 * np.pi * (rfs.sigma_deg[:, None, None] / (fov_deg / image_size[1])) ** 2
        return (maps / denom).astype(np.float32)
    denom = maps.sum(axis=(1, 2), keepdims=True) if norm == "sum" else maps.max(axis=(1, 2), keepdims=True)
    # An RF far outside the window underflows to all zeros; leave it zero rather than divide by zero.
    maps = np.divide(maps, denom, out=np.zeros_like(maps), where=denom > 0)
    return maps.astype(np.float32)


def rf_mask(rfs: RFTable, image_size: tuple[int, int], fov_deg: float, radius_sigmas: float = 1.0) -> np.ndarray:
    """(H, W) float32 in {0, 1}: the union of discs around each RF centre (RFmasked's confidence mask), of radius
    the table's `mask_radius_deg` if it has one, else `radius_sigmas`·sigma."""
    gx, gy = pixel_grid(image_size, fov_deg)
    d2 = (gx[None] - rfs.x_deg[:, None, None]) ** 2 + (gy[None] - rfs.y_deg[:, None, None]) ** 2
    radius = rfs.mask_radius_deg if rfs.mask_radius_deg is not None else radius_sigmas * rfs.sigma_deg
    inside = d2 <= radius[:, None, None] ** 2
    return inside.any(axis=0).astype(np.float32)


class RFInput(NamedTuple):
    """The generator input (B, C, H, W) in compact form: channel c = Σ_{e: channel[e] = c} responses_e × maps_e, then
    the noise channel if any. The first convolution takes it as it is (rfgan.gan.models.rf_conv2d), so the dense
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
