"""Pictures of a result: a mesh's projected outline drawn over the X-ray.

The silhouette of a mesh in a camera is the set of pixels whose ray meets the
mesh (open3d ray casting, exact for the pinhole of :mod:`xrecon.geometry`);
its outline is the silhouette minus its erosion.

Pictures are bounded: their longest side is at most :data:`OVERLAY_MAX_SIDE`
(aspect kept). :func:`silhouette` ray-casts at that size directly
(``max_side=``, the camera :meth:`~xrecon.geometry.Camera.resized_within`), and
:func:`draw_overlay` shrinks the X-ray and moves the points to the same grid,
so the outline stays where the bone is.
"""
from __future__ import annotations

import numpy as np

from xrecon.errors import ShapeError
from xrecon.geometry import Camera
from xrecon.geometry.camera import size_within

#: Outline colours (RGB) used by the commands.
GREEN, RED, CYAN, YELLOW = (40, 220, 60), (240, 50, 50), (40, 200, 240), (250, 220, 40)

#: Longest side (pixels) of an overlay picture.
OVERLAY_MAX_SIDE = 1024


def silhouette(vertices_world: np.ndarray, faces: np.ndarray, camera: Camera,
               max_side: int | None = None) -> np.ndarray:
    """``(H, W)`` bool: pixels of view 0 of ``camera`` whose ray meets the mesh
    ``(vertices_world (V, 3), faces (F, 3))`` (mesh in the camera's world frame).

    With ``max_side`` the camera is first shrunk so that its longest side is at
    most ``max_side`` (:meth:`Camera.resized_within`): ``(H, W)`` is then that
    smaller grid, and the ray casting costs at most ``max_side**2`` rays.
    """
    import open3d as o3d

    from xrecon.geometry.mesh import raycasting_scene

    if max_side is not None:
        camera = camera[0].resized_within(max_side)
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
                 points: list[tuple[np.ndarray, tuple[int, int, int]]] = (), width_px: int | None = None,
                 max_side: int = OVERLAY_MAX_SIDE) -> np.ndarray:
    """Outlines of ``masks`` and dots at ``points`` over ``image: (H, W)``.

    The picture is ``(h, w, 3)`` uint8 with ``(h, w) = size_within(H, W,
    max_side)``: a larger X-ray is area-averaged down, and the points ``(N, 2)``
    pixel ``(u, v)`` of ``image`` are moved to the smaller grid
    (``u' = (u + 0.5) w / W - 0.5``, as :meth:`Camera.resized`). Each mask is
    ``(H, W)`` bool (shrunk: a pixel is inside when at least half its area is)
    or already ``(h, w)`` (e.g. :func:`silhouette` with ``max_side``).
    """
    H, W = np.asarray(image).shape[:2]
    h, w = size_within(H, W, max_side)
    small = _shrink(np.asarray(image, np.float64), h, w)
    rgb = to_rgb(small)
    width_px = width_px or max(1, round(max(h, w) / 256))
    scale = np.array([w / W, h / H])
    for uv, colour in points:
        uv = np.round((np.asarray(uv, np.float64).reshape(-1, 2) + 0.5) * scale - 0.5).astype(int)
        ok = (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        rgb[uv[ok, 1], uv[ok, 0]] = colour
    for mask, colour in masks:
        mask = np.asarray(mask, bool)
        if mask.shape == (H, W) and (h, w) != (H, W):
            mask = _shrink(mask.astype(np.float32), h, w) >= 0.5
        elif mask.shape != (h, w):
            raise ShapeError("mask", f"{(H, W)} (the image) or {(h, w)} (the picture)", mask.shape)
        rgb[outline(mask, width_px)] = colour
    return rgb


def _shrink(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area average of ``img: (H, W)`` onto ``height x width`` (no-op at the same size)."""
    if img.shape == (height, width):
        return img
    import cv2

    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)


def save_png(rgb: np.ndarray, path) -> None:
    """Write an ``(H, W, 3)`` uint8 picture atomically."""
    from PIL import Image

    from xrecon.io import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
