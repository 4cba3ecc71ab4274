import os
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision

from rfgan.config import ADV_KINDS, REFERENCE_VGG_WEIGHTS, VGG_LAYERS
from rfgan.errors import MissingVGGWeightsError
from rfgan.evaluate.metrics import ssim
from rfgan.gan.losses import (
    apply_mask,
    d_fake_loss,
    d_real_loss,
    feature_loss,
    g_adv_loss,
    pixel_loss,
    ssim_loss,
)
from rfgan.gan.vgg import VGGFeatures, default_vgg19_weights_path

VGG19_FILENAME = os.path.basename(torchvision.models.VGG19_Weights.IMAGENET1K_V1.url)

# Hand-picked logits, as (B,) and as a PatchGAN map (B, 1, h, w).
REAL = torch.tensor([2.0, -1.0, 0.5, 3.0])
FAKE = torch.tensor([-2.0, 0.25, 1.5, -0.5])


def _shapes(x):
    return [x, x.view(2, 1, 1, 2)]


def _bce(logits, label):
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


# ---------------------------------------------------------------------------
# Adversarial losses
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape_idx", [0, 1])
@pytest.mark.parametrize("kind", ["nonsaturating", "minimax"])
def test_bce_d_losses_match_torch(kind, shape_idx):
    real, fake = _shapes(REAL)[shape_idx], _shapes(FAKE)[shape_idx]
    torch.testing.assert_close(d_real_loss(real, kind), _bce(real, 1.0))
    torch.testing.assert_close(d_fake_loss(fake, kind), _bce(fake, 0.0))


@pytest.mark.parametrize("shape_idx", [0, 1])
def test_g_losses_match_formulas(shape_idx):
    fake = _shapes(FAKE)[shape_idx]
    torch.testing.assert_close(g_adv_loss(fake, "nonsaturating"), _bce(fake, 1.0))
    torch.testing.assert_close(g_adv_loss(fake), _bce(fake, 1.0))  # default kind
    # minimax: mean log(1 - D(G(x)))
    torch.testing.assert_close(g_adv_loss(fake, "minimax"), -_bce(fake, 0.0))
    torch.testing.assert_close(g_adv_loss(fake, "minimax"), torch.log(1 - torch.sigmoid(fake)).mean())
    torch.testing.assert_close(g_adv_loss(fake, "lsgan"), ((fake - 1) ** 2).mean())


def test_lsgan_d_losses_known_values():
    real = torch.tensor([1.0, 3.0])  # (0 + 4) / 2 = 2
    fake = torch.tensor([0.0, -2.0, 1.0, 1.0])  # (0 + 4 + 1 + 1) / 4 = 1.5
    torch.testing.assert_close(d_real_loss(real, "lsgan"), torch.tensor(2.0))
    torch.testing.assert_close(d_fake_loss(fake, "lsgan"), torch.tensor(1.5))


def test_bce_known_value_at_zero_logits():
    zeros = torch.zeros(3)
    ln2 = torch.log(torch.tensor(2.0))
    torch.testing.assert_close(d_real_loss(zeros) + d_fake_loss(zeros), 2 * ln2)
    torch.testing.assert_close(g_adv_loss(zeros), ln2)


@pytest.mark.parametrize(
    "fn",
    [
        lambda k: d_real_loss(REAL, k),
        lambda k: d_fake_loss(FAKE, k),
        lambda k: g_adv_loss(FAKE, k),
    ],
)
def test_unknown_adv_kind_raises(fn):
    with pytest.raises(ValueError, match="nonsaturating.*minimax.*lsgan"):
        fn("wgan")


@pytest.mark.parametrize("kind", ADV_KINDS)
def test_g_loss_decreases_as_fake_logits_increase(kind):
    logits = torch.tensor([-3.0, -0.5, 0.0, 0.5], requires_grad=True)  # all < 1
    g_adv_loss(logits, kind).backward()
    assert (logits.grad < 0).all()
    assert g_adv_loss(logits.detach() + 0.25, kind) < g_adv_loss(logits.detach(), kind)


