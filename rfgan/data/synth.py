"""A simulated recording: electrode arrays with Gaussian RFs, natural-like images, and their responses: linear in
the pixels under the RF (RF_GANsynth's model, the default) or contrast energy (rfgan.data.energy).

Every image and its responses come from a generator seeded by (seed, split, index), so a dataset is the same for a
seed whatever the shard size, and any sample can be regenerated alone.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import psutil
from skimage import data as skdata
from skimage import draw, transform

from rfgan.data import energy
from rfgan.data.format import DatasetInfo
from rfgan.data.rf import RFTable, rf_maps
from rfgan.data.write import Samples, write_dataset

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
# Rec. 601 luma: what "luminance" means for a colour image throughout rfgan.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Photographs that scikit-image ships inside its wheel (no download).
PHOTOS = (
    "astronaut",
    "camera",
    "coffee",
    "chelsea",
    "rocket",
    "coins",
    "moon",
    "grass",
    "gravel",
    "brick",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "clock",
    "text",
)
# RF size grows linearly with eccentricity, more steeply in higher areas: sigma = a + b * ecc (degrees).
AREA_SIZE = {"V1": (0.15, 0.08), "V4": (0.4, 0.25), "IT": (1.5, 0.3)}
# Colour-opponent axes in RGB (red-green, blue-yellow), each with luma's norm so that a chroma weight of 1 means
# a colour signal as strong as the luminance one.
OPPONENT = np.array([[1.0, -1.0, 0.0], [-0.5, -0.5, 1.0]])
OPPONENT *= np.linalg.norm(LUMA) / np.linalg.norm(OPPONENT, axis=1, keepdims=True)
# Typical chroma weight by area: V4 is the most colour-selective, V1 multi-unit activity the least.
AREA_CHROMA = {"V1": 0.5, "V4": 1.0, "IT": 0.7}
TUNINGS = ("color", "luminance")
NONLINEARITIES = ("linear", "relu")
NOISE_KINDS = ("gaussian", "poisson", "none")
SCENE_KINDS = ("pink_noise", "shapes", "edges", "texture", "photo")
RESPONSE_MODELS = ("linear", "energy")
MIN_FOV_DEG = 0.1
# An RF fit's size error: log-normal with this sd (natural log) per unit of rf_fit_error.
FIT_SIZE_SD = 0.25


@dataclass(frozen=True)
class SynthSpec:
    """Everything that defines a synthetic dataset; stored in its metadata."""

    n_train: int = 4000  # images in the training split (rows = images × repeats)
    n_val: int = 400
    n_test: int = 0
    electrodes: int = 191
    size: int = 96  # images are size × size pixels
    color: bool = True
    fov_deg: float = 10.0  # visual angle spanned by the image width
    n_arrays: int = 8  # electrode arrays; each covers one patch of the visual field
    photo_fraction: float = 0.3  # share of images cropped from photographs; the rest are generated scenes
    tuning: str = "color"  # "color": each electrode weighs luminance and colour-opponent signals; "luminance"
    response_model: str = "linear"  # "linear" (RF_GANsynth's) or "energy" (contrast energy, rfgan.data.energy)
    nonlinearity: str = "linear"  # "linear" or "relu" (rectified after the threshold); "energy" always rectifies
    threshold: float = 0.0
    gain: float = 1.0
    noise: str = "gaussian"  # "gaussian", "poisson" or "none"
    noise_sd: float = 0.02  # Gaussian noise sd, in response units
    repeats: int = 1  # presentations of each image, each with independent noise
    seed: int = 0
    shard_rows: int = 1000
    # The RF table written is a fit of the simulated RFs: centres off by rf_fit_error·sigma (sd, per axis), sizes by a
    # log-normal factor of sd FIT_SIZE_SD·rf_fit_error; this share of IT sites has no fit (the broad foveal prior).
    # The true RFs are kept in metadata.json's source.
    rf_fit_error: float = 0.0
    rf_unfitted_it: float = 0.0

    def validate(self) -> None:
        checks = [
            (self.n_train >= 1 and self.n_val >= 1, "n_train and n_val must be >= 1"),
            (self.n_test >= 0, "n_test must be >= 0 (0: no test split)"),
            (self.electrodes >= 1, "electrodes must be >= 1"),
            (self.size >= 8, "size must be >= 8 pixels"),
            (
                math.isfinite(self.fov_deg) and MIN_FOV_DEG <= self.fov_deg <= 360,
                f"fov_deg must be between {MIN_FOV_DEG} and 360 degrees (RF positions are written to 1e-4°)",
            ),
            (self.seed >= 0, "seed must be >= 0"),
            (1 <= self.n_arrays <= self.electrodes, "n_arrays must be between 1 and the electrode count"),
            (0.0 <= self.photo_fraction <= 1.0, "photo_fraction must be in [0, 1]"),
            (self.tuning in TUNINGS, f"tuning must be one of {TUNINGS}"),
            (self.response_model in RESPONSE_MODELS, f"response_model must be one of {RESPONSE_MODELS}"),
            (
                math.isfinite(self.rf_fit_error) and 0.0 <= self.rf_fit_error <= 10.0,
                "rf_fit_error must be between 0 and 10 (RF sigmas)",
            ),
            (0.0 <= self.rf_unfitted_it <= 1.0, "rf_unfitted_it must be in [0, 1]"),
            (self.nonlinearity in NONLINEARITIES, f"nonlinearity must be one of {NONLINEARITIES}"),
            (self.gain > 0, "gain must be > 0"),
            (self.noise in NOISE_KINDS, f"noise must be one of {NOISE_KINDS}"),
            (self.noise_sd >= 0, "noise_sd must be >= 0"),
            (self.repeats >= 1, "repeats must be >= 1"),
            (self.shard_rows >= 1, "shard_rows must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        need, have = self.weights_bytes(), psutil.virtual_memory().available
        if need > have:
            raise ValueError(
                f"{self.electrodes} electrodes on {self.size}x{self.size}x{self.channels} images need "
                f"{need / 2**30:.1f} GiB for the simulation's RF weights, and {have / 2**30:.1f} GiB are free: "
                "fewer electrodes or a smaller size"
            )

    def weights_bytes(self) -> int:
        """Memory of the linear model's weights (float64, electrodes × pixels × channels) and RF maps (float32), and
        for the energy model also its pooling maps (float64)."""
        per_pixel = 8 * self.channels + 4 + (8 if self.response_model == "energy" else 0)
        return self.electrodes * self.size * self.size * per_pixel

    @property
    def channels(self) -> int:
        return 3 if self.color else 1


def make_rfs(spec: SynthSpec) -> RFTable:
    """Electrodes grouped in arrays, each array sampling one patch of the field the way a Utah array samples cortex.

    V1/V4 arrays sit on a jittered grid over the image window so that together they cover it; IT arrays sit near
    the fovea with large RFs, as IT RFs do.
    """
    rng = np.random.default_rng([spec.seed, 1000])
    n = spec.n_arrays
    n_v1 = max(1, round(0.5 * n))
    n_v4 = round(0.85 * n) - n_v1 if n >= 3 else n - n_v1
    areas = ["V1"] * n_v1 + ["V4"] * n_v4 + ["IT"] * (n - n_v1 - n_v4)
    half = spec.fov_deg / 2
    n_grid = sum(a != "IT" for a in areas)
    cols = math.ceil(math.sqrt(n_grid))
    rows = math.ceil(n_grid / cols)
    cell_w, cell_h = spec.fov_deg / cols, spec.fov_deg / rows
    cells = rng.permutation(rows * cols)[:n_grid]
    per_array = np.full(n, spec.electrodes // n)
    per_array[: spec.electrodes % n] += 1

    xs, ys, sigmas, labels = [], [], [], []
    grid_index = 0
    for area, count in zip(areas, per_array):
        if area == "IT":
            centre, spread = rng.normal(0, 0.5, 2), 1.0
        else:
            r, c = divmod(int(cells[grid_index]), cols)
            grid_index += 1
            centre = np.array(
                [
                    -half + (c + 0.5 + rng.uniform(-0.2, 0.2)) * cell_w,
                    half - (r + 0.5 + rng.uniform(-0.2, 0.2)) * cell_h,
                ]
            )
            spread = min(cell_w, cell_h) / 3
        pos = np.clip(centre + rng.normal(0, spread, (count, 2)), -half, half)
        a, b = AREA_SIZE[area]
        ecc = np.hypot(pos[:, 0], pos[:, 1])
        sigma = (a + b * ecc) * np.exp(rng.normal(0, 0.15, count))
        xs.append(pos[:, 0])
        ys.append(pos[:, 1])
        sigmas.append(sigma)
        labels += [area] * count
    return RFTable(
        electrode_id=np.arange(spec.electrodes, dtype=np.int64),
        x_deg=np.concatenate(xs).round(4),
        y_deg=np.concatenate(ys).round(4),
        sigma_deg=np.concatenate(sigmas).round(4),
        area=np.asarray(labels, dtype=str),
    )


# ---- scenes: each returns float32 (size, size, 3) in [0, 1] -------------------------------------------------------


def _pink(rng: np.random.Generator, size: int, alpha: float) -> np.ndarray:
    """Gaussian noise with a 1/f^alpha amplitude spectrum (natural images have alpha ≈ 1–1.2), zero mean, unit sd."""
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size)))
    f[0, 0] = 1.0
    spectrum = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / f**alpha
    spectrum[0, 0] = 0.0
    field = np.fft.ifft2(spectrum).real
    return (field / (field.std() + 1e-12)).astype(np.float32)


def _colourise(rng: np.random.Generator, lum: np.ndarray, chroma: float = 0.06) -> np.ndarray:
    """A luminance field plus weaker, smoother colour-opponent fields (chroma varies less than luminance in
    natural scenes)."""
    size = lum.shape[0]
    rg, by = _pink(rng, size, 2.0), _pink(rng, size, 2.0)
    opponent = np.array([[1.0, 0.5], [-1.0, 0.5], [0.0, -1.0]], dtype=np.float32)  # (3, 2): R-G, B-Y axes
    return lum[..., None] + chroma * (np.stack([rg, by], -1) @ opponent.T)


def _scene_pink_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    lum = 0.5 + rng.uniform(0.1, 0.25) * _pink(rng, size, rng.uniform(1.2, 2.0))
    return _colourise(rng, lum)


def _scene_shapes(rng: np.random.Generator, size: int) -> np.ndarray:
    img = _colourise(rng, 0.5 + 0.08 * _pink(rng, size, 1.5))
    for _ in range(rng.integers(2, 6)):
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        kind = rng.integers(3)
        if kind == 0:
            rr, cc = draw.ellipse(
                *rng.uniform(0, size, 2),
                *rng.uniform(size / 10, size / 3, 2),
                shape=img.shape[:2],
                rotation=rng.uniform(0, np.pi),
            )
        elif kind == 1:
            r0, c0 = rng.uniform(-size / 8, size, 2)
            rr, cc = draw.rectangle((r0, c0), extent=rng.uniform(size / 8, size / 2, 2), shape=img.shape[:2])
            rr, cc = rr.astype(int), cc.astype(int)
        else:
            verts = rng.uniform(-size / 8, size * 9 / 8, (rng.integers(3, 6), 2))
            rr, cc = draw.polygon(verts[:, 0], verts[:, 1], shape=img.shape[:2])
        img[rr, cc] = colour
    return img


def _scene_edges(rng: np.random.Generator, size: int) -> np.ndarray:
    """Luminance edges and gratings: a few blurred half-planes and one sinusoidal grating at random orientations."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    lum = np.full((size, size), rng.uniform(0.3, 0.7), np.float32)
    for _ in range(rng.integers(1, 4)):
        theta = rng.uniform(0, np.pi)
        d = x * np.cos(theta) + y * np.sin(theta) - rng.uniform(-0.3, 0.3)
        lum += rng.uniform(-0.4, 0.4) / (1 + np.exp(-d / rng.uniform(0.005, 0.05)))
    theta, freq = rng.uniform(0, np.pi), rng.uniform(1, 5)
    lum += rng.uniform(0, 0.15) * np.sin(2 * np.pi * freq * (x * np.cos(theta) + y * np.sin(theta)))
    return _colourise(rng, lum)


