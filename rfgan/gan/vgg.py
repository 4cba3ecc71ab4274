"""The frozen VGG19 feature net of the perceptual loss and of feature metrics, and its weights.

Weights follow torchvision's convention (its IMAGENET1K_V1 file in the torch hub cache); nothing is downloaded at
run time here, so a missing file is a one-line error that names it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from rfgan.errors import MissingVGGWeightsError

# torchvision is imported where it is used: importing it costs about a second (it pulls in torch._dynamo), and
# the driver of `rfgan train` and the CLI's parser never need it.

# Indices of VGG_LAYERS in torchvision's vgg19().features.
_RELU_INDICES: tuple[int, ...] = (1, 6, 11, 20, 29)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def default_vgg19_weights_path() -> str:
    """Where torchvision caches IMAGENET1K_V1 VGG19 weights (honours $TORCH_HOME)."""
    import torchvision

    filename = os.path.basename(torchvision.models.VGG19_Weights.IMAGENET1K_V1.url)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def _how_to_fix(path: str) -> str:
    # One line (rfgan prints errors on one line), the CLI's way first, then what to copy where.
    import torchvision

    filename = os.path.basename(torchvision.models.VGG19_Weights.IMAGENET1K_V1.url)
    return (
        f"give the file with --set loss.vgg_weights=PATH (in Python VGGFeatures(weights=PATH)), or copy torchvision's "
        f'{filename} to {path} (on a machine with internet, python -c "import torchvision; '
        f"torchvision.models.vgg19(weights='IMAGENET1K_V1')\" saves it in ~/.cache/torch/hub/checkpoints/; "
        "TORCH_HOME moves that cache); nothing is downloaded at run time. For smoke tests only, "
        "--set loss.vgg_random_init=true (VGGFeatures(random_init=True)) runs without a perceptual loss."
    )


def _build_features(device: torch.device | str) -> nn.Sequential:
    """torchvision's vgg19().features truncated after relu5_1, uninitialised."""
    import torchvision

    # Built on meta so the unused 100M-parameter classifier never allocates.
    with torch.device("meta"):
        features = torchvision.models.vgg19().features[: _RELU_INDICES[-1] + 1]
    return features.to_empty(device=device)


def load_vgg19_state_dict(path: str | os.PathLike | None = None) -> dict[str, Tensor]:
    """Load VGG19 conv weights as a features-only state dict truncated at relu5_1.

    ``path`` may hold a full torchvision vgg19 state dict (``features.0.weight``,
    ``classifier.*``...) or a features-only one (``0.weight``...). ``None`` means
    torchvision's file in the torch hub cache. Raises MissingVGGWeightsError if
    the file is absent or unreadable, ValueError if a needed key is missing.
    """
    default = path is None
    path = default_vgg19_weights_path() if default else os.fspath(path)
    if not os.path.isfile(path):
        where = "in the torch hub cache " if default else ""
        raise MissingVGGWeightsError(f"VGG19 weights not found {where}at {path}: {_how_to_fix(path)}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MissingVGGWeightsError(
            f"VGG19 weights file {path} could not be loaded ({exc}); {_how_to_fix(path)}"
        ) from exc
    if not isinstance(state, Mapping):
        raise MissingVGGWeightsError(
            f"VGG19 weights file {path} holds a {type(state).__name__}, not a state dict; {_how_to_fix(path)}"
        )
    prefix = "features."
    if any(isinstance(k, str) and k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}
    needed = _build_features("meta").state_dict().keys()
    for key in needed:
        if key not in state:
            raise ValueError(
                f"VGG19 state dict in {path} lacks key {prefix + key!r} "
                f"(or {key!r} in a features-only dict); is it a vgg19 state dict?"
            )
    return {key: state[key] for key in needed}


class VGGFeatures(nn.Module):
    """Frozen VGG19 feature extractor returning the VGG_LAYERS activations.

    Inputs are images in [0, 1] with 1 or 3 channels (grayscale is repeated to
    RGB). ImageNet normalisation is off by default because the reference model
    fed unnormalised images.

    NOT PART OF ANY CHECKPOINT: its weights are a fixed external asset
    (torchvision's ImageNet file, or seeded random weights), so checkpoint code
    must leave this module out and rebuild it on load.
    """

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        random_init: bool = False,
        imagenet_norm: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.features = _build_features("cpu")
        if random_init:
            warnings.warn(
                "VGGFeatures(random_init=True): random VGG weights, so the feature "
                "loss is not perceptual; use only for smoke tests.",
                UserWarning,
                stacklevel=2,
            )
            # Own generator: every process (e.g. distributed workers) gets the
            # same weights for a seed, without touching the global RNG.
            gen = torch.Generator().manual_seed(seed)
            for m in self.features:
                if isinstance(m, nn.Conv2d):  # torchvision's VGG init
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=gen)
                    nn.init.zeros_(m.bias)
        else:
            self.features.load_state_dict(load_vgg19_state_dict(weights))
        self.imagenet_norm = imagenet_norm
        # Non-persistent: derived constants, not weights.
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> VGGFeatures:
        """Always stays in eval mode, whatever the parent module asks."""
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Feature maps at VGG_LAYERS for x of shape (B, 1 or 3, H, W) in [0, 1]."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # conv never writes to its input, so a view suffices
        elif x.shape[1] != 3:
            raise ValueError(f"VGGFeatures expects 1 or 3 channels, got {x.shape[1]}")
        if self.imagenet_norm:
            x = (x - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _RELU_INDICES:
                out.append(x)
        return out
