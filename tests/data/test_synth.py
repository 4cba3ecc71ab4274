import dataclasses
import math

import numpy as np
import pytest
from conftest import TINY, concat_chunks, make_synth

from rfgan.cli import main
from rfgan.data.format import read_info, read_rfs, read_split
from rfgan.data.rf import rf_maps, rf_mask
from rfgan.data.synth import LUMA, SynthSpec, make_rfs, make_tuning, synth_splits


def test_same_seed_same_dataset_whatever_the_shard_size(tmp_path):
    make_synth(tmp_path / "a")
    make_synth(tmp_path / "b", dataclasses.replace(TINY, shard_rows=7))
    for split in ("train", "val"):
        a, b = read_split(tmp_path / "a", split), read_split(tmp_path / "b", split)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert read_rfs(tmp_path / "a").equals(read_rfs(tmp_path / "b"))
    assert len(list((tmp_path / "b" / "train").glob("*.parquet"))) == 6  # 40 rows / 7 per shard


def test_other_seed_other_dataset():
    a = concat_chunks(synth_splits(TINY)[1]["train"])
    b = concat_chunks(synth_splits(dataclasses.replace(TINY, seed=4))[1]["train"])
    assert not np.array_equal(a["image"], b["image"])
    assert not np.allclose(a["responses"], b["responses"])


def test_rfs_grow_with_eccentricity_cluster_in_arrays_and_cover_the_window():
    spec = SynthSpec(electrodes=191, n_arrays=8)
    rfs = make_rfs(spec)
    assert len(rfs) == 191 and set(rfs.area_names()) == {"V1", "V4", "IT"}
    ecc = np.hypot(rfs.x_deg, rfs.y_deg)
    for area in ("V1", "V4"):
        sel = rfs.area == area
        assert np.corrcoef(ecc[sel], rfs.sigma_deg[sel])[0, 1] > 0.5
    assert np.median(rfs.sigma_deg[rfs.area == "V1"]) < np.median(rfs.sigma_deg[rfs.area == "V4"])
    assert np.all(np.abs(rfs.x_deg) <= spec.fov_deg / 2) and np.all(np.abs(rfs.y_deg) <= spec.fov_deg / 2)
    assert rf_mask(rfs, (spec.size, spec.size), spec.fov_deg, radius_sigmas=2.0).mean() > 0.9


@pytest.mark.parametrize("tuning", ["luminance", "color"])
def test_responses_follow_the_linear_rf_model(tuning):
    spec = dataclasses.replace(TINY, noise="none", gain=2.0, tuning=tuning)
    rfs, splits = synth_splits(spec)
    got = concat_chunks(splits["val"])
    maps = rf_maps(rfs, (spec.size, spec.size), spec.fov_deg, norm="sum")
    weights = make_tuning(spec, rfs)  # (E, 3)
    if tuning == "luminance":
        np.testing.assert_array_equal(weights, np.tile(LUMA, (len(rfs), 1)))
    image = got["image"].astype(np.float32) / 255.0
    want = 2.0 * np.einsum("nhwc,ehw,ec->ne", image, maps, weights)
    np.testing.assert_allclose(got["responses"], want, rtol=1e-4, atol=1e-5)


def test_color_tuning_tells_isoluminant_colours_apart_and_is_strongest_in_v4():
    spec = SynthSpec(electrodes=191, n_arrays=8)
    rfs = make_rfs(spec)
    weights = make_tuning(spec, rfs)
    # Isoluminant red and green: luminance-only electrodes could not tell them apart.
    red, green = np.array([1.0, 0.0, 0.0]), np.array([0.0, LUMA[0] / LUMA[1], 0.0])
    assert np.isclose(red @ LUMA, green @ LUMA)
    assert np.median(np.abs(weights @ (red - green))) > 0.05
    # Weights are luma plus an opponent signal, which sums to zero over R, G, B.
    chroma = weights - LUMA
    np.testing.assert_allclose(chroma.sum(1), 0.0, atol=1e-12)
    strength = np.linalg.norm(chroma, axis=1)
    assert np.median(strength[rfs.area == "V4"]) > np.median(strength[rfs.area == "V1"])
    assert not np.allclose(make_tuning(dataclasses.replace(spec, seed=1), rfs), weights)
    # Gray images: one channel, nothing to tune.
    np.testing.assert_array_equal(make_tuning(dataclasses.replace(spec, color=False), rfs), np.ones((191, 1)))


