"""Depth and pose of a mesh of known size from a bone mask (its silhouette).

A posed object of *known size* (a CT's bone mesh) and a bone mask of the
X-ray (the reconstruction network's mask probability): moving the object
toward or away from the source along the ray through its centroid (the mean
of its vertices) changes the
size of its projected silhouette and little else. :func:`silhouette_depth`
scans that one degree of freedom and returns the distance factor whose
silhouette best overlaps the mask (soft Dice); :func:`silhouette_pose` searches
all six rigid degrees of freedom near a start pose for the same overlap, or
(:func:`contour_pose`) for the pose whose outline follows the mask's outline.

Meshes and masks are in one camera's pixel grid (OpenCV: pixel centres at
integer ``(u, v)``); a pixel is in the silhouette when the ray through its
centre meets the mesh (how the network's training masks were made,
:mod:`xrecon.sim.raycast`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xrecon.errors import check_shape

#: the searches :func:`silhouette_pose` offers (``method``), its default first
SEARCH_METHODS = ("contour", "nelder-mead", "powell")



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


def _pixel_rays(K: np.ndarray, height: int, width: int) -> np.ndarray:
    """Unit directions ``(height * width, 3)`` (camera frame, row-major) of the rays
    through the pixel centres of intrinsics ``K``."""
    from xrecon.geometry import Camera

    cam = Camera(np.asarray(K, np.float64), np.eye(4), height, width, (1.0, 1.0))
    dirs = cam.rays_camera(cam.pixel_grid())[0].numpy()
    return dirs / np.linalg.norm(dirs, axis=1, keepdims=True)


def silhouette_masks(vertices_cam: np.ndarray, faces: np.ndarray, K: np.ndarray, height: int, width: int,
                     offsets: np.ndarray | None = None, nthreads: int = 0) -> np.ndarray:
    """Silhouettes ``(S, height, width)`` bool of a triangle mesh (``vertices_cam: (V, 3)``
    in the camera frame, mm) seen through intrinsics ``K: (3, 3)``, with the mesh
    moved by each of ``offsets: (S, 3)`` (mm; default one zero offset): the pixels
    whose centre's ray meets the mesh (open3d ray casting; the mesh stays put and
    the rays start at ``-offset`` instead)."""
    from xrecon.geometry.mesh import raycasting_scene

    offsets = np.zeros((1, 3)) if offsets is None else np.asarray(offsets, np.float64).reshape(-1, 3)
    dirs = _pixel_rays(K, height, width)
    S, N = len(offsets), len(dirs)
    hit = _hits(raycasting_scene(vertices_cam, faces), np.broadcast_to(-offsets[:, None, :], (S, N, 3)),
                np.broadcast_to(dirs[None], (S, N, 3)), nthreads)
    return hit.reshape(S, height, width)


def _hits(scene, origins: np.ndarray, directions: np.ndarray, nthreads: int) -> np.ndarray:
    """Whether each ray ``(..., 3)`` meets the open3d scene's mesh (float32 rays)."""
    import open3d as o3d

    rays = np.concatenate([origins, directions], axis=-1).astype(np.float32)
    return np.isfinite(scene.cast_rays(o3d.core.Tensor(np.ascontiguousarray(rays)), nthreads=nthreads)["t_hit"].numpy())


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


@dataclass
class SilhouettePoseResult:
    """Outcome of :func:`silhouette_pose`.

    Attributes:
        object_to_cam: ``(4, 4)`` the refined pose (the input pose on failure or
            when nothing overlapped the mask better).
        dice: soft Dice of its silhouette with the mask; ``dice_at_input`` of the input pose's.
        params: rotation vector (deg, about the object's centroid in the camera
            frame) and translation (mm) of the change, ``(6,)``.
        n_evaluations: silhouettes rendered.
        success, reason: False when the input pose's silhouette does not meet the mask.
        outline_px: ``method="contour"`` only (NaN otherwise): how far the mask's
            outline lies from the posed object's outline, pixels (90th percentile
            over the mask's outline points: a part of the bone that the pose
            leaves uncovered shows here, where the Dice hardly moves).
    """

    object_to_cam: np.ndarray
    dice: float
    dice_at_input: float
    params: np.ndarray
    n_evaluations: int
    success: bool
    reason: str = ""
    outline_px: float = float("nan")


