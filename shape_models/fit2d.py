"""Fit a shape model to bone contours in one or more X-ray views (single view, biplanar).

Inputs per view: the bone's image contour (a binary mask, or a list of contour
points in pixels) and a known camera (:class:`xrecon.geometry.Camera`: OpenCV
pinhole, ``world_to_cam``, pixels ``(u, v) = (column, row)``; see
``/work/shared/CONVENTIONS.md``). Unknowns: the shape coefficients ``b`` (SD) and
optionally the bone pose ``model_to_world`` (rigid, started from a given guess).

Model outline (per view and iteration):

1. pose the mesh, classify faces as front / back facing as seen from the X-ray
   source; the *contour generator* is every edge between a front and a back
   face; its midpoints are the candidate outline points (3D, linear in ``b``);
2. keep the candidates on the outline of the projected silhouette: a ray
   through the pixel ``outline_offset_px`` outside the projected edge (away from
   its faces) must miss the mesh (open3d ray casting). Internal folds are thus
   dropped; holes that X-rays pass through (e.g. the obturator foramen) are kept,
   matching the mask's own inner contours.

Objective (symmetric 2D chamfer, point-to-line, plus the prior)::

    E = sum_views [ sum_outline r_j^2 + sum_contour r_i^2 ] / contour_sigma_px^2 + prior_weight |b|^2

``r`` is the distance along the image-contour normal between a projected
outline point and its nearest contour point (outline -> contour), and between
a contour point and its nearest projected outline point (contour -> outline),
plus a ``point_to_point`` share of the full 2D distance; steps are accepted
when they lower the sum of squared 2D distances truncated at
``max(10 contour_sigma_px, 2 x the start's RMS)`` (Levenberg-Marquardt); residuals beyond
``max(3 x 1.4826 MAD, 3 contour_sigma_px)`` are ignored. Gauss-Newton steps on
``b`` (and the pose: rotation about the model centroid, translation) with a
trust region, correspondences recomputed every iteration.

Size and distance trade off in one perspective view (magnification = SDD /
source-to-object distance): with an unknown pose in a single view the size
mode and the depth are weakly determined; two views fix both.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from xrecon.errors import InputError, check_shape
from shape_models.model import ShapeModel
from shape_models.procrustes import apply_transform, exp_so3, skew
from shape_models.surface import raycasting_scene

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fit2DConfig:
    """Settings of :func:`fit_contours`.

    Attributes:
        n_components: modes to fit (``None``: all).
        estimate_pose: also refine ``model_to_world`` (rigid) from the start pose.
        prior_weight: weight of ``|b|^2`` (see module docstring).
        contour_sigma_px: expected contour localisation error, pixels.
        point_to_point: share of the full 2D distance next to the point-to-line term.
        max_iters: Gauss-Newton iterations.
        pose_warmup_iters: with ``estimate_pose``, the first iterations move only the
            pose and mode 1 (size), so the shape modes do not absorb a pose error.
        shape_warmup_iters: the same with a known pose (mode 1 first, then all modes).
        max_step_sd / max_step_deg / max_step_mm: trust region of one step.
        max_sd: coefficients are clipped to ``[-max_sd, max_sd]``.
        outline_offset_px: offset of the outline test ray outside the projected edge.
        max_contour_points: per view, image contour points used (evenly subsampled above).
    """

    n_components: int | None = None
    estimate_pose: bool = False
    prior_weight: float = 1.0
    contour_sigma_px: float = 1.0
    point_to_point: float = 0.1
    max_iters: int = 60
    pose_warmup_iters: int = 15
    shape_warmup_iters: int = 5
    max_step_sd: float = 0.5
    max_step_deg: float = 4.0
    max_step_mm: float = 10.0
    max_sd: float = 4.0
    outline_offset_px: float = 1.5
    max_contour_points: int = 3000


@dataclass
class Fit2DResult:
    """Result of :func:`fit_contours`.

    Attributes:
        vertices: ``(V, 3)`` fitted mesh in the world frame, mm.
        faces: ``(F, 3)``.
        coefficients: ``(K,)`` SD.
        model_to_world: ``(4, 4)`` rigid pose of the model (the start pose unless
            ``estimate_pose``).
        rms_px: per view, RMS of the contour -> outline distances (pixels) at the end.
        n_iter: iterations run.
        success / reason: ``False`` with a reason for degenerate input or no outline.
        history: total RMS (pixels) per iteration.
    """

    vertices: np.ndarray
    faces: np.ndarray
    coefficients: np.ndarray
    model_to_world: np.ndarray
    rms_px: list
    n_iter: int
    success: bool
    reason: str = ""
    history: list = field(default_factory=list)


# ---------------------------------------------------------------------------- image contours
def contour_from_mask(mask: np.ndarray) -> np.ndarray:
    """Sub-pixel boundary points ``(M, 2)`` as ``(u, v)`` pixels of a binary ``mask: (H, W)``
    (outer boundaries and holes; marching squares at level 0.5)."""
    from skimage import measure

    m = np.asarray(mask)
    if m.ndim != 2:
        raise InputError(f"a mask must be a 2D image, got shape {m.shape}")
    m = (m > 0).astype(np.float64)
    if m.sum() == 0:
        raise InputError("the mask is empty: no bone contour to fit")
    padded = np.pad(m, 1)
    pieces = measure.find_contours(padded, 0.5)
    pts = np.concatenate(pieces, axis=0) - 1.0  # (row, col) in the unpadded image
    return pts[:, ::-1].copy()


def contour_normals(points: np.ndarray, k: int = 7) -> np.ndarray:
    """Unit normals ``(M, 2)`` of contour points ``(M, 2)`` from local PCA of ``k`` neighbours
    (works for unordered point lists; the sign is arbitrary, residuals use it squared)."""
    from scipy.spatial import cKDTree

    k = min(k, len(points))
    _, idx = cKDTree(points).query(points, k=k)
    nb = points[idx] - points[idx].mean(axis=1, keepdims=True)
    cov = np.einsum("mki,mkj->mij", nb, nb)
    _, vecs = np.linalg.eigh(cov)
    return vecs[:, :, 0]


# ---------------------------------------------------------------------------- mesh outline
def mesh_edges(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique edges ``(E, 2)`` of a triangle mesh and their two faces ``(E, 2)`` (-1: boundary)."""
    f = np.asarray(faces, dtype=np.int64)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    fid = np.tile(np.arange(len(f)), 3)
    key = np.sort(e, axis=1)
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    adj = np.full((len(uniq), 2), -1, np.int64)
    order = np.argsort(inv, kind="stable")
    inv_sorted = inv[order]
    first = np.r_[True, inv_sorted[1:] != inv_sorted[:-1]]
    adj[inv_sorted[first], 0] = fid[order][first]
    second = ~first
    adj[inv_sorted[second], 1] = fid[order][second]
    return uniq, adj