def test_relu_poisson_and_repeats():
    spec = dataclasses.replace(TINY, nonlinearity="relu", threshold=0.4, noise="poisson", gain=20.0, repeats=3)
    got = concat_chunks(synth_splits(spec)[1]["train"])
    r = got["responses"]
    assert len(r) == TINY.n_train * 3
    assert np.all(r >= 0) and np.array_equal(r, np.round(r))
    # Repeats share the image and its id but not the noise.
    np.testing.assert_array_equal(got["image"][0::3], got["image"][1::3])
    np.testing.assert_array_equal(got["image_id"][0::3], got["image_id"][2::3])
    assert not np.array_equal(r[0::3], r[1::3])


def test_gray_images_and_ids_unique_across_splits(tmp_path):
    info = make_synth(tmp_path / "g", dataclasses.replace(TINY, color=False))
    assert info.channels == 1
    train, val = read_split(tmp_path / "g", "train"), read_split(tmp_path / "g", "val")
    assert train["image"].shape == (TINY.n_train, 32, 32, 1)
    assert not set(train["sample_id"]) & set(val["sample_id"])
    assert not set(train["image_id"]) & set(val["image_id"])
    # Scenes vary: no two training images are the same.
    assert len({im.tobytes() for im in train["image"]}) == TINY.n_train
    meta = read_info(tmp_path / "g")
    assert meta.source["kind"] == "synth" and meta.source["seed"] == TINY.seed


@pytest.mark.parametrize(
    "change, message",
    [
        ({"n_val": 0}, "n_val"),
        ({"n_test": -1}, "n_test must be >= 0"),  # third audit: the message named n_train and n_val
        ({"noise": "laplace"}, "noise"),
        ({"n_arrays": 20}, "n_arrays"),
        ({"photo_fraction": 2.0}, "photo_fraction"),
        ({"tuning": "orientation"}, "tuning"),
        # Were written, with exit 0: a metadata.json of `Infinity` and NaN RFs; one that `check` refuses; every RF
        # position rounded to 0; a traceback from NumPy; one from an allocation of 76 GiB.
        ({"fov_deg": math.inf}, "fov_deg must be between 0.1 and 360"),
        ({"fov_deg": 1000.0}, "fov_deg must be between 0.1 and 360"),
        ({"fov_deg": 1e-9}, "fov_deg must be between 0.1 and 360"),
        ({"seed": -1}, "seed must be >= 0"),
        (
            {"electrodes": 10_000_000},
            r"10000000 electrodes on 32x32x3 images need 267.0 GiB .* free: fewer",
        ),
    ],
)
def test_bad_spec_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        synth_splits(dataclasses.replace(TINY, **change))


