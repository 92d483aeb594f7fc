"""Synthetic observations of a known shape, for tests and benchmarks.

Every function is pure and seeded. Protocol of the 3D acceptance benchmark:
``partial_point_cloud`` samples the true surface uniformly (area-weighted),
removes half of the surface (``missing="backfacing"``, the default: every sample
whose outward normal faces away from a random viewing direction, as a one-sided
surface scan sees a bone; ``missing="plane"``: every sample on one side of a
random plane cut at the median, which can remove a whole end of a long bone),
adds isotropic Gaussian noise (``noise_mm`` per
coordinate), then adds uniform outliers in the bounding box of the kept points
grown by 20 % (``outlier_fraction`` of the final cloud), and finally moves
everything into a random frame (:func:`random_rigid`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shape_models.procrustes import apply_transform


def random_rotation(rng) -> np.ndarray:
    """A uniformly random rotation ``(3, 3)``."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def random_rigid(rng, max_translation_mm: float = 500.0) -> np.ndarray:
    """A random ``(4, 4)`` rigid transform: uniform rotation, translation uniform in a cube."""
    T = np.eye(4)
    T[:3, :3] = random_rotation(rng)
    T[:3, 3] = rng.uniform(-max_translation_mm, max_translation_mm, 3)
    return T


@dataclass(frozen=True)
class PartialCloud:
    """A simulated observation.

    points: ``(N, 3)`` observed points in the observation frame, mm.
    is_outlier: ``(N,)`` bool.
    model_to_obs: ``(4, 4)`` rigid transform that moved the true shape into the observation frame.
    """

    points: np.ndarray
    is_outlier: np.ndarray
    model_to_obs: np.ndarray


def sample_surface_normals(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 0
                           ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` area-weighted uniform samples ``(n, 3)`` on a mesh and their face normals ``(n, 3)``."""
    v = np.asarray(vertices, dtype=np.float64)
    tri = v[np.asarray(faces, dtype=np.int64)]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = 0.5 * np.linalg.norm(cross, axis=1)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(tri), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    w = np.stack([1 - s, s * (1 - r2), s * r2], axis=1)
    normals = cross[idx] / np.maximum(2 * area[idx, None], 1e-12)
    return np.einsum("nk,nkd->nd", w, tri[idx]), normals


def partial_point_cloud(vertices: np.ndarray, faces: np.ndarray, n_points: int = 5000,
                        missing_fraction: float = 0.5, noise_mm: float = 1.0, outlier_fraction: float = 0.1,
                        seed: int = 0, random_frame: bool = True, missing: str = "backfacing") -> PartialCloud:
    """Observe the surface ``(vertices (V, 3), faces (F, 3))`` as a partial noisy cloud (see module doc).

    ``missing_fraction`` applies to ``missing="plane"``; ``"backfacing"`` removes
    half of the area by construction (of a closed surface).
    """
    rng = np.random.default_rng(seed)
    pts, normals = sample_surface_normals(vertices, faces, n_points, seed=seed)
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    if missing == "backfacing":
        pts = pts[normals @ direction > 0]
    elif missing == "plane":
        if missing_fraction > 0:
            h = pts @ direction
            pts = pts[h > np.quantile(h, missing_fraction)]
    elif missing is not None:
        raise ValueError(f"missing must be 'backfacing', 'plane' or None, got {missing!r}")
    pts = pts + rng.normal(0.0, noise_mm, pts.shape)
    n_out = int(round(outlier_fraction / (1 - outlier_fraction) * len(pts)))
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    pad = 0.2 * (hi - lo)
    outliers = rng.uniform(lo - pad, hi + pad, (n_out, 3))
    allp = np.concatenate([pts, outliers])
    is_out = np.concatenate([np.zeros(len(pts), bool), np.ones(n_out, bool)])
    order = rng.permutation(len(allp))
    T = random_rigid(rng) if random_frame else np.eye(4)
    return PartialCloud(apply_transform(T, allp[order]), is_out[order], T)
