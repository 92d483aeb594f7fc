"""Triangle-mesh queries shared by every layer (open3d behind one function)."""
from __future__ import annotations

import numpy as np


def raycasting_scene(vertices: np.ndarray, faces: np.ndarray):
    """open3d ``RaycastingScene`` holding one triangle mesh.

    Args:
        vertices: ``(V, 3)`` mm (open3d works in float32).
        faces: ``(F, 3)`` vertex indices.
    """
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(
        o3d.core.Tensor(np.ascontiguousarray(vertices, dtype=np.float32)),
        o3d.core.Tensor(np.ascontiguousarray(faces, dtype=np.uint32)),
    )
    return scene
