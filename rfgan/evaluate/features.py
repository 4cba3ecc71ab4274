"""The pretrained feature nets of the standard reconstruction metrics: AlexNet, read at the layers MindEye's metric
code reads, and VGG19 at the layers of rfgan's perceptual loss.

Weights follow torchvision's convention: its ImageNet file in the torch hub cache (`$TORCH_HOME/hub/checkpoints/`),
downloaded there on first use when a network is reachable. Without the file and without a network, the error names
the file to copy.
"""

from __future__ import annotations

import hashlib
import os

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.transforms import InterpolationMode, Normalize, Resize

from rfgan.config import VGG_LAYERS
from rfgan.errors import MissingFeatureWeightsError
from rfgan.gan.vgg import VGGFeatures

ALEXNET = torchvision.models.AlexNet_Weights.IMAGENET1K_V1
VGG19 = torchvision.models.VGG19_Weights.IMAGENET1K_V1

# torchvision's AlexNet graph nodes and the layer names of the literature: conv1–5 after their ReLU (MindEye's
# "layer 2" is features.4 and "layer 5" features.11), fc6 and fc7 after their ReLU, fc8 the logits.
ALEXNET_LAYERS = {
    "features.1": "conv1",
    "features.4": "conv2",
    "features.7": "conv3",
    "features.9": "conv4",
    "features.11": "conv5",
    "classifier.2": "fc6",
    "classifier.5": "fc7",
    "classifier.6": "fc8",
}
# MindEye resizes to 256 (bilinear, no crop) before AlexNet: its conv1 (11x11, stride 4) needs images of that scale.
ALEXNET_SIZE = 256


def weights_file(weights: torchvision.models.WeightsEnum) -> str:
    """torchvision's file of `weights` in the torch hub cache; downloaded there first if absent. Raises
    MissingFeatureWeightsError, naming the file and where it goes, when it is absent and cannot be downloaded."""
    filename = os.path.basename(weights.url)
    path = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    if os.path.isfile(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # torchvision's file names carry the first hex digits of their SHA-256, which the download is checked against.
    found = torch.hub.HASH_REGEX.search(filename)
    try:
        torch.hub.download_url_to_file(weights.url, path, hash_prefix=found.group(1) if found else None)
    except (OSError, RuntimeError) as e:  # URLError (offline) is an OSError; a hash mismatch a RuntimeError
        model = filename.split("-")[0]
        raise MissingFeatureWeightsError(
            f"the feature metrics need torchvision's ImageNet weights {filename}, which are not at {path} and could "
            f"not be downloaded ({str(e).strip().splitlines()[0]}): copy the file there (on a machine with internet, "
            f"python -c \"import torchvision; torchvision.models.{model}(weights='IMAGENET1K_V1')\" saves it in "
            "~/.cache/torch/hub/checkpoints/; TORCH_HOME moves that cache), or pass --no-feature-metrics."
        ) from e
    return path


def is_torchvision_file(path: str) -> bool:
    """Whether the file at `path` is the one torchvision published under its name: its SHA-256 starts with the hex
    digits the name carries (alexnet-owt-7be5be79.pth). Another state dict saved under that name is not."""
    found = torch.hub.HASH_REGEX.search(os.path.basename(path))
    if found is None:
        return False
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest().startswith(found.group(1))


def _load_alexnet(path: str) -> nn.Module:
    net = torchvision.models.alexnet()
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as e:
        raise MissingFeatureWeightsError(
            f"{path} is not a torchvision AlexNet state dict ({str(e).strip().splitlines()[0]}); delete it, and it is "
            "downloaded again, or copy torchvision's file there."
        ) from e
    return net


class FeatureNets(nn.Module):
    """AlexNet and VGG19 with ImageNet weights: images (B, 1 or 3, H, W) in [0, 1] → {layer: activations}, the
    layers named `alexnet_conv1` … `alexnet_fc8` and `vgg19_relu1_1` … `vgg19_relu5_1`. Frozen, always in eval mode.

    Both see ImageNet-normalised images, as they were trained on; AlexNet after MindEye's resize to 256, VGG19 at the
    images' own size (H, W >= 16 to reach relu5_1).
    """

    def __init__(self, alexnet_file: str, vgg19_file: str) -> None:
        super().__init__()
        self.alexnet = create_feature_extractor(_load_alexnet(alexnet_file).eval(), return_nodes=ALEXNET_LAYERS)
        self.vgg19 = VGGFeatures(weights=vgg19_file, imagenet_norm=True)
        transforms = ALEXNET.transforms()
        self.resize = Resize(ALEXNET_SIZE, interpolation=InterpolationMode.BILINEAR, antialias=True)
        self.normalize = Normalize(transforms.mean, transforms.std)
        self.requires_grad_(False)
        self.train(False)
        # What the metrics' JSON says about the nets: which weights, from which file, and whether that file is
        # torchvision's ImageNet file (pretrained) or another state dict saved under its name (e.g. tests' weights).
        self.description = {
            name: {"weights": f"torchvision {weights}", "pretrained": is_torchvision_file(path), "file": path}
            for name, weights, path in (("alexnet", ALEXNET, alexnet_file), ("vgg19", VGG19, vgg19_file))
        }

    @classmethod
    def pretrained(cls) -> FeatureNets:
        """Both nets with torchvision's ImageNet weights from the torch hub cache (downloaded if absent)."""
        return cls(weights_file(ALEXNET), weights_file(VGG19))

    def train(self, mode: bool = True) -> FeatureNets:
        """Always stays in eval mode: AlexNet's dropout must stay off."""
        return super().train(False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grayscale as RGB, as the nets were trained on colour
        out = {f"alexnet_{name}": a for name, a in self.alexnet(self.normalize(self.resize(x))).items()}
        out.update({f"vgg19_{name}": a for name, a in zip(VGG_LAYERS, self.vgg19(x), strict=True)})
        return out