def _scene_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Oriented band-pass noise: pink noise filtered to one orientation and spatial-frequency band."""
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    f, angle = np.hypot(fx, fy), np.arctan2(fy, fx)
    theta, f0 = rng.uniform(0, np.pi), rng.uniform(0.03, 0.12)
    band = np.exp(-((np.log(f + 1e-6) - np.log(f0)) ** 2) / 0.3) * np.exp(
        -(np.angle(np.exp(2j * (angle - theta))) ** 2) / rng.uniform(0.2, 2.0)
    )
    field = np.fft.ifft2(band * np.fft.fft2(rng.normal(size=(size, size)))).real
    lum = 0.5 + rng.uniform(0.1, 0.25) * field / (field.std() + 1e-12)
    return _colourise(rng, lum.astype(np.float32))


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    photos = []
    for name in PHOTOS:
        img = np.asarray(getattr(skdata, name)(), dtype=np.float32) / 255.0
        photos.append(np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img[..., :3])
    return tuple(photos)


def _scene_photo(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random square crop (15–60% of the shorter side) of a shipped photograph, resized and maybe mirrored."""
    photo = _photos()[rng.integers(len(PHOTOS))]
    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(0.15, 0.6))
    r0, c0 = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = transform.resize(photo[r0 : r0 + side, c0 : c0 + side], (size, size), anti_aliasing=True, order=1)
    return (crop[:, ::-1] if rng.random() < 0.5 else crop).astype(np.float32)


