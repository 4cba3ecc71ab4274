"""The compact first layer changes speed, never the maths: on a fixed batch in fp32, the fast path (perf.compact_input)
and the plain path (the dense B×E×H×W stack) give the same generator outputs, step losses and weight gradients,
for both generators, with and without the noise channel, per electrode and per area, conditional D too."""

import warnings

import pytest
import torch

from rfgan.config import preset
from rfgan.gan import rf_input
from rfgan.gan.build import build_gan, build_optimizers
from rfgan.gan.rf_input import RFConv2d, RFInput, RFProjection, rf_conv2d
from rfgan.gan.step import train_step

SMALL_REFERENCE = {"model.g_widths": [8, 16, 16], "model.g_convs_per_block": [2, 1, 1], "model.n_res": 1}
CASES = {
    "unet": {},
    "unet-noise": {"data.with_noise": True},
    "unet-areas-conditional": {"data.sum_per_area": True, "model.conditional_d": True},
    # No dropout here: with zero-initialised biases, a dropped-out map ties max-pool candidates that fp32 rounding
    # of the two paths' sums then breaks differently (a discrete flip, not an error of the path); the original
    # case below keeps the dropout layers.
    "reference": {**SMALL_REFERENCE, "model.generator": "reference", "model.discriminator": "reference",
                  "model.dropout": 0.0},
    "reference-noise": {**SMALL_REFERENCE, "model.generator": "reference", "data.with_noise": True},
    "reference-areas-noise": {**SMALL_REFERENCE, "model.generator": "reference", "data.sum_per_area": True,
                              "data.with_noise": True},
    # The reference presets' fidelity settings: the original layout (conv biases in the first layer), raw responses,
    # maps summing to 1 over the field, the RF mask; and MonkeySee's per-area pixel maps with a D on the whole input.
    "reference-original": {**SMALL_REFERENCE, "model.generator": "reference", "model.discriminator": "reference",
                           "model.init": "original", "data.standardize": False,
                           "data.rf_norm": "sum_full", "data.mask": True, "data.with_noise": True},
    "unet-point-input-conditional": {"data.sum_per_area": True, "data.rf_norm": "point", "model.conditional_d": True,
                                     "model.d_condition": "input"},
}  # fmt: skip


def build(problem, compact: bool, overrides: dict):
    info, rfs, _, _ = problem
    cfg = preset("tiny").with_overrides(
        {"model.ngf": 8, "model.n_down": 3, "model.ndf": 8, "loss.lambda_vgg": 1.0, "perf.compact_input": compact,
         "optim.precision": "fp32",
         **overrides}
    )  # fmt: skip
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "VGGFeatures.random_init")
        gan = build_gan(cfg, info, rfs)
    return cfg, gan


def assert_close(a: torch.Tensor, b: torch.Tensor, what: str, rtol: float = 1e-4) -> None:
    """Equal up to fp32 rounding of differently ordered sums, relative to the tensor's scale."""
    scale = max(a.abs().max().item(), 1e-12)
    assert (a - b).abs().max().item() <= rtol * scale, f"{what}: max |diff| {(a - b).abs().max().item():.3g}"


@pytest.mark.parametrize("case", CASES)
def test_fast_and_plain_path_give_the_same_outputs_losses_and_gradients(problem, case):
    _, _, responses, target = problem
    (cfg, fast), (_, plain) = build(problem, True, CASES[case]), build(problem, False, CASES[case])
    x = fast.inputs(responses)
    assert isinstance(x, RFInput) and isinstance(plain.inputs(responses), torch.Tensor)
    # The generator alone, in both modes (the same dropout draws from the same seed).
    for training in (False, True):
        fast.train(training), plain.train(training)
        torch.manual_seed(1)
        out_fast = fast.reconstruct(responses)
        torch.manual_seed(1)
        out_plain = plain.reconstruct(responses)
        assert_close(out_plain, out_fast, f"generator output (train={training})", rtol=1e-5)
    # One whole training step: losses, then every weight gradient G and D got.
    fast.train(), plain.train()
    losses = {}
    for name, gan in (("fast", fast), ("plain", plain)):
        torch.manual_seed(2)
        losses[name] = train_step(gan, build_optimizers(cfg, gan), responses, target, cfg)
    for field, a, b in zip(losses["plain"]._fields, losses["plain"], losses["fast"]):
        assert_close(a, b, f"loss {field}", rtol=1e-5)
    assert losses["plain"].g_total > 0 and (not cfg.adversarial or losses["plain"].errD > 0)
    # Gradients are compared more loosely: BatchNorm over 16 samples amplifies rounding, so that here a 1e-6 relative
    # change of the responses alone moves the plain path's own first-layer gradient by up to 3e-3 (relative).
    for net in ("generator", "discriminator"):
        pairs = zip(getattr(plain, net).named_parameters(), getattr(fast, net).parameters())
        net_scale = max(p.grad.abs().max().item() for p in getattr(plain, net).parameters())
        for (name, p_plain), p_fast in pairs:
            if p_plain.grad is not None and p_plain.grad.abs().max() <= 1e-5 * net_scale:
                # Zero by construction (a conv bias right before BatchNorm, the original layout's): rounding both ways
                assert p_fast.grad.abs().max() <= 1e-5 * net_scale, f"{net}.{name}"
                continue
            assert p_plain.grad is not None and p_plain.grad.abs().sum() > 0, f"{net}.{name} got no gradient"
            assert_close(p_plain.grad, p_fast.grad, f"gradient of {net}.{name}", rtol=2e-3)


@pytest.mark.parametrize(("kernel", "stride", "padding", "bias"), [(4, 2, 1, True), (3, 1, 1, False), (5, 3, 0, True)])
@pytest.mark.parametrize("grouped", [False, True], ids=["all-electrodes", "electrode-groups"])
def test_rf_conv2d_is_the_conv_of_the_dense_input(problem, kernel, stride, padding, bias, grouped, monkeypatch):
    """The identity itself, beyond the two generators' geometries, with noise and per-area channels."""
    _, rfs, responses, _ = problem
    projection = RFProjection.from_table(rfs, (32, 32), 8.0, sum_per_area=True, with_noise=True)
    conv = RFConv2d(projection.out_channels, 6, kernel, stride=stride, padding=padding, bias=bias)
    if grouped:  # filtered maps of 5 electrodes at a time: the bounded-memory path of many electrodes
        monkeypatch.setattr(rf_input, "FILTERED_MAPS_BYTES", 5 * 4 * 6 * conv(projection(responses[:1])).shape[-1] ** 2)
    torch.manual_seed(3)
    compact = projection.compact(responses)
    torch.manual_seed(3)
    dense = projection(responses)
    assert compact.shape == dense.shape
    assert_close(dense, compact.dense(), "RFInput.dense()", rtol=1e-6)
    assert_close(conv(dense), rf_conv2d(conv, compact), "rf_conv2d", rtol=1e-5)
    assert torch.equal(conv(compact), rf_conv2d(conv, compact))  # RFConv2d reads the compact input with it
    # The weight gradient too, in both paths of rf_conv2d.
    (grad_dense,) = torch.autograd.grad(conv(dense).square().sum(), conv.weight)
    (grad_compact,) = torch.autograd.grad(rf_conv2d(conv, compact).square().sum(), conv.weight)
    assert_close(grad_dense, grad_compact, "weight gradient of rf_conv2d", rtol=1e-4)
    assert_close(dense[:, :-1].mean(dim=1, keepdim=True), compact.signal_mean(), "signal_mean", rtol=1e-5)
