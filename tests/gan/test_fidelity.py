"""The reference presets reproduce lelynn/RF_GANsynth and lelynn/RFmasked (docs/fidelity.md): the generator's layer
list, parameter count and dropout places, the residual ReLU, the RF mask in all four places, the input scale, and
the 240-pixel round trip. File:line references are to those repositories."""

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from rfgan.config import preset
from rfgan.data.rf import RFTable, rf_maps, rf_mask
from rfgan.gan.build import build_gan, build_optimizers, check_compatible
from rfgan.gan.models import ReferenceGenerator, _ResidualBlock, count_parameters
from rfgan.gan.rf_input import RFProjection
from rfgan.gan.step import train_step

SMALL = dict(widths=(8, 8, 16, 16, 16), n_res=1)


def _original_convs(c_in: int) -> list[tuple[int, int, bool]]:
    """(in, out, bias) of every conv of model_file.py's ResblocksDeconv, in forward order (lines 8-150)."""
    encoder = [(c_in, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)]
    encoder += [(256, 512)] + [(512, 512)] * 5
    decoder = [(512, 512)] * 5 + [(512, 256), (256, 256), (256, 256), (256, 128), (128, 128), (128, 64)]
    decoder += [(64, 32), (32, 3)]
    residual = [(512, 512, False)] * 10  # conv1, conv2 of 5 residual blocks, bias=False (model_file.py:286-287)
    return [(a, b, True) for a, b in encoder] + residual + [(a, b, True) for a, b in decoder]


def test_original_layout_has_the_originals_layers_and_53_136_835_parameters():
    g = ReferenceGenerator(191)
    convs = [(m.in_channels, m.out_channels, m.bias is not None) for m in g.modules() if isinstance(m, nn.Conv2d)]
    assert convs == _original_convs(191)
    assert all(m.kernel_size == (3, 3) and m.padding == (1, 1) for m in g.modules() if isinstance(m, nn.Conv2d))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in g.modules()) == len(convs) - 1  # none after the last conv
    assert count_parameters(g) == 53_136_835


def _call_order(g: nn.Module, x: torch.Tensor) -> list[str]:
    """The leaf layers a forward pass calls, in order, as type names (dropout with its p)."""
    calls: list[str] = []
    leaves = [m for m in g.modules() if not list(m.children())]
    hooks = [
        m.register_forward_hook(
            lambda m, i, o: calls.append(f"Dropout({m.p})" if isinstance(m, nn.Dropout) else type(m).__name__)
        )
        for m in leaves
    ]
    g(x)
    for h in hooks:
        h.remove()
    return [c for c in calls if c not in ("Identity", "BatchNorm2d", "ReLU", "Conv2d", "RFConv2d")]


def test_original_layout_drops_out_after_pools_1_to_4_and_unpools_5_to_2():
    # model_file.py:167,177,190,203 (after pools) and 224,236,248,261 (after unpools): 8 layers, p = 0.5
    order = _call_order(ReferenceGenerator(3, **SMALL).train(), torch.randn(2, 3, 32, 32))
    pool, unpool, drop = "MaxPool2d", "MaxUnpool2d", "Dropout(0.5)"
    assert order == [pool, drop] * 4 + [pool] + [unpool, drop] * 4 + [unpool]


def test_rfmasked_generator_has_no_dropout_and_pytorch_default_init(tiny_dataset):
    from rfgan.data.format import read_info, read_rfs

    cfg = preset("rfmasked")
    assert (cfg.model.dropout, cfg.model.init) == (0.0, "default")
    assert (cfg.optim.lr_g, cfg.optim.beta1, cfg.optim.beta2, cfg.optim.batch_size) == (1e-3, 0.9, 0.999, 4)
    torch.manual_seed(0)
    gan = build_gan(cfg, read_info(tiny_dataset), read_rfs(tiny_dataset), with_vgg=False)
    assert not [m for m in gan.generator.modules() if isinstance(m, nn.Dropout) and m.p > 0]
    first = gan.generator.encoder[0].convs[0][0]
    bound = 1 / np.sqrt(first.in_channels * 9)  # PyTorch's default: kaiming_uniform(a=√5) → U(±1/√fan_in)
    assert first.weight.abs().max() <= bound and first.weight.abs().max() > 0.9 * bound


