"""Learned RFs (model.rf_layer gaussian or map) as eval writes and report draws them: the learned table, its distance
from the table it started from, and, for a synthetic dataset made with an RF fit error, from the true RFs."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from torch import nn

from rfgan.data.format import DatasetInfo
from rfgan.data.rf import RFTable, pixel_grid
from rfgan.gan.learned_rf import GaussianRFs, MapRFs

LEARNED_RFS = "learned_rfs.csv"
LEARNED_MAPS = "learned_rf_maps.npy"


def learned_table(layer: nn.Module, rfs: RFTable, info: DatasetInfo) -> RFTable:
    """The learned RFs as an RF table: a Gaussian layer's centres and sizes; for free maps, each map's centre of mass
    and the root mean square distance from it (of the map's positive part), per axis."""
    if isinstance(layer, GaussianRFs):
        return layer.table(rfs)
    if not isinstance(layer, MapRFs):
        raise TypeError(f"not a learned RF layer: {type(layer).__name__}")
    maps = np.clip(layer.maps_array().astype(np.float64), 0, None)  # (E, H, W)
    gx, gy = pixel_grid(info.image_size, info.fov_deg)
    mass = maps.sum(axis=(1, 2))
    safe = np.where(mass > 0, mass, 1.0)
    x = (maps * gx).sum(axis=(1, 2)) / safe
    y = (maps * gy).sum(axis=(1, 2)) / safe
    spread = ((maps * ((gx - x[:, None, None]) ** 2 + (gy - y[:, None, None]) ** 2)).sum(axis=(1, 2)) / safe / 2) ** 0.5
    # A map learned to nothing keeps the table's values: it has no centre to report.
    x, y = np.where(mass > 0, x, rfs.x_deg), np.where(mass > 0, y, rfs.y_deg)
    sigma = np.where((mass > 0) & (spread > 0), spread, rfs.sigma_deg)
    return RFTable(rfs.electrode_id, x, y, sigma, rfs.area)


def true_rfs(info: DatasetInfo, rfs: RFTable) -> RFTable | None:
    """The simulated RFs of a dataset that `rfgan synth --rf-fit-error` made (its table is a fit of them), else None."""
    truth = info.source.get("rf_truth") if isinstance(info.source, dict) else None
    if not isinstance(truth, dict):
        return None
    try:
        columns = [np.asarray(truth[c], dtype=np.float64) for c in ("x_deg", "y_deg", "sigma_deg")]
    except (KeyError, TypeError, ValueError):
        return None
    if any(c.shape != (len(rfs),) for c in columns):
        return None
    return RFTable(rfs.electrode_id, *columns, rfs.area)


def _median_distance(a: RFTable, b: RFTable) -> float:
    return float(np.median(np.hypot(a.x_deg - b.x_deg, a.y_deg - b.y_deg)))


def scores(fitted: RFTable, learned: RFTable, truth: RFTable | None) -> dict[str, Any]:
    """Median centre distances in degrees: how far learning moved the RFs, and with the truth known, how far the fit
    and the learned RFs are from it (overall and by area)."""
    out: dict[str, Any] = {"median_shift_deg": _median_distance(fitted, learned)}
    if truth is None:
        return out
    out["median_centre_error_deg"] = {
        "fitted": _median_distance(fitted, truth),
        "learned": _median_distance(learned, truth),
    }
    if fitted.area is not None:
        by_area = {}
        for area in fitted.area_names():
            sel = fitted.area == area

            def part(t: RFTable, sel=sel) -> RFTable:
                return RFTable(t.electrode_id[sel], t.x_deg[sel], t.y_deg[sel], t.sigma_deg[sel])

            by_area[area] = {
                "fitted": _median_distance(part(fitted), part(truth)),
                "learned": _median_distance(part(learned), part(truth)),
            }
        out["median_centre_error_deg_by_area"] = by_area
    return out


def draw(fitted: RFTable, learned: RFTable, truth: RFTable | None, fov_deg: float, title: str) -> bytes:
    """A PNG of the visual field: each RF's fitted centre (open grey circle of radius sigma), learned centre and
    circle (coloured by area), a line between them, and the true centre (black cross) when known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection, PatchCollection
    from matplotlib.patches import Circle

    colours = {"V1": "tab:blue", "V4": "tab:green", "IT": "tab:red"}
    areas = fitted.area if fitted.area is not None else np.full(len(fitted), "")
    colour = [colours.get(a, "tab:purple") for a in areas]
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    half = fov_deg / 2
    ax.add_patch(plt.Rectangle((-half, -half), fov_deg, fov_deg, fill=False, lw=1, color="0.6"))
    ax.add_collection(
        PatchCollection(
            [Circle((x, y), s) for x, y, s in zip(fitted.x_deg, fitted.y_deg, fitted.sigma_deg)],
            facecolor="none",
            edgecolor="0.7",
            lw=0.6,
        )
    )
    ax.add_collection(
        PatchCollection(
            [Circle((x, y), s) for x, y, s in zip(learned.x_deg, learned.y_deg, learned.sigma_deg)],
            facecolor="none",
            edgecolor=colour,
            lw=0.6,
            alpha=0.6,
        )
    )
    segments = np.stack([np.c_[fitted.x_deg, fitted.y_deg], np.c_[learned.x_deg, learned.y_deg]], axis=1)
    ax.add_collection(LineCollection(segments, colors=colour, lw=0.8))
    ax.scatter(learned.x_deg, learned.y_deg, s=8, c=colour, label="learned")
    ax.scatter(fitted.x_deg, fitted.y_deg, s=8, facecolors="none", edgecolors="0.5", label="fitted (table)")
    if truth is not None:
        ax.scatter(truth.x_deg, truth.y_deg, s=14, marker="x", c="k", lw=0.8, label="true")
    ax.set_xlim(-half * 1.1, half * 1.1)
    ax.set_ylim(-half * 1.1, half * 1.1)
    ax.set_aspect("equal")
    ax.set_xlabel("x (deg)")
    ax.set_ylabel("y (deg)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
