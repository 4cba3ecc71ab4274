import dataclasses
import json
import warnings

import pytest
import torch

from rfgan.config import preset
from rfgan.data.format import read_info, read_rfs, read_split, to_tensors
from rfgan.errors import DataError
from rfgan.gan.build import build_gan, build_optimizers
from rfgan.gan.step import train_step
from rfgan.run.checkpoint import load_checkpoint, save_checkpoint


def trained(tiny_dataset, seed=0, steps=3):
    info, rfs = read_info(tiny_dataset), read_rfs(tiny_dataset)
    cfg = preset("tiny")
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "VGGFeatures.random_init")
        gan = build_gan(cfg, info, rfs)
    opts = build_optimizers(cfg, gan)
    batch = read_split(tiny_dataset, "train")
    responses, images = to_tensors({k: batch[k][:8] for k in ("responses", "image")})
    for _ in range(steps):
        train_step(gan, opts, responses, images, cfg)
    return cfg, info, rfs, gan, opts, responses


def test_saved_and_loaded_generator_reproduces_outputs_bit_for_bit(tiny_dataset, tmp_path):
    cfg, info, rfs, gan, opts, responses = trained(tiny_dataset)
    save_checkpoint(tmp_path / "ckpt", config=cfg, info=info, rfs=rfs, gan=gan, opts=opts, epoch=2, step=3,
                    metrics={"ssim": 0.5})
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert (ckpt.epoch, ckpt.step, ckpt.metrics) == (2, 3, {"ssim": 0.5})
    assert ckpt.config == cfg and ckpt.rfs.equals(rfs) and ckpt.info.image_size == info.image_size
    # A fresh, differently initialised model takes the saved state.
    _, _, _, fresh, fresh_opts, _ = trained(tiny_dataset, seed=1, steps=0)
    x = gan.projection(responses)
    gan.generator.eval()
    fresh.generator.eval()
    assert not torch.equal(gan.generator(x), fresh.generator(x))
    ckpt.restore(fresh, fresh_opts)
    assert torch.equal(gan.generator(x), fresh.generator(x))
    for a, b in zip(gan.discriminator.state_dict().values(), fresh.discriminator.state_dict().values()):
        assert torch.equal(a, b)
    assert fresh_opts.g.state_dict()["state"][0]["step"] == 3
    torch.testing.assert_close(fresh_opts.d.state_dict()["state"][0]["exp_avg"],
                               opts.d.state_dict()["state"][0]["exp_avg"])
    # The frozen VGG net is not in the checkpoint.
    assert not any("vgg" in k or "features" in k for k in ckpt.nets["generator"])
    assert (tmp_path / "ckpt" / "nets.pt").stat().st_size < 10e6


def test_checkpoint_for_other_data_is_refused(tiny_dataset, tmp_path):
    cfg, info, rfs, gan, opts, _ = trained(tiny_dataset, steps=0)
    save_checkpoint(tmp_path / "c", config=cfg, info=info, rfs=rfs, gan=gan, opts=opts, epoch=0, step=0)
    ckpt = load_checkpoint(tmp_path / "c")
    ckpt.check_matches(info)
    other = dataclasses.replace(info, n_electrodes=191, image_size=(96, 96))
    with pytest.raises(DataError, match=r"trained for 12 electrodes and 32x32x3 .* has 191 electrodes and 96x96x3"):
        ckpt.check_matches(other)
    state = json.loads((tmp_path / "c" / "state.json").read_text())
    (tmp_path / "c" / "state.json").write_text(json.dumps({**state, "checkpoint_version": 99}))
    with pytest.raises(DataError, match="checkpoint_version 99"):
        load_checkpoint(tmp_path / "c")
    with pytest.raises(DataError, match="not an rfgan checkpoint"):
        load_checkpoint(tmp_path)
