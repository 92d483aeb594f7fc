"""Fit a shape model to a partial, noisy 3D point cloud without correspondences.

The points may be in any frame, cover only part of the bone and hold outliers.
Unknowns: the pose ``model_to_points`` (rotation, translation, optionally an
isotropic scale) and the shape coefficients ``b`` (SD units).

Method:

1. **Global initialisation**: first open3d FPFH features + RANSAC (similarity)
   between the mean surface and the points; then, as further candidates, a
   multi-start search: the mean shape's vertices are
   aligned to the points by trimmed similarity ICP (data -> model nearest
   vertices, scipy KD-tree) from 24 principal-axes rotations (every proper
   pairing of the model's and the data's principal axes) plus
   ``config.n_random_starts`` random rotations; the start with the lowest
   trimmed residual wins. The scale found here only sizes the start; without
   ``with_scale`` it is converted into shape coefficients by the next step.
2. **Joint refinement** (Gauss-Newton, alternating with correspondences):
   each data point is matched to its closest point on the current model
   *surface* (open3d ``RaycastingScene``; barycentric, so the match is linear in
   ``b``); robust weights keep the points closer than
   ``max(3 x 1.4826 MAD, 2 noise_mm)`` and at most the best
   ``1 - trim_fraction`` of them; then one damped linear least-squares
   (Levenberg-Marquardt) step updates rotation, translation, (scale) and ``b``
   together; a step that raises the robust cost is rejected and damped more.
   The first ``warmup_iters`` iterations move only the pose and mode 1.

Objective (documented prior weight)::

    E = sum_i w_i [ (n_i . e_i)^2 + alpha |e_i|^2 ] / noise_mm^2  +  prior_weight * |b|^2

with ``e_i`` the residual of point ``i`` to its matched model point, ``n_i`` the
model normal there (point-to-plane) and ``alpha`` a small point-to-point share.
With ``prior_weight = 1`` this is the MAP estimate for independent Gaussian
point errors of ``noise_mm`` along the normal and the model's Gaussian prior
``b ~ N(0, I)``; dense clouds are not independent, so the prior is weak there
and acts mainly on modes the visible part does not constrain.

Frames: ``points`` are in the caller's frame ("points frame");
``model_to_points`` maps model-frame coordinates into it
(``x_points = scale * R @ x_model + t``, see ``/work/shared/CONVENTIONS.md``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import chi2

from xrecon.errors import InputError, check_shape
from shape_models.model import ShapeModel
from shape_models.procrustes import align_points, apply_transform, exp_so3, skew
from shape_models.surface import closest_surface_points

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fit3DConfig:
    """Settings of :func:`fit_points`.

    Attributes:
        n_components: modes to fit (``None``: all of the model's).
        with_scale: estimate an isotropic scale in the pose (else size must come
            from the shape modes; the bundled models keep size in mode 1).
        prior_weight: weight of ``|b|^2`` in the objective (see module docstring).
        noise_mm: expected point noise, mm (scales the data term and the inlier gate).
        trim_fraction: share of the worst-matching points always ignored by the joint
            refinement (the global search always trims at least 20 %).
        max_step_sd / max_step_deg: trust region of one Gauss-Newton step (coefficients, rotation).
        warmup_iters: first iterations that move only the pose and mode 1 (size).
        point_to_point: ``alpha``, share of the point-to-point term.
        max_points: data points used (a random subset above this).
        use_fpfh: first candidate pose from open3d FPFH features + RANSAC (mean shape
            sampled on its surface vs the points), tried before the ICP multi-start.
        fpfh_voxel_mm: voxel size of that step (features use 3x / 6x this radius);
            suits bones of 5 to 50 cm.
        n_fpfh_runs / fpfh_ransac_iters: RANSAC runs (one candidate each) and iterations per run.
        n_random_starts: random start rotations added to the 24 principal-axes ones.
        coarse_points: data and model points used by the global search.
        coarse_iters: ICP iterations of the global search.
        n_candidates: poses kept from the ICP multi-start.
        screen_iters: joint iterations run from every candidate start before ranking them
            by the robust objective.
        n_finalists: best-ranked candidates refined to convergence in turn until one succeeds.
        max_iters: joint iterations of a finalist (stops earlier when the cost settles).
        max_sd: coefficients are clipped to ``[-max_sd, max_sd]`` after each step.
        seed: for subsampling and random starts.
    """

    n_components: int | None = None
    with_scale: bool = False
    prior_weight: float = 1.0
    noise_mm: float = 1.0
    trim_fraction: float = 0.0
    max_step_sd: float = 1.0
    max_step_deg: float = 5.0
    warmup_iters: int = 5
    point_to_point: float = 0.1
    max_points: int = 2000
    use_fpfh: bool = True
    fpfh_voxel_mm: float = 4.0
    n_fpfh_runs: int = 3
    fpfh_ransac_iters: int = 20000
    n_random_starts: int = 24
    coarse_points: int = 600
    coarse_iters: int = 30
    n_candidates: int = 4
    max_iters: int = 40
    screen_iters: int = 10
    n_finalists: int = 2
    max_sd: float = 5.0
    seed: int = 0


@dataclass
class Fit3DResult:
    """Result of :func:`fit_points`.

    Attributes:
        vertices: ``(V, 3)`` fitted mesh in the points frame, mm.
        faces: ``(F, 3)`` or ``None`` (the model's faces).
        coefficients: ``(K,)`` shape coefficients, SD.
        model_to_points: ``(4, 4)`` similarity (``scale * R``, ``t``), model -> points frame.
        scale: isotropic scale in ``model_to_points`` (1 without ``with_scale``).
        residuals_mm: ``(N,)`` distance of every input point to the fitted surface.
        inliers: ``(N,)`` bool, points used in the last iteration's fit.
        rms_inlier_mm: RMS of ``residuals_mm`` over the inliers.
        mahalanobis: ``|coefficients|``.
        n_iter: joint iterations run.
        cost: final robust objective (truncated data term + prior), for comparing starts.
        success / reason: ``False`` with a reason for a degenerate input or a fit
            that did not converge to a usable state.
    """

    vertices: np.ndarray
    faces: np.ndarray | None
    coefficients: np.ndarray
    model_to_points: np.ndarray
    scale: float
    residuals_mm: np.ndarray
    inliers: np.ndarray
    rms_inlier_mm: float
    mahalanobis: float
    n_iter: int
    success: bool
    reason: str = ""
    history: list = field(default_factory=list)
    cost: float = float("inf")


# ---------------------------------------------------------------------------- small helpers
def _principal_axes(points: np.ndarray) -> np.ndarray:
    c = points - points.mean(axis=0)
    _, vecs = np.linalg.eigh(c.T @ c)
    return vecs[:, ::-1]  # columns: major -> minor


def _axis_rotations() -> list[np.ndarray]:
    """The 24 proper rotations that map the coordinate axes onto signed axes."""
    import itertools

    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            m[np.arange(3), perm] = signs
            if np.linalg.det(m) > 0:
                out.append(m)
    return out


def _random_rotations(n: int, rng) -> list[np.ndarray]:
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return list(np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], axis=1))


def _trimmed_mask(dist: np.ndarray, trim_fraction: float, floor_mm: float) -> np.ndarray:
    keep = np.zeros(len(dist), bool)
    n_keep = max(3, int(np.ceil((1 - trim_fraction) * len(dist))))
    order = np.argsort(dist)[:n_keep]
    keep[order] = True
    mad = 1.4826 * np.median(np.abs(dist[keep]))
    return keep & (dist <= max(3 * mad, floor_mm))


# ------------------------------------------- global initialisation (similarity alignment)
def similarity_icp(tree, model_points: np.ndarray, points: np.ndarray, model_to_points: np.ndarray, n_iter: int,
                   trim_fraction: float = 0.2) -> tuple[float, np.ndarray]:
    """Trimmed similarity ICP (data -> nearest model point) from ``model_to_points (4, 4)``.

    ``tree``: ``scipy.spatial.cKDTree`` of ``model_points (M, 3)``; ``points (N, 3)``.
    Returns ``(trimmed RMS mm, model_to_points)``.
    """
    T = model_to_points
    rms = np.inf
    for _ in range(n_iter):
        q = apply_transform(np.linalg.inv(T), points)
        d, j = tree.query(q)
        keep = _trimmed_mask(d, trim_fraction, 0.0)
        if keep.sum() < 10:
            return np.inf, T
        T = align_points(model_points[j[keep]], points[keep], "similarity")
        rms = float(np.sqrt((d[keep] ** 2).mean()) * np.cbrt(abs(np.linalg.det(T[:3, :3]))))
    return rms, T


def coarse_align(model_points: np.ndarray, points: np.ndarray, config: Fit3DConfig = Fit3DConfig()
                 ) -> list[tuple[float, np.ndarray]]:
    """Multi-start trimmed similarity ICP of ``model_points: (M, 3)`` onto ``points: (N, 3)``.

    Every start runs ``config.coarse_iters // 3`` iterations; the best
    ``config.n_candidates`` continue to ``config.coarse_iters``. Returns those
    candidates as ``(trimmed RMS mm, model_to_points (4, 4))``, best first.
    """
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(config.seed)
    tree = cKDTree(model_points)
    mc, pc = model_points.mean(axis=0), points.mean(axis=0)
    axes_m, axes_p = _principal_axes(model_points), _principal_axes(points)
    starts = [axes_p @ a @ axes_m.T for a in _axis_rotations()] + _random_rotations(config.n_random_starts, rng)
    size_ratio = np.sqrt(((points - pc) ** 2).sum(1).mean() / ((model_points - mc) ** 2).sum(1).mean())

    def icp(T, n_iter):
        return similarity_icp(tree, model_points, points, T, n_iter, max(config.trim_fraction, 0.2))

    first = []
    for R0 in starts:
        T = np.eye(4)
        T[:3, :3] = size_ratio * R0
        T[:3, 3] = pc - size_ratio * R0 @ mc
        first.append(icp(T, max(1, config.coarse_iters // 3)))
    first.sort(key=lambda c: c[0])
    refined = [icp(T, config.coarse_iters) for _, T in first[: config.n_candidates]]
    refined.sort(key=lambda c: c[0])
    return refined


def fpfh_align(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray, config: Fit3DConfig = Fit3DConfig()):
    """Generator of global ``model_to_points (4, 4)`` candidates (similarity) from FPFH features + RANSAC.

    ``vertices (V, 3)``, ``faces (F, 3)``: the model surface (sampled with 20,000
    points); ``points (N, 3)``: the observation. Features are computed once;
    RANSAC runs ``config.n_fpfh_runs`` times with seeds ``seed, seed + 1, ...``
    (its result varies with the seed), one candidate per run.
    """
    import open3d as o3d

    from xrecon.metrics.shape import sample_surface

    reg = o3d.pipelines.registration
    voxel = config.fpfh_voxel_mm
    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)

    def features(p):
        pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(p, np.float64))).voxel_down_sample(voxel)
        pc.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=3 * voxel, max_nn=30))
        f = reg.compute_fpfh_feature(pc, o3d.geometry.KDTreeSearchParamHybrid(radius=6 * voxel, max_nn=100))
        return pc, f

    src, f_src = features(sample_surface(vertices, faces, 20000, config.seed))
    dst, f_dst = features(points)
    for run in range(config.n_fpfh_runs):
        o3d.utility.random.seed(config.seed + run)
        result = reg.registration_ransac_based_on_feature_matching(
            src, dst, f_src, f_dst, True, 3 * voxel, reg.TransformationEstimationPointToPoint(True), 3,
            [reg.CorrespondenceCheckerBasedOnEdgeLength(0.85), reg.CorrespondenceCheckerBasedOnDistance(3 * voxel)],
            reg.RANSACConvergenceCriteria(config.fpfh_ransac_iters, 0.999))
        yield np.asarray(result.transformation, dtype=np.float64)


# ------------------------------------------------- joint refinement (pose and shape fit)
def fit_points(model: ShapeModel, points, config: Fit3DConfig = Fit3DConfig(),
               init_model_to_points: np.ndarray | None = None) -> Fit3DResult:
    """Fit ``model`` (pose + shape) to ``points: (N, 3)`` mm in any frame.

    Args:
        model: a fitted :class:`ShapeModel` with faces.
        points: ``(N, 3)`` observed surface points (partial, noisy, with outliers).
        config: :class:`Fit3DConfig`.
        init_model_to_points: optional ``(4, 4)`` start pose (skips the global search).

    Returns:
        :class:`Fit3DResult` (``success=False`` with a reason on degenerate input
        or when no candidate pose gives a fit within the expected noise).
    """
    model._check_fitted()
    if model.faces_ is None:
        raise InputError("fit_points needs a model with faces (a surface to match points to)")
    pts_all = np.asarray(points, dtype=np.float64)
    check_shape("points", pts_all, (None, 3))
    finite = np.isfinite(pts_all).all(axis=1)
    if not finite.all():
        raise InputError(f"points hold NaN or inf ({int((~finite).sum())} of {len(pts_all)} rows)")
    K = model.n_components_ if config.n_components is None else min(config.n_components, model.n_components_)
    n_unknowns = 6 + int(config.with_scale) + K

    def fail(reason):
        b = np.zeros(model.n_components_)
        return Fit3DResult(model.mean_.copy(), model.faces_, b, np.eye(4), 1.0, np.full(len(pts_all), np.nan),
                           np.zeros(len(pts_all), bool), np.nan, 0.0, 0, False, reason)

    if len(pts_all) < 3 * n_unknowns:
        return fail(f"{len(pts_all)} points for {n_unknowns} unknowns: too few")
    if np.linalg.svd(pts_all - pts_all.mean(axis=0), compute_uv=False)[1] < 1e-6:
        return fail("points are degenerate (collinear or a single point)")

    rng = np.random.default_rng(config.seed)
    pts = pts_all if len(pts_all) <= config.max_points else pts_all[rng.choice(len(pts_all), config.max_points, False)]
    def candidates():
        if init_model_to_points is not None:
            T0 = np.asarray(init_model_to_points, dtype=np.float64)
            check_shape("init_model_to_points", T0, (4, 4))
            yield T0
            return
        sub_m = model.mean_[rng.choice(len(model.mean_), min(len(model.mean_), config.coarse_points), False)]
        sub_p = pts[rng.choice(len(pts), min(len(pts), config.coarse_points), False)]
        if config.use_fpfh:
            from scipy.spatial import cKDTree

            tree = cKDTree(sub_m)
            for T in fpfh_align(model.mean_, model.faces_, pts_all, config):
                # polish the feature-based pose and scale by trimmed similarity ICP
                yield similarity_icp(tree, sub_m, sub_p, T, config.coarse_iters)[1]
        for _, T in coarse_align(sub_m, sub_p, config):
            yield T

    # short refinement of every candidate; the lowest robust objective (data + prior) continues
    short = [_refine(model, K, pts, pts_all, T0, config, max_iters=config.screen_iters) for T0 in candidates()]
    order = sorted(range(len(short)), key=lambda k: short[k].cost)
    best = None
    for k in order[: config.n_finalists]:
        start = short[k]
        result = _refine(model, K, pts, pts_all, start.model_to_points, config, b0=start.coefficients[:K])
        if best is None or (result.success, -result.cost) > (best.success, -best.cost):
            best = result
        if result.success:
            break
    return best


def _refine(model: ShapeModel, K: int, pts: np.ndarray, pts_all: np.ndarray, T0: np.ndarray,
            config: Fit3DConfig, max_iters: int | None = None, b0: np.ndarray | None = None) -> Fit3DResult:
    """Joint Gauss-Newton of pose and ``K`` coefficients from the start ``T0`` (see module doc)."""
    from xrecon.metrics.shape import point_to_surface

    faces = model.faces_
    # centred parameterisation (better conditioned): the modes' centroid shifts go
    # into the translation, converted back at the end
    mean = model.mean_
    comps_raw = (model.components_[:K] * model.std_[:K, None]).reshape(K, -1, 3)  # (K, V, 3) mm per SD
    shift = comps_raw.mean(axis=1)  # (K, 3) centroid shift per SD
    comps = comps_raw - shift[:, None, :]
    comps_v = np.ascontiguousarray(comps.transpose(1, 2, 0))  # (V, 3, K)
    n_unknowns = 6 + int(config.with_scale) + K
    b = np.zeros(K)
    s = float(np.cbrt(np.linalg.det(T0[:3, :3])))
    R = T0[:3, :3] / s
    t = T0[:3, 3].copy()
    if b0 is not None:
        # continue a previous run: T0 is for the model's own modes, move to the centred ones
        b = np.asarray(b0, np.float64).copy()
        t = t + s * R @ (b @ shift)
    elif not config.with_scale:
        # turn the start's scale into shape coefficients: the modes' least-squares
        # approximation of scaling the mean about its centroid (size lives in the modes)
        centred = mean - mean.mean(axis=0)
        b = np.linalg.lstsq(comps.reshape(K, -1).T, (s - 1.0) * centred.ravel(), rcond=None)[0]
        b = np.clip(b, -config.max_sd, config.max_sd)
        t = t + (s - 1.0) * R @ mean.mean(axis=0)
        s = 1.0
    sigma2 = config.noise_mm**2
    n_scale = int(config.with_scale)
    P = 6 + n_scale + K
    tau2 = np.inf  # truncation of the cost used to accept steps; set from the start's residuals below

    def linearise(R, t, s, b):
        """Robust cost, normal equations, inlier count, RMS and rotation centre at a state."""
        x_model = mean + np.tensordot(b, comps, axes=1)
        q = (pts - t) @ R / s  # points in the model frame
        fid, bary, cp, nrm = closest_surface_points(x_model, faces, q)
        dist = np.linalg.norm(q - cp, axis=1) * s
        cost = float(np.minimum(dist**2, tau2).sum()) / sigma2 + config.prior_weight * float(b @ b)
        keep = _trimmed_mask(dist, config.trim_fraction, 2 * config.noise_mm)
        if keep.sum() < 3 * n_unknowns:
            return None, f"only {int(keep.sum())} inlier points left"
        f = faces[fid[keep]]
        y0 = s * cp[keep] @ R.T + t  # matched model points in the points frame
        c = y0.mean(axis=0)  # rotation and scale act about this centre (conditioning)
        z = y0 - c
        e = pts[keep] - y0
        n_w = nrm[keep] @ R.T
        # Jacobian (n, 3, P) of the matched points w.r.t. [omega (3), (log scale), t (3), b (K)]
        J_b = s * (R @ (bary[keep][:, :, None, None] * comps_v[f]).sum(axis=1))  # (n, 3, K)
        blocks = [-skew(z)] + ([z[:, :, None]] if n_scale else [])
        blocks += [np.broadcast_to(np.eye(3), (len(z), 3, 3)), J_b]
        J = np.concatenate(blocks, axis=2)
        M = np.einsum("ni,nj->nij", n_w, n_w) + config.point_to_point * np.eye(3)
        JtM = J.transpose(0, 2, 1) @ M  # (n, P, 3)
        JtM_flat = JtM.transpose(1, 0, 2).reshape(P, -1)
        H = JtM_flat @ J.reshape(-1, P) / sigma2
        g = JtM_flat @ e.reshape(-1) / sigma2
        H[P - K:, P - K:] += config.prior_weight * np.eye(K)
        g[P - K:] -= config.prior_weight * b
        return (cost, H, g, c, float(np.sqrt((dist[keep] ** 2).mean()))), ""

    def step(R, t, s, b, H, g, c, lam, warm):
        H = H.copy()
        g = g.copy()
        if warm and K > 1:
            # warm-up: pose and the first mode (size) only, so the other modes do not absorb pose errors
            frozen = np.arange(P - K + 1, P)
            H[frozen, :] = 0.0
            H[:, frozen] = 0.0
            H[frozen, frozen] = 1.0
            g[frozen] = 0.0
        H += lam * np.diag(np.diag(H)) + 1e-9 * np.trace(H) / P * np.eye(P)
        delta = np.linalg.solve(H, g)
        # trust region per block: rotation, coefficients
        delta[:3] *= min(1.0, np.radians(config.max_step_deg) / max(np.linalg.norm(delta[:3]), 1e-12))
        delta[P - K:] *= min(1.0, config.max_step_sd / max(np.abs(delta[P - K:]).max(), 1e-12))
        ds = float(np.exp(delta[3])) if n_scale else 1.0
        i = 3 + n_scale
        dR = exp_so3(delta[:3])
        # increment about c: y' = ds dR (y - c) + c + dt
        return (dR @ R, ds * dR @ (t - c) + c + delta[i:i + 3], s * ds,
                np.clip(b + delta[P - K:], -config.max_sd, config.max_sd))

    history: list[float] = []
    lin, reason = linearise(R, t, s, b)
    if lin is not None:
        tau2 = max(5.0 * config.noise_mm, 2.0 * lin[4]) ** 2
        lin, reason = linearise(R, t, s, b)
    lam = 1e-4
    n_iter = 0
    for n_iter in range(1, (max_iters or config.max_iters) + 1):
        if lin is None:
            break
        cost, H, g, c, rms = lin
        history.append(rms)
        if n_iter >= 15 and rms > 3 * config.noise_mm + 1.0:
            reason = f"stuck at a {rms:.1f} mm RMS after {n_iter} iterations (wrong start pose)"
            break
        warm = b0 is None and n_iter <= config.warmup_iters
        cand = step(R, t, s, b, H, g, c, lam, warm)
        lin_new, _ = linearise(*cand)
        if lin_new is None or lin_new[0] > cost:
            lam *= 10.0  # reject: damp more, retry from the same state
            if lam > 1e4:
                break
            continue
        (R, t, s, b), lin = cand, lin_new
        lam = max(lam / 3.0, 1e-6)
        if not warm and cost - lin_new[0] < 1e-5 * cost:
            break

    t = t - s * R @ (b @ shift)  # back to the model's own (uncentred) modes
    T = similarity(R, t, s)
    verts = apply_transform(T, mean + np.tensordot(b, comps_raw, axes=1))
    residuals = point_to_surface(pts_all, verts, faces)
    inl = _trimmed_mask(residuals, config.trim_fraction, 2 * config.noise_mm)
    rms_in = float(np.sqrt((residuals[inl] ** 2).mean()))
    success = not reason
    final_cost = lin[0] if lin is not None else np.inf
    plausible = float(np.sqrt(chi2.ppf(0.999, K)))
    if success and np.linalg.norm(b) > plausible:
        success, reason = False, (f"implausible shape: |b| = {np.linalg.norm(b):.1f} SD > {plausible:.1f} "
                                  "(99.9 % of the model's population)")
    elif success and inl.mean() < 0.3:
        success, reason = False, f"only {100 * inl.mean():.0f} % of the points lie on the fitted surface"
    elif success and rms_in > 1.5 * config.noise_mm + 0.5:
        success, reason = False, f"inlier RMS {rms_in:.1f} mm is far above the expected noise ({config.noise_mm} mm)"
    coeffs = np.zeros(model.n_components_)
    coeffs[:K] = b
    return Fit3DResult(verts, faces, coeffs, T, s, residuals, inl, rms_in, float(np.linalg.norm(b)), n_iter,
                       success, reason, history, final_cost)


def similarity(R: np.ndarray, t: np.ndarray, s: float = 1.0) -> np.ndarray:
    """``(4, 4)`` with upper-left ``s * R`` and translation ``t``."""
    T = np.eye(4)
    T[:3, :3] = s * R
    T[:3, 3] = t
    return T
