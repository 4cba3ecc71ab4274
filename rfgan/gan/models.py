"""Generators and discriminators for reconstructing images from RF-mapped electrode responses.

All modules are pure PyTorch. Generators output images in [0, 1]; discriminators
return raw logits, so pair them with ``BCEWithLogitsLoss`` (or a hinge/LS loss).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rfgan.config import INIT_KINDS, NORM_KINDS
from rfgan.gan.rf_input import RFConv2d, RFInput


def _check_divisible(x: Tensor | RFInput, divisor: int, owner: str) -> None:
    height, width = x.shape[-2:]
    if height % divisor or width % divisor:
        raise ValueError(
            f"{owner} needs height and width divisible by {divisor}; got an image of size {height}x{width}"
        )


def _min_input_size(convs: Iterable[nn.Conv2d]) -> int:
    """Smallest input side for which every conv in the stack still yields at least one pixel."""
    size = 1
    for conv in reversed(list(convs)):
        size = (size - 1) * conv.stride[0] + conv.kernel_size[0] - 2 * conv.padding[0]
    return size


def _check_min_size(x: Tensor | RFInput, min_size: int, owner: str) -> None:
    height, width = x.shape[-2:]
    if min(height, width) < min_size:
        raise ValueError(
            f"{owner} needs images of at least {min_size}x{min_size}; got an image of size {height}x{width}"
        )


def _check_norm(norm: str) -> None:
    if norm not in NORM_KINDS:
        raise ValueError(f"norm must be one of {NORM_KINDS}, got {norm!r}")


def _norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        # Affine so that init_weights and training treat it like BatchNorm.
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


def _conv_bn_relu(in_channels: int, out_channels: int, bias: bool = False, conv: type = nn.Conv2d) -> nn.Sequential:
    # No conv bias by default: BatchNorm's shift makes it redundant (the original layout keeps it, as model_file.py).
    return nn.Sequential(
        conv(in_channels, out_channels, 3, padding=1, bias=bias),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _to_unit_range(x: Tensor) -> Tensor:
    return (torch.tanh(x) + 1) / 2


# --------------------------------------------------------------------------- reference G


class _EncoderBlock(nn.Module):
    """VGG-style conv block followed by a max-pool that remembers where the maxima were, then (original layout,
    blocks 1–4) dropout on the pooled map."""

    def __init__(
        self, in_channels: int, out_channels: int, n_convs: int, bias: bool, dropout: float, first: bool = False
    ) -> None:
        super().__init__()
        # The generator's first block takes its input, which may be compact: an RFConv2d reads it.
        self.convs = nn.Sequential(
            *(
                _conv_bn_relu(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    bias,
                    RFConv2d if first and i == 0 else nn.Conv2d,
                )
                for i in range(n_convs)
            )
        )
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()  # no parameters: state_dict keys unchanged

    def forward(self, x: Tensor | RFInput) -> tuple[Tensor, Tensor, torch.Size]:
        features = self.convs(x)  # (B, C, H, W)
        pooled, indices = self.pool(features)  # (B, C, ⌊H/2⌋, ⌊W/2⌋) twice
        return self.drop(pooled), indices, features.shape


class _DecoderBlock(nn.Module):
    """Unpools with the matching encoder's indices to the encoder's size (odd sides round-trip), then convs down to
    the next width; `start_dropout` drops right after the unpool, as the original does."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        n_convs: int,
        final: bool,
        start_dropout: float = 0.0,
        hidden: int | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.unpool = nn.MaxUnpool2d(2)
        self.drop = nn.Dropout(start_dropout) if start_dropout > 0 else nn.Identity()  # no parameters
        widths = [in_channels] + [hidden or in_channels] * (n_convs - 1)
        layers: list[nn.Module] = [_conv_bn_relu(a, b, bias) for a, b in zip(widths[:-1], widths[1:])]
        if final:
            # Raw pre-tanh output: BN/ReLU here would clip the image range.
            layers.append(nn.Conv2d(widths[-1], out_channels, 3, padding=1))
        else:
            layers.append(_conv_bn_relu(widths[-1], out_channels, bias))
        self.convs = nn.Sequential(*layers)

    def forward(self, x: Tensor, indices: Tensor, size: torch.Size) -> Tensor:
        x = self.unpool(x, indices, output_size=size)  # (B, C, H, W) of the matching encoder block
        return self.convs(self.drop(x))


