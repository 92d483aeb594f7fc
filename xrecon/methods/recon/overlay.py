"""Pictures of a result: a mesh's projected outline drawn over the X-ray.

The silhouette of a mesh in a camera is the set of pixels whose ray meets the
mesh (open3d ray casting, exact for the pinhole of :mod:`xrecon.geometry`);
its outline is the silhouette minus its erosion.
"""
from __future__ import annotations

import numpy as np

from xrecon.geometry import Camera

#: Outline colours (RGB) used by the commands.
GREEN, RED, CYAN, YELLOW = (40, 220, 60), (240, 50, 50), (40, 200, 240), (250, 220, 40)


def silhouette(vertices_world: np.ndarray, faces: np.ndarray, camera: Camera) -> np.ndarray:
    """``(H, W)`` bool: pixels of view 0 of ``camera`` whose ray meets the mesh
    ``(vertices_world (V, 3), faces (F, 3))`` (mesh in the camera's world frame)."""
    import open3d as o3d

    from xrecon.geometry.mesh import raycasting_scene

    scene = raycasting_scene(vertices_world, faces)
    origin, dirs = camera[0].rays_world(camera[0].pixel_grid())
    rays = np.concatenate([origin[0].numpy(), dirs[0].numpy()], axis=1).astype(np.float32)
    hit = np.isfinite(scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy())
    return hit.reshape(camera.height, camera.width)


def outline(mask: np.ndarray, width_px: int = 1) -> np.ndarray:
    """``(H, W)`` bool boundary pixels of ``mask`` (``width_px`` thick)."""
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask, iterations=max(1, width_px), border_value=0)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """A grey image ``(H, W)`` (any range) as ``(H, W, 3)`` uint8, windowed to its 1-99 percentiles."""
    img = np.asarray(image, np.float64)
    lo, hi = np.percentile(img, [1, 99])
    g = np.clip((img - lo) / max(hi - lo, 1e-12), 0, 1)
    return np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=2)


def draw_overlay(image: np.ndarray, masks: list[tuple[np.ndarray, tuple[int, int, int]]],
                 points: list[tuple[np.ndarray, tuple[int, int, int]]] = (), width_px: int | None = None
                 ) -> np.ndarray:
    """Outlines of ``masks`` (each ``(H, W)`` bool with its colour) and dots at
    ``points`` (each ``(N, 2)`` pixel ``(u, v)`` with its colour) over ``image``;
    returns ``(H, W, 3)`` uint8."""
    rgb = to_rgb(image)
    h, w = rgb.shape[:2]
    width_px = width_px or max(1, round(max(h, w) / 256))
    for uv, colour in points:
        uv = np.round(np.asarray(uv)).astype(int)
        ok = (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        rgb[uv[ok, 1], uv[ok, 0]] = colour
    for mask, colour in masks:
        rgb[outline(mask, width_px)] = colour
    return rgb


def save_png(rgb: np.ndarray, path) -> None:
    """Write an ``(H, W, 3)`` uint8 picture atomically."""
    from PIL import Image

    from xrecon.io import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
