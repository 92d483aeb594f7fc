"""Synthetic scenes with analytic scene coordinates for the SCR and baseline tests.

A "bone" is an axis-aligned ellipsoid in world mm; a camera's rays meet it at
the roots of a quadratic, so entry / exit points, the bone mask and a DRR-like
image (the chord length through the bone) are exact.
"""
from __future__ import annotations

import numpy as np
import torch

from xrecon.geometry import Camera, se3

CENTRE_MM = np.array([10.0, -20.0, 30.0])
RADII_MM = np.array([60.0, 35.0, 45.0])


def camera_at(n: int, size: int = 32, seed: int = 0, sdd_mm: float = 1000.0, spacing_mm: float = 8.0) -> Camera:
    """``n`` views looking at the ellipsoid from ~700 mm, random small rotations and offsets."""
    g = np.random.default_rng(seed)
    poses = []
    for _ in range(n):
        rot = se3.from_rotvec(torch.tensor(g.normal(0, 0.15, 3)), torch.zeros(3))
        t = torch.tensor([g.normal(0, 10), g.normal(0, 10), 700.0 + g.normal(0, 20)], dtype=torch.float64)
        R = rot[:3, :3]
        # x_cam = R (x - centre) + t: the ellipsoid's centre sits at t in the camera
        poses.append(se3.make(R, t - R @ torch.tensor(CENTRE_MM)))
    return Camera.from_detector(sdd_mm, spacing_mm, size, size, torch.stack(poses))


def ellipsoid_scene(camera: Camera, centre_mm=CENTRE_MM, radii_mm=RADII_MM):
    """Exact ground truth for every pixel of every view.

    Returns ``entry (B, H, W, 3)``, ``exit (B, H, W, 3)`` (NaN off the bone),
    ``mask (B, H, W)`` bool, ``image (B, H, W)`` (chord length, mm).
    """
    uv = camera.pixel_grid()
    o, d = camera.rays_world(uv)
    o, d = o.numpy(), d.numpy()
    inv_r2 = 1.0 / np.asarray(radii_mm) ** 2
    oc = o - np.asarray(centre_mm)
    a = (d * d * inv_r2).sum(-1)
    b = 2 * (oc * d * inv_r2).sum(-1)
    c = (oc * oc * inv_r2).sum(-1) - 1
    disc = b * b - 4 * a * c
    mask = disc > 0
    sq = np.sqrt(np.where(mask, disc, 0.0))
    t0 = (-b - sq) / (2 * a)
    t1 = (-b + sq) / (2 * a)
    entry = o + t0[..., None] * d
    exit_ = o + t1[..., None] * d
    entry[~mask] = np.nan
    exit_[~mask] = np.nan
    shape = (len(camera), camera.height, camera.width)
    image = np.where(mask, t1 - t0, 0.0)
    return (entry.reshape(*shape, 3), exit_.reshape(*shape, 3), mask.reshape(shape), image.reshape(shape))


def surface_points(n: int = 500, seed: int = 0, centre_mm=CENTRE_MM, radii_mm=RADII_MM) -> np.ndarray:
    g = np.random.default_rng(seed)
    p = g.normal(size=(n, 3))
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    return p * np.asarray(radii_mm) + np.asarray(centre_mm)


class EllipsoidDataset(torch.utils.data.Dataset):
    """Samples in the layout of :mod:`xrecon.methods.scr.data`: exact ellipsoid
    scene coordinates seen from ``n`` random views."""

    def __init__(self, n: int, size: int = 32, seed: int = 0):
        self.camera = camera_at(n, size=size, seed=seed)
        self.entry, self.exit, self.mask, self.image = ellipsoid_scene(self.camera)

    def __len__(self) -> int:
        return len(self.camera)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": torch.tensor(self.image[i], dtype=torch.float32)[None],
            "entry_world": torch.tensor(self.entry[i], dtype=torch.float32).permute(2, 0, 1),
            "exit_world": torch.tensor(self.exit[i], dtype=torch.float32).permute(2, 0, 1),
            "mask": torch.tensor(self.mask[i]),
            "K": self.camera.K[i],
            "world_to_cam": self.camera.world_to_cam[i],
        }
