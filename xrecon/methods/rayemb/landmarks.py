"""Where RayEmb's 3D landmarks come from: anywhere on and inside the bone.

RayEmb (seed 003) needs no fixed landmark list: any 3D point of the volume can
be found in an X-ray. Training samples new points every step
(:func:`mesh_landmark_candidates`, from a subject's bone mesh); inference
samples them in the patient's CT (:func:`sample_ct_landmarks`, from a label
map or a HU threshold), or takes a user's own list.

Both mix three kinds of point: on the bone surface, inside the bone, and
anywhere in the bone's bounding box (soft tissue around it); the shares are
arguments. Points are in the frame of the mesh / CT (mm).
"""
from __future__ import annotations

import numpy as np

from xrecon.anatomy.volume import Volume
from xrecon.errors import InputError

#: Default shares of (surface, interior, box) points.
DEFAULT_MIX = (0.45, 0.45, 0.10)


def _split(n: int, mix) -> tuple[int, int, int]:
    mix = np.asarray(mix, np.float64)
    if mix.shape != (3,) or (mix < 0).any() or mix.sum() <= 0:
        raise InputError(f"mix must be three non-negative shares (surface, interior, box), got {mix.tolist()}")
    counts = np.floor(n * mix / mix.sum()).astype(int)
    counts[int(np.argmax(mix))] += n - counts.sum()
    return tuple(int(c) for c in counts)


def mesh_landmark_candidates(vertices: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator,
                             mix=DEFAULT_MIX, box_margin_mm: float = 15.0) -> np.ndarray:
    """``(n, 3)`` points on, inside and around a closed mesh ``vertices: (V, 3)``, ``faces: (F, 3)``.

    Surface points are area-uniform on the triangles; interior points are
    uniform in the bounding box, kept where open3d's occupancy says inside
    (at most 50 rounds; the remainder is filled with surface points, e.g. for
    an open mesh); box points are uniform in the box grown by ``box_margin_mm``.
    """
    from xrecon.geometry.mesh import raycasting_scene

    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    n_surf, n_in, n_box = _split(n, mix)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    lo, hi = v.min(0), v.max(0)

    def surface(k):
        tri = rng.choice(len(f), k, p=area / area.sum())
        r1, r2 = np.sqrt(rng.random(k)), rng.random(k)
        return (1 - r1)[:, None] * a[tri] + (r1 * (1 - r2))[:, None] * b[tri] + (r1 * r2)[:, None] * c[tri]

    inside = np.zeros((0, 3))
    if n_in:
        import open3d as o3d

        scene = raycasting_scene(v, f)
        for _ in range(50):
            p = rng.uniform(lo, hi, (max(4 * n_in, 256), 3))
            occ = scene.compute_occupancy(o3d.core.Tensor(p.astype(np.float32))).numpy() > 0.5
            inside = np.concatenate([inside, p[occ]])
            if len(inside) >= n_in:
                break
        inside = inside[:n_in]
    box = rng.uniform(lo - box_margin_mm, hi + box_margin_mm, (n_box, 3))
    pts = np.concatenate([surface(n_surf + n_in - len(inside)), inside, box])
    return pts[rng.permutation(len(pts))]


def bone_mask(ct: Volume, labels: Volume | None = None, structures: list[int] | None = None,
              hu_threshold: float = 200.0) -> np.ndarray:
    """``(I, J, K)`` bool: the label map's structures (all non-zero labels when
    ``structures`` is None) or, without labels, voxels above ``hu_threshold``."""
    if labels is not None:
        from xrecon.sim.drr import label_mask

        return label_mask(labels, ct, structures)
    mask = np.asarray(ct.data) > hu_threshold
    if not mask.any():
        raise InputError(f"no CT voxel above {hu_threshold} HU: give a label map or a lower threshold", ct.source)
    return mask


def sample_ct_landmarks(ct: Volume, n: int, *, labels: Volume | None = None, structures: list[int] | None = None,
                        hu_threshold: float = 200.0, mix=DEFAULT_MIX, box_margin_mm: float = 15.0,
                        seed: int = 0) -> np.ndarray:
    """``(n, 3)`` landmarks in the CT's world frame (mm): on the bone's boundary
    voxels, inside it (voxels whose 6 neighbours are bone too) and in its box.

    Each point is a voxel centre moved by a uniform jitter of half a voxel, so
    the points are not on the grid. The bone is :func:`bone_mask`.
    """
    from scipy.ndimage import binary_erosion

    if n < 1:
        raise InputError(f"the number of landmarks must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    mask = bone_mask(ct, labels, structures, hu_threshold)
    interior = binary_erosion(mask)
    boundary = mask & ~interior
    n_surf, n_in, n_box = _split(n, mix)
    if not interior.any():
        n_surf, n_in = n_surf + n_in, 0

    def draw(m, k):
        idx = np.argwhere(m)
        pick = idx[rng.choice(len(idx), k, replace=len(idx) < k)]
        return pick + rng.uniform(-0.5, 0.5, pick.shape)

    ijk = [draw(boundary, n_surf), draw(interior, n_in) if n_in else np.zeros((0, 3))]
    pts = ct.voxel_to_world_points(np.concatenate(ijk))
    if n_box:
        bone_pts = ct.voxel_to_world_points(np.argwhere(mask)[:: max(1, int(mask.sum()) // 20000)])
        lo, hi = bone_pts.min(0) - box_margin_mm, bone_pts.max(0) + box_margin_mm
        pts = np.concatenate([pts, rng.uniform(lo, hi, (n_box, 3))])
    return pts