def test_synth_help_says_the_colour_default_in_words(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")  # one line per option
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  --")}
    assert lines["--color"].endswith("RGB images (default: colour)")
    assert lines["--gray"].endswith("grayscale images (default: colour)")
    assert lines["--n-train"].endswith("(default: 4000)")  # the other defaults still shown


def test_an_older_built_in_dataset_is_refused_with_the_command_that_remakes_it(tmp_path, monkeypatch, capsys):
    """The built-in synthetic dataset (data/synthetic, made once by the first command run without --data) of an
    rfgan whose format this one does not read: the refusal says how to remake that one."""
    import json

    from conftest import make_synth, one_line_error

    from rfgan.cli import main
    from rfgan.cli.common import DEFAULT_DATA

    monkeypatch.chdir(tmp_path)
    make_synth(tmp_path / DEFAULT_DATA)
    meta = json.loads((tmp_path / DEFAULT_DATA / "metadata.json").read_text())
    (tmp_path / DEFAULT_DATA / "metadata.json").write_text(json.dumps({**meta, "schema_version": 2}))
    assert main(["check"]) == 2
    err = one_line_error(capsys, "check")
    assert "schema_version 2" in err and "`rfgan synth --overwrite` remakes it" in err


# ---- the energy model and RF fit error (issue 24) ------------------------------------------------------------------

ENERGY = dataclasses.replace(TINY, response_model="energy", noise="none", size=48, electrodes=24, n_arrays=4)


def _grating(size: int, wavelength: float, theta: float, phase: float, contrast: float) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    lum = 0.5 + 0.5 * contrast * np.cos(2 * np.pi / wavelength * (x * np.cos(theta) - y * np.sin(theta)) + phase)
    return (np.repeat(lum[..., None], 3, -1) * 255).round().astype(np.uint8)


def test_energy_bands_give_a_gratings_squared_amplitude_at_their_own_wavelength_and_orientation():
    from rfgan.data import energy

    size = 48
    lambdas = energy.wavelengths(size)
    assert lambdas[0] == energy.MIN_WAVELENGTH_PX and lambdas[-1] <= size / 2
    model = energy.EnergyModel(
        filters=energy.gabor_filters(size, lambdas),
        wavelengths_px=lambdas,
        pool=np.full((size * size, 1), 1.0 / size**2),
        bands=np.zeros((1, len(lambdas), 4)),
        linear=np.zeros((1, size * size * 3)),
    )
    contrast = 0.6
    y, x = np.mgrid[0:size, 0:size]
    lum = contrast * np.cos(2 * np.pi / lambdas[1] * x)[None]  # orientation 0, at band 1
    got = energy.band_energy(lum, model)[0, 0]  # (S, O), pooled over the whole image (edges included)
    centre = energy.band_energy(np.pad(lum, ((0, 0), (0, 0), (0, 0))), model)
    assert got[1, 0] == pytest.approx(contrast**2, rel=0.15)  # zero padding loses some at the borders
    assert centre[0, 0, 1, 0] == got[1, 0]
    assert got[1, 2] < 0.01 * got[1, 0]  # the orthogonal orientation sees almost nothing
    assert got[3, 0] < 0.1 * got[1, 0]  # nor does a band two octaves away


def test_energy_responses_are_phase_invariant_saturate_with_contrast_and_follow_area_tuning():
    from rfgan.data import energy
    from rfgan.data.synth import response_model

    spec = ENERGY
    rfs = make_rfs(spec)
    model = response_model(spec, rfs)
    no_linear = dataclasses.replace(model, linear=np.zeros_like(model.linear))
    lum = LUMA.astype(np.float64)
    # Each V1 site's own grating: its preferred band, at 4 phases.
    v1 = np.flatnonzero(rfs.area == "V1")
    assert len(v1) >= 4
    for e in v1[:4]:
        s, o = np.unravel_index(model.bands[e].argmax(), model.bands[e].shape)
        lam, theta = model.wavelengths_px[s], energy.ORIENTATIONS[o]
        phases = [_grating(spec.size, lam, theta, p, 0.5) for p in np.linspace(0, 2 * np.pi, 4, endpoint=False)]
        drive = energy.drive(np.stack(phases), lum, no_linear)[:, e]
        assert drive.std() < 0.05 * drive.mean(), "energy is phase-invariant"
        low, high = (
            energy.drive(_grating(spec.size, lam, theta, 0, c)[None], lum, no_linear)[0, e] for c in (0.1, 0.8)
        )
        assert 1.5 < high / low < 8 * 0.9, "normalisation: 8x the contrast gives more, but less than 8x the drive"
    # V1 weights sit in one band; IT spreads over all of them.
    peak = model.bands.reshape(len(rfs), -1).max(axis=1)
    assert np.median(peak[rfs.area == "V1"]) > 1.5 * np.median(peak[rfs.area == "IT"])
    np.testing.assert_allclose(model.bands.sum(axis=(1, 2)), 1.0)


def test_energy_dataset_is_rectified_deterministic_and_not_linear_in_the_image():
    rfs, splits = synth_splits(ENERGY)
    got = concat_chunks(splits["train"])
    r = got["responses"]
    assert np.all(r >= 0) and (r == 0).mean() < 0.5
    again = concat_chunks(synth_splits(dataclasses.replace(ENERGY, shard_rows=7))[1]["train"])
    np.testing.assert_array_equal(again["responses"], r)
    # Superposition: the linear model's response to the mean of two images is the mean of their responses (up to
    # the uint8 rounding of the blend); the energy model's is not.
    from rfgan.data.synth import response_model, responses_for

    images = got["image"][:20].astype(np.float64)
    blend = ((images[:10] + images[10:]) / 2).round().astype(np.uint8)
    for kind, most in (("linear", 0.01), ("energy", None)):
        spec = dataclasses.replace(ENERGY, response_model=kind)
        model = response_model(spec, make_rfs(spec))

        def respond(x, spec=spec, model=model):
            return responses_for(x, model, spec, [np.random.default_rng(0)] * len(x))[:, 0]

        single = respond(got["image"][:20])
        error = np.abs(respond(blend) - (single[:10] + single[10:]) / 2).mean() / single.std()
        if most is not None:
            assert error < most, kind
        else:
            assert error > 0.2, kind


def test_rf_fit_error_writes_a_fit_keeps_the_truth_and_changes_no_response(tmp_path):
    spec = dataclasses.replace(TINY, electrodes=60, n_arrays=6)
    fitted = dataclasses.replace(spec, rf_fit_error=1.0, rf_unfitted_it=0.5)
    make_synth(tmp_path / "true", spec)
    make_synth(tmp_path / "fit", fitted)
    truth, fit = read_rfs(tmp_path / "true"), read_rfs(tmp_path / "fit")
    source = read_info(tmp_path / "fit").source
    np.testing.assert_array_equal(source["rf_truth"]["x_deg"], truth.x_deg)
    np.testing.assert_array_equal(source["rf_truth"]["sigma_deg"], truth.sigma_deg)
    for split in ("train", "val"):  # the recording itself is the same: only the table differs
        np.testing.assert_array_equal(
            read_split(tmp_path / "true", split)["responses"], read_split(tmp_path / "fit", split)["responses"]
        )
    unfitted = np.asarray(source["rf_unfitted"])
    it = np.flatnonzero(truth.area == "IT")
    assert len(unfitted) == round(0.5 * len(it)) and set(unfitted) <= set(truth.electrode_id[it])
    assert np.all(fit.x_deg[unfitted] == 0) and np.all(fit.sigma_deg[unfitted] == spec.fov_deg / 4)
    fitted_ids = np.setdiff1d(np.arange(len(truth)), unfitted)
    error = np.hypot(fit.x_deg - truth.x_deg, fit.y_deg - truth.y_deg)[fitted_ids] / truth.sigma_deg[fitted_ids]
    # Per-axis sd 1 sigma: the distance is Rayleigh, median √(2 ln 2) ≈ 1.18 sigma.
    assert 0.8 < np.median(error) < 1.6
    assert "rf_truth" not in read_info(tmp_path / "true").source


@pytest.mark.parametrize(
    "change, message",
    [
        ({"response_model": "cubic"}, "response_model must be one of"),
        ({"rf_fit_error": -1.0}, "rf_fit_error must be between 0 and 10"),
        ({"rf_fit_error": math.nan}, "rf_fit_error must be between 0 and 10"),
        ({"rf_unfitted_it": 1.5}, r"rf_unfitted_it must be in \[0, 1\]"),
    ],
)
def test_bad_energy_or_fit_error_spec_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        synth_splits(dataclasses.replace(TINY, **change))


def test_the_built_in_dataset_of_an_older_rfgan_is_the_default_one_when_only_new_settings_are_unrecorded(
    tmp_path, monkeypatch, capsys
):
    """Settings this rfgan added (response_model, rf_fit_error, …) are absent from an older default dataset's source:
    they were their defaults, and no note says the dataset differs."""
    import json

    from rfgan.cli.common import DEFAULT_DATA
    from rfgan.cli.data import dataset_or_synth
    from rfgan.data.synth import source_of

    monkeypatch.chdir(tmp_path)
    make_synth(tmp_path / DEFAULT_DATA)
    meta_path = tmp_path / DEFAULT_DATA / "metadata.json"
    meta = json.loads(meta_path.read_text())
    older = {
        k: v for k, v in source_of(SynthSpec()).items() if k not in ("response_model", "rf_fit_error", "rf_unfitted_it")
    }
    meta_path.write_text(json.dumps({**meta, "source": older}))
    assert dataset_or_synth(None) == DEFAULT_DATA
    assert capsys.readouterr().err == ""
    meta_path.write_text(json.dumps({**meta, "source": {**older, "response_model": "energy"}}))
    dataset_or_synth(None)
    assert "differs in response_model" in capsys.readouterr().err
