import copy
import warnings

import numpy as np
import pytest
import torch

from rfgan.config import preset
from rfgan.gan.build import build_gan, build_optimizers
from rfgan.gan.step import train_step


def build(problem, **overrides):
    info, rfs, responses, images = problem
    # fp32: these tests check the step's arithmetic exactly ("auto" would be bf16 on a CPU with AMX)
    cfg = preset("tiny").with_overrides({"model.dropout": 0.0, "optim.precision": "fp32", **overrides})
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "VGGFeatures.random_init")
        gan = build_gan(cfg, info, rfs)
    return cfg, gan, responses, images


@pytest.mark.parametrize("d_steps", [1, 2])
def test_order_and_isolation_of_the_step(problem, d_steps):
    cfg, gan, responses, target = build(problem, **{"optim.d_steps": d_steps})
    G, D = gan.generator, gan.discriminator
    opts = build_optimizers(cfg, gan)
    opt_g, opt_d = opts
    g_calls, d_inputs, seen = [], [], {}
    G.register_forward_hook(lambda m, i, o: g_calls.append(1))
    D.register_forward_hook(lambda m, i, o: d_inputs.append(i[0]))

    def before_d_step(opt, args, kwargs):
        # errD reached no G parameter: the D update saw a detached fake.
        assert all(p.grad is None for p in G.parameters())
        seen["d_grads"] = [p.grad.clone() for p in D.parameters()]

    def after_d_step(opt, args, kwargs):
        seen["d_params"] = [p.detach().clone() for p in D.parameters()]

    opt_d.register_step_pre_hook(before_d_step)
    opt_d.register_step_post_hook(after_d_step)
    opt_g.register_step_pre_hook(
        lambda opt, a, k: seen.update(g_grad_norm=sum(p.grad.norm() for p in G.parameters() if p.grad is not None))
    )

    out = train_step(gan, opts, responses, target, cfg)

    assert len(g_calls) == 1  # one G forward per iteration, whatever d_steps is
    assert len(d_inputs) == 2 * d_steps + 1
    for k in range(d_steps):
        real, detached_fake = d_inputs[2 * k], d_inputs[2 * k + 1]
        assert torch.equal(real, target) and not real.requires_grad
        assert detached_fake.grad_fn is None and not detached_fake.requires_grad
    assert d_inputs[-1].requires_grad and d_inputs[-1].grad_fn is not None  # G's verdict is differentiable
    assert torch.equal(d_inputs[-1], d_inputs[1])  # the same fake as the D update saw
    # The G update left D untouched: same parameters, no extra gradient.
    for p, after_d, grad in zip(D.parameters(), seen["d_params"], seen["d_grads"]):
        assert torch.equal(p, after_d) and torch.equal(p.grad, grad)
    assert all(p.requires_grad for p in D.parameters())  # D is trainable again for the next step
    assert seen["g_grad_norm"] > 0
    assert all(not t.requires_grad for t in out)
    torch.testing.assert_close(out.errD, out.errD_real + out.errD_fake)


def test_generator_gets_gradient_from_both_errg_and_vgg(problem):
    grads = {}
    for name, weights in {"adv": (1.0, 0.0), "vgg": (0.0, 1.0), "both": (1.0, 1.0)}.items():
        # λ_adv = 0 with D present still updates D, so all three runs see the same D: only G's loss differs.
        cfg, gan, responses, target = build(
            problem, **{"loss.lambda_adv": weights[0], "loss.lambda_vgg": weights[1], "loss.lambda_pix": 0.0}
        )
        if gan.discriminator is None:
            torch.manual_seed(0)
            gan.discriminator = build(problem)[1].discriminator
        opts = build_optimizers(cfg, gan)
        opts.g.register_step_pre_hook(
            lambda opt, a, k, name=name, gan=gan: grads.__setitem__(
                name, torch.cat([p.grad.flatten() for p in gan.generator.parameters()])
            )
        )
        train_step(gan, opts, responses, target, cfg)
    assert grads["adv"].norm() > 0 and grads["vgg"].norm() > 0
    assert not torch.allclose(grads["adv"], grads["vgg"])
    torch.testing.assert_close(grads["both"], grads["adv"] + grads["vgg"], rtol=1e-4, atol=1e-6)