def outline_points(vertices_world: np.ndarray, faces: np.ndarray, edges: np.ndarray, edge_faces: np.ndarray,
                   camera, view: int = 0, offset_px: float = 1.5, scene=None) -> tuple[np.ndarray, np.ndarray]:
    """Contour-generator edges of a posed mesh that lie on its projected silhouette outline.

    Args:
        vertices_world: ``(V, 3)`` posed vertices, mm.
        faces, edges, edge_faces: the mesh and :func:`mesh_edges` of it.
        camera: :class:`xrecon.geometry.Camera`; ``view`` selects the view.

    Returns:
        ``edge ids (n,)`` of the outline edges and the projected midpoints ``uv (n, 2)``.
    """
    import open3d as o3d

    X = vertices_world
    src = camera.source_world[view].numpy()
    tri = X[faces]
    nrm = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    front = np.einsum("fd,fd->f", nrm, tri.mean(axis=1) - src) < 0
    f0, f1 = edge_faces[:, 0], edge_faces[:, 1]
    sil = np.nonzero((f1 < 0) | (front[f0] != front[np.maximum(f1, 0)]))[0]
    if len(sil) == 0:
        return sil, np.zeros((0, 2))
    a, b = X[edges[sil, 0]], X[edges[sil, 1]]
    uv_all, _ = camera[view].project(np.concatenate([a, b, tri[f0[sil]].mean(axis=1)]))
    uv_all = uv_all[0].numpy()
    n = len(sil)
    ua, ub, uc = uv_all[:n], uv_all[n:2 * n], uv_all[2 * n:]
    mid = 0.5 * (ua + ub)
    d = ub - ua
    perp = np.stack([-d[:, 1], d[:, 0]], axis=1)
    perp /= np.maximum(np.linalg.norm(perp, axis=1, keepdims=True), 1e-12)
    side = np.sign(np.einsum("nd,nd->n", uc - mid, perp))
    side[side == 0] = 1.0
    probe = mid - side[:, None] * perp * offset_px
    origin, direction = camera[view].rays_world(probe)
    rays = np.concatenate([origin[0].numpy(), direction[0].numpy()], axis=1).astype(np.float32)
    scene = scene if scene is not None else raycasting_scene(X, faces)
    hit = scene.test_occlusions(o3d.core.Tensor(rays)).numpy()
    keep = ~hit
    return sil[keep], mid[keep]


# ---------------------------------------------------------------------------- fitting
def _gate(dist, sigma):
    mad = 1.4826 * np.median(np.abs(dist)) if len(dist) else 0.0
    return dist <= max(3 * mad, 3 * sigma)


