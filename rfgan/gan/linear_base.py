"""A generator that refines a linear read-out (`model.linear_base`): the ridge decoder's image of the responses is
the base, and the CNN only corrects it.

The ridge weights are fitted on the training split before training (rfgan.evaluate.ridge.fit_ridge, the decoder of
`rfgan baseline`) and held as buffers of the generator, so checkpoints, DDP and every command that loads a run carry
them with the CNN. The two are added where the CNN's own output is made: the generators end in (tanh(z) + 1) / 2,
and the output is (tanh(atanh(2·base - 1) + z) + 1) / 2, computed with tanh's addition formula from the CNN's output
in [0, 1] (no atanh, no saturation). A CNN that outputs 0.5 (z = 0) gives the ridge image exactly, and the output
stays in [0, 1] whatever the CNN does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rfgan.gan.rf_input import RFInput

# The base is kept this far inside (0, 1), so that the CNN can still move a pixel the ridge image saturates.
BASE_MARGIN = 1e-3


class LinearBaseGenerator(nn.Module):
    """`net` (a generator with outputs in [0, 1]) correcting the linear read-out `responses @ weight + bias` of the
    standardised responses it is given. The weights are zero until `set_readout` (or a checkpoint) fills them."""

    def __init__(self, net: nn.Module, maps: Tensor, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.net = net
        # The CNN's output layer starts at zero, so G starts at the ridge image exactly (z = 0) and training moves
        # it from there (as ControlNet's zero convolutions do); the layer's weight gradient is not zero, so it
        # learns from the first step, and the layers below it from the second.
        convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        for last in convs[-1:]:  # none in a stand-in without convolutions
            nn.init.zeros_(last.weight)
            if last.bias is not None:
                nn.init.zeros_(last.bias)
        self.image_shape = tuple(image_shape)
        n_electrodes, numel = len(maps), int(torch.tensor(image_shape).prod())
        self.register_buffer("weight", torch.zeros(n_electrodes, numel))  # (E, C·H·W)
        self.register_buffer("bias", torch.zeros(numel))  # (C·H·W,)
        # A dense input's channel e is r_e·M_e: r_e = <x_e, M_e> / <M_e, M_e> (0 for an all-zero map).
        norms = maps.flatten(1).pow(2).sum(dim=1)
        inverse = maps / torch.where(norms > 0, norms, torch.ones_like(norms))[:, None, None]
        self.register_buffer("inverse_maps", inverse.float(), persistent=False)  # (E, H, W)

    @torch.no_grad()
    def set_readout(self, weight: Tensor, bias: Tensor) -> None:
        """Fill the read-out: weight (E, C·H·W) and bias (C·H·W,) on the standardised responses."""
        if tuple(weight.shape) != tuple(self.weight.shape) or tuple(bias.shape) != tuple(self.bias.shape):
            raise ValueError(
                f"read-out weight {tuple(weight.shape)} and bias {tuple(bias.shape)} do not fit "
                f"{tuple(self.weight.shape)} and {tuple(self.bias.shape)}"
            )
        self.weight.copy_(weight)
        self.bias.copy_(bias)

    def responses(self, x: Tensor | RFInput) -> Tensor:
        """The (B, E) standardised responses of a generator input, compact or dense (per-electrode channels)."""
        if isinstance(x, RFInput):
            return x.responses
        return torch.einsum("behw,ehw->be", x[:, : len(self.inverse_maps)], self.inverse_maps.to(x.dtype))

    def base(self, x: Tensor | RFInput) -> Tensor:
        """The linear read-out of x as (B, C, H, W) images, clipped to [0, 1]: the ridge decoder's output."""
        # fp32 under bf16 autocast too: the ridge image is what the CNN corrects, so its rounding would be an error
        # of the base that no training removes (and the read-out is a small share of the step).
        with torch.autocast(self.weight.device.type, enabled=False):
            r = self.responses(x).float()
            return torch.addmm(self.bias, r, self.weight).clamp(0, 1).view(-1, *self.image_shape)

    def forward(self, x: Tensor | RFInput) -> Tensor:
        correction = 2 * self.net(x) - 1  # tanh(z), the CNN's own output in [-1, 1]
        base = 2 * self.base(x).clamp(BASE_MARGIN, 1 - BASE_MARGIN).to(correction.dtype) - 1  # tanh(atanh(2·base - 1))
        # tanh(a + z) = (tanh a + tanh z) / (1 + tanh a · tanh z); the denominator is at least BASE_MARGIN·2.
        return ((base + correction) / (1 + base * correction) + 1) / 2
