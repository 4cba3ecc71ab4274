import numpy as np
import pytest
import torch

from rfgan.data.rf import RFTable, pixel_grid, rf_maps, rf_mask, rfs_outside_window
from rfgan.errors import DataError
from rfgan.gan.rf_input import RFProjection


def table(x, y, s, area=None):
    n = len(x)
    return RFTable(
        np.arange(n),
        np.asarray(x, float),
        np.asarray(y, float),
        np.asarray(s, float),
        None if area is None else np.asarray(area),
    )


def test_maps_geometry_and_normalisation():
    rfs = table([2.0, -3.0], [3.0, 0.0], [0.5, 1.0])
    size, fov = (40, 60), 12.0  # 0.2 deg per pixel, 8 deg tall
    s = rf_maps(rfs, size, fov, norm="sum")
    p = rf_maps(rfs, size, fov, norm="peak")
    assert s.shape == (2, 40, 60) and s.dtype == np.float32
    np.testing.assert_allclose(s.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(p.max(axis=(1, 2)), 1.0, rtol=1e-5)
    # x = +2 deg is right of centre, y = +3 deg is *above* centre: row 20 - 15 = 5, column 30 + 10 = 40.
    r, c = np.unravel_index(p[0].argmax(), size)
    assert (r, c) in {(4, 39), (4, 40), (5, 39), (5, 40)}
    gx, gy = pixel_grid(size, fov)
    assert gx[0, 0] < 0 < gx[0, -1] and gy[0, 0] > 0 > gy[-1, 0]


def test_projection_equals_numpy():
    rng = np.random.default_rng(0)
    rfs = table(rng.uniform(-3, 3, 5), rng.uniform(-3, 3, 5), rng.uniform(0.3, 1.5, 5))
    maps = rf_maps(rfs, (16, 16), 8.0, norm="peak")
    r = rng.normal(size=(3, 5)).astype(np.float32)
    proj = RFProjection.from_table(rfs, (16, 16), 8.0)
    out = proj(torch.from_numpy(r)).numpy()
    expected = np.einsum("be,ehw->behw", r, maps)
    assert out.shape == (3, 5, 16, 16) and proj.out_channels == 5
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)


def test_projection_standardises_and_sums_per_area():
    rng = np.random.default_rng(1)
    rfs = table(
        rng.uniform(-3, 3, 6),
        rng.uniform(-3, 3, 6),
        rng.uniform(0.3, 1.5, 6),
        area=["V1", "V4", "V1", "IT", "V4", "V1"],
    )
    maps = rf_maps(rfs, (16, 16), 8.0, norm="peak")
    r = rng.normal(3.0, 2.0, size=(4, 6)).astype(np.float32)
    mean, std = r.mean(0), r.std(0)
    proj = RFProjection.from_table(rfs, (16, 16), 8.0, sum_per_area=True, mean=mean, std=std)
    out = proj(torch.from_numpy(r)).numpy()
    z = (r - mean) / std
    assert proj.area_names == ["V1", "V4", "IT"] and out.shape == (4, 3, 16, 16)
    for a, name in enumerate(proj.area_names):
        idx = [i for i, lab in enumerate(rfs.area) if lab == name]
        np.testing.assert_allclose(out[:, a], np.einsum("be,ehw->bhw", z[:, idx], maps[idx]), rtol=1e-5, atol=1e-5)


def test_projection_noise_channel():
    rfs = table([0.0, 1.0], [0.0, -1.0], [1.0, 1.0])
    proj = RFProjection.from_table(rfs, (32, 32), 8.0, with_noise=True)
    r = torch.ones(8, 2)
    a, b = proj(r), proj(r)
    assert a.shape == (8, 3, 32, 32) and proj.out_channels == 3
    torch.testing.assert_close(a[:, :2], b[:, :2])
    assert not torch.equal(a[:, 2], b[:, 2])
    assert abs(a[:, 2].mean().item()) < 0.05 and abs(a[:, 2].std().item() - 1) < 0.05


def test_projection_rejects_wrong_electrode_count():
    proj = RFProjection.from_table(table([0.0], [0.0], [1.0]), (8, 8), 4.0)
    with pytest.raises(ValueError, match=r"\(B, 1\)"):
        proj(torch.ones(2, 3))
    with pytest.raises(ValueError, match="area"):
        RFProjection.from_table(table([0.0], [0.0], [1.0]), (8, 8), 4.0, sum_per_area=True)


def test_mask_is_union_of_discs():
    rfs = table([-2.0, 2.0], [0.0, 0.0], [0.5, 1.0])
    m = rf_mask(rfs, (40, 40), 8.0, radius_sigmas=1.0)
    gx, gy = pixel_grid((40, 40), 8.0)
    expected = (np.hypot(gx + 2, gy) <= 0.5) | (np.hypot(gx - 2, gy) <= 1.0)
    np.testing.assert_array_equal(m.astype(bool), expected)


def test_outside_window():
    rfs = table([0.0, 6.0, 9.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(rfs_outside_window(rfs, (10, 10), 10.0), [False, False, True])


@pytest.mark.parametrize(
    "text, message",
    [
        ("electrode_id,x_deg,y_deg\n0,1,2\n", "lacks column"),
        ("electrode_id,x_deg,y_deg,sigma_deg\n0,1,abc,1\n", "'y_deg' holds 'abc'"),
        ("electrode_id,x_deg,y_deg,sigma_deg\n0,1,2,0\n", "sigma_deg must be > 0"),
        ("electrode_id,x_deg,y_deg,sigma_deg\n0,1,2,1\n0,1,2,1\n", "repeats"),
        ("electrode_id,x_deg,y_deg,sigma_deg\n", "no rows"),
    ],
)
def test_rf_table_errors(tmp_path, text, message):
    path = tmp_path / "rfs.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        RFTable.from_csv(path)
    assert str(path) in str(err.value)


def test_rf_table_csv_round_trip(tmp_path):
    rfs = table([0.5, -1.25], [2.0, 0.1], [0.3, 1.7], area=["V1", "V4"])
    rfs.to_csv(tmp_path / "rfs.csv")
    assert RFTable.from_csv(tmp_path / "rfs.csv").equals(rfs)
