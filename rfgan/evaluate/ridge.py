"""The baselines of `rfgan baseline`: ridge regression from standardised responses to pixels, in closed form, and
the same on a random-feature expansion of the responses (`features="random"`), which can use responses that are not
linear in the image.

Random features: φ(x) = [x, √(2/D)·cos(x·Ω/ℓ + b)] with Ω ~ N(0, 1) and b ~ U(0, 2π) (Rahimi & Recht 2007): ridge
on φ is kernel ridge regression with a Gaussian kernel of width ℓ, approximately, plus the linear part, so it is
never worse than ridge on the validation split by more than its choice of λ allows. ℓ is chosen with λ on the
validation split among multiples of the median distance between training responses.

The normal equations are summed over batches of the training split (X^T X is E×E, X^T Y is E×(C·H·W)), so a fit
holds those and one batch, never the dataset. λ is chosen on the validation split over a log grid, all at once from
one eigendecomposition of X^T X. Works on any torch device (float64 sums; float32 on MPS, which has no float64).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rfgan import storage
from rfgan.checkpoint import CONTENT_FILES, STATE_FILE, CheckpointFiles, write_checkpoint
from rfgan.data.format import DatasetInfo, iter_split, read_info, to_tensors
from rfgan.data.rf import RFTable
from rfgan.errors import DataError
from rfgan.evaluate.metrics import sum_dtype

RIDGE_KIND = "ridge"
CHECKPOINT_NAME = "checkpoint_ridge"
# λ as a multiple of the mean eigenvalue of the centred X^T X (about the number of training rows, for standardised
# responses), so that one grid suits any dataset size; two steps a decade.
LAMBDA_GRID: tuple[float, ...] = tuple(float(10.0**e) for e in np.arange(-5.0, 3.01, 0.5))
BATCH_ROWS = 1024
FEATURES = ("linear", "random")
N_FEATURES = 2048  # random features: D
BANDWIDTHS: tuple[float, ...] = (0.5, 1.0, 2.0)  # ℓ as multiples of the median distance between training responses
SELECTED_BY = "lowest pixel MSE on the validation split, of outputs clipped to [0, 1] as the decoder clips them"


def draw_features(n_electrodes: int, n_features: int, bandwidth: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Ω (E, D), already divided by the bandwidth ℓ, and b (D,), float32 (the decoder's; the fit sums in float64)."""
    g = torch.Generator().manual_seed(seed)
    omega = torch.randn(n_electrodes, n_features, generator=g) / bandwidth
    return omega, torch.rand(n_features, generator=g) * 2 * torch.pi


def random_features(x: Tensor, omega: Tensor, phase: Tensor) -> Tensor:
    """x (B, E) → [x, √(2/D)·cos(x·Ω + b)] (B, E + D), in x's dtype."""
    waves = torch.cos(x @ omega.to(x.dtype) + phase.to(x.dtype)) * (2.0 / omega.shape[1]) ** 0.5
    return torch.cat([x, waves], dim=1)


class RidgeDecoder(nn.Module):
    """Responses (B, E) → images (B, C, H, W) in [0, 1]: standardised with the training split's per-electrode mean
    and std (as the GAN's input is), expanded by the random features if any, times the weights, plus the bias,
    clipped to [0, 1]."""

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor,
        mean: Tensor,
        std: Tensor,
        image_shape: tuple[int, int, int],
        omega: Tensor | None = None,
        phase: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight.float())  # (E or E + D, C·H·W)
        self.register_buffer("bias", bias.float())  # (C·H·W,)
        self.register_buffer("mean", mean.float())  # (E,)
        self.register_buffer("std", std.float())  # (E,)
        if (omega is None) != (phase is None):
            raise ValueError("give the random features' omega and phase together, or neither")
        self.random = omega is not None
        if self.random:
            self.register_buffer("omega", omega.float())  # (E, D)
            self.register_buffer("phase", phase.float())  # (D,)
        self.image_shape = tuple(image_shape)

    def forward(self, responses: Tensor) -> Tensor:
        if responses.ndim != 2 or responses.shape[1] != len(self.mean):
            raise ValueError(f"responses must be (B, {len(self.mean)}), got {tuple(responses.shape)}")
        x = (responses.float() - self.mean) / self.std  # (B, E)
        if self.random:
            x = random_features(x, self.omega, self.phase)
        return (x @ self.weight + self.bias).clamp(0, 1).view(-1, *self.image_shape)