def test_d_losses_gradient_signs():
    real = REAL.clone().requires_grad_(True)
    fake = FAKE.clone().requires_grad_(True)
    (d_real_loss(real) + d_fake_loss(fake)).backward()
    assert (real.grad < 0).all()  # D wants real logits up
    assert (fake.grad > 0).all()  # and fake logits down


def test_bce_losses_stable_for_large_logits():
    big = torch.tensor([1e4, -1e4])
    for value in (d_real_loss(big), d_fake_loss(big), g_adv_loss(big), g_adv_loss(big, "minimax")):
        assert torch.isfinite(value)


# ---------------------------------------------------------------------------
# Pixel losses and masks
# ---------------------------------------------------------------------------


def test_pixel_loss_known_values():
    fake = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, -1.0], [2.0, 0.0]]]])
    torch.testing.assert_close(pixel_loss(fake, target, "l1"), torch.tensor(1.0))
    torch.testing.assert_close(pixel_loss(fake, target, "mse"), torch.tensor(1.5))
    torch.testing.assert_close(pixel_loss(fake, target), torch.tensor(1.0))


def test_pixel_loss_unknown_kind():
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="l1.*mse"):
        pixel_loss(x, x, "huber")


@pytest.mark.parametrize("kind", ["l1", "mse"])
@pytest.mark.parametrize("mask_batch", [1, 2])
def test_pixel_loss_mask_ignores_masked_out_region(kind, mask_batch):
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 8, 8, generator=g)
    fake = target.clone()
    mask = torch.zeros(mask_batch, 1, 8, 8)
    mask[..., :4] = 1.0
    fake[..., 4:] += 5.0  # differences only where mask == 0
    assert pixel_loss(fake, target, kind, mask=mask) == 0
    assert pixel_loss(fake, target, kind) > 0
    fake[..., 0, 0] += 1.0  # a difference inside the mask counts
    assert pixel_loss(fake, target, kind, mask=mask) > 0


def test_pixel_loss_soft_mask_scales_both_sides():
    fake = torch.ones(1, 1, 2, 2)
    target = torch.zeros(1, 1, 2, 2)
    mask = torch.full((1, 1, 2, 2), 0.5)
    torch.testing.assert_close(pixel_loss(fake, target, "l1", mask), torch.tensor(0.5))
    torch.testing.assert_close(pixel_loss(fake, target, "mse", mask), torch.tensor(0.25))


def test_ssim_loss_is_one_minus_the_metric_and_has_gradients():
    torch.manual_seed(0)
    target = torch.rand(3, 3, 24, 24)
    fake = (target + 0.2 * torch.randn_like(target)).clamp(0, 1).requires_grad_(True)
    assert ssim_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    loss = ssim_loss(fake, target)
    assert loss.item() == pytest.approx(1 - ssim(fake.detach(), target).mean().item(), abs=1e-6)
    assert 0 < loss.item() < 1
    loss.backward()
    assert fake.grad is not None and torch.isfinite(fake.grad).all() and fake.grad.abs().sum() > 0
    mask = torch.zeros(1, 1, 24, 24)
    mask[..., :12, :] = 1
    outside = target.clone()
    outside[..., 12:, :] = 1 - outside[..., 12:, :]
    assert ssim_loss(outside, target, mask=mask).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("shape", [(4, 3, 96, 96), (2, 1, 32, 48), (3, 3, 11, 11), (2, 3, 7, 9)])
def test_ssim_loss_has_torchmetrics_values_and_gradients(shape):
    """The loss's own SSIM (two matrix products per blur, fast in backward) against the metric's (torchmetrics'
    convolution), values and gradients, with reflected edges on small and non-square images."""
    torch.manual_seed(0)
    target = torch.rand(shape)
    fake = (target + 0.3 * torch.randn_like(target)).clamp(0, 1).requires_grad_(True)
    loss = ssim_loss(fake, target)
    (grad,) = torch.autograd.grad(loss, fake)
    reference = 1 - ssim(fake, target).mean()
    (expected,) = torch.autograd.grad(reference, fake)
    assert loss.item() == pytest.approx(reference.item(), abs=1e-6)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_apply_mask():
    x = torch.rand(2, 3, 4, 4)
    assert apply_mask(x, None) is x
    mask = torch.zeros(2, 1, 4, 4)
    mask[1] = 1.0
    out = apply_mask(x, mask)
    assert out.shape == x.shape
    assert (out[0] == 0).all()
    torch.testing.assert_close(out[1], x[1])


