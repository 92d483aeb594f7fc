"""Exact per-pixel geometry of a bone mesh seen by a camera (open3d ray casting).

For each pixel ``x`` the ray from the source through the pixel centre meets the
bone surface first at the **entry** point and last at the **exit** point
(seed 002's two scene coordinates): ``X = R^T (d K^-1 x~ - t)`` with ``d`` the
camera depth (z) of the intersection. Points are in the world frame of the mesh
(RAS+ mm), NaN where the ray misses. Conventions: :mod:`xrecon.geometry`.

The exit point is found by casting each ray backwards from beyond the mesh, so
both hits cost one open3d ``cast_rays`` call each (about 1 ms per 128 x 128
image for a vertebra).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xrecon.anatomy.bone import BoneModel
from xrecon.errors import InputError, check_shape
from xrecon.geometry import Camera
from xrecon.geometry.mesh import raycasting_scene


@dataclass
class RayHits:
    """First and last intersections of rays with the bone (arrays batch first).

    Attributes:
        entry_world, exit_world: ``(B, ..., 3)`` float64 mm, NaN where missed.
        entry_depth_mm, exit_depth_mm: ``(B, ...)`` camera z (mm), NaN where missed.
        hit: ``(B, ...)`` bool.
    """

    entry_world: np.ndarray
    exit_world: np.ndarray
    entry_depth_mm: np.ndarray
    exit_depth_mm: np.ndarray
    hit: np.ndarray


@dataclass
class SurfaceSamples:
    """Points of the visible (entry) surface and the pixels that see them.

    Attributes:
        points_world: ``(B, N, 3)`` mm (NaN where ``valid`` is False).
        uv: ``(B, N, 2)`` sub-pixel coordinates (u = column, v = row).
        valid: ``(B, N)`` bool (False when a view shows fewer bone pixels than asked
            for, or none).
    """

    points_world: np.ndarray
    uv: np.ndarray
    valid: np.ndarray


class BoneRaycaster:
    """Open3d ray-casting scene over a :class:`~xrecon.anatomy.bone.BoneModel`.

    Build once per bone (cheap: a BVH over the triangles), then query any
    number of cameras.

    Args:
        bone: closed mesh in the world frame (mm).
        nthreads: threads open3d may use (0 = all); 1 suits worker processes.
    """

    def __init__(self, bone: BoneModel, nthreads: int = 1):
        import open3d as o3d

        self.bone = bone
        self.nthreads = int(nthreads)
        self._scene = raycasting_scene(bone.vertices, bone.faces)
        self._o3d = o3d
        lo, hi = bone.vertices.min(0), bone.vertices.max(0)
        self._centre = (lo + hi) / 2
        self._radius = float(np.linalg.norm(hi - lo) / 2)

    def _first_hit_t(self, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
        rays = np.concatenate([origins, directions], axis=-1).astype(np.float32)
        out = self._scene.cast_rays(self._o3d.core.Tensor(rays), nthreads=self.nthreads)
        return out["t_hit"].numpy().astype(np.float64)

    def cast(self, camera: Camera, uv: torch.Tensor | np.ndarray) -> RayHits:
        """Intersections of the rays of pixels ``uv: (B, N, 2)`` (or ``(N, 2)`` for
        every view) -> :class:`RayHits` with ``(B, N, ...)`` arrays."""
        uv = torch.as_tensor(uv, dtype=torch.float64)
        if uv.ndim == 2:
            uv = uv[None].expand(len(camera), -1, -1)
        check_shape("uv", uv, (len(camera), None, 2))
        origin, direction = camera.rays_world(uv)  # (B, N, 3), unit directions
        origin, direction = origin.numpy(), direction.numpy()
        # camera depth per unit ray length: z-component of the unit camera-frame ray
        ray_cam = camera.rays_camera(uv)
        z_per_mm = (1.0 / ray_cam.norm(dim=-1)).numpy()

        t_entry = self._first_hit_t(origin, direction)
        # start beyond the mesh's bounding sphere and walk back toward the source
        far = np.linalg.norm(origin[:, :1, :] - self._centre, axis=-1, keepdims=True) + self._radius + 10.0
        t_back = self._first_hit_t(origin + far * direction, -direction)
        hit = np.isfinite(t_entry)
        t_exit = np.where(hit & np.isfinite(t_back), far[..., 0] - t_back, np.nan)
        t_entry = np.where(hit, t_entry, np.nan)
        entry = origin + t_entry[..., None] * direction
        exit_ = origin + t_exit[..., None] * direction
        return RayHits(entry, exit_, t_entry * z_per_mm, t_exit * z_per_mm, hit)

    def cast_image(self, camera: Camera) -> RayHits:
        """:meth:`cast` for every pixel centre; arrays ``(B, H, W, ...)``."""
        hits = self.cast(camera, camera.pixel_grid())
        B, H, W = len(camera), camera.height, camera.width
        return RayHits(
            hits.entry_world.reshape(B, H, W, 3),
            hits.exit_world.reshape(B, H, W, 3),
            hits.entry_depth_mm.reshape(B, H, W),
            hits.exit_depth_mm.reshape(B, H, W),
            hits.hit.reshape(B, H, W),
        )

    def surface_samples(self, camera: Camera, mask: np.ndarray, n: int, rng: np.random.Generator) -> SurfaceSamples:
        """``n`` points of the visible (entry) surface per view, at sub-pixel positions
        drawn uniformly over the bone pixels ``mask: (B, H, W)`` (a pixel's square,
        centre +- 0.5 px). Rays that slip off the bone at a jittered position are
        redrawn once at the pixel centre (which hits, being in the mask)."""
        if n <= 0:
            raise InputError(f"number of surface samples must be > 0, got {n}")
        B = len(camera)
        mask = np.asarray(mask, dtype=bool)
        check_shape("mask", mask, (B, camera.height, camera.width))
        uv = np.full((B, n, 2), np.nan)
        valid = np.zeros((B, n), dtype=bool)
        for b in range(B):
            rows, cols = np.nonzero(mask[b])
            if len(rows) == 0:
                continue
            pick = rng.integers(0, len(rows), n)
            uv[b] = np.stack([cols[pick], rows[pick]], -1) + rng.uniform(-0.5, 0.5, (n, 2))
            valid[b] = True
        safe_uv = np.where(valid[..., None], uv, 0.0)
        hits = self.cast(camera, torch.from_numpy(safe_uv))
        missed = valid & ~hits.hit
        if missed.any():  # jitter left the bone: fall back to the (hitting) pixel centre
            safe_uv[missed] = np.round(safe_uv[missed])
            uv[missed] = safe_uv[missed]
            hits = self.cast(camera, torch.from_numpy(safe_uv))
        valid &= hits.hit
        points = np.where(valid[..., None], hits.entry_world, np.nan)
        return SurfaceSamples(points, np.where(valid[..., None], uv, np.nan), valid)