@dataclass
class RidgeFit:
    decoder: RidgeDecoder
    lam: float  # the chosen λ
    grid: tuple[float, ...]  # every λ tried
    val_mse: tuple[float, ...]  # the validation MSE of each
    n_train: int
    features: str = "linear"  # or "random": ridge on [responses, random features]
    n_features: int = 0
    bandwidth: float = 0.0  # the random features' ℓ
    bandwidth_val_mse: dict[float, float] | None = None  # the best validation MSE at each multiple of the median

    def config(self, data: str) -> dict[str, Any]:
        """The resolved config of the fit: written as the run's config.json, shown by rfgan report."""
        best = self.grid.index(self.lam)
        random = {}
        if self.features == "random":
            random = {
                "n_features": self.n_features,
                "bandwidth": self.bandwidth,
                "bandwidth_val_mse": {str(k): v for k, v in (self.bandwidth_val_mse or {}).items()},
            }
        inputs = "responses standardised with the training split's per-electrode mean and std"
        if self.features == "random":
            inputs += ", and their random Fourier features (a Gaussian kernel of width 'bandwidth')"
        return {
            "model": "ridge" if self.features == "linear" else "ridge-random-features",
            "data": data,
            "inputs": inputs,
            **random,
            "lambda": self.lam,
            "selected_by": SELECTED_BY,
            "lambda_at_grid_edge": best in (0, len(self.grid) - 1),
            "lambda_grid": list(self.grid),
            "val_mse": list(self.val_mse),
            "n_train": self.n_train,
        }


def _check_data(data: str, info: DatasetInfo) -> None:
    if "val" not in info.splits:
        raise DataError(
            f"{data} has no validation split ('val'), on which rfgan baseline chooses the ridge penalty; make the "
            "dataset with one (rfgan ingest --val-fraction)."
        )


def _batches(data: str, split: str, info: DatasetInfo, device: torch.device, dtype: torch.dtype):
    """(standardised responses (B, E), images flattened (B, C·H·W)) in `dtype`, a batch at a time."""
    mean = torch.tensor(info.response_mean, device=device, dtype=dtype)
    std = torch.tensor(info.response_std, device=device, dtype=dtype)
    for batch in iter_split(data, split, BATCH_ROWS):
        responses, images = to_tensors(batch, device)
        yield (responses.to(dtype) - mean) / std, images.flatten(1).to(dtype)


def _normal_equations(data, info, device, dtype, expand):
    """Σ xᵀx, Σ xᵀy, Σ x, Σ y and the row count over the training split, x = expand(standardised responses)."""
    sums, n = None, 0
    for x, y in _batches(data, "train", info, device, dtype):
        x = expand(x)
        if sums is None:
            e, d = x.shape[1], y.shape[1]
            sums = [torch.zeros(*shape, device=device, dtype=dtype) for shape in ((e, e), (e, d), (e,), (d,))]
        sums[0] += x.T @ x
        sums[1] += x.T @ y
        sums[2] += x.sum(dim=0)
        sums[3] += y.sum(dim=0)
        n += len(x)
    if n < 2:
        raise DataError(f"{data}: the training split has {n} row(s); a ridge fit needs at least 2.")
    return (*sums, n)


def _solve(data, info, device, dtype, grid, expand):
    """The weights and bias at the λ of `grid` with the lowest validation MSE, the λs and each one's MSE, n."""
    xtx, xty, x_sum, y_sum, n = _normal_equations(data, info, device, dtype, expand)
    d = xty.shape[1]
    x_mean, y_mean = x_sum / n, y_sum / n
    # Centred normal equations, so the intercept (y_mean - x_mean W) is not penalised.
    s = xtx - n * torch.outer(x_mean, x_mean)  # (E, E)
    c = xty - n * torch.outer(x_mean, y_mean)  # (E, D)
    # W(λ) = Q diag(1 / (Λ + λ)) Q^T C for S = Q Λ Q^T: one decomposition serves every λ of the grid.
    evals, q = torch.linalg.eigh(s)
    evals = evals.clamp(min=0)  # round-off can leave the smallest eigenvalues slightly negative
    if not evals.max() > 0:
        # λ is a multiple of the mean eigenvalue: with none, every λ is 0 and the weights 0/0 (NaN).
        raise DataError(
            f"{data}: the training responses are constant (no electrode varies over the {n} training rows), so "
            "no decoder can be fitted to them; check the recording and ingest it again (rfgan ingest refuses such "
            "responses)."
        )
    qc = q.T @ c  # (E, D)
    lambdas = evals.mean() * torch.tensor(grid, device=device, dtype=dtype)  # (L,)

    # Validation error of every λ in one pass over the split: predictions y_mean + (x - x_mean) Q diag(1/(Λ+λ)) Q^T C.
    sse, n_val = torch.zeros(len(grid), device=device, dtype=dtype), 0
    qc32, y_mean32 = qc.float(), y_mean.float()
    for x, y in _batches(data, "val", info, device, dtype):
        z = ((expand(x) - x_mean) @ q).float()  # (B, E)
        for i, lam in enumerate(lambdas):
            pred = (y_mean32 + (z / (evals + lam).float()) @ qc32).clamp(0, 1)  # (B, D)
            sse[i] += ((pred - y.float()) ** 2).sum()
        n_val += len(x)
    val_mse = sse / (n_val * d)
    best = int(val_mse.argmin())
    weight = q @ (qc / (evals + lambdas[best])[:, None])  # (E, D)
    bias = y_mean - x_mean @ weight  # (D,)
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all() and torch.isfinite(val_mse[best])):
        raise DataError(
            f"{data}: the ridge fit came out NaN or infinite (responses too large for {dtype}?); nothing was "
            "written: rescale the responses and ingest them again."
        )
    return weight, bias, lambdas, val_mse, n