def fit_contours(model: ShapeModel, observations, camera, init_model_to_world: np.ndarray | None = None,
                 config: Fit2DConfig = Fit2DConfig()) -> Fit2DResult:
    """Fit ``model`` to bone contours in ``len(camera)`` views.

    Args:
        model: a :class:`ShapeModel` with faces.
        observations: one item per view: a binary mask ``(H, W)`` or contour
            points ``(M, 2)`` as ``(u, v)`` pixels.
        camera: :class:`xrecon.geometry.Camera` with one view per observation.
        init_model_to_world: ``(4, 4)`` rigid pose of the model frame in the
            world (the known pose, or the start when ``config.estimate_pose``);
            default identity.
        config: :class:`Fit2DConfig`.

    Returns:
        :class:`Fit2DResult`.
    """
    from scipy.spatial import cKDTree

    model._check_fitted()
    if model.faces_ is None:
        raise InputError("fit_contours needs a model with faces")
    if len(observations) != len(camera):
        raise InputError(f"{len(observations)} observations but the camera has {len(camera)} views")
    contours, normals = [], []
    for i, obs in enumerate(observations):
        arr = np.asarray(obs)
        if arr.ndim == 2 and arr.shape[1] == 2 and arr.shape[0] != camera.height:
            pts = arr.astype(np.float64)
        elif arr.ndim == 2 and arr.shape == (camera.height, camera.width):
            pts = contour_from_mask(arr)
        else:
            raise InputError(f"view {i}: expected a mask ({camera.height}, {camera.width}) or contour points (M, 2), "
                             f"got shape {arr.shape}")
        if not np.isfinite(pts).all():
            raise InputError(f"view {i}: contour points hold NaN or inf")
        if len(pts) > config.max_contour_points:
            pts = pts[np.linspace(0, len(pts) - 1, config.max_contour_points).astype(int)]
        contours.append(pts)
        normals.append(contour_normals(pts))
    T = np.eye(4) if init_model_to_world is None else np.asarray(init_model_to_world, dtype=np.float64).copy()
    check_shape("init_model_to_world", T, (4, 4))
    K = model.n_components_ if config.n_components is None else min(config.n_components, model.n_components_)
    comps = (model.components_[:K] * model.std_[:K, None]).reshape(K, -1, 3)
    faces = model.faces_
    edges, edge_faces = mesh_edges(faces)
    trees = [cKDTree(c) for c in contours]
    if min(len(c) for c in contours) < 10:
        return Fit2DResult(apply_transform(T, model.mean_), faces, np.zeros(model.n_components_), T, [], 0, False,
                           "fewer than 10 contour points in a view")
    n_pose = 6 if config.estimate_pose else 0
    P = n_pose + K
    tau2 = np.inf  # truncation of the cost used to accept steps; set from the start's residuals below

    def linearise(R, t, b):
        """Cost, normal equations and per-view RMS at the state (R, t, b)."""
        X = (model.mean_ + np.tensordot(b, comps, axes=1)) @ R.T + t
        c = X.mean(axis=0)
        H = np.zeros((P, P))
        g = np.zeros(P)
        cost = 0.0
        rms = []
        scene = raycasting_scene(X, faces)
        for v in range(len(camera)):
            eid, uv = outline_points(X, faces, edges, edge_faces, camera, v, config.outline_offset_px, scene)
            if len(eid) < 10:
                return None, f"view {v}: the model's outline is not in the image (fewer than 10 outline points)"
            ea, eb = edges[eid, 0], edges[eid, 1]
            Xm = 0.5 * (X[ea] + X[eb])  # (n, 3) outline points, world
            Rwc = camera.world_to_cam[v, :3, :3].numpy()
            twc = camera.world_to_cam[v, :3, 3].numpy()
            Kmat = camera.K[v].numpy()
            Pc = Xm @ Rwc.T + twc
            z = Pc[:, 2]
            Jp = np.zeros((len(Pc), 2, 3))  # d uv / d X_cam
            Jp[:, 0, 0] = Kmat[0, 0] / z
            Jp[:, 0, 1] = Kmat[0, 1] / z
            Jp[:, 0, 2] = -(Kmat[0, 0] * Pc[:, 0] + Kmat[0, 1] * Pc[:, 1]) / z**2
            Jp[:, 1, 1] = Kmat[1, 1] / z
            Jp[:, 1, 2] = -Kmat[1, 1] * Pc[:, 1] / z**2
            blocks = []
            if n_pose:
                blocks += [-skew(Xm - c), np.broadcast_to(np.eye(3), (len(Xm), 3, 3))]
            blocks.append(np.einsum("de,jne->ndj", R, 0.5 * (comps[:, ea] + comps[:, eb])))
            Juv = (Jp @ Rwc) @ np.concatenate(blocks, axis=2)  # (n, 2, P)
            d1, j1 = trees[v].query(uv)  # outline -> contour
            d2, j2 = cKDTree(uv).query(contours[v])  # contour -> outline
            rms.append(float(np.sqrt((d2**2).mean())))
            cost += float(np.minimum(d1**2, tau2).sum() + np.minimum(d2**2, tau2).sum()) / sigma2
            for idx_o, idx_c, dist in ((np.arange(len(uv)), j1, d1), (j2, np.arange(len(contours[v])), d2)):
                keep = _gate(dist, config.contour_sigma_px)
                io, ic = idx_o[keep], idx_c[keep]
                e = contours[v][ic] - uv[io]  # wanted displacement of the outline point
                nrm = normals[v][ic]
                M = np.einsum("mi,mj->mij", nrm, nrm) + alpha * np.eye(2)
                JtM = np.einsum("mdp,mde->mpe", Juv[io], M)
                H += np.einsum("mpe,meq->pq", JtM, Juv[io]) / sigma2
                g += np.einsum("mpe,me->p", JtM, e) / sigma2
        H[P - K:, P - K:] += config.prior_weight * np.eye(K)
        g[P - K:] -= config.prior_weight * b
        cost += config.prior_weight * float(b @ b)
        return (cost, H, g, rms, c), ""

    def step(R, t, b, H, g, c, lam, warm):
        H = H.copy()
        g = g.copy()
        if warm:
            # warm-up: pose and the first mode (size) only; the other modes stay fixed
            frozen = np.arange(P - K + 1, P)
            H[frozen, :] = 0.0
            H[:, frozen] = 0.0
            H[frozen, frozen] = 1.0
            g[frozen] = 0.0
        H += lam * np.diag(np.diag(H)) + 1e-9 * np.trace(H) / P * np.eye(P)
        delta = np.linalg.solve(H, g)
        # trust region, per block (coefficients, rotation, translation)
        delta[P - K:] *= min(1.0, config.max_step_sd / max(np.abs(delta[P - K:]).max(), 1e-12))
        if n_pose:
            delta[:3] *= min(1.0, np.radians(config.max_step_deg) / max(np.linalg.norm(delta[:3]), 1e-12))
            delta[3:6] *= min(1.0, config.max_step_mm / max(np.linalg.norm(delta[3:6]), 1e-12))
            dR = exp_so3(delta[:3])
            # X' = dR (X - c) + c + dt  =>  R' = dR R, t' = dR (t - c) + c + dt
            R, t = dR @ R, dR @ (t - c) + c + delta[3:6]
        return R, t, np.clip(b + delta[P - K:], -config.max_sd, config.max_sd)

    b = np.zeros(K)
    R, t = T[:3, :3].copy(), T[:3, 3].copy()
    sigma2 = config.contour_sigma_px**2
    alpha = config.point_to_point
    lin, reason = linearise(R, t, b)
    if lin is not None:
        tau2 = max(10.0 * config.contour_sigma_px, 2.0 * max(lin[3])) ** 2
        lin, reason = linearise(R, t, b)
    history: list[float] = []
    rms_views: list[float] = [] if lin is None else lin[3]
    lam = 1e-4
    n_iter = 0
    for n_iter in range(1, config.max_iters + 1):
        if lin is None:
            break
        cost, H, g, rms_views, c = lin
        history.append(float(np.sqrt(np.mean(np.square(rms_views)))))
        warm = n_iter <= (config.pose_warmup_iters if n_pose else config.shape_warmup_iters) and K > 1
        R_new, t_new, b_new = step(R, t, b, H, g, c, lam, warm)
        lin_new, why = linearise(R_new, t_new, b_new)
        if lin_new is None or lin_new[0] > cost:
            lam *= 10.0  # reject: damp more and retry from the same state
            if lam > 1e4:
                break
            continue
        R, t, b, lin = R_new, t_new, b_new, lin_new
        lam = max(lam / 3.0, 1e-6)
        if not warm and (cost - lin_new[0]) < 1e-5 * cost:
            break
    if lin is not None:
        rms_views = lin[3]

    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    coeffs = np.zeros(model.n_components_)
    coeffs[:K] = b
    verts = (model.mean_ + np.tensordot(b, comps, axes=1)) @ R.T + t
    success = not reason
    if success and rms_views and max(rms_views) > 5 * config.contour_sigma_px + 2:
        success, reason = False, f"contour RMS {max(rms_views):.1f} px after fitting: not converged"
    return Fit2DResult(verts, faces, coeffs, T, rms_views, n_iter, success, reason, history)
