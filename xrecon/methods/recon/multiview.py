"""From several X-rays of one bone, cameras in one shared world frame, to one
posed shape, and from there to one registered CT.

Every view ``i`` comes with its ``world_to_cam_i`` (a calibrated biplanar
system, C-arm shots at encoded angles). The bone has one pose in that world
frame, ``model_to_world``, and one shape; ``model_to_cam_i = world_to_cam_i @
model_to_world``.

:func:`reconstruct_views`
    1. each view alone: :func:`~xrecon.methods.recon.pipeline.reconstruct_from_prediction`
       (network read-out, PnP, pose + shape fit, residual step), giving
       ``model_to_cam_i`` and its correspondences;
    2. consensus: each successful view's rotation is a candidate; the position is
       where the rays from each source through the bone's centroid (as that view
       placed it) meet (:func:`xrecon.solve.multiview.triangulate_rays`): this,
       not the network's size estimate, sets the depth; the candidate under which
       most correspondences of *all* views reproject within
       ``MultiViewConfig.agreement_threshold_net_px`` wins;
    3. a view whose correspondences mostly disagree with that pose (a wrong bone,
       a garbage prediction) is refused with the reason; a view showing little of
       the bone (coverage below ``ReconConfig.min_coverage``) is down-weighted;
    4. joint fit of one pose and one shape (shape-model coefficients) to every
       accepted view's reprojection residuals at once (robust least squares,
       weighted by the predicted errors; the size mode is now free within
       ``MultiViewConfig.size_prior_sd``), inliers re-selected once;
    5. the residual step beyond the model's span on the pooled evidence (each
       view observes the two components of the deformation across its rays: two
       views at an angle observe all three);
    6. the posed shape in the world frame is the reconstruction.

:func:`register_ct_views`
    the CT's bone surface is aligned in 3D to the reconstruction (global init + ICP
    with scale), then one rigid ``ct_to_world`` and the model-to-CT similarity are
    refined on every view's reprojection residuals and the predictions' distance
    to the CT surface (:func:`xrecon.solve.multiview.refine_ct_to_world`); the CT's
    known size and the views' directions fix the depth (the single-view silhouette
    step is not used).

With one view both reduce to the single-view result (``model_to_world =
world_to_cam^-1 model_to_cam``). Frames: ``model`` (:mod:`~xrecon.methods.recon.shape`),
``world`` (the cameras' shared frame, that of their ``world_to_cam``), ``cam_i``
(OpenCV camera of view ``i``), ``ct`` (the CT's world frame as read).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from xrecon.errors import InputError
from xrecon.geometry import Camera
from xrecon.methods.recon.pipeline import (SCALE_BOUNDS, SCALE_CONFIDENT, ReconConfig, Reconstruction,
                                           _point_confidence, ct_in_canonical_frame, reconstruct_from_prediction)
from xrecon.methods.recon.shape import ShapeSpace, SurfaceLocation, points_at
from xrecon.solve.multiview import ViewPoints, apply, refine_ct_to_world, rotation_angle_deg, triangulate_rays

log = logging.getLogger(__name__)

#: the preliminary fit uses correspondences within this many times the agreement threshold
LOOSE = 3.0


@dataclass(frozen=True)
class MultiViewConfig:
    """Settings of :func:`reconstruct_views` beyond the single-view :class:`ReconConfig`.

    Attributes:
        agreement_threshold_net_px: a correspondence agrees with the consensus pose
            when it reprojects within this (network pixels; before the joint fit, so
            looser than the RANSAC threshold).
        min_view_agreement: a view with a smaller share of agreeing correspondences is
            refused (its bone is not the others' bone, or its prediction is poor).
        min_view_inliers: so is a view with fewer agreeing correspondences.
        size_prior_sd: prior spread (SD) of the size mode around the network's value
            when two or more views at an angle are used (one view: ``ReconConfig.size_prior_sd``).
        min_baseline_deg: views whose directions to the bone differ by less than this
            do not fix the depth; the result is then flagged.
        max_points_per_view: most correspondences of one view in the joint fit (a
            seeded random subset).
        max_nfev: function evaluations of each joint-fit round.
    """

    agreement_threshold_net_px: float = 6.0
    min_view_agreement: float = 0.3
    min_view_inliers: int = 12
    size_prior_sd: float = 1.0
    min_baseline_deg: float = 10.0
    max_points_per_view: int = 1500
    max_nfev: int = 60

    def __post_init__(self):
        if not self.agreement_threshold_net_px > 0:
            raise InputError(f"MultiViewConfig.agreement_threshold_net_px must be > 0, got "
                             f"{self.agreement_threshold_net_px}")
        if not 0 <= self.min_view_agreement <= 1:
            raise InputError(f"MultiViewConfig.min_view_agreement must be in [0, 1], got {self.min_view_agreement}")
        if not self.size_prior_sd > 0:
            raise InputError(f"MultiViewConfig.size_prior_sd must be > 0, got {self.size_prior_sd}")


@dataclass
class ViewReport:
    """What one view contributed.

    Attributes:
        index: the view's position in the input.
        status: ``"used"``, ``"down-weighted"`` (used with ``weight < 1``) or ``"refused"``.
        reason: why a view was refused or down-weighted ("" when used in full).
        weight: multiplies the view's residuals in the joint fit (0 when refused).
        n_correspondences: its correspondences on the shape model's surface.
        n_inliers: those used in the joint fit (final selection).
        agreement: share of its correspondences agreeing with the consensus pose.
        single_view_success, single_view_coverage: the view alone.
        rotation_to_consensus_deg: angle between the view's own pose and the consensus.
        reprojection_error_px: mean reprojection error of its inliers after the joint fit.
    """

    index: int
    status: str
    reason: str = ""
    weight: float = 0.0
    n_correspondences: int = 0
    n_inliers: int = 0
    agreement: float = float("nan")
    single_view_success: bool = False
    single_view_coverage: float = float("nan")
    rotation_to_consensus_deg: float = float("nan")
    reprojection_error_px: float = float("nan")

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass
class MultiViewReconstruction:
    """A posed bone shape recovered from several X-rays whose cameras share a world frame.

    Attributes:
        model_to_world: ``(4, 4)`` pose of the shape model frame in the world frame (NaN on failure).
        shape_sd: ``(K,)`` final coefficients; ``shape_sd_network`` the views' network values pooled.
        vertices_model: ``(V, 3)`` the reconstructed shape (model frame, mm; instance + residual).
        faces: ``(F, 3)``.
        cameras: one :class:`Camera` per view, each with its ``world_to_cam``.
        views: the single-view :class:`Reconstruction` of each view (step 1).
        reports: one :class:`ViewReport` per view.
        inliers: per view, ``(M_i,)`` which of ``views[i]``'s correspondences the joint fit used.
        point_ids: ``(N,)`` vertex ids of the output point cloud.
        points_uv: ``(n_views, N, 2)`` their projections in each view.
        points_confidence: ``(N,)`` image evidence for each point, best over the used views.
        baseline_deg: largest angle between two used views' directions to the bone.
        success, reason, confident, notes, timings_s, residual_rms_mm: as for :class:`Reconstruction`.
        coverage: share of the output points with image evidence in some used view.
    """

    model_to_world: np.ndarray
    shape_sd: np.ndarray
    shape_sd_network: np.ndarray
    vertices_model: np.ndarray
    faces: np.ndarray
    cameras: list
    views: list
    reports: list
    inliers: list
    point_ids: np.ndarray
    points_uv: np.ndarray
    points_confidence: np.ndarray
    baseline_deg: float
    success: bool
    reason: str = ""
    confident: bool = False
    notes: list = field(default_factory=list)
    timings_s: dict = field(default_factory=dict)
    residual_rms_mm: float = 0.0
    coverage: float = float("nan")

    @property
    def n_views(self) -> int:
        return len(self.cameras)

    @property
    def vertices_world(self) -> np.ndarray:
        """``(V, 3)`` the posed reconstruction in the world frame (mm)."""
        return apply(self.model_to_world, self.vertices_model)

    def world_to_cam(self, i: int) -> np.ndarray:
        return self.cameras[i].world_to_cam[0].numpy()

    def model_to_cam(self, i: int) -> np.ndarray:
        """``(4, 4)`` the shared pose seen from view ``i``."""
        return self.world_to_cam(i) @ self.model_to_world

    def vertices_cam(self, i: int) -> np.ndarray:
        return apply(self.model_to_cam(i), self.vertices_model)

    @property
    def points_world(self) -> np.ndarray:
        return self.vertices_world[self.point_ids]

    def used_views(self) -> list[int]:
        return [r.index for r in self.reports if r.status != "refused"]

    def summary(self) -> dict:
        """JSON-ready facts (no arrays)."""
        return {"success": self.success, "reason": self.reason, "confident": self.confident,
                "notes": list(self.notes), "n_views": self.n_views, "views_used": self.used_views(),
                "baseline_deg": round(float(self.baseline_deg), 2), "coverage": self.coverage,
                "residual_rms_mm": self.residual_rms_mm,
                "shape_sd": [round(float(x), 4) for x in self.shape_sd],
                "shape_sd_network": [round(float(x), 4) for x in self.shape_sd_network],
                "views": [r.to_dict() for r in self.reports],
                "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()}}


def _location(rec: Reconstruction) -> SurfaceLocation:
    return SurfaceLocation(rec.corr_triangle, rec.corr_barycentric, np.zeros(len(rec.corr_triangle)))


def _linear_points(space: ShapeSpace, rec: Reconstruction) -> tuple[np.ndarray, np.ndarray]:
    """``A (M, 3)``, ``B (M, 3, K)``: a view's correspondences as ``A + B b`` (model frame)."""
    A = points_at(space.mean_vertices, space.faces, _location(rec))
    vids = space.faces[rec.corr_triangle]
    B = np.einsum("mj,kmjd->mdk", rec.corr_barycentric, space.modes_mm[:, vids])
    return A, B


def _project(K: np.ndarray, pts_cam: np.ndarray) -> np.ndarray:
    h = pts_cam @ K.T
    return h[:, :2] / np.maximum(h[:, 2:3], 1e-6)


def _reproj_errors(T_model_to_cam: np.ndarray, K: np.ndarray, pts_model: np.ndarray, uv: np.ndarray) -> np.ndarray:
    pc = apply(T_model_to_cam, pts_model)
    err = np.linalg.norm(_project(K, pc) - uv, axis=1)
    return np.where(pc[:, 2] > 0, err, np.inf)


def _fit_views(space, data: list[dict], model_to_world0: np.ndarray, b0: np.ndarray, prior_sd: np.ndarray,
               max_nfev: int) -> tuple[np.ndarray, np.ndarray, bool, str]:
    """Robust least squares of one ``model_to_world`` and one shape over every view in ``data``
    (each: ``A, B, uv, w, K, world_to_cam, sigma_px``); returns pose, shape, success, reason."""
    from scipy.optimize import least_squares
    from scipy.spatial.transform import Rotation

    R0, t0 = model_to_world0[:3, :3], model_to_world0[:3, 3]
    # translation in a frame centred on the bone (decouples rotation and translation)
    c = space.centre_mm

    def unpack(x):
        R = Rotation.from_rotvec(x[:3]).as_matrix() @ R0
        T = np.eye(4)
        T[:3, :3] = R
        T[:3, 3] = R0 @ c + t0 + x[3:6] - R @ c
        return T, x[6:]

    def residuals(x):
        T, b = unpack(x)
        out = []
        for d in data:
            pts = d["A"] + d["B"] @ b
            pc = apply(d["world_to_cam"] @ T, pts)
            out.append(((_project(d["K"], pc) - d["uv"]) * d["sw"][:, None]).ravel())
        out.append((b - b0) / prior_sd)
        return np.concatenate(out)

    for d in data:
        d["sw"] = np.sqrt(np.clip(d["w"], 0.0, None)) / d["sigma_px"]
    try:
        sol = least_squares(residuals, np.concatenate([np.zeros(6), b0]), loss="soft_l1", f_scale=1.0,
                            max_nfev=max_nfev, x_scale="jac")
    except (ValueError, np.linalg.LinAlgError) as exc:
        return model_to_world0, b0, False, f"least squares failed: {exc}"
    T, b = unpack(sol.x)
    if not (np.isfinite(T).all() and np.isfinite(b).all()):
        return model_to_world0, b0, False, "non-finite result"
    return T, b, True, ""


def _pooled_residual(space, inst: np.ndarray, data: list[dict], T: np.ndarray, cfg) -> tuple[np.ndarray, int]:
    """The residual deformation (:mod:`~xrecon.methods.recon.residual`) on every used view's
    inliers at once: view ``i`` observes the components across its rays."""
    from xrecon.methods.recon.residual import _kernel, _thin, ray_residuals

    xs, ys, Hs, sigs = [], [], [], []
    per_view = max(1, cfg.max_points // max(1, len(data)))
    for d in data:
        x = d["points"]
        if len(x) == 0:
            continue
        keep = _thin(x, -d["sigma_mm"], cfg.min_spacing_mm, per_view)
        m2c = d["world_to_cam"] @ T
        y, P = ray_residuals(x[keep], d["uv"][keep], m2c, d["K"])
        xs.append(x[keep])
        ys.append(y)
        Hs.append(P @ m2c[:3, :3])
        sigs.append(d["sigma_mm"][keep])
    if not xs:
        return np.zeros_like(inst), 0
    x, y, H, sig = np.concatenate(xs), np.concatenate(ys), np.concatenate(Hs), np.concatenate(sigs)
    s2 = cfg.amplitude_mm**2 / 3.0
    kxx = _kernel(x, x, s2, cfg.length_mm)
    HH = np.einsum("iad,jbd->iajb", H, H)
    S = (kxx[:, None, :, None] * HH).reshape(2 * len(x), 2 * len(x))
    S[np.diag_indices_from(S)] += np.repeat((cfg.sigma_scale * sig) ** 2 + cfg.noise_mm**2, 2)
    try:
        alpha = np.linalg.solve(S, y.reshape(-1)).reshape(-1, 2)
    except np.linalg.LinAlgError:
        return np.zeros_like(inst), 0
    w = np.einsum("mad,ma->md", H, alpha)
    return _kernel(inst, x, s2, cfg.length_mm) @ w, len(x)


def _fail(space, cams, views, reports, reason: str, timings: dict, n_points: int) -> MultiViewReconstruction:
    b = np.mean([v.shape_sd_network for v in views], axis=0)
    ids = space.vertex_subset(n_points, seed=0)
    return MultiViewReconstruction(np.full((4, 4), np.nan), b, b, space.instance(b), space.faces, cams, views,
                                   reports, [np.zeros(len(v.corr_uv), bool) for v in views], ids,
                                   np.full((len(cams), len(ids), 2), np.nan), np.zeros(len(ids)), float("nan"),
                                   False, reason, False, [reason], timings)


def reconstruct_views(preds: list, space: ShapeSpace, cameras: list[Camera], config: ReconConfig = ReconConfig(),
                      mv_config: MultiViewConfig = MultiViewConfig(), combine=None) -> MultiViewReconstruction:
    """Steps 1-6 of the module docstring from each view's network read-out
    (:class:`~xrecon.methods.recon.predict.DensePrediction`) and its camera (whose
    ``world_to_cam`` places it in the shared world frame). ``combine`` (default
    :func:`combine_views`) joins the single-view reconstructions; views without a
    shared frame pass :func:`~xrecon.methods.recon.independent_views.combine_independent`."""
    combine = combine or combine_views
    if len(preds) != len(cameras) or not preds:
        raise InputError(f"{len(preds)} predictions but {len(cameras)} cameras: one camera per view")
    t0 = time.perf_counter()
    cams = [c[0] for c in cameras]
    views = [reconstruct_from_prediction(p, space, c, config) for p, c in zip(preds, cams)]
    px = [c.width / p.net_camera.width for p, c in zip(preds, cams)]
    out = combine(views, space, cams, px, config, mv_config)
    out.timings_s["single_views"] = sum(v.timings_s.get("total", 0.0) for v in views)
    out.timings_s["total"] = time.perf_counter() - t0
    return out


def reconstruct_images(net, space: ShapeSpace, images: list, cameras: list[Camera],
                       config: ReconConfig = ReconConfig(),
                       mv_config: MultiViewConfig = MultiViewConfig(), combine=None) -> MultiViewReconstruction:
    """:func:`reconstruct_views` (with ``combine``) from X-rays ``images[i]: (H_i, W_i)`` and their cameras."""
    from xrecon.methods.recon.predict import predict_dense

    if len(images) != len(cameras) or not images:
        raise InputError(f"{len(images)} images but {len(cameras)} cameras: one camera per image")
    t0 = time.perf_counter()
    threshold = config.mask_threshold if config.mask_threshold is not None else getattr(net, "mask_threshold", 0.5)
    preds = [predict_dense(net, img, cam, threshold, config.tta_shifts) for img, cam in zip(images, cameras)]
    t_net = time.perf_counter() - t0
    out = reconstruct_views(preds, space, cameras, config, mv_config, combine)
    for v, p in zip(out.views, preds):
        v.mask_prob = p.mask_prob
    out.timings_s["network"] = t_net
    out.timings_s["total"] = time.perf_counter() - t0
    return out


def combine_views(views: list[Reconstruction], space: ShapeSpace, cameras: list[Camera], px_per_net_px: list[float],
                  config: ReconConfig = ReconConfig(),
                  mv_config: MultiViewConfig = MultiViewConfig()) -> MultiViewReconstruction:
    """Steps 2-6 of the module docstring from the single-view reconstructions ``views``
    (step 1) and their cameras; ``px_per_net_px[i]``: image pixels per network pixel of view ``i``."""
    cfg, mv = config, mv_config
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    n = len(views)
    W = [c.world_to_cam[0].numpy() for c in cameras]
    Ks = [c.K[0].numpy() for c in cameras]
    reports = [ViewReport(i, "refused", single_view_success=bool(v.success), single_view_coverage=float(v.coverage),
                          n_correspondences=int(len(v.corr_uv))) for i, v in enumerate(views)]
    ok = [i for i, v in enumerate(views) if v.success]
    if not ok:
        for r, v in zip(reports, views):
            r.reason = f"no single-view reconstruction: {v.reason}"
        why = "; ".join(f"view {i}: {v.reason}" for i, v in enumerate(views))
        return _fail(space, cameras, views, reports, f"no view gave a reconstruction ({why})", timings, cfg.n_points)

    # ---- step 2: consensus pose
    def view_weight(v: Reconstruction) -> float:
        cov = v.coverage if np.isfinite(v.coverage) else 0.0
        return float(np.clip(cov / max(cfg.min_coverage, 1e-9), 0.1, 1.0))

    cw = np.array([max(int(views[i].inliers.sum()), 1) * view_weight(views[i]) for i in ok], np.float64)
    b_pool = (np.array([views[i].shape_sd_network for i in ok]) * cw[:, None]).sum(0) / cw.sum()
    inst_pool = space.instance(b_pool)
    c_pool = inst_pool.mean(0)
    m2w = {i: np.linalg.inv(W[i]) @ views[i].model_to_cam for i in ok}
    origins, dirs, cents = [], [], []
    for i in ok:
        c_i = views[i].vertices_model.mean(0)
        x_cam = apply(views[i].model_to_cam, c_i[None])[0]
        Rwc = W[i][:3, :3]
        origins.append(-Rwc.T @ W[i][:3, 3])
        dirs.append(Rwc.T @ x_cam)
        cents.append(apply(m2w[i], c_i[None])[0])
    dirs_u = np.array(dirs) / np.linalg.norm(dirs, axis=1, keepdims=True)
    baseline = max([float(np.degrees(np.arccos(np.clip(dirs_u[a] @ dirs_u[b], -1, 1))))
                    for a in range(len(ok)) for b in range(a + 1, len(ok))], default=0.0)
    centre_world = triangulate_rays(np.array(origins), np.array(dirs), cw,
                                    prior_point=(np.array(cents) * cw[:, None]).sum(0) / cw.sum())
    # one view fixes the bone only up to a scaling about its source: the ratio of the
    # triangulated distance to the view's own is its size error (used for scoring only)
    ratios = np.array([np.linalg.norm(centre_world - o) / np.linalg.norm(c - o) for o, c in zip(origins, cents)])
    size_factor = float(np.clip((ratios * cw).sum() / cw.sum(), 0.7, 1.4)) if len(ok) >= 2 else 1.0
    A_B = {i: _linear_points(space, v) for i, v in enumerate(views) if len(v.corr_uv)}
    thr = {i: mv.agreement_threshold_net_px * px_per_net_px[i] for i in range(n)}

    def errors(T: np.ndarray, b_pts: dict) -> dict:
        return {i: _reproj_errors(W[i] @ T, Ks[i], b_pts[i], views[i].corr_uv) for i in A_B}

    pts_pool = {i: c_pool + size_factor * (A + B @ b_pool - c_pool) for i, (A, B) in A_B.items()}
    best, best_cost = None, np.inf
    for i in ok:
        R = m2w[i][:3, :3]
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, centre_world - R @ c_pool
        e = errors(T, pts_pool)
        cost = sum(float(np.minimum((e[j] / thr[j]) ** 2, 1.0).sum()) for j in e)
        if cost < best_cost:
            best, best_cost = T, cost
    timings["consensus"] = time.perf_counter() - t0

    # ---- step 3: which views agree. A preliminary fit on every correspondence within
    # LOOSE x the agreement threshold of the consensus pose (the pooled shape's errors
    # still show there), then each view's agreement under the fitted pose and shape
    prior = np.full(len(b_pool), cfg.shape_prior_sd)
    # the size mode is freed only where two views that show enough of the bone look at it from
    # different directions: slivers of bone at the detector's edge do not fix the depth
    n_full = sum(view_weight(views[i]) >= 1.0 for i in ok)
    prior[0] = mv.size_prior_sd if (n_full >= 2 and baseline >= mv.min_baseline_deg) else cfg.size_prior_sd
    rng = np.random.default_rng(cfg.seed)

    def view_data(sel: dict, weight: dict) -> list[dict]:
        data = []
        for i in sorted(sel):
            idx = np.flatnonzero(sel[i])
            if len(idx) > mv.max_points_per_view:
                idx = np.sort(rng.choice(idx, mv.max_points_per_view, replace=False))
            if len(idx) == 0:
                continue
            sig = views[i].corr_sigma_mm[idx]
            A, B = A_B[i]
            data.append({"A": A[idx], "B": B[idx], "uv": views[i].corr_uv[idx], "K": Ks[i], "world_to_cam": W[i],
                         "sigma_px": cfg.sigma_px_net * px_per_net_px[i],
                         "w": weight[i] * (np.median(sig) / np.maximum(sig, 0.5)) ** 2})
        return data

    e = errors(best, pts_pool)
    loose = {i: e[i] < LOOSE * thr[i] for i in e}
    weight = {i: (view_weight(views[i]) if views[i].success else 0.5) for i in range(n)}
    t1 = time.perf_counter()
    T, b, fit_ok, why = _fit_views(space, view_data(loose, weight), best, b_pool, prior, mv.max_nfev)
    notes: list[str] = []
    info: list[str] = []
    if not fit_ok:
        info.append(f"preliminary joint fit skipped: {why}")
        T, b = best, b_pool
    e = errors(T, {i: A + B @ b for i, (A, B) in A_B.items()})
    agree = {}
    for i in range(n):
        r, v = reports[i], views[i]
        if v.success:
            r.rotation_to_consensus_deg = rotation_angle_deg(m2w[i][:3, :3], T[:3, :3])
        if i not in A_B:
            r.reason = f"no correspondences: {v.reason}"
            continue
        a = e[i] < thr[i]
        r.agreement = float(a.mean())
        if r.agreement < mv.min_view_agreement:
            r.reason = (f"its correspondences disagree with the other views: {100 * r.agreement:.0f} % "
                        f"({int(a.sum())}) within {mv.agreement_threshold_net_px:g} network px of the joint "
                        f"pose (need {100 * mv.min_view_agreement:.0f} %): another bone, or a poor prediction"
                        + ("" if v.success else f"; alone: {v.reason}"))
            continue
        if a.sum() < mv.min_view_inliers:
            r.reason = (f"too little bone: {int(a.sum())} correspondences agree with the joint pose (need "
                        f"{mv.min_view_inliers})" + ("" if v.success else f"; alone: {v.reason}"))
            continue
        agree[i] = a
        r.weight = weight[i]
        r.status = "used" if r.weight >= 1.0 else "down-weighted"
        if r.weight < 1.0:
            r.reason = (f"the view shows little of the bone (coverage {v.coverage:.3f} < {cfg.min_coverage})"
                        if v.success else f"alone it gave no pose ({v.reason})")
    if not agree:
        return _fail(space, cameras, views, reports, "no view agrees with the joint pose", timings, cfg.n_points)

    # ---- step 4: joint fit of one pose and one shape on the agreeing views
    used = sorted(agree)
    residual_rms = 0.0
    if len(used) == 1 and views[used[0]].success:
        # one usable view: its own single-view result (pose, shape, residual step, inliers)
        i = used[0]
        T, b, inst = m2w[i], views[i].shape_sd, views[i].vertices_model
        inl = {i: views[i].inliers & agree[i] if (views[i].inliers & agree[i]).sum() >= 6 else views[i].inliers}
        residual_rms = views[i].residual_rms_mm
    else:
        if sum(reports[i].weight >= 1.0 for i in used) < 2 or baseline < mv.min_baseline_deg:
            prior[0] = cfg.size_prior_sd
        if len(used) < len(loose) or not fit_ok:
            T, b, fit_ok, why = _fit_views(space, view_data(agree, weight), T if fit_ok else best, b_pool, prior,
                                           mv.max_nfev)
            if not fit_ok:
                info.append(f"joint pose + shape fit skipped: {why}")
                T, b = best, b_pool
        # inliers again under the fitted pose and shape, at the single-view RANSAC threshold; fit once more
        inl = {}
        for i in used:
            A, B = A_B[i]
            err = _reproj_errors(W[i] @ T, Ks[i], A + B @ b, views[i].corr_uv)
            inl[i] = err < cfg.reproj_threshold_net_px * px_per_net_px[i]
            if inl[i].sum() < 6:
                inl[i] = agree[i]
        if fit_ok:
            T2, b2, fit_ok2, why2 = _fit_views(space, view_data(inl, weight), T, b_pool, prior, mv.max_nfev)
            if fit_ok2:
                T, b = T2, b2
            else:
                info.append(f"final joint fit skipped: {why2}")
        timings["joint_fit"] = time.perf_counter() - t1

        # ---- step 5: residual beyond the span, pooled
        inst = space.instance(b)
        full = []
        for i in used:
            loc = _location(views[i])
            sel = inl[i]
            full.append({"points": points_at(inst, space.faces, loc)[sel], "uv": views[i].corr_uv[sel], "K": Ks[i],
                         "world_to_cam": W[i], "sigma_mm": views[i].corr_sigma_mm[sel]})
        if cfg.residual is not None and sum(len(d["points"]) for d in full) >= 12:
            t3 = time.perf_counter()
            u, _ = _pooled_residual(space, inst, full, T, cfg.residual)
            inst = inst + u
            residual_rms = float(np.sqrt((u**2).sum(1).mean()))
            timings["residual"] = time.perf_counter() - t3

    # ---- step 6: checks, per-view diagnostics, output points
    for i in used:
        loc = _location(views[i])
        p = points_at(inst, space.faces, loc)[inl[i]]
        reports[i].n_inliers = int(inl[i].sum())
        reports[i].reprojection_error_px = float(np.mean(_reproj_errors(W[i] @ T, Ks[i], p,
                                                                        views[i].corr_uv[inl[i]])))
    depth_ok = all((apply(W[i] @ T, inst)[:, 2] > 0).all() for i in used)
    ids = space.vertex_subset(cfg.n_points, seed=0)
    points_uv = np.stack([_project(Ks[i], apply(W[i] @ T, inst[ids])) for i in range(n)])
    conf = np.zeros(len(ids))
    for i in used:
        canon = points_at(space.mean_vertices, space.faces, _location(views[i]))[inl[i]]
        conf = np.maximum(conf, _point_confidence(space, ids, canon, points_uv[i], cameras[i]))
    coverage = float((conf > 0.5).mean())
    refused = [r for r in reports if r.status == "refused"]
    for r in refused:
        info.append(f"view {r.index} refused: {r.reason}")
    for r in reports:
        if r.status == "down-weighted":
            info.append(f"view {r.index} down-weighted to {r.weight:.2f}: {r.reason}")
    if not depth_ok:
        return _fail(space, cameras, views, reports, "the joint pose puts the bone behind an X-ray source (the "
                     "views' correspondences are inconsistent)", timings, cfg.n_points)
    if len(used) < 2:
        notes.append(f"only view {used[0]} is usable: size and depth rest on the network's size estimate, as "
                     "with one X-ray")
    elif baseline < mv.min_baseline_deg:
        notes.append(f"the views look at the bone from directions only {baseline:.1f} deg apart (< "
                     f"{mv.min_baseline_deg:g}): they do not fix its depth")
    elif sum(reports[i].weight >= 1.0 for i in used) < 2:
        notes.append(f"fewer than two views show {100 * cfg.min_coverage:.0f} % of the bone or more: its size and "
                     "depth rest partly on the network's size estimate")
    if coverage < cfg.min_coverage:
        notes.append(f"the views show little of the bone ({100 * coverage:.1f} % of its surface near the "
                     f"correspondences, < {100 * cfg.min_coverage:.0f} %)")
    n_inl = sum(r.n_inliers for r in reports)
    if n_inl < cfg.min_inliers:
        notes.append(f"few inliers over all views ({n_inl} < {cfg.min_inliers})")
    if np.abs(b).max() >= 2.9:
        notes.append("shape coefficients at the model's bound (unusual anatomy or not a pelvis?)")
    lo, hi = cfg.depth_range_mm
    for i in used:
        d = float(apply(W[i] @ T, inst)[:, 2].mean())
        if not lo <= d <= hi:
            notes.append(f"view {i}: the bone is {d:.0f} mm from the source, outside the training range "
                         f"({lo:.0f}-{hi:.0f} mm)")
    timings["combine"] = time.perf_counter() - t0
    inliers = [np.zeros(len(v.corr_uv), bool) for v in views]
    for i in used:
        inliers[i] = inl[i]
    return MultiViewReconstruction(T, b, b_pool, inst, space.faces, cameras, views, reports, inliers, ids, points_uv,
                                   conf, baseline, True, "", not notes, notes + info, timings, residual_rms, coverage)


# ---------------------------------------------------------------------------- CT registration
@dataclass
class MultiViewCTRegistration:
    """A CT posed in the shared world frame through a :class:`MultiViewReconstruction`.

    Attributes:
        ct_to_world: ``(4, 4)`` rigid CT-to-world pose (NaN on failure).
        ct_to_cam: one ``(4, 4)`` ``world_to_cam_i @ ct_to_world`` per view.
        ct_to_model: ``(4, 4)`` similarity CT frame -> model frame.
        scale: size of the reconstruction relative to the CT.
        reprojection_error_px: ``(n_views,)`` mean reprojection error of each used view (NaN if unused).
        surface_residual_mm: mean distance of the predictions (CT frame) to the CT surface.
        n_used: correspondences behind the pose.
        success, reason, confident, notes, timings_s: as for :class:`~xrecon.methods.recon.pipeline.CTRegistration`.
    """

    ct_to_world: np.ndarray
    ct_to_cam: list
    ct_to_model: np.ndarray
    scale: float
    reprojection_error_px: np.ndarray
    surface_residual_mm: float
    n_used: int
    success: bool
    reason: str = ""
    confident: bool = False
    notes: list = field(default_factory=list)
    timings_s: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"success": self.success, "reason": self.reason, "confident": self.confident,
                "notes": list(self.notes), "scale_reconstruction_over_ct": self.scale, "n_used": self.n_used,
                "reprojection_error_px": [round(float(x), 4) for x in self.reprojection_error_px],
                "surface_residual_mm": self.surface_residual_mm,
                "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()}}


def _inv_similarity(T: np.ndarray) -> np.ndarray:
    s = float(np.cbrt(np.linalg.det(T[:3, :3])))
    out = np.eye(4)
    out[:3, :3] = T[:3, :3].T / s**2
    out[:3, 3] = -out[:3, :3] @ T[:3, 3]
    return out


def _normals(points: np.ndarray) -> np.ndarray:
    import open3d as o3d
    from scipy.spatial import cKDTree

    spacing = float(np.median(cKDTree(points).query(points[: min(len(points), 2000)], k=2)[0][:, 1]))
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=6 * spacing, max_nn=30))
    return np.asarray(pcd.normals)


