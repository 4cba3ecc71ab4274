"""Tests for rfgan.evaluate.metrics: per-image metrics (also inside a mask), identification and retrieval, the
accumulator and its state."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rfgan.evaluate.metrics import (
    PSNR_CAP_DB,
    MetricAccumulator,
    correlations,
    eval_mode,
    feature_corr,
    identification,
    pixel_corr,
    pixel_corr_masked,
    psnr,
    psnr_masked,
    retrieval,
    ssim,
    ssim_masked,
    to_luma,
    unit_rows,
)
from rfgan.gan.vgg import VGGFeatures

H, W = 16, 16


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


def _identification(fake, target, ids=None) -> float:
    return identification(correlations(unit_rows(fake), unit_rows(target)), ids).mean().item()


def test_identification_is_one_for_perfect_half_for_noise_and_zero_for_swapped():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(40, 3, 8, 8, generator=g)
    assert _identification(target, target) == 1.0
    noise = torch.rand(40, 3, 8, 8, generator=g)
    assert abs(_identification(noise, target) - 0.5) < 0.05
    # Each reconstruction is a perfect copy of the *next* image: it never beats that one, and matches its own only
    # by chance against the others.
    shifted = target.roll(1, dims=0)
    assert _identification(shifted, target) < 0.55
    # Two images: reconstruction 0 resembles image 0, reconstruction 1 resembles image 0 too.
    pair = torch.stack([target[0], target[0] * 0.9 + 0.05])
    assert identification(correlations(unit_rows(pair), unit_rows(target[:2]))).tolist() == [1.0, 0.0]


def test_identification_leaves_out_repeats_of_the_same_image():
    target = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    repeated = target.repeat_interleave(2, dim=0)  # each image twice, as with --repeats 2
    ids = torch.arange(6).repeat_interleave(2)
    # Without ids, the repeat of an image ties with it and counts as a loss; with them, it is not compared.
    assert _identification(repeated, repeated) < 1.0
    assert _identification(repeated, repeated, ids) == 1.0
    with pytest.raises(ValueError, match="2 different images"):
        _identification(repeated[:2], repeated[:2], ids[:2])


def test_half_precision_rows_give_the_same_correlations():
    a, b = unit_rows(_images(5, seed=1)), unit_rows(_images(7, seed=2))
    exact = torch.corrcoef(torch.cat([_images(5, seed=1).flatten(1), _images(7, seed=2).flatten(1)]))[:5, 5:]
    torch.testing.assert_close(correlations(a, b, block=2), exact, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(correlations(a.half(), b.half(), block=3), exact, atol=2e-3, rtol=0)


def test_retrieval_finds_the_own_image_among_the_distinct_ones():
    target = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    r = correlations(unit_rows(target), unit_rows(target))
    ids = torch.arange(10)
    assert retrieval(r, ids, 1).tolist() == [1.0] * 10
    # Each reconstruction a copy of the next image: its own image is never the best match, but the second best
    # only by chance; a constant reconstruction (all correlations 0, ties) retrieves nothing.
    shifted = correlations(unit_rows(target.roll(1, dims=0)), unit_rows(target))
    assert retrieval(shifted, ids, 1).sum() == 0
    assert retrieval(correlations(unit_rows(torch.full_like(target, 0.5)), unit_rows(target)), ids, 5).sum() == 0
    # Repeats: every image shown twice is one candidate, so top-1 of a perfect decoder stays 1.
    repeated = target.repeat_interleave(2, dim=0)
    r2 = correlations(unit_rows(repeated), unit_rows(repeated))
    assert retrieval(r2, ids.repeat_interleave(2), 1).tolist() == [1.0] * 20


def test_top_k_retrieval_counts_the_images_that_beat_the_own_one():
    # Reconstruction 0 correlates best with image 2, then image 0 (its own), then image 1.
    r = torch.tensor([[0.5, 0.1, 0.9], [0.0, 1.0, 0.2], [0.3, 0.2, 0.8]])
    ids = torch.arange(3)
    assert retrieval(r, ids, 1).tolist() == [0.0, 1.0, 1.0]
    assert retrieval(r, ids, 2).tolist() == [1.0, 1.0, 1.0]


# --------------------------------------------------------------------------- inside a mask


def test_masked_metrics_see_only_the_pixels_inside():
    target = _images(2)
    fake = target.clone()
    mask = torch.zeros(H, W)
    mask[:, : W // 2] = 1
    fake[:, :, :, W // 2 :] = torch.rand(2, 3, H, W // 2, generator=torch.Generator().manual_seed(9))  # outside only
    assert (psnr_masked(fake, target, mask) == PSNR_CAP_DB).all()
    torch.testing.assert_close(pixel_corr_masked(fake, target, mask), torch.ones(2))
    assert (psnr(fake, target) < 20).all() and (pixel_corr(fake, target) < 0.9).all()
    fake[:, :, 0, 0] += 0.1  # one pixel inside: MSE over the half image, not the whole one
    expected = 10 * torch.log10(1 / ((to_luma(fake) - to_luma(target))[:, 0, :, : W // 2] ** 2).mean(dim=(1, 2)))
    torch.testing.assert_close(psnr_masked(fake, target, mask), expected)


def test_masked_ssim_is_the_mean_of_the_ssim_map_inside_the_mask():
    x, y = _images(2, seed=1), _images(2, seed=2)
    torch.testing.assert_close(ssim_masked(x, y, torch.ones(H, W)), ssim(x, y))
    torch.testing.assert_close(ssim_masked(x, x, torch.ones(1, 1, H, W)), torch.ones(2))
    with pytest.raises(ValueError, match="covers no pixel"):
        ssim_masked(x, y, torch.zeros(H, W))


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


# --------------------------------------------------------------------------- eval_mode


def test_eval_mode_restores_mixed_flags_even_on_error():
    bn = nn.BatchNorm2d(2)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), bn)
    model.train()
    bn.eval()  # a deliberately frozen BatchNorm inside a training model
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        assert not any(m.training for m in model.modules())
        raise RuntimeError("boom")
    assert model.training and model[0].training and not bn.training


def test_nan_reconstructions_retrieve_and_identify_nothing():
    # A NaN model (a ridge fit on constant responses, once) scored top-1 retrieval 1.000: NaN never compares >=.
    r = torch.full((4, 4), float("nan"))
    ids = torch.arange(4)
    assert retrieval(r, ids, k=1).tolist() == [0.0] * 4
    assert identification(r, ids).tolist() == [0.0] * 4