class _ResidualBlock(nn.Module):
    """relu(x + bn2(conv2(relu(bn1(conv1(x)))))) (RF_GANsynth model_file.py:293-302)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn_relu(channels, channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))


class ReferenceGenerator(nn.Module):
    """SegNet/DeconvNet-style encoder–decoder with a residual bottleneck (about 53 M parameters at 191 inputs).

    Decoder blocks reuse the encoder's max-pool indices, so spatial detail flows back without concatenated skips;
    unpooling to the encoder's sizes round-trips any side of at least 2**len(widths) (240 px included).

    The layout is RF_GANsynth's model_file.py (ResblocksDeconv) as it is: conv biases before BatchNorm, dropout after
    pools 1–4 and after unpools 5–2 (8 layers at 5 blocks), a ReLU after each residual sum, and a last decoder block
    of 64→32→3; 53,136,835 parameters at 191 inputs (docs/fidelity.md).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 3,
        widths: Sequence[int] = (64, 128, 256, 512, 512),
        convs_per_block: Sequence[int] = (2, 2, 3, 3, 3),
        n_res: int = 5,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if len(widths) != len(convs_per_block) or not widths:
            raise ValueError(
                f"widths and convs_per_block must be non-empty and of equal length; "
                f"got {len(widths)} and {len(convs_per_block)}"
            )
        self.min_size = 2 ** len(widths)
        n = len(widths)
        ins = (in_channels, *widths[:-1])
        self.encoder = nn.ModuleList(
            _EncoderBlock(c_in, c_out, k, bias=True, dropout=dropout if i < n - 1 else 0.0, first=i == 0)
            for i, (c_in, c_out, k) in enumerate(zip(ins, widths, convs_per_block))
        )
        self.bottleneck = nn.Sequential(*(_ResidualBlock(widths[-1]) for _ in range(n_res)))
        outs = (out_channels, *widths[:-1])
        mirrored = reversed(list(enumerate(zip(widths, outs, convs_per_block))))
        # Stored deepest first, in the order forward runs them.
        self.decoder = nn.ModuleList(
            _DecoderBlock(
                c_in,
                c_out,
                k,
                final=i == 0,
                start_dropout=dropout if i > 0 else 0.0,
                hidden=max(1, c_in // 2) if i == 0 else None,  # model_file.py:147-150: 64→32→3
            )
            for i, (c_in, c_out, k) in mirrored
        )

    def forward(self, x: Tensor | RFInput) -> Tensor:
        """Map (B, in_channels, H, W) RF inputs, dense or compact, to (B, out_channels, H, W) images in [0, 1]."""
        _check_min_size(x, self.min_size, type(self).__name__)
        skips = []
        for block in self.encoder:
            x, indices, size = block(x)  # (B, C, ⌊H/2⌋, ⌊W/2⌋)
            skips.append((indices, size))
        x = self.bottleneck(x)  # (B, C_last, H/2**n, W/2**n), rounded down
        for block, (indices, size) in zip(self.decoder, reversed(skips)):
            x = block(x, indices, size)
        return _to_unit_range(x)  # (B, out_channels, H, W)


# --------------------------------------------------------------------------- reference D


class ReferenceDiscriminator(nn.Module):
    """DCGAN-style discriminator: one logit per image (a single 1x1 map at 96x96)."""

    def __init__(self, in_channels: int = 3, ndf: int = 18) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, 2 * ndf, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * ndf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * ndf, 4 * ndf, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(4 * ndf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(4 * ndf, 8 * ndf, 4, stride=3, padding=1, bias=False),
            nn.BatchNorm2d(8 * ndf),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.head = nn.Conv2d(8 * ndf, 1, 4, stride=3, padding=0, bias=False)
        # The head is excluded: smaller maps are zero-padded up to its kernel instead.
        self.min_size = _min_input_size(m for m in self.features if isinstance(m, nn.Conv2d))

    def forward(self, image: Tensor, cond: Tensor | None = None) -> Tensor:
        """Score (B, C, H, W) images; returns logits of shape (B,). ``cond`` must be None."""
        if cond is not None:
            raise ValueError("ReferenceDiscriminator is unconditional; pass cond=None")
        _check_min_size(image, self.min_size, type(self).__name__)
        h = self.features(image)  # (B, 8ndf, h, w); 4x4 at 96x96
        kernel = self.head.kernel_size[0]
        pad_h, pad_w = max(0, kernel - h.shape[-2]), max(0, kernel - h.shape[-1])
        # Below ~80 px the map is smaller than the head's kernel; zero-pad it as a conv's padding would.
        h = F.pad(h, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        logits = self.head(h)  # (B, 1, h', w'); 1x1 at 96x96
        return logits.mean(dim=(1, 2, 3))  # (B,)


# --------------------------------------------------------------------------- U-Net G


class _UNetLevel(nn.Module):
    """One non-outermost U-Net level: down, deeper levels, up, then concatenate the input as skip."""

    def __init__(self, outer: int, inner: int, deeper: nn.Module | None, norm: str, dropout: float) -> None:
        super().__init__()
        innermost = deeper is None
        # Innermost maps can be 1x1, where instance norm is undefined; pix2pix leaves them unnormed too.
        down_norm = "none" if innermost else norm
        up_in = inner if innermost else 2 * inner
        layers: list[nn.Module] = [
            # Not in place: x is also the skip and must stay un-activated.
            nn.LeakyReLU(0.2),
            nn.Conv2d(outer, inner, 4, stride=2, padding=1, bias=down_norm == "none"),
            _norm_layer(down_norm, inner),
        ]
        if not innermost:
            layers.append(deeper)
        layers += [
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(up_in, outer, 4, stride=2, padding=1, bias=norm == "none"),
            _norm_layer(norm, outer),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.model(x)], dim=1)  # (B, 2*outer, H, W)


class UNetGenerator(nn.Module):
    """pix2pix U-Net: ``n_down`` stride-2 levels with concatenated skips, widths ngf*(1, 2, 4, 8, 8, ...)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 3,
        ngf: int = 64,
        n_down: int = 5,
        norm: str = "batch",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        _check_norm(norm)
        if n_down < 2:
            raise ValueError(f"n_down must be at least 2, got {n_down}")
        self.divisor = 2**n_down
        widths = [ngf * min(2**i, 8) for i in range(n_down)]
        level: nn.Module | None = None
        for depth in range(n_down - 1, 0, -1):
            # As in the pix2pix paper's decoder (CD512 x3 first): dropout on the 3 deepest up-blocks.
            level_dropout = dropout if depth >= n_down - 3 else 0.0
            level = _UNetLevel(widths[depth - 1], widths[depth], level, norm, level_dropout)
        # Outermost: no activation/norm on the raw input, no skip around the whole net.
        self.model = nn.Sequential(
            RFConv2d(in_channels, widths[0], 4, stride=2, padding=1),
            level,
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * widths[0], out_channels, 4, stride=2, padding=1),
        )

    def forward(self, x: Tensor | RFInput) -> Tensor:
        """Map (B, in_channels, H, W) RF inputs, dense or compact, to (B, out_channels, H, W) images in [0, 1]."""
        _check_divisible(x, self.divisor, type(self).__name__)
        return _to_unit_range(self.model(x))


# --------------------------------------------------------------------------- PatchGAN D


class PatchDiscriminator(nn.Module):
    """PatchGAN: a map of logits, each judging one overlapping patch (70x70 at n_layers=3).

    With ``cond_channels > 0`` it is conditional: ``cond`` is concatenated to the image.
    """

    def __init__(
        self,
        in_channels: int = 3,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "batch",
        cond_channels: int = 0,
    ) -> None:
        super().__init__()
        _check_norm(norm)
        if n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {n_layers}")
        self.cond_channels = cond_channels
        bias = norm == "none"
        widths = [ndf * min(2**i, 8) for i in range(n_layers + 1)]
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels + cond_channels, ndf, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for i in range(1, n_layers + 1):
            # The last hidden conv keeps stride 1 to enlarge the receptive field without shrinking the map.
            stride = 2 if i < n_layers else 1
            layers += [
                nn.Conv2d(widths[i - 1], widths[i], 4, stride=stride, padding=1, bias=bias),
                _norm_layer(norm, widths[i]),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers.append(nn.Conv2d(widths[-1], 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        self.min_size = _min_input_size(m for m in self.model if isinstance(m, nn.Conv2d))

    def forward(self, image: Tensor, cond: Tensor | None = None) -> Tensor:
        """Score (B, C, H, W) images (with a (B, cond_channels, H, W) cond if conditional): (B, 1, h, w) logits."""
        name = type(self).__name__
        if self.cond_channels == 0:
            if cond is not None:
                raise ValueError(f"{name} was built with cond_channels=0; pass cond=None")
        else:
            expected = (image.shape[0], self.cond_channels, *image.shape[-2:])
            if cond is None:
                raise ValueError(f"{name} is conditional; cond of shape {expected} is required")
            if tuple(cond.shape) != expected:
                raise ValueError(f"{name} expects cond of shape {expected}, got {tuple(cond.shape)}")
            image = torch.cat([image, cond], dim=1)  # (B, C + cond_channels, H, W)
        _check_min_size(image, self.min_size, name)
        return self.model(image)


# --------------------------------------------------------------------------- utilities


def init_weights(module: nn.Module, std: float = 0.02, kind: str = "dcgan") -> None:
    """Initialise in place. "dcgan": conv weights ~ N(0, std), affine norm weights ~ N(1, std), biases 0.
    "original": RF_GANsynth's weights_init (module_split.py:238-244): the same, except that conv biases keep
    PyTorch's default init. "default": PyTorch's default init, untouched (RFmasked applies no init)."""
    if kind not in INIT_KINDS:
        raise ValueError(f"init kind must be one of {INIT_KINDS}, got {kind!r}")
    if kind == "default":
        return

    def init(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None and kind == "dcgan":
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.affine:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)

    module.apply(init)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