def _ct_alignment_candidates(ct_points: np.ndarray, ct_normals: np.ndarray | None, vertices_model: np.ndarray,
                             config: ReconConfig, max_ct_points: int, hypotheses: int):
    """The CT surface in its principal-axis frame (points, normals, ``ct_to_canon``) and
    up to ``hypotheses`` canon-to-model similarities from aligning it to the
    reconstructed shape (each seeds one joint fit); ``reason`` says why there are none."""
    from xrecon.solve.align3d import AlignConfig, align_surfaces

    canon, canon_n, ct_to_canon = ct_in_canonical_frame(ct_points, ct_normals, max_ct_points, config.seed)
    if canon_n is None:
        canon_n = _normals(canon)
    align_cfg = AlignConfig(with_scale=True, init_scale=1.0, scale_bounds=SCALE_BOUNDS, global_init=("pca",),
                            max_points=5000, seed=config.seed)
    align = align_surfaces(canon, vertices_model, config=align_cfg)
    cands = [U for U, fitness, _ in align.candidates if fitness >= align_cfg.min_fitness][:max(1, hypotheses)]
    if not cands and align.success:
        cands = [align.src_to_dst]
    reason = "" if cands else f"the CT's bone surface did not align to the reconstruction: {align.reason}"
    return canon, canon_n, ct_to_canon, cands, reason


