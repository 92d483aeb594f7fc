"""The one camera: OpenCV pinhole, world-to-camera. See :mod:`xrecon.geometry`.

A C-arm is a pinhole camera whose centre is the X-ray source and whose image
plane is the detector at distance ``sdd_mm``. ``Camera`` holds one or a batch of
views (``world_to_cam: (B, 4, 4)``, ``K: (B, 3, 3)``) of the same image size.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xrecon.errors import InputError, check_shape
from xrecon.geometry import se3


def intrinsics_from_detector(
    sdd_mm: float,
    pixel_spacing_mm: float | tuple[float, float],
    height: int,
    width: int,
    principal_offset_mm: tuple[float, float] = (0.0, 0.0),
) -> torch.Tensor:
    """Intrinsic matrix ``(3, 3)`` of a flat detector.

    ``pixel_spacing_mm`` is ``dx`` (columns) or ``(dx, dy)``. The principal point
    is the image centre ``((W-1)/2, (H-1)/2)`` in pixel-centre coordinates, shifted
    by ``principal_offset_mm`` (x0, y0) on the detector.
    """
    dx, dy = (pixel_spacing_mm, pixel_spacing_mm) if np.isscalar(pixel_spacing_mm) else pixel_spacing_mm
    x0, y0 = principal_offset_mm
    return torch.tensor(
        [
            [sdd_mm / dx, 0.0, width / 2 - 0.5 + x0 / dx],
            [0.0, sdd_mm / dy, height / 2 - 0.5 + y0 / dy],
            [0.0, 0.0, 1.0],
        ],
        dtype=torch.float64,
    )


@dataclass
class Camera:
    """A batch of X-ray views sharing one image size.

    Attributes:
        K: ``(B, 3, 3)`` intrinsics in pixels.
        world_to_cam: ``(B, 4, 4)`` rigid pose, ``x_cam = R x_world + t``.
        height, width: image size in pixels (rows, columns).
        pixel_spacing_mm: ``(dx, dy)`` detector spacing, used to convert pixel
            distances on the detector to mm (projected mTRE).
    """

    K: torch.Tensor
    world_to_cam: torch.Tensor
    height: int
    width: int
    pixel_spacing_mm: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self):
        self.K = torch.as_tensor(self.K, dtype=torch.float64)
        self.world_to_cam = torch.as_tensor(self.world_to_cam, dtype=torch.float64)
        if self.K.ndim == 2:
            self.K = self.K[None]
        if self.world_to_cam.ndim == 2:
            self.world_to_cam = self.world_to_cam[None]
        check_shape("K", self.K, (None, 3, 3))
        check_shape("world_to_cam", self.world_to_cam, (None, 4, 4))
        if self.K.shape[0] != self.world_to_cam.shape[0]:
            if self.K.shape[0] == 1:
                self.K = self.K.expand(self.world_to_cam.shape[0], 3, 3).clone()
            elif self.world_to_cam.shape[0] == 1:
                self.world_to_cam = self.world_to_cam.expand(self.K.shape[0], 4, 4).clone()
            else:
                raise InputError(f"K has batch {self.K.shape[0]} but world_to_cam has {self.world_to_cam.shape[0]}")
        self.height, self.width = int(self.height), int(self.width)
        dx, dy = (self.pixel_spacing_mm, self.pixel_spacing_mm) if np.isscalar(self.pixel_spacing_mm) else self.pixel_spacing_mm
        self.pixel_spacing_mm = (float(dx), float(dy))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_detector(
        cls,
        sdd_mm: float,
        pixel_spacing_mm: float | tuple[float, float],
        height: int,
        width: int,
        world_to_cam: torch.Tensor | None = None,
        principal_offset_mm: tuple[float, float] = (0.0, 0.0),
    ) -> "Camera":
        """Camera of a flat detector; ``world_to_cam`` defaults to the identity."""
        K = intrinsics_from_detector(sdd_mm, pixel_spacing_mm, height, width, principal_offset_mm)
        if world_to_cam is None:
            world_to_cam = torch.eye(4, dtype=torch.float64)
        sp = (pixel_spacing_mm, pixel_spacing_mm) if np.isscalar(pixel_spacing_mm) else tuple(pixel_spacing_mm)
        return cls(K, world_to_cam, height, width, sp)

    def __len__(self) -> int:
        return self.world_to_cam.shape[0]

    def __getitem__(self, i) -> "Camera":
        idx = [i] if isinstance(i, int) else i
        return Camera(self.K[idx], self.world_to_cam[idx], self.height, self.width, self.pixel_spacing_mm)

    def with_pose(self, world_to_cam: torch.Tensor) -> "Camera":
        """Same intrinsics, new pose(s)."""
        return Camera(self.K, world_to_cam, self.height, self.width, self.pixel_spacing_mm)

    @property
    def sdd_mm(self) -> torch.Tensor:
        """Source-to-detector distance ``(B,)`` (focal length times pixel spacing)."""
        return self.K[:, 0, 0] * self.pixel_spacing_mm[0]

    @property
    def source_world(self) -> torch.Tensor:
        """X-ray source (camera centre) in world coordinates, ``(B, 3)``."""
        return se3.invert(self.world_to_cam)[:, :3, 3]

    def resized(self, height: int, width: int) -> "Camera":
        """The same detector sampled on a ``height x width`` grid (K scaled to match)."""
        sx, sy = width / self.width, height / self.height
        K = self.K.clone()
        K[:, 0, 0] *= sx
        K[:, 1, 1] *= sy
        K[:, 0, 2] = (K[:, 0, 2] + 0.5) * sx - 0.5
        K[:, 1, 2] = (K[:, 1, 2] + 0.5) * sy - 0.5
        sp = (self.pixel_spacing_mm[0] / sx, self.pixel_spacing_mm[1] / sy)
        return Camera(K, self.world_to_cam, height, width, sp)

    def cropped(self, top: int, left: int, height: int, width: int) -> "Camera":
        """Camera of the sub-image ``img[top:top+height, left:left+width]``."""
        K = self.K.clone()
        K[:, 0, 2] -= left
        K[:, 1, 2] -= top
        return Camera(K, self.world_to_cam, height, width, self.pixel_spacing_mm)

    # ------------------------------------------------------------------ projection
    def world_to_camera(self, points_world: torch.Tensor) -> torch.Tensor:
        """``points_world: (B, N, 3)`` or ``(N, 3)`` -> camera-frame points ``(B, N, 3)``."""
        points_world = torch.as_tensor(points_world, dtype=torch.float64)
        if points_world.ndim == 2:
            points_world = points_world[None]
        return se3.apply(self.world_to_cam, points_world)

    def project(self, points_world: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project ``points_world: (B, N, 3)`` (or ``(N, 3)``) to pixels.

        Returns ``uv: (B, N, 2)`` (column, row) and ``depth: (B, N)`` (camera z, mm).
        """
        pc = self.world_to_camera(points_world)
        return self.project_camera(pc)

    def project_camera(self, points_cam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project camera-frame points ``(B, N, 3)`` to ``uv (B, N, 2)`` and depth ``(B, N)``."""
        points_cam = torch.as_tensor(points_cam, dtype=self.K.dtype)
        if points_cam.ndim == 2:
            points_cam = points_cam[None]
        z = points_cam[..., 2]
        h = points_cam @ self.K.transpose(-1, -2)
        uv = h[..., :2] / h[..., 2:3]
        return uv, z

    def rays_camera(self, uv: torch.Tensor) -> torch.Tensor:
        """Back-project pixels ``uv: (B, N, 2)`` to ray directions ``(B, N, 3)`` in the
        camera frame, scaled so that ``z = 1`` (``K^-1 [u, v, 1]``)."""
        uv = torch.as_tensor(uv, dtype=self.K.dtype)
        if uv.ndim == 2:
            uv = uv[None].expand(len(self), -1, -1)
        ones = torch.ones_like(uv[..., :1])
        return torch.cat([uv, ones], dim=-1) @ torch.linalg.inv(self.K).transpose(-1, -2)

    def unproject(self, uv: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """World points ``(B, N, 3)`` at camera depth ``depth: (B, N)`` along the rays of ``uv``:
        ``X = R^T (d K^-1 [u, v, 1] - t)`` (seed 002, eq. 2)."""
        rays = self.rays_camera(uv)
        pc = rays * torch.as_tensor(depth, dtype=rays.dtype)[..., None]
        return se3.apply(se3.invert(self.world_to_cam), pc)

    def rays_world(self, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rays of pixels ``uv: (B, N, 2)`` in the world frame: origins ``(B, N, 3)``
        (the source) and unit directions ``(B, N, 3)``."""
        d_cam = self.rays_camera(uv)
        d_cam = d_cam / d_cam.norm(dim=-1, keepdim=True)
        R = self.world_to_cam[:, :3, :3]
        d_world = d_cam @ R  # R^T d for row vectors
        origin = self.source_world[:, None, :].expand_as(d_world)
        return origin, d_world

    def pixel_grid(self) -> torch.Tensor:
        """All pixel centres ``(H*W, 2)`` as (u, v), row-major (``v * W + u``)."""
        v, u = torch.meshgrid(
            torch.arange(self.height, dtype=torch.float64), torch.arange(self.width, dtype=torch.float64), indexing="ij"
        )
        return torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1)

    # ------------------------------------------------------------------ I/O
    def to_dict(self, i: int = 0, frame: str = "world (RAS+, mm)") -> dict:
        """JSON-ready description of view ``i`` (names its frames)."""
        return {
            "convention": "OpenCV pinhole, x_cam = R x_world + t; u=column, v=row, pixel centres at integers",
            "world_frame": frame,
            "height": self.height,
            "width": self.width,
            "pixel_spacing_mm": list(self.pixel_spacing_mm),
            "sdd_mm": float(self.sdd_mm[i]),
            "K": self.K[i].tolist(),
            "world_to_cam": self.world_to_cam[i].tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict, source: str | Path | None = None) -> "Camera":
        """Inverse of :meth:`to_dict`. Accepts either ``K`` or ``sdd_mm`` + spacing."""
        try:
            h, w = int(d["height"]), int(d["width"])
            sp = d.get("pixel_spacing_mm", 1.0)
            sp = (float(sp), float(sp)) if np.isscalar(sp) else (float(sp[0]), float(sp[1]))
            if "K" in d:
                K = torch.tensor(d["K"], dtype=torch.float64)
            else:
                K = intrinsics_from_detector(float(d["sdd_mm"]), sp, h, w, tuple(d.get("principal_offset_mm", (0, 0))))
            pose = torch.tensor(d.get("world_to_cam", np.eye(4).tolist()), dtype=torch.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not a camera description ({exc!r}); needs height, width and K or sdd_mm", source) from exc
        if not torch.isfinite(K).all() or not torch.isfinite(pose).all():
            raise InputError("camera holds non-finite numbers", source)
        return cls(K, pose, h, w, sp)

    def save(self, path: str | Path, i: int = 0) -> None:
        from xrecon.io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(i), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "Camera":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read camera JSON ({exc})", path) from exc
        return cls.from_dict(d, path)
