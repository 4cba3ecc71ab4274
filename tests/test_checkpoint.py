import dataclasses
import json
import shutil

import pytest
import torch
from conftest import TINY, make_gan_run, make_synth, one_line_error, trained, tree

from rfgan.checkpoint import Accept, find_checkpoint, load_checkpoint, save_checkpoint
from rfgan.cli import main
from rfgan.data.format import read_info, read_rfs
from rfgan.errors import DataError
from rfgan.evaluate.inference import evaluate_run
from rfgan.run.launch import check_resumed_data
from rfgan.run.train import RAY_SNAPSHOT, resume_point


def test_saved_and_loaded_generator_reproduces_outputs_bit_for_bit(tiny_dataset, tmp_path):
    cfg, info, rfs, gan, opts, responses = trained(tiny_dataset)
    save_checkpoint(
        tmp_path / "ckpt", config=cfg, info=info, rfs=rfs, gan=gan, opts=opts, epoch=2, step=3, metrics={"ssim": 0.5}
    )
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert (ckpt.epoch, ckpt.step, ckpt.metrics) == (2, 3, {"ssim": 0.5})
    assert ckpt.config == cfg and ckpt.rfs.equals(rfs) and ckpt.info.image_size == info.image_size
    # A fresh, differently initialised model takes the saved state.
    _, _, _, fresh, fresh_opts, _ = trained(tiny_dataset, seed=1, steps=0)
    x = gan.projection(responses)
    gan.generator.eval()
    fresh.generator.eval()
    assert not torch.equal(gan.generator(x), fresh.generator(x))
    ckpt.restore(fresh, fresh_opts)
    assert torch.equal(gan.generator(x), fresh.generator(x))
    for a, b in zip(gan.discriminator.state_dict().values(), fresh.discriminator.state_dict().values()):
        assert torch.equal(a, b)
    assert fresh_opts.g.state_dict()["state"][0]["step"] == 3
    torch.testing.assert_close(
        fresh_opts.d.state_dict()["state"][0]["exp_avg"], opts.d.state_dict()["state"][0]["exp_avg"]
    )
    # The frozen VGG net is not in the checkpoint.
    assert not any("vgg" in k or "features" in k for k in ckpt.nets["generator"])
    assert (tmp_path / "ckpt" / "nets.pt").stat().st_size < 10e6


def test_checkpoint_for_other_data_is_refused(tiny_dataset, tmp_path):
    cfg, info, rfs, gan, opts, _ = trained(tiny_dataset, steps=0)
    save_checkpoint(tmp_path / "c", config=cfg, info=info, rfs=rfs, gan=gan, opts=opts, epoch=0, step=0)
    ckpt = load_checkpoint(tmp_path / "c")
    ckpt.check_matches(info, rfs)
    other = dataclasses.replace(info, n_electrodes=191, image_size=(96, 96))
    with pytest.raises(DataError, match=r"trained for 12 electrodes and 32x32x3 .* has 191 electrodes and 96x96x3"):
        ckpt.check_matches(other, rfs)
    state = json.loads((tmp_path / "c" / "state.json").read_text())
    (tmp_path / "c" / "state.json").write_text(json.dumps({**state, "checkpoint_version": 99}))
    with pytest.raises(DataError, match="checkpoint_version 99"):
        load_checkpoint(tmp_path / "c")
    # One written before this rfgan's format (its config may hold keys no longer read) is refused with its writer.
    (tmp_path / "c" / "state.json").write_text(json.dumps({**state, "checkpoint_version": 1, "rfgan_version": "0.0.9"}))
    with pytest.raises(DataError, match=r"checkpoint_version 1, written by rfgan 0.0.9, is not read by this rfgan"):
        load_checkpoint(tmp_path / "c")
    with pytest.raises(DataError, match="not an rfgan checkpoint"):
        load_checkpoint(tmp_path)


