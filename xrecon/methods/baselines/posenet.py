"""PoseNet baseline: a CNN regresses ``world_to_cam`` directly from the X-ray.

Seed 002 used a ResNet-50 feature extractor; no pretrained weights can be
downloaded here and a ResNet-50 does not train on a CPU in the budget, so the
feature extractor is the encoder of the same small U-Net family as SCR
(:class:`~xrecon.methods.scr.unet.ConvBlock` levels, global average pooling),
trained from scratch with the same data, augmentation and epochs.

Output parameterisation (``(B, 9)``): a 6D rotation (two columns,
Gram-Schmidt, :func:`xrecon.geometry.se3.special_gramschmidt`) composed with a
reference rotation, and a translation around a reference, both fixed from the
training poses so that an untrained network starts at the mean pose::

    R = GS(a1, a2) @ R_ref,     t = t_ref + t_scale_mm * b

Loss ("geometric", as in the seed): the mean distance, in the camera frame,
between bone points mapped by the predicted and by the true pose, divided by
the bone's size; it is the mTRE itself, so nothing needs weighting between
rotation and translation. Poses follow ../shared/CONVENTIONS.md.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from xrecon.errors import InputError, ShapeError
from xrecon.geometry import se3
from xrecon.methods.scr.network import standardize_image
from xrecon.methods.scr.unet import ConvBlock


class PoseNet(nn.Module):
    """Direct pose regression.

    Args:
        points_world: ``(N, 3)`` bone points (mm) used by the geometric loss.
        ref_world_to_cam: ``(4, 4)`` reference pose (mean training pose).
        t_scale_mm: ``(3,)`` spread of the training translations (per axis).
        base_channels, levels: encoder size (levels of ConvBlock + 2x pooling).
        input_stride: 2 starts with a stride-2 convolution (as SCR's CPU U-Net).
    """

    def __init__(self, points_world: np.ndarray, ref_world_to_cam: np.ndarray, t_scale_mm,
                 base_channels: int = 16, levels: int = 5, input_stride: int = 2):
        super().__init__()
        pts = torch.as_tensor(np.asarray(points_world), dtype=torch.float32)
        if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
            raise ShapeError("points_world", "(N, 3) with N >= 1", tuple(pts.shape))
        ref = torch.as_tensor(np.asarray(ref_world_to_cam), dtype=torch.float32)
        if ref.shape != (4, 4):
            raise ShapeError("ref_world_to_cam", "(4, 4)", tuple(ref.shape))
        self.config = {"base_channels": base_channels, "levels": levels, "input_stride": input_stride}
        widths = [base_channels * 2**i for i in range(levels)]
        blocks, prev = [], 1
        if input_stride == 2:
            blocks += [nn.Conv2d(1, base_channels, 3, stride=2, padding=1, bias=False),
                       nn.GroupNorm(8 if base_channels % 8 == 0 else 1, base_channels), nn.ReLU(inplace=True)]
            prev = base_channels
        for i, w in enumerate(widths):
            if i > 0:
                blocks.append(nn.MaxPool2d(2))
            blocks.append(ConvBlock(prev, w))
            prev = w
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(prev, 256), nn.ReLU(inplace=True), nn.Linear(256, 9))
        nn.init.zeros_(self.head[-1].weight)
        with torch.no_grad():  # identity rotation, reference translation at start
            self.head[-1].bias.copy_(torch.tensor([1.0, 0, 0, 0, 1.0, 0, 0, 0, 0]))
        self.register_buffer("points_world", pts)
        self.register_buffer("ref_world_to_cam", ref)
        self.register_buffer("t_scale_mm", torch.as_tensor(np.asarray(t_scale_mm, dtype=np.float32)).reshape(3))
        extent = (pts.max(0).values - pts.min(0).values).max()
        self.register_buffer("scale_mm", (extent / 2).clamp_min(1.0))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``image: (B, 1, H, W)`` -> ``world_to_cam: (B, 4, 4)`` (float32)."""
        if image.ndim != 4 or image.shape[1] != 1:
            raise ShapeError("image", "(B, 1, H, W)", tuple(image.shape))
        out = self.head(self.features(standardize_image(image)))
        cols = torch.stack([out[:, 0:3], out[:, 3:6]], dim=-1)  # (B, 3, 2)
        R = se3.special_gramschmidt(cols, epsilon=1e-6) @ self.ref_world_to_cam[:3, :3]
        t = self.ref_world_to_cam[:3, 3] + self.t_scale_mm * out[:, 6:9]
        return se3.make(R, t)


def geometric_loss(est_world_to_cam: torch.Tensor, gt_world_to_cam: torch.Tensor, points_world: torch.Tensor,
                   scale_mm: torch.Tensor | float) -> torch.Tensor:
    """Mean camera-frame distance of ``points_world: (N, 3)`` under two poses
    ``(B, 4, 4)``, divided by ``scale_mm`` -> ``(B,)``."""
    dtype = est_world_to_cam.dtype
    gt = gt_world_to_cam.to(dtype)
    pts = points_world.to(dtype)
    d = se3.apply(est_world_to_cam, pts[None]) - se3.apply(gt, pts[None])
    return d.norm(dim=-1).mean(dim=-1) / scale_mm


def reference_pose(world_to_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean pose of training poses ``(B, 4, 4)`` (chordal rotation mean, mean
    translation) and the per-axis std of the translations ``(3,)`` (mm, >= 1)."""
    poses = np.asarray(world_to_cam, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4) or len(poses) == 0:
        raise InputError(f"reference_pose needs (B, 4, 4) poses, got {poses.shape}")
    R_mean = se3.special_procrustes(torch.as_tensor(poses[:, :3, :3].mean(0))).numpy()
    ref = np.eye(4)
    ref[:3, :3] = R_mean
    ref[:3, 3] = poses[:, :3, 3].mean(0)
    return ref, np.maximum(poses[:, :3, 3].std(0), 1.0)
