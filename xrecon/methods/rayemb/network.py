"""The ray-embedding encoder of RayEmb (seed 003): an X-ray in, one embedding per pixel out.

The embedding of pixel ``x`` stands for the ray from the X-ray source through
``x`` in a frame attached to the anatomy: rays through one 3D point of the
patient should span a low-dimensional subspace, whatever the C-arm pose
(:mod:`xrecon.methods.rayemb.subspace`). The network is the project's small
U-Net (:class:`xrecon.methods.scr.unet.UNet`, the same as SCR's and the
baselines') with ``embed_dim`` output channels; the image is standardised per
image first, so any intensity scale works.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from xrecon.errors import InputError, ShapeError
from xrecon.methods.scr.network import standardize_image
from xrecon.methods.scr.unet import UNet


@dataclass(frozen=True)
class RayEmbNetConfig:
    """Size of :class:`RayEmbNet`.

    Attributes:
        embed_dim: channels of the ray embedding ``D`` (must exceed the number of
            template views, or every subspace is the whole space).
        base_channels, levels, input_stride: U-Net size (CPU: 16, 4, 2).
        image_size: square input size in pixels the network was trained at.
    """

    embed_dim: int = 32
    base_channels: int = 16
    levels: int = 4
    input_stride: int = 2
    image_size: int = 128

    def __post_init__(self):
        if self.embed_dim < 4:
            raise InputError(f"embed_dim must be >= 4, got {self.embed_dim}")
        factor = self.input_stride * 2 ** (self.levels - 1)
        if self.image_size % factor:
            raise InputError(f"image_size {self.image_size} must be divisible by {factor}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RayEmbNetConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"unknown RayEmb network settings {sorted(unknown)}")
        return cls(**d)


class RayEmbNet(nn.Module):
    """``forward(image: (B, 1, H, W)) -> (B, D, H, W)`` per-pixel ray embeddings."""

    def __init__(self, config: RayEmbNetConfig = RayEmbNetConfig()):
        super().__init__()
        self.config = config
        self.unet = UNet(1, config.embed_dim, config.base_channels, config.levels, config.input_stride)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4 or image.shape[1] != 1:
            raise ShapeError("image", "(B, 1, H, W)", tuple(image.shape))
        return self.unet(standardize_image(image))