@pytest.fixture
def run_with_two_checkpoints(tiny_dataset, tmp_path):
    """A run directory as Ray Train leaves it: checkpoints of epochs 1 (val_ssim 0.6) and 2 (0.5), and Ray's
    snapshot naming both."""
    cfg, info, rfs, gan, opts, _ = trained(tiny_dataset, steps=1)
    run = tmp_path / "run"
    for name, epoch, ssim in (("checkpoint_a", 1, 0.6), ("checkpoint_b", 2, 0.5)):
        save_checkpoint(
            run / name,
            config=cfg,
            info=info,
            rfs=rfs,
            gan=gan,
            opts=opts,
            epoch=epoch,
            step=epoch,
            metrics={"val_ssim": ssim},
        )
    # Ray Train 2.60's record of them, as its checkpoint manager writes it.
    results = [
        {"version": 0, "checkpoint_dir_name": name, "metrics": {"epoch": epoch, "val_ssim": ssim}}
        for name, epoch, ssim in (("checkpoint_a", 1, 0.6), ("checkpoint_b", 2, 0.5))
    ]
    snapshot = {
        "ray_version": "2.60.0",
        "checkpoint_results": results,
        "checkpoint_report_indices": [0, 1],
        "latest_checkpoint_result": results[1],
        "pending_training_results": [],
        "pending_validation_specs": [],
        "current_report_index": 2,
        "validated_checkpoint_dir_names": [],
        "timed_out_validation_checkpoint_dir_names": [],
        "failed_validation_checkpoint_dir_names": [],
    }
    (run / RAY_SNAPSHOT).write_text(json.dumps(snapshot))
    return run


