import pytest
import torch
from torch import nn

from rfgan.gan.models import (
    PatchDiscriminator,
    ReferenceDiscriminator,
    ReferenceGenerator,
    UNetGenerator,
    count_parameters,
    init_weights,
)

TINY_WIDTHS = dict(widths=(8, 8, 16, 16, 16), n_res=1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _assert_backward_reaches_all_params(model: nn.Module, out: torch.Tensor) -> None:
    out.mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_reference_generator_full_size_parameter_count_and_forward():
    g = ReferenceGenerator(191)
    assert 50_000_000 <= count_parameters(g) <= 56_000_000
    g.eval()
    with torch.no_grad():
        y = g(torch.randn(1, 191, 96, 96))
    assert y.shape == (1, 3, 96, 96)
    assert y.min() >= 0 and y.max() <= 1


def test_reference_generator_tiny_forward_backward():
    g = ReferenceGenerator(5, out_channels=2, **TINY_WIDTHS)
    y = g(torch.randn(2, 5, 32, 32))
    assert y.shape == (2, 2, 32, 32)
    assert y.min() >= 0 and y.max() <= 1
    assert y.std() > 0
    _assert_backward_reaches_all_params(g, y)


def test_reference_generator_dropout_only_in_training():
    g = ReferenceGenerator(3, **TINY_WIDTHS)
    x = torch.randn(2, 3, 32, 32)
    g.eval()
    with torch.no_grad():
        assert torch.equal(g(x), g(x))
    g.train()
    with torch.no_grad():
        assert not torch.equal(g(x), g(x))


@pytest.mark.parametrize("size", [96, 32])
def test_reference_discriminator_one_logit_per_image(size):
    d = ReferenceDiscriminator()
    out = d(torch.randn(3, 3, size, size))
    assert out.shape == (3,)
    # Logits, not probabilities: a large input scale pushes some outside [0, 1].
    d.eval()
    with torch.no_grad():
        init_weights(d, std=1.0)
        scores = d(100 * torch.randn(8, 3, size, size))
    assert ((scores < 0) | (scores > 1)).any()


def test_reference_discriminator_rejects_cond_and_tiny_images():
    d = ReferenceDiscriminator()
    with pytest.raises(ValueError):
        d(torch.randn(2, 3, 96, 96), cond=torch.randn(2, 1, 96, 96))
    with pytest.raises(ValueError, match="8x8"):
        d(torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_unet_generator_forward_backward(norm):
    g = UNetGenerator(5, out_channels=3, ngf=8, n_down=5, norm=norm)
    y = g(torch.randn(2, 5, 32, 32))
    assert y.shape == (2, 3, 32, 32)
    assert y.min() >= 0 and y.max() <= 1
    _assert_backward_reaches_all_params(g, y)


def test_unet_generator_dropout_on_three_deepest_levels():
    g = UNetGenerator(3, ngf=4, n_down=6)
    assert sum(isinstance(m, nn.Dropout) for m in g.modules()) == 3
    assert sum(isinstance(m, nn.Dropout) for m in UNetGenerator(3, ngf=4, dropout=0.0).modules()) == 0


def test_unet_generator_rejects_unknown_norm():
    with pytest.raises(ValueError, match="layer"):
        UNetGenerator(3, norm="layer")


def test_unet_generator_rejects_indivisible_size():
    with pytest.raises(ValueError, match="40x40") as err:
        UNetGenerator(3, ngf=8, n_down=5)(torch.randn(1, 3, 40, 40))
    assert "32" in str(err.value)


def test_reference_generator_round_trips_odd_sides_and_rejects_too_small_images():
    g = ReferenceGenerator(3, **TINY_WIDTHS)
    assert g(torch.randn(2, 3, 40, 56)).shape == (2, 3, 40, 56)  # 40 → 20 → 10 → 5 → 2 → 1 and back
    with pytest.raises(ValueError, match="16x16") as err:
        g(torch.randn(2, 3, 16, 16))
    assert "32" in str(err.value)


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_patch_discriminator_unconditional(norm):
    d = PatchDiscriminator(3, ndf=8, norm=norm)
    out = d(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 1, 2, 2)
    with pytest.raises(ValueError):
        d(torch.randn(2, 3, 32, 32), cond=torch.randn(2, 2, 32, 32))


def test_patch_discriminator_conditional_uses_cond():
    d = PatchDiscriminator(3, ndf=8, cond_channels=2).eval()
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = d(image, torch.zeros(2, 2, 32, 32))
        b = d(image, torch.ones(2, 2, 32, 32))
    assert a.shape == (2, 1, 2, 2)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize(
    "cond",
    [None, torch.randn(2, 3, 32, 32), torch.randn(2, 2, 16, 16), torch.randn(1, 2, 32, 32)],
    ids=["missing", "channels", "spatial", "batch"],
)
def test_patch_discriminator_rejects_bad_cond(cond):
    d = PatchDiscriminator(3, ndf=8, cond_channels=2)
    with pytest.raises(ValueError, match="cond"):
        d(torch.randn(2, 3, 32, 32), cond)


def test_patch_discriminator_receptive_field_is_70():
    d = PatchDiscriminator(1, ndf=4, norm="none")
    x = torch.randn(1, 1, 160, 160, requires_grad=True)
    out = d(x)
    h, w = out.shape[-2:]
    out[0, 0, h // 2, w // 2].backward()
    rows = x.grad[0, 0].abs().sum(1).nonzero()
    cols = x.grad[0, 0].abs().sum(0).nonzero()
    assert rows.max() - rows.min() + 1 == 70
    assert cols.max() - cols.min() + 1 == 70


def test_patch_discriminator_rejects_tiny_images():
    with pytest.raises(ValueError, match="16x16"):
        PatchDiscriminator(3, ndf=8)(torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize("std", [0.02, 0.05])
def test_init_weights_dcgan(std):
    model = nn.Sequential(
        nn.Conv2d(64, 64, 3),
        nn.BatchNorm2d(4096),
        nn.ConvTranspose2d(64, 64, 3),
        nn.InstanceNorm2d(4096, affine=True),
    )
    init_weights(model, std=std)
    for conv in (model[0], model[2]):
        assert conv.weight.mean().abs() < std / 10
        assert conv.weight.std().item() == pytest.approx(std, rel=0.05)
        assert torch.count_nonzero(conv.bias) == 0
    for norm in (model[1], model[3]):
        assert norm.weight.mean().item() == pytest.approx(1.0, abs=std / 10)
        assert norm.weight.std().item() == pytest.approx(std, rel=0.1)
        assert torch.count_nonzero(norm.bias) == 0


def test_count_parameters_skips_frozen():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 5))
    assert count_parameters(model) == 3 * 4 + 4 + 4 * 5 + 5
    model[0].requires_grad_(False)
    assert count_parameters(model) == 4 * 5 + 5
