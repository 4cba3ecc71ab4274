"""Receptive fields: the RF table, RF maps in image space and the RF mask (the generator's input layer that uses
them is rfgan.gan.rf_input).

Geometry (used everywhere in rfgan): the image spans `fov_deg` degrees of visual angle horizontally, pixels are
square, (0, 0) is the image centre, x grows to the right and y grows *upwards* (visual-field convention), so
row 0 of the image is the top of the field.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass

import numpy as np

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
        """Parse the CSV text of an RF table; `path` names it in errors. A byte-order mark (Excel's "CSV UTF-8")
        is not part of the first column's name."""
        text = text.removeprefix("\ufeff")
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
