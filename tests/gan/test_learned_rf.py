"""Learned RF layers (model.rf_layer): start from the table's maps, match the dense computation, and learn."""

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from rfgan.config import ConfigError, preset
from rfgan.data.rf import RFTable, rf_maps
from rfgan.gan.build import build_gan, build_optimizers
from rfgan.gan.learned_rf import GaussianRFs, LearnedRFGenerator, MapRFs, learned_rfs, rf_penalty
from rfgan.gan.models import UNetGenerator, init_weights
from rfgan.gan.step import train_step

NETS = {"model.ngf": 8, "model.n_down": 3, "model.ndf": 8, "optim.precision": "fp32", "loss.lambda_vgg": 0.0}


def build(problem, **overrides):
    info, rfs, _, _ = problem
    cfg = preset("tiny").with_overrides({**NETS, **overrides})
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "VGGFeatures.random_init")
        return cfg, build_gan(cfg, info, rfs)


@pytest.mark.parametrize("norm", ["peak", "sum", "sum_full"])
def test_gaussian_layer_starts_at_the_tables_maps(problem, norm):
    info, rfs, _, _ = problem
    want = rf_maps(rfs, info.image_size, info.fov_deg, norm=norm)
    got = GaussianRFs(rfs, info.image_size, info.fov_deg, norm)().detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * want.max())


def test_map_layer_starts_near_the_tables_maps(problem):
    info, rfs, _, _ = problem
    want = rf_maps(rfs, info.image_size, info.fov_deg, norm="peak")
    got = MapRFs(rfs, info.image_size, info.fov_deg, "peak", resolution=16)().detach().numpy()
    # Area-averaged to 16x16 and back: the shape is kept, not every pixel.
    for e in range(len(rfs)):
        assert np.corrcoef(got[e].ravel(), want[e].ravel())[0, 1] > 0.95


@pytest.mark.parametrize("layer", ["gaussian", "map"])
@pytest.mark.parametrize(
    "extra", [{}, {"data.sum_per_area": True}, {"data.with_noise": True, "model.linear_base": True}]
)
def test_learned_layers_compact_path_matches_the_dense_computation(problem, layer, extra):
    """G's compact first layer with the learned maps against the conv of the dense B×E×H×W input built from them:
    the same outputs, and the same gradients for the net's weights and the RF parameters."""
    _, _, responses, _ = problem
    cfg, gan = build(problem, **{"model.rf_layer": layer, "model.dropout": 0.0, **extra})
    gen = gan.generator
    learned = gen if isinstance(gen, LearnedRFGenerator) else gen.net  # under a linear base, its net
    assert isinstance(learned, LearnedRFGenerator)
    with torch.no_grad():  # move off the initial values, so that the maps are not the table's
        for p in learned.rfs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = gan.inputs(responses)
    torch.manual_seed(1)
    out_compact = learned(x)
    grads_compact = torch.autograd.grad(out_compact.square().sum(), list(learned.parameters()))
    maps = learned.rfs().to(x.maps.dtype)
    dense = x._replace(maps=maps, unfolded={}).dense()
    torch.manual_seed(1)
    out_dense = learned.net(dense)
    grads_dense = torch.autograd.grad(out_dense.square().sum(), list(learned.parameters()))
    torch.testing.assert_close(out_compact, out_dense, rtol=1e-4, atol=1e-5)
    names = [n for n, _ in learned.named_parameters()]
    assert any(n.startswith("rfs.") for n in names)
    for name, a, b in zip(names, grads_compact, grads_dense):
        scale = max(b.abs().max().item(), 1e-12)
        assert (a - b).abs().max().item() <= 1e-4 * scale, name


def test_fixed_layer_is_the_plain_generator(problem):
    """model.rf_layer=fixed (the default) adds no module, no parameter and no random draw: G is the U-Net built
    directly, its outputs bit for bit equal."""
    info, rfs, responses, _ = problem
    cfg, gan = build(problem)
    assert cfg.model.rf_layer == "fixed" and learned_rfs(gan.generator) is None
    torch.manual_seed(0)
    m = cfg.model
    plain = UNetGenerator(gan.projection.out_channels, info.channels, ngf=m.ngf, n_down=m.n_down, norm=m.norm,
                          dropout=m.dropout)  # fmt: skip
    init_weights(plain, m.init_std, m.init)
    assert list(gan.generator.state_dict()) == list(plain.state_dict())
    gan.generator.eval(), plain.eval()
    x = gan.inputs(responses)
    assert torch.equal(gan.generator(x), plain(x))


