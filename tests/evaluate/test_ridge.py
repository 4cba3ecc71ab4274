"""The ridge baseline: its closed form against a direct solve, λ chosen on validation, batches of any size, and
`rfgan baseline` writing a run that eval and reconstruct take like a trained one."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_gan_run, one_line_error, record_shards

from rfgan import parse
from rfgan.cli import main
from rfgan.data.format import read_info, read_rfs, read_split, split_files, to_tensors
from rfgan.evaluate import ridge
from rfgan.evaluate.inference import Decoder, write_evaluation
from rfgan.evaluate.ridge import fit_ridge
from rfgan.evaluate.table import METRICS


def _standardised(dataset, split):
    info = read_info(dataset)
    responses, images = to_tensors(read_split(dataset, split))
    x = (responses.double() - torch.tensor(info.response_mean)) / torch.tensor(info.response_std)
    return x, images.flatten(1).double(), images


def _direct(dataset, lam):
    """Ridge by the textbook formula on the whole training split at once: centred X, Y; (X^T X + λI) W = X^T Y."""
    x, y, _ = _standardised(dataset, "train")
    xm, ym = x.mean(0), y.mean(0)
    w = torch.linalg.solve((x - xm).T @ (x - xm) + lam * torch.eye(x.shape[1], dtype=x.dtype), (x - xm).T @ (y - ym))
    return w, ym - xm @ w


def test_the_fit_is_the_closed_form_at_the_lambda_with_the_lowest_validation_error(tiny_dataset):
    fit = fit_ridge(str(tiny_dataset))
    w, b = _direct(tiny_dataset, fit.lam)
    torch.testing.assert_close(fit.decoder.weight.double(), w, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fit.decoder.bias.double(), b, atol=1e-5, rtol=1e-4)
    # The validation error reported for each λ is that of the decoder it gives (outputs clipped to [0, 1]).
    responses, images = to_tensors(read_split(tiny_dataset, "val"))
    assert ((fit.decoder(responses) - images) ** 2).mean().item() == pytest.approx(min(fit.val_mse), rel=1e-4)
    assert fit.val_mse[fit.grid.index(fit.lam)] == min(fit.val_mse)
    # A λ far from the chosen one does worse on validation, as its own direct solve shows.
    x, _, val_images = _standardised(tiny_dataset, "val")
    for lam in (fit.grid[0], fit.grid[-1]):
        w, b = _direct(tiny_dataset, lam)
        mse = ((x @ w + b).clamp(0, 1) - val_images.flatten(1).double()).pow(2).mean().item()
        assert mse >= min(fit.val_mse) - 1e-9
        assert mse == pytest.approx(fit.val_mse[fit.grid.index(lam)], rel=1e-4)


def test_batches_of_any_size_give_the_same_fit(tiny_dataset, monkeypatch):
    whole = fit_ridge(str(tiny_dataset))
    # 7 rows a batch: batches that straddle the 16-row shards, and a short last one.
    monkeypatch.setattr(ridge, "BATCH_ROWS", 7)
    batched = fit_ridge(str(tiny_dataset))
    assert batched.lam == whole.lam
    torch.testing.assert_close(batched.decoder.weight, whole.decoder.weight, atol=1e-6, rtol=1e-5)


def test_baseline_writes_a_run_that_eval_and_reconstruct_take(tiny_dataset, feature_weights, tmp_path, capsys):
    run = tmp_path / "ridge"
    assert main(["baseline", "--data", str(tiny_dataset), "--out", str(run), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    config, result = printed["config"], printed["eval"]
    assert config["model"] == "ridge" and config["lambda"] > 0 and len(config["val_mse"]) == len(config["lambda_grid"])
    assert json.loads((run / "config.json").read_text()) == config
    assert (run / "checkpoint_ridge" / "state.json").exists() and (run / "eval_val.png").exists()
    assert json.loads((run / "eval_val.json").read_text()) == result
    assert result["kind"] == "ridge" and result["n_images"] == 12
    # Every metric of the table but the RF-mask rows (a ridge decoder has no mask), each as mean ± SE over images.
    assert list(result["metrics"]) == [m.key for m in METRICS if not m.key.endswith("_masked")]
    for value in result["metrics"].values():
        assert value["n"] == 12 and value["se"] >= 0
    assert {n["pretrained"] for n in result["feature_nets"].values()} == {
        False
    }  # the tests' weights are not ImageNet's

    # rfgan eval takes the run as it takes a trained one, and gives the same table.
    assert main(["eval", "--run", str(run), "--data", str(tiny_dataset), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["metrics"] == result["metrics"]
    assert main(["eval", "--run", str(run), "--data", str(tiny_dataset)]) == 0
    text = capsys.readouterr().out
    assert "2-way identification, AlexNet(2)" in text and "±" in text and "NOT torchvision ImageNet file" in text
    # A run given as a URI (how s3:// and gs:// ones are read) is fetched and read the same way.
    by_uri = ["eval", "--run", run.as_uri(), "--data", str(tiny_dataset), "--no-feature-metrics", "--json"]
    assert main(by_uri) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["psnr"] == result["metrics"]["psnr"]

    # So does rfgan reconstruct, with the images the ridge decoder gives.
    np.save(tmp_path / "r.npy", read_split(tiny_dataset, "val")["responses"][:3])
    assert (
        main(["reconstruct", "--run", str(run), "--responses", str(tmp_path / "r.npy"), "--out", str(tmp_path / "rec")])
        == 0
    )
    images = np.load(tmp_path / "rec" / "reconstructions.npy")
    assert images.shape == (3, 32, 32, 3) and len(list((tmp_path / "rec").glob("*.png"))) == 3
    expected = fit_ridge(str(tiny_dataset)).decoder(torch.from_numpy(np.load(tmp_path / "r.npy")))
    np.testing.assert_allclose(images, (expected.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8), atol=1)

    # A second baseline into the same run is refused.
    assert main(["baseline", "--data", str(tiny_dataset), "--out", str(run)]) == 2
    assert "already holds a run" in one_line_error(capsys, "baseline")


def test_random_features_ridge_is_the_closed_form_on_the_expanded_responses(tiny_dataset, monkeypatch):
    """--nonlinear: ridge on [x, √(2/D) cos(xΩ + b)] at the chosen λ and bandwidth, which it picked by validation error
    among the bandwidths it tried (each at its best λ)."""
    fit = fit_ridge(str(tiny_dataset), features="random", n_features=64)
    dec = fit.decoder
    assert dec.random and dec.omega.shape == (12, 64) and dec.weight.shape[0] == 12 + 64
    assert fit.bandwidth_val_mse[min(fit.bandwidth_val_mse, key=fit.bandwidth_val_mse.get)] == min(fit.val_mse)
    x, y, _ = _standardised(tiny_dataset, "train")
    phi = ridge.random_features(x, dec.omega.double(), dec.phase.double())
    pm, ym = phi.mean(0), y.mean(0)
    eye = torch.eye(phi.shape[1], dtype=phi.dtype)
    w = torch.linalg.solve((phi - pm).T @ (phi - pm) + fit.lam * eye, (phi - pm).T @ (y - ym))
    torch.testing.assert_close(dec.weight.double(), w, atol=1e-4, rtol=1e-3)
    responses, images = to_tensors(read_split(tiny_dataset, "val"))
    assert ((dec(responses) - images) ** 2).mean().item() == pytest.approx(min(fit.val_mse), rel=1e-3)
    # The linear part is in the expansion: at the same λ grid, never worse on validation than plain ridge by more
    # than the features' noise at this tiny size.
    assert min(fit.val_mse) <= min(fit_ridge(str(tiny_dataset)).val_mse) * 1.05


def test_nonlinear_baseline_writes_a_run_that_eval_reloads(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "rff"
    argv = ["baseline", "--data", str(tiny_dataset), "--out", str(run), "--no-feature-metrics", "--json"]
    assert main([*argv, "--nonlinear", "--n-features", "32"]) == 0
    printed = json.loads(capsys.readouterr().out)
    config = printed["config"]
    assert config["model"] == "ridge-random-features" and config["n_features"] == 32 and config["bandwidth"] > 0
    assert main(["eval", "--run", str(run), "--data", str(tiny_dataset), "--no-feature-metrics", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"] == printed["eval"]["metrics"]
    with pytest.raises(SystemExit) as exit:
        main([*argv[:-1], "--nonlinear", "--n-features", "0"])
    assert exit.value.code == 2 and "--n-features: 0 is below 1" in capsys.readouterr().err


def test_eval_of_a_gan_run_has_the_same_table_and_the_mask_rows_of_a_masked_one(
    tiny_dataset, feature_weights, tmp_path, capsys
):
    from rfgan.config import preset

    plain = make_gan_run(tmp_path / "gan", tiny_dataset)
    masked_cfg = preset("tiny").with_overrides({"data.mask": True, "loss.lambda_adv": 0.0})
    masked = make_gan_run(tmp_path / "masked", tiny_dataset, cfg=masked_cfg)
    keys = {}
    for run in (plain, masked):
        assert main(["eval", "--run", str(run), "--data", str(tiny_dataset), "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["kind"] == "gan" and result["epoch"] == 1
        keys[run.name] = list(result["metrics"])
    assert keys["gan"] == [m.key for m in METRICS if not m.key.endswith("_masked")]
    assert keys["masked"] == [m.key for m in METRICS]


def test_without_feature_weights_offline_nothing_is_written(tiny_dataset, tmp_path, monkeypatch, capsys):
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    run = tmp_path / "ridge"
    assert main(["baseline", "--data", str(tiny_dataset), "--out", str(run)]) == 2
    err = one_line_error(capsys, "baseline")
    expected = tmp_path / "empty" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert str(expected) in err and "--no-feature-metrics" in err and "Name or service not known" in err
    assert not run.exists()
    # Without the feature metrics, no weights are needed, and the JSON says that none were used.
    assert main(["baseline", "--data", str(tiny_dataset), "--out", str(run), "--no-feature-metrics", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["eval"]
    assert result["feature_nets"] is None
    assert list(result["metrics"]) == [
        "psnr",
        "ssim",
        "pixel_corr",
        "identification",
        "retrieval_top1",
        "retrieval_top5",
    ]


def test_a_dataset_without_validation_split_is_refused_before_writing(tiny_dataset, tmp_path, capsys):
    import shutil

    data = tmp_path / "noval"
    shutil.copytree(tiny_dataset, data)
    meta = json.loads((data / "metadata.json").read_text())
    for key in ("splits", "shards"):
        meta[key].pop("val")
    (data / "metadata.json").write_text(json.dumps(meta))
    shutil.rmtree(data / "val")
    run = tmp_path / "ridge"
    assert main(["baseline", "--data", str(data), "--out", str(run), "--no-feature-metrics"]) == 2
    assert "no validation split" in one_line_error(capsys, "baseline")
    assert not run.exists()


def test_baseline_on_constant_responses_is_refused_and_writes_nothing(tiny_dataset, tmp_path, capsys):
    # A dataset of an rfgan from before ingest and the writer refused constant responses (its shards record nothing,
    # format.SHARD_FACTS): every electrode 0.5 in every training row. The fit was NaN, and eval printed PSNR nan,
    # top-1 retrieval 1.000 and bare NaN in its JSON.
    data = tmp_path / "constant"
    shutil.copytree(tiny_dataset, data)
    for split in ("train", "val"):
        for shard in split_files(data, split):
            t = pq.read_table(shard)
            flat = pa.array(np.full(len(t) * 12, 0.5, np.float32))
            column = pa.FixedSizeListArray.from_arrays(flat, 12)
            t = t.set_column(t.schema.get_field_index("responses"), "responses", column)
            pq.write_table(t.replace_schema_metadata(None), shard)
    record_shards(data)
    meta = json.loads((data / "metadata.json").read_text())
    meta.update(response_mean=[0.5] * 12, response_std=[1.0] * 12)
    (data / "metadata.json").write_text(json.dumps(meta))
    run = tmp_path / "run"
    assert main(["baseline", "--data", str(data), "--out", str(run), "--no-feature-metrics"]) == 2
    assert "the training responses are constant (no electrode varies" in one_line_error(capsys, "baseline")
    assert not run.exists()


def test_an_evaluation_of_nan_images_writes_null_not_nan_and_retrieves_nothing(tiny_dataset, tmp_path):
    info, rfs = read_info(tiny_dataset), read_rfs(tiny_dataset)

    def nan_model(responses):
        return torch.full((len(responses), 3, 32, 32), float("nan"))

    decoder = Decoder("ridge", nan_model, info, rfs, {}, "checkpoint", epoch=0)
    result = write_evaluation(str(tmp_path), decoder, str(tiny_dataset), "val", nets=None)
    text = (tmp_path / "eval_val.json").read_text()
    written = parse.loads_json(text, "eval_val.json")  # strict: a bare NaN would fail here
    assert written["metrics"]["psnr"]["mean"] is None and "NaN" not in text
    assert result["metrics"]["retrieval_top1"]["mean"] == 0.0


@pytest.fixture(scope="module")
def ridge_run(tiny_dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("ridge") / "run"
    assert main(["baseline", "--data", str(tiny_dataset), "--out", str(run), "--no-feature-metrics"]) == 0
    return run


BAD_RESPONSES = {
    "no rows": (np.zeros((0, 12), np.float32), r"responses are \(0, 12\); this model needs \(N, 12\) with N >= 1"),
    "beyond float32": (np.full((2, 12), 1e300), r"rows \[0, 1\] hold NaN, infinite or out-of-range responses"),
    "complex": (np.ones((2, 12), np.complex128), r"responses are complex128; give real numbers"),
}


@pytest.mark.parametrize("case", [*sorted(BAD_RESPONSES), "npz"])
def test_reconstruct_refuses_responses_it_cannot_decode_and_writes_nothing(ridge_run, tmp_path, capsys, case):
    if case == "npz":  # was: a traceback ('NpzFile' object has no attribute 'ndim')
        path, message = tmp_path / "r.npz", r"r.npz is a .npz archive of \['r'\]; save the responses as one .npy array"
        np.savez(path, r=np.ones((2, 12)))
    else:
        responses, message = BAD_RESPONSES[case]
        path = tmp_path / "r.npy"
        np.save(path, responses)
    argv = ["reconstruct", "--run", str(ridge_run), "--responses", str(path), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert re.search(message, one_line_error(capsys, "reconstruct"))
    assert not (tmp_path / "o").exists()


def test_reconstruct_refuses_responses_inside_its_out(ridge_run, tiny_dataset, tmp_path, capsys):
    """Third audit: --responses OUT/reconstructions.npy was overwritten by the output."""
    out = tmp_path / "rec"
    np.save(tmp_path / "r.npy", read_split(tiny_dataset, "val")["responses"][:2])
    argv = ["reconstruct", "--run", str(ridge_run), "--out", str(out)]
    assert main([*argv, "--responses", str(tmp_path / "r.npy")]) == 0
    kept = (out / "reconstructions.npy").read_bytes()
    assert main([*argv, "--responses", str(out / "reconstructions.npy")]) == 2
    assert "lies inside --out" in one_line_error(capsys, "reconstruct")
    assert (out / "reconstructions.npy").read_bytes() == kept