# ---------------------------------------------------------------------------
# VGG features
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source_features():
    """A randomly initialised torchvision vgg19().features (never downloads)."""
    torch.manual_seed(123)
    return torchvision.models.vgg19().features.eval()


@pytest.fixture(scope="module")
def full_weights_file(source_features, tmp_path_factory):
    """File shaped like torchvision's vgg19 state dict (features.* + classifier.*).

    The real classifier (~100M params) is replaced by one small tensor to keep
    the file light; it only has to be ignored.
    """
    state = {f"features.{k}": v for k, v in source_features.state_dict().items()}
    state["classifier.6.bias"] = torch.zeros(1000)
    path = tmp_path_factory.mktemp("vgg") / VGG19_FILENAME
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def vgg(full_weights_file):
    return VGGFeatures(weights=full_weights_file)


def _reference_features(source_features, x):
    out, indices = [], (1, 6, 11, 20, 29)
    with torch.no_grad():
        for i, layer in enumerate(source_features[:30]):
            x = layer(x)
            if i in indices:
                out.append(x.clone())
    return out


def _image(channels=3, seed=0):
    return torch.rand(2, channels, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_vgg_loads_full_state_dict_and_matches_source(vgg, source_features):
    x = _image()
    got = vgg(x)
    want = _reference_features(source_features, x)
    assert len(got) == len(VGG_LAYERS) == 5
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_vgg_loads_features_only_state_dict(source_features, tmp_path):
    path = tmp_path / "features_only.pth"
    torch.save(source_features[:30].state_dict(), path)
    vgg = VGGFeatures(weights=str(path))
    x = _image()
    for g, w in zip(vgg(x), _reference_features(source_features, x)):
        torch.testing.assert_close(g, w)


def test_vgg_drops_unused_layers(vgg):
    assert len(vgg.features) == 30
    assert isinstance(vgg.features[-1], torch.nn.ReLU)
    assert not hasattr(vgg, "classifier")


def test_vgg_feature_shapes(vgg):
    shapes = [tuple(f.shape) for f in vgg(_image())]
    assert shapes == [
        (2, 64, 32, 32),
        (2, 128, 16, 16),
        (2, 256, 8, 8),
        (2, 512, 4, 4),
        (2, 512, 2, 2),
    ]


def test_vgg_grayscale_is_repeated_to_rgb(vgg):
    gray = _image(channels=1)
    for g, r in zip(vgg(gray), vgg(gray.repeat(1, 3, 1, 1))):
        torch.testing.assert_close(g, r)


def test_vgg_rejects_other_channel_counts(vgg):
    with pytest.raises(ValueError, match="1 or 3 channels"):
        vgg(torch.rand(2, 2, 32, 32))


def test_vgg_imagenet_norm(full_weights_file, vgg):
    normed = VGGFeatures(weights=full_weights_file, imagenet_norm=True)
    assert "mean" not in normed.state_dict()  # buffers are constants, not weights
    x = _image()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    for g, w in zip(normed(x), vgg((x - mean) / std)):
        torch.testing.assert_close(g, w)
    assert not torch.allclose(normed(x)[0], vgg(x)[0])


def test_vgg_is_frozen_and_stays_in_eval(vgg):
    assert all(not p.requires_grad for p in vgg.parameters())
    parent = torch.nn.Sequential(vgg)
    parent.train()
    assert parent.training
    assert not vgg.training
    assert all(not m.training for m in vgg.modules())
    vgg.train(True)
    assert not vgg.training


def test_missing_explicit_path(tmp_path):
    path = tmp_path / "nope" / "vgg19.pth"
    with pytest.raises(MissingVGGWeightsError) as info:
        VGGFeatures(weights=path)
    msg = str(info.value)
    assert "not found" in msg
    assert str(path) in msg
    assert "IMAGENET1K_V1" in msg
    assert "random_init=True" in msg
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize("content", ["garbage", "list"])
def test_unloadable_file(tmp_path, content):
    path = tmp_path / "bad.pth"
    if content == "garbage":
        path.write_bytes(b"definitely not a checkpoint")
    else:
        torch.save([torch.zeros(1)], path)
    with pytest.raises(MissingVGGWeightsError, match="bad.pth"):
        VGGFeatures(weights=path)


def test_state_dict_with_missing_key(source_features, tmp_path):
    state = {f"features.{k}": v for k, v in source_features.state_dict().items()}
    del state["features.19.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="features.19.weight"):
        VGGFeatures(weights=path)


def test_default_path_missing_mentions_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = os.path.join(str(tmp_path), "hub", "checkpoints", VGG19_FILENAME)
    assert default_vgg19_weights_path() == expected
    with pytest.raises(MissingVGGWeightsError) as info:
        VGGFeatures()
    msg = str(info.value)
    assert "not found in the torch hub cache" in msg
    assert expected in msg
    assert "IMAGENET1K_V1" in msg
    assert "TORCH_HOME" in msg


def test_default_path_loads_from_torch_home(full_weights_file, source_features, tmp_path, monkeypatch):
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / VGG19_FILENAME).symlink_to(full_weights_file)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    vgg = VGGFeatures()
    x = _image()
    for g, w in zip(vgg(x), _reference_features(source_features, x)):
        torch.testing.assert_close(g, w)


def test_random_init_warns_and_is_seeded():
    with pytest.warns(UserWarning, match="not perceptual"):
        a = VGGFeatures(random_init=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = VGGFeatures(random_init=True)
        c = VGGFeatures(random_init=True, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["features.0.weight"], sc["features.0.weight"])
    assert sa["features.0.weight"].std() > 0


def test_random_init_does_not_touch_global_rng():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with pytest.warns(UserWarning):
        VGGFeatures(random_init=True)
    torch.testing.assert_close(torch.rand(3), expected)


# ---------------------------------------------------------------------------
# Feature loss
# ---------------------------------------------------------------------------


def test_feature_loss_zero_for_identical_inputs(vgg):
    x = _image()
    loss = feature_loss(vgg, x, x.clone())
    assert loss.dim() == 0
    assert loss == 0


def test_feature_loss_matches_manual_sum(vgg):
    fake, target = _image(seed=1), _image(seed=2)
    weights = (1.0, 0.0, 2.0, 0.0, 0.5)
    f, t = vgg(fake), vgg(target)
    expected = sum(w * (a - b).abs().mean() for w, a, b in zip(weights, f, t))
    torch.testing.assert_close(feature_loss(vgg, fake, target, weights), expected)
    default = sum(w * (a - b).abs().mean() for w, a, b in zip(REFERENCE_VGG_WEIGHTS, f, t))
    torch.testing.assert_close(feature_loss(vgg, fake, target), default)


def test_feature_loss_gradients_reach_fake_only(vgg):
    fake = _image(seed=1).requires_grad_(True)
    target = _image(seed=2).requires_grad_(True)
    feature_loss(vgg, fake, target).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert target.grad is None
    assert all(p.grad is None for p in vgg.parameters())


def test_feature_loss_mask(vgg):
    target = _image(seed=1)
    fake = target.clone()
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :16] = 1.0
    fake[..., 16:] = 1.0 - fake[..., 16:]  # differ only outside the mask
    assert feature_loss(vgg, fake, target, mask=mask) == 0
    assert feature_loss(vgg, fake, target) > 0


def test_feature_loss_grayscale(vgg):
    fake = _image(channels=1, seed=1).requires_grad_(True)
    loss = feature_loss(vgg, fake, _image(channels=1, seed=2))
    loss.backward()
    assert loss > 0
    assert fake.grad.shape == fake.shape


def test_feature_loss_wrong_number_of_weights(vgg):
    x = _image()
    with pytest.raises(ValueError):
        feature_loss(vgg, x, x, layer_weights=(1.0, 1.0))
