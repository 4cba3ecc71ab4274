import pytest

from rfgan.config import ConfigError, preset
from rfgan.data.format import read_info, read_rfs
from rfgan.errors import MissingVGGWeightsError
from rfgan.gan.build import build_gan, check_compatible


def test_image_size_the_generator_cannot_round_trip_is_refused(tiny_dataset):
    info = read_info(tiny_dataset)  # 32×32
    check_compatible(preset("tiny"), info)
    with pytest.raises(ConfigError, match=r"images are 32x32 but the unet generator needs sides divisible by 64"):
        check_compatible(preset("tiny").with_overrides({"model.n_down": 6}), info)


def test_missing_vgg_weights_fail_before_training_with_instructions(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingVGGWeightsError, match=r"(?s)not found.*IMAGENET1K_V1.*TORCH_HOME"):
        build_gan(preset("default").with_overrides({"model.ngf": 4}), read_info(tiny_dataset), read_rfs(tiny_dataset))


def test_inference_builds_neither_d_nor_vgg_and_the_same_g(tiny_dataset):
    import torch

    info, rfs, cfg = read_info(tiny_dataset), read_rfs(tiny_dataset), preset("tiny")
    torch.manual_seed(0)
    full = build_gan(cfg, info, rfs)
    torch.manual_seed(0)
    bare = build_gan(cfg, info, rfs, with_vgg=False, with_d=False)
    assert full.discriminator is not None and bare.discriminator is None and bare.vgg is None
    for a, b in zip(full.generator.state_dict().values(), bare.generator.state_dict().values()):
        assert torch.equal(a, b)


def test_precision_auto_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    import torch

    from rfgan.gan import build

    cfg = preset("tiny")
    assert build.autocast_dtype(cfg.with_overrides({"optim.precision": "fp32"}), "cpu") is None
    assert build.autocast_dtype(cfg.with_overrides({"optim.precision": "bf16"}), "cpu") is torch.bfloat16
    for native in (True, False):
        monkeypatch.setattr(build, "native_bf16", lambda kind, native=native: native)
        assert build.autocast_dtype(cfg, "cpu") is (torch.bfloat16 if native else None)
