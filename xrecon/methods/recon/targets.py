"""Ground truth of one simulated view: for every pixel, where its ray enters and
leaves the posed bone, as canonical (mean-shape) coordinates.

The posed instance mesh is ray cast with open3d from the X-ray source through
every pixel centre. The first hit is the entry point; casting back from
beyond the bone gives the last hit, the exit point (seed 002's scene
coordinates). Each hit is a triangle and barycentric weights, which name the
same anatomical point on the mean shape: its canonical coordinates.

Conventions: :mod:`xrecon.geometry` (pixel centres at integer ``(u, v)``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xrecon.geometry import Camera
from xrecon.geometry.mesh import raycasting_scene
from xrecon.methods.recon.shape import ShapeSpace, SurfaceLocation, barycentric_from_uv


@dataclass
class ViewTargets:
    """Per-pixel targets of one view (image ``H x W``).

    Attributes:
        mask: ``(H, W)`` bool, the pixel's ray meets the bone.
        canonical: ``(2, 3, H, W)`` float32 canonical coordinates (model frame,
            mm) of the entry (0) and exit (1) points; 0 where ``mask`` is False.
        depth_mm: ``(2, H, W)`` float32 distance along the ray from the source of
            the entry / exit points (0 outside the mask).
    """

    mask: np.ndarray
    canonical: np.ndarray
    depth_mm: np.ndarray


def _cast(scene, origins: np.ndarray, dirs: np.ndarray):
    import open3d as o3d

    rays = np.concatenate([origins, dirs], axis=1).astype(np.float32)
    ans = scene.cast_rays(o3d.core.Tensor(rays))
    t = ans["t_hit"].numpy().astype(np.float64)
    hit = np.isfinite(t)
    tri = ans["primitive_ids"].numpy().astype(np.int64)
    bary = barycentric_from_uv(ans["primitive_uvs"].numpy())
    return hit, t, tri, bary


def view_targets(space: ShapeSpace, vertices_world: np.ndarray, camera: Camera, scene=None) -> ViewTargets:
    """Targets of the instance ``vertices_world: (V, 3)`` (same triangulation as
    ``space``, in the camera's world frame) seen by view 0 of ``camera``.

    ``scene`` may pass a prebuilt open3d scene of the same mesh (many views of one shape).
    """
    h, w = camera.height, camera.width
    scene = scene if scene is not None else raycasting_scene(vertices_world, space.faces)
    uv = camera[0].pixel_grid()
    origin, dirs = camera[0].rays_world(uv)
    origin, dirs = origin[0].numpy(), dirs[0].numpy()
    src = origin[0]
    far = float(np.linalg.norm(np.asarray(vertices_world) - src, axis=1).max()) + 10.0
    hit_in, t_in, tri_in, bary_in = _cast(scene, origin, dirs)
    hit_out, t_back, tri_out, bary_out = _cast(scene, origin + far * dirs, -dirs)
    mask = hit_in & hit_out
    canonical = np.zeros((2, 3, h * w), np.float32)
    depth = np.zeros((2, h * w), np.float32)
    for k, (tri, bary, t) in enumerate(((tri_in, bary_in, t_in), (tri_out, bary_out, far - t_back))):
        where = SurfaceLocation(tri[mask], bary[mask], np.zeros(int(mask.sum())))
        canonical[k][:, mask] = space.canonical_of(where).T
        depth[k][mask] = t[mask]
    return ViewTargets(mask.reshape(h, w), canonical.reshape(2, 3, h, w), depth.reshape(2, h, w))
