"""One volume type: voxels plus their affine into the world frame (RAS+ mm).

``data[i, j, k]`` is the voxel at index ``(i, j, k)``; its world position is
``voxel_to_world @ [i, j, k, 1]`` (nibabel's convention, RAS+ mm). The affine is
the CT's own: xrecon never re-centres a volume silently (diffdrr does, and the
adapter in :mod:`xrecon.sim.drr` accounts for that).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xrecon.errors import InputError


@dataclass
class Volume:
    """A scalar volume (CT in HU, or a label map) in the world frame.

    Attributes:
        data: ``(I, J, K)`` array (float32 HU for CTs, integer ids for label maps).
        voxel_to_world: ``(4, 4)`` affine from voxel index to RAS+ mm.
        source: where it came from (file path or description), for messages.
        label_names: for label maps, ``{id: name}``.
    """

    data: np.ndarray
    voxel_to_world: np.ndarray
    source: str = "<memory>"
    label_names: dict[int, str] = field(default_factory=dict)

    def __post_init__(self):
        self.data = np.asarray(self.data)
        self.voxel_to_world = np.asarray(self.voxel_to_world, dtype=np.float64)
        if self.data.ndim != 3:
            raise InputError(f"expected a 3D volume, got an array of shape {self.data.shape}", self.source)
        if min(self.data.shape) < 2:
            raise InputError(f"volume of shape {self.data.shape} is not 3D (a 2D image?)", self.source)
        if self.voxel_to_world.shape != (4, 4) or not np.isfinite(self.voxel_to_world).all():
            raise InputError("affine must be a finite 4x4 matrix", self.source)
        if abs(np.linalg.det(self.voxel_to_world[:3, :3])) < 1e-9:
            raise InputError("affine is singular (zero voxel spacing?)", self.source)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)

    @property
    def spacing_mm(self) -> np.ndarray:
        """Voxel size along i, j, k in mm."""
        return np.linalg.norm(self.voxel_to_world[:3, :3], axis=0)

    @property
    def world_to_voxel(self) -> np.ndarray:
        return np.linalg.inv(self.voxel_to_world)

    def voxel_to_world_points(self, ijk: np.ndarray) -> np.ndarray:
        """``ijk: (N, 3)`` voxel indices (may be fractional) -> ``(N, 3)`` world mm."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.voxel_to_world[:3, :3].T + self.voxel_to_world[:3, 3]

    def world_to_voxel_points(self, xyz: np.ndarray) -> np.ndarray:
        A = self.world_to_voxel
        return np.asarray(xyz, dtype=np.float64) @ A[:3, :3].T + A[:3, 3]

    @property
    def center_world(self) -> np.ndarray:
        """World position of the volume's centre (mm)."""
        return self.voxel_to_world_points((np.array(self.shape) - 1)[None] / 2.0)[0]

    def with_data(self, data: np.ndarray, **kw) -> "Volume":
        """Same grid, other voxels (e.g. a label map on the CT's grid)."""
        return Volume(data, self.voxel_to_world.copy(), kw.get("source", self.source), kw.get("label_names", {}))

    def transformed(self, old_world_to_new_world: np.ndarray) -> "Volume":
        """The same voxels described in another world frame:
        ``new voxel_to_world = old_world_to_new_world @ voxel_to_world``."""
        A = np.asarray(old_world_to_new_world, dtype=np.float64)
        return Volume(self.data, A @ self.voxel_to_world, self.source, dict(self.label_names))
