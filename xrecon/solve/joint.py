"""CT-to-camera pose from predicted correspondences: PnP + 3D alignment + joint refinement.

Inputs are what a correspondence network predicts for one X-ray: 3D points
``points_model`` in some *model* frame (scene coordinates, a reconstructed
surface), the pixels ``points_2d`` they were predicted at, and a confidence per
point; plus the camera intrinsics and, optionally, the patient's CT bone surface
``ct_points`` in the CT's own frame (any rotation, any origin, LPS or RAS).

Without a CT: ``model_to_cam`` by :func:`~xrecon.solve.pnp.solve_pnp`; the posed
shape is the predicted points in the camera frame.

With a CT (:func:`solve_joint`):

1. ``model_to_cam`` by PnP (its inliers select trustworthy predictions);
2. ``ct_to_model`` by correspondence-free surface alignment of the CT points to
   the inlier predictions (:func:`~xrecon.solve.align3d.align_surfaces`, with
   scale by default, because a single-view reconstruction's size is uncertain);
3. the CT's known size fixes the scale (../shared/DATA.md): every inlier
   prediction is snapped to its nearest CT surface point, and ``ct_to_cam`` is
   solved by PnP from those *CT* points and the predicted pixels (no similarity
   is ever composed into a pose);
4. joint refinement of ``ct_to_cam`` (rigid) and ``model_to_ct`` (similarity)
   by robust least squares (scipy ``least_squares``, soft-L1 loss), residuals
   (a) reprojection of ``ct_to_cam @ model_to_ct @ p_i`` against the predicted
   pixel, in units of ``sigma_px``, and (b) point-to-plane distance of
   ``model_to_ct @ p_i`` to the CT surface, in units of ``sigma_mm``; both
   weighted by the confidences, nearest-surface matches re-found between rounds;
5. steps 3-4 run for up to ``hypotheses`` distinct CT alignments (the 3D
   alignment's refined candidates, plus a caller's guess); the one whose
   surface lies closest to the PnP-inlier predictions wins;
6. checks, so a wrong alignment is reported rather than returned: the winning
   CT surface must support at least ``min_surface_support`` of the predictions
   (a partial view of a spine aligned one level off leaves a quarter or more of
   them off the surface), and no distinct runner-up may score within
   ``ambiguity_ratio`` of it.

All poses are ``(4, 4)`` ``a_to_b`` matrices acting on column vectors
(:mod:`xrecon.geometry`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from xrecon.errors import InputError, ShapeError
from xrecon.solve.align3d import AlignConfig, AlignResult, align_surfaces
from xrecon.solve.pnp import PnPConfig, PnPResult, intrinsics_matrix, reprojection_errors_px, solve_pnp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JointConfig:
    """Settings of :func:`solve_joint`.

    Attributes:
        pnp: PnP settings (both PnP solves).
        align: 3D alignment settings (CT surface to the predictions): scale on
            by default, starting at 1 and kept within 0.8-1.25 (the model frame is
            metric up to the size uncertainty of a single view; the predictions
            cover only the visible part, which would otherwise invite a
            shrunken fit).
        refine: run the joint least-squares refinement.
        sigma_px: reprojection residual unit (expected prediction error, px).
        sigma_mm: 3D residual unit (expected surface error of predictions, mm).
        snap_distance_mm: a prediction farther than this from the aligned CT
            surface is not used for the CT PnP / refinement.
        refine_rounds: nearest-surface re-association rounds.
        max_nfev: function evaluations per round.
        max_refine_points: the joint refinement uses at most this many inlier
            predictions (a seeded random subset; its cost is linear in them).
        hypotheses: at most this many distinct CT alignments (the 3D
            alignment's refined candidates, best overlap first; plus the
            caller's ``ct_to_model_init`` when it differs from all of them) are each taken
            through the CT PnP and the joint refinement, and scored by the
            truncated surface residual of the PnP-inlier predictions
            (:attr:`JointResult.hypothesis_scores`); the lowest wins. A partial
            view of a repetitive anatomy (a spine) can overlap a CT surface well
            one level off; the surface residual of *every* prediction tells the
            two apart where the overlap does not.
        ambiguity_ratio: when a runner-up whose CT-to-camera pose differs from
            the winner's (by more than ``distinct_mm``) scores within this factor
            of it, the answer is ambiguous: ``success=False`` with the reason
            rather than a coin toss.
        distinct_mm: two CT-to-camera poses are distinct when they move the CT
            points by more than this on average (mm).
        min_surface_support: the share of the PnP-inlier predictions that must
            lie on the aligned CT surface (within ``snap_distance_mm``, or three
            times the prediction noise estimated from the PnP reprojection
            errors when that is larger, plus the CT points' sample spacing);
            below it the CT alignment explains
            only part of the predictions (typically a partial view of a spine
            aligned one level off) and the result is ``success=False``. On the
            chest-CT benchmark correct alignments have a support of at least
            0.994 and wrong ones at most 0.865 (docs/registration.md); 0
            switches the check off.
        seed: seeds that subset.
    """

    pnp: PnPConfig = field(default_factory=PnPConfig)
    align: AlignConfig = field(default_factory=lambda: AlignConfig(with_scale=True, init_scale=1.0,
                                                                   scale_bounds=(0.8, 1.25)))
    refine: bool = True
    sigma_px: float = 1.0
    sigma_mm: float = 1.0
    snap_distance_mm: float = 5.0
    refine_rounds: int = 3
    max_nfev: int = 50
    max_refine_points: int = 3000
    hypotheses: int = 3
    ambiguity_ratio: float = 1.1
    distinct_mm: float = 10.0
    min_surface_support: float = 0.95
    seed: int = 0


@dataclass
class JointResult:
    """Outcome of :func:`solve_joint`.

    Attributes:
        ct_to_cam: ``(4, 4)`` rigid CT-to-camera pose (NaN without a CT or on failure).
        model_to_cam: ``(4, 4)`` rigid model-to-camera pose from the first PnP.
        ct_to_model: ``(4, 4)`` similarity CT-to-model (NaN without a CT).
        scale: the similarity's scale (model size / CT size).
        shape_cam: ``(M, 3)`` the posed shape in the camera frame: the CT points
            under ``ct_to_cam`` when a CT is given, else the predicted points
            under ``model_to_cam``.
        inliers: ``(N,)`` predictions used in the final solve.
        reprojection_error_px: mean reprojection error of the inliers (final pose).
        surface_residual_mm: mean distance of the inlier predictions (mapped into
            the CT frame) to the CT surface (NaN without a CT).
        pnp, align, ct_pnp: the stage results, for diagnostics.
        cost_history: robust cost after each refinement round.
        hypothesis_scores: truncated surface residual (mm) of each CT alignment
            hypothesis tried, in the order tried (the winner is the lowest).
        runner_up_ratio: score of the best *distinct* other hypothesis over the
            winner's (inf when there was none): near 1 means two different
            CT poses explain the predictions equally well.
        surface_support: share of the PnP-inlier predictions on the CT surface
            under the winning hypothesis (see ``JointConfig.min_surface_support``).
        support_distance_mm: the distance that counted as "on the surface".
        rejected_ct_to_cam: ``(4, 4)`` the pose a failed support or ambiguity
            check refused (``ct_to_cam`` is then NaN), for diagnostics; None otherwise.
        from_guess: the winning hypothesis is the caller's ``ct_to_model_init``
            itself, not one of the alignment's candidates (``align.success`` may
            then be False: the CT did not align to the predictions alone).
        success, reason, time_s: as for every solver.
    """

    ct_to_cam: np.ndarray
    model_to_cam: np.ndarray
    ct_to_model: np.ndarray
    scale: float
    shape_cam: np.ndarray
    inliers: np.ndarray
    reprojection_error_px: float
    surface_residual_mm: float
    pnp: PnPResult
    align: AlignResult | None = None
    ct_pnp: PnPResult | None = None
    cost_history: list[float] = field(default_factory=list)
    hypothesis_scores: list[float] = field(default_factory=list)
    runner_up_ratio: float = float("inf")
    surface_support: float = float("nan")
    support_distance_mm: float = float("nan")
    rejected_ct_to_cam: np.ndarray | None = None
    from_guess: bool = False
    success: bool = False
    reason: str = ""
    time_s: float = 0.0


def _apply(T: np.ndarray, x: np.ndarray) -> np.ndarray:
    return x @ T[:3, :3].T + T[:3, 3]


def _inv_similarity(T: np.ndarray) -> np.ndarray:
    s = float(np.cbrt(np.linalg.det(T[:3, :3])))
    R = T[:3, :3] / s
    out = np.eye(4)
    out[:3, :3] = R.T / s
    out[:3, 3] = -out[:3, :3] @ T[:3, 3]
    return out


def _rotvec_to_matrix(w: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(w).as_matrix()


def _ct_normals(ct_points: np.ndarray, ct_normals: np.ndarray | None, tree) -> np.ndarray:
    if ct_normals is not None:
        n = np.asarray(ct_normals, np.float64)
        return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    import open3d as o3d

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(ct_points))
    spacing = float(np.median(tree.query(ct_points[: min(len(ct_points), 2000)], k=2)[0][:, 1]))
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=6 * spacing, max_nn=30))
    return np.asarray(pcd.normals)


def _refine(ct_to_cam, model_to_ct, p_model, uv, w, K, ct_points, ct_normals, tree, cfg: JointConfig):
    """Joint robust least squares; returns the refined poses and the cost per round."""
    from scipy.optimize import least_squares

    sw = np.sqrt(w)
    history = []
    A0, B0 = ct_to_cam.copy(), model_to_ct.copy()
    for _ in range(cfg.refine_rounds):
        q = _apply(B0, p_model)
        _, j = tree.query(q)
        c, nrm = ct_points[j], ct_normals[j]

        def unpack(x):
            A = np.eye(4)
            A[:3, :3] = _rotvec_to_matrix(x[:3])
            A[:3, 3] = x[3:6]
            B = np.eye(4)
            B[:3, :3] = np.exp(x[12]) * _rotvec_to_matrix(x[6:9])
            B[:3, 3] = x[9:12]
            return A @ A0, B @ B0

        def residuals(x):
            A, B = unpack(x)
            q = _apply(B, p_model)
            pc = _apply(A, q)
            h = pc @ K.T
            r2 = (h[:, :2] / np.maximum(h[:, 2:3], 1e-6) - uv) * (sw / cfg.sigma_px)[:, None]
            r3 = ((q - c) * nrm).sum(1) * sw / cfg.sigma_mm
            return np.concatenate([r2.ravel(), r3])

        sol = least_squares(residuals, np.zeros(13), loss="soft_l1", f_scale=1.0, max_nfev=cfg.max_nfev,
                            x_scale="jac")
        A0, B0 = unpack(sol.x)
        history.append(float(sol.cost))
    return A0, B0, history


def solve_joint(points_model, points_2d, camera, *, weights=None, log_sigma=None, ct_points=None,
                ct_normals=None, ct_to_model_init=None, config: JointConfig | None = None) -> JointResult:
    """Pose a CT (or the predicted shape) in the camera from predicted correspondences.

    Args:
        points_model: ``(N, 3)`` predicted 3D points (mm) in the model frame.
        points_2d: ``(N, 2)`` their pixels ``(u, v)``.
        camera: :class:`~xrecon.geometry.Camera` or ``(3, 3)`` intrinsics.
        weights: ``(N,)`` confidences (higher = better), optional.
        log_sigma: ``(N,)`` predicted log-variances, optional (see :mod:`~xrecon.solve.pnp`).
        ct_points: ``(M, 3)`` CT bone surface points in the CT frame, optional.
        ct_normals: ``(M, 3)`` their normals (estimated when omitted).
        ct_to_model_init: ``(4, 4)`` a guess of the CT-to-model similarity (e.g.
            the identity when the model frame *is* the CT frame, or the CT aligned
            to a whole reconstructed shape): a start for the alignment and also a
            hypothesis of its own; with it, a failed alignment to the predictions
            is not fatal.
        config: :class:`JointConfig`.

    Returns:
        :class:`JointResult`; ``success=False`` with a reason when a stage fails.
    """
    from scipy.spatial import cKDTree

    t0 = time.perf_counter()
    cfg = config or JointConfig()
    p = np.asarray(points_model, np.float64)
    uv = np.asarray(points_2d, np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ShapeError("points_model", "(N, 3)", p.shape)
    if uv.shape != (len(p), 2):
        raise ShapeError("points_2d", f"({len(p)}, 2)", uv.shape)
    K = intrinsics_matrix(camera)
    nan44 = np.full((4, 4), np.nan)

    pnp = solve_pnp(p, uv, K, config=cfg.pnp, weights=weights, log_sigma=log_sigma)
    res = JointResult(nan44, pnp.world_to_cam, nan44.copy(), float("nan"), np.zeros((0, 3)), pnp.inliers,
                      pnp.reprojection_error_px, float("nan"), pnp)

    def done(reason: str = "") -> JointResult:
        res.success, res.reason, res.time_s = not reason, reason, time.perf_counter() - t0
        if reason:
            log.info("joint solve failed: %s", reason)
        return res

    if not pnp.success:
        return done(f"PnP on the predictions failed: {pnp.reason}")
    if ct_points is None:
        res.shape_cam = _apply(pnp.world_to_cam, p[pnp.inliers])
        return done()

    ct = np.asarray(ct_points, np.float64)
    if ct.ndim != 2 or ct.shape[1] != 3:
        raise ShapeError("ct_points", "(M, 3)", ct.shape)
    if ct_normals is not None and np.shape(ct_normals) != ct.shape:
        raise ShapeError("ct_normals", f"{ct.shape}", np.shape(ct_normals))
    finite = np.isfinite(ct).all(1)
    ct = ct[finite]
    if len(ct) < 10:
        return done(f"the CT model has {len(ct)} finite points (need 10)")
    ct_nrm = None if ct_normals is None else np.asarray(ct_normals, np.float64)[finite]

    guess = None if ct_to_model_init is None else _check_guess(ct_to_model_init)
    w = np.ones(len(p)) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    inl = pnp.inliers
    align = align_surfaces(ct, p[inl], config=cfg.align, init_src_to_dst=guess)
    res.align = align
    align_failure = "" if align.success else f"aligning the CT surface to the predicted points failed: {align.reason}"
    if align_failure and guess is None:
        return done(align_failure)
    tree = cKDTree(ct)
    normals = _ct_normals(ct, ct_nrm, tree) if cfg.refine else None
    # "on the surface": within the snap distance or 3 sigma of the prediction noise,
    # plus the CT sampling's own spacing (a point on the surface lies between samples)
    spacing = float(np.median(tree.query(ct[:: max(1, len(ct) // 2000)], k=2)[0][:, 1]))
    res.support_distance_mm = max(cfg.snap_distance_mm, 3.0 * _prediction_noise_mm(pnp, p, uv, K)) + spacing
    alignments = [U for U, fitness, _ in align.candidates if fitness >= cfg.align.min_fitness]
    alignments = (alignments or ([align.src_to_dst] if align.success else []))[: max(1, cfg.hypotheses)]
    guess_index = -1
    bounds = cfg.align.scale_bounds
    guess_scale = None if guess is None else float(np.cbrt(np.linalg.det(guess[:3, :3])))
    if guess is not None and (bounds is None or bounds[0] <= guess_scale <= bounds[1]):
        # the caller's guess is a hypothesis of its own, not only a start for the
        # alignment: aligning the whole CT to the *visible* predictions with a free
        # scale can drift (or fail) where a guess from more of the surface is right
        centre = ct.mean(0)
        if not any(_same_similarity(guess, U, centre) for U in alignments):
            guess_index = len(alignments)
            alignments.append(guess)
    hyps, failures = [], []
    for k, ct_to_model in enumerate(alignments):
        h = _pose_hypothesis(ct_to_model, p, uv, w, inl, K, ct, normals, tree, cfg, res.support_distance_mm)
        if not isinstance(h, str):
            h.from_guess = k == guess_index
        (failures if isinstance(h, str) else hyps).append(h)
    if not hyps:
        reason = failures[0] if failures else (f"the CT-to-model guess has a scale of {guess_scale:.2f}, "
                                               f"outside {bounds}")
        return done(f"{align_failure}; {reason}" if align_failure else reason)
    res.hypothesis_scores = [h.score for h in hyps]
    hyps.sort(key=lambda h: h.score)
    best = hyps[0]
    res.from_guess = best.from_guess
    res.ct_pnp, res.cost_history = best.ct_pnp, best.cost_history
    res.ct_to_model = _inv_similarity(best.model_to_ct)
    res.scale = float(np.cbrt(np.linalg.det(res.ct_to_model[:3, :3])))
    q = _apply(best.model_to_ct, p[best.use])
    res.ct_to_cam = best.ct_to_cam
    res.inliers = best.use
    res.shape_cam = _apply(best.ct_to_cam, ct)
    res.reprojection_error_px = float(reprojection_errors_px(best.ct_to_cam @ best.model_to_ct, p[best.use],
                                                             uv[best.use], K).mean())
    res.surface_residual_mm = float(tree.query(q)[0].mean())
    res.surface_support = best.support

    def refuse(reason: str) -> JointResult:
        res.rejected_ct_to_cam, res.ct_to_cam = res.ct_to_cam, np.full((4, 4), np.nan)
        res.shape_cam = np.zeros((0, 3))
        return done(reason)

    if best.support < cfg.min_surface_support:
        return refuse(f"the aligned CT surface explains only {100 * best.support:.0f} % of the predictions PnP "
                      f"accepted (within {res.support_distance_mm:.1f} mm; need {100 * cfg.min_surface_support:.0f} "
                      "%): the CT is most likely aligned to the wrong part (a partial view?)")
    probe = ct[:: max(1, len(ct) // 2000)]
    others = [h for h in hyps[1:]
              if np.linalg.norm(_apply(h.ct_to_cam, probe) - _apply(best.ct_to_cam, probe), axis=1).mean()
              > cfg.distinct_mm]
    if others:
        res.runner_up_ratio = others[0].score / max(best.score, 1e-12)
        if res.runner_up_ratio < cfg.ambiguity_ratio:
            return refuse(f"ambiguous CT alignment: {len(hyps)} hypotheses, a distinct CT pose explains the "
                          f"predictions almost as well (truncated surface residual {others[0].score:.2f} vs "
                          f"{best.score:.2f} mm, ratio {res.runner_up_ratio:.2f} < {cfg.ambiguity_ratio})")
    return done()


@dataclass
class _Hypothesis:
    """One CT alignment taken through the CT PnP and the joint refinement."""

    ct_to_cam: np.ndarray
    model_to_ct: np.ndarray
    use: np.ndarray
    ct_pnp: PnPResult
    cost_history: list
    score: float
    support: float
    from_guess: bool = False


def _check_guess(T) -> np.ndarray:
    """``ct_to_model_init`` as a finite ``(4, 4)`` similarity with a positive determinant."""
    T = np.asarray(T, np.float64)
    if T.shape != (4, 4):
        raise ShapeError("ct_to_model_init", "(4, 4)", T.shape)
    if not np.isfinite(T).all() or not np.linalg.det(T[:3, :3]) > 0:
        raise InputError("ct_to_model_init must be a finite similarity transform with a positive determinant "
                         "(a rotation times a scale, no reflection)")
    return T


def _same_similarity(T: np.ndarray, U: np.ndarray, centre: np.ndarray, deg: float = 2.0, mm: float = 2.0,
                     rel_scale: float = 0.01) -> bool:
    """Whether two similarities agree: rotations within ``deg``, scales within
    ``rel_scale``, and ``centre`` mapped within ``mm``."""
    from scipy.spatial.transform import Rotation

    st, su = float(np.cbrt(np.linalg.det(T[:3, :3]))), float(np.cbrt(np.linalg.det(U[:3, :3])))
    angle = np.degrees(Rotation.from_matrix((T[:3, :3] / st) @ (U[:3, :3] / su).T).magnitude())
    return bool(angle <= deg and abs(st / su - 1.0) <= rel_scale
                and np.linalg.norm(_apply(T, centre) - _apply(U, centre)) <= mm)


def _prediction_noise_mm(pnp: PnPResult, p: np.ndarray, uv: np.ndarray, K: np.ndarray) -> float:
    """Per-axis noise (mm) of the predictions across the rays, from the first
    PnP: the median inlier reprojection error (px) over the Rayleigh median
    (1.1774 sigma), times the millimetres one pixel spans at the median depth."""
    inl = pnp.inliers
    err = reprojection_errors_px(pnp.world_to_cam, p[inl], uv[inl], K)
    z = _apply(pnp.world_to_cam, p[inl])[:, 2]
    return float(np.median(err) / 1.1774 * np.median(z) / K[0, 0])


def _pose_hypothesis(ct_to_model, p, uv, w, inl, K, ct, normals, tree, cfg: JointConfig,
                     support_distance_mm: float) -> "_Hypothesis | str":
    """Steps 3-4 of :func:`solve_joint` from one CT alignment ``ct_to_model (4, 4)``:
    the CT PnP on the snapped predictions, then the joint refinement. Returns the
    hypothesis, scored by the mean over every PnP-inlier prediction of its
    distance to the CT surface truncated at ``snap_distance_mm`` (a fixed set,
    so hypotheses that snap different points compare fairly), or the reason it
    failed. Its ``support`` is the share of those predictions within
    ``support_distance_mm`` of the CT surface."""
    model_to_ct = _inv_similarity(ct_to_model)
    scale = float(np.cbrt(np.linalg.det(ct_to_model[:3, :3])))
    # the CT fixes the scale: PnP again from the CT's own points
    dist, j = tree.query(_apply(model_to_ct, p))
    use = inl & (dist <= cfg.snap_distance_mm * max(1.0, 1.0 / scale))
    ct_pnp = solve_pnp(ct[j], uv, K, config=cfg.pnp, weights=np.where(use, np.maximum(w, 1e-12), 0.0))
    if not ct_pnp.success:
        return f"PnP from the matched CT points failed: {ct_pnp.reason}"
    ct_to_cam = ct_pnp.world_to_cam
    use = use & ct_pnp.inliers
    history: list[float] = []
    if cfg.refine and use.sum() >= 6:
        sel = np.flatnonzero(use)
        if sel.size > cfg.max_refine_points:
            # a fixed random key per prediction, the lowest keys chosen: a prediction
            # entering or leaving ``use`` changes at most one point of the subset (a
            # fresh draw from ``sel`` would change them all)
            keys = np.random.default_rng(cfg.seed).random(len(p))
            sel = np.sort(sel[np.argsort(keys[sel], kind="stable")[: cfg.max_refine_points]])
        ct_to_cam, model_to_ct, history = _refine(
            ct_to_cam, model_to_ct, p[sel], uv[sel], np.clip(w[sel], 1e-12, None), K, ct, normals, tree, cfg)
    if not (np.isfinite(ct_to_cam).all() and np.isfinite(model_to_ct).all()):
        return "joint refinement diverged (non-finite pose)"
    d = tree.query(_apply(model_to_ct, p[inl]))[0]
    score = float(np.minimum(d, cfg.snap_distance_mm).mean())
    support = float((d <= support_distance_mm).mean())
    return _Hypothesis(ct_to_cam, model_to_ct, use, ct_pnp, history, score, support)
