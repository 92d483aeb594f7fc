"""The reconstruction network: one X-ray in; dense canonical surface coordinates,
their uncertainty, a bone mask and the shape-model coefficients out.

Outputs (see :class:`ReconOutput`), for an image ``(B, 1, H, W)``:

* **canonical coordinates** of the entry and exit points of every pixel's ray
  through the bone (seed 002's scene coordinates, but expressed on the *mean
  shape* of the statistical shape model instead of one patient's CT). A
  canonical point names an anatomical location, independent of the patient's
  size and shape: the same triangle and barycentric position on any instance
  of the model. Normalised: ``(x_mm - centre_mm) / scale_mm``.
* **log sigma** of each coordinate (predicted error, normalised units);
* **bone mask logit** (does the pixel's ray meet the bone);
* **shape coefficients** ``b`` in SD units, bounded to ``(-b_max, b_max)``
  by a smooth ``tanh``, from a global head on the U-Net bottleneck.

Why dense canonical coordinates rather than a fixed set of N points with
regressed (u, v): every pixel predicts its own correspondence locally (a
translation-equivariant task that a small U-Net learns from a few thousand
images), partially visible bones still give many correspondences, and the
set of points is the visible bone, not points that may fall outside the
image. The fixed-N point cloud the product outputs is built afterwards from
the shape model (:mod:`xrecon.methods.recon.pipeline`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn

from xrecon.errors import InputError, ShapeError
from xrecon.methods.scr.network import standardize_image
from xrecon.methods.scr.unet import FullResolutionBranch, UNet

#: Range of the predicted log sigma (normalised units): sigma in [scale * e^-6, scale * e^1].
LOG_SIGMA_MIN, LOG_SIGMA_MAX = -6.0, 1.0
N_DENSE_CHANNELS = 9  # entry xyz, exit xyz, entry / exit log sigma, mask logit


@dataclass(frozen=True)
class ReconNetConfig:
    """Size and output layout of :class:`ReconNet`.

    Attributes:
        n_modes: number of shape-model coefficients predicted (SD units).
        base_channels, levels: U-Net size (16 / 4 trains on a CPU at 128 px).
        input_stride: 2 = a stride-2 stem, the U-Net runs at half resolution and
            the dense output is upsampled bilinearly (about 3x faster on a CPU); 1 = full resolution.
        image_size: square input size the network was trained at (pixels).
        coord_centre_mm: canonical (mean-shape) frame point mapped to 0.
        coord_scale_mm: canonical millimetres per normalised unit.
        b_max: bound of the shape coefficients (SD).
        shape_hidden: width of the shape head's hidden layer.
        fine_channels: width of an optional full-resolution branch (with
            ``input_stride=2``; 0 = none): the image at full resolution and the
            last decoder features, upsampled, go through one convolution block
            whose output *adds* a correction to the upsampled dense output. Its
            last layer starts at zero, so a network trained without the branch
            loads into one with it and gives the same outputs until fine-tuned
            (the bone's outline, where the half-resolution output is worst, is
            what it is for).
    """

    n_modes: int
    base_channels: int = 16
    levels: int = 4
    input_stride: int = 2
    image_size: int = 128
    coord_centre_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    coord_scale_mm: float = 100.0
    b_max: float = 3.0
    shape_hidden: int = 128
    fine_channels: int = 0

    def __post_init__(self):
        if self.n_modes < 1:
            raise InputError(f"n_modes must be >= 1, got {self.n_modes}")
        if self.fine_channels < 0 or (self.fine_channels and self.input_stride != 2):
            raise InputError("fine_channels (a full-resolution branch) must be >= 0 and needs input_stride 2, got "
                             f"{self.fine_channels} with input_stride {self.input_stride}")
        if self.image_size % (self.input_stride * 2 ** (self.levels - 1)):
            raise InputError(f"image_size {self.image_size} must be divisible by input_stride * 2**(levels-1)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["coord_centre_mm"] = list(self.coord_centre_mm)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ReconNetConfig":
        d = dict(d)
        d["coord_centre_mm"] = tuple(d.get("coord_centre_mm", (0.0, 0.0, 0.0)))
        return cls(**d)


class ReconOutput(NamedTuple):
    """Raw network outputs for a batch (normalised units, see module docstring).
    A NamedTuple, so DistributedDataParallel can traverse it.

    Attributes:
        coords: ``(B, 2, 3, H, W)`` canonical entry (index 0) / exit (1) coordinates.
        log_sigma: ``(B, 2, H, W)`` log of their predicted error.
        mask_logit: ``(B, H, W)`` logit that the pixel's ray meets the bone.
        shape_sd: ``(B, K)`` shape coefficients, SD units.
    """

    coords: torch.Tensor
    log_sigma: torch.Tensor
    mask_logit: torch.Tensor
    shape_sd: torch.Tensor


class ReconNet(nn.Module):
    """U-Net with a dense head (canonical coordinates, sigma, mask) and a global
    shape head (SSM coefficients). ``forward(image (B, 1, H, W)) -> ReconOutput``;
    any intensity scale (each image is standardised)."""

    def __init__(self, config: ReconNetConfig):
        super().__init__()
        self.config = config
        self.unet = UNet(1, N_DENSE_CHANNELS, config.base_channels, config.levels, config.input_stride)
        c = self.unet.bottleneck_channels
        self.shape_head = nn.Sequential(
            nn.Conv2d(c, 32, 1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(32 * 16, config.shape_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(config.shape_hidden, config.n_modes),
        )
        self.fine = (FullResolutionBranch(1, config.base_channels, config.fine_channels, N_DENSE_CHANNELS)
                     if config.fine_channels else None)
        self.register_buffer("centre_mm", torch.tensor(config.coord_centre_mm, dtype=torch.float32))
        self.register_buffer("scale_mm", torch.tensor(float(config.coord_scale_mm)))

    def forward(self, image: torch.Tensor) -> ReconOutput:
        if image.ndim != 4 or image.shape[1] != 1:
            raise ShapeError("image", "(B, 1, H, W)", tuple(image.shape))
        image = standardize_image(image)
        feats = self.unet.encode(image)
        shape_raw = self.shape_head(feats[-1])
        x = self.unet.decode(feats)
        dense = self.unet.output(x, image.shape[-2:])
        if self.fine is not None:
            dense = dense + self.fine(x, image)
        b, _, h, w = dense.shape
        half, mid = 0.5 * (LOG_SIGMA_MAX - LOG_SIGMA_MIN), 0.5 * (LOG_SIGMA_MAX + LOG_SIGMA_MIN)
        log_sigma = mid + half * torch.tanh((dense[:, 6:8] - mid) / half)
        bmax = self.config.b_max
        return ReconOutput(
            coords=dense[:, 0:6].reshape(b, 2, 3, h, w),
            log_sigma=log_sigma,
            mask_logit=dense[:, 8],
            shape_sd=bmax * torch.tanh(shape_raw / bmax),
        )

    def normalize(self, points_mm: torch.Tensor) -> torch.Tensor:
        """Canonical mm ``(..., 3)`` -> normalised ``(..., 3)``."""
        return (points_mm - self.centre_mm.to(points_mm)) / self.scale_mm.to(points_mm)

    def denormalize(self, points_norm: torch.Tensor) -> torch.Tensor:
        """Normalised ``(..., 3)`` -> canonical mm ``(..., 3)``."""
        return points_norm * self.scale_mm.to(points_norm) + self.centre_mm.to(points_norm)
