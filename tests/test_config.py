import dataclasses
import json
import subprocess
import sys

import pytest

from rfgan.config import PRESETS, Config, ConfigError, flatten, load_config, preset, resolve
from rfgan.errors import UsageError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_and_round_trip(name):
    cfg = preset(name)
    assert cfg.preset == name
    assert Config.from_dict(json.loads(cfg.to_json())) == cfg


def test_reference_presets_hold_the_reference_numbers():
    ref, noise, masked = preset("reference"), preset("reference-noise"), preset("rfmasked")
    assert (ref.model.generator, ref.model.discriminator, ref.model.ndf) == ("reference", "reference", 18)
    assert (ref.loss.lambda_adv, ref.loss.lambda_vgg, ref.loss.lambda_pix) == (1.0, 2.0, 0.0)
    assert (ref.optim.lr_g, ref.optim.lr_d, ref.optim.beta1, ref.optim.beta2) == (2e-4, 2e-4, 0.8, 0.999)
    assert ref.optim.batch_size == 64 and not ref.data.with_noise
    assert noise.data.with_noise and (noise.loss.lambda_adv, noise.loss.lambda_vgg) == (0.05, 1.0)
    assert noise.optim.batch_size == 32
    assert masked.data.mask and not masked.adversarial
    assert (masked.loss.lambda_pix, masked.loss.pixel) == (0.1, "mse")
    assert ref.loss.vgg_layer_weights == (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    # Issue 14 (docs/fidelity.md): masked, raw responses, maps summing to 1 over the field, the original layout
    for cfg in (ref, noise, masked):
        assert (cfg.data.mask, cfg.data.standardize, cfg.data.rf_norm) == (True, False, "sum_full")
        assert not cfg.optim.second_g_forward
    assert (ref.model.init, ref.model.dropout, masked.model.init, masked.model.dropout) == (
        "original",
        0.5,
        "default",
        0,
    )


def test_default_and_tiny_presets_keep_their_behaviour():
    for name in ("default", "tiny"):
        cfg = preset(name)
        assert (cfg.data.mask, cfg.data.standardize, cfg.data.rf_norm) == (False, True, "peak")
        assert (cfg.model.generator, cfg.model.init, cfg.model.d_condition) == ("unet", "dcgan", "mean")
        assert not cfg.optim.second_g_forward


def test_unknown_keys_are_errors_that_list_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['loss.lambda_gan'\].*lambda_adv"):
        Config.from_dict({"loss": {"lambda_gan": 1.0}})
    with pytest.raises(ConfigError, match="unknown config key 'optim.lr'"):
        preset("tiny").with_overrides({"optim.lr": 1e-3})
    with pytest.raises(ConfigError, match="unknown config key 'trainer'"):
        preset("tiny").with_overrides({"trainer.lr": 1e-3})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"optim.lr_g": -1.0}, "lr_g"),
        ({"loss.lambda_adv": 0, "loss.lambda_vgg": 0, "loss.lambda_pix": 0}, "at least one loss weight"),
        ({"model.generator": "resnet"}, "model.generator"),
        ({"loss.adversarial": "hinge"}, "loss.adversarial"),
        ({"model.dropout": 1.5}, "dropout"),
        ({"optim.batch_size": 2.5}, "must be an integer"),
        ({"optim.batch_size": "many"}, "must be an integer"),
        ({"data.mask": "yes"}, "true or false"),
        ({"model.conditional_d": True, "model.discriminator": "reference"}, "conditional_d"),
        ({"data.rf_norm": "max"}, "data.rf_norm must be one of"),
        ({"model.norm": "group"}, "model.norm must be one of"),
        ({"model.init": "xavier"}, "model.init must be one of"),
        ({"model.d_condition": "image"}, "model.d_condition must be one of"),
        ({"run.use_gpu": True, "run.workers": 2, "run.gpus_per_worker": 0.5}, "would share a GPU, which NCCL refuses"),
    ],
)
def test_impossible_values_are_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        preset("default").with_overrides(overrides)


def test_fractional_gpus_are_for_one_worker_runs():
    one = preset("default").with_overrides({"run.use_gpu": True, "run.gpus_per_worker": 0.5})
    assert one.run.workers == 1 and one.run.gpus_per_worker == 0.5
    whole = {"run.use_gpu": True, "run.workers": 2, "run.gpus_per_worker": 1}
    assert preset("default").with_overrides(whole).run.workers == 2
    # Without use_gpu the fraction is never asked of Ray.
    assert not preset("default").with_overrides({**whole, "run.use_gpu": False, "run.gpus_per_worker": 0.5}).run.use_gpu


def test_replace_revalidates():
    with pytest.raises(ConfigError):
        dataclasses.replace(preset("default").optim, d_steps=0)


