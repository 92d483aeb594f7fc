"""Rigid (or similarity) alignment of 3D point sets, in mm.

Two problems:

* **Known correspondence** (:func:`umeyama`): weighted least squares
  ``min sum_i w_i |s R x_i + t - y_i|^2`` in closed form (Umeyama 1991, Kabsch
  with a determinant correction), optionally with scale ``s``. ``R`` is always a
  proper rotation: a reflection is never returned, even when the data prefer one.
* **Unknown correspondence** (:func:`align_surfaces`): two samplings of the same
  surface, e.g. a CT bone model in its own frame and a reconstruction in the
  camera frame, possibly only partly overlapping. A global initialisation
  (principal axes with all 24 proper axis/sign assignments, plus FPFH features
  matched in RANSAC, both from open3d) gives candidate poses; each is polished by
  a short robust ICP and scored by a truncated symmetric residual; the best
  distinct ones are refined in turn by point-to-plane ICP with a Tukey kernel,
  coarse to fine, until one overlaps the destination well (the best overlap
  wins: near-symmetric bones can rank a wrong minimum first when coarse).

No preprocessing of the inputs is needed: any rotation, any origin. LPS+ vs
RAS+ is ``diag(-1, -1, 1)``, a half-turn about z (determinant +1), so a model in
LPS aligns to one in RAS with a *rigid* transform; a true mirror image (left
vs right bone) cannot be aligned and is not tried.

Results are :class:`AlignResult` with ``src_to_dst`` a ``(4, 4)`` matrix acting
on column vectors (``y = s R x + t``), see :mod:`xrecon.geometry`.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from dataclasses import dataclass

import numpy as np

from xrecon.errors import InputError, ShapeError

log = logging.getLogger(__name__)


@dataclass
class AlignResult:
    """Outcome of a 3D alignment.

    Attributes:
        src_to_dst: ``(4, 4)`` transform ``y = s R x + t`` (NaN on failure).
        scale: ``s`` (1.0 for rigid alignment).
        rmse_mm: RMS residual of the matched / inlier points (mm).
        fitness: overlap after alignment: share of the points of one cloud
            with a partner on the other (the better direction, so a partial
            cloud inside a complete one scores 1); 1.0 for known correspondence.
        success: whether the transform is trustworthy.
        reason: why not (empty on success).
        time_s: wall time.
        n_candidates: global-initialisation candidates tried (0 for Umeyama).
        candidates: every distinct candidate taken through the fine levels, as
            ``(src_to_dst (4, 4), fitness, rmse_mm)``, best first (the chosen
            one included); callers with more evidence than the surfaces (e.g.
            :func:`xrecon.solve.joint.solve_joint`) re-rank them.
    """

    src_to_dst: np.ndarray
    scale: float
    rmse_mm: float
    fitness: float
    success: bool
    reason: str = ""
    time_s: float = 0.0
    n_candidates: int = 0
    candidates: list = dataclasses.field(default_factory=list)

    def apply(self, points_src: np.ndarray) -> np.ndarray:
        """Map ``points_src: (N, 3)`` to the destination frame."""
        T = self.src_to_dst
        return np.asarray(points_src, np.float64) @ T[:3, :3].T + T[:3, 3]


def _fail(reason: str, t0: float) -> AlignResult:
    log.info("3D alignment failed: %s", reason)
    return AlignResult(np.full((4, 4), np.nan), float("nan"), float("nan"), 0.0, False, reason,
                       time.perf_counter() - t0)


def _points(name: str, x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 3:
        raise ShapeError(name, "(N, 3)", x.shape)
    return x


def _spread_rank(points: np.ndarray, weights: np.ndarray | None = None) -> int:
    w = np.ones(len(points)) if weights is None else weights
    c = points - (w[:, None] * points).sum(0) / w.sum()
    s = np.linalg.svd(np.sqrt(w)[:, None] * c, compute_uv=False)
    if s[0] <= 1e-9 * max(1.0, np.abs(points).max()):
        return 0
    return int((s > 1e-6 * s[0]).sum())


def umeyama(src_points, dst_points, weights=None, *, with_scale: bool = False) -> AlignResult:
    """Closed-form weighted alignment of corresponding points.

    Args:
        src_points: ``(N, 3)`` points in the source frame.
        dst_points: ``(N, 3)`` the same points in the destination frame.
        weights: ``(N,)`` non-negative weights (default all 1).
        with_scale: also estimate an isotropic scale (a similarity transform).

    Returns:
        :class:`AlignResult`; fewer than 3 weighted points, collinear points or
        non-finite input give ``success=False`` with a reason.
    """
    t0 = time.perf_counter()
    x, y = _points("src_points", src_points), _points("dst_points", dst_points)
    if y.shape != x.shape:
        raise ShapeError("dst_points", f"({x.shape[0]}, 3) to match src_points", y.shape)
    w = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if w.shape != (len(x),):
        raise ShapeError("weights", f"({len(x)},)", w.shape)
    keep = np.isfinite(x).all(1) & np.isfinite(y).all(1) & np.isfinite(w) & (w > 0)
    if keep.sum() < 3:
        return _fail(f"fewer than 3 usable point pairs ({int(keep.sum())} of {len(x)})", t0)
    x, y, w = x[keep], y[keep], w[keep]
    if _spread_rank(x, w) < 2 or _spread_rank(y, w) < 2:
        return _fail("degenerate point set (collinear or a single point): rotation is not determined", t0)
    wn = w / w.sum()
    mx, my = wn @ x, wn @ y
    xc, yc = x - mx, y - my
    cov = (wn[:, None] * yc).T @ xc  # (3, 3) = sum_i w_i y_i x_i^T
    U, S, Vt = np.linalg.svd(cov)
    d = np.ones(3)
    d[2] = np.sign(np.linalg.det(U) * np.linalg.det(Vt)) or 1.0
    R = U @ np.diag(d) @ Vt
    s = float((S * d).sum() / (wn @ (xc**2).sum(1))) if with_scale else 1.0
    if not s > 0:
        return _fail(f"non-positive scale {s:g}", t0)
    T = np.eye(4)
    T[:3, :3] = s * R
    T[:3, 3] = my - s * R @ mx
    res = (x @ T[:3, :3].T + T[:3, 3]) - y
    rmse = float(np.sqrt(wn @ (res**2).sum(1)))
    return AlignResult(T, s, rmse, 1.0, True, "", time.perf_counter() - t0)


# ---------------------------------------------------------------------------- surfaces
@dataclass(frozen=True)
class AlignConfig:
    """Settings of :func:`align_surfaces`.

    Attributes:
        with_scale: estimate an isotropic scale too (similarity).
        init_scale: starting scale with ``with_scale``; ``None`` takes the ratio of
            the clouds' spreads, which is biased when one cloud is partial (then
            give the expected scale, e.g. 1.0 for two metric shapes).
        scale_bounds: ``(lo, hi)``: candidates whose scale leaves this range are
            discarded (a partial cloud otherwise invites a shrunken fit).
        coarse_voxel_mm: voxel size of the global stage; ``None`` = the larger
            bounding-box diagonal / 30.
        fine_voxel_mm: voxel size of the last ICP level; ``None`` = coarse / 8.
        global_init: candidate generators: ``"pca"`` (24 principal-axis poses)
            and/or ``"fpfh"`` (FPFH + RANSAC).
        coarse_icp_iterations: ICP iterations spent on each candidate.
        fine_icp_iterations: ICP iterations per refinement level.
        tukey_k: Tukey kernel width in units of the level's voxel size.
        max_points: cap on points per cloud at the finest level (random subset).
        min_fitness: smallest overlap (see :attr:`AlignResult.fitness`) accepted.
        refine_candidates: the best distinct coarse candidates taken through the
            fine levels, in order, until one reaches ``good_fitness``; the one
            with the best overlap wins.
        good_fitness: overlap that ends the search early.
        fpfh_retries: when no refined candidate reaches ``good_fitness``,
            FPFH + RANSAC runs again with up to this many further seeds, each
            new candidate refined the same way (a partial cloud can defeat one
            RANSAC draw and every principal-axis guess).
        seed: seeds subsampling and RANSAC.
    """

    with_scale: bool = False
    init_scale: float | None = None
    scale_bounds: tuple[float, float] | None = None
    coarse_voxel_mm: float | None = None
    fine_voxel_mm: float | None = None
    global_init: tuple[str, ...] = ("pca", "fpfh")
    coarse_icp_iterations: int = 15
    fine_icp_iterations: int = 30
    tukey_k: float = 2.0
    max_points: int = 20000
    min_fitness: float = 0.3
    refine_candidates: int = 6
    good_fitness: float = 0.9
    fpfh_retries: int = 4
    seed: int = 0

    def __post_init__(self):
        unknown = set(self.global_init) - {"pca", "fpfh"}
        if unknown or not self.global_init:
            raise InputError(f"global_init must be a non-empty subset of ('pca', 'fpfh'), got {self.global_init}")


def _pcd(points: np.ndarray):
    import open3d as o3d

    p = o3d.geometry.PointCloud()
    p.points = o3d.utility.Vector3dVector(points)
    return p


def _with_normals(pcd, radius: float):
    import open3d as o3d

    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=radius, max_nn=30))
    return pcd


def _principal_axes(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = points.mean(0)
    _, vecs = np.linalg.eigh(np.cov((points - c).T))
    return c, vecs[:, ::-1]  # columns: major, middle, minor


def _pca_candidates(src: np.ndarray, dst: np.ndarray, scale: float) -> list[np.ndarray]:
    """24 poses mapping the source principal axes onto the destination's: every
    axis permutation and sign choice with determinant +1 (partial views can
    reorder the axes, so all are tried)."""
    cs, Es = _principal_axes(src)
    cd, Ed = _principal_axes(dst)
    out = []
    for perm in itertools.permutations(range(3)):
        P = np.eye(3)[:, perm]
        for signs in itertools.product((1.0, -1.0), repeat=3):
            R = Ed @ P @ np.diag(signs) @ Es.T
            if np.linalg.det(R) < 0:
                continue
            T = np.eye(4)
            T[:3, :3] = scale * R
            T[:3, 3] = cd - scale * R @ cs
            out.append(T)
    return out


def _fpfh_candidate(src_pcd, dst_pcd, voxel: float, seed: int) -> np.ndarray | None:
    import open3d as o3d

    reg = o3d.pipelines.registration
    param = o3d.geometry.KDTreeSearchParamHybrid(radius=5 * voxel, max_nn=100)
    f_src = reg.compute_fpfh_feature(src_pcd, param)
    f_dst = reg.compute_fpfh_feature(dst_pcd, param)
    o3d.utility.random.seed(int(seed))
    dist = 1.5 * voxel
    result = reg.registration_ransac_based_on_feature_matching(
        src_pcd, dst_pcd, f_src, f_dst, True, dist, reg.TransformationEstimationPointToPoint(False), 3,
        [reg.CorrespondenceCheckerBasedOnEdgeLength(0.9), reg.CorrespondenceCheckerBasedOnDistance(dist)],
        reg.RANSACConvergenceCriteria(100000, 0.999))
    T = np.asarray(result.transformation)
    return T if result.fitness > 0 and np.isfinite(T).all() else None


def _icp(src_pcd, dst_pcd, init: np.ndarray, voxel: float, iterations: int, cfg: AlignConfig):
    """One ICP level: scale (point-to-point, if asked) then robust point-to-plane."""
    import open3d as o3d

    reg = o3d.pipelines.registration
    crit = reg.ICPConvergenceCriteria(relative_fitness=1e-7, relative_rmse=1e-7, max_iteration=iterations)
    T = init
    if cfg.with_scale:
        T = np.asarray(reg.registration_icp(src_pcd, dst_pcd, 3 * voxel, T,
                                            reg.TransformationEstimationPointToPoint(True), crit).transformation)
    # point-to-plane is rigid: run it on the source scaled by the current scale
    s = float(np.cbrt(np.linalg.det(T[:3, :3])))
    if not np.isfinite(T).all() or not s > 1e-6:  # the scaled step collapsed (no overlap): keep the start
        T = init
        s = float(np.cbrt(np.linalg.det(T[:3, :3])))
    S = np.diag([s, s, s, 1.0])
    rigid = T @ np.linalg.inv(S)
    scaled = o3d.geometry.PointCloud(src_pcd).transform(S) if abs(s - 1) > 1e-12 else src_pcd
    est = reg.TransformationEstimationPointToPlane(reg.TukeyLoss(k=cfg.tukey_k * voxel))
    r = reg.registration_icp(scaled, dst_pcd, 3 * voxel, rigid, est, crit)
    return np.asarray(r.transformation) @ S


def _score(T: np.ndarray, src: np.ndarray, dst_tree, dst: np.ndarray, src_tree, tau: float) -> float:
    """Truncated symmetric residual (mm): mean of min(d, tau) both ways. Missing
    parts cost the same for every candidate, so they do not bias the choice."""
    moved = src @ T[:3, :3].T + T[:3, 3]
    d_ab = np.minimum(dst_tree.query(moved)[0], tau)
    back = (dst - T[:3, 3]) @ np.linalg.inv(T[:3, :3]).T
    d_ba = np.minimum(src_tree.query(back)[0] * float(np.cbrt(np.linalg.det(T[:3, :3]))), tau)
    return float(d_ab.mean() + d_ba.mean())


def _same_pose(T: np.ndarray, U: np.ndarray, centre: np.ndarray, tol_mm: float) -> bool:
    """Whether two transforms agree: rotations within 5 degrees and the source
    centre mapped within ``tol_mm``."""
    from scipy.spatial.transform import Rotation

    Rt = T[:3, :3] / np.cbrt(np.linalg.det(T[:3, :3]))
    Ru = U[:3, :3] / np.cbrt(np.linalg.det(U[:3, :3]))
    angle = np.degrees(np.linalg.norm(Rotation.from_matrix(Rt @ Ru.T).as_rotvec()))
    moved = np.linalg.norm((T[:3, :3] - U[:3, :3]) @ centre + T[:3, 3] - U[:3, 3])
    return bool(angle < 5.0 and moved < tol_mm)


def _overlap(T: np.ndarray, src: np.ndarray, dst: np.ndarray, tol: float) -> tuple[float, float]:
    """Share of points with a partner on the other surface, the better of both
    directions (the partial or sparser cloud is the one covered), and the RMS
    distance of the matched points. A point is matched within ``tol`` plus the
    other cloud's typical sample spacing, so sparse clouds are not penalised."""
    from scipy.spatial import cKDTree

    moved = src @ T[:3, :3].T + T[:3, 3]
    best = (0.0, float("nan"))
    for a, b in ((moved, dst), (dst, moved)):
        tree = cKDTree(b)
        spacing = float(np.median(tree.query(b[: min(len(b), 2000)], k=2)[0][:, 1]))
        d = tree.query(a)[0]
        ok = d <= tol + spacing
        if ok.mean() > best[0]:
            best = (float(ok.mean()), float(np.sqrt((d[ok] ** 2).mean())))
    return best