def test_a_checkpoint_cut_short_or_garbled_is_named_not_loaded(run_with_two_checkpoints):
    ckpt = run_with_two_checkpoints / "checkpoint_b"
    nets = (ckpt / "nets.pt").read_bytes()
    (ckpt / "nets.pt").write_bytes(nets[: len(nets) // 2])
    with pytest.raises(DataError, match=r"checkpoint_b/nets.pt has \d+ bytes, \d+ were written.*cut short"):
        load_checkpoint(ckpt)
    # The right size, damaged in place: zeros; bytes flipped inside the tensors (torch would load other weights).
    for damaged in (b"\0" * len(nets), nets[:-2000] + bytes(b ^ 0x7F for b in nets[-2000:])):
        (ckpt / "nets.pt").write_bytes(damaged)
        with pytest.raises(DataError, match=r"checkpoint_b/nets.pt: its content is not what was written .*damaged"):
            load_checkpoint(ckpt)
    (ckpt / "nets.pt").write_bytes(nets)
    load_checkpoint(ckpt)
    # An RF table edited in place, its size kept (two coordinates of an electrode swapped): other RFs, refused.
    header, first, *rest = (ckpt / "rfs.csv").read_bytes().split(b"\n")
    cells = first.split(b",")
    cells[1], cells[2] = cells[2], cells[1]
    (ckpt / "rfs.csv").write_bytes(b"\n".join([header, b",".join(cells), *rest]))
    with pytest.raises(DataError, match=r"checkpoint_b/rfs.csv: its content is not what was written"):
        load_checkpoint(ckpt)
    (ckpt / "state.json").write_text('{"epoch": 2, "st')
    with pytest.raises(DataError, match=r"checkpoint_b/state.json: cannot read it"):
        load_checkpoint(ckpt)


def test_find_checkpoint_skips_a_damaged_one_and_says_so(run_with_two_checkpoints, capsys):
    run = run_with_two_checkpoints
    assert find_checkpoint(run, "best").endswith("checkpoint_a") and find_checkpoint(run, "last").endswith("_b")
    (run / "checkpoint_a" / "rfs.csv").write_text("electrode_id\n")  # another size than was written
    assert find_checkpoint(run, "best").endswith("checkpoint_b")
    assert "skipping a damaged checkpoint" in capsys.readouterr().err
    (run / "checkpoint_b" / "state.json").unlink()
    with pytest.raises(DataError, match="none is complete"):
        find_checkpoint(run, "last")


def test_resume_point_leaves_a_sound_run_to_ray(run_with_two_checkpoints):
    assert resume_point(str(run_with_two_checkpoints)) is None
    assert resume_point(str(run_with_two_checkpoints.parent / "new-run")) is None


@pytest.mark.parametrize("damage", ["deleted", "cut short", "no snapshot"])
def test_resume_point_falls_back_to_the_newest_complete_checkpoint(run_with_two_checkpoints, damage, capsys):
    run = run_with_two_checkpoints
    if damage == "deleted":
        shutil.rmtree(run / "checkpoint_b")
    elif damage == "cut short":
        (run / "checkpoint_b" / "nets.pt").write_bytes(b"short")
    else:
        (run / RAY_SNAPSHOT).unlink()
    expected = "checkpoint_b" if damage == "no snapshot" else "checkpoint_a"
    assert resume_point(str(run)) == str(run / expected)
    err = capsys.readouterr().err
    assert f"resuming from {run / expected}" in err
    # Ray's snapshot, which would refuse to start or resume from the damaged one, is set aside, not deleted.
    assert not (run / RAY_SNAPSHOT).exists()
    assert (run / (RAY_SNAPSHOT + ".damaged")).exists() == (damage != "no snapshot")


def test_checkpoint_of_another_recording_of_the_same_shape_is_refused(tiny_dataset, tmp_path):
    cfg, info, rfs, gan, opts, _ = trained(tiny_dataset, steps=0)
    save_checkpoint(tmp_path / "c", config=cfg, info=info, rfs=rfs, gan=gan, opts=opts, epoch=0, step=0)
    ckpt = load_checkpoint(tmp_path / "c")
    assert ckpt.check_matches(info, rfs) is None
    moved = dataclasses.replace(rfs, x_deg=rfs.x_deg + 0.5)  # same electrodes, RFs elsewhere
    with pytest.raises(DataError, match="other receptive fields.*--allow-other-rfs"):
        ckpt.check_matches(info, moved)
    assert "RF table differs" in ckpt.check_matches(info, moved, accept=Accept(other_rfs=True))


@pytest.mark.parametrize(
    "change, why",
    [
        ({"metrics": None}, r"metrics is None, not a mapping of metric names to numbers"),
        ({"epoch": "1"}, r"epoch is '1', not a whole number"),
    ],
    ids=["metrics null", "epoch text"],
)
def test_a_state_json_of_the_wrong_types_is_named_and_skipped(run_with_two_checkpoints, capsys, change, why):
    run = run_with_two_checkpoints
    state = json.loads((run / "checkpoint_a" / "state.json").read_text())
    (run / "checkpoint_a" / "state.json").write_text(json.dumps({**state, **change}))
    with pytest.raises(DataError, match=rf"checkpoint_a/state.json: {why}; the checkpoint is damaged"):
        load_checkpoint(run / "checkpoint_a")
    assert find_checkpoint(run, "best").endswith("checkpoint_b")
    assert "skipping a damaged checkpoint" in capsys.readouterr().err


def trained_then_remade(tmp_path, spec):
    """A run of a GAN trained (without Ray) on DATA, then DATA re-made in place by `rfgan synth` with `spec`."""
    data = tmp_path / "data"
    make_synth(data)
    run = make_gan_run(tmp_path / "run", data)
    make_synth(data, spec, overwrite=True)
    return run, data


def resume_args(run, data, *flags):
    return ["train", "--data", str(data), "--preset", "tiny", "--batch-size", "8", "--out", str(run), "--resume"] + [
        *flags
    ]


def test_resume_on_a_dataset_remade_in_place_is_refused_before_ray_starts(tmp_path, capsys):
    run, data = trained_then_remade(tmp_path, dataclasses.replace(TINY, n_train=32))
    before = tree(run)
    # Starting Ray would fail this test (conftest's lane guard): the refusal comes first.
    assert main(resume_args(run, data)) == 2
    err = one_line_error(capsys, "train")
    assert f"{data} is not the dataset the checkpoint was trained on (fingerprint " in err
    assert "rows per split {'train': 32, 'val': 12}, not {'train': 40, 'val': 12}" in err
    assert "other response statistics" in err
    assert "pass --allow-other-data if continuing on this data is intended" in err
    assert tree(run) == before
    # --allow-other-data: said, and the run goes on (to Ray, which this lane leaves to the check alone).
    check_resumed_data(str(run), str(data), (read_info(data), read_rfs(data)), allow_other_data=True)
    assert "note: --allow-other-data: " in capsys.readouterr().err


def test_resume_on_other_rfs_advises_what_train_offers(tmp_path, capsys):
    run, data = trained_then_remade(tmp_path, dataclasses.replace(TINY, seed=TINY.seed + 1))
    for flags in ((), ("--allow-other-data",)):
        assert main(resume_args(run, data, *flags)) == 2
        err = one_line_error(capsys, "train")
        assert "other receptive fields" in err and "train a new run on this one (another --out)" in err
        assert "--allow-other-rfs" not in err  # eval's flag: train has none


def test_eval_on_a_dataset_remade_in_place_is_refused_unless_allowed(tmp_path, capsys):
    run, data = trained_then_remade(tmp_path, dataclasses.replace(TINY, n_train=32))
    assert main(["eval", "--run", str(run), "--data", str(data), "--no-feature-metrics"]) == 2
    err = one_line_error(capsys, "eval")
    assert "is not the dataset the checkpoint was trained on" in err and "rows per split" in err
    assert "pass --allow-other-data if evaluating on it is intended" in err
    assert not (run / "eval_val.json").exists()
    result = evaluate_run(str(run), str(data), feature_metrics=False, allow_other_data=True)
    assert result["warning"].startswith("the data differs from the training data (fingerprint ")
    assert result["data_fingerprint"] == read_info(data).fingerprint
    assert json.loads((run / "eval_val.json").read_text())["warning"] == result["warning"]


def test_resume_with_another_preset_is_refused_before_ray_starts(tmp_path, capsys):
    """Was: the run's config.json replaced by the other preset's, then the nets failed to load inside every Ray
    worker, were retried, and the reason was cut off."""
    data = tmp_path / "data"
    make_synth(data)
    run = make_gan_run(tmp_path / "run", data)  # the tiny preset
    before = tree(run)
    # Starting Ray would fail this test (conftest's lane guard): the refusal comes first.
    assert main(["train", "--data", str(data), "--preset", "default", "--out", str(run), "--resume"]) == 2
    err = one_line_error(capsys, "train")
    assert f"--resume continues {run} as it was configured" in err and "preset='default' (was 'tiny')" in err
    assert "drop --preset/--config" in err and "another --out" in err
    assert tree(run) == before


def test_resume_of_a_baseline_run_says_what_it_is(tmp_path, capsys):
    """Third audit: `train --resume` of a ridge run listed the ridge config's keys as unknown config keys."""
    data = tmp_path / "data"
    make_synth(data)
    run = tmp_path / "ridge"
    assert main(["baseline", "--data", str(data), "--out", str(run), "--no-feature-metrics"]) == 0
    before = tree(run)
    assert main(["train", "--data", str(data), "--preset", "tiny", "--out", str(run), "--resume"]) == 2
    assert "is a run of rfgan baseline (its checkpoint is a ridge decoder)" in one_line_error(capsys, "train")
    assert tree(run) == before


def test_resume_with_a_set_of_the_model_or_an_edited_config_json_is_refused_and_a_lost_one_is_not_needed(
    tmp_path, capsys
):
    """Was: `--resume --set model.ngf=32` rewrote RUN/config.json, then every worker failed to load the nets (and the
    advised `--resume` failed the same way for ever); an edited RUN/config.json did the same; a deleted one fell back
    to the default preset. The checkpoints' own config.json is what the nets were built with."""
    data = tmp_path / "data"
    make_synth(data)
    run = make_gan_run(tmp_path / "run", data)
    before = tree(run)
    resume = ["train", "--data", str(data), "--out", str(run), "--resume"]
    assert main([*resume, "--set", "model.ngf=32"]) == 2  # Ray not started: conftest's lane guard
    err = one_line_error(capsys, "train")
    assert "model.ngf=32 (was 16)" in err and "--set of those" in err
    assert tree(run) == before
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "model": {**config["model"], "ngf": 32}}))  # was 16
    assert main([*resume, "--dry-run"]) == 0
    assert '"ngf": 16' in capsys.readouterr().out  # the checkpoint's, not the edited copy's
    (run / "config.json").unlink()
    assert main([*resume, "--dry-run"]) == 0
    assert "preset 'tiny'" in capsys.readouterr().out


