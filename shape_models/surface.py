"""Surface queries on a triangle mesh (open3d ray casting): closest points, occlusion tests.

Meshes are ``(vertices (V, 3), faces (F, 3))`` in mm; open3d works in float32.
"""
from __future__ import annotations

import numpy as np

from xrecon.geometry.mesh import raycasting_scene  # re-exported: shape_models.surface.raycasting_scene


def closest_surface_points(vertices: np.ndarray, faces: np.ndarray, query: np.ndarray):
    """Closest points on a mesh: ``(face ids (N,), barycentrics (N, 3), points (N, 3), normals (N, 3))``."""
    import open3d as o3d

    r = raycasting_scene(vertices, faces).compute_closest_points(o3d.core.Tensor(np.asarray(query, dtype=np.float32)))
    fid = r["primitive_ids"].numpy().astype(np.int64)
    uv = r["primitive_uvs"].numpy().astype(np.float64)
    bary = np.stack([1 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=1)
    tri = vertices[faces[fid]]
    pts = np.einsum("nk,nkd->nd", bary, tri)
    nrm = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
    return fid, bary, pts, nrm