SCENES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "pink_noise": _scene_pink_noise,
    "shapes": _scene_shapes,
    "edges": _scene_edges,
    "texture": _scene_texture,
    "photo": _scene_photo,
}


def make_image(rng: np.random.Generator, spec: SynthSpec) -> np.ndarray:
    """One scene as uint8 (size, size, channels)."""
    generated = 1.0 - spec.photo_fraction
    probs = [generated / 4] * 4 + [spec.photo_fraction]
    scene = SCENES[SCENE_KINDS[rng.choice(len(SCENE_KINDS), p=probs)]](rng, spec.size)
    if not spec.color:
        scene = (scene @ LUMA)[..., None]
    return (np.clip(scene, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def make_tuning(spec: SynthSpec, rfs: RFTable) -> np.ndarray:
    """Each electrode's weights on the image's channels, (E, channels).

    "luminance": every electrode sees luma. "color": luma plus a colour-opponent signal of random hue
    (red-green/blue-yellow) whose strength depends on the area, as colour-selective sites are common in V1 and
    V4. Gray images always give luminance tuning.
    """
    if not spec.color:
        return np.ones((len(rfs), 1))
    lum = np.tile(LUMA.astype(np.float64), (len(rfs), 1))
    if spec.tuning == "luminance":
        return lum
    rng = np.random.default_rng([spec.seed, 2000])
    hue = rng.uniform(0, 2 * np.pi, len(rfs))
    strength = np.array([AREA_CHROMA.get(a, 0.7) for a in rfs.area]) * rng.uniform(0.5, 1.5, len(rfs))
    chroma = strength[:, None] * np.stack([np.cos(hue), np.sin(hue)], -1)  # (E, 2) on the opponent axes
    return lum + chroma @ OPPONENT


def response_weights(spec: SynthSpec, rfs: RFTable) -> np.ndarray:
    """The linear model as one matrix, (E, H*W*C): sum-normalised RF map times the electrode's channel tuning."""
    maps = rf_maps(rfs, (spec.size, spec.size), spec.fov_deg, norm="sum").astype(np.float64)
    weights = maps[..., None] * make_tuning(spec, rfs)[:, None, None, :]
    return weights.reshape(len(rfs), -1)


ResponseModel = np.ndarray | energy.EnergyModel  # the linear model's weights, or the energy model


def response_model(spec: SynthSpec, rfs: RFTable) -> ResponseModel:
    """The model of `spec.response_model` for the true RFs `rfs`."""
    if spec.response_model == "linear":
        return response_weights(spec, rfs)
    maps = rf_maps(rfs, (spec.size, spec.size), spec.fov_deg, norm="sum")
    sigma_px = rfs.sigma_deg * spec.size / spec.fov_deg
    rng = np.random.default_rng([spec.seed, 3000])
    return energy.make_model(maps, rfs.area, sigma_px, make_tuning(spec, rfs), rng)


def responses_for(
    images: np.ndarray, model: ResponseModel, spec: SynthSpec, rngs: list[np.random.Generator]
) -> np.ndarray:
    """The drive of the response model, then the threshold, rectification, gain and noise. Linear model: drive_e =
    Σ_pixels,channels weights_e · image (see `response_weights`). (n, H, W, C) uint8 → (n, repeats, E) float32."""
    # Float64 so that a sample's responses do not depend on which chunk it was computed in (float32 BLAS results
    # change in the last bit with the matrix shape); the seed alone defines the dataset.
    if isinstance(model, energy.EnergyModel):
        drive = energy.drive(images, LUMA.astype(np.float64), model)
    else:
        drive = (images.reshape(len(images), -1).astype(np.float64) / 255.0) @ model.T  # (n, E)
    rate = drive - spec.threshold
    if spec.nonlinearity == "relu" or isinstance(model, energy.EnergyModel):
        rate = np.maximum(rate, 0.0)
    rate = spec.gain * rate
    n_electrodes = len(rate[0]) if len(rate) else 0
    out = np.empty((len(images), spec.repeats, n_electrodes), np.float32)
    for i, rng in enumerate(rngs):
        r = np.broadcast_to(rate[i], out.shape[1:])
        if spec.noise == "gaussian":
            r = r + rng.normal(0.0, spec.noise_sd, r.shape)
        elif spec.noise == "poisson":
            # Poisson counts need a non-negative rate; `gain` sets the counts per unit drive.
            r = rng.poisson(np.maximum(r, 0.0)).astype(np.float32)
        out[i] = r
    return out


def fitted_rfs(spec: SynthSpec, truth: RFTable) -> tuple[RFTable, np.ndarray]:
    """The RF table a lab would have fitted to `truth` (SynthSpec.rf_fit_error, rf_unfitted_it), and the ids of the
    sites without a fit, which are given the broad prior at the fovea (sigma a quarter of the field)."""
    if spec.rf_fit_error == 0 and spec.rf_unfitted_it == 0:
        return truth, np.zeros(0, np.int64)
    rng = np.random.default_rng([spec.seed, 4000])
    n, s = len(truth), spec.rf_fit_error
    x = truth.x_deg + s * truth.sigma_deg * rng.normal(size=n)
    y = truth.y_deg + s * truth.sigma_deg * rng.normal(size=n)
    sigma = truth.sigma_deg * np.exp(FIT_SIZE_SD * s * rng.normal(size=n))
    it = np.flatnonzero(truth.area == "IT")
    unfitted = np.sort(rng.permutation(it)[: round(spec.rf_unfitted_it * len(it))])
    x[unfitted], y[unfitted], sigma[unfitted] = 0.0, 0.0, spec.fov_deg / 4
    fit = RFTable(truth.electrode_id, x.round(4), y.round(4), np.maximum(sigma.round(4), 1e-4), truth.area)
    return fit, truth.electrode_id[unfitted]


def generate_split(
    spec: SynthSpec, split: str, model: ResponseModel, first_sample: int, first_image: int
) -> Iterator[Samples]:
    """Chunks of about `shard_rows` rows of one split; rows are images × repeats."""
    n_images = {"train": spec.n_train, "val": spec.n_val, "test": spec.n_test}[split]
    per_chunk = max(1, spec.shard_rows // spec.repeats)
    for start in range(0, n_images, per_chunk):
        idx = range(start, min(start + per_chunk, n_images))
        rngs = [np.random.default_rng([spec.seed, SPLIT_CODES[split], i]) for i in idx]
        images = np.stack([make_image(rng, spec) for rng in rngs])
        responses = responses_for(images, model, spec, rngs)  # (n, repeats, E)
        n, k = len(idx), spec.repeats
        image_id = first_image + np.repeat(np.arange(start, start + n), k)
        yield Samples(
            sample_id=first_sample + start * k + np.arange(n * k, dtype=np.int64),
            image_id=image_id.astype(np.int64),
            repeat=np.tile(np.arange(k, dtype=np.int32), n),
            responses=responses.reshape(n * k, -1),
            images=np.repeat(images, k, axis=0),
        )


def synth_splits(spec: SynthSpec) -> tuple[RFTable, dict[str, Iterator[Samples]]]:
    """The RF table as written (a fit of the true RFs, SynthSpec.rf_fit_error) and lazy chunk iterators for every
    split; ids are unique across splits."""
    spec.validate()
    truth = make_rfs(spec)
    model = response_model(spec, truth)
    splits, sample0, image0 = {}, 0, 0
    for split in ("train", "val", "test"):
        n_images = getattr(spec, f"n_{split}")
        if n_images == 0:
            continue
        splits[split] = generate_split(spec, split, model, sample0, image0)
        sample0 += n_images * spec.repeats
        image0 += n_images
    return fitted_rfs(spec, truth)[0], splits


def source_of(spec: SynthSpec) -> dict:
    """metadata.json's source: the spec, and with an RF fit error the true RFs and the sites without a fit."""
    source = {"kind": "synth", **asdict(spec)}
    truth = make_rfs(spec)
    fit, unfitted = fitted_rfs(spec, truth)
    if fit is not truth:
        source["rf_truth"] = {c: getattr(truth, c).tolist() for c in ("x_deg", "y_deg", "sigma_deg")}
        source["rf_unfitted"] = unfitted.tolist()
    return source


def write_synth(out, spec: SynthSpec, **kwargs) -> DatasetInfo:
    """Simulate the recording of `spec` and write it as a dataset at `out` (kwargs: write_dataset's overwrite,
    on_rows, image_encoding)."""
    rfs, splits = synth_splits(spec)
    return write_dataset(
        out,
        rfs=rfs,
        fov_deg=spec.fov_deg,
        image_size=(spec.size, spec.size),
        channels=spec.channels,
        splits=splits,
        source=source_of(spec),
        **kwargs,
    )
