"""What eval and report make of a run with learned RFs: the learned table and maps, their distance from the fit and
from the true RFs of a simulated dataset, and the figure."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re

import numpy as np
import pytest
import torch
from conftest import TINY, make_gan_run, make_synth
from PIL import Image

from rfgan.cli import main
from rfgan.config import preset
from rfgan.data.format import read_info, read_rfs
from rfgan.data.rf import RFTable
from rfgan.evaluate import learned
from rfgan.evaluate.inference import find_checkpoint, load_decoder


@pytest.fixture(scope="module")
def fitted_dataset(tmp_path_factory):
    """The tiny dataset with an RF table that is a fit (centres off by one sigma), the true RFs in its metadata."""
    path = tmp_path_factory.mktemp("fit") / "data"
    make_synth(path, dataclasses.replace(TINY, rf_fit_error=1.0))
    return path


@pytest.mark.parametrize("layer", ["gaussian", "map"])
def test_eval_writes_the_learned_rfs_and_scores_them_against_the_truth(fitted_dataset, tmp_path, capsys, layer):
    cfg = preset("tiny").with_overrides({"model.rf_layer": layer, "optim.lr_rf": 0.05})
    run = make_gan_run(tmp_path / "run", fitted_dataset, cfg=cfg, steps=3)
    argv = ["eval", "--run", str(run), "--data", str(fitted_dataset), "--no-feature-metrics", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)["learned_rfs"]
    assert result["layer"] == layer
    table = RFTable.from_csv(run / learned.LEARNED_RFS)
    fit, info = read_rfs(fitted_dataset), read_info(fitted_dataset)
    np.testing.assert_array_equal(table.electrode_id, fit.electrode_id)
    truth = learned.true_rfs(info, fit)
    np.testing.assert_allclose(truth.x_deg, info.source["rf_truth"]["x_deg"])
    # The scores are those of the written table, against the table the run started from and the truth.
    errors = result["median_centre_error_deg"]
    assert errors["fitted"] == pytest.approx(np.median(np.hypot(fit.x_deg - truth.x_deg, fit.y_deg - truth.y_deg)))
    assert errors["learned"] == pytest.approx(
        np.median(np.hypot(table.x_deg - truth.x_deg, table.y_deg - truth.y_deg)), rel=1e-6
    )
    assert result["median_shift_deg"] > 0  # three steps at a large rate moved them
    assert set(result["median_centre_error_deg_by_area"]) == set(fit.area_names())
    decoder = load_decoder(find_checkpoint(str(run), "best"))
    if layer == "gaussian":
        x, y = decoder.learned_rfs.centres()
        np.testing.assert_allclose(table.x_deg, x.detach().numpy(), rtol=1e-6)
        assert "maps" not in result
    else:
        maps = np.load(run / learned.LEARNED_MAPS)
        np.testing.assert_array_equal(maps, decoder.learned_rfs.maps_array())
        # The table of free maps: each map's centre of mass.
        h, w = info.image_size
        e = int(np.argmax(maps.reshape(len(maps), -1).max(axis=1)))
        mass = np.clip(maps[e], 0, None)
        xs = (np.arange(w) + 0.5 - w / 2) * info.fov_deg / w
        assert table.x_deg[e] == pytest.approx((mass.sum(axis=0) * xs).sum() / mass.sum(), rel=1e-4)
    # A second eval replaces the table, and only it.
    assert main(argv) == 0


def test_a_map_learned_to_nothing_keeps_the_tables_values(fitted_dataset):
    from rfgan.gan.learned_rf import MapRFs

    info, rfs = read_info(fitted_dataset), read_rfs(fitted_dataset)
    layer = MapRFs(rfs, info.image_size, info.fov_deg)
    with torch.no_grad():
        layer.field[0] = 0
    table = learned.learned_table(layer, rfs, info)
    assert (table.x_deg[0], table.y_deg[0], table.sigma_deg[0]) == (rfs.x_deg[0], rfs.y_deg[0], rfs.sigma_deg[0])
    assert np.isfinite(table.x_deg).all()


def test_report_draws_the_learned_rfs_of_the_runs_that_have_them(fitted_dataset, tmp_path, capsys):
    cfg = preset("tiny").with_overrides({"model.rf_layer": "gaussian", "optim.lr_rf": 0.05})
    with_rfs = make_gan_run(tmp_path / "learned", fitted_dataset, cfg=cfg)
    fixed = make_gan_run(tmp_path / "fixed", fitted_dataset)
    for run in (with_rfs, fixed):
        assert main(["eval", "--run", str(run), "--data", str(fitted_dataset), "--no-feature-metrics"]) == 0
    page = tmp_path / "page.html"
    assert main(["report", "--run", str(fixed), "--compare", str(with_rfs), "--out", str(page)]) == 0
    text = page.read_text()
    figures = re.findall(r'<img alt="learned RFs ([^"]*)" src="data:image/png;base64,([^"]*)"', text)
    assert [name for name, _ in figures] == ["learned"]
    image = Image.open(io.BytesIO(base64.b64decode(figures[0][1])))
    assert image.size[0] > 300 and image.size[1] > 300
    assert "Learned receptive fields" in text and "black crosses: the true centres" in text
