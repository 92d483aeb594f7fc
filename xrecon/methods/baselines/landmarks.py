"""Fixed-landmark heatmaps + PnP (seed 002's DFLNet baseline).

The same U-Net as SCR, but its last layer regresses one heatmap per landmark
(on the chest CT: the centroids of vertebrae T1 to L1). Training targets are
Gaussians at the landmarks' true projections, built on the fly from the
camera, so the dataset needs nothing beyond the pose; a landmark whose
projection falls outside the image has an all-zero target (the network must
learn to stay silent). At inference each heatmap's peak above
``min_peak`` becomes a 2D-3D correspondence (sub-pixel by a local weighted
centroid), and the pose comes from PnP + RANSAC (:mod:`xrecon.solve.pnp`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xrecon.errors import ShapeError
from xrecon.geometry import se3
from xrecon.methods.scr.network import standardize_image
from xrecon.methods.scr.unet import UNet


class LandmarkHeatmapNet(nn.Module):
    """U-Net with one heatmap logit channel per landmark.

    Args:
        landmarks_world: ``(L, 3)`` landmark positions, world mm.
        landmark_names: ``L`` names.
        base_channels, levels, input_stride: U-Net size (as SCR's).
        sigma_px: standard deviation of the target Gaussians, pixels.
    """

    def __init__(self, landmarks_world: np.ndarray, landmark_names: list[str], base_channels: int = 16,
                 levels: int = 4, sigma_px: float = 2.0, input_stride: int = 2):
        super().__init__()
        lm = torch.as_tensor(np.asarray(landmarks_world), dtype=torch.float32)
        if lm.ndim != 2 or lm.shape[1] != 3 or len(lm) < 4:
            raise ShapeError("landmarks_world", "(L, 3) with L >= 4 (PnP needs four points)", tuple(lm.shape))
        if len(landmark_names) != len(lm):
            raise ShapeError("landmark_names", f"{len(lm)} names", (len(landmark_names),))
        self.unet = UNet(1, len(lm), base_channels, levels, input_stride)
        self.landmark_names = list(landmark_names)
        self.sigma_px = float(sigma_px)
        self.config = {"base_channels": base_channels, "levels": levels, "sigma_px": sigma_px,
                       "input_stride": input_stride,
                       "landmark_names": self.landmark_names}
        self.register_buffer("landmarks_world", lm)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``image: (B, 1, H, W)`` -> heatmap logits ``(B, L, H, W)``."""
        if image.ndim != 4 or image.shape[1] != 1:
            raise ShapeError("image", "(B, 1, H, W)", tuple(image.shape))
        return self.unet(standardize_image(image))


def project_landmarks(landmarks_world: torch.Tensor, K: torch.Tensor, world_to_cam: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels ``(B, L, 2)`` and depths ``(B, L)`` of ``landmarks_world: (L, 3)``
    seen by cameras ``K: (B, 3, 3)``, ``world_to_cam: (B, 4, 4)``."""
    pc = se3.apply(world_to_cam.to(torch.float64), landmarks_world.to(torch.float64)[None])
    h = pc @ K.to(torch.float64).transpose(-1, -2)
    return h[..., :2] / h[..., 2:3], pc[..., 2]


def heatmap_targets(uv: torch.Tensor, height: int, width: int, sigma_px: float, margin_px: float = 0.0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian target maps ``(B, L, H, W)`` (peak 1) for pixels ``uv: (B, L, 2)``
    and the in-image flags ``(B, L)``; a landmark outside the image (beyond
    ``margin_px``) has an all-zero map."""
    inside = ((uv[..., 0] >= -0.5 - margin_px) & (uv[..., 0] <= width - 0.5 + margin_px)
              & (uv[..., 1] >= -0.5 - margin_px) & (uv[..., 1] <= height - 0.5 + margin_px))
    ys = torch.arange(height, dtype=uv.dtype, device=uv.device)
    xs = torch.arange(width, dtype=uv.dtype, device=uv.device)
    gx = torch.exp(-((xs[None, None] - uv[..., :1]) ** 2) / (2 * sigma_px**2))  # (B, L, W)
    gy = torch.exp(-((ys[None, None] - uv[..., 1:]) ** 2) / (2 * sigma_px**2))  # (B, L, H)
    maps = gy[..., :, None] * gx[..., None, :]
    return maps * inside[..., None, None].to(maps.dtype), inside


def heatmap_loss(logits: torch.Tensor, targets: torch.Tensor, positive_weight: float = 20.0) -> torch.Tensor:
    """Weighted binary cross-entropy per image ``(B,)``: logits and targets
    ``(B, L, H, W)``; pixels near a peak weigh ``1 + positive_weight * target``
    so the few positive pixels are not drowned by the background."""
    if logits.shape != targets.shape:
        raise ShapeError("targets", str(tuple(logits.shape)), tuple(targets.shape))
    t = targets.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    return (bce * (1.0 + positive_weight * t)).mean(dim=(1, 2, 3))


def decode_heatmaps(logits: torch.Tensor, min_peak: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Peaks of heatmap logits ``(B, L, H, W)``.

    Returns ``uv (B, L, 2)``, ``peak (B, L)`` (sigmoid at the arg-max) and
    ``detected (B, L)`` (``peak >= min_peak``). Sub-pixel position: a parabola
    through the log-probabilities of the arg-max and its two neighbours along
    each axis (exact for a Gaussian peak), offset clamped to half a pixel.
    """
    b, n, h, w = logits.shape
    logp = F.logsigmoid(logits.float())
    flat = logp.reshape(b, n, -1)
    best, idx = flat.max(dim=-1)
    v0, u0 = idx // w, idx % w

    def offset(lo_idx, hi_idx, ok):
        l_lo = torch.gather(flat, -1, lo_idx[..., None])[..., 0]
        l_hi = torch.gather(flat, -1, hi_idx[..., None])[..., 0]
        curv = l_lo - 2 * best + l_hi
        off = torch.where(ok & (curv < -1e-9), 0.5 * (l_lo - l_hi) / curv.clamp(max=-1e-9), torch.zeros_like(best))
        return off.clamp(-0.5, 0.5)

    du = offset(v0 * w + (u0 - 1).clamp(min=0), v0 * w + (u0 + 1).clamp(max=w - 1), (u0 > 0) & (u0 < w - 1))
    dv = offset((v0 - 1).clamp(min=0) * w + u0, (v0 + 1).clamp(max=h - 1) * w + u0, (v0 > 0) & (v0 < h - 1))
    uv = torch.stack([u0.float() + du, v0.float() + dv], dim=-1)
    peak = best.exp()
    return uv, peak, peak >= min_peak
