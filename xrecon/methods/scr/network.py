"""The scene coordinate network of seed 002.

A U-Net maps an X-ray ``(B, 1, H, W)`` to 8 channels per pixel: the entry and
exit scene coordinates (xyz each) and one log standard deviation for each
(isotropic Gaussian, seed 002 eq. 3). Coordinates are regressed in a
normalised bone frame, ``y = (X_world - centre_mm) / scale_mm``, with
``centre_mm`` and ``scale_mm`` taken from the bone model (see
:class:`CoordinateNormalizer`) and stored in the network's buffers, so a saved
model carries them. Scene coordinates are defined in
../shared/CONVENTIONS.md (``X = R^T (d K^-1 x~ - t)``, world = CT frame, RAS+ mm).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from xrecon.errors import InputError, ShapeError
from xrecon.methods.scr.unet import FullResolutionBranch, UNet

#: Log sigma (normalised units) is squashed into this range: wide enough to
#: express "no bone here" (sigma ~ e^6 scale) and sub-millimetre confidence.
LOG_SIGMA_MIN, LOG_SIGMA_MAX = -8.0, 6.0


@dataclass(frozen=True)
class CoordinateNormalizer:
    """World mm <-> normalised coordinates: ``y = (X - centre_mm) / scale_mm``.

    Attributes:
        centre_mm: ``(3,)`` world point (the bone's bounding-box centre).
        scale_mm: one length (half the largest bounding-box side).
    """

    centre_mm: tuple[float, float, float]
    scale_mm: float

    @classmethod
    def from_points(cls, points_world: np.ndarray) -> "CoordinateNormalizer":
        """From bone surface points ``(N, 3)`` in world mm."""
        pts = np.asarray(points_world, dtype=np.float64).reshape(-1, 3)
        if len(pts) == 0 or not np.isfinite(pts).all():
            raise InputError("cannot normalise coordinates: the bone has no finite points")
        lo, hi = pts.min(0), pts.max(0)
        scale = float((hi - lo).max() / 2)
        if scale <= 0:
            raise InputError("cannot normalise coordinates: the bone has zero extent")
        return cls(tuple(float(c) for c in (lo + hi) / 2), scale)


@dataclass
class SceneCoordinates:
    """Per-pixel prediction of the network (world mm).

    Attributes:
        entry_world: ``(B, H, W, 3)`` first ray-bone intersection, mm.
        exit_world: ``(B, H, W, 3)`` last ray-bone intersection, mm.
        entry_log_sigma: ``(B, H, W)`` log standard deviation, normalised units
            (``sigma_mm = exp(log_sigma) * scale_mm``).
        exit_log_sigma: ``(B, H, W)`` likewise for the exit points.
        scale_mm: the normaliser's length, to turn sigmas into mm.
    """

    entry_world: torch.Tensor
    exit_world: torch.Tensor
    entry_log_sigma: torch.Tensor
    exit_log_sigma: torch.Tensor
    scale_mm: float

    def sigma_mm(self, which: str = "entry") -> torch.Tensor:
        """``(B, H, W)`` predicted standard deviation in mm."""
        log_sigma = self.entry_log_sigma if which == "entry" else self.exit_log_sigma
        return torch.exp(log_sigma) * self.scale_mm


def standardize_image(image: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Zero-mean, unit-variance per image: ``(B, C, H, W)`` -> same shape.

    Makes the network indifferent to the intensity scale of the X-ray (raw
    DRR line integrals, 8-bit PNG, inverted images after augmentation).
    """
    mean = image.mean(dim=(-1, -2, -3), keepdim=True)
    std = image.std(dim=(-1, -2, -3), keepdim=True)
    return (image - mean) / (std + eps)


class SceneCoordinateNet(nn.Module):
    """U-Net regressing entry/exit scene coordinates with their uncertainty.

    Args:
        normalizer: world <-> normalised coordinates of the bone.
        base_channels, levels: U-Net size (16 / 4 on CPU; 32-64 / 5 on GPU).
        input_stride: 2 = half-resolution U-Net with a stride-2 stem and a
            bilinear upsampled output (the CPU configuration); 1 = full
            resolution throughout (the seed's set-up, for GPUs).
        fine_channels: width of a :class:`~xrecon.methods.scr.unet.FullResolutionBranch`
            (with ``input_stride=2``; 0 = none): a full-resolution correction
            of the upsampled output, for the chest's thin ribs, whose entry and
            exit points jump from one structure to another within a pixel or
            two. Starts as a no-op, so a network without it can be fine-tuned
            with it.

    ``forward`` returns the raw 8-channel map ``(B, 8, H, W)`` in normalised
    units: channels 0-2 entry xyz, 3 entry log sigma, 4-6 exit xyz, 7 exit log
    sigma (log sigma already squashed into [LOG_SIGMA_MIN, LOG_SIGMA_MAX]).
    :meth:`predict` turns it into :class:`SceneCoordinates` in world mm.
    """

    def __init__(self, normalizer: CoordinateNormalizer, base_channels: int = 16, levels: int = 4,
                 input_stride: int = 2, fine_channels: int = 0):
        super().__init__()
        if fine_channels < 0 or (fine_channels and input_stride != 2):
            raise InputError("fine_channels (a full-resolution branch) must be >= 0 and needs input_stride 2, got "
                             f"{fine_channels} with input_stride {input_stride}")
        self.unet = UNet(1, 8, base_channels, levels, input_stride)
        self.fine = FullResolutionBranch(1, base_channels, fine_channels, 8) if fine_channels else None
        self.config = {"base_channels": base_channels, "levels": levels, "input_stride": input_stride,
                       "fine_channels": fine_channels}
        self.register_buffer("centre_mm", torch.tensor(normalizer.centre_mm, dtype=torch.float32))
        self.register_buffer("scale_mm", torch.tensor(float(normalizer.scale_mm), dtype=torch.float32))

    @property
    def normalizer(self) -> CoordinateNormalizer:
        return CoordinateNormalizer(tuple(float(c) for c in self.centre_mm), float(self.scale_mm))

    @property
    def size_divisor(self) -> int:
        """Image height and width must be multiples of this."""
        return self.unet.input_stride * 2 ** (self.unet.levels - 1)

    def normalize(self, points_world: torch.Tensor) -> torch.Tensor:
        """World mm ``(..., 3)`` -> normalised ``(..., 3)``."""
        return (points_world - self.centre_mm.to(points_world.dtype)) / self.scale_mm.to(points_world.dtype)

    def denormalize(self, points_norm: torch.Tensor) -> torch.Tensor:
        """Normalised ``(..., 3)`` -> world mm ``(..., 3)``."""
        return points_norm * self.scale_mm.to(points_norm.dtype) + self.centre_mm.to(points_norm.dtype)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``image: (B, 1, H, W)`` (any intensity scale) -> ``(B, 8, H, W)`` normalised outputs."""
        if image.ndim != 4 or image.shape[1] != 1:
            raise ShapeError("image", "(B, 1, H, W)", tuple(image.shape))
        image = standardize_image(image)
        if self.fine is None:
            out = self.unet(image)
        else:
            x = self.unet.decode(self.unet.encode(image))
            out = self.unet.output(x, image.shape[-2:]) + self.fine(x, image)
        half = 0.5 * (LOG_SIGMA_MAX - LOG_SIGMA_MIN)
        mid = 0.5 * (LOG_SIGMA_MAX + LOG_SIGMA_MIN)
        # Smooth squashing keeps gradients everywhere (a hard clamp would not).
        log_sigma = mid + half * torch.tanh((out[:, [3, 7]] - mid) / half)
        return torch.cat([out[:, 0:3], log_sigma[:, :1], out[:, 4:7], log_sigma[:, 1:]], dim=1)

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> SceneCoordinates:
        """``image: (B, 1, H, W)`` -> :class:`SceneCoordinates` in world mm."""
        return coordinates_from_output(self(image), self.normalizer)


def coordinates_from_output(output: torch.Tensor, normalizer: CoordinateNormalizer) -> SceneCoordinates:
    """Raw network output ``(B, 8, H, W)`` (normalised) -> :class:`SceneCoordinates` (world mm)."""
    if output.ndim != 4 or output.shape[1] != 8:
        raise ShapeError("output", "(B, 8, H, W)", tuple(output.shape))
    out = output.detach().float()
    centre = torch.tensor(normalizer.centre_mm, dtype=out.dtype, device=out.device)
    entry = out[:, 0:3].permute(0, 2, 3, 1) * normalizer.scale_mm + centre
    exit_ = out[:, 4:7].permute(0, 2, 3, 1) * normalizer.scale_mm + centre
    return SceneCoordinates(entry, exit_, out[:, 3], out[:, 7], float(normalizer.scale_mm))


def log_variance(log_sigma: torch.Tensor) -> torch.Tensor:
    """Seed 002's filter works on the log variance: ``2 log sigma``."""
    return 2.0 * log_sigma


def sigma_bounds_mm(scale_mm: float) -> tuple[float, float]:
    """Smallest and largest sigma (mm) the network can express."""
    return math.exp(LOG_SIGMA_MIN) * scale_mm, math.exp(LOG_SIGMA_MAX) * scale_mm
