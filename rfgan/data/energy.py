"""The `energy` response model of `rfgan synth`: multi-unit sites that respond to local contrast energy.

The linear model (rfgan.data.synth) is RF_GANsynth's: a response is the RF-weighted mean of the image. Cortical
multi-unit activity is not linear in the pixels, and a decoder's worth shows on data that is not. Here a site's
response is, in order (docs/simulator.md gives the model with its references):

1. **Contrast energy in bands.** The image's luminance contrast is filtered by quadrature pairs of Gabor filters (one
   complex Gabor: even part + i·odd part) at 4 orientations and at octave-spaced wavelengths from 3 pixels to half
   the image; the energy |even|² + |odd|² of each band is phase-invariant, as a complex cell's response is (Adelson &
   Bergen 1985). Filters are scaled so that a grating of amplitude a at a band's own wavelength and orientation has
   energy a².
2. **Pooled by the true RF.** Each band's energy map is averaged under the site's RF Gaussian (sum-normalised map),
   as a subunit model pools its subunits (Rust et al. 2005; Vintch, Movshon & Simoncelli 2015).
3. **Tuned by area.** V1: one band centred on a wavelength of 2 RF sigmas, von-Mises-like orientation tuning of
   random preference and strength (multi-unit activity is more broadly tuned than single units). V4: the same
   over its larger RF at a wavelength of one RF sigma (a lower frequency), plus a texture term, energy two octaves
   finer pooled over all orientations (Okazawa, Tajima & Komatsu 2015). IT: a random mixture of every band pooled
   over its broad foveal RF, a summary of the image's global statistics (Rust & DiCarlo 2010). The tuned energy's
   square root is the site's contrast amplitude.
4. **A smaller linear part**: the linear model's luminance/colour drive of the contrast image, with a weight below
   the energy term's.
5. **Divisive normalisation** by the untuned contrast amplitude in the site's bands, plus a semi-saturation
   constant (Heeger 1992; Carandini & Heeger 2012), then rectification (the caller's threshold and gain) and noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ORIENTATIONS = np.arange(4) * np.pi / 4
MIN_WAVELENGTH_PX = 3.0  # the finest band: just above the Nyquist limit of 2 pixels
# Gabor envelope sd in wavelengths: about 1.3 octaves of spatial-frequency bandwidth, near the median of macaque V1
# (De Valois, Albrecht & Thorell 1982).
ENVELOPE_WAVELENGTHS = 0.45
BAND_SD_OCTAVES = 0.5  # a site's weight over the bank's octave-spaced bands: Gaussian in log2 wavelength
# Preferred wavelength in RF sigmas: V1 about one Gabor envelope per RF; V4 a lower frequency over its larger RF.
WAVELENGTH_SIGMAS = {"V1": 2.0, "V4": 1.0}
V4_TEXTURE = 0.4  # share of a V4 site's energy taken from the texture term
V4_TEXTURE_OCTAVES = 2.0  # the texture term's band: this many octaves finer than the site's own
LINEAR_WEIGHT = {"V1": 0.5, "V4": 0.3, "IT": 0.3}  # the linear part's weight against the energy term's
ORIENTATION_KAPPA = (0.5, 2.0)  # range of the orientation tuning's concentration (0: untuned)
C50 = 0.15  # semi-saturation contrast amplitude of the normalisation (contrast units: a grating's amplitude)
CHUNK_IMAGES = 64  # images filtered at a time: bounds the FFT buffers to a few tens of MB


@dataclass(frozen=True)
class EnergyModel:
    """The fixed parts of the model for one dataset: filters, pooling maps and each site's weights."""

    filters: np.ndarray  # (S, O, P, P) complex128: FFT of each complex Gabor on the zero-padded grid
    wavelengths_px: np.ndarray  # (S,)
    pool: np.ndarray  # (H·W, E) float64: sum-normalised true RF maps
    bands: np.ndarray  # (E, S, O): each site's weight over the bands, rows sum to 1
    linear: np.ndarray  # (E, H·W·C) float64: the linear part's weights on the contrast image, linear weight included
    c50: float = C50


def wavelengths(size: int) -> np.ndarray:
    """The bank's wavelengths in pixels: octaves from MIN_WAVELENGTH_PX up to half the image side."""
    n = int(np.floor(np.log2(size / 2 / MIN_WAVELENGTH_PX))) + 1
    return MIN_WAVELENGTH_PX * 2.0 ** np.arange(max(n, 1))