def test_resume_without_a_preset_takes_the_runs_own_config_and_the_flags_given(tmp_path, capsys):
    data = tmp_path / "data"
    make_synth(data)
    run = make_gan_run(tmp_path / "run", data)
    own = json.loads((run / "config.json").read_text())
    assert main(["train", "--data", str(data), "--out", str(run), "--resume", "--epochs", "7", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    shown = json.loads(printed[printed.index("{") : printed.index("\ngenerator:")])
    assert shown == {**own, "data": {**own["data"], "path": str(data)}, "run": {**own["run"], "epochs": 7}}


def test_a_sweep_is_resumed_only_on_the_data_its_trials_were_trained_on(
    run_with_two_checkpoints, tiny_dataset, tmp_path
):
    """`rfgan tune --resume` checks every trial's newest checkpoint before Ray starts (the workers' own check would
    end each unfinished trial ERROR, one by one), with advice for a sweep, not train's flags."""
    from rfgan.sweep.runner import check_trials_data

    sweep = tmp_path / "sweep"
    (sweep / "trials").mkdir(parents=True)
    shutil.move(run_with_two_checkpoints, sweep / "trials" / "train-abc12")
    (sweep / "trials" / "train-def34").mkdir()  # a trial that had not reached its first checkpoint
    check_trials_data(str(sweep), str(tiny_dataset), (read_info(tiny_dataset), read_rfs(tiny_dataset)))
    remade = tmp_path / "remade"
    make_synth(remade, dataclasses.replace(TINY, n_train=TINY.n_train + 8))  # the same RFs, more rows
    with pytest.raises(DataError) as e:
        check_trials_data(str(sweep), str(remade), (read_info(remade), read_rfs(remade)))
    message = str(e.value)
    assert message.startswith("--resume: ") and "(trial abc12)" in message and "\n" not in message
    assert "resume the sweep on the data its trials were trained on" in message and "--allow-other" not in message


def test_train_into_a_dataset_a_file_or_a_folder_of_other_things_is_refused_before_ray(tmp_path, capsys):
    """Was: a run written into the dataset's folder (or its train/ split), which `synth --overwrite` later deleted
    with the dataset; a run written among a user's own files; `[Errno 17] File exists` for a file."""
    data = tmp_path / "data"
    make_synth(data)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    (tmp_path / "afile").write_text("keep")
    kept = tree(tmp_path)
    train = ["train", "--data", str(data), "--preset", "tiny", "--epochs", "1"]
    for out, message in (
        (data, f"--out {data} is the dataset {data}: "),
        (data / "train", f"is inside the dataset {data}: "),
        (data / "new" / "run", f"is inside the dataset {data}: "),
        (other, f"--out {other} already exists and is not an rfgan training run"),
        (tmp_path / "afile", f"--out {tmp_path / 'afile'} is a file, not a folder"),
    ):
        assert main([*train, "--out", str(out)]) == 2  # Ray not started: conftest's lane guard
        assert message in one_line_error(capsys, "train")
    assert tree(tmp_path) == kept


def test_a_checkpoint_of_another_run_is_refused(run_with_two_checkpoints, tmp_path):
    """Was: `eval --run RUN --checkpoint OTHER/checkpoint_…` wrote the other run's scores as RUN/eval_val.json."""
    run = run_with_two_checkpoints
    assert find_checkpoint(run, str(run / "checkpoint_a")).endswith("checkpoint_a")
    other = tmp_path / "other"
    shutil.copytree(run, other)
    with pytest.raises(DataError, match=rf"--checkpoint {other}/checkpoint_a is not a checkpoint of --run {run}: "):
        find_checkpoint(run, str(other / "checkpoint_a"))
