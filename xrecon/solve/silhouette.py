"""Distance along the viewing direction from a silhouette.

A posed object of *known size* (a CT's bone mesh) and a bone mask of the
X-ray (the reconstruction network's mask probability): moving the object
toward or away from the source along the ray through its centroid changes the
size of its projected silhouette and little else. :func:`silhouette_depth`
scans that one degree of freedom and returns the distance factor whose
silhouette best overlaps the mask (soft Dice).

Meshes and masks are in one camera's pixel grid (OpenCV: pixel centres at
integer ``(u, v)``); a pixel is in the silhouette when the ray through its
centre meets the mesh (how the network's training masks were made,
:mod:`xrecon.sim.raycast`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xrecon.errors import check_shape


@dataclass
class SilhouetteDepthResult:
    """Outcome of :func:`silhouette_depth`.

    Attributes:
        scale: best factor on every point's offset along the centroid's ray:
            the points move to ``p + (scale - 1) * centroid`` (1 = where they were;
            > 1 farther from the source).
        dice: soft Dice of the silhouette with the mask at ``scale``;
            ``dice_at_input`` at scale 1.
        scales, dice_curve: the scanned factors and their Dice.
        at_bound: the best factor is the first or last of the scan (the optimum
            may lie outside it).
        success, reason: False when no silhouette pixel meets the mask.
    """

    scale: float
    dice: float
    dice_at_input: float
    scales: np.ndarray
    dice_curve: np.ndarray
    at_bound: bool
    success: bool
    reason: str = ""


def silhouette_masks(vertices_cam: np.ndarray, faces: np.ndarray, K: np.ndarray, height: int, width: int,
                     offsets: np.ndarray | None = None, nthreads: int = 0) -> np.ndarray:
    """Silhouettes ``(S, height, width)`` bool of a triangle mesh (``vertices_cam: (V, 3)``
    in the camera frame, mm) seen through intrinsics ``K: (3, 3)``, with the mesh
    moved by each of ``offsets: (S, 3)`` (mm; default one zero offset): the pixels
    whose centre's ray meets the mesh (open3d ray casting; the mesh stays put and
    the rays start at ``-offset`` instead)."""
    import open3d as o3d

    from xrecon.geometry.mesh import raycasting_scene

    offsets = np.zeros((1, 3)) if offsets is None else np.asarray(offsets, np.float64).reshape(-1, 3)
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1)
    dirs = pix @ np.linalg.inv(np.asarray(K, np.float64)).T
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    S, N = len(offsets), len(dirs)
    rays = np.concatenate([np.broadcast_to(-offsets[:, None, :], (S, N, 3)),
                           np.broadcast_to(dirs[None], (S, N, 3))], axis=-1).astype(np.float32)
    scene = raycasting_scene(vertices_cam, faces)
    t_hit = scene.cast_rays(o3d.core.Tensor(np.ascontiguousarray(rays)), nthreads=nthreads)["t_hit"].numpy()
    return np.isfinite(t_hit).reshape(S, height, width)


def _soft_dice(sil: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """Soft Dice ``(S,)`` of silhouettes ``(S, H, W)`` with a probability map ``(H, W)``."""
    inter = (sil * prob).sum((1, 2))
    return 2.0 * inter / np.maximum(prob.sum() + sil.sum((1, 2)), 1e-9)


def silhouette_depth(vertices_cam: np.ndarray, faces: np.ndarray, K: np.ndarray, mask_prob: np.ndarray, *,
                     max_change: float = 0.08, steps: int = 65) -> SilhouetteDepthResult:
    """Best distance factor of a closed triangle mesh (``vertices_cam: (V, 3)``,
    camera frame, mm; ``faces: (F, 3)``) for the mask ``mask_prob: (H, W)`` in
    ``[0, 1]`` seen through intrinsics ``K: (3, 3)`` of that grid.

    Scans ``steps`` factors evenly over ``1 +- max_change``; the best one is
    refined by a parabola through it and its neighbours.
    """
    verts = np.asarray(vertices_cam, np.float64)
    prob = np.asarray(mask_prob, np.float64)
    check_shape("vertices_cam", verts, (None, 3))
    check_shape("mask_prob", prob, (None, None))
    if not 0.0 < max_change < 1.0 or steps < 3:
        raise ValueError(f"need 0 < max_change < 1 and steps >= 3, got {max_change}, {steps}")
    H, W = prob.shape
    c = verts.mean(0)
    scales = np.linspace(1.0 - max_change, 1.0 + max_change, steps)
    offsets = np.concatenate([[np.zeros(3)], (scales - 1.0)[:, None] * c])
    dice_all = _soft_dice(silhouette_masks(verts, faces, K, H, W, offsets), prob)
    at_input, dice = float(dice_all[0]), dice_all[1:]
    k = int(np.argmax(dice))
    if dice[k] <= 0.0:
        return SilhouetteDepthResult(1.0, 0.0, at_input, scales, dice, False, False,
                                     "the object's silhouette does not meet the mask at any distance")
    best = scales[k]
    if 0 < k < steps - 1:
        y0, y1, y2 = dice[k - 1], dice[k], dice[k + 1]
        den = y0 - 2.0 * y1 + y2
        if den < 0:
            best = scales[k] + 0.5 * (y0 - y2) / den * (scales[1] - scales[0])
    return SilhouetteDepthResult(float(best), float(dice[k]), at_input, scales, dice,
                                 k in (0, steps - 1), True)