def test_residual_block_ends_with_a_relu_in_the_original_layout():
    torch.manual_seed(0)
    block = _ResidualBlock(4).eval()
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        y = block(x)
        assert torch.equal(y, torch.relu(x + block.body(x)))  # relu(bn2(conv2(·)) + x): model_file.py:74-78
    assert (y == 0).any() and (y >= 0).all()


def test_segnet_generator_round_trips_240_pixels():
    # RFmasked trains on 240×240 (RFconfidence_mask_split.py:40): 240 → 120 → 60 → 30 → 15 → 7 and back
    g = ReferenceGenerator(3, **SMALL)
    assert g(torch.randn(2, 3, 240, 240)).shape == (2, 3, 240, 240)
    for name in ("reference", "rfmasked"):
        check_compatible(preset(name), SimpleNamespace(image_size=(240, 240)))  # no divisibility asked


def _original_rfs(n: int = 24, seed: int = 0) -> tuple[RFTable, np.ndarray]:
    """RFs as RF_module.py makes them: a fit's `std` (degrees) gives maps of sd √std and masks of radius std."""
    rng = np.random.default_rng(seed)
    std = rng.uniform(0.5, 1.5, n)
    table = RFTable(
        np.arange(n), rng.uniform(-2, 2, n), rng.uniform(-2, 2, n), np.sqrt(std), mask_radius_deg=std.copy()
    )
    return table, std


def test_input_scale_is_the_originals_raw_responses_times_maps_summing_to_1_over_the_field():
    # RF_module.py:108-135 on the originals' geometry: 96 px over 8°, Σ = diag(std) so sd √std, normalised over
    # the whole 20° grid before the crop: the peak is the pixel area / (2π std), about 1e-3
    rfs, std = _original_rfs()
    maps = rf_maps(rfs, (96, 96), 8.0, norm="sum_full")
    np.testing.assert_allclose(maps.max(axis=(1, 2)), (8 / 96) ** 2 / (2 * np.pi * std), rtol=2e-2)
    assert 4e-4 < maps.max() < 3e-3
    cfg = preset("reference-noise")
    assert (cfg.data.standardize, cfg.data.rf_norm, cfg.data.with_noise) == (False, "sum_full", True)
    projection = RFProjection.from_table(rfs, (96, 96), 8.0, norm=cfg.data.rf_norm, with_noise=True)
    # The originals' synthetic signal: each electrode's map · the image, summed over colours (synthetic_fun.py:47)
    images = torch.rand(8, 3, 96, 96)
    responses = torch.einsum("ehw,bhw->be", torch.from_numpy(maps), images.sum(1))
    x = projection(responses)
    signal, noise = x[:, :-1], x[:, -1]
    ratio = noise.std() / signal.abs().amax(dim=(1, 2, 3)).mean()
    assert ratio > 100  # the noise channel dwarfs the signal, as in the original (about 400×)
    standardized = RFProjection.from_table(
        rfs, (96, 96), 8.0, with_noise=True, mean=responses.mean(0).numpy(), std=responses.std(0).numpy()
    )(responses)
    assert standardized[:, -1].std() / standardized[:, :-1].abs().amax(dim=(1, 2, 3)).mean() < 3  # rfgan's default


def test_mask_radius_and_map_width_are_separate_rf_table_quantities(tmp_path):
    rfs = RFTable(np.array([0]), np.array([0.0]), np.array([0.0]), np.array([0.5]), mask_radius_deg=np.array([2.0]))
    mask = rf_mask(rfs, (96, 96), 8.0)
    assert mask.sum() == pytest.approx(np.pi * (2.0 * 12) ** 2, rel=0.05)  # radius 2°, not the map's 0.5°
    rfs.to_csv(tmp_path / "rfs.csv")
    back = RFTable.from_csv(tmp_path / "rfs.csv")
    assert back.equals(rfs) and RFTable.from_dict(rfs.to_dict()).equals(rfs)