def test_overrides_coerce_cli_strings():
    cfg = preset("tiny").with_overrides({"loss.lambda_adv": "0.5", "data.with_noise": "true", "run.epochs": "7"})
    assert cfg.loss.lambda_adv == 0.5 and cfg.data.with_noise is True and cfg.run.epochs == 7


def test_load_yaml_and_json_on_top_of_a_preset(tmp_path):
    (tmp_path / "c.yaml").write_text("preset: reference\nloss:\n  lambda_vgg: 3.0\noptim:\n  lr_d: 1.0e-4\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.model.generator == "reference" and cfg.loss.lambda_vgg == 3.0 and cfg.optim.lr_d == 1e-4
    assert cfg.loss.lambda_adv == 1.0  # kept from the preset
    (tmp_path / "c.json").write_text(preset("rfmasked").to_json())
    assert load_config(tmp_path / "c.json") == preset("rfmasked")
    (tmp_path / "bad.json").write_text('{"loss": {"lambda": 1}}')
    with pytest.raises(ConfigError, match="bad.json: unknown config key"):
        load_config(tmp_path / "bad.json")


def test_config_needs_no_torch():
    # The CLI resolves and prints configs, and the sweep builds its space, before anything trains.
    code = "import sys, rfgan.config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_flatten_and_get_address_fields_by_dotted_key():
    cfg = preset("reference")
    flat = flatten(cfg.to_dict())
    assert flat["loss.lambda_vgg"] == 2.0 and flat["model.g_widths"] == (64, 128, 256, 512, 512)
    assert flat["preset"] == "reference" and "loss" not in flat
    assert flatten({"loss": {"lambda_adv": 0.5}, "optim.lr_g": 1e-4}) == {"loss.lambda_adv": 0.5, "optim.lr_g": 1e-4}
    assert cfg.get("optim.beta1") == 0.8 and cfg.get("data.path") is None
    with pytest.raises(ConfigError, match="unknown config key 'optim.lr'; valid keys here: .*'lr_d'"):
        cfg.get("optim.lr")


def test_overrides_may_be_nested_but_not_replace_a_section():
    cfg = preset("reference").with_overrides({"loss": {"lambda_adv": 0.5}})
    assert cfg.loss.lambda_adv == 0.5 and cfg.loss.lambda_vgg == 2.0  # the rest of the section is kept
    with pytest.raises(ConfigError, match="'loss' is a section"):
        preset("reference").with_overrides({"loss": 0.5})
    with pytest.raises(ConfigError, match="unknown config key 'loss.lambda_adv' in 'loss.lambda_adv.x'"):
        preset("reference").with_overrides({"loss.lambda_adv.x": 0.5})


def test_resolve_applies_preset_then_sets_then_flag_overrides():
    assert resolve() == preset("default")
    assert resolve(default_preset="tiny") == preset("tiny")
    cfg = resolve(
        preset="reference",
        sets=[
            "loss.lambda_adv=0.5",
            "model.g_widths=[8, 8, 8, 8, 8]",
            " data.path = some/dir ",
            "loss.vgg_weights=null",
            "run.epochs=3",
        ],
        overrides={"run.epochs": 4, "run.workers": None, "optim.batch_size": 16},
    )
    assert cfg.preset == "reference" and cfg.model.generator == "reference"
    assert cfg.loss.lambda_adv == 0.5 and cfg.model.g_widths == (8, 8, 8, 8, 8)
    assert cfg.data.path == "some/dir" and cfg.loss.vgg_weights is None
    assert cfg.run.epochs == 4  # a flag beats --set
    assert cfg.run.workers == 1 and cfg.optim.batch_size == 16  # None: a flag not given


def test_resolve_starts_from_a_config_file(tmp_path):
    (tmp_path / "c.yaml").write_text("preset: rfmasked\noptim:\n  lr_g: 1.0e-3\n")
    cfg = resolve(config_file=tmp_path / "c.yaml", sets=["optim.lr_d=5e-4"], default_preset="tiny")
    assert cfg.preset == "rfmasked" and cfg.data.mask and (cfg.optim.lr_g, cfg.optim.lr_d) == (1e-3, 5e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"preset": "tiny", "config_file": "c.json"}, "--preset or --config, not both"),
        ({"sets": ["loss.lambda_adv"]}, "--set needs KEY=VALUE, got 'loss.lambda_adv'"),
    ],
)
def test_command_line_mistakes_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        resolve(**kwargs)


def test_resolve_reports_bad_keys_and_values_as_config_errors():
    with pytest.raises(ConfigError, match="unknown config key 'loss.lambda'"):
        resolve(sets=["loss.lambda=1"])
    with pytest.raises(ConfigError, match="optim.batch_size must be an integer"):
        resolve(sets=["optim.batch_size=many"])
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        resolve(preset="nope")


