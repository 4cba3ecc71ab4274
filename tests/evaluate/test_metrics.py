"""Tests for rfgan.evaluate.metrics: per-image metrics, the accumulator and its state, and evaluate()."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rfgan.data.rf import RFProjection
from rfgan.evaluate.metrics import (
    PSNR_CAP_DB,
    MetricAccumulator,
    eval_mode,
    evaluate,
    feature_corr,
    identification_accuracy,
    pixel_corr,
    psnr,
    ssim,
    to_luma,
)
from rfgan.gan.build import GAN
from rfgan.gan.models import UNetGenerator
from rfgan.gan.vgg import VGGFeatures

E, H, W = 5, 16, 16


@pytest.fixture(scope="module")
def vgg() -> VGGFeatures:
    with pytest.warns(UserWarning, match="random VGG weights"):
        return VGGFeatures(random_init=True)


def _images(b: int, c: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, H, W, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- to_luma


def test_to_luma_uses_rec601_weights():
    x = torch.zeros(3, 3, 2, 2)
    for c in range(3):
        x[c, c] = 1.0  # image c is pure channel c
    luma = to_luma(x)
    assert luma.shape == (3, 1, 2, 2)
    torch.testing.assert_close(luma[:, 0, 0, 0], torch.tensor([0.299, 0.587, 0.114]))


def test_to_luma_passes_grayscale_through_and_rejects_other_channels():
    x = torch.rand(2, 1, 4, 4)
    assert to_luma(x) is x
    with pytest.raises(ValueError, match=r"\(2, 2, 4, 4\)"):
        to_luma(torch.rand(2, 2, 4, 4))


# --------------------------------------------------------------------------- psnr / ssim


def test_psnr_of_identical_images_is_capped_not_inf():
    x = _images(2)
    out = psnr(x, x)
    assert out.shape == (2,)
    assert torch.equal(out, torch.full((2,), PSNR_CAP_DB))


def test_psnr_matches_known_mse():
    target = torch.full((2, 1, H, W), 0.5)
    fake = target.clone()
    fake[0] += 0.1  # MSE 0.01 -> 20 dB
    fake[1, :, : H // 2] += 0.2  # half the pixels off by 0.2 -> MSE 0.02
    expected = torch.tensor([10 * math.log10(1 / 0.01), 10 * math.log10(1 / 0.02)])
    torch.testing.assert_close(psnr(fake, target), expected, rtol=1e-4, atol=1e-4)


def test_psnr_of_colour_images_is_on_luma():
    target = torch.full((1, 3, H, W), 0.5)
    fake = target.clone()
    fake[:, 2] += 0.1  # only blue changes: luma error 0.0114, not the RGB mean error
    expected = 10 * math.log10(1 / (0.114 * 0.1) ** 2)
    torch.testing.assert_close(psnr(fake, target), torch.tensor([expected]), rtol=1e-4, atol=1e-4)


def test_ssim_is_one_for_identical_and_lower_for_noisy():
    x = _images(3)
    torch.testing.assert_close(ssim(x, x), torch.ones(3))
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    out = ssim(noisy, x)
    assert out.shape == (3,)
    assert (out < 0.9).all()


# --------------------------------------------------------------------------- correlations


def test_pixel_corr_of_affine_maps_is_plus_minus_one():
    x = _images(2)
    torch.testing.assert_close(pixel_corr(2 * x + 1, x), torch.ones(2))
    torch.testing.assert_close(pixel_corr(-x, x), -torch.ones(2))


def test_pixel_corr_is_per_pair():
    x = _images(2)
    y = torch.stack([x[0], -x[1]])
    torch.testing.assert_close(pixel_corr(y, x), torch.tensor([1.0, -1.0]))


def test_pixel_corr_of_constant_image_is_zero_not_nan():
    x = _images(2)
    for fake, target in [(torch.full_like(x, 0.1), x), (x, torch.full_like(x, 0.7)), (x * 0, x * 0)]:
        out = pixel_corr(fake, target)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, torch.zeros(2), atol=1e-6, rtol=0)


def test_identification_is_one_for_perfect_half_for_noise_and_zero_for_swapped():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(40, 3, 8, 8, generator=g)
    assert identification_accuracy(target, target).item() == 1.0
    noise = torch.rand(40, 3, 8, 8, generator=g)
    assert abs(identification_accuracy(noise, target).item() - 0.5) < 0.05
    # Each reconstruction is a perfect copy of the *next* image: it never beats that one, and matches its own only
    # by chance against the others.
    shifted = target.roll(1, dims=0)
    assert identification_accuracy(shifted, target).item() < 0.55
    # Two images: reconstruction 0 resembles image 0, reconstruction 1 resembles image 0 too.
    pair = torch.stack([target[0], target[0] * 0.9 + 0.05])
    assert identification_accuracy(pair, target[:2]).item() == 0.5


def test_identification_leaves_out_repeats_of_the_same_image():
    target = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    repeated = target.repeat_interleave(2, dim=0)  # each image twice, as with --repeats 2
    ids = torch.arange(6).repeat_interleave(2)
    # Without ids, the repeat of an image ties with it and counts as a loss; with them, it is not compared.
    assert identification_accuracy(repeated, repeated).item() < 1.0
    assert identification_accuracy(repeated, repeated, ids).item() == 1.0
    with pytest.raises(ValueError, match="2 different images"):
        identification_accuracy(repeated[:2], repeated[:2], ids[:2])


def test_feature_corr_of_identical_images_is_one(vgg):
    x = _images(2)
    out = feature_corr(vgg, x, x)
    assert out.shape == (2,)
    torch.testing.assert_close(out, torch.ones(2))
    assert (feature_corr(vgg, _images(2, seed=5), x) < 0.999).all()


def test_feature_corr_averages_pearson_over_the_five_layers(vgg):
    fake, target = _images(2, seed=4), _images(2)
    expected = []
    for i in range(2):
        layers = zip(vgg(fake[i : i + 1]), vgg(target[i : i + 1]), strict=True)
        per_layer = [torch.corrcoef(torch.stack([f.flatten(), t.flatten()]))[0, 1] for f, t in layers]
        assert len(per_layer) == 5
        expected.append(torch.stack(per_layer).mean())
    torch.testing.assert_close(feature_corr(vgg, fake, target), torch.stack(expected), rtol=1e-4, atol=1e-5)


def test_feature_corr_does_not_build_a_graph(vgg):
    fake = _images(1).requires_grad_()
    assert not feature_corr(vgg, fake, _images(1, seed=1)).requires_grad


@pytest.mark.parametrize("metric", [psnr, ssim, pixel_corr])
def test_mismatched_shapes_name_both(metric):
    with pytest.raises(ValueError, match=r"\(2, 3, 16, 16\).*\(2, 1, 16, 16\)"):
        metric(_images(2, 3), _images(2, 1))


def test_integer_images_are_refused():
    x = _images(1)
    with pytest.raises(ValueError, match="float"):
        psnr((x * 255).to(torch.uint8), x)


# --------------------------------------------------------------------------- accumulator


def _batch_means(fake: torch.Tensor, target: torch.Tensor, vgg=None) -> dict[str, float]:
    means = {
        "psnr": psnr(fake, target).mean().item(),
        "ssim": ssim(fake, target).mean().item(),
        "pixel_corr": pixel_corr(fake, target).mean().item(),
    }
    if vgg is not None:
        means["feature_corr"] = feature_corr(vgg, fake, target).mean().item()
    return means


def _assert_means_close(got: dict[str, float], expected: dict[str, float]) -> None:
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key


def test_accumulator_over_uneven_batches_equals_metric_over_concatenation(vgg):
    target = _images(7, seed=0)
    fake = (target + 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    acc = MetricAccumulator()
    acc.update(fake[:2], target[:2], vgg)
    acc.update(fake[2:], target[2:], vgg)
    # A mean of the two batch means would weight the 2 images like the 5; the true mean does not.
    _assert_means_close(acc.compute(), _batch_means(fake, target, vgg))


def test_accumulator_without_vgg_reports_no_feature_corr():
    acc = MetricAccumulator()
    acc.update(_images(2, seed=1), _images(2))
    assert set(acc.compute()) == {"psnr", "ssim", "pixel_corr"}


def test_accumulator_keeps_no_graph():
    acc = MetricAccumulator()
    acc.update(_images(2, seed=1).requires_grad_(), _images(2))
    assert not acc.state().requires_grad


def test_empty_accumulator_refuses_to_compute():
    with pytest.raises(ValueError, match="zero images"):
        MetricAccumulator().compute()


def test_state_round_trip():
    acc = MetricAccumulator()
    acc.update(_images(3, seed=1), _images(3))
    state = acc.state()
    assert state.ndim == 1 and state[0].item() == 3
    assert MetricAccumulator.from_state(state).compute() == acc.compute()


def test_state_is_a_copy():
    acc = MetricAccumulator()
    acc.update(_images(3, seed=1), _images(3))
    before = acc.compute()
    acc.state().zero_()  # what an in-place all_reduce would do to the returned tensor
    assert acc.compute() == before


def test_summed_states_give_the_combined_mean(vgg):
    target = _images(5, seed=0)
    fake = _images(5, seed=3)
    rank0, rank1 = MetricAccumulator(), MetricAccumulator()
    rank0.update(fake[:1], target[:1], vgg)
    rank1.update(fake[1:], target[1:], vgg)
    combined = MetricAccumulator.from_state(rank0.state() + rank1.state())
    _assert_means_close(combined.compute(), _batch_means(fake, target, vgg))


def test_a_rank_without_batches_adds_nothing(vgg):
    fake, target = _images(2, seed=1), _images(2)
    acc = MetricAccumulator()
    acc.update(fake, target, vgg)
    combined = MetricAccumulator.from_state(acc.state() + MetricAccumulator().state())
    _assert_means_close(combined.compute(), acc.compute())


def test_from_state_rejects_wrong_shape():
    with pytest.raises(ValueError, match="1-D"):
        MetricAccumulator.from_state(torch.zeros(5))


# --------------------------------------------------------------------------- evaluate


def _bn_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in module.named_buffers() if "running" in name or "num_batches" in name}


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    generator = UNetGenerator(in_channels=E, ngf=4, n_down=3)
    projection = RFProjection(maps=torch.rand(E, H, W))
    batches = [(torch.randn(3, E), _images(3, seed=1)), (torch.randn(2, E), _images(2, seed=2))]
    return generator, projection, batches


def _gan(generator, projection):
    # Dense input: some tests stand a recording function in for the projection.
    return GAN(projection=projection, generator=generator, discriminator=None, vgg=None, mask=None, compact=False)


def test_the_bn_check_below_can_fail():
    # Control for the next test: a forward pass in train mode does move the running statistics.
    generator, projection, batches = _setup()
    before = _bn_buffers(generator)
    assert before
    generator.train()
    generator(projection(batches[0][0]))
    after = _bn_buffers(generator)
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_leaves_bn_statistics_and_mode_unchanged(training):
    generator, projection, batches = _setup()
    generator.train(training)
    before = _bn_buffers(generator)
    metrics = evaluate(_gan(generator, projection), batches)
    after = _bn_buffers(generator)
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert all(m.training == training for m in generator.modules())
    assert set(metrics) == {"psnr", "ssim", "pixel_corr"}


def test_evaluate_matches_metrics_of_eval_mode_outputs(vgg):
    generator, projection, batches = _setup()
    generator.train()  # dropout on: evaluate must switch it off to get these exact outputs
    metrics = evaluate(_gan(generator, projection), batches, vgg=vgg)
    generator.eval()
    with torch.no_grad():
        fake = torch.cat([generator(projection(r)) for r, _ in batches])
    target = torch.cat([images for _, images in batches])
    _assert_means_close(metrics, _batch_means(fake, target, vgg))


def test_evaluate_moves_batches_to_device():
    generator, projection, batches = _setup()
    seen = []

    def record(responses: torch.Tensor) -> torch.Tensor:
        seen.append(responses.device)
        return projection(responses)

    evaluate(_gan(generator, record), batches, device=torch.device("cpu"))
    assert seen == [torch.device("cpu")] * len(batches)


def test_evaluate_of_no_batches_raises():
    generator, projection, _ = _setup()
    with pytest.raises(ValueError, match="zero images"):
        evaluate(_gan(generator, projection), [])


def test_eval_mode_restores_mixed_flags_even_on_error():
    bn = nn.BatchNorm2d(2)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), bn)
    model.train()
    bn.eval()  # a deliberately frozen BatchNorm inside a training model
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        assert not any(m.training for m in model.modules())
        raise RuntimeError("boom")
    assert model.training and model[0].training and not bn.training