@pytest.mark.parametrize("name", ["reference", "reference-noise"])
def test_gan_presets_mask_target_and_output_before_d_and_vgg(problem, name):
    # SynthGAN_96_DO2.py:157,180,207 and SynthGAN_Noise.py:164,187,215: D(real), D(fake) twice and VGG both sides
    info, rfs, responses, target = problem
    cfg = preset(name).with_overrides(
        {"model.g_widths": [8, 16, 16], "model.g_convs_per_block": [2, 1, 1], "model.n_res": 1, "model.ndf": 8,
         "loss.vgg_random_init": True, "data.mask_radius_sigmas": 0.5}
    )  # fmt: skip
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "VGGFeatures.random_init")
        gan = build_gan(cfg, info, rfs)
    outside = gan.mask[0, 0] == 0
    assert outside.any() and not outside.all()
    seen = {"D": [], "VGG": []}
    for net, key in ((gan.discriminator, "D"), (gan.vgg, "VGG")):
        net.register_forward_pre_hook(lambda m, args, key=key: seen[key].append(args[0].detach().clone()))
    train_step(gan, build_optimizers(cfg, gan), responses, target, cfg)
    assert len(seen["D"]) == 3 and len(seen["VGG"]) == 2  # real, fake for D, fake for G; fake and target
    for image in seen["D"] + seen["VGG"]:
        assert image[..., outside].abs().max() == 0 and image[..., ~outside].abs().max() > 0


def test_second_g_forward_runs_g_again_for_its_update(problem):
    info, rfs, responses, target = problem
    base = preset("tiny").with_overrides({"model.ngf": 8, "model.n_down": 3, "model.ndf": 8})
    for second, forwards in ((False, 1), (True, 2)):
        cfg = base.with_overrides({"optim.second_g_forward": second})
        torch.manual_seed(0)
        gan = build_gan(cfg, info, rfs)
        calls = []
        gan.generator.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        train_step(gan, build_optimizers(cfg, gan), responses, target, cfg)
        assert len(calls) == forwards


def test_monkeysee_preset_has_one_channel_per_array_of_mean_responses_at_rf_pixels(problem):
    # train_spatial.py:50-71 (array channels, pixel-wise mean over the array), :111-121 (0.01 / 1 / 0.5, batch 8),
    # generator_vgg.py:187-198 (no dropout), :230-233 and discriminator.py:102 (Adam 2e-4, β1 0.5), :127 (D on the
    # input stack with the image)
    cfg = preset("monkeysee")
    assert (cfg.loss.lambda_adv, cfg.loss.lambda_vgg, cfg.loss.lambda_pix, cfg.loss.pixel) == (0.01, 1.0, 0.5, "l1")
    assert (cfg.optim.lr_g, cfg.optim.lr_d, cfg.optim.beta1, cfg.optim.batch_size) == (2e-4, 2e-4, 0.5, 8)
    assert cfg.model.dropout == 0 and cfg.loss.vgg_layer_weights == (0.2,) * 5 and cfg.loss.vgg_imagenet_norm
    info, rfs, responses, target = problem
    small = cfg.with_overrides({"model.ngf": 8, "model.n_down": 3, "model.ndf": 8, "loss.lambda_vgg": 0.0})
    torch.manual_seed(0)
    gan = build_gan(small, info, rfs)
    n_arrays = len(rfs.area_names())
    assert gan.projection.out_channels == n_arrays and gan.discriminator.cond_channels == n_arrays
    x = gan.projection(responses)  # (B, arrays, H, W)
    for channel, area in enumerate(rfs.area_names()):
        members = np.flatnonzero(rfs.area == area)
        lit = gan.projection.maps[members].sum(0) > 0
        assert torch.allclose(gan.projection.maps[members].sum(0)[lit], torch.tensor(1.0))  # a mean on each pixel
        assert (x[:, channel][:, ~lit] == 0).all()
    losses = train_step(gan, build_optimizers(small, gan), responses, target, small)
    assert torch.isfinite(losses.g_total) and losses.errD > 0
