"""Camera pose from 2D-3D correspondences: PnP inside RANSAC.

The one module that wraps the PnP engines (OpenCV and poselib); everything
else in xrecon calls :func:`solve_pnp`. Conventions: :mod:`xrecon.geometry`
(OpenCV pinhole, ``x_cam = R x_world + t``, pixel centres at integers, which is
exactly what both engines expect, pinned by tests/solve/test_pnp.py).

Pipeline of :func:`solve_pnp`:

1. drop correspondences holding NaN / inf;
2. uncertainty filter (seed 002): keep points whose predicted log-variance is
   at most ``log_sigma_threshold`` (0.0 for simulated, -2.0 for real images);
3. bound the work: keep the ``max_points`` most confident correspondences
   (highest ``weights``, else lowest ``log_sigma``, else a seeded random subset),
   so dense scene-coordinate maps stay fast;
4. refuse degenerate sets (fewer than 4 points, collinear 3D or 2D points);
5. RANSAC: poselib's LO-RANSAC (P3P minimal solver, local optimisation) or
   OpenCV's ``solvePnPRansac`` (seed 002: ``SOLVEPNP_ITERATIVE``, 1000
   iterations, 10 px simulated / 20 px real);
5b. poselib only: a robust Gauss-Newton polish of the RANSAC pose on up to
   ``final_refine_points`` of *all* kept correspondences (so the bound costs
   speed, not accuracy);
6. accept the pose only if enough inliers support it and they lie in front of
   the source; otherwise ``success=False`` with the reason and a NaN pose.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np

from xrecon.errors import InputError, ShapeError

log = logging.getLogger(__name__)

_OPENCV_FLAGS = {"iterative": "SOLVEPNP_ITERATIVE", "epnp": "SOLVEPNP_EPNP", "sqpnp": "SOLVEPNP_SQPNP",
                 "p3p": "SOLVEPNP_P3P", "ap3p": "SOLVEPNP_AP3P"}


@dataclass(frozen=True)
class PnPConfig:
    """Settings of :func:`solve_pnp`.

    Attributes:
        method: ``"poselib"`` (LO-RANSAC, the project default) or ``"opencv"``.
        reproj_threshold_px: RANSAC inlier threshold (pixels of the image the
            2D points refer to).
        max_iterations: RANSAC iteration cap.
        min_iterations: poselib only: iterations run before adaptive stopping.
        success_prob: RANSAC confidence used for adaptive stopping.
        opencv_flag: OpenCV's final solver on the inliers: ``"iterative"``
            (seed 002), ``"epnp"``, ``"sqpnp"``, ``"p3p"``, ``"ap3p"``.
        log_sigma_threshold: keep correspondences with ``log_sigma <=`` this
            (only when ``log_sigma`` is passed); ``None`` keeps all.
        max_points: at most this many correspondences reach RANSAC, chosen by
            confidence; ``None`` uses all.
        min_inliers: fewest inliers accepted as a pose.
        min_inlier_ratio: fewest inliers accepted, as a share of the points used.
        final_refine_points: poselib only: after RANSAC on the bounded set, the
            pose is polished (robust Gauss-Newton, :func:`_polish`) on up to this
            many inliers drawn from *all* correspondences that passed the
            filters, so the bound costs speed, not accuracy; 0 switches it off
            (poselib's own bundle adjustment on the RANSAC set runs instead).
        final_refine_iterations: Gauss-Newton steps of that polish on all of
            its points (after one step on a 3,000-point subset when there are more).
        seed: seeds RANSAC sampling and the random subset (reproducible runs).
    """

    method: str = "poselib"
    reproj_threshold_px: float = 10.0
    max_iterations: int = 1000
    min_iterations: int = 5
    success_prob: float = 0.9999
    opencv_flag: str = "iterative"
    log_sigma_threshold: float | None = None
    max_points: int | None = 300
    min_inliers: int = 6
    min_inlier_ratio: float = 0.1
    final_refine_points: int = 200000
    final_refine_iterations: int = 2
    seed: int = 0

    def __post_init__(self):
        if self.method not in ("poselib", "opencv"):
            raise InputError(f"PnP method must be 'poselib' or 'opencv', got {self.method!r}")
        if self.opencv_flag not in _OPENCV_FLAGS:
            raise InputError(f"opencv_flag must be one of {sorted(_OPENCV_FLAGS)}, got {self.opencv_flag!r}")
        if not self.reproj_threshold_px > 0 or self.max_iterations < 1:
            raise InputError("reproj_threshold_px must be > 0 and max_iterations >= 1")
        if self.max_points is not None and self.max_points < 4:
            raise InputError(f"max_points must be at least 4 (or None), got {self.max_points}")

    @classmethod
    def seed002(cls, real: bool = False, **overrides) -> "PnPConfig":
        """The settings of seed 002: OpenCV ``SOLVEPNP_ITERATIVE`` in RANSAC, 1000
        iterations, 10 px and log-variance threshold 0.0 on simulated images,
        20 px and -2.0 on real ones, every correspondence used."""
        base = cls(method="opencv", opencv_flag="iterative", max_iterations=1000,
                   reproj_threshold_px=20.0 if real else 10.0, log_sigma_threshold=-2.0 if real else 0.0,
                   max_points=None, final_refine_points=0)
        return dataclasses.replace(base, **overrides)


@dataclass
class PnPResult:
    """Outcome of :func:`solve_pnp`.

    Attributes:
        world_to_cam: ``(4, 4)`` pose of the frame the 3D points are in (NaN when
            ``success`` is False).
        inliers: ``(N,)`` bool over the *input* correspondences: within the
            threshold of the final pose, among those the final pose was fitted
            to (the polish set for poselib, the RANSAC set for OpenCV); False for
            the ones filtered out or not drawn.
        reprojection_error_px: mean reprojection error of the inliers (NaN on failure).
        n_inliers: number of inliers.
        n_used: correspondences the final pose was fitted to (after filtering,
            the bound and, for poselib, the polish draw).
        success: whether the pose is trustworthy.
        reason: why not (empty on success).
        time_s: wall time of the solve.
    """

    world_to_cam: np.ndarray
    inliers: np.ndarray
    reprojection_error_px: float
    n_inliers: int
    n_used: int
    success: bool
    reason: str = ""
    time_s: float = 0.0


def intrinsics_matrix(camera) -> np.ndarray:
    """``(3, 3)`` intrinsics from a :class:`~xrecon.geometry.Camera` (its first
    view) or from a ``(3, 3)`` / ``(1, 3, 3)`` array."""
    K = getattr(camera, "K", camera)
    if hasattr(K, "detach"):
        K = K.detach().cpu().numpy()
    K = np.asarray(K, dtype=np.float64)
    if K.ndim == 3 and K.shape[0] >= 1:
        K = K[0]
    if K.shape != (3, 3):
        raise ShapeError("K", "(3, 3)", K.shape)
    if not np.isfinite(K).all() or abs(np.linalg.det(K)) < 1e-12:
        raise InputError("intrinsics K must be finite and invertible")
    return K


def reprojection_errors_px(world_to_cam: np.ndarray, points_3d: np.ndarray, points_2d: np.ndarray,
                           K: np.ndarray) -> np.ndarray:
    """Pixel distance ``(N,)`` between ``points_2d: (N, 2)`` and the projection of
    ``points_3d: (N, 3)`` by ``world_to_cam: (4, 4)``; ``inf`` behind the source."""
    T = np.asarray(world_to_cam, np.float64)
    pc = np.asarray(points_3d, np.float64) @ T[:3, :3].T + T[:3, 3]
    h = pc @ np.asarray(K, np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = h[:, :2] / h[:, 2:3]
        err = np.linalg.norm(uv - np.asarray(points_2d, np.float64), axis=1)
    return np.where(pc[:, 2] > 0, err, np.inf)


def _finite_rows(x: np.ndarray) -> np.ndarray:
    """``(N,)`` True where every entry of row ``x[i]`` is finite (a sum of the
    columns is NaN/inf iff one entry is; ten times faster than ``.all(1)``)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.isfinite(x.sum(axis=1) if x.shape[1] > 3 else sum(x[:, j] for j in range(x.shape[1])))


def _rank_of_spread(points: np.ndarray) -> int:
    """Number of independent directions the points span (0 = one point, 1 = a line)."""
    centred = points - points.mean(axis=0)
    s = np.linalg.svd(centred, compute_uv=False)
    if s[0] <= 1e-9 * max(1.0, np.abs(points).max()):
        return 0
    return int((s > 1e-6 * s[0]).sum())


def _fail(n: int, reason: str, t0: float, n_used: int = 0) -> PnPResult:
    log.info("PnP failed: %s", reason)
    return PnPResult(np.full((4, 4), np.nan), np.zeros(n, bool), float("nan"), 0, n_used, False, reason,
                     time.perf_counter() - t0)


def _select(n: int, keep: np.ndarray, weights, log_sigma, cfg: PnPConfig) -> np.ndarray:
    """Indices of the correspondences passed to RANSAC (most confident first)."""
    idx = np.flatnonzero(keep)
    if cfg.max_points is None or idx.size <= cfg.max_points:
        return idx
    if weights is not None:
        order = np.argsort(-weights[idx], kind="stable")
    elif log_sigma is not None:
        order = np.argsort(log_sigma[idx], kind="stable")
    else:
        order = np.random.default_rng(cfg.seed).choice(idx.size, cfg.max_points, replace=False)
    return np.sort(idx[order[: cfg.max_points]])


def _polish_set(keep: np.ndarray, weights, max_points: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of the kept correspondences
    (``keep (N,)`` bool) for the polish: the most confident by ``weights (N,)``,
    else a seeded Bernoulli draw (about ``max_points``; O(N), unlike a draw
    without replacement, which sorts a permutation)."""
    kept = np.flatnonzero(keep)
    if kept.size <= max_points:
        return kept
    if weights is not None:
        top = np.argpartition(-weights[kept], max_points - 1)[:max_points]
        return np.sort(kept[top])
    return kept[rng.random(kept.size) < max_points / kept.size]


def _poselib_camera(K: np.ndarray) -> dict:
    # poselib's pinhole model is u = fx x/z + cx (no half-pixel shift), as ours; the
    # size is informative only.
    return {"model": "PINHOLE", "width": int(2 * K[0, 2] + 1), "height": int(2 * K[1, 2] + 1),
            "params": [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]}


#: Correspondences used by the polish's early Gauss-Newton steps (the last uses all).
_POLISH_WARMUP_POINTS = 3000
#: Further Gauss-Newton steps on all correspondences at most, until a step moves the pose
#: by under 1e-4 mm and 1e-7 rad.
_POLISH_EXTRA_STEPS = 8


def _rotvec_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """Rodrigues' formula: ``(3,)`` axis-angle (rad) to a ``(3, 3)`` rotation."""
    theta = float(np.linalg.norm(rotvec))
    if theta < 1e-12:
        return np.eye(3)
    k = rotvec / theta
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(theta) * kx + (1.0 - np.cos(theta)) * (kx @ kx)


def _gauss_newton_system(T: np.ndarray, points_3d_t: np.ndarray, offset_2d_t: np.ndarray, K: np.ndarray,
                         thr2: float, scale2: float, confidence: np.ndarray | None, with_errors: bool = True):
    """Weighted normal equations of the reprojection error at ``T (4, 4)``.

    Args:
        points_3d_t: ``(3, N)`` float32 points (transposed: every row contiguous).
        offset_2d_t: ``(2, N)`` float32 ``(cx - u, cy - v)``, so the residual is
            ``fx x/z + (cx - u)``.
        thr2, scale2: squared RANSAC threshold and squared Cauchy scale (px^2).
        confidence: ``(N,)`` float32 per-point weight, or None.
        with_errors: also return the reprojection errors (else None).

    Left se(3) increment ``(tau, omega)`` acting on camera-frame points. Points
    behind the source or beyond the threshold get weight 0, the others a Cauchy
    weight ``1 / (1 + r^2 / scale2)`` times ``confidence``. This is the hot loop
    of a dense polish (one pass over up to 10^5 points), so it runs in float32
    with in-place operations on one ``(6, 2N)`` Jacobian (u rows then v rows,
    scaled by the square-root weights) and a single BLAS product for ``H``:
    about four times faster than float64 arrays of ``(N, 2, 6)`` (it is
    memory-bound); the pose agrees with a float64 least-squares reference to
    1e-6 (tests/solve/test_pnp.py).

    Returns ``(H (6, 6) float64, g (6,) float64, errors (N,) px (inf behind the
    source) or None, n_weighted)``.
    """
    f32 = np.float32
    fx, fy = K[0, 0], K[1, 1]
    n = points_3d_t.shape[1]
    pc = T[:3, :3].astype(f32) @ points_3d_t
    pc += T[:3, 3:4].astype(f32)
    x, y, z = pc
    front = z > 1e-6
    iz = np.where(front, z, f32(1.0))
    np.reciprocal(iz, out=iz)
    x *= iz  # x / z
    y *= iz  # y / z
    r = np.empty((2, n), f32)  # residuals (u, v), px
    np.multiply(x, f32(fx), out=r[0])
    r[0] += offset_2d_t[0]
    np.multiply(y, f32(fy), out=r[1])
    r[1] += offset_2d_t[1]
    r2 = r[0] * r[0]
    r2 += r[1] * r[1]
    w = r2 * f32(1.0 / scale2)
    w += f32(1.0)
    np.reciprocal(w, out=w)
    w[~(front & (r2 <= f32(thr2)))] = 0.0
    if confidence is not None:
        w *= confidence
    sw = np.sqrt(w)
    J = np.empty((6, 2 * n), f32)  # columns: d u_i (first n), d v_i (last n), per (tau, omega)
    ju, jv = J[:, :n], J[:, n:]
    np.multiply(iz, f32(fx), out=ju[0])
    ju[1] = 0.0
    np.multiply(x, ju[0], out=ju[2])
    np.negative(ju[2], out=ju[2])
    np.multiply(x, y, out=ju[3])
    np.multiply(ju[3], f32(-fx), out=ju[3])
    np.multiply(x, x, out=ju[4])
    ju[4] += 1.0
    ju[4] *= f32(fx)
    np.multiply(y, f32(-fx), out=ju[5])
    jv[0] = 0.0
    np.multiply(iz, f32(fy), out=jv[1])
    np.multiply(y, jv[1], out=jv[2])
    np.negative(jv[2], out=jv[2])
    np.multiply(y, y, out=jv[3])
    jv[3] += 1.0
    jv[3] *= f32(-fy)
    np.multiply(x, y, out=jv[4])
    jv[4] *= f32(fy)
    np.multiply(x, f32(fy), out=jv[5])
    ju *= sw
    jv *= sw
    r *= sw
    H = (J @ J.T).astype(np.float64)
    g = (J @ r.reshape(-1)).astype(np.float64)
    err = None
    if with_errors:
        err = np.sqrt(r2)
        err[~front] = np.inf
    return H, g, err, int(np.count_nonzero(w))


def _polish(T: np.ndarray, p3: np.ndarray, p2: np.ndarray, K: np.ndarray, cfg: PnPConfig,
            rng: np.random.Generator, confidence: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Robust Gauss-Newton polish of ``T (4, 4)`` on many correspondences
    ``p3 (N, 3)``, ``p2 (N, 2)``.

    Iteratively reweighted Gauss-Newton on the reprojection error with left
    se(3) increments ``x_cam <- exp(omega, tau) x_cam``: points beyond the RANSAC
    threshold get weight 0, the others Cauchy weights (scale a quarter of the
    threshold), times ``confidence (N,)`` when given. Gauss-Newton converges
    quadratically from the RANSAC pose, so a first step uses a random subset
    of :data:`_POLISH_WARMUP_POINTS`, then ``cfg.final_refine_iterations``
    steps use every point (the Cauchy reweighting needs two full passes to
    settle: one leaves the pose about halfway between the subset's and the
    full set's optimum), and up to :data:`_POLISH_EXTRA_STEPS` more until a
    step is negligible: a pose stopped short of the optimum depends on its
    RANSAC start, a discrete choice that float noise in the input can flip.
    Written out
    in numpy (:func:`_gauss_newton_system`, float32) because it is about ten
    times faster per point than the engines' general-purpose refiners (poselib
    ``refine_absolute_pose``, ``cv2.solvePnPRefineLM``), which is what lets the
    final pose use every inlier of a dense map.

    Returns the pose and the reprojection errors ``(N,)`` (px) of all points at
    the pose before the last (tiny) step; ``inf`` behind the source.
    """
    thr2 = float(cfg.reproj_threshold_px) ** 2
    scale2 = thr2 / 16.0
    # float32, transposed, with the principal point folded into the 2D offsets;
    # coordinates are centred on their mean first so float32 keeps ~1e-4 mm
    centre = p3.mean(axis=0)
    P3 = np.empty((3, len(p3)), np.float32)
    for k in range(3):
        np.subtract(p3[:, k], centre[k], out=P3[k], casting="same_kind")
    O2 = np.empty((2, len(p2)), np.float32)
    np.subtract(K[0, 2], p2[:, 0], out=O2[0], casting="same_kind")
    np.subtract(K[1, 2], p2[:, 1], out=O2[1], casting="same_kind")
    conf = None if confidence is None else np.asarray(confidence, np.float32)
    # pose of the centred frame: x_cam = R (x - centre) + (R centre + t)
    Tc = np.array(T, dtype=np.float64)
    Tc[:3, 3] = Tc[:3, :3] @ centre + Tc[:3, 3]
    # (a draw with replacement: O(subset), where one without permutes all N)
    warm = (np.sort(rng.integers(0, len(p3), _POLISH_WARMUP_POINTS))
            if len(p3) > _POLISH_WARMUP_POINTS else None)
    # one cheap step on the subset brings the pose into the quadratic basin; the
    # reweighting then needs more than one pass over all points to settle
    subset_steps = 0 if warm is None else 1
    n_min = subset_steps + max(1, int(cfg.final_refine_iterations))
    # then on to convergence: a pose stopped after a fixed number of steps still
    # remembers its RANSAC start (a discrete choice), so inputs that differ by
    # float noise would give poses that differ by more than the noise
    n_iter = n_min + _POLISH_EXTRA_STEPS
    err = None
    for it in range(n_iter):
        if it >= subset_steps:
            H, g, err_all, n_w = _gauss_newton_system(Tc, P3, O2, K, thr2, scale2, conf, with_errors=True)
            err = err_all
        else:
            H, g, _, n_w = _gauss_newton_system(Tc, P3[:, warm], O2[:, warm], K, thr2, scale2,
                                                None if conf is None else conf[warm], with_errors=False)
        if n_w < 6:
            break
        try:
            step = -np.linalg.solve(H, g)
        except np.linalg.LinAlgError:
            break
        if not np.isfinite(step).all():
            break
        dR = _rotvec_to_matrix(step[3:])
        Tc[:3, :3] = dR @ Tc[:3, :3]
        Tc[:3, 3] = dR @ Tc[:3, 3] + step[:3]
        if it + 1 >= n_min and np.abs(step[:3]).max() < 1e-4 and np.abs(step[3:]).max() < 1e-7:
            break
    T_out = Tc.copy()
    T_out[:3, 3] = Tc[:3, 3] - Tc[:3, :3] @ centre
    if err is not None:
        return T_out, err.astype(np.float64)
    # stopped early (too few weighted points, singular system): errors at the pose kept
    return T_out, reprojection_errors_px(T_out, p3, p2, K)


def _ransac_poselib(p3, p2, K, cfg: PnPConfig):
    import poselib

    camera = _poselib_camera(K)
    ransac = {"max_reproj_error": float(cfg.reproj_threshold_px), "max_iterations": int(cfg.max_iterations),
              "min_iterations": int(min(cfg.min_iterations, cfg.max_iterations)),
              "success_prob": float(cfg.success_prob), "seed": int(cfg.seed)}
    # when a final polish on more points follows, skip poselib's own bundle adjustment
    bundle = {"max_iterations": 0} if cfg.final_refine_points > 0 else {}
    pose, info = poselib.estimate_absolute_pose(p2, p3, camera, ransac, bundle)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = np.asarray(pose.R), np.asarray(pose.t)
    return T, np.asarray(info["inliers"], bool)


def _ransac_opencv(p3, p2, K, cfg: PnPConfig):
    import cv2

    cv2.setRNGSeed(int(cfg.seed))
    flag = getattr(cv2, _OPENCV_FLAGS[cfg.opencv_flag])
    ok, rvec, tvec, inl = cv2.solvePnPRansac(
        p3.reshape(-1, 1, 3), p2.reshape(-1, 1, 2), K, None, iterationsCount=int(cfg.max_iterations),
        reprojectionError=float(cfg.reproj_threshold_px), confidence=float(min(cfg.success_prob, 0.9999)),
        flags=flag)
    if not ok or rvec is None:
        return None, np.zeros(len(p3), bool)
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(rvec)[0]
    T[:3, 3] = tvec.reshape(3)
    mask = np.zeros(len(p3), bool)
    if inl is not None:
        mask[np.asarray(inl).reshape(-1)] = True
    return T, mask


def solve_pnp(points_3d, points_2d, camera, *, config: PnPConfig | None = None, weights=None,
              log_sigma=None, **overrides) -> PnPResult:
    """Pose of the frame of ``points_3d`` in the camera, robust to outliers.

    Args:
        points_3d: ``(N, 3)`` points (mm) in some frame F (the world, a CT, a model).
        points_2d: ``(N, 2)`` their pixels ``(u, v)`` in the image of ``camera``.
        camera: a :class:`~xrecon.geometry.Camera` (intrinsics of its first view)
            or the ``(3, 3)`` intrinsics ``K``.
        config: :class:`PnPConfig`; keyword ``overrides`` replace its fields
            (``solve_pnp(..., method="opencv", reproj_threshold_px=20)``).
        weights: ``(N,)`` confidences (higher = better): they choose the
            ``max_points`` correspondences RANSAC sees and weight the final
            polish; non-positive weights drop the point.
        log_sigma: ``(N,)`` predicted log-variances: filtered by
            ``log_sigma_threshold`` and used for the choice when no ``weights``.

    Returns:
        :class:`PnPResult` with ``world_to_cam`` = F-to-camera. Degenerate input
        (fewer than 4 usable points, collinear points, no consistent pose) gives
        ``success=False`` and a ``reason``; it never raises for bad data. Wrong
        shapes raise :class:`~xrecon.errors.ShapeError`.
    """
    t0 = time.perf_counter()
    cfg = dataclasses.replace(config or PnPConfig(), **overrides) if overrides else (config or PnPConfig())
    p3 = np.asarray(points_3d, dtype=np.float64)
    p2 = np.asarray(points_2d, dtype=np.float64)
    if p3.ndim != 2 or p3.shape[1] != 3:
        raise ShapeError("points_3d", "(N, 3)", p3.shape)
    if p2.shape != (p3.shape[0], 2):
        raise ShapeError("points_2d", f"({p3.shape[0]}, 2)", p2.shape)
    n = p3.shape[0]
    K = intrinsics_matrix(camera)
    w = None if weights is None else np.asarray(weights, np.float64).reshape(-1)
    ls = None if log_sigma is None else np.asarray(log_sigma, np.float64).reshape(-1)
    for name, a in (("weights", w), ("log_sigma", ls)):
        if a is not None and a.shape != (n,):
            raise ShapeError(name, f"({n},)", a.shape)

    keep = _finite_rows(p3) & _finite_rows(p2)
    if w is not None:
        keep &= np.isfinite(w) & (w > 0)
    if ls is not None:
        keep &= np.isfinite(ls)
        if cfg.log_sigma_threshold is not None:
            keep &= ls <= cfg.log_sigma_threshold
    if keep.sum() < 4:
        return _fail(n, f"fewer than 4 usable correspondences ({int(keep.sum())} of {n} finite and "
                        "passing the confidence filter)", t0)
    idx = _select(n, keep, w, ls, cfg)
    q3, q2 = p3[idx], p2[idx]
    if _rank_of_spread(q3) < 2:
        return _fail(n, "degenerate 3D points (all on one line or one point)", t0, idx.size)
    if _rank_of_spread(q2) < 2:
        return _fail(n, "degenerate image points (all on one line or one point)", t0, idx.size)

    try:
        T, mask = (_ransac_poselib if cfg.method == "poselib" else _ransac_opencv)(q3, q2, K, cfg)
    except Exception as exc:  # the engines raise on numerically hopeless input
        return _fail(n, f"{cfg.method} PnP raised {exc.__class__.__name__}: {exc}", t0, idx.size)
    if T is None or not np.isfinite(T).all():
        return _fail(n, f"{cfg.method} RANSAC found no pose", t0, idx.size)
    used = idx
    if cfg.method == "poselib" and cfg.final_refine_points > 0:
        # the bound on the RANSAC set costs speed, not accuracy: polish the pose on
        # up to final_refine_points correspondences drawn from every one kept
        rng = np.random.default_rng(cfg.seed)
        kept = _polish_set(keep, w, cfg.final_refine_points, rng)
        conf = None if w is None else w[kept] / w[kept].max()
        every = kept.size == n  # every input point: no copy
        T_pol, err = _polish(T, p3 if every else p3[kept], p2 if every else p2[kept], K, cfg, rng, conf)
        if np.isfinite(T_pol).all():
            T, used = T_pol, kept
            mask = err <= cfg.reproj_threshold_px
    if used is idx:
        # inliers of the *final* pose (OpenCV's mask belongs to the RANSAC hypothesis)
        err = reprojection_errors_px(T, q3, q2, K)
        mask = err <= cfg.reproj_threshold_px
    need = max(cfg.min_inliers, int(np.ceil(cfg.min_inlier_ratio * used.size)))
    inliers = np.zeros(n, bool)
    inliers[used[mask]] = True
    if mask.sum() < need:
        res = _fail(n, f"only {int(mask.sum())} inliers of {used.size} correspondences (need {need}): "
                       "no pose is consistent with the data", t0, used.size)
        res.inliers, res.n_inliers = inliers, int(mask.sum())
        return res
    return PnPResult(T, inliers, float(err[mask].mean()), int(mask.sum()), int(used.size), True, "",
                     time.perf_counter() - t0)