def align_surfaces(src_points, dst_points, *, config: AlignConfig | None = None,
                   init_src_to_dst: np.ndarray | None = None, **overrides) -> AlignResult:
    """Align two samplings of the same surface without known correspondence.

    Args:
        src_points: ``(N, 3)`` surface points in the source frame (e.g. a CT bone
            model in its own frame, LPS or RAS, any origin).
        dst_points: ``(M, 3)`` surface points in the destination frame; either
            set may miss parts of the surface.
        config: :class:`AlignConfig`; keyword ``overrides`` replace its fields.
        init_src_to_dst: ``(4, 4)`` optional extra starting guess.

    Returns:
        :class:`AlignResult` (``src_to_dst`` a rigid or similarity transform).
        Too few points, non-finite or flat/collinear clouds, or a final overlap
        below ``min_fitness`` give ``success=False`` with a reason.
    """
    import open3d as o3d
    from scipy.spatial import cKDTree

    t0 = time.perf_counter()
    cfg = dataclasses.replace(config or AlignConfig(), **overrides)
    src, dst = _points("src_points", src_points), _points("dst_points", dst_points)
    src, dst = src[np.isfinite(src).all(1)], dst[np.isfinite(dst).all(1)]
    if len(src) < 10 or len(dst) < 10:
        return _fail(f"too few finite points to align without correspondence ({len(src)} source, "
                     f"{len(dst)} destination; need 10 each)", t0)
    if _spread_rank(src) < 3 or _spread_rank(dst) < 3:
        return _fail("a point set is flat or collinear: its orientation is ambiguous", t0)
    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    rng = np.random.default_rng(cfg.seed)

    diag = max(np.ptp(src, 0).max(), np.ptp(dst, 0).max()) * np.sqrt(3)
    scale0 = 1.0
    if cfg.with_scale:
        scale0 = cfg.init_scale or float(np.sqrt(np.var(dst, 0).sum() / np.var(src, 0).sum()))

    def scale_ok(T: np.ndarray) -> bool:
        if cfg.scale_bounds is None:
            return True
        s = float(np.cbrt(np.linalg.det(T[:3, :3])))
        return cfg.scale_bounds[0] <= s <= cfg.scale_bounds[1]
    coarse = cfg.coarse_voxel_mm or float(np.linalg.norm(np.ptp(dst, 0))) / 30.0
    fine = cfg.fine_voxel_mm or coarse / 8.0

    # global stage on coarse clouds (the source pre-scaled so one voxel size fits both)
    src_c = _with_normals(_pcd(src * scale0).voxel_down_sample(coarse), 2.5 * coarse)
    dst_c = _with_normals(_pcd(dst).voxel_down_sample(coarse), 2.5 * coarse)
    if len(src_c.points) < 10 or len(dst_c.points) < 10:
        return _fail("point sets collapse to fewer than 10 points at the coarse voxel size "
                     f"{coarse:.3g} mm", t0)
    S0 = np.diag([scale0, scale0, scale0, 1.0])
    cands = []
    if "pca" in cfg.global_init:
        cands += _pca_candidates(src, dst, scale0)
    if "fpfh" in cfg.global_init:
        T = _fpfh_candidate(src_c, dst_c, coarse, cfg.seed)
        if T is not None:
            cands.append(T @ S0)
    if init_src_to_dst is not None:
        cands.append(np.asarray(init_src_to_dst, np.float64))
    if not cands:
        return _fail("global initialisation produced no candidate pose", t0)

    src_c_pts, dst_c_pts = np.asarray(src_c.points) / scale0, np.asarray(dst_c.points)
    src_tree, dst_tree = cKDTree(src_c_pts), cKDTree(dst_c_pts)
    src_c_raw = _pcd(src_c_pts)
    scored = []
    for T in cands:
        T = _icp(src_c_raw, dst_c, T, coarse, cfg.coarse_icp_iterations, cfg)
        score = _score(T, src_c_pts, dst_tree, dst_c_pts, src_tree, 2 * coarse)
        if np.isfinite(score) and np.isfinite(T).all() and scale_ok(T):
            scored.append((score, T))
    if not scored:
        return _fail("no candidate pose survived the coarse ICP"
                     + ("" if cfg.scale_bounds is None else f" with a scale in {cfg.scale_bounds}"), t0)
    # the best few *distinct* candidates go on to the fine levels (near-symmetric
    # bones, e.g. a vertebra, can put a wrong local minimum first at the coarse level)
    scored.sort(key=lambda st: st[0])
    centre = src.mean(0)
    distinct: list[np.ndarray] = []
    for _, T in scored:
        if all(not _same_pose(T, U, centre, coarse) for U in distinct):
            distinct.append(T)
        if len(distinct) == cfg.refine_candidates:
            break

    def capped(x):
        return x if len(x) <= cfg.max_points else x[rng.choice(len(x), cfg.max_points, replace=False)]

    levels, voxel = [], coarse / 2
    while True:
        voxel = max(voxel, fine)
        s_pcd = _pcd(capped(np.asarray(_pcd(src).voxel_down_sample(voxel).points)))
        d_pcd = _with_normals(_pcd(capped(np.asarray(_pcd(dst).voxel_down_sample(voxel).points))), 3 * voxel)
        levels.append((voxel, s_pcd, d_pcd))
        if voxel <= fine:
            break
        voxel /= 2

    best = None  # (fitness, -rmse, T)
    refined = []

    def refine(T: np.ndarray) -> bool:
        """Take one candidate through the fine levels; True when it overlaps well."""
        nonlocal best
        for voxel, s_pcd, d_pcd in levels:  # refinement, coarse to fine
            T = _icp(s_pcd, d_pcd, T, voxel, cfg.fine_icp_iterations, cfg)
        if not np.isfinite(T).all() or not scale_ok(T):
            return False
        fitness, rmse = _overlap(T, np.asarray(s_pcd.points), np.asarray(d_pcd.points), 3 * fine)
        refined.append((fitness, -rmse, T))
        if best is None or (fitness, -rmse) > best[:2]:
            best = (fitness, -rmse, T)
        return fitness >= cfg.good_fitness

    done = any(refine(T) for T in distinct)
    if not done and "fpfh" in cfg.global_init:
        for k in range(1, cfg.fpfh_retries + 1):
            T = _fpfh_candidate(src_c, dst_c, coarse, cfg.seed + k)
            if T is None:
                continue
            T = _icp(src_c_raw, dst_c, T @ S0, coarse, cfg.coarse_icp_iterations, cfg)
            if np.isfinite(T).all() and scale_ok(T) and refine(T):
                break
    if best is None:
        return _fail("ICP diverged (non-finite transform"
                     + (")" if cfg.scale_bounds is None else f" or scale outside {cfg.scale_bounds})"), t0)
    fitness, rmse, T = best[0], -best[1], best[2]
    s = float(np.cbrt(np.linalg.det(T[:3, :3])))
    refined.sort(key=lambda c: c[:2], reverse=True)
    res = AlignResult(T, s, rmse, fitness, True, "", time.perf_counter() - t0, len(cands),
                      [(U, f, -r) for f, r, U in refined])
    if fitness < cfg.min_fitness:
        res.success, res.reason = False, (f"only {fitness:.0%} of source points lie near the destination after "
                                          f"alignment (need {cfg.min_fitness:.0%})")
    return res
