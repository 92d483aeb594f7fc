"""Poses from several X-rays whose cameras share one world frame.

Every view ``i`` has a known ``world_to_cam_i`` (a calibrated biplanar system, a
C-arm whose angles are encoded). One object pose then explains every view:
``object_to_cam_i = world_to_cam_i @ object_to_world``. Two views far enough
apart fix what one view cannot: the object's distance to each source, hence its
size (../shared/DATA.md; docs/multiview.md).

* :func:`triangulate_rays`: the point nearest to several rays (weighted least
  squares), e.g. an object's centroid seen by each view;
* :func:`refine_ct_to_world`: one rigid ``ct_to_world`` and one similarity
  ``model_to_ct`` refined together on every view's reprojection residuals and
  the predicted points' distance to the CT surface (the several-view form of
  :func:`xrecon.solve.joint.solve_joint`'s refinement);
* :func:`refine_ct_to_cams`: the same when the views share no frame (films
  taken separately): one ``ct_to_cam`` per view, one ``model_to_ct`` for all.

All poses are ``(4, 4)`` ``a_to_b`` matrices acting on column vectors
(:mod:`xrecon.geometry`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xrecon.errors import ShapeError


def apply(T: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``x: (N, 3)`` mapped by the ``(4, 4)`` transform ``T``."""
    return x @ T[:3, :3].T + T[:3, 3]


