"""Several X-rays of one bone whose relative poses are unknown (films taken
separately, no shared frame): one shape, one pose per view, and from there one
registered CT per view.

Nothing relates the views' cameras, so nothing fixes the bone's distance to any
source beyond what one view gives (the network's size estimate; a CT's known
size): what the views share is the bone's *shape*, and, with a CT, the mapping
of the predicted model points onto the CT.

:func:`combine_independent`
    1. each view alone: :func:`~xrecon.methods.recon.pipeline.reconstruct_from_prediction`
       (network read-out, PnP, pose + shape fit, residual step), giving
       ``model_to_cam_i`` and its correspondences;
    2. joint fit of one shape (shape-model coefficients, the size mode kept at the
       single-view prior ``ReconConfig.size_prior_sd``) and one ``model_to_cam_i``
       per view to every view's reprojection residuals (robust least squares,
       weighted by the predicted errors), starting from the single-view poses;
    3. a view whose correspondences mostly disagree with the shared shape (share
       within ``MultiViewConfig.agreement_threshold_net_px`` below
       ``MultiViewConfig.min_view_agreement``: another bone, a misread view) is
       refused and the fit repeated without it; a view showing little of the bone
       is down-weighted (as :mod:`~xrecon.methods.recon.multiview`);
    4. inliers re-selected at the single-view RANSAC threshold, fitted once more;
    5. the residual step beyond the model's span on the pooled evidence (each view
       observes the deformation across its own rays).

:func:`register_ct_independent`
    the CT's bone surface is aligned in 3D to the shared shape (global init + ICP
    with scale); each alignment seeds :func:`xrecon.solve.multiview.refine_ct_to_cams`
    (one rigid ``ct_to_cam_i`` per view, one model-to-CT similarity for all, on every
    view's reprojection residuals and the predictions' distance to the CT surface);
    the lowest cost wins; then each view's silhouette step
    (``ReconConfig.silhouette``, as for one view), which is what fixes each view's
    depth beyond the correspondences.

With one usable view both reduce to that view's single-view result. Frames:
``model`` (:mod:`~xrecon.methods.recon.shape`), ``cam_i`` (OpenCV camera of view
``i``), ``ct`` (the CT's world frame as read); there is no world frame.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from xrecon.geometry import Camera
from xrecon.methods.recon.multiview import (MultiViewConfig, ViewReport, _ct_alignment_candidates, _inv_similarity,
                                            _linear_points, _location, _pooled_residual, _project, _reproj_errors,
                                            reconstruct_images, reconstruct_views)
from xrecon.methods.recon.pipeline import (SCALE_BOUNDS, SCALE_CONFIDENT, ReconConfig, Reconstruction,
                                           _point_confidence, _silhouette_refine)
from xrecon.methods.recon.shape import ShapeSpace, points_at
from xrecon.solve.multiview import ViewPoints, apply, refine_ct_to_cams

log = logging.getLogger(__name__)


@dataclass
class IndependentViewsReconstruction:
    """One bone shape and one pose per view, from X-rays whose relative poses are unknown.

    Attributes:
        model_to_cam: one ``(4, 4)`` pose of the shape model frame in each view's camera
            (NaN for a refused view).
        shape_sd: ``(K,)`` final coefficients; ``shape_sd_network`` the views' network values pooled.
        vertices_model: ``(V, 3)`` the shared shape (model frame, mm; instance + residual).
        faces: ``(F, 3)``.
        cameras: one :class:`Camera` per view (intrinsics; their ``world_to_cam`` is not used).
        views: the single-view :class:`Reconstruction` of each view (step 1).
        reports: one :class:`~xrecon.methods.recon.multiview.ViewReport` per view.
        inliers: per view, ``(M_i,)`` which of ``views[i]``'s correspondences the joint fit used.
        point_ids: ``(N,)`` vertex ids of the output point cloud.
        points_uv: ``(n_views, N, 2)`` their projections in each view (NaN for a refused view).
        points_confidence: ``(n_views, N)`` image evidence for each point in each view.
        success, reason, confident, notes, timings_s, residual_rms_mm: as for :class:`Reconstruction`.
        coverage: ``(n_views,)`` share of the output points with image evidence in each view.
    """

    model_to_cam: list
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
    success: bool
    reason: str = ""
    confident: bool = False
    notes: list = field(default_factory=list)
    timings_s: dict = field(default_factory=dict)
    residual_rms_mm: float = 0.0
    coverage: np.ndarray | None = None

    @property
    def n_views(self) -> int:
        return len(self.cameras)

    def used_views(self) -> list[int]:
        return [r.index for r in self.reports if r.status != "refused"]

    def vertices_cam(self, i: int) -> np.ndarray:
        """``(V, 3)`` the shared shape posed in view ``i``'s camera (mm)."""
        return apply(self.model_to_cam[i], self.vertices_model)

    def view_reconstruction(self, i: int) -> Reconstruction:
        """View ``i`` as a single-view :class:`Reconstruction` carrying the shared shape, its
        joint pose and the joint fit's inliers (what the single-view CT registration takes)."""
        v = self.views[i]
        if i not in self.used_views():
            return v
        loc = _location(v)
        return dataclasses.replace(v, model_to_cam=self.model_to_cam[i], shape_sd=self.shape_sd,
                                   vertices_model=self.vertices_model,
                                   corr_instance_mm=points_at(self.vertices_model, self.faces, loc),
                                   inliers=self.inliers[i], point_ids=self.point_ids, points_uv=self.points_uv[i],
                                   points_confidence=self.points_confidence[i], coverage=float(self.coverage[i]))

    def summary(self) -> dict:
        """JSON-ready facts (no arrays)."""
        return {"success": self.success, "reason": self.reason, "confident": self.confident,
                "notes": list(self.notes), "n_views": self.n_views, "views_used": self.used_views(),
                "shared_frame": False, "residual_rms_mm": self.residual_rms_mm,
                "coverage": None if self.coverage is None else [round(float(c), 4) for c in self.coverage],
                "shape_sd": [round(float(x), 4) for x in self.shape_sd],
                "shape_sd_network": [round(float(x), 4) for x in self.shape_sd_network],
                "views": [r.to_dict() for r in self.reports],
                "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()}}


def _fit_independent(data: list[dict], poses0: list[np.ndarray], b0: np.ndarray, prior_sd: np.ndarray,
                     centre: np.ndarray, max_nfev: int) -> tuple[list[np.ndarray], np.ndarray, bool, str]:
    """Robust least squares of one ``model_to_cam`` per entry of ``data`` (each: ``A, B, uv, w,
    K, sigma_px``) and one shape; returns poses, shape, success, reason."""
    from scipy.optimize import least_squares
    from scipy.spatial.transform import Rotation

    n = len(data)

    def unpack(x):
        out = []
        for k, T0 in enumerate(poses0):
            R0, t0 = T0[:3, :3], T0[:3, 3]
            R = Rotation.from_rotvec(x[6 * k : 6 * k + 3]).as_matrix() @ R0
            T = np.eye(4)
            T[:3, :3] = R
            T[:3, 3] = R0 @ centre + t0 + x[6 * k + 3 : 6 * k + 6] - R @ centre  # about the bone's centre
            out.append(T)
        return out, x[6 * n :]

    for d in data:
        d["sw"] = np.sqrt(np.clip(d["w"], 0.0, None)) / d["sigma_px"]

    def residuals(x):
        Ts, b = unpack(x)
        out = []
        for T, d in zip(Ts, data):
            pc = apply(T, d["A"] + d["B"] @ b)
            out.append(((_project(d["K"], pc) - d["uv"]) * d["sw"][:, None]).ravel())
        out.append((b - b0) / prior_sd)
        return np.concatenate(out)

    try:
        sol = least_squares(residuals, np.concatenate([np.zeros(6 * n), b0]), loss="soft_l1", f_scale=1.0,
                            max_nfev=max_nfev, x_scale="jac")
    except (ValueError, np.linalg.LinAlgError) as exc:
        return poses0, b0, False, f"least squares failed: {exc}"
    Ts, b = unpack(sol.x)
    if not (all(np.isfinite(T).all() for T in Ts) and np.isfinite(b).all()):
        return poses0, b0, False, "non-finite result"
    return Ts, b, True, ""


def _fail(space, cams, views, reports, reason: str, timings: dict, n_points: int) -> IndependentViewsReconstruction:
    b = np.mean([v.shape_sd_network for v in views], axis=0)
    ids = space.vertex_subset(n_points, seed=0)
    n = len(cams)
    return IndependentViewsReconstruction([np.full((4, 4), np.nan) for _ in range(n)], b, b, space.instance(b),
                                          space.faces, cams, views, reports,
                                          [np.zeros(len(v.corr_uv), bool) for v in views], ids,
                                          np.full((n, len(ids), 2), np.nan), np.zeros((n, len(ids))), False, reason,
                                          False, [reason], timings, 0.0, np.zeros(n))


def reconstruct_independent_views(preds: list, space: ShapeSpace, cameras: list[Camera],
                                  config: ReconConfig = ReconConfig(),
                                  mv_config: MultiViewConfig = MultiViewConfig()) -> IndependentViewsReconstruction:
    """:func:`combine_independent` from each view's network read-out
    (:class:`~xrecon.methods.recon.predict.DensePrediction`) and its camera."""
    return reconstruct_views(preds, space, cameras, config, mv_config, combine=combine_independent)


def reconstruct_independent_images(net, space: ShapeSpace, images: list, cameras: list[Camera],
                                   config: ReconConfig = ReconConfig(),
                                   mv_config: MultiViewConfig = MultiViewConfig()) -> IndependentViewsReconstruction:
    """:func:`reconstruct_independent_views` from X-rays ``images[i]: (H_i, W_i)`` and their cameras."""
    return reconstruct_images(net, space, images, cameras, config, mv_config, combine=combine_independent)


def combine_independent(views: list[Reconstruction], space: ShapeSpace, cameras: list[Camera],
                        px_per_net_px: list[float], config: ReconConfig = ReconConfig(),
                        mv_config: MultiViewConfig = MultiViewConfig()) -> IndependentViewsReconstruction:
    """Steps 2-5 of the module docstring from the single-view reconstructions ``views``
    (step 1) and their cameras; ``px_per_net_px[i]``: image pixels per network pixel of view ``i``."""
    cfg, mv = config, mv_config
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    n = len(views)
    cameras = [c[0] for c in cameras]
    Ks = [c.K[0].numpy() for c in cameras]
    reports = [ViewReport(i, "refused", single_view_success=bool(v.success), single_view_coverage=float(v.coverage),
                          n_correspondences=int(len(v.corr_uv))) for i, v in enumerate(views)]
    ok = [i for i, v in enumerate(views) if v.success]
    for i, v in enumerate(views):
        if not v.success:
            reports[i].reason = f"no single-view reconstruction: {v.reason}"
    if not ok:
        why = "; ".join(f"view {i}: {v.reason}" for i, v in enumerate(views))
        return _fail(space, cameras, views, reports, f"no view gave a reconstruction ({why})", timings, cfg.n_points)

    def view_weight(v: Reconstruction) -> float:
        cov = v.coverage if np.isfinite(v.coverage) else 0.0
        return float(np.clip(cov / max(cfg.min_coverage, 1e-9), 0.1, 1.0))

    weight = {i: view_weight(views[i]) for i in ok}
    cw = np.array([max(int(views[i].inliers.sum()), 1) * weight[i] for i in ok], np.float64)
    b_pool = (np.array([views[i].shape_sd_network for i in ok]) * cw[:, None]).sum(0) / cw.sum()
    prior = np.full(len(b_pool), cfg.shape_prior_sd)
    prior[0] = cfg.size_prior_sd  # no shared frame: nothing beyond the network fixes the size
    A_B = {i: _linear_points(space, views[i]) for i in ok}
    thr = {i: mv.agreement_threshold_net_px * px_per_net_px[i] for i in ok}
    rng = np.random.default_rng(cfg.seed)

    def view_data(sel: dict) -> list[dict]:
        data = []
        for i in sorted(sel):
            idx = np.flatnonzero(sel[i])
            if len(idx) > mv.max_points_per_view:
                idx = np.sort(rng.choice(idx, mv.max_points_per_view, replace=False))
            sig = views[i].corr_sigma_mm[idx]
            A, B = A_B[i]
            data.append({"A": A[idx], "B": B[idx], "uv": views[i].corr_uv[idx], "K": Ks[i],
                         "sigma_px": cfg.sigma_px_net * px_per_net_px[i],
                         "w": weight[i] * (np.median(sig) / np.maximum(sig, 0.5)) ** 2})
        return data

    def fit(sel: dict, poses: dict, b0: np.ndarray) -> tuple[dict, np.ndarray, bool, str]:
        keys = sorted(sel)
        Ts, b, good, why = _fit_independent(view_data(sel), [poses[i] for i in keys], b0, prior, space.centre_mm,
                                            mv.max_nfev)
        return dict(zip(keys, Ts)), b, good, why

    # ---- step 2: joint fit on each view's single-view inliers, from the single-view poses
    t1 = time.perf_counter()
    poses = {i: views[i].model_to_cam for i in ok}
    start = {i: views[i].inliers if views[i].inliers.sum() >= 6 else np.ones(len(views[i].corr_uv), bool)
             for i in ok}
    info: list[str] = []
    T, b, fit_ok, why = fit(start, poses, b_pool)
    if not fit_ok:
        info.append(f"joint shape fit skipped: {why}")
        T, b = poses, b_pool

    # ---- step 3: which views agree with the shared shape
    def errors(T: dict, b: np.ndarray) -> dict:
        return {i: _reproj_errors(T[i], Ks[i], A + B @ b, views[i].corr_uv) for i, (A, B) in A_B.items() if i in T}

    e = errors(T, b)
    used = []
    for i in ok:
        r = reports[i]
        a = e[i] < thr[i]
        r.agreement = float(a.mean())
        r.rotation_to_consensus_deg = 0.0
        if len(ok) > 1 and r.agreement < mv.min_view_agreement:
            r.reason = (f"its correspondences disagree with the shape the other views share: "
                        f"{100 * r.agreement:.0f} % within {mv.agreement_threshold_net_px:g} network px of its "
                        f"joint pose (need {100 * mv.min_view_agreement:.0f} %): another bone, or a poor prediction")
            continue
        used.append(i)
    if not used:
        return _fail(space, cameras, views, reports, "no view agrees with the shared shape", timings, cfg.n_points)
    for i in used:
        r = reports[i]
        r.weight = weight[i]
        r.status = "used" if r.weight >= 1.0 else "down-weighted"
        if r.weight < 1.0:
            r.reason = f"the view shows little of the bone (coverage {views[i].coverage:.3f} < {cfg.min_coverage})"

    residual_rms = 0.0
    if len(used) == 1:
        # one usable view: its own single-view result
        i = used[0]
        T, b, inst = {i: views[i].model_to_cam}, views[i].shape_sd, views[i].vertices_model
        inl = {i: views[i].inliers}
        residual_rms = views[i].residual_rms_mm
    else:
        if len(used) < len(ok) and fit_ok:
            T, b, fit_ok, why = fit({i: start[i] for i in used}, poses, b_pool)
            if not fit_ok:
                info.append(f"joint shape fit skipped: {why}")
                T, b = poses, b_pool
        # ---- step 4: inliers again under the fitted poses and shape, at the single-view RANSAC threshold
        e = errors(T, b)
        inl = {}
        for i in used:
            inl[i] = e[i] < cfg.reproj_threshold_net_px * px_per_net_px[i]
            if inl[i].sum() < 6:
                inl[i] = start[i]
        if fit_ok:
            T2, b2, ok2, why2 = fit(inl, T, b_pool)
            if ok2:
                T, b = T2, b2
            else:
                info.append(f"final joint fit skipped: {why2}")
        timings["joint_fit"] = time.perf_counter() - t1
        # ---- step 5: residual beyond the span, pooled (each view's pose as its own "world_to_cam")
        inst = space.instance(b)
        full = []
        for i in used:
            sel = inl[i]
            full.append({"points": points_at(inst, space.faces, _location(views[i]))[sel],
                         "uv": views[i].corr_uv[sel], "K": Ks[i], "world_to_cam": T[i],
                         "sigma_mm": views[i].corr_sigma_mm[sel]})
        if cfg.residual is not None and sum(len(d["points"]) for d in full) >= 12:
            t3 = time.perf_counter()
            u, _ = _pooled_residual(space, inst, full, np.eye(4), cfg.residual)
            inst = inst + u
            residual_rms = float(np.sqrt((u**2).sum(1).mean()))
            timings["residual"] = time.perf_counter() - t3

    # ---- checks, per-view diagnostics, output points
    notes: list[str] = []
    ids = space.vertex_subset(cfg.n_points, seed=0)
    points_uv = np.full((n, len(ids), 2), np.nan)
    conf = np.zeros((n, len(ids)))
    coverage = np.zeros(n)
    model_to_cam = [np.full((4, 4), np.nan) for _ in range(n)]
    inliers = [np.zeros(len(v.corr_uv), bool) for v in views]
    lo, hi = cfg.depth_range_mm
    for i in used:
        depth = apply(T[i], inst)[:, 2]
        if depth.min() <= 0:
            return _fail(space, cameras, views, reports, f"the joint fit puts the bone behind view {i}'s X-ray "
                         "source (its correspondences are inconsistent)", timings, cfg.n_points)
        model_to_cam[i], inliers[i] = T[i], inl[i]
        p = points_at(inst, space.faces, _location(views[i]))[inl[i]]
        reports[i].n_inliers = int(inl[i].sum())
        reports[i].reprojection_error_px = float(np.mean(_reproj_errors(T[i], Ks[i], p, views[i].corr_uv[inl[i]])))
        points_uv[i] = _project(Ks[i], apply(T[i], inst[ids]))
        canon = points_at(space.mean_vertices, space.faces, _location(views[i]))[inl[i]]
        conf[i] = _point_confidence(space, ids, canon, points_uv[i], cameras[i])
        coverage[i] = float((conf[i] > 0.5).mean())
        if not lo <= float(depth.mean()) <= hi:
            notes.append(f"view {i}: the bone is {depth.mean():.0f} mm from the source, outside the training range "
                         f"({lo:.0f}-{hi:.0f} mm)")
    for r in reports:
        if r.status == "refused":
            info.append(f"view {r.index} refused: {r.reason}")
        elif r.status == "down-weighted":
            info.append(f"view {r.index} down-weighted to {r.weight:.2f}: {r.reason}")
    if len(used) < 2:
        notes.append(f"only view {used[0]} is usable: the result is that view's single-view reconstruction")
    if float((conf[used] > 0.5).any(0).mean()) < cfg.min_coverage:
        notes.append(f"the views show little of the bone (< {100 * cfg.min_coverage:.0f} % of its surface near "
                     "the correspondences)")
    n_inl = sum(r.n_inliers for r in reports)
    if n_inl < cfg.min_inliers:
        notes.append(f"few inliers over all views ({n_inl} < {cfg.min_inliers})")
    if np.abs(b).max() >= 2.9:
        notes.append("shape coefficients at the model's bound (unusual anatomy or not a pelvis?)")
    timings["combine"] = time.perf_counter() - t0
    return IndependentViewsReconstruction(model_to_cam, b, b_pool, inst, space.faces, cameras, views, reports,
                                          inliers, ids, points_uv, conf, True, "", not notes, notes + info, timings,
                                          residual_rms, coverage)


# ---------------------------------------------------------------------------- CT registration
@dataclass
class IndependentViewsCTRegistration:
    """A CT posed in each view's camera through an :class:`IndependentViewsReconstruction`.

    Attributes:
        ct_to_cam: one ``(4, 4)`` rigid CT-to-camera pose per view (NaN for a refused view).
        ct_to_model: ``(4, 4)`` similarity CT frame -> model frame (shared by the views).
        scale: size of the reconstruction relative to the CT.
        reprojection_error_px: ``(n_views,)`` mean reprojection error of each used view (NaN if unused).
        surface_residual_mm: mean distance of the predictions (CT frame) to the CT surface.
        n_used: correspondences behind the poses.
        silhouette_depth_change_mm: ``(n_views,)`` how far each view's silhouette step moved the
            CT's centre along the beam (NaN when not run).
        success, reason, confident, notes, timings_s: as for :class:`~xrecon.methods.recon.pipeline.CTRegistration`.
    """

    ct_to_cam: list
    ct_to_model: np.ndarray
    scale: float
    reprojection_error_px: np.ndarray
    surface_residual_mm: float
    n_used: int
    silhouette_depth_change_mm: np.ndarray
    success: bool
    reason: str = ""
    confident: bool = False
    notes: list = field(default_factory=list)
    timings_s: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"success": self.success, "reason": self.reason, "confident": self.confident,
                "notes": list(self.notes), "scale_reconstruction_over_ct": self.scale, "n_used": self.n_used,
                "reprojection_error_px": [round(float(x), 4) for x in self.reprojection_error_px],
                "silhouette_depth_change_mm": [round(float(x), 4) for x in self.silhouette_depth_change_mm],
                "surface_residual_mm": self.surface_residual_mm,
                "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()}}


def register_ct_independent(irec: IndependentViewsReconstruction, ct_points: np.ndarray,
                            ct_normals: np.ndarray | None = None, config: ReconConfig = ReconConfig(),
                            max_ct_points: int = 40000, hypotheses: int = 3,
                            ct_mesh: tuple[np.ndarray, np.ndarray] | None = None) -> IndependentViewsCTRegistration:
    """Pose a CT bone surface ``ct_points: (P, 3)`` (CT frame, mm; unit normals
    ``ct_normals: (P, 3)`` when known) in every used view's camera of ``irec``
    (module docstring). ``ct_mesh`` (vertices, faces; CT frame) is needed by the
    silhouette step (``config.silhouette``; skipped without it).

    With one usable view, that view's single-view registration
    (:func:`~xrecon.methods.recon.pipeline.register_ct_points`).
    """
    t0 = time.perf_counter()
    n = irec.n_views
    nan44 = np.full((4, 4), np.nan)

    def fail(reason: str, scale: float = float("nan"), timings=None) -> IndependentViewsCTRegistration:
        return IndependentViewsCTRegistration([nan44.copy() for _ in range(n)], nan44, scale, np.full(n, np.nan),
                                              float("nan"), 0, np.full(n, np.nan), False, reason, False,
                                              list(irec.notes) + [reason], timings or {})

    if not irec.success:
        return fail(f"no reconstruction to register to: {irec.reason}")
    used = irec.used_views()
    if len(used) == 1:
        from xrecon.methods.recon.pipeline import register_ct_points

        i = used[0]
        cfg1 = config if ct_mesh is not None else dataclasses.replace(config, silhouette="off")
        one = register_ct_points(irec.views[i], ct_points, ct_normals, cfg1, max_ct_points, ct_mesh=ct_mesh)
        if not one.success:
            return fail(one.reason, one.scale, one.timings_s)
        poses = [nan44.copy() for _ in range(n)]
        poses[i] = one.ct_to_cam
        errs, dz = np.full(n, np.nan), np.full(n, np.nan)
        errs[i], dz[i] = one.reprojection_error_px, one.silhouette_depth_change_mm
        return IndependentViewsCTRegistration(poses, one.ct_to_model, one.scale, errs, one.surface_residual_mm,
                                              one.n_used, dz, True, "", one.confident and irec.confident,
                                              list(irec.notes) + [f"registered through view {i} alone"]
                                              + one.notes[len(irec.views[i].notes):], one.timings_s)
    canon, canon_n, ct_to_canon, cands, reason = _ct_alignment_candidates(ct_points, ct_normals, irec.vertices_model,
                                                                           config, max_ct_points, hypotheses)
    timings = {"align": time.perf_counter() - t0}
    if not cands:
        return fail(reason, timings=timings)
    pts = []
    for i in used:
        v, sel = irec.views[i], irec.inliers[i]
        pts.append(ViewPoints(points_at(irec.vertices_model, irec.faces, _location(v))[sel], v.corr_uv[sel],
                              1.0 / np.maximum(v.corr_sigma_mm[sel], 0.5), irec.cameras[i].K[0].numpy(),
                              np.eye(4), config.sigma_px_net * v.px_per_net_px))
    t1 = time.perf_counter()
    best = None
    for U in cands:  # U: canon -> model similarity
        s = float(np.cbrt(np.linalg.det(U[:3, :3])))
        init = []
        for i in used:
            m2c = irec.model_to_cam[i]
            P = np.eye(4)
            P[:3, :3] = m2c[:3, :3] @ (U[:3, :3] / s)
            P[:3, 3] = apply(m2c, U[:3, 3][None])[0]  # the CT's centroid (canon origin) in place
            init.append(P)
        fit, poses = refine_ct_to_cams(init, _inv_similarity(U), pts, canon, canon_n, sigma_mm=2.0,
                                       seed=config.seed)
        if fit.success and (best is None or fit.cost_history[-1] < best[0].cost_history[-1]):
            best = (fit, poses)
    timings["refine"] = time.perf_counter() - t1
    if best is None:
        return fail("the joint refinement of the CT poses failed", timings=timings)
    fit, poses = best
    if not SCALE_BOUNDS[0] <= fit.scale <= SCALE_BOUNDS[1]:
        return fail(f"the reconstruction came out {fit.scale:.2f} x the CT's size (expected {SCALE_BOUNDS[0]}-"
                    f"{SCALE_BOUNDS[1]}): the alignment failed, or the CT holds another bone", fit.scale, timings)
    notes = list(irec.notes)
    out = [nan44.copy() for _ in range(n)]
    dz = np.full(n, np.nan)
    t2 = time.perf_counter()
    verts = None
    if config.silhouette != "off" and ct_mesh is not None:
        verts = np.asarray(ct_mesh[0], np.float64) @ ct_to_canon[:3, :3].T + ct_to_canon[:3, 3]
    for k, i in enumerate(used):
        canon_to_cam = poses[k]
        if verts is not None:
            new, _dice, _outline, note = _silhouette_refine(canon_to_cam, (verts, ct_mesh[1]),
                                                            irec.view_reconstruction(i), config)
            c = verts.mean(0)
            dz[i] = float((new[2, :3] - canon_to_cam[2, :3]) @ c + new[2, 3] - canon_to_cam[2, 3])
            canon_to_cam = new
            if note:
                notes.append(f"view {i}: {note}")
        out[i] = canon_to_cam @ ct_to_canon
    if verts is not None:
        timings["silhouette"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    if not SCALE_CONFIDENT[0] < fit.scale < SCALE_CONFIDENT[1]:
        notes.append(f"the reconstruction is {fit.scale:.2f} x the CT's size: is it the same bone?")
    n_used = sum(len(p.uv) for p in pts)
    if n_used < config.min_inliers:
        notes.append(f"few correspondences ({n_used} < {config.min_inliers})")
    errs = np.full(n, np.nan)
    errs[used] = fit.reprojection_error_px
    return IndependentViewsCTRegistration(out, _inv_similarity(fit.model_to_ct) @ ct_to_canon, fit.scale, errs,
                                          fit.surface_residual_mm, n_used, dz, True, "",
                                          irec.confident and len(notes) == len(irec.notes), notes, timings)
