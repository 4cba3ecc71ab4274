import numpy as np
import pytest

from rfgan.cli import main
from rfgan.data.format import read_info, read_split


@pytest.mark.parametrize(
    "command, options",
    [
        (
            "synth",
            ["--out", "--n-train", "--n-val", "--electrodes", "--size", "--color", "--gray", "--seed", "--noise"],
        ),
        ("ingest", ["--responses", "--images", "--rfs", "--fov-deg", "--out", "--drop-bad-rows", "--electrode-axis"]),
        ("ingest-tvsd", ["--mua", "--imgs", "--image-root", "--train-key", "--min-reliability", "--areas", "--crop"]),
        ("ingest-nwb", ["--nwb", "--responses", "--window", "--area-window", "--rf-columns", "--stimulus"]),
        ("check", ["--data"]),
        ("eval", ["--run", "--data", "--split", "--no-feature-metrics", "--allow-other-rfs", "AlexNet"]),
        ("baseline", ["--data", "--out", "--json", "--device", "--no-feature-metrics", "ridge"]),
        ("report", ["--run", "--compare", "--out", "--split"]),
    ],
)
def test_help_explains_the_options(command, options, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps to the terminal's width, which pytest's may not have
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for option in options:
        assert option in out


@pytest.mark.parametrize("command", ["train", "tune", "bench"])
def test_preset_choices_are_the_presets_themselves(command, capsys, monkeypatch):
    """--preset lists, and accepts, exactly the presets that exist: the choices come from the one table of them."""
    from rfgan.bench.presets import BENCH_PRESETS
    from rfgan.config import PRESETS

    presets = BENCH_PRESETS if command == "bench" else PRESETS
    monkeypatch.setenv("COLUMNS", "400")  # the choices on one line
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "{" + ",".join(sorted(presets) if command != "bench" else presets) + "}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        main([command, "--preset", "nope"])
    assert refused.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


def test_synth_command_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "ds"
    code = main(
        [
            "synth",
            "--out",
            str(out),
            "--n-train",
            "20",
            "--n-val",
            "5",
            "--electrodes",
            "9",
            "--arrays",
            "3",
            "--size",
            "32",
            "--gray",
            "--seed",
            "7",
            "--quiet",
        ]
    )
    assert code == 0
    info = read_info(out)
    assert info.splits == {"train": 20, "val": 5} and info.channels == 1 and info.n_electrodes == 9
    assert "wrote" in capsys.readouterr().out
    assert main(["synth", "--out", str(out), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_synth_writes_to_a_uri_like_a_bucket(tmp_path, capsys):
    # file:// goes through pyarrow's filesystem layer, the code path of s3:// and gs:// (staged, metadata last).
    uri = (tmp_path / "bucket" / "ds").as_uri()
    small = ["--n-train", "12", "--n-val", "4", "--electrodes", "6", "--arrays", "2", "--size", "16", "--quiet"]
    assert main(["synth", "--out", uri, *small]) == 0
    first = read_split(uri, "train")
    assert read_info(uri).splits == {"train": 12, "val": 4} and first["image"].shape == (12, 16, 16, 3)
    assert f"wrote {uri}" in capsys.readouterr().out
    assert main(["synth", "--out", uri, *small]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["synth", "--out", uri, *small, "--seed", "3", "--overwrite"]) == 0
    assert read_info(uri).source["seed"] == 3
    assert not np.array_equal(read_split(uri, "train")["image"], first["image"])
    assert not list((tmp_path / "bucket").glob(".*"))  # nothing staged is left beside it


def test_ingest_command_reports_bad_input_without_traceback(tmp_path, capsys):
    np.save(tmp_path / "r.npy", np.zeros((4, 3), np.float32))
    np.save(tmp_path / "i.npy", np.zeros((4, 8, 8), np.uint8))
    (tmp_path / "rfs.csv").write_text("electrode_id,x_deg,y_deg,sigma_deg\n0,0,0,1\n1,0,0,1\n")
    code = main(
        [
            "ingest",
            "--responses",
            str(tmp_path / "r.npy"),
            "--images",
            str(tmp_path / "i.npy"),
            "--rfs",
            str(tmp_path / "rfs.csv"),
            "--fov-deg",
            "4",
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("rfgan ingest: error:")
    assert "r.npy has shape (4, 3) but" in err and "neither its first nor its last axis" in err
    assert not (tmp_path / "o").exists()


def test_check_command_reads_every_split(ray_session, tiny_dataset, capsys):
    assert main(["check", "--data", str(tiny_dataset), "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "train: 40 rows read through Ray Data" in out and "generator input (16, 12, 32, 32)" in out
    assert read_split(tiny_dataset, "val")["image"].shape == (12, 32, 32, 3)


def test_an_unwritable_output_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    code = main(["synth", "--out", str(tmp_path / "a-file" / "ds"), "--n-train", "4", "--n-val", "2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("rfgan synth: error:") and "a-file" in err and "Traceback" not in err


def test_usage_mistakes_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "c.json").write_text("{}")
    assert main(["train", "--preset", "tiny", "--config", str(tmp_path / "c.json"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rfgan train: error: give --preset or --config, not both") and "Traceback" not in err
    assert main(["tune", "--set", "loss.lambda_adv", "--out", str(tmp_path / "sweep")]) == 2
    assert capsys.readouterr().err.startswith("rfgan tune: error: --set needs KEY=VALUE, got 'loss.lambda_adv'")
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("command", ["check", "train", "tune"])
def test_an_address_where_nothing_answers_is_refused_in_seconds(tiny_dataset, tmp_path, capsys, monkeypatch, command):
    """Third audit: `--address 127.0.0.1:PORT` with no Ray there waited for minutes (check, train) with only Ray's
    warnings, and train left its lease and log."""
    import socket
    import time

    from conftest import one_line_error

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "out"
    argv = {
        "check": ["check", "--data", str(tiny_dataset)],
        "train": ["train", "--data", str(tiny_dataset), "--preset", "tiny", "--out", str(out)],
        "tune": ["tune", "--data", str(tiny_dataset), "--preset", "tiny", "--out", str(out)],
    }[command]
    start = time.monotonic()
    assert main([*argv, "--address", f"127.0.0.1:{port}"]) == 2
    assert time.monotonic() - start < 30
    assert f"nothing answers at --address 127.0.0.1:{port} (Connection refused)" in one_line_error(capsys, command)
    assert not out.exists()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    assert main(argv) == 2
    assert "nothing answers at $RAY_ADDRESS" in one_line_error(capsys, command)
    assert main([*argv, "--address", "127.0.0.1:port"]) == 2
    assert "'port' is not a port" in one_line_error(capsys, command)
