"""report, reconstruct, eval and baseline under the one output rule (rfgan.outputs), and their one-line refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import one_line_error

from rfgan.checkpoint import CONFIG_FILE, find_checkpoint
from rfgan.cli import main
from rfgan.data.rf import RFTable
from rfgan.errors import DataError


@pytest.fixture(scope="module")
def ridge(tiny_dataset, tmp_path_factory):
    """A baseline run, evaluated (its eval_val.json): what report, reconstruct and eval take."""
    run = tmp_path_factory.mktemp("runs") / "ridge"
    assert main(["baseline", "--data", str(tiny_dataset), "--out", str(run), "--no-feature-metrics", "--json"]) == 0
    return run


def copied(run, tmp_path):
    shutil.copytree(run, tmp_path / "ridge")
    return tmp_path / "ridge"


def test_report_replaces_its_own_page_but_not_a_datasets_metadata(ridge, tiny_dataset, tmp_path, capsys):
    meta = tiny_dataset / "metadata.json"
    before = meta.read_bytes()
    assert main(["report", "--run", str(ridge), "--out", str(meta)]) == 2
    assert f"is inside the dataset {tiny_dataset}" in one_line_error(capsys, "report")
    assert meta.read_bytes() == before
    notes = tmp_path / "notes.html"
    notes.write_text("<p>mine</p>")
    assert main(["report", "--run", str(ridge), "--out", str(notes)]) == 2
    assert "notes.html already exists and is not an rfgan report page" in one_line_error(capsys, "report")
    assert notes.read_text() == "<p>mine</p>"
    notes.unlink()
    page = tmp_path / "page.html"
    for _ in range(2):  # the second call replaces the first's page
        assert main(["report", "--run", str(ridge), "--out", str(page)]) == 0
    assert "<title>rfgan report</title>" in page.read_text() and [p.name for p in tmp_path.iterdir()] == ["page.html"]


def test_reconstruct_twice_into_one_folder_leaves_only_the_second(ridge, tmp_path, capsys):
    out, e = tmp_path / "rec", json.loads((ridge / "checkpoint_ridge" / "dataset.json").read_text())["n_electrodes"]
    for n in (5, 2):
        np.save(tmp_path / "r.npy", np.random.default_rng(n).normal(size=(n, e)).astype(np.float32))
        assert (
            main(["reconstruct", "--run", str(ridge), "--responses", str(tmp_path / "r.npy"), "--out", str(out)]) == 0
        )
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "reconstructions.npy"]
    assert np.load(out / "reconstructions.npy").shape[0] == 2
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["reconstruct", "--run", str(ridge), "--responses", str(tmp_path / "r.npy"), "--out", str(mine)]) == 2
    assert "is not a folder of rfgan reconstruct's output" in one_line_error(capsys, "reconstruct")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_eval_and_baseline_refuse_files_they_did_not_write(ridge, tiny_dataset, tmp_path, capsys):
    run = copied(ridge, tmp_path)
    (run / "eval_val.json").write_text("my notes")
    assert main(["eval", "--run", str(run), "--data", str(tiny_dataset), "--no-feature-metrics"]) == 2
    assert "eval_val.json already exists and is not a table of rfgan eval" in one_line_error(capsys, "eval")
    assert (run / "eval_val.json").read_text() == "my notes"
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "data.csv").write_text("1,2")
    assert main(["baseline", "--data", str(tiny_dataset), "--out", str(folder), "--no-feature-metrics"]) == 2
    assert "precious already exists and is not an empty folder" in one_line_error(capsys, "baseline")
    assert [p.name for p in folder.iterdir()] == ["data.csv"]
    # Was: "[Errno 20] Cannot list directory".
    into_a_file = ["baseline", "--data", str(tiny_dataset), "--out", str(folder / "data.csv"), "--no-feature-metrics"]
    assert main(into_a_file) == 2
    assert "data.csv is a file, not a folder; choose another --out" in one_line_error(capsys, "baseline")


def test_a_moved_run_is_reported_from_its_new_place(ridge, tmp_path, capsys):
    moved = tmp_path / "moved"
    shutil.copytree(ridge, moved)
    (moved / "checkpoint_ridge").rename(tmp_path / "gone")  # the old path of the eval table now leads nowhere
    shutil.copytree(tmp_path / "gone", moved / "checkpoint_ridge")
    table = json.loads((moved / "eval_val.json").read_text())
    table["checkpoint"] = str(tmp_path / "old-place" / "checkpoint_ridge")
    (moved / "eval_val.json").write_text(json.dumps(table))
    assert main(["report", "--run", str(moved)]) == 0
    assert (moved / "report.html").exists()


def test_report_of_a_file_says_it_is_a_file(ridge, capsys):
    assert main(["report", "--run", str(ridge / "eval_val.json")]) == 2
    assert "eval_val.json is a file; give a run directory" in one_line_error(capsys, "report")


def test_a_cuda_device_without_a_gpu_says_so_not_that_the_checkpoint_is_damaged(
    ridge, tiny_dataset, monkeypatch, capsys
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["eval", "--run", str(ridge), "--data", str(tiny_dataset), "--no-feature-metrics", "--device", "cuda"]
    assert main(argv) == 2
    err = one_line_error(capsys, "eval")
    assert "--device cuda: this process sees no CUDA GPU" in err and "damaged" not in err


def test_a_run_whose_checkpoints_are_all_incomplete_is_not_told_to_train_first(ridge, tmp_path):
    run = copied(ridge, tmp_path)
    (run / "checkpoint_ridge" / CONFIG_FILE).unlink()
    with pytest.raises(DataError, match=r"holds 1 checkpoint\(s\) but none is complete \(e.g. .*config.json is miss"):
        find_checkpoint(str(run))


def test_an_rf_table_with_a_byte_order_mark_reads_as_without():
    text = "electrode_id,x_deg,y_deg,sigma_deg\n1,0.5,0.5,1.0\n"
    assert RFTable.from_csv_text("\ufeff" + text, "rfs.csv").equals(RFTable.from_csv_text(text, "rfs.csv"))
