"""From one X-ray to a posed bone shape, and from there to a registered CT.

:func:`reconstruct_image`
    1. the network reads out dense canonical correspondences, their predicted
       error and the shape coefficients (:mod:`~xrecon.methods.recon.predict`);
    2. predictions that are uncertain or far from the mean surface are dropped;
       the rest are snapped onto the mean surface and transferred to the
       instance of the predicted coefficients (:meth:`ShapeSpace.transfer`):
       SSM regularisation, every 3D point is a point of a plausible shape;
    3. PnP + RANSAC (:func:`xrecon.solve.pnp.solve_pnp`) on (instance points,
       pixels) gives ``model_to_cam``;
    4. optionally pose and shape are refined together on the inliers
       (:func:`~xrecon.methods.recon.fit.fit_pose_shape`);
    5. optionally the shape leaves the model's span where the image supports it: a
       Gaussian-process posterior of the residual deformation given the inliers'
       offsets to their rays (:mod:`~xrecon.methods.recon.residual`);
    6. the posed shape is the reconstruction; a fixed subset of its vertices,
       projected, is the point cloud with image coordinates.

:func:`register_ct_points`
    the CT's bone surface (in the CT's own frame, any rotation / origin, LPS or
    RAS) is aligned in 3D to the reconstruction (global init + ICP, with scale),
    and the pose is solved again from the CT's *own* points matched to the
    predicted pixels (:func:`xrecon.solve.joint.solve_joint`), so the CT's true
    size fixes the depth; last (``ReconConfig.silhouette``), the CT's bone mesh
    is moved near that pose to where its silhouette best overlaps the
    network's bone mask (:func:`xrecon.solve.silhouette.silhouette_pose`).

Frames: ``model`` = the shape model's frame (see :mod:`~xrecon.methods.recon.shape`),
``cam`` = the OpenCV camera of the X-ray (:mod:`xrecon.geometry`), ``ct`` = the
CT's world frame (RAS+ mm as read by :mod:`xrecon.anatomy.ct_io`).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from xrecon.geometry import Camera
from xrecon.methods.recon.fit import fit_pose_shape
from xrecon.methods.recon.network import ReconNet
from xrecon.methods.recon.predict import DensePrediction, predict_dense
from xrecon.methods.recon.residual import ResidualConfig, residual_deformation
from xrecon.methods.recon.shape import ShapeSpace, points_at
from xrecon.solve.pnp import PnPConfig, intrinsics_matrix, solve_pnp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconConfig:
    """Settings of :func:`reconstruct_image` and :func:`register_ct_points`.

    Attributes:
        mask_threshold: bone probability above which a pixel gives correspondences
            (``None``: the value calibrated on the validation set and stored in the
            model file, else 0.5).
        max_sigma_mm: drop predictions whose predicted error exceeds this.
        max_offsurface_mm: drop canonical predictions farther than this from the mean surface.
        reproj_threshold_net_px: RANSAC inlier threshold in pixels of the network's
            grid (converted to the image's pixels).
        pnp_max_points: most confident correspondences given to RANSAC.
        refine_shape: refine pose and shape jointly after PnP.
        size_prior_sd: prior spread (SD) of mode 1 (size) around the network's value.
        shape_prior_sd: prior spread (SD) of the other modes around the network's values.
        sigma_px_net: residual unit of the refinement (network pixels).
        n_points: size of the output point cloud (vertex subset of the shape model).
        min_inliers: fewer PnP inliers than this marks the result low-confidence.
        min_inlier_ratio: so does a lower share of inliers.
        min_coverage: so does a visible part covering less than this share of the
            bone (:attr:`Reconstruction.coverage`): a small patch of bone seen at
            the edge of the image constrains the pose poorly, however well it fits
            (chosen on the validation split, ``benchmarks/bench_recon.py --split
            val``: the three pose errors above 15 deg had coverages 0.020-0.045,
            every other pose 0.051 or more; on the test split 0.013 and 0.046
            against 0.059 and up).
        depth_range_mm: source-to-bone-centroid distances the default network
            was trained on (seed 002's 765 mm +- 3 SD of the depth offsets, and
            the wider protocol's 650-850 mm source distances, with margin); a
            pose outside is marked low-confidence. A bone behind the source is a
            failure.
        tta_shifts: network passes averaged over shifted copies of the image
            (1 = none; see :func:`~xrecon.methods.recon.predict.network_outputs`).
        silhouette: CT registration only, after the joint solve: ``"depth"`` moves the
            CT along the ray through its centroid to where its projected silhouette
            best overlaps the network's bone mask
            (:func:`~xrecon.solve.silhouette.silhouette_depth`); ``"pose"`` searches
            all six rigid degrees of freedom near the solved pose for that overlap
            (:func:`~xrecon.solve.silhouette.silhouette_pose`); ``"off"``: neither.
        silhouette_max_depth_change: the search range along the optical axis
            (relative distance change).
        residual: step 5 of :func:`reconstruct_image` (a Gaussian-process residual
            deformation beyond the shape model's span, :mod:`~xrecon.methods.recon.residual`);
            ``None`` switches it off.
        silhouette_search: the ``"pose"`` step's search, the ``method`` of
            :func:`~xrecon.solve.silhouette.silhouette_pose`: ``"contour"`` (the
            default: the CT's outline fitted to the mask's sub-pixel outline, a
            smooth objective, so a float image and its 16-bit PNG give the same
            pose), ``"nelder-mead"`` or ``"powell"`` (searches on the silhouette
            Dice, whose whole-pixel plateaus make the result depend on the start's
            last digits).
        seed: seeds RANSAC and subsets.
    """

    mask_threshold: float | None = None
    max_sigma_mm: float = 40.0
    max_offsurface_mm: float = 10.0
    reproj_threshold_net_px: float = 3.0
    pnp_max_points: int = 1500
    refine_shape: bool = True
    size_prior_sd: float = 0.05
    shape_prior_sd: float = 0.7
    sigma_px_net: float = 1.5
    n_points: int = 1000
    min_inliers: int = 40
    min_inlier_ratio: float = 0.3
    min_coverage: float = 0.05
    depth_range_mm: tuple[float, float] = (450.0, 1100.0)
    tta_shifts: int = 1
    silhouette: str = "pose"
    silhouette_max_depth_change: float = 0.08
    silhouette_search: str = "contour"
    residual: ResidualConfig | None = ResidualConfig()
    seed: int = 0


@dataclass
class Reconstruction:
    """A posed bone shape recovered from one X-ray.

    Attributes:
        model_to_cam: ``(4, 4)`` pose of the shape model frame in the camera (NaN on failure).
        shape_sd: ``(K,)`` final shape coefficients (SD); ``shape_sd_network`` the network's.
        vertices_model: ``(V, 3)`` the reconstructed shape in the model frame (mm).
        faces: ``(F, 3)`` its triangles.
        point_ids: ``(N,)`` vertex ids of the output point cloud.
        points_uv: ``(N, 2)`` their projections (pixels of the input image).
        points_confidence: ``(N,)`` in [0, 1]: how much image evidence supports each
            point (share of nearby inlier correspondences; 0 outside the image).
        corr_instance_mm: ``(M, 3)`` model-frame points of the correspondences used.
        corr_uv: ``(M, 2)`` their pixels; ``corr_sigma_mm`` ``(M,)`` predicted errors;
        corr_location: triangle ids / barycentrics of the correspondences on the model.
        inliers: ``(M,)`` PnP inliers.
        camera: the input camera (view 0).
        success: a pose was found; ``reason`` why not.
        confident: False when the evidence is weak; ``notes`` says why (and what else happened).
        coverage: share of the output points with image evidence (``points_confidence > 0.5``):
            how much of the bone the image shows.
        timings_s: wall time of each stage.
        mask_prob: ``(h, w)`` the network's bone probability on its own pixel grid
            (the input image resized to the network's size); None when unknown.
        reprojection_error_px: mean reprojection error of the inliers after the pose +
            shape fit (before the residual step, which moves the points toward their rays).
        residual_rms_mm: RMS length of the deformation beyond the shape model's span
            (``ReconConfig.residual``; 0 when off): ``vertices_model`` is the instance of
            ``shape_sd`` plus that deformation.
    """

    model_to_cam: np.ndarray
    shape_sd: np.ndarray
    shape_sd_network: np.ndarray
    vertices_model: np.ndarray
    faces: np.ndarray
    point_ids: np.ndarray
    points_uv: np.ndarray
    points_confidence: np.ndarray
    corr_instance_mm: np.ndarray
    corr_uv: np.ndarray
    corr_sigma_mm: np.ndarray
    corr_triangle: np.ndarray
    corr_barycentric: np.ndarray
    inliers: np.ndarray
    camera: Camera
    success: bool
    reason: str = ""
    confident: bool = False
    notes: list[str] = field(default_factory=list)
    reprojection_error_px: float = float("nan")
    timings_s: dict = field(default_factory=dict)
    px_per_net_px: float = 1.0
    coverage: float = float("nan")
    mask_prob: np.ndarray | None = None
    residual_rms_mm: float = 0.0

    @property
    def vertices_cam(self) -> np.ndarray:
        """``(V, 3)`` the posed reconstruction in the camera frame (mm)."""
        T = self.model_to_cam
        return self.vertices_model @ T[:3, :3].T + T[:3, 3]

    @property
    def points_model(self) -> np.ndarray:
        return self.vertices_model[self.point_ids]

    @property
    def points_cam(self) -> np.ndarray:
        return self.vertices_cam[self.point_ids]

    def summary(self) -> dict:
        """JSON-ready facts (no arrays)."""
        return {"success": self.success, "reason": self.reason, "confident": self.confident,
                "notes": list(self.notes), "n_correspondences": int(len(self.inliers)),
                "n_inliers": int(self.inliers.sum()), "reprojection_error_px": self.reprojection_error_px,
                "coverage": self.coverage, "residual_rms_mm": self.residual_rms_mm,
                "shape_sd": [round(float(x), 4) for x in self.shape_sd],
                "shape_sd_network": [round(float(x), 4) for x in self.shape_sd_network],
                "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()}}


def _empty(space: ShapeSpace, pred: DensePrediction, camera: Camera, reason: str, ids: np.ndarray,
           timings: dict) -> Reconstruction:
    nan44 = np.full((4, 4), np.nan)
    b = pred.shape_sd
    return Reconstruction(nan44, b, b, space.instance(b), space.faces, ids, np.full((len(ids), 2), np.nan),
                          np.zeros(len(ids)), np.zeros((0, 3)), np.zeros((0, 2)), np.zeros(0),
                          np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros(0, bool), camera, False, reason,
                          False, [reason], float("nan"), timings)


def _point_confidence(space: ShapeSpace, ids: np.ndarray, inlier_canonical: np.ndarray, uv: np.ndarray,
                      camera: Camera, radius_mm: float = 10.0) -> np.ndarray:
    from scipy.spatial import cKDTree

    if len(inlier_canonical) == 0:
        return np.zeros(len(ids))
    counts = np.array([len(n) for n in cKDTree(inlier_canonical).query_ball_point(space.mean_vertices[ids],
                                                                                    radius_mm)])
    conf = 1.0 - np.exp(-counts / 3.0)
    inside = (uv[:, 0] >= -0.5) & (uv[:, 0] <= camera.width - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] <= camera.height - 0.5)
    return np.where(inside, conf, 0.0)


def reconstruct_from_prediction(pred: DensePrediction, space: ShapeSpace, camera: Camera,
                                config: ReconConfig = ReconConfig()) -> Reconstruction:
    """Steps 2-6 of the module docstring, from a network read-out."""
    rec = _reconstruct(pred, space, camera, config)
    rec.mask_prob = pred.mask_prob
    return rec


def _reconstruct(pred: DensePrediction, space: ShapeSpace, camera: Camera, config: ReconConfig) -> Reconstruction:
    cfg = config
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    camera = camera[0]
    ids = space.vertex_subset(cfg.n_points, seed=0)
    keep = np.isfinite(pred.canonical_mm).all(1) & (pred.sigma_mm <= cfg.max_sigma_mm)
    if keep.sum() < 6:
        return _empty(space, pred, camera, f"the network found too little bone ({int(keep.sum())} usable "
                      "correspondences): is there a pelvis in the image?", ids, timings)
    where = space.locate_on_mean(pred.canonical_mm[keep])
    near = where.distance_mm <= cfg.max_offsurface_mm
    sel = np.flatnonzero(keep)[near]
    tri, bary = where.triangle[near], where.barycentric[near]
    b_net = pred.shape_sd
    inst = space.instance(b_net)
    loc = dataclasses.replace(where, triangle=tri, barycentric=bary, distance_mm=where.distance_mm[near])
    p_inst = points_at(inst, space.faces, loc)
    uv = pred.uv[sel]
    sigma = pred.sigma_mm[sel]
    timings["correspondences"] = time.perf_counter() - t0
    if len(sel) < 6:
        return _empty(space, pred, camera, f"only {len(sel)} correspondences lie on the shape model's surface",
                      ids, timings)

    px_per_net_px = camera.width / pred.net_camera.width
    pnp_cfg = PnPConfig(reproj_threshold_px=cfg.reproj_threshold_net_px * px_per_net_px,
                        max_points=cfg.pnp_max_points, seed=cfg.seed)
    t1 = time.perf_counter()
    pnp = solve_pnp(p_inst, uv, camera, config=pnp_cfg, weights=1.0 / np.maximum(sigma, 0.5))
    timings["pnp"] = time.perf_counter() - t1
    if not pnp.success:
        rec = _empty(space, pred, camera, f"PnP failed: {pnp.reason}", ids, timings)
        rec.corr_instance_mm, rec.corr_uv, rec.corr_sigma_mm = p_inst, uv, sigma
        rec.corr_triangle, rec.corr_barycentric, rec.inliers = tri, bary, pnp.inliers
        return rec
    model_to_cam, b = pnp.world_to_cam, b_net.copy()
    inl = pnp.inliers
    reproj = pnp.reprojection_error_px
    notes: list[str] = []  # why the result is weak (each one makes it low-confidence)
    info: list[str] = []  # what happened, without casting doubt on the result
    if cfg.refine_shape and inl.sum() >= 12:
        t2 = time.perf_counter()
        A = points_at(space.mean_vertices, space.faces, loc)[inl]  # (M, 3)
        vids = space.faces[tri[inl]]  # (M, 3)
        Bm = np.einsum("mj,kmjd->mdk", bary[inl], space.modes_mm[:, vids])  # (M, 3, K)
        prior = np.full(len(b_net), cfg.shape_prior_sd)
        prior[0] = cfg.size_prior_sd
        fit = fit_pose_shape(A, Bm, uv[inl], intrinsics_matrix(camera), model_to_cam, b_net, prior,
                             weights=(np.median(sigma[inl]) / np.maximum(sigma[inl], 0.5)) ** 2,
                             sigma_px=cfg.sigma_px_net * px_per_net_px)
        timings["shape_fit"] = time.perf_counter() - t2
        if fit.success:
            model_to_cam, b, reproj = fit.model_to_cam, fit.shape_sd, fit.reprojection_error_px
            inst = space.instance(b)
            p_inst = points_at(inst, space.faces, loc)
        else:
            info.append(f"pose+shape refinement skipped: {fit.reason}")
    residual_rms = 0.0
    if cfg.residual is not None and inl.sum() >= 12:
        t3 = time.perf_counter()
        u, _ = residual_deformation(inst, p_inst[inl], uv[inl], sigma[inl], model_to_cam,
                                    intrinsics_matrix(camera), cfg.residual)
        inst = inst + u
        p_inst = points_at(inst, space.faces, loc)
        residual_rms = float(np.sqrt((u**2).sum(1).mean()))
        timings["residual"] = time.perf_counter() - t3
    depth_mm = inst @ model_to_cam[2, :3] + model_to_cam[2, 3]
    if depth_mm.min() <= 0:
        rec = _empty(space, pred, camera, "the solved pose puts the bone behind the X-ray source (an impossible "
                     "view: the correspondences are inconsistent)", ids, timings)
        rec.corr_instance_mm, rec.corr_uv, rec.corr_sigma_mm = p_inst, uv, sigma
        rec.corr_triangle, rec.corr_barycentric, rec.inliers = tri, bary, inl
        return rec
    cam_pose = camera.with_pose(model_to_cam)
    pts_uv = cam_pose.project(inst[ids])[0][0].numpy()
    inlier_canon = pred.canonical_mm[sel][inl]
    conf = _point_confidence(space, ids, inlier_canon, pts_uv, camera)
    n_inl = int(inl.sum())
    ratio = n_inl / max(pnp.n_used, 1)
    coverage = float((conf > 0.5).mean())
    if coverage < cfg.min_coverage:
        notes.append(f"the image shows little of the bone ({100 * coverage:.1f} % of its surface near the "
                     f"correspondences, < {100 * cfg.min_coverage:.0f} %): the pose is poorly constrained")
    if n_inl < cfg.min_inliers:
        notes.append(f"few PnP inliers ({n_inl} < {cfg.min_inliers})")
    if ratio < cfg.min_inlier_ratio:
        notes.append(f"low inlier ratio ({ratio:.2f} < {cfg.min_inlier_ratio})")
    lo, hi = cfg.depth_range_mm
    if not lo <= float(depth_mm.mean()) <= hi:
        notes.append(f"the bone is {depth_mm.mean():.0f} mm from the source, outside the training range "
                     f"({lo:.0f}-{hi:.0f} mm)")
    if np.abs(b).max() >= 2.9:
        notes.append("shape coefficients at the model's bound (unusual anatomy or not a pelvis?)")
    timings["total"] = time.perf_counter() - t0
    return Reconstruction(model_to_cam, b, b_net, inst, space.faces, ids, pts_uv, conf, p_inst, uv, sigma, tri,
                          bary, inl, camera, True, "", not notes, notes + info, reproj, timings, px_per_net_px,
                          coverage, residual_rms_mm=residual_rms)


def reconstruct_image(net: ReconNet, space: ShapeSpace, image, camera: Camera,
                      config: ReconConfig = ReconConfig()) -> Reconstruction:
    """Reconstruct the posed bone from ``image: (H, W)`` seen by ``camera`` (its intrinsics;
    its pose is ignored)."""
    t0 = time.perf_counter()
    threshold = config.mask_threshold if config.mask_threshold is not None else getattr(net, "mask_threshold", 0.5)
    pred = predict_dense(net, image, camera, threshold, config.tta_shifts)
    t_net = time.perf_counter() - t0
    rec = reconstruct_from_prediction(pred, space, camera, config)
    rec.timings_s["network"] = t_net
    rec.timings_s["total"] = time.perf_counter() - t0
    return rec


#: plausible reconstruction / CT size ratios for the same bone (the predicted
#: size's error on held-out shapes is a few per cent; see docs/reconstruction.md)
SCALE_BOUNDS = (0.8, 1.25)
#: inside the bounds but beyond this the registration is marked low-confidence
#: (about 2 SD of the predicted size's error)
SCALE_CONFIDENT = (0.87, 1.15)


def ct_in_canonical_frame(ct_points: np.ndarray, ct_normals: np.ndarray | None, max_points: int,
                          seed: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """A CT bone surface (``ct_points: (P, 3)``, normals or None) subsampled to at
    most ``max_points`` (seeded) and moved into its own principal-axis frame:
    every later step (voxel grids, subsampling) then sees the same numbers
    whatever frame the CT came in. Returns the points, their normals (None when
    none were given) and ``ct_to_canon: (4, 4)``."""
    ct = np.asarray(ct_points, np.float64)
    if len(ct) > max_points:
        pick = np.random.default_rng(seed).choice(len(ct), max_points, replace=False)
        ct = ct[pick]
        ct_normals = None if ct_normals is None else np.asarray(ct_normals)[pick]
    ct_to_canon = _canonical_frame(ct)
    canon = ct @ ct_to_canon[:3, :3].T + ct_to_canon[:3, 3]
    canon_normals = None if ct_normals is None else np.asarray(ct_normals, np.float64) @ ct_to_canon[:3, :3].T
    return canon, canon_normals, ct_to_canon


def _canonical_frame(points: np.ndarray) -> np.ndarray:
    """``(4, 4)`` rigid map of ``points: (P, 3)`` to their principal-axis frame
    (centroid at the origin, axes by decreasing spread, each axis pointing to
    the side of positive third moment, right-handed): the same result whatever
    rigid frame the points are given in."""
    c = points.mean(0)
    x = points - c
    _, vecs = np.linalg.eigh(x.T @ x)
    R = vecs[:, ::-1].T
    skew = ((x @ R.T) ** 3).mean(0)
    R[:2] *= np.where(skew[:2] < 0, -1.0, 1.0)[:, None]
    if np.linalg.det(R) < 0:
        R[2] *= -1.0
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, -R @ c
    return T


@dataclass
class CTRegistration:
    """A CT posed in the X-ray's camera through the reconstruction.

    Attributes:
        ct_to_cam: ``(4, 4)`` rigid CT-to-camera pose (NaN on failure).
        ct_to_model: ``(4, 4)`` similarity from the CT frame to the model frame.
        scale: size of the reconstruction relative to the CT (1 = same size).
        n_used: correspondences behind the final pose.
        reprojection_error_px, surface_residual_mm: diagnostics of the joint solve (before
            the silhouette step).
        success, reason, confident, notes: as for :class:`Reconstruction`.
        timings_s: wall time.
        silhouette_depth_change_mm: how far ``ReconConfig.silhouette`` moved the CT's
            centroid along the optical axis (NaN when not used); ``silhouette_dice``
            the overlap of its silhouette with the network's mask after that.
        silhouette_move_mm: mean distance the silhouette step moved the CT's bone
            vertices (NaN when not used): how far the two cues, correspondences and
            mask, disagree.
        silhouette_outline_px: after the outline search (``silhouette_search="contour"``;
            NaN otherwise): 90th percentile of how far the mask's outline lies from
            the posed CT's outline, pixels of the mask.
    """

    ct_to_cam: np.ndarray
    ct_to_model: np.ndarray
    scale: float
    n_used: int
    reprojection_error_px: float
    surface_residual_mm: float
    success: bool
    reason: str = ""
    confident: bool = False
    notes: list[str] = field(default_factory=list)
    timings_s: dict = field(default_factory=dict)
    silhouette_depth_change_mm: float = float("nan")
    silhouette_dice: float = float("nan")
    silhouette_move_mm: float = float("nan")
    silhouette_outline_px: float = float("nan")

    def summary(self) -> dict:
        return {"success": self.success, "reason": self.reason, "confident": self.confident,
                "notes": list(self.notes), "scale_reconstruction_over_ct": self.scale, "n_used": self.n_used,
                "silhouette_depth_change_mm": self.silhouette_depth_change_mm,
                "silhouette_dice": self.silhouette_dice, "silhouette_move_mm": self.silhouette_move_mm,
                "silhouette_outline_px": self.silhouette_outline_px,
                "reprojection_error_px": self.reprojection_error_px,
                "surface_residual_mm": self.surface_residual_mm,
                "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()}}


def register_ct_points(rec: Reconstruction, ct_points: np.ndarray, ct_normals: np.ndarray | None = None,
                       config: ReconConfig = ReconConfig(), max_ct_points: int = 40000,
                       ct_mesh: tuple[np.ndarray, np.ndarray] | None = None) -> CTRegistration:
    """Pose a CT bone surface ``ct_points: (P, 3)`` (CT frame, mm; with unit normals
    ``ct_normals: (P, 3)`` when known) in the camera of ``rec``; ``ct_mesh``
    (vertices, faces) of the same surface, CT frame, is needed by
    ``config.silhouette`` only.

    Sample the surface densely (tens of thousands of points with their mesh
    normals, :meth:`~xrecon.anatomy.bone.BoneModel.sample_points`): the joint
    refinement's point-to-plane term sets the reconstruction-to-CT scale, and a
    sparse sampling biases it (measured on a planted scene: 4,000 vertices
    without normals 4.4 mm mTRE, 30,000 samples with normals 0.4 mm).
    """
    from xrecon.solve.align3d import AlignConfig, align_surfaces
    from xrecon.solve.joint import JointConfig, solve_joint

    if config.silhouette not in ("off", "depth", "pose"):
        raise ValueError(f"ReconConfig.silhouette must be 'off', 'depth' or 'pose', got {config.silhouette!r}")
    from xrecon.solve.silhouette import SEARCH_METHODS

    if config.silhouette_search not in SEARCH_METHODS:
        raise ValueError(f"ReconConfig.silhouette_search must be one of {SEARCH_METHODS}, "
                         f"got {config.silhouette_search!r}")
    if config.silhouette != "off" and ct_mesh is None:
        raise ValueError(f"ReconConfig.silhouette={config.silhouette!r} needs the CT's bone mesh (ct_mesh); "
                         "pass it, or set silhouette='off'")
    t0 = time.perf_counter()
    nan44 = np.full((4, 4), np.nan)
    if not rec.success:
        return CTRegistration(nan44, nan44, float("nan"), 0, float("nan"), float("nan"), False,
                              f"no reconstruction to register to: {rec.reason}")
    canon, canon_normals, ct_to_canon = ct_in_canonical_frame(ct_points, ct_normals, max_ct_points, config.seed)
    # the reconstruction and the CT are the same bone: sizes agree within the
    # single-view size uncertainty (an unbounded scale collapses onto a part)
    align_cfg = AlignConfig(with_scale=True, init_scale=1.0, scale_bounds=SCALE_BOUNDS, global_init=("pca",),
                            max_points=5000, seed=config.seed)
    # global alignment of the CT surface to the *whole* reconstructed shape (more of
    # the surface than the visible predictions) seeds the joint solver
    # (complete surfaces on both sides: the 24 principal-axis candidates + ICP suffice)
    align = align_surfaces(canon, rec.vertices_model, config=align_cfg)
    timings = {"align": time.perf_counter() - t0}
    px = rec.px_per_net_px  # the joint solver works in the input image's pixels
    jcfg = JointConfig(pnp=PnPConfig(reproj_threshold_px=config.reproj_threshold_net_px * px,
                                     max_points=config.pnp_max_points, seed=config.seed),
                       align=dataclasses.replace(align_cfg, max_points=8000),
                       sigma_px=config.sigma_px_net * px,
                       sigma_mm=2.0, snap_distance_mm=8.0)
    inl = rec.inliers
    t1 = time.perf_counter()
    res = solve_joint(rec.corr_instance_mm[inl], rec.corr_uv[inl], rec.camera,
                      weights=1.0 / np.maximum(rec.corr_sigma_mm[inl], 0.5), ct_points=canon,
                      ct_normals=canon_normals, ct_to_model_init=align.src_to_dst if align.success else None,
                      config=jcfg)
    timings["joint"] = time.perf_counter() - t1
    timings["total"] = time.perf_counter() - t0
    notes = list(rec.notes)
    if not res.success:
        return CTRegistration(nan44, nan44, res.scale, 0, float("nan"), float("nan"), False,
                              res.reason, False, notes + [res.reason], timings)
    if not (SCALE_BOUNDS[0] <= res.scale <= SCALE_BOUNDS[1]):
        reason = (f"the reconstruction came out {res.scale:.2f} x the CT's size (expected "
                  f"{SCALE_BOUNDS[0]}-{SCALE_BOUNDS[1]}): the alignment failed, or the CT holds another bone")
        return CTRegistration(nan44, nan44, res.scale, 0, float("nan"), float("nan"), False, reason, False,
                              notes + [reason], timings)
    ct_to_cam, ct_to_model = res.ct_to_cam @ ct_to_canon, res.ct_to_model @ ct_to_canon
    n_used = int(res.inliers.sum())
    sil_dz = sil_dice = sil_move = sil_outline = float("nan")
    if config.silhouette != "off":
        # in the CT's principal-axis frame, like every step above: the same numbers whatever frame it came in
        canon_to_cam = res.ct_to_cam
        verts = np.asarray(ct_mesh[0], np.float64) @ ct_to_canon[:3, :3].T + ct_to_canon[:3, 3]
        t2 = time.perf_counter()
        new_pose, sil_dice, sil_outline, note = _silhouette_refine(canon_to_cam, (verts, ct_mesh[1]), rec, config)
        c = verts.mean(0)
        sil_dz = float((new_pose[2, :3] - canon_to_cam[2, :3]) @ c + new_pose[2, 3] - canon_to_cam[2, 3])
        sil_move = float(np.linalg.norm(verts @ (new_pose[:3, :3] - canon_to_cam[:3, :3]).T
                                        + (new_pose[:3, 3] - canon_to_cam[:3, 3]), axis=1).mean())
        ct_to_cam = new_pose @ ct_to_canon
        if note:
            notes.append(note)
        timings["silhouette"] = time.perf_counter() - t2
        timings["total"] = time.perf_counter() - t0
    if res.from_guess and not res.align.success:
        notes.append("the CT did not align to the visible predictions alone; the pose rests on its alignment to "
                     "the whole reconstructed shape")
    if n_used < config.min_inliers:
        notes.append(f"few CT correspondences ({n_used} < {config.min_inliers})")
    if not (SCALE_CONFIDENT[0] < res.scale < SCALE_CONFIDENT[1]):
        notes.append(f"the reconstruction is {res.scale:.2f} x the CT's size: is it the same bone?")
    return CTRegistration(ct_to_cam, ct_to_model, float(res.scale), n_used, res.reprojection_error_px,
                          res.surface_residual_mm, True, "", rec.confident and not notes[len(rec.notes):], notes,
                          timings, sil_dz, sil_dice, sil_move, sil_outline)


def _silhouette_refine(ct_to_cam: np.ndarray, ct_mesh: tuple[np.ndarray, np.ndarray], rec: Reconstruction,
                       config: ReconConfig) -> tuple[np.ndarray, float, float, str]:
    """``ReconConfig.silhouette``: the pose of the CT mesh ``ct_mesh`` (vertices,
    faces) whose silhouette best overlaps ``rec``'s bone mask, near ``ct_to_cam``.

    Returns the new pose, its silhouette's Dice, the outline distance
    (:attr:`CTRegistration.silhouette_outline_px`) and a note (empty unless the
    silhouette gave no usable answer; the pose is then unchanged).
    """
    from xrecon.solve.silhouette import silhouette_depth, silhouette_pose

    if rec.mask_prob is None:
        return (ct_to_cam, float("nan"), float("nan"),
                "no bone mask came with the reconstruction: the silhouette step was skipped")
    h, w = rec.mask_prob.shape
    K = rec.camera.resized(h, w).K[0].numpy()
    verts, faces = np.asarray(ct_mesh[0], np.float64), ct_mesh[1]
    if config.silhouette == "pose":
        res = silhouette_pose(verts, faces, ct_to_cam, K, rec.mask_prob,
                              max_depth_change=config.silhouette_max_depth_change,
                              method=config.silhouette_search)
        if not res.success:
            return ct_to_cam, res.dice, res.outline_px, f"the CT's silhouette did not refine the pose ({res.reason})"
        return res.object_to_cam, res.dice, res.outline_px, ""
    verts_cam = verts @ ct_to_cam[:3, :3].T + ct_to_cam[:3, 3]
    sil = silhouette_depth(verts_cam, faces, K, rec.mask_prob, max_change=config.silhouette_max_depth_change)
    if not sil.success or sil.at_bound:
        why = sil.reason or "its best distance is at the end of the search range"
        return ct_to_cam, sil.dice, float("nan"), f"the CT's silhouette did not set the depth ({why})"
    out = ct_to_cam.copy()
    out[:3, 3] += (sil.scale - 1.0) * verts_cam.mean(0)
    return out, sil.dice, float("nan"), ""