def test_learned_centres_move_to_the_true_rfs_under_training():
    """A fit whose centres are off by one sigma, trained to reproduce the maps of the true RFs through the layer:
    Adam at optim.lr_rf's default brings the median centre error down by far more than half."""
    rng = np.random.default_rng(0)
    n, size, fov = 20, 32, 10.0
    truth = RFTable(np.arange(n), rng.uniform(-3, 3, n), rng.uniform(-3, 3, n), rng.uniform(0.5, 1.0, n))
    fit = dataclasses.replace(
        truth,
        x_deg=truth.x_deg + truth.sigma_deg * rng.normal(size=n),
        y_deg=truth.y_deg + truth.sigma_deg * rng.normal(size=n),
    )
    target = torch.from_numpy(rf_maps(truth, (size, size), fov, norm="peak"))
    layer = GaussianRFs(fit, (size, size), fov, "peak")
    opt = torch.optim.Adam(layer.parameters(), lr=preset("tiny").optim.lr_rf)
    for _ in range(300):
        opt.zero_grad()
        (layer() - target).square().mean().backward()
        opt.step()
    learned = layer.table(fit)
    before = np.median(np.hypot(fit.x_deg - truth.x_deg, fit.y_deg - truth.y_deg))
    after = np.median(np.hypot(learned.x_deg - truth.x_deg, learned.y_deg - truth.y_deg))
    assert after < 0.2 * before, (before, after)


def test_rf_parameters_get_their_own_learning_rate_and_the_map_penalty_enters_gs_loss(problem):
    _, _, responses, images = problem

    def trained_fields(sparse: float) -> torch.Tensor:
        cfg, gan = build(problem, **{"model.rf_layer": "map", "optim.lr_rf": 0.05, "model.rf_map_sparse": sparse})
        opts = build_optimizers(cfg, gan)
        groups = opts.g.param_groups
        assert [g["lr"] for g in groups] == [cfg.optim.lr_g, 0.05]
        assert {id(p) for p in groups[1]["params"]} == {id(p) for p in learned_rfs(gan.generator).parameters()}
        penalty = rf_penalty(gan.generator)
        assert penalty is not None and penalty.item() > 0
        torch.manual_seed(0)
        for _ in range(3):
            train_step(gan, opts, responses[:8], images[:8], cfg)
        return learned_rfs(gan.generator).field.detach()

    # The same steps from the same start: a strong sparsity weight leaves smaller fields.
    assert trained_fields(50.0).abs().mean() < 0.9 * trained_fields(0.0).abs().mean()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.rf_layer": "gaussian", "perf.compact_input": False}, "perf.compact_input"),
        ({"model.rf_layer": "map", "data.rf_norm": "point"}, "rf_norm=point"),
        ({"model.rf_layer": "cnn"}, "model.rf_layer must be one of"),
        ({"optim.lr_rf": 0.0}, "optim.lr_rf"),
    ],
)
def test_learned_layers_refuse_what_they_cannot_do(overrides, message):
    with pytest.raises(ConfigError, match=message):
        preset("tiny").with_overrides(overrides)


@pytest.mark.parametrize("norm", ["peak", "sum", "sum_full"])
def test_rfs_beyond_the_window_keep_finite_gradients(norm):
    """Fourth audit: an RF just outside the image (y 5.92°, sigma 0.08° on a 10° window) has a Gaussian of ~1e-29 on
    every pixel; normalising by its own max or sum gave NaN gradients, and training went on with NaN parameters. One
    so far out that float64 underflows stays all zeros, as in rf_maps."""
    table = RFTable(np.arange(3), np.array([0.0, 0.0, 40.0]), np.array([0.0, 5.92, 0.0]), np.array([1.0, 0.08, 0.3]))
    layer = GaussianRFs(table, (32, 32), 10.0, norm)
    np.testing.assert_allclose(layer().detach().numpy(), rf_maps(table, (32, 32), 10.0, norm), atol=1e-6, rtol=1e-4)
    opt = torch.optim.Adam(layer.parameters(), lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        layer().square().sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
        opt.step()
    assert all(torch.isfinite(p).all() for p in layer.parameters())