def gabor_filters(size: int, lambdas: np.ndarray) -> np.ndarray:
    """FFTs of complex Gabors on a (2·size)² grid (zero padding: the world beyond the image is mean gray), (S, O, P, P).
    Each is scaled so that a grating of amplitude a at its wavelength and orientation gives |response| = a."""
    p = 2 * size
    coords = np.fft.fftfreq(p, 1.0 / p)  # 0, 1, ..., -1: the filter centred on pixel (0, 0) with wrap-around
    y, x = np.meshgrid(coords, coords, indexing="ij")
    out = np.empty((len(lambdas), len(ORIENTATIONS), p, p), np.complex128)
    for s, lam in enumerate(lambdas):
        envelope = np.exp(-(x**2 + y**2) / (2 * (ENVELOPE_WAVELENGTHS * lam) ** 2))
        for o, theta in enumerate(ORIENTATIONS):
            # y grows downwards in pixels; orientation is the carrier's direction in the visual field (y up).
            phase = 2 * np.pi / lam * (x * np.cos(theta) - y * np.sin(theta))
            # A grating cos(k·x + φ) = (e^{i(kx+φ)} + e^{-i(kx+φ)}) / 2 meets the filter's conjugate carrier in
            # half its amplitude: scale by 2 / Σ envelope.
            out[s, o] = np.fft.fft2(envelope * np.exp(-1j * phase) * 2.0 / envelope.sum())
    return out


def site_bands(areas: np.ndarray, sigma_px: np.ndarray, lambdas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(E, S, O) weights over the bands for sites of the given areas and RF sizes (module docstring, step 3)."""
    n, n_s, n_o = len(areas), len(lambdas), len(ORIENTATIONS)
    log_lam = np.log2(lambdas)
    preferred = rng.uniform(0, np.pi, n)
    kappa = rng.uniform(*ORIENTATION_KAPPA, n)
    mixture = rng.dirichlet(np.ones(n_s * n_o), n).reshape(n, n_s, n_o)
    out = np.empty((n, n_s, n_o))
    for e in range(n):
        if areas[e] == "IT":
            out[e] = mixture[e]
            continue
        own = np.log2(WAVELENGTH_SIGMAS[areas[e]] * sigma_px[e])
        scales = np.exp(-((log_lam - own) ** 2) / (2 * BAND_SD_OCTAVES**2))
        tuning = np.exp(kappa[e] * (np.cos(2 * (ORIENTATIONS - preferred[e])) - 1))
        w = np.outer(scales / scales.sum(), tuning / tuning.sum())
        if areas[e] == "V4":
            texture = np.exp(-((log_lam - own + V4_TEXTURE_OCTAVES) ** 2) / (2 * BAND_SD_OCTAVES**2))
            w = (1 - V4_TEXTURE) * w + V4_TEXTURE * np.outer(texture / texture.sum(), np.full(n_o, 1 / n_o))
        out[e] = w
    return out


def make_model(
    maps: np.ndarray, areas: np.ndarray, sigma_px: np.ndarray, tuning: np.ndarray, rng: np.random.Generator
) -> EnergyModel:
    """The model for true RF `maps` (E, H, W), sum-normalised, the sites' `areas`, RF sigmas in pixels and colour
    `tuning` (E, C), as the linear model has them."""
    e, h, w = maps.shape
    lambdas = wavelengths(h)
    pool = maps.reshape(e, h * w).T.astype(np.float64)
    beta = np.array([LINEAR_WEIGHT.get(a, LINEAR_WEIGHT["IT"]) for a in areas])
    linear = (maps.astype(np.float64)[..., None] * tuning[:, None, None, :]).reshape(e, -1) * beta[:, None]
    return EnergyModel(
        filters=gabor_filters(h, lambdas),
        wavelengths_px=lambdas,
        pool=pool,
        bands=site_bands(areas, sigma_px, lambdas, rng),
        linear=linear,
    )


def band_energy(luminance: np.ndarray, model: EnergyModel) -> np.ndarray:
    """Each site's pooled energy in every band, (n, E, S, O), for luminance contrast images (n, H, W)."""
    n, size = len(luminance), luminance.shape[1]
    p = 2 * size
    n_s, n_o = model.filters.shape[:2]
    out = np.empty((n, model.pool.shape[1], n_s, n_o))
    for start in range(0, n, CHUNK_IMAGES):
        block = luminance[start : start + CHUNK_IMAGES]
        spectrum = np.fft.fft2(block, s=(p, p))
        for s in range(n_s):
            for o in range(n_o):
                response = np.fft.ifft2(spectrum * model.filters[s, o])[:, :size, :size]
                energy = (response.real**2 + response.imag**2).reshape(len(block), -1)
                out[start : start + len(block), :, s, o] = energy @ model.pool
    return out


def drive(images: np.ndarray, luma: np.ndarray, model: EnergyModel) -> np.ndarray:
    """Normalised drive (n, E), float64, of uint8 images (n, H, W, C), before threshold, gain and noise."""
    contrast = images.astype(np.float64) / 127.5 - 1.0  # [-1, 1] about mean gray
    luminance = contrast @ luma if contrast.shape[-1] == 3 else contrast[..., 0]
    energy = band_energy(luminance, model)  # (n, E, S, O)
    tuned = np.sqrt(np.einsum("nkso,kso->nk", energy, model.bands))
    per_scale = model.bands.sum(axis=2)  # (E, S): the site's weight on each scale, orientations pooled
    pool = np.sqrt(np.einsum("nkso,ks->nk", energy, per_scale) / energy.shape[-1])
    linear = contrast.reshape(len(images), -1) @ model.linear.T
    return (tuned + linear) / (model.c50 + pool)
