"""The standard table: the feature nets read the layers the literature names, their weights follow torchvision's hub
cache, and the per-image values and their means ± SE."""

from __future__ import annotations

import hashlib
import math
import shutil

import pytest
import torch
import torchvision
from torch.nn import functional as F

from rfgan.errors import MissingFeatureWeightsError
from rfgan.evaluate import features
from rfgan.evaluate.features import ALEXNET, VGG19, FeatureNets, is_torchvision_file, weights_file
from rfgan.evaluate.metrics import PSNR_CAP_DB
from rfgan.evaluate.table import METRICS, per_image_metrics, summarize, table_text
from rfgan.gan.vgg import VGGFeatures

MEAN, STD = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def nets(feature_weights_home):
    files = feature_weights_home / "hub" / "checkpoints"
    return FeatureNets(str(files / "alexnet-owt-7be5be79.pth"), str(files / "vgg19-dcbb9e9d.pth"))


def _images(n, c=3, size=32, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def test_alexnet_layers_are_those_of_mindeyes_metric_code(nets, feature_weights_home):
    alexnet = torchvision.models.alexnet().eval()
    alexnet.load_state_dict(torch.load(feature_weights_home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"))
    x = _images(2)
    # MindEye: Resize(256, bilinear), ImageNet Normalize, then features.4 ("layer 2") and features.11 ("layer 5").
    prepared = (F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False) - MEAN) / STD
    out = nets(x)
    with torch.no_grad():
        torch.testing.assert_close(out["alexnet_conv2"], alexnet.features[:5](prepared), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out["alexnet_conv5"], alexnet.features[:12](prepared), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out["alexnet_fc8"], alexnet(prepared), atol=1e-4, rtol=1e-4)
    assert [k for k in out if k.startswith("alexnet_")] == [
        f"alexnet_{n}" for n in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
    ]


def test_vgg19_layers_are_the_perceptual_losss_on_imagenet_normalised_images(nets, feature_weights_home):
    vgg = VGGFeatures(weights=feature_weights_home / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth", imagenet_norm=True)
    x = _images(2, c=1)  # grayscale goes in as RGB
    out = nets(x)
    for name, expected in zip(("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"), vgg(x), strict=True):
        torch.testing.assert_close(out[f"vgg19_{name}"], expected)
    assert out["alexnet_conv1"].shape[0] == 2


def test_nets_stay_in_eval_mode(nets):
    nets.train()
    x = _images(2)
    torch.testing.assert_close(nets(x)["alexnet_fc7"], nets(x)["alexnet_fc7"])  # no dropout


def test_a_file_is_torchvisions_only_if_its_hash_matches_its_name(tmp_path, feature_weights_home):
    ours = feature_weights_home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert not is_torchvision_file(str(ours))
    digest = hashlib.sha256(ours.read_bytes()).hexdigest()
    named = tmp_path / f"alexnet-owt-{digest[:8]}.pth"
    shutil.copy(ours, named)
    assert is_torchvision_file(str(named))
    assert not is_torchvision_file(str(tmp_path / shutil.copy(ours, tmp_path / "alexnet.pth")))


def test_weights_are_downloaded_into_the_hub_cache_when_absent(tmp_path, monkeypatch, feature_weights_home):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    fetched = []

    def download(url, dst, hash_prefix=None, **kwargs):  # a reachable network, serving the tests' file
        fetched.append((url, hash_prefix))
        shutil.copy(feature_weights_home / "hub" / "checkpoints" / url.rsplit("/", 1)[1], dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    path = weights_file(ALEXNET)
    assert path == str(tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth")
    assert fetched == [(ALEXNET.url, "7be5be79")]
    assert weights_file(ALEXNET) == path and len(fetched) == 1  # cached: fetched once


def test_offline_without_weights_is_one_line_naming_the_file(tmp_path, monkeypatch):
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(MissingFeatureWeightsError) as caught:
        weights_file(VGG19)
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth") in message
    assert "torchvision.models.vgg19(weights='IMAGENET1K_V1')" in message and "--no-feature-metrics" in message


def test_a_broken_alexnet_file_names_itself(tmp_path):
    bad = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(MissingFeatureWeightsError, match="not a torchvision AlexNet state dict"):
        features._load_alexnet(str(bad))


def test_a_perfect_reconstruction_scores_the_top_of_every_row(nets):
    targets = _images(8, seed=1)
    mask = torch.zeros(32, 32)
    mask[8:24, 8:24] = 1
    values = per_image_metrics(targets, targets, torch.arange(8), nets, mask, batch_size=3)
    assert list(summarize(values)) == [m.key for m in METRICS]
    for key, v in values.items():
        assert v.shape == (8,), key
        expected = PSNR_CAP_DB if key.startswith("psnr") else 1.0
        torch.testing.assert_close(v, torch.full((8,), expected), atol=1e-3, rtol=0, msg=key)


def test_identification_on_features_tells_images_apart_and_repeats_are_left_out(nets):
    targets = _images(6, seed=2)
    noise = _images(6, seed=3)
    ids = torch.tensor([0, 0, 1, 2, 3, 4])  # rows 0 and 1 show one image (its repeat has the same pixels)
    targets[1] = targets[0]
    values = per_image_metrics(noise, targets, ids, nets)
    for key in ("identification", "identification_alexnet2", "identification_vgg19_relu5_1"):
        assert 0.0 <= values[key].min() and values[key].max() <= 1.0
    # Row 0 is compared with 4 other images, not 5: its wins are counted in quarters.
    assert (values["identification"][0] * 4) % 1 == 0
    # Retrieval among the 5 distinct images: top-5 always succeeds, so it is left out.
    assert "retrieval_top1" in values and "retrieval_top5" not in values


def test_one_image_shown_again_and_again_has_no_identification(nets):
    targets = _images(1, seed=4).expand(3, -1, -1, -1)
    values = per_image_metrics(_images(3, seed=5), targets, torch.zeros(3, dtype=torch.long), nets)
    assert not any(k.startswith(("identification", "retrieval")) for k in values)
    assert values["ssim"].shape == (3,)


def test_summary_is_the_mean_and_standard_error():
    values = {"ssim": torch.tensor([0.2, 0.4, 0.9]), "psnr": torch.tensor([20.0])}
    summary = summarize(values)
    assert list(summary) == ["psnr", "ssim"]  # the table's order
    assert summary["ssim"]["mean"] == pytest.approx(0.5)
    assert summary["ssim"]["se"] == pytest.approx(torch.tensor([0.2, 0.4, 0.9]).std().item() / math.sqrt(3))
    assert summary["psnr"] == {"mean": 20.0, "se": None, "n": 1}
    assert table_text(summary).splitlines()[1].split() == ["SSIM,", "luma", "0.500", "±", "0.208", "(n=3)"]
