"""Ray Train on a real local Ray: DDP of both nets, resume, restart after a crash, and the `rfgan train` CLI.

Most tests here share one trained run (trained_run): they read it, or continue or damage a copy of it, instead of
each training its own from scratch: a Ray Train run's start-up is most of what a tiny run costs."""

import contextlib
import dataclasses
import io
import json
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import SMALL_NETS, TINY, interruptible, make_synth, set_flags, tree
from worker_faults import killed_once_before_reporting

from rfgan.checkpoint import existing_checkpoints, find_checkpoint, load_checkpoint
from rfgan.cli import main
from rfgan.config import load_config, preset
from rfgan.errors import ConfigError
from rfgan.run import train
from rfgan.run.artifacts import read_metrics_csv
from rfgan.run.epoch import validate
from rfgan.run.restarts import fit_restarting
from rfgan.run.train import fit, preflight

SMALL = {**SMALL_NETS, "optim.lr_g": 1e-3, "run.cpus_per_worker": 1}
# The shared run: two workers, so that DDP is exercised; the training split streamed by Ray Data (a split this small
# is otherwise read by the driver, perf.driver_read_mb), so that Ray Data's shards and the shard cache are; and every
# checkpoint kept, so that tests can damage them.
SHARED = {
    **SMALL,
    "optim.lr_g": 3e-3,
    "run.workers": 2,
    "run.epochs": 4,
    "run.keep_checkpoints": 10,
    "perf.driver_read_mb": 0,
}


def small(**overrides):
    return preset("tiny").with_overrides({**SMALL, **overrides})


def rows(run):
    return read_metrics_csv((run / "metrics.csv").read_text())


def adam_steps(checkpoint_dir):
    return int(load_checkpoint(checkpoint_dir).nets["opt_g"]["state"][0]["step"])


def train_args(data, run, settings) -> list[str]:
    return ["train", "--data", str(data), "--preset", "tiny", *set_flags(settings), "--out", str(run)]


@pytest.fixture(scope="module")
def trained_run(ray_session, tiny_dataset, tmp_path_factory):
    """One `rfgan train` of SHARED on the tiny dataset, for the tests of this module to read; a test that changes a
    run works on copy_of it. (Its run directory, what the command printed.)"""
    # Named as a lab may name its runs: not in ASCII, with a space and a '#' (Ray Train's controller died on such a
    # name, in its metrics' tags).
    run = tmp_path_factory.mktemp("trained") / "rün #1"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(train_args(tiny_dataset, run, SHARED)) == 0
    return run, printed.getvalue()


