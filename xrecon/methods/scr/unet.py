"""A small, plain U-Net (encoder-decoder with skip connections).

Written here rather than taken from segmentation-models-pytorch because that
package (and the timm encoders it wants) is not installed, no pretrained
weights can be downloaded, and a from-scratch network of ~0.5 M parameters is
what trains on a CPU in under an hour at 128 px. The same class scales up on a
GPU through ``base_channels`` and ``levels``.

Shapes: input ``(B, C_in, H, W)``, output ``(B, C_out, H, W)``; ``H`` and ``W``
must be divisible by ``input_stride * 2 ** (levels - 1)``.

``input_stride=2`` (the CPU default of the methods) starts with a stride-2
convolution and works at half resolution throughout; the output is upsampled
bilinearly back to the input size. It costs about a quarter of the full-
resolution network (measured: the full-resolution 16-channel U-Net trains at
~3 images/s on one loaded CPU core at 128 px) while the
per-pixel outputs stay dense.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from xrecon.errors import InputError, ShapeError


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm: independent of the batch size (batch 1 at inference, DDP shards).
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by GroupNorm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            _norm(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            _norm(out_channels),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """U-Net with ``levels`` resolution levels (``levels - 1`` poolings).

    Level ``i`` has ``base_channels * 2**i`` channels; the deepest level is the
    bottleneck. With ``levels=4, base_channels=16`` it has about 0.47 M
    parameters.

    Args:
        in_channels: input image channels (1 for an X-ray).
        out_channels: output channels of the final 1x1 convolution.
        base_channels: channels at the first level.
        levels: number of resolution levels (>= 2).
        input_stride: 1 (first level at full resolution) or 2 (a stride-2
            stem, half resolution inside, output upsampled to full size).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 8, base_channels: int = 16, levels: int = 4,
                 input_stride: int = 1):
        super().__init__()
        if levels < 2:
            raise ValueError(f"a U-Net needs at least 2 levels, got {levels}")
        if input_stride not in (1, 2):
            raise ValueError(f"input_stride must be 1 or 2, got {input_stride}")
        widths = [base_channels * 2**i for i in range(levels)]
        self.levels = levels
        self.input_stride = input_stride
        prev = in_channels
        self.stem = nn.Identity()
        if input_stride == 2:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, base_channels, 3, stride=2, padding=1, bias=False),
                                      _norm(base_channels), nn.ReLU(inplace=True))
            prev = base_channels
        self.encoders = nn.ModuleList()
        for w in widths:
            self.encoders.append(ConvBlock(prev, w))
            prev = w
        self.pool = nn.MaxPool2d(2)
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.upsamplers.append(nn.ConvTranspose2d(prev, w, 2, stride=2))
            self.decoders.append(ConvBlock(2 * w, w))
            prev = w
        self.head = nn.Conv2d(prev, out_channels, 1)

    @property
    def bottleneck_channels(self) -> int:
        return self.encoders[-1][3].out_channels

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of every level, finest first: ``[(B, C_i, H/(s 2^i), W/(s 2^i))]`` (s = input stride)."""
        if image.ndim != 4:
            raise ShapeError("image", "(B, C, H, W)", tuple(image.shape))
        factor = self.input_stride * 2 ** (self.levels - 1)
        if image.shape[-1] % factor or image.shape[-2] % factor:
            raise ShapeError("image", f"(B, C, H, W) with H and W divisible by {factor}", tuple(image.shape))
        feats = []
        x = self.stem(image)
        for i, enc in enumerate(self.encoders):
            x = enc(x if i == 0 else self.pool(x))
            feats.append(x)
        return feats

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The last decoder's features ``(B, base_channels, H/s, W/s)`` from :meth:`encode`'s maps."""
        x = feats[-1]
        for up, dec, skip in zip(self.upsamplers, self.decoders, reversed(feats[:-1])):
            x = dec(torch.cat([up(x), skip], dim=1))
        return x

    def output(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The head on decoder features ``x``, upsampled bilinearly to ``size`` when the stride is 2."""
        out = self.head(x)
        if out.shape[-2:] != tuple(size):
            out = nn.functional.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``image: (B, C_in, H, W)`` -> ``(B, C_out, H, W)``."""
        return self.output(self.decode(self.encode(image)), image.shape[-2:])


class FullResolutionBranch(nn.Module):
    """A correction at full resolution for a stride-2 :class:`UNet`'s upsampled output.

    The image at full resolution and the last decoder features (half
    resolution, upsampled by a transposed convolution) go through one
    :class:`ConvBlock`; a 1x1 head turns the result into ``out_channels`` that
    are *added* to the bilinearly upsampled dense output, where it is worst:
    along outlines and thin structures. The head starts at zero, so a network
    trained without the branch loads into one with it (``strict=False``, only
    this branch's weights missing) and gives the same outputs until fine-tuned.

    ``forward(decoder_features (B, base_channels, H/2, W/2), image (B, C_in, H, W))
    -> (B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, base_channels: int, channels: int, out_channels: int):
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), _norm(channels),
                                   nn.ReLU(inplace=True))
        self.up = nn.ConvTranspose2d(base_channels, channels, 2, stride=2)
        self.block = ConvBlock(2 * channels, channels)
        self.head = nn.Conv2d(channels, out_channels, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(torch.cat([self.up(features), self.image(image)], dim=1)))


def load_adding_branch(net: nn.Module, state_dict: dict, source, branch: str = "fine.") -> None:
    """Load ``state_dict`` (a trained network's weights) into ``net``, which may
    have a :class:`FullResolutionBranch` (its parameters start with ``branch``)
    that the trained network lacks; any other difference is an
    :class:`~xrecon.errors.InputError` naming ``source``."""
    missing, unexpected = net.load_state_dict(state_dict, strict=False)
    if unexpected or any(not k.startswith(branch) for k in missing):
        raise InputError(f"the initial model's weights do not fit this network (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})", source)