@pytest.mark.parametrize(
    "key, value",
    [
        ("optim.lr_g", "Infinity"),
        ("optim.lr_d", float("nan")),
        ("loss.lambda_adv", float("inf")),
        ("run.epochs", float("inf")),
    ],
)
def test_impossible_numbers_are_refused(key, value):
    with pytest.raises(ConfigError, match=rf"{key} must be (a finite number|an integer)"):
        preset("default").with_overrides({key: value})


def test_an_unknown_preset_in_a_config_file_names_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: nope\n")
    with pytest.raises(ConfigError, match=r"run.yaml: unknown preset 'nope'"):
        load_config(path)


def test_precision_defaults_to_auto():
    assert Config().optim.precision == "auto"
    with pytest.raises(ConfigError, match="optim.precision must be one of"):
        Config().with_overrides({"optim.precision": "fp16"})
    # The switch it replaced is no key of the config (rfgan has no released version whose configs would need it).
    with pytest.raises(ConfigError, match=r"unknown config key.*optim.bf16.*precision"):
        Config.from_dict({"optim": {"bf16": True}})


def test_changes_from_lists_what_differs_from_the_base():
    tiny = preset("tiny")
    assert tiny.changes_from(tiny) == {}
    changed = tiny.with_overrides({"run.epochs": 2, "loss.lambda_adv": 0.5})
    assert changed.changes_from(tiny) == {"loss.lambda_adv": 0.5, "run.epochs": 2}


@pytest.mark.parametrize(
    "sets, message",
    [
        # Each was accepted by --dry-run and failed only inside a Ray Train worker, after Ray had started.
        (["run.seed=1e23"], r"run.seed must be in \[0, 2\*\*32\), got 99999999999999991611392"),
        (["run.seed=-1"], r"run.seed must be in \[0, 2\*\*32\)"),
        (["model.generator=reference", "model.g_widths=[0,8,8,8,8]"], r"model.g_widths \[0, 8, 8, 8, 8\] .* >= 1"),
        (["model.g_convs_per_block=[2,0,3,3,3]"], r"model.g_convs_per_block \[2, 0, 3, 3, 3\] must be >= 1"),
    ],
)
def test_settings_that_would_fail_only_in_a_worker_are_refused_by_the_config(sets, message):
    with pytest.raises(ConfigError, match=message):
        resolve(preset="tiny", sets=sets)


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    # Nine levels of nine aliases: under 1 kB of YAML, 9**9 leaves once walked (rfgan's flatten walked them all:
    # `--dry-run` never returned and its memory grew by ~23 MB/s).
    lines = ["a0: &a0 {x: 1, y: 2, z: 3, u: 4, v: 5, w: 6, p: 7, q: 8, r: 9}"]
    for k in range(1, 9):
        refs = ", ".join(f"k{i}: *a{k - 1}" for i in range(9))
        lines.append(f"a{k}: &a{k} {{{refs}}}")
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    assert (tmp_path / "bomb.yaml").stat().st_size < 1000
    done = subprocess.run(
        [sys.executable, "-m", "rfgan", "train", "--config", str(tmp_path / "bomb.yaml"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "an alias (*a0) is not allowed: write the value out" in done.stderr


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("utf16.yaml", "loss:\n  lambda_adv: 0.5\n".encode("utf-16"), r"cannot read it as UTF-8 text \(it looks like "),
        (
            "twice.yaml",
            b"loss:\n  lambda_adv: 0.5\n  lambda_adv: 2\n",
            r"cannot parse .* line 3, column 3: the key 'lambda_adv' is given twice",
        ),
        ("twice.json", b'{"loss": {"lambda_adv": 0.5, "lambda_adv": 2}}', r"the key 'lambda_adv' is given twice"),
        ("typo.yaml", b"loss:\n  lambda_adv: [0.5\n", r"cannot parse it as YAML at line 3, column 1: "),
    ],
    ids=["UTF-16", "duplicate YAML key", "duplicate JSON key", "YAML typo"],
)
def test_config_files_that_cannot_mean_one_thing_are_one_line(tmp_path, capsys, name, data, message):
    from rfgan.cli import main

    (tmp_path / name).write_bytes(data)
    with pytest.raises(ConfigError, match=rf"{name}: {message}") as err:
        load_config(tmp_path / name)
    assert "\n" not in str(err.value)
    assert main(["train", "--config", str(tmp_path / name), "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("rfgan train: error: ")


def test_a_search_space_with_a_yaml_typo_is_one_line(tmp_path):
    from rfgan.sweep.space import load_space

    (tmp_path / "space.yaml").write_text("loss.lambda_adv: {low: 0.001, high: 1.0\noptim.lr_g: {low: 1e-5}\n")
    with pytest.raises(ConfigError, match=r"space.yaml: cannot parse it as YAML at line 2, column 11: ") as err:
        load_space(tmp_path / "space.yaml")
    assert "\n" not in str(err.value)