def test_non_adversarial_rfmasked_step_ignores_the_target_outside_the_rfs(problem):
    cfg, gan, responses, target = build(problem, **{"loss.lambda_adv": 0.0, "loss.lambda_vgg": 0.2, "data.mask": True})
    assert gan.discriminator is None and gan.mask is not None and 0 < gan.mask.mean() < 1
    twin = copy.deepcopy(gan)
    opts = build_optimizers(cfg, gan)
    assert opts.d is None
    torch.manual_seed(1)
    out = train_step(gan, opts, responses, target, cfg)
    assert out.errG == 0 and out.errD == 0 and out.vgg > 0 and out.pix > 0
    # Another target that differs only outside the RF mask gives exactly the same losses.
    other = target * gan.mask + (1 - gan.mask) * torch.rand_like(target)
    torch.manual_seed(1)
    out_other = train_step(twin, build_optimizers(cfg, twin), responses, other, cfg)
    assert torch.equal(out.pix, out_other.pix) and torch.equal(out.vgg, out_other.vgg)


@pytest.mark.parametrize(
    "generator, discriminator, conditional",
    [("unet", "patch", False), ("unet", "patch", True), ("reference", "reference", False)],
)
def test_reconstruction_loss_goes_well_down_on_a_tiny_problem(problem, generator, discriminator, conditional):
    overrides = {
        "model.generator": generator,
        "model.discriminator": discriminator,
        "model.conditional_d": conditional,
        "loss.lambda_vgg": 0.0,
        "loss.lambda_pix": 10.0,
        "loss.lambda_adv": 0.1,
        "optim.lr_g": 1e-3,
    }
    if generator == "reference":
        # No dropout: the original layout drops half of every pooled map, which on 16 images keeps the loss at
        # about 0.4 of its start for hundreds of steps; what this test checks is the step, not that regulariser.
        overrides.update(
            {
                "model.g_widths": [16, 16, 32],
                "model.g_convs_per_block": [1, 1, 1],
                "model.n_res": 1,
                "model.dropout": 0.0,
            }
        )
    torch.manual_seed(0)
    cfg = preset("tiny").with_overrides(overrides)
    info, rfs, responses, target = problem
    gan = build_gan(cfg, info, rfs)
    assert gan.conditional_d == conditional
    opts = build_optimizers(cfg, gan)

    def mse():
        gan.generator.eval()
        with torch.no_grad():
            value = torch.mean((gan.reconstruct(responses) - target) ** 2).item()
        gan.generator.train()
        return value

    before = mse()
    for _ in range(100):
        out = train_step(gan, opts, responses, target, cfg)
    after = mse()
    assert np.isfinite(out.g_total.item())
    assert after < 0.3 * before, (before, after)


def test_the_ssim_term_enters_g_total_with_its_weight(problem):
    totals = {}
    for weight in (0.0, 2.0):
        cfg, gan, responses, target = build(problem, **{"loss.lambda_ssim": weight})
        out = train_step(gan, build_optimizers(cfg, gan), responses, target, cfg)
        totals[weight] = out
    assert totals[0.0].ssim.item() == 0.0 and 0 < totals[2.0].ssim.item() < 1
    torch.testing.assert_close(totals[2.0].g_total, totals[0.0].g_total + 2.0 * totals[2.0].ssim)


def test_bf16_autocast_step_runs(problem):
    cfg, gan, responses, target = build(problem, **{"optim.precision": "bf16"})
    out = train_step(gan, build_optimizers(cfg, gan), responses, target, cfg)
    assert all(torch.isfinite(t) for t in out) and out.g_total.dtype == torch.float32


def test_step_refuses_mismatched_parts(problem):
    cfg, gan, responses, target = build(problem)
    opts = build_optimizers(cfg, gan)
    with pytest.raises(ValueError, match="differ"):
        train_step(gan, opts, responses[:3], target, cfg)
    with pytest.raises(ValueError, match="together"):
        train_step(gan, opts._replace(d=None), responses, target, cfg)