def register_ct_views(mrec: MultiViewReconstruction, ct_points: np.ndarray, ct_normals: np.ndarray | None = None,
                      config: ReconConfig = ReconConfig(), max_ct_points: int = 40000, hypotheses: int = 3,
                      ct_mesh: tuple[np.ndarray, np.ndarray] | None = None) -> MultiViewCTRegistration:
    """Pose a CT bone surface ``ct_points: (P, 3)`` (CT frame, mm; unit normals
    ``ct_normals: (P, 3)`` when known: sample the surface densely, as for
    :func:`~xrecon.methods.recon.pipeline.register_ct_points`) in the world frame of
    ``mrec``'s cameras (module docstring). Up to ``hypotheses`` 3D alignments are
    each refined; the lowest robust cost wins.

    When only one view is usable, that view's single-view registration
    (:func:`~xrecon.methods.recon.pipeline.register_ct_points`, with its silhouette
    step when ``ct_mesh`` (vertices, faces; CT frame) is given) is mapped to the world.
    """
    t0 = time.perf_counter()
    n = mrec.n_views
    nan44 = np.full((4, 4), np.nan)

    def fail(reason: str, scale: float = float("nan"), timings=None) -> MultiViewCTRegistration:
        return MultiViewCTRegistration(nan44, [nan44.copy() for _ in range(n)], nan44, scale, np.full(n, np.nan),
                                       float("nan"), 0, False, reason, False, list(mrec.notes) + [reason],
                                       timings or {})

    if not mrec.success:
        return fail(f"no reconstruction to register to: {mrec.reason}")
    used = mrec.used_views()
    if len(used) == 1 and mrec.views[used[0]].success:
        from xrecon.methods.recon.pipeline import register_ct_points

        i = used[0]
        cfg1 = config if ct_mesh is not None else dataclasses.replace(config, silhouette="off")
        one = register_ct_points(mrec.views[i], ct_points, ct_normals, cfg1, max_ct_points, ct_mesh=ct_mesh)
        if not one.success:
            return fail(one.reason, one.scale, one.timings_s)
        ct_to_world = np.linalg.inv(mrec.world_to_cam(i)) @ one.ct_to_cam
        errs = np.full(n, np.nan)
        errs[i] = one.reprojection_error_px
        return MultiViewCTRegistration(ct_to_world, [mrec.world_to_cam(j) @ ct_to_world for j in range(n)],
                                       one.ct_to_model, one.scale, errs, one.surface_residual_mm, one.n_used, True,
                                       "", one.confident and mrec.confident, list(mrec.notes) + [
                                           f"registered through view {i} alone"] + one.notes[len(mrec.views[i].notes):],
                                       one.timings_s)
    canon, canon_n, ct_to_canon, cands, reason = _ct_alignment_candidates(ct_points, ct_normals, mrec.vertices_model,
                                                                           config, max_ct_points, hypotheses)
    timings = {"align": time.perf_counter() - t0}
    if not cands:
        return fail(reason, timings=timings)
    views = []
    for i in used:
        v = mrec.views[i]
        sel = mrec.inliers[i]
        loc = _location(v)
        views.append(ViewPoints(points_at(mrec.vertices_model, mrec.faces, loc)[sel], v.corr_uv[sel],
                                1.0 / np.maximum(v.corr_sigma_mm[sel], 0.5), mrec.cameras[i].K[0].numpy(),
                                mrec.world_to_cam(i), config.sigma_px_net * v.px_per_net_px))
    t1 = time.perf_counter()
    best = None
    for U in cands:  # U: canon -> model similarity
        s = float(np.cbrt(np.linalg.det(U[:3, :3])))
        init = np.eye(4)
        init[:3, :3] = mrec.model_to_world[:3, :3] @ (U[:3, :3] / s)
        init[:3, 3] = apply(mrec.model_to_world, U[:3, 3][None])[0]  # the CT's centroid (canon origin) in place
        fit = refine_ct_to_world(init, _inv_similarity(U), views, canon, canon_n, sigma_mm=2.0, seed=config.seed)
        if fit.success and (best is None or fit.cost_history[-1] < best.cost_history[-1]):
            best = fit
    timings["refine"] = time.perf_counter() - t1
    timings["total"] = time.perf_counter() - t0
    if best is None:
        return fail("the several-view refinement of the CT pose failed", timings=timings)
    if not SCALE_BOUNDS[0] <= best.scale <= SCALE_BOUNDS[1]:
        return fail(f"the reconstruction came out {best.scale:.2f} x the CT's size (expected {SCALE_BOUNDS[0]}-"
                    f"{SCALE_BOUNDS[1]}): the alignment failed, or the CT holds another bone", best.scale, timings)
    ct_to_world = best.ct_to_world @ ct_to_canon
    notes = list(mrec.notes)
    if not SCALE_CONFIDENT[0] < best.scale < SCALE_CONFIDENT[1]:
        notes.append(f"the reconstruction is {best.scale:.2f} x the CT's size: is it the same bone?")
    n_used = sum(len(v.uv) for v in views)
    if n_used < config.min_inliers:
        notes.append(f"few correspondences ({n_used} < {config.min_inliers})")
    errs = np.full(n, np.nan)
    errs[used] = best.reprojection_error_px
    return MultiViewCTRegistration(ct_to_world, [mrec.world_to_cam(i) @ ct_to_world for i in range(n)],
                                   _inv_similarity(best.model_to_ct) @ ct_to_canon, best.scale, errs,
                                   best.surface_residual_mm, n_used, True, "",
                                   mrec.confident and len(notes) == len(mrec.notes), notes, timings)