def copy_of(trained_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    return run


def continued(run, epochs: int):
    """The config that `run` was trained with, for `epochs` epochs in all: what continues it."""
    return load_config(run / "config.json").with_overrides({"run.epochs": epochs})


def test_two_cpu_workers_keep_both_nets_identical_and_losses_fall(trained_run):
    run = trained_run[0]  # its command exited 0: no error
    history = rows(run)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    # G and D parameters agree across the two ranks after every epoch (max |rank r - rank 0|).
    assert all(r["ddp_divergence_g"] == 0 and r["ddp_divergence_d"] == 0 for r in history)
    assert history[-1]["train_pix"] < 0.92 * history[0]["train_pix"]
    assert history[-1]["train_g_total"] < history[0]["train_g_total"]
    assert history[-1]["val_pixel_corr"] > history[0]["val_pixel_corr"]
    # Epoch 1 streams each rank's shard from Parquet and keeps it; epochs 2–4 shuffle the kept rows.
    assert [r["shard_in_memory"] for r in history] == [0, 1, 1, 1]
    # 40 training rows, 2 workers × 4 per batch: 5 steps an epoch, the same on both ranks, streamed or kept.
    assert all(int(b["step"]) - int(a["step"]) == 5 for a, b in zip(history, history[1:]))
    assert history[-1]["step"] == 20 and adam_steps(find_checkpoint(run, "last")) == 20
    for key in ("val_psnr", "val_ssim", "val_pixel_corr", "train_errD", "train_errG", "samples_per_s"):
        assert key in history[-1]
    assert (run / "samples" / "epoch_0004.png").exists() and (run / "curves.png").exists()
    [start] = json.loads((run / "workers.json").read_text())  # one start of the group, both ranks on this node
    assert start["first_epoch"] == 1 and [r["rank"] for r in start["ranks"]] == [0, 1]
    assert len({r["node_id"] for r in start["ranks"]}) == 1
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_a_stopped_run_continues_where_it_stopped(trained_run, tiny_dataset, tmp_path):
    run = copy_of(trained_run, tmp_path)
    before = rows(run)
    steps_per_epoch = int(before[0]["step"])
    assert adam_steps(find_checkpoint(run, "last")) == 4 * steps_per_epoch
    result = fit(continued(run, 6), str(tiny_dataset), str(run), torch_threads=1)
    assert result.error is None
    after = rows(run)
    assert [r["epoch"] for r in after] == [1, 2, 3, 4, 5, 6]
    assert after[:4] == before  # epochs 1–4 were not trained again
    # Each process streams its first epoch and keeps the shard for the next.
    assert [r["shard_in_memory"] for r in after] == [0, 1, 1, 1, 0, 1]
    assert after[4]["step"] == 5 * steps_per_epoch  # the step count continued
    # The optimizer continued too: Adam's step count covers all six epochs.
    assert adam_steps(find_checkpoint(run, "last")) == 6 * steps_per_epoch


def test_a_crashed_worker_group_restarts_from_the_last_checkpoint(trained_run, tiny_dataset, tmp_path, monkeypatch):
    run, marker = copy_of(trained_run, tmp_path), tmp_path / "crashed"
    monkeypatch.setattr(train, "train_loop", killed_once_before_reporting(6, str(marker)))
    cfg = continued(run, 6)
    assert cfg.run.max_failures >= 1 and cfg.run.keep_checkpoints >= 6
    result = fit_restarting(cfg, str(tiny_dataset), str(run), torch_threads=1)
    assert marker.exists()  # the fault did happen
    assert result.error is None and result.metrics["epoch"] == 6
    assert [r["epoch"] for r in rows(run)] == [1, 2, 3, 4, 5, 6]
    # One checkpoint per epoch: 6 in all. A restart from where this run started (epoch 4) would have reported
    # epoch 5 twice (7).
    assert len([p for p in run.glob("checkpoint_*") if p.is_dir()]) == 6


def test_train_cli_eval_report_and_reconstruct(trained_run, tiny_dataset, feature_weights, tmp_path, capsys):
    out = trained_run[1]  # what `rfgan train` printed
    assert out.startswith("config: preset 'tiny' with ") and "run.workers=2" in out and "best checkpoint:" in out
    run = copy_of(trained_run, tmp_path)
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["ngf"] == 8 and saved["run"]["epochs"] == 4 and saved["run"]["workers"] == 2
    # The same --out again without --resume is refused, and nothing is touched.
    kept = tree(run)
    assert main(train_args(tiny_dataset, run, SHARED)) == 2
    assert "--resume" in capsys.readouterr().err
    assert tree(run) == kept

    assert main(["eval", "--run", str(run), "--data", str(tiny_dataset), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    table = metrics["metrics"]
    assert {"psnr", "ssim", "pixel_corr", "feature_corr", "identification", "identification_alexnet2"} <= set(table)
    assert metrics["n_images"] == 12 and 0.0 <= table["identification"]["mean"] <= 1.0
    assert (run / "eval_val.png").exists() and json.loads((run / "eval_val.json").read_text()) == metrics
    # The report page of the trained run has its curves from Ray Train's epochs.
    assert main(["report", "--run", str(run)]) == 0
    assert capsys.readouterr().out == f"wrote {run}/report.html\n"
    assert "<h2>Training curves</h2>" in (run / "report.html").read_text()
    # Runs and datasets given as URIs (how s3:// and gs:// ones are read): the same answer through pyarrow's
    # filesystems, and the grid written back through them.
    (run / "eval_val.png").unlink()
    assert main(["eval", "--run", run.as_uri(), "--data", tiny_dataset.as_uri(), "--checkpoint", "best", "--json"]) == 0
    by_uri = json.loads(capsys.readouterr().out)
    assert by_uri["checkpoint"] == f"{run.as_uri()}/{Path(metrics['checkpoint']).name}"  # the default is the best
    assert by_uri["metrics"]["psnr"]["mean"] == pytest.approx(table["psnr"]["mean"]) and (run / "eval_val.png").exists()

    responses = torch.randn(3, 12).numpy()
    import numpy as np

    np.save(tmp_path / "new.npy", responses)
    assert (
        main(
            [
                "reconstruct",
                "--run",
                run.as_uri(),
                "--responses",
                str(tmp_path / "new.npy"),
                "--out",
                str(tmp_path / "rec"),
            ]
        )
        == 0
    )
    images = np.load(tmp_path / "rec" / "reconstructions.npy")
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert len(list((tmp_path / "rec").glob("*.png"))) == 3
    np.save(tmp_path / "bad.npy", torch.randn(3, 5).numpy())
    assert (
        main(
            [
                "reconstruct",
                "--run",
                str(run),
                "--responses",
                str(tmp_path / "bad.npy"),
                "--out",
                str(tmp_path / "rec2"),
            ]
        )
        == 2
    )
    assert "needs (N, 12)" in capsys.readouterr().err


def test_the_demo_preset_trains_on_top_of_the_ridge_decoder(ray_session, tiny_dataset, tmp_path, capsys):
    """`rfgan train --preset demo` (what `make run` trains) through Ray Train: the driver fits the ridge read-out,
    the worker's G corrects it, and the checkpoint carries it, so the decoder that eval and reconstruct load has it."""
    from rfgan.evaluate.inference import load_decoder
    from rfgan.run.train import linear_readout

    run = tmp_path / "demo"
    args = ["train", "--data", str(tiny_dataset), "--preset", "demo", *set_flags(SMALL), "--epochs", "2"]
    assert main([*args, "--out", str(run)]) == 0
    assert "config: preset 'demo' with " in capsys.readouterr().out
    assert [r["epoch"] for r in rows(run)] == [1, 2] and all(r["train_ssim"] > 0 for r in rows(run))
    ckpt = load_checkpoint(find_checkpoint(run, "last"))
    cfg = preset("demo").with_overrides(SMALL)
    readout = linear_readout(cfg, str(tiny_dataset))
    torch.testing.assert_close(ckpt.nets["generator"]["weight"], readout["weight"])
    decoder = load_decoder(find_checkpoint(run, "best"))
    assert decoder.config["model"]["linear_base"]
    images = decoder.reconstruct(torch.randn(5, 12))
    assert images.shape == (5, 3, 32, 32) and 0 <= images.min() and images.max() <= 1


def test_dry_run_prints_config_and_parameter_counts(tiny_dataset, capsys):
    assert (
        main(
            [
                "train",
                "--data",
                str(tiny_dataset),
                "--preset",
                "reference",
                "--set",
                "model.g_widths=[8,8,8,8,8]",
                "--dry-run",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert '"generator": "reference"' in out and "generator:" in out and "discriminator: 221,400" in out
    with pytest.raises(SystemExit):
        main(["train", "--preset", "nope", "--bogus"])


def test_train_dry_run_of_the_reference_preset_shows_its_input_and_mask(tiny_dataset, capsys):
    # Issue 14: masked, unstandardised, maps summing to 1 over the field, and the original layout
    assert main(["train", "--preset", "reference", "--data", str(tiny_dataset), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for shown in ('"mask": true', '"standardize": false', '"rf_norm": "sum_full"', '"init": "original"'):
        assert shown in out
    assert "input: raw responses (not standardised) x RF maps summing to 1 over the whole visual field" in out
    assert "mask: target and output multiplied by the RF mask" in out and "before D, VGG" in out


def test_masked_training_is_validated_on_masked_images(tiny_dataset):
    from rfgan.data.format import read_split
    from rfgan.gan.build import build_gan

    info, rfs = preflight(preset("tiny"), str(tiny_dataset), training=False)
    val = read_split(tiny_dataset, "val")
    batches = [(val["responses"][:8], val["image"][:8])]
    scores = {}
    for mask in (False, True):
        cfg = preset("tiny").with_overrides({"data.mask": mask, "data.mask_radius_sigmas": 0.5})
        torch.manual_seed(0)
        gan = build_gan(cfg, info, rfs, with_vgg=False)
        scores[mask] = validate(gan, batches, 0, 1, "cpu")
    # The same generator: outside the mask both images are 0, so masked images agree better (SSIM ranks checkpoints)
    assert scores[True]["ssim"] > scores[False]["ssim"] and scores[True]["psnr"] > scores[False]["psnr"]


def test_a_diverging_run_stops_with_a_clear_reason_and_is_not_restarted(
    ray_session, tiny_dataset, tmp_path, capsys, monkeypatch
):
    from worker_faults import counting_starts

    run, starts = tmp_path / "nan", tmp_path / "starts"
    # Restarts allowed: a run that diverged would diverge again (it was run 3 more times, then reported).
    monkeypatch.setattr(train, "train_loop", counting_starts(starts, train.train_loop))
    settings = {
        **SMALL,
        "run.workers": 1,
        "run.epochs": 2,
        "run.max_failures": 2,
        "loss.adversarial": "lsgan",
        "loss.lambda_adv": 1.0,
        "optim.lr_d": 1e12,
        "optim.lr_g": 1e12,
    }
    # Through the command: exit 1 (the run failed), rfgan's reason on one line, and how to go on from the last
    # checkpoint.
    assert main(train_args(tiny_dataset, run, settings)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "training diverged in epoch 1" in err and "NaN/inf" in err and f"rfgan train --out {run} --resume" in err
    assert not (run / "metrics.csv").exists()  # nothing was reported from the diverged epoch
    assert starts.read_text().count("started") == 1


def test_preflight_refuses_a_batch_no_worker_can_fill_before_ray_starts(tiny_dataset):
    data = str(tiny_dataset)  # 40 training rows
    with pytest.raises(ConfigError, match=r"batch_size=64 over 1 worker\(s\).* has 40 training rows.*at most 40"):
        preflight(small(**{"optim.batch_size": 64}), data)
    with pytest.raises(ConfigError, match=r"batch_size=48 over 2 worker.*at most 40"):
        preflight(small(**{"optim.batch_size": 48, "run.workers": 2}), data)  # 24 a worker, 20 rows each
    with pytest.raises(ConfigError, match="one row per worker"):
        preflight(small(**{"optim.batch_size": 1, "run.workers": 2}), data)
    for batch, workers in ((40, 1), (40, 2), (2, 2)):  # these fit exactly
        info, rfs = preflight(small(**{"optim.batch_size": batch, "run.workers": workers}), data)
        assert info.splits["train"] == 40 and len(rfs) == info.n_electrodes


def epochs_of_checkpoints(run):
    return {json.loads((p / "state.json").read_text())["epoch"]: p for p in run.glob("checkpoint_*") if p.is_dir()}


@pytest.mark.parametrize(
    "run_dir",
    [
        "s3://bucket/runs/x",
        "s3://bucket/runs/x?region=eu-west-1",
        "s3://bucket/runs/x?endpoint_override=127.0.0.1:9000&scheme=http",
        "local",
    ],
)
def test_the_printed_best_checkpoint_is_named_as_the_run_directory_is(run_dir, tmp_path, monkeypatch):
    """Ray Train's Checkpoint.path is the path within its filesystem: `bucket/runs/x/checkpoint_…` on S3, which
    pasted into rfgan eval would read as a local path. The checkpoints are made as Ray Train makes them, on the
    filesystem and path its get_fs_and_path gives for the storage_path that fit() passes: pyarrow's real S3
    filesystem, made without contacting any endpoint (given an endpoint, in AWS_ENDPOINT_URL or the URI, or a
    region, pyarrow asks AWS nothing)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    from ray.train import Checkpoint
    from ray.train.v2._internal.execution.storage import get_fs_and_path

    from rfgan import storage
    from rfgan.checkpoint import SCORE

    run_dir = str(tmp_path / "runs" / "x") if run_dir == "local" else run_dir
    storage_path, name = train.run_paths(run_dir)
    fs, fs_path = get_fs_and_path(storage_path)
    scores = {"checkpoint_2026-12-07_09-01-00.000001": 0.2, "checkpoint_2026-12-07_09-02-00.000002": 0.5}
    made = [(Checkpoint(path=f"{fs_path}/{name}/{c}", filesystem=fs), {SCORE: v}) for c, v in scores.items()]
    best = train.best_checkpoint(run_dir, made)
    assert best == storage.join(run_dir, "checkpoint_2026-12-07_09-02-00.000002")
    # Read back, the printed name reaches the very checkpoint Ray wrote.
    back_fs, back_path = storage.filesystem(best)
    assert back_fs.equals(made[1][0].filesystem) and back_path == made[1][0].path
    assert train.best_checkpoint(run_dir, []) is None


def test_resume_after_the_newest_checkpoint_was_deleted_and_the_next_cut(trained_run, tiny_dataset, tmp_path, capsys):
    # Both of what Ray's own restore cannot survive, in one run (tests/test_checkpoint.py has each case on its own):
    # the newest checkpoint deleted, which Ray's record still names (Ray alone would refuse to start), and the one
    # before it cut short, as by an interrupted upload.
    run, data = copy_of(trained_run, tmp_path), str(tiny_dataset)
    steps_per_epoch = int(rows(run)[0]["step"])
    checkpoints = epochs_of_checkpoints(run)
    shutil.rmtree(checkpoints[4])
    nets = checkpoints[3] / "nets.pt"
    nets.write_bytes(nets.read_bytes()[:1000])
    result = fit(continued(run, 5), data, str(run), torch_threads=1)
    assert result.error is None and result.metrics["epoch"] == 5
    err = capsys.readouterr().err
    assert "skipping a damaged checkpoint" in err and "(epoch 2), the newest complete checkpoint" in err
    # Epochs 3 to 5 trained again on top of epoch 2's state: its optimizer's steps, then three epochs more.
    assert [r["epoch"] for r in rows(run)] == [1, 2, 3, 4, 5] and rows(run)[2]["step"] == 3 * steps_per_epoch
    assert adam_steps(find_checkpoint(run, "last")) == 5 * steps_per_epoch


def test_resume_of_a_real_run_on_its_dataset_remade_in_place(trained_run, tiny_dataset, tmp_path, capsys):
    # The run's data as a copy of its own (the same fingerprint), then re-made there with fewer training rows.
    run, data = copy_of(trained_run, tmp_path), tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    make_synth(data, dataclasses.replace(TINY, n_train=32), overwrite=True)
    resume = [*train_args(data, run, {**SHARED, "run.epochs": 5}), "--resume"]
    before = tree(run)
    assert main(resume) == 2
    err = capsys.readouterr().err
    assert "is not the dataset the checkpoint was trained on" in err and "rows per split" in err
    assert tree(run) == before
    # Intended: said, and the workers restore the checkpoint on the new data rather than refuse it.
    assert main([*resume, "--allow-other-data"]) == 0
    assert "note: --allow-other-data: " in capsys.readouterr().err
    assert [r["epoch"] for r in rows(run)] == [1, 2, 3, 4, 5]


@pytest.mark.ray
def test_ctrl_c_sigterm_or_sigkill_on_train_stops_it_and_leaves_no_process(tiny_dataset, tmp_path):
    """A real SIGINT (Ctrl-C), SIGTERM (kill, a scheduler) and SIGKILL (the OOM killer) each to a real `rfgan train`
    process (its own local Ray; the three at once), once an epoch has been reported. (SIGTERM was: Ray's handler's
    SystemExit, then the process aborted, exit 134. SIGKILL left two of Ray's processes for a minute.)"""
    import subprocess
    import sys

    import psutil

    sets = set_flags(SMALL)
    argv = [sys.executable, "-m", "rfgan", "train", "--data", str(tiny_dataset), "--preset", "tiny", *sets]
    cases = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated"), signal.SIGKILL: (-9, None)}
    runs = {sig: tmp_path / sig.name for sig in cases}
    procs = {
        sig: subprocess.Popen(
            [*argv, "--epochs", "1000", "--out", str(runs[sig])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=interruptible,
        )
        for sig in cases
    }
    errs, descendants = {}, []
    try:
        deadline = time.monotonic() + 300
        for sig, proc in procs.items():
            while not (runs[sig] / "metrics.csv").exists():
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "no epoch was reported within 300 s"
                time.sleep(0.5)
            if sig == signal.SIGKILL:
                descendants = psutil.Process(proc.pid).children(recursive=True)
            proc.send_signal(sig)
        errs = {sig: proc.communicate(timeout=120)[1] for sig, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()

    def alive(p: psutil.Process) -> bool:  # a zombie has ended (this machine's init may be slow to reap it)
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    # The killed driver's Ray processes (its GCS, raylet, agents, workers) are gone within seconds.
    assert len(descendants) > 5
    until = time.monotonic() + 20
    while (left := [p for p in descendants if alive(p)]) and time.monotonic() < until:
        time.sleep(0.5)
    assert not left, [p.name() for p in left]
    for sig, (code, stop) in cases.items():
        run, err = runs[sig], errs[sig]
        assert procs[sig].returncode == code, err
        assert existing_checkpoints(str(run))  # what `--resume` continues from is there
        if stop is None:
            continue
        # rfgan's message is the driver's last word; Ray's processes may still log after it as they shut down
        # (tagged "(… pid=…)" lines, e.g. the GCS server's), which the driver does not control.
        own = [line for line in err.strip().splitlines() if "pid=" not in line]
        last = own[-1]
        assert last.startswith(f"rfgan train: {stop};") and f"rfgan train --out {run} --resume" in last, err
        # The driver's own output has no traceback (Ray forwards its workers' logs, each line tagged "(… pid=N)", and
        # an aborted worker may log one there).
        assert not [line for line in own if "Traceback" in line], err