def triangulate_rays(origins: np.ndarray, directions: np.ndarray, weights: np.ndarray | None = None,
                     prior_point: np.ndarray | None = None, prior_weight: float = 1e-4) -> np.ndarray:
    """The point ``(3,)`` nearest to the rays ``origins + s directions`` in weighted least squares.

    Args:
        origins: ``(V, 3)`` ray origins (e.g. the X-ray sources, world frame, mm).
        directions: ``(V, 3)`` ray directions (any length > 0).
        weights: ``(V,)`` weight of each ray (default 1).
        prior_point: ``(3,)`` where the answer is pulled, weakly (``prior_weight``
            per unit of total ray weight), so that parallel rays (or one ray) still
            give a point: the one on the rays nearest to ``prior_point``. Without it
            the plain least-squares point (minimum norm when the rays are parallel).
    """
    o = np.asarray(origins, np.float64).reshape(-1, 3)
    d = np.asarray(directions, np.float64).reshape(-1, 3)
    if d.shape != o.shape:
        raise ShapeError("directions", f"{o.shape}", d.shape)
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    w = np.ones(len(o)) if weights is None else np.clip(np.asarray(weights, np.float64).reshape(-1), 0.0, None)
    proj = np.eye(3)[None] - d[:, :, None] * d[:, None, :]  # (V, 3, 3): removes the along-ray part
    A = np.einsum("v,vij->ij", w, proj)
    b = np.einsum("v,vij,vj->i", w, proj, o)
    if prior_point is None:
        return np.linalg.lstsq(A, b, rcond=None)[0]
    lam = prior_weight * max(w.sum(), 1e-12)
    return np.linalg.solve(A + lam * np.eye(3), b + lam * np.asarray(prior_point, np.float64))


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Geodesic angle between two rotations ``(3, 3)`` (Rodrigues norm, degrees)."""
    from scipy.spatial.transform import Rotation

    return float(np.degrees(Rotation.from_matrix(R_a @ R_b.T).magnitude()))


@dataclass
class ViewPoints:
    """One view's correspondences for :func:`refine_ct_to_world`.

    Attributes:
        points_model: ``(M, 3)`` predicted points (model frame, mm).
        uv: ``(M, 2)`` their pixels.
        weights: ``(M,)`` confidences (>= 0).
        K: ``(3, 3)`` intrinsics of ``uv``'s pixels.
        world_to_cam: ``(4, 4)`` the view's pose in the shared world frame.
        sigma_px: reprojection residual unit of this view (px).
    """

    points_model: np.ndarray
    uv: np.ndarray
    weights: np.ndarray
    K: np.ndarray
    world_to_cam: np.ndarray
    sigma_px: float = 1.0


@dataclass
class MultiViewCTFit:
    """Outcome of :func:`refine_ct_to_world`.

    Attributes:
        ct_to_world: ``(4, 4)`` rigid.
        model_to_ct: ``(4, 4)`` similarity (model frame to CT frame).
        scale: size of the model relative to the CT (``1 / scale(model_to_ct)``).
        reprojection_error_px: ``(V,)`` mean reprojection error of each view's points.
        surface_residual_mm: mean distance of the points (in the CT frame) to the CT surface.
        cost_history: robust cost after each round.
        success, reason: as for every solver.
    """

    ct_to_world: np.ndarray
    model_to_ct: np.ndarray
    scale: float
    reprojection_error_px: np.ndarray
    surface_residual_mm: float
    cost_history: list
    success: bool
    reason: str = ""


def _rotvec(w: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(w).as_matrix()


def refine_ct_to_world(ct_to_world0: np.ndarray, model_to_ct0: np.ndarray, views: list[ViewPoints],
                       ct_points: np.ndarray, ct_normals: np.ndarray, *, sigma_mm: float = 2.0, rounds: int = 3,
                       max_nfev: int = 50, max_points_per_view: int = 1500, seed: int = 0) -> MultiViewCTFit:
    """Refine ``ct_to_world`` (rigid) and ``model_to_ct`` (similarity) on every view at once.

    Minimises, with scipy's soft-L1 loss,

        sum_i sum_j w_ij |pi(K_i world_to_cam_i ct_to_world model_to_ct p_ij) - uv_ij|^2 / sigma_px_i^2
          + sum_ij w_ij (n_c . (model_to_ct p_ij - c))^2 / sigma_mm^2

    (``c``, ``n_c`` the CT surface point nearest to ``model_to_ct p_ij`` and its
    normal, found again each round). The CT's known size fixes the scale; the
    views' different directions fix the depth.

    Args:
        ct_to_world0, model_to_ct0: ``(4, 4)`` starting poses.
        views: one :class:`ViewPoints` per view.
        ct_points: ``(P, 3)`` CT bone surface (CT frame, mm); ``ct_normals`` ``(P, 3)`` unit normals.
        sigma_mm: surface residual unit (mm).
        rounds: nearest-surface re-association rounds.
        max_points_per_view: a seeded random subset of each view's points (cost is linear in them).
    """
    fit, poses = _refine_ct(np.asarray(ct_to_world0, np.float64)[None], model_to_ct0, views, ct_points, ct_normals,
                            sigma_mm=sigma_mm, rounds=rounds, max_nfev=max_nfev,
                            max_points_per_view=max_points_per_view, seed=seed)
    fit.ct_to_world = poses[0]
    return fit


def refine_ct_to_cams(ct_to_cam0: list[np.ndarray], model_to_ct0: np.ndarray, views: list[ViewPoints],
                      ct_points: np.ndarray, ct_normals: np.ndarray, *, sigma_mm: float = 2.0, rounds: int = 3,
                      max_nfev: int = 50, max_points_per_view: int = 1500,
                      seed: int = 0) -> tuple[MultiViewCTFit, list[np.ndarray]]:
    """Views whose relative poses are unknown: one rigid ``ct_to_cam_i`` per view and
    one similarity ``model_to_ct`` shared by all, refined together.

    The cost is :func:`refine_ct_to_world`'s with ``world_to_cam_i @ ct_to_world``
    replaced by a free ``ct_to_cam_i`` per view (each ``ViewPoints.world_to_cam``
    is applied after it: pass the identity). What the views share is the CT and
    the mapping of the predicted model points onto it; each view's depth is fixed
    by the CT's known size, as with one view.

    Returns the fit (its ``ct_to_world`` is NaN: there is no shared frame) and the
    ``(4, 4)`` ``ct_to_cam`` of each view.
    """
    if len(ct_to_cam0) != len(views):
        raise ShapeError("ct_to_cam0", f"one (4, 4) per view ({len(views)})", (len(ct_to_cam0),))
    fit, poses = _refine_ct(np.asarray(ct_to_cam0, np.float64).reshape(-1, 4, 4), model_to_ct0, views, ct_points,
                            ct_normals, sigma_mm=sigma_mm, rounds=rounds, max_nfev=max_nfev,
                            max_points_per_view=max_points_per_view, seed=seed)
    fit.ct_to_world = np.full((4, 4), np.nan)
    return fit, poses


def _refine_ct(poses0: np.ndarray, model_to_ct0: np.ndarray, views: list[ViewPoints], ct_points: np.ndarray,
               ct_normals: np.ndarray, *, sigma_mm: float, rounds: int, max_nfev: int, max_points_per_view: int,
               seed: int) -> tuple[MultiViewCTFit, list[np.ndarray]]:
    """The robust refinement behind :func:`refine_ct_to_world` (``poses0: (1, 4, 4)``, one
    pose shared by every view) and :func:`refine_ct_to_cams` (``(V, 4, 4)``, one per view).
    Parameters: 6 per pose (rotation vector, translation: left increments), then 7 of
    ``model_to_ct`` (rotation vector, translation, log scale)."""
    from scipy.optimize import least_squares
    from scipy.spatial import cKDTree

    ct = np.asarray(ct_points, np.float64)
    nrm = np.asarray(ct_normals, np.float64)
    if ct.ndim != 2 or ct.shape[1] != 3 or nrm.shape != ct.shape:
        raise ShapeError("ct_points, ct_normals", "(P, 3), (P, 3)", (ct.shape, nrm.shape))
    n_poses = len(poses0)
    shared = n_poses == 1
    rng = np.random.default_rng(seed)
    sub = []
    for v in views:
        p = np.asarray(v.points_model, np.float64)
        if p.shape != (len(v.uv), 3):
            raise ShapeError("ViewPoints.points_model", f"({len(v.uv)}, 3)", p.shape)
        keep = np.arange(len(p))
        if len(p) > max_points_per_view:
            keep = np.sort(rng.choice(len(p), max_points_per_view, replace=False))
        sub.append((p[keep], np.asarray(v.uv, np.float64)[keep], np.sqrt(np.clip(v.weights, 0, None))[keep],
                    np.asarray(v.K, np.float64), np.asarray(v.world_to_cam, np.float64), float(v.sigma_px)))
    p_all = np.concatenate([s[0] for s in sub])
    sw_all = np.concatenate([s[2] for s in sub])
    tree = cKDTree(ct)
    A0 = [P.copy() for P in np.asarray(poses0, np.float64)]
    B0 = np.asarray(model_to_ct0, np.float64).copy()
    history: list[float] = []
    off = 6 * n_poses

    def unpack(x, A0, B0):
        As = []
        for k in range(n_poses):
            A = np.eye(4)
            A[:3, :3], A[:3, 3] = _rotvec(x[6 * k : 6 * k + 3]), x[6 * k + 3 : 6 * k + 6]
            As.append(A @ A0[k])
        B = np.eye(4)
        B[:3, :3], B[:3, 3] = np.exp(x[off + 6]) * _rotvec(x[off : off + 3]), x[off + 3 : off + 6]
        return As, B @ B0

    def failed(reason: str):
        nan44 = np.full((4, 4), np.nan)
        return (MultiViewCTFit(nan44, nan44, float("nan"), np.full(len(views), np.nan), float("nan"), history, False,
                               reason), [nan44.copy() for _ in range(n_poses)])

    for _ in range(max(1, rounds)):
        _, j = tree.query(apply(B0, p_all))
        c, n_c = ct[j], nrm[j]

        def residuals(x, A0=A0, B0=B0, c=c, n_c=n_c):
            As, B = unpack(x, A0, B0)
            out = []
            for k, (p, uv, sw, K, w2c, spx) in enumerate(sub):
                pc = apply(w2c @ As[0 if shared else k] @ B, p)
                h = pc @ K.T
                out.append(((h[:, :2] / np.maximum(h[:, 2:3], 1e-6) - uv) * (sw / spx)[:, None]).ravel())
            q = apply(B, p_all)
            out.append(((q - c) * n_c).sum(1) * sw_all / sigma_mm)
            return np.concatenate(out)

        try:
            sol = least_squares(residuals, np.zeros(off + 7), loss="soft_l1", f_scale=1.0, max_nfev=max_nfev,
                                x_scale="jac")
        except (ValueError, np.linalg.LinAlgError) as exc:
            return failed(f"least squares failed: {exc}")
        A0, B0 = unpack(sol.x, A0, B0)
        history.append(float(sol.cost))
    if not (all(np.isfinite(A).all() for A in A0) and np.isfinite(B0).all()):
        return failed("the refinement diverged (non-finite pose)")
    errs = []
    for k, (p, uv, sw, K, w2c, _) in enumerate(sub):
        h = apply(w2c @ A0[0 if shared else k] @ B0, p) @ K.T
        errs.append(float(np.linalg.norm(h[:, :2] / np.maximum(h[:, 2:3], 1e-6) - uv, axis=1).mean()))
    scale_ct = float(np.cbrt(np.linalg.det(B0[:3, :3])))
    surf = float(tree.query(apply(B0, p_all))[0].mean())
    return MultiViewCTFit(A0[0], B0, 1.0 / scale_ct, np.asarray(errs), surf, history, True), A0