def median_distance(data: str, info: DatasetInfo, device: torch.device, dtype: torch.dtype, rows: int = 1000) -> float:
    """The median Euclidean distance between the standardised responses of the first `rows` training rows."""
    x = torch.cat([x for x, _ in _batches(data, "train", info, device, dtype)])[:rows]
    distances = torch.cdist(x, x)
    return float(distances[torch.triu_indices(len(x), len(x), 1, device=device).unbind()].median())


@torch.no_grad()
def fit_ridge(
    data: str,
    device: torch.device | str = "cpu",
    grid: tuple[float, ...] = LAMBDA_GRID,
    features: str = "linear",
    n_features: int = N_FEATURES,
    bandwidths: tuple[float, ...] = BANDWIDTHS,
) -> RidgeFit:
    """Ridge regression from the training split's standardised responses (`features="linear"`) or their random-
    feature expansion (`"random"`) to its pixels, with an unpenalised intercept, λ chosen on the validation split
    (SELECTED_BY) among `grid` times the mean eigenvalue of X^T X, and for random features also the bandwidth among
    `bandwidths` times the median distance between training responses."""
    if features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, not {features!r}")
    info = read_info(data)
    _check_data(data, info)
    device = torch.device(device)
    dtype = sum_dtype(device)
    mean, std = torch.tensor(info.response_mean), torch.tensor(info.response_std)
    image_shape = (info.channels, *info.image_size)
    if features == "linear":
        weight, bias, lambdas, val_mse, n = _solve(data, info, device, dtype, grid, lambda x: x)
        decoder = RidgeDecoder(weight.cpu(), bias.cpu(), mean, std, image_shape)
        best = int(val_mse.argmin())
        return RidgeFit(decoder, float(lambdas[best]), tuple(lambdas.tolist()), tuple(val_mse.tolist()), n_train=n)
    median = median_distance(data, info, device, dtype)
    fits = []
    for multiple in bandwidths:
        omega, phase = draw_features(info.n_electrodes, n_features, multiple * median)
        o, p = omega.to(device, dtype), phase.to(device, dtype)
        solved = _solve(data, info, device, dtype, grid, lambda x, o=o, p=p: random_features(x, o, p))
        fits.append((float(solved[3].min()), multiple, omega, phase, solved))
    _, multiple, omega, phase, (weight, bias, lambdas, val_mse, n) = min(fits, key=lambda f: f[0])
    decoder = RidgeDecoder(weight.cpu(), bias.cpu(), mean, std, image_shape, omega=omega, phase=phase)
    best = int(val_mse.argmin())
    return RidgeFit(
        decoder,
        float(lambdas[best]),
        tuple(lambdas.tolist()),
        tuple(val_mse.tolist()),
        n_train=n,
        features=features,
        n_features=n_features,
        bandwidth=multiple * median,
        bandwidth_val_mse={f[1]: f[0] for f in fits},
    )


def save_ridge(fit: RidgeFit, run: str, info: DatasetInfo, rfs: RFTable, config: dict[str, Any]) -> str:
    """The fit as a checkpoint of `run` (local or a URI), in the format of the GAN's checkpoints (so it is verified
    and found the same way), with kind "ridge"; returns its path."""
    dest = storage.join(run, CHECKPOINT_NAME)
    with tempfile.TemporaryDirectory(prefix="rfgan-ridge-") as tmp:
        write_checkpoint(
            tmp,
            nets={"ridge": fit.decoder.state_dict()},
            config=config,
            info=info,
            rfs=rfs,
            epoch=0,
            step=0,
            metrics={"val_mse": min(fit.val_mse)},
            kind=RIDGE_KIND,
        )
        # state.json last: a copy cut short is never taken for a complete checkpoint.
        storage.upload(tmp, dest, names=[*CONTENT_FILES, STATE_FILE])
    return dest


def load_ridge(files: CheckpointFiles, where: str | os.PathLike) -> RidgeDecoder:
    """The decoder of a ridge checkpoint (read_checkpoint), on the device it was read to."""
    try:
        state = files.nets["ridge"]
        decoder = RidgeDecoder(**state, image_shape=(files.info.channels, *files.info.image_size))
    except (KeyError, TypeError) as e:
        raise DataError(f"{Path(where)}: its nets.pt holds no ridge weights ({e}); the checkpoint is damaged.") from e
    return decoder
