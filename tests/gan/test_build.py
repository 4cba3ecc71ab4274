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


@pytest.mark.parametrize("major, bf16", [(7, False), (8, True)])
def test_precision_auto_is_fp32_on_a_gpu_that_only_emulates_bf16(monkeypatch, major, bf16):
    """A V100 (7.0) or T4 (7.5) makes bf16 tensors, so torch.cuda.is_bf16_supported() says yes by default, but it
    multiplies them slower than fp32; an A100 (8.0) has bf16 units. There is no GPU here: torch's own device queries
    (is_available, current_device, get_device_properties, and whether a bf16 tensor can be made) are patched to
    answer as such a GPU does, and torch's real is_bf16_supported runs on their answers."""
    import types

    import torch

    from rfgan.gan import build

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: types.SimpleNamespace(major=major))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
    monkeypatch.setattr(torch.version, "hip", None)
    assert torch.cuda.is_bf16_supported()  # emulation counts by default
    build.native_bf16.cache_clear()
    try:
        assert build.autocast_dtype(preset("tiny"), "cuda") is (torch.bfloat16 if bf16 else None)
    finally:
        build.native_bf16.cache_clear()  # nothing learnt from the patched device stays for other tests
