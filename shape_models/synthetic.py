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


def look_at_camera(target_world: np.ndarray, view_direction: np.ndarray, up_world: np.ndarray,
                   source_to_target_mm: float = 750.0, sdd_mm: float = 1000.0, size_px: int = 512,
                   pixel_spacing_mm: float = 0.8):
    """A :class:`xrecon.geometry.Camera` whose central ray passes through ``target_world (3,)``.

    ``view_direction (3,)``: from the source toward the target (camera +z);
    ``up_world (3,)``: world direction shown up in the image (camera -y).
    """
    import torch

    from xrecon.geometry.camera import Camera

    z = np.asarray(view_direction, np.float64)
    z = z / np.linalg.norm(z)
    up = np.asarray(up_world, np.float64)
    y = -(up - (up @ z) * z)
    y /= np.linalg.norm(y)
    x = np.cross(y, z)
    R = np.stack([x, y, z])  # rows: camera axes in world coordinates
    source = np.asarray(target_world, np.float64) - source_to_target_mm * z
    world_to_cam = np.eye(4)
    world_to_cam[:3, :3] = R
    world_to_cam[:3, 3] = -R @ source
    return Camera.from_detector(sdd_mm, pixel_spacing_mm, size_px, size_px, torch.as_tensor(world_to_cam))


def biplanar_cameras(target_world: np.ndarray, **kwargs):
    """Two views 90 degrees apart around the superior (+y) axis of the model frame:
    anteroposterior (looking along -x, the ISB anterior axis) and lateral (along -z)."""
    import torch

    from xrecon.geometry.camera import Camera

    ap = look_at_camera(target_world, [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], **kwargs)
    lat = look_at_camera(target_world, [0.0, 0.0, -1.0], [0.0, 1.0, 0.0], **kwargs)
    return Camera(torch.cat([ap.K, lat.K]), torch.cat([ap.world_to_cam, lat.world_to_cam]), ap.height, ap.width,
                  ap.pixel_spacing_mm)


def render_silhouette(vertices: np.ndarray, faces: np.ndarray, camera, view: int = 0) -> np.ndarray:
    """Binary silhouette ``(H, W)`` of a mesh: a pixel is set when the ray through its
    centre hits the surface (open3d ray casting; independent of the fitter's outline code)."""
    import open3d as o3d

    from shape_models.surface import raycasting_scene

    scene = raycasting_scene(vertices, faces)
    cam = camera[view]
    origin, direction = cam.rays_world(cam.pixel_grid())
    rays = np.concatenate([origin[0].numpy(), direction[0].numpy()], axis=1).astype(np.float32)
    hit = scene.test_occlusions(o3d.core.Tensor(rays)).numpy()
    return hit.reshape(cam.height, cam.width)


def smooth_deformation(vertices: np.ndarray, rms_mm: float = 1.0, n_bumps: int = 8, width_mm: float = 40.0,
                       seed: int = 0) -> np.ndarray:
    """The mesh ``vertices (V, 3)`` moved by a smooth random field of RMS ``rms_mm``:
    a sum of ``n_bumps`` Gaussian bumps (width ``width_mm``) centred on random vertices,
    each with a random direction. Simulates anatomy the model does not capture
    (the bundled test subjects otherwise lie almost exactly in the model's span)."""
    rng = np.random.default_rng(seed)
    v = np.asarray(vertices, np.float64)
    centres = v[rng.choice(len(v), n_bumps, replace=False)]
    dirs = rng.standard_normal((n_bumps, 3))
    w = np.exp(-((v[:, None, :] - centres[None]) ** 2).sum(-1) / (2 * width_mm**2))  # (V, n_bumps)
    disp = w @ dirs
    rms = np.sqrt((disp**2).sum(1).mean())
    return v + disp * (rms_mm / max(rms, 1e-12))


def noisy_contour(points_uv: np.ndarray, sigma_px: float = 1.0, seed: int = 0) -> np.ndarray:
    """Contour points ``(M, 2)`` with isotropic Gaussian noise of ``sigma_px`` per coordinate."""
    rng = np.random.default_rng(seed)
    return np.asarray(points_uv, np.float64) + rng.normal(0.0, sigma_px, np.shape(points_uv))


def remesh(vertices: np.ndarray, faces: np.ndarray, n_triangles: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The same surface with another triangulation: open3d quadric decimation to
    ``n_triangles``, then the vertices shuffled (faces renumbered), so vertex ``i``
    no longer means anything. Returns ``(vertices (V', 3), faces (F', 3))``."""
    import open3d as o3d

    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(np.asarray(vertices, np.float64)),
                                     o3d.utility.Vector3iVector(np.asarray(faces, np.int32)))
    dec = mesh.simplify_quadric_decimation(int(n_triangles))
    v = np.asarray(dec.vertices)
    f = np.asarray(dec.triangles).astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(v))
    return v[perm], np.argsort(perm)[f]


def whitened_coefficients(n_shapes: int, n_components: int, seed: int = 0) -> np.ndarray:
    """``(n_shapes, n_components)`` coefficients with zero mean and sample covariance
    exactly the identity (ddof 1): a population whose sample PCA gives back the
    model's own modes and variances."""
    rng = np.random.default_rng(seed)
    b = rng.standard_normal((n_shapes, n_components))
    b -= b.mean(axis=0)
    q, _ = np.linalg.qr(b)
    return q * np.sqrt(n_shapes - 1)
