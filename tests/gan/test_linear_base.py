"""model.linear_base: G corrects the ridge decoder's image. A CNN that outputs 0.5 gives the ridge image exactly; the
output stays in [0, 1] with finite gradients whatever the CNN does; compact and dense inputs agree; the read-out
travels in the generator's state dict (checkpoints); the driver's fit is `rfgan baseline`'s ridge, also on raw
responses."""

import dataclasses

import pytest
import torch
from torch import nn

from rfgan.config import ConfigError, preset
from rfgan.data.format import read_split, to_tensors
from rfgan.evaluate.ridge import fit_ridge
from rfgan.gan.build import build_gan
from rfgan.gan.linear_base import LinearBaseGenerator
from rfgan.run.train import linear_readout

SMALL = {"model.ngf": 8, "model.n_down": 3, "model.ndf": 8, "model.linear_base": True}


class Constant(nn.Module):
    """A stand-in CNN with one output value everywhere."""

    def __init__(self, value: float, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.value, self.shape = value, shape

    def forward(self, x):
        return torch.full((x.shape[0], *self.shape), self.value, requires_grad=True)


def _gan(problem, **overrides):
    info, rfs, _, _ = problem
    cfg = preset("tiny").with_overrides({**SMALL, **overrides})
    torch.manual_seed(0)
    return cfg, build_gan(cfg, info, rfs, with_d=False)


def test_a_neutral_cnn_gives_the_ridge_image(problem, tiny_dataset):
    info, _, responses, _ = problem
    cfg, gan = _gan(problem)
    ridge = fit_ridge(str(tiny_dataset))
    gan.generator.set_readout(**linear_readout(cfg, str(tiny_dataset)))
    gan.generator.net = Constant(0.5, (info.channels, *info.image_size))
    expected = ridge.decoder(responses).clamp(1e-3, 1 - 1e-3)
    torch.testing.assert_close(gan.reconstruct(responses), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("generator", ["unet", "reference"])
def test_training_starts_at_the_ridge_image_and_moves_from_it(problem, tiny_dataset, generator):
    from rfgan.gan.build import build_optimizers
    from rfgan.gan.step import train_step

    _, _, responses, target = problem
    extra = {"model.g_widths": [8, 8, 8, 8, 8], "model.n_res": 1} if generator == "reference" else {}
    cfg, gan = _gan(
        problem, **{"model.generator": generator, "optim.precision": "fp32", "loss.lambda_adv": 0.0, **extra}
    )
    gan.generator.set_readout(**linear_readout(cfg, str(tiny_dataset)))
    gan.generator.eval()  # dropout off, so the start is deterministic
    ridge = fit_ridge(str(tiny_dataset)).decoder(responses).clamp(1e-3, 1 - 1e-3)
    torch.testing.assert_close(gan.reconstruct(responses), ridge, atol=1e-5, rtol=0)
    gan.generator.train()
    opts = build_optimizers(cfg, gan)
    for _ in range(2):  # the zeroed output layer learns in step 1, the layers below it from step 2
        train_step(gan, opts, responses, target, cfg)
    gan.generator.eval()
    assert (gan.reconstruct(responses) - ridge).abs().max() > 1e-4


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_any_correction_stays_in_range_with_finite_gradients(problem, tiny_dataset, value):
    info, _, responses, _ = problem
    cfg, gan = _gan(problem)
    gan.generator.set_readout(**linear_readout(cfg, str(tiny_dataset)))
    cnn = Constant(value, (info.channels, *info.image_size))
    out = LinearBaseGenerator(cnn, gan.projection.maps, (info.channels, *info.image_size))
    out.set_readout(gan.generator.weight, gan.generator.bias)
    image = out(gan.inputs(responses))
    assert image.min() >= 0 and image.max() <= 1
    torch.testing.assert_close(image, torch.full_like(image, value))  # a saturated CNN wins over the base
    image.sum().backward()


@pytest.mark.parametrize("overrides", [{}, {"data.with_noise": True}])
def test_compact_and_dense_inputs_agree(problem, tiny_dataset, overrides):
    _, _, responses, _ = problem
    cfg, gan = _gan(problem, **overrides)
    gan.generator.set_readout(**linear_readout(cfg, str(tiny_dataset)))
    gan.generator.eval()
    torch.manual_seed(1)
    compact = gan.generator(gan.projection.compact(responses))
    torch.manual_seed(1)
    dense = gan.generator(gan.projection(responses))
    torch.testing.assert_close(compact, dense, atol=1e-5, rtol=1e-4)


def test_the_read_out_travels_in_the_state_dict(problem, tiny_dataset):
    _, _, responses, _ = problem
    cfg, trained = _gan(problem)
    trained.generator.set_readout(**linear_readout(cfg, str(tiny_dataset)))
    _, loaded = _gan(problem)
    assert loaded.generator.weight.abs().sum() == 0
    loaded.generator.load_state_dict(trained.generator.state_dict())
    for gan in (trained, loaded):
        gan.generator.eval()
    torch.testing.assert_close(loaded.reconstruct(responses), trained.reconstruct(responses))
    assert "inverse_maps" not in trained.generator.state_dict()  # rebuilt from the RF table, not stored


def test_raw_responses_get_the_same_images(problem, tiny_dataset):
    """data.standardize=false: G sees raw responses, and the read-out's weights take the standardisation in."""
    _, _, responses, _ = problem
    cfg, std = _gan(problem)
    std.generator.set_readout(**linear_readout(cfg, str(tiny_dataset)))
    cfg_raw, raw = _gan(problem, **{"data.standardize": False})
    raw.generator.set_readout(**linear_readout(cfg_raw, str(tiny_dataset)))
    torch.testing.assert_close(
        raw.generator.base(raw.inputs(responses)), std.generator.base(std.inputs(responses)), atol=1e-4, rtol=1e-4
    )
    val = to_tensors(read_split(tiny_dataset, "val"))[0]
    expected = fit_ridge(str(tiny_dataset)).decoder(val)
    torch.testing.assert_close(raw.generator.base(raw.inputs(val)), expected, atol=1e-4, rtol=1e-4)


def test_no_read_out_without_linear_base_and_none_per_area(tiny_dataset):
    assert linear_readout(preset("tiny"), str(tiny_dataset)) is None
    with pytest.raises(ConfigError, match="linear_base"):
        preset("tiny").with_overrides({"model.linear_base": True, "data.sum_per_area": True})
    with pytest.raises(ConfigError, match="linear_base"):
        dataclasses.replace(
            preset("tiny"), data=dataclasses.replace(preset("tiny").data, sum_per_area=True),
            model=dataclasses.replace(preset("tiny").model, linear_base=True),
        )  # fmt: skip