def silhouette_pose(vertices: np.ndarray, faces: np.ndarray, object_to_cam: np.ndarray, K: np.ndarray,
                    mask_prob: np.ndarray, *, max_rotation_deg: float = 6.0, max_shift_mm: float = 15.0,
                    max_depth_change: float = 0.08, max_evaluations: int = 600,
                    start_grid: tuple[float, float] | None = (1e-5, 0.01), method: str = "nelder-mead",
                    simplex_runs: int = 2, polish: bool = True, nthreads: int = 0) -> SilhouettePoseResult:
    """Rigid pose of a closed mesh (``vertices: (V, 3)`` in its own frame, mm) near
    ``object_to_cam`` whose silhouette best overlaps ``mask_prob: (H, W)`` (soft Dice),
    seen through intrinsics ``K: (3, 3)`` of the mask's grid.

    Six parameters, bounded around the start: a rotation about the object's
    centroid of at most ``max_rotation_deg`` per axis, an in-plane shift of at
    most ``max_shift_mm`` and a shift along the optical axis of at most
    ``max_depth_change`` x the centroid's depth. The mesh's ray-casting scene is
    built once; each evaluation moves the rays.

    ``method="contour"`` fits the mesh's outline to the mask's sub-pixel outline
    instead (:func:`contour_pose`: a smooth objective, solved by least squares;
    the other settings below do not apply to it). The Dice searches are
    derivative-free (scipy): ``method="nelder-mead"`` starts from a wide simplex (1 deg, 3 mm across, a third of the depth bound
    along the axis) and runs ``simplex_runs`` times, each run after the first from
    the last one's best with a simplex half as wide, then (``polish``) a Powell line search from
    the best point settles it locally; ``"powell"`` alone is the search used
    before (kept for comparison). The simplex's steps, wider than a pixel, step
    over the objective's pixel-sized plateaus where Powell's line searches stop:
    on the validation registrations of ``benchmarks/bench_recon.py`` it made
    fewer gross errors (the test split ranked the two a tie; docs/reconstruction.md).
    On small silhouettes (a few hundred pixels) the simplex can stall, which the
    polish mends. ``max_evaluations`` bounds the silhouettes rendered, the start's
    included, over all runs together (``"powell"``: the bounded Powell search's own budget, the start not counted).

    The objective is piecewise constant (whole pixels enter and leave the
    silhouette), so the search path depends on the start's last digits: the
    start is first snapped to ``start_grid`` (rotation vector in rad,
    translation in mm), and starts that differ by float noise (the same CT
    given in another frame: 1e-5 mm) then give the same result instead of
    results a few tenths of a millimetre apart.
    """
    from scipy.optimize import minimize
    from scipy.spatial.transform import Rotation

    from xrecon.geometry.mesh import raycasting_scene

    verts = np.asarray(vertices, np.float64)
    prob = np.asarray(mask_prob, np.float64)
    T_in = T0 = np.asarray(object_to_cam, np.float64)
    check_shape("vertices", verts, (None, 3))
    check_shape("mask_prob", prob, (None, None))
    check_shape("object_to_cam", T0, (4, 4))
    if method not in SEARCH_METHODS or simplex_runs < 1:
        raise ValueError(f"method must be one of {SEARCH_METHODS} and simplex_runs >= 1, got {method!r}, "
                         f"{simplex_runs}")
    if method == "contour":
        return contour_pose(verts, faces, T0, K, prob, max_rotation_deg=max_rotation_deg, max_shift_mm=max_shift_mm,
                            max_depth_change=max_depth_change, nthreads=nthreads)
    if start_grid is not None:
        rot_step, shift_step = start_grid
        T0 = T0.copy()
        rotvec = np.round(Rotation.from_matrix(T0[:3, :3]).as_rotvec() / rot_step) * rot_step
        T0[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
        T0[:3, 3] = np.round(T0[:3, 3] / shift_step) * shift_step
    H, W = prob.shape
    dirs = _pixel_rays(K, H, W)
    scene = raycasting_scene(verts, faces)
    c = (verts @ T0[:3, :3].T + T0[:3, 3]).mean(0)
    z_step = max_depth_change * abs(c[2]) / max_shift_mm  # the depth parameter in units that move ~ as much
    n_eval = 0

    def pose(x):
        G = np.eye(4)
        R = Rotation.from_rotvec(np.deg2rad(x[:3])).as_matrix()
        G[:3, :3] = R
        G[:3, 3] = c - R @ c + np.array([x[3], x[4], z_step * x[5]])
        return G @ T0

    def cost(x):
        nonlocal n_eval
        n_eval += 1
        inv = np.linalg.inv(pose(x))  # camera -> object: move the rays, not the mesh
        hit = _hits(scene, np.broadcast_to(inv[:3, 3], dirs.shape), dirs @ inv[:3, :3].T, nthreads)
        return -float(_soft_dice(hit.reshape(1, H, W), prob)[0])

    x0 = np.zeros(6)
    start = -cost(x0)
    if start <= 0.0:
        return SilhouettePoseResult(T_in, 0.0, 0.0, x0, n_eval, False,
                                    "the object's silhouette does not meet the mask at the start pose")
    bounds = [(-max_rotation_deg, max_rotation_deg)] * 3 + [(-max_shift_mm, max_shift_mm)] * 3

    def powell(x, budget):
        res = minimize(cost, x, method="Powell", bounds=bounds,
                       options={"xtol": 1e-2, "ftol": 1e-5, "maxfev": budget})
        return res.x, -float(res.fun)

    if method == "powell":
        x_best, best = powell(x0, max_evaluations)  # the bounded Powell search's budget (its start not counted)
    else:
        hi = np.array(bounds)[:, 1]
        step = np.array([1.0, 1.0, 1.0, 3.0, 3.0, max_shift_mm / 3.0])  # depth: a third of its bound
        x_best, best = x0, start
        for r in range(simplex_runs):
            if n_eval >= max_evaluations:
                break
            # each vertex steps up, or down where that would leave the bounds (a vertex
            # clipped onto the bound could coincide with the first and flatten the simplex)
            d = step / 2.0 ** r
            d = np.where(x_best + d > hi, -d, d)
            res = minimize(cost, x_best, method="Nelder-Mead", bounds=bounds,
                           options={"initial_simplex": x_best + np.vstack([np.zeros(6), np.diag(d)]),
                                    "xatol": 0.05, "fatol": 1e-5, "maxfev": max_evaluations - n_eval})
            if -float(res.fun) > best:
                x_best, best = res.x, -float(res.fun)
        if polish and n_eval < max_evaluations:
            x_polished, polished = powell(x_best, max_evaluations - n_eval)
            if polished > best:
                x_best, best = x_polished, polished
    if best <= start:
        return SilhouettePoseResult(T_in, start, start, x0, n_eval, True)
    return SilhouettePoseResult(pose(x_best), best, start, np.asarray(x_best, np.float64), n_eval, True)


def _silhouette_edges(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges ``(E, 2)`` shared by exactly two faces (where an outline can run), those
    two faces ``(E, 2)``, and the vertex of the first face off the edge ``(E,)``."""
    f = np.asarray(faces, np.int64)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    opposite = np.concatenate([f[:, 2], f[:, 0], f[:, 1]])
    fid = np.tile(np.arange(len(f)), 3)
    e_sorted = np.sort(e, axis=1)
    key = e_sorted[:, 0] * (int(f.max()) + 1) + e_sorted[:, 1]
    order = np.argsort(key, kind="stable")
    _, first, counts = np.unique(key[order], return_index=True, return_counts=True)
    a, b = order[first[counts == 2]], order[first[counts == 2] + 1]
    return e_sorted[a], np.stack([fid[a], fid[b]], axis=1), opposite[a]


def mask_contour(mask_prob: np.ndarray, level: float = 0.5, spacing_px: float = 0.25,
                 border_px: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel outline of a probability map: points ``(N, 2)`` (pixel ``(u, v)``)
    every ``spacing_px`` along its ``level`` iso-lines and their unit normals
    ``(N, 2)``; points within ``border_px`` of the image edge are left out (there
    the outline is the detector's edge, not the bone's). The outline moves
    continuously with the map's values (no threshold decides whole pixels). The
    map is traced as it is: a blur would pull the outline inward where it curves
    (by sd^2 / 2 r, millimetres of depth for a small bone)."""
    from skimage.measure import find_contours

    prob = np.asarray(mask_prob, np.float64)
    H, W = prob.shape
    pts, nrm = [], []
    for c in find_contours(prob, level):
        uv = c[:, ::-1]  # (row, col) -> (u, v)
        seg = np.diff(uv, axis=0)
        length = np.linalg.norm(seg, axis=1)
        keep = length > 1e-9
        seg, length, start = seg[keep], length[keep], uv[:-1][keep]
        if not len(seg):
            continue
        n_each = np.maximum(np.ceil(length / spacing_px).astype(int), 1)
        k = np.repeat(np.arange(len(seg)), n_each)
        t = (np.arange(n_each.sum()) - np.repeat(np.cumsum(n_each) - n_each, n_each)) / n_each[k]
        pts.append(start[k] + t[:, None] * seg[k])
        tangent = seg[k] / length[k, None]
        nrm.append(np.stack([-tangent[:, 1], tangent[:, 0]], axis=1))
    if not pts:
        return np.zeros((0, 2)), np.zeros((0, 2))
    pts, nrm = np.concatenate(pts), np.concatenate(nrm)
    inside = ((pts[:, 0] > border_px - 0.5) & (pts[:, 0] < W - 0.5 - border_px)
              & (pts[:, 1] > border_px - 0.5) & (pts[:, 1] < H - 0.5 - border_px))
    return pts[inside], nrm[inside]


def contour_pose(vertices: np.ndarray, faces: np.ndarray, object_to_cam: np.ndarray, K: np.ndarray,
                 mask_prob: np.ndarray, *, max_rotation_deg: float = 6.0, max_shift_mm: float = 15.0,
                 max_depth_change: float = 0.08, max_iterations: int = 20, gate_px: float = 6.0,
                 huber_px: float = 0.5, min_pairs: int = 20, nthreads: int = 0) -> SilhouettePoseResult:
    """Rigid pose of a closed mesh (``vertices: (V, 3)`` in its own frame, mm) near
    ``object_to_cam`` whose outline best follows the outline of ``mask_prob: (H, W)``
    (its 0.5 iso-line, :func:`mask_contour`), seen through intrinsics ``K: (3, 3)``
    of the mask's grid: ``silhouette_pose(method="contour")``.

    An iterative closest-point search in the image: the mesh's outline (points
    on the edges between a face turned toward the source and one turned away,
    kept where they lie on the silhouette's outer edge, not on folds inside
    it) is projected; each contour point is paired with the nearest outline point
    of the mask (pairs farther than ``gate_px`` are dropped); a Huber-robust
    least-squares step (``huber_px``) moves the pose to bring each point onto its
    partner's tangent line; and again, until the pose stops moving. The same
    bounds as :func:`silhouette_pose` hold (the change is clipped to them) and a
    weak pull toward the start keeps unobserved directions where they were.
    (Restarts from tilted and shifted starts, the best kept by the outline
    distance both ways, changed nothing on 7 validation registrations: not used.)

    Unlike the Dice searches, the objective moves smoothly with the pose and with
    the mask's values, so masks that differ by rounding (a float image against its
    16-bit PNG) give poses that differ by as little.
    """
    from scipy.optimize import least_squares
    from scipy.spatial import cKDTree
    from scipy.spatial.transform import Rotation

    from xrecon.geometry.mesh import raycasting_scene

    verts = np.asarray(vertices, np.float64)
    prob = np.asarray(mask_prob, np.float64)
    T0 = np.asarray(object_to_cam, np.float64)
    K = np.asarray(K, np.float64)
    H, W = prob.shape
    dirs = _pixel_rays(K, H, W)
    scene = raycasting_scene(verts, faces)
    n_eval = 0

    def render(T):
        nonlocal n_eval
        n_eval += 1
        inv = np.linalg.inv(T)
        return _hits(scene, np.broadcast_to(inv[:3, 3], dirs.shape), dirs @ inv[:3, :3].T, nthreads).reshape(H, W)

    def dice(sil):
        return float(_soft_dice(sil[None], prob)[0])

    sil0 = render(T0)
    start = dice(sil0)
    x0 = np.zeros(6)
    if start <= 0.0:
        return SilhouettePoseResult(T0, 0.0, 0.0, x0, n_eval, False,
                                    "the object's silhouette does not meet the mask at the start pose")
    q, qn = mask_contour(prob)
    if len(q) < min_pairs:
        return SilhouettePoseResult(T0, start, start, x0, n_eval, False, "the mask has (almost) no outline")
    tree = cKDTree(q)
    edges, adj, opposite = _silhouette_edges(faces)
    tri = verts[np.asarray(faces, np.int64)]
    f_normal, f_centre = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), tri.mean(1)
    along = np.array([0.25, 0.5, 0.75])[None, :, None]  # points on each outline edge
    c = (verts @ T0[:3, :3].T + T0[:3, 3]).mean(0)
    z_bound = max_depth_change * abs(c[2])
    lo = np.array([-max_rotation_deg] * 3 + [-max_shift_mm] * 2 + [-z_bound])
    hi = -lo
    prior_sd = np.array([2.0, 2.0, 2.0, 5.0, 5.0, 0.05 * abs(c[2])])  # deg, mm: a pull of one pixel per sd

    def pose(x):
        G = np.eye(4)
        R = Rotation.from_rotvec(np.deg2rad(x[:3])).as_matrix()
        G[:3, :3] = R
        G[:3, 3] = c - R @ c + x[3:]
        return G @ T0

    def project(T, X):
        p = X @ T[:3, :3].T + T[:3, 3]
        uvw = p @ K.T
        return uvw[:, :2] / uvw[:, 2:3]

    def contour_points(T):
        """Object-frame points on the mesh edges that make the outer outline of its
        silhouette: edges between a face turned toward the source and one turned
        away (a polyhedron's outline runs along such edges, exactly what the
        ray-cast silhouette shows), kept where a ray a twentieth of a pixel
        outside misses the mesh (not a fold inside the silhouette)."""
        eye = -T[:3, :3].T @ T[:3, 3]  # the source, object frame
        facing = np.einsum("ij,ij->i", f_normal, f_centre - eye) > 0
        k = np.flatnonzero(facing[adj[:, 0]] != facing[adj[:, 1]])
        va, vb = verts[edges[k, 0]], verts[edges[k, 1]]
        X = (va[:, None] + along * (vb - va)[:, None]).reshape(-1, 3)
        uv = project(T, X)
        ua, ub, uo = project(T, va), project(T, vb), project(T, verts[opposite[k]])
        d = ub - ua
        n = np.stack([-d[:, 1], d[:, 0]], 1) / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
        n *= -np.sign(np.einsum("ij,ij->i", uo - ua, n))[:, None]  # away from the face's own projection
        probe = uv + 0.05 * np.repeat(n, along.shape[1], axis=0)
        inv = np.linalg.inv(T)
        rays = np.linalg.solve(K, np.concatenate([probe, np.ones((len(probe), 1))], 1).T).T
        rays /= np.linalg.norm(rays, axis=1, keepdims=True)
        outer = ~_hits(scene, np.broadcast_to(inv[:3, 3], rays.shape), rays @ inv[:3, :3].T, nthreads)
        inside_img = (uv[:, 0] > 1.5) & (uv[:, 0] < W - 2.5) & (uv[:, 1] > 1.5) & (uv[:, 1] < H - 2.5)
        return X[outer & inside_img]

    def icp(x):
        """The outline fit from parameters ``x``: its parameters and pairs of the last round."""
        pairs = 0
        for _ in range(max_iterations):
            T = pose(x)
            X = contour_points(T)
            dist, j = tree.query(project(T, X), distance_upper_bound=gate_px)
            ok = np.isfinite(dist)
            pairs = int(ok.sum())
            if pairs < min_pairs:
                break
            X, qj, nj = X[ok], q[j[ok]], qn[j[ok]]

            def residuals(y):
                r = np.einsum("ij,ij->i", project(pose(y), X) - qj, nj)
                return np.concatenate([r, (y - x0) / prior_sd])

            y = least_squares(residuals, np.clip(x, lo, hi), bounds=(lo, hi), loss="huber", f_scale=huber_px,
                              x_scale=prior_sd, diff_step=1e-6).x
            moved = np.abs(y - x)
            x = y
            if np.all(moved[:3] < 1e-3) and np.all(moved[3:] < 1e-2):
                break
        return x, pairs

    x, pairs = icp(x0)
    if pairs < min_pairs:
        return SilhouettePoseResult(T0, start, start, x0, n_eval, False,
                                    f"too few of the object's outline points lie near the mask's outline ({pairs})")
    T = pose(x)
    outline = project(T, contour_points(T))
    to_object = cKDTree(outline).query(q)[0] if len(outline) else np.full(len(q), np.inf)
    outline_px = float(np.percentile(to_object, 90))
    return SilhouettePoseResult(T, dice(render(T)), start, x, n_eval, True, outline_px=outline_px)
