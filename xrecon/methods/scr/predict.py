"""SCR inference: image -> scene coordinates -> filtered 2D-3D correspondences
-> PnP + RANSAC (:mod:`xrecon.solve.pnp`) -> optional intensity refinement.

The pose is ``world_to_cam`` of the CT the model was trained on (its own world
frame, RAS+ mm; OpenCV convention, ../shared/CONVENTIONS.md). Because the model
is patient-specific, that CT's frame *is* the registration target: no 3D
alignment step is needed.

Uncertainty filter (seed 002): a pixel's entry (exit) point is used when its
predicted log variance ``2 log sigma`` (normalised units, see
:mod:`xrecon.methods.scr.network`) is at most ``log_var_threshold``; of those,
at most ``max_points`` with the smallest sigma reach RANSAC. With
``log_var_threshold=None`` the threshold is chosen per image: simply the
``max_points`` most confident points.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from xrecon.errors import InputError
from xrecon.geometry import Camera
from xrecon.imaging import prepare_image
from xrecon.methods.scr.network import SceneCoordinateNet, SceneCoordinates, log_variance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SCRInferenceConfig:
    """Inference settings.

    Attributes:
        log_var_threshold: keep points with ``2 log sigma <=`` this (normalised
            units); ``None`` = per image, the ``max_points`` most confident.
        max_points: most correspondences passed to RANSAC (most confident first).
        reproj_threshold_px: RANSAC inlier threshold in pixels *of the network's
            input resolution* (seed 002: 10 px at 512 px, i.e. 2.5 px at 128).
        pnp_method: ``"poselib"`` (LO-RANSAC, fast) or ``"opencv"`` (the seed's).
        max_iterations: RANSAC iterations (seed 002: 1000).
        use_exit: also use the exit points (the seed uses both).
        polish_points: after RANSAC, polish the pose on up to this many of all
            the correspondences that passed the filter (the engine's
            ``final_refine_points``, poselib only); 0 = off (the pose then rests
            on the ``max_points`` most confident ones).
        min_inlier_ratio: a pose counts as a success only when at least this
            share of the correspondences it was fitted to are inliers (a
            pose that few predictions support is reported as a failure).
        seed: RANSAC seed.
    """

    log_var_threshold: float | None = 0.0
    max_points: int = 1000
    reproj_threshold_px: float = 2.5
    pnp_method: str = "poselib"
    max_iterations: int = 1000
    use_exit: bool = True
    polish_points: int = 0
    min_inlier_ratio: float = 0.2
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "SCRInferenceConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Correspondences:
    """2D-3D correspondences of one image.

    Attributes:
        points_world: ``(N, 3)`` predicted scene coordinates, world mm.
        pixels_uv: ``(N, 2)`` their pixels (u = column, v = row).
        log_variance: ``(N,)`` predicted ``2 log sigma`` (normalised units).
    """

    points_world: np.ndarray
    pixels_uv: np.ndarray
    log_variance: np.ndarray

    def __len__(self) -> int:
        return len(self.points_world)


def scene_correspondences(coords: SceneCoordinates, index: int = 0, use_exit: bool = True) -> Correspondences:
    """Every pixel's entry (and exit) prediction of image ``index`` as correspondences.

    ``coords`` maps are ``(B, H, W, ...)``; the result has ``H W`` (or ``2 H W``) rows,
    entry points first, pixels in row-major order.
    """
    h, w = coords.entry_log_sigma.shape[-2:]
    v, u = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    uv = np.stack([u.ravel(), v.ravel()], axis=1)
    pts = [coords.entry_world[index].reshape(-1, 3)]
    lv = [log_variance(coords.entry_log_sigma[index]).reshape(-1)]
    if use_exit:
        pts.append(coords.exit_world[index].reshape(-1, 3))
        lv.append(log_variance(coords.exit_log_sigma[index]).reshape(-1))
        uv = np.concatenate([uv, uv], axis=0)
    return Correspondences(torch.cat(pts).double().cpu().numpy(), uv, torch.cat(lv).double().cpu().numpy())


def pose_from_correspondences(corr: Correspondences, camera: Camera, config: SCRInferenceConfig):
    """PnP + RANSAC on ``corr`` with the engine; returns its :class:`~xrecon.solve.pnp.PnPResult`."""
    from xrecon.solve.pnp import PnPConfig, solve_pnp

    pnp = PnPConfig(method=config.pnp_method, reproj_threshold_px=config.reproj_threshold_px,
                    max_iterations=config.max_iterations, log_sigma_threshold=config.log_var_threshold,
                    max_points=config.max_points, final_refine_points=config.polish_points,
                    min_inlier_ratio=config.min_inlier_ratio, seed=config.seed)
    # The engine's ``log_sigma`` argument is the seed's log variance.
    return solve_pnp(corr.points_world, corr.pixels_uv, camera, config=pnp, log_sigma=corr.log_variance)


@dataclass
class SCRRegistration:
    """Result of :func:`register_scr`.

    Attributes:
        world_to_cam: ``(4, 4)`` pose of the training CT's world (RAS+ mm) in the
            camera (after refinement when it ran and succeeded); NaN on failure.
        success: whether the PnP pose is trustworthy.
        reason: why not (empty on success).
        pnp_world_to_cam: ``(4, 4)`` pose from PnP alone.
        refined: whether intensity refinement ran and its pose is the result.
        n_correspondences: correspondences that passed the uncertainty filter.
        n_inliers: RANSAC inliers.
        reprojection_error_px: mean inlier reprojection error (network resolution).
        timings_s: ``{"network", "pnp", "refine"}`` wall times.
        details: extra diagnostics (refinement history, thresholds).
    """

    world_to_cam: np.ndarray
    success: bool
    reason: str
    pnp_world_to_cam: np.ndarray
    refined: bool
    n_correspondences: int
    n_inliers: int
    reprojection_error_px: float
    timings_s: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "method": "scr (patient-specific scene coordinate regression, seed 002)",
            "frame": "world_to_cam maps the training CT's world (RAS+ mm) to the OpenCV camera",
            "world_to_cam": np.asarray(self.world_to_cam).tolist(),
            "pnp_world_to_cam": np.asarray(self.pnp_world_to_cam).tolist(),
            "success": bool(self.success),
            "reason": self.reason,
            "refined": bool(self.refined),
            "n_correspondences": int(self.n_correspondences),
            "n_inliers": int(self.n_inliers),
            "reprojection_error_px": float(self.reprojection_error_px),
            "timings_s": {k: float(v) for k, v in self.timings_s.items()},
            "details": self.details,
        }


def predict_poses(model: SceneCoordinateNet, images: torch.Tensor, camera: Camera,
                  config: SCRInferenceConfig | None = None) -> list:
    """Network + PnP for a batch: ``images: (B, 1, H, W)`` at the network's
    resolution, ``camera`` of that resolution (one view or ``B`` views; only
    intrinsics are used). Returns ``B`` :class:`~xrecon.solve.pnp.PnPResult`."""
    config = config or SCRInferenceConfig()
    coords = model.predict(images)
    out = []
    for i in range(images.shape[0]):
        cam_i = camera[i] if len(camera) > 1 else camera
        out.append(pose_from_correspondences(scene_correspondences(coords, i, config.use_exit), cam_i, config))
    return out


def ct_fingerprint(ct) -> str:
    """Content hash of a CT (voxels and affine): the simulator's
    :func:`xrecon.sim.dataset.volume_digest`, as recorded in datasets and SCR models."""
    from xrecon.sim.dataset import volume_digest

    return volume_digest(ct)


def _as_volume(x, reader):
    if x is None:
        return None
    return reader(x) if isinstance(x, (str, Path)) else x


def register_scr(image, camera: Camera | None, model_path: str | Path, ct=None, refine: bool = False, *,
                 labels=None, bone_only_refine: bool = False, config: SCRInferenceConfig | None = None,
                 refine_config=None, device: str = "cpu") -> SCRRegistration:
    """Register an X-ray to the CT a patient-specific SCR model was trained on.

    Args:
        image: ``(H, W)`` X-ray (numpy / torch; bright bone as in a DRR or a
            log-transformed X-ray; the network also saw inverted images).
        camera: the image's camera (intrinsics and size, pose ignored); ``None``
            uses the model's training detector (then the image must be that size).
        model_path: a model file from ``xrecon train scr`` (see
            :mod:`xrecon.methods.scr.model_io`).
        ct: the CT (a :class:`~xrecon.anatomy.volume.Volume` or a path). Needed
            for ``refine``; when given it must be the CT the model was trained on
            (same voxels and affine, checked by content hash).
        refine: polish the PnP pose by intensity-based refinement against the
            CT's DRR (:class:`xrecon.solve.refine.IntensityRefiner`).
        labels: label map (Volume or path, TotalSegmentator names) on the CT
            grid; used only with ``bone_only_refine``.
        bone_only_refine: refine against a DRR of the model's bone structures
            only (default: the whole CT, as the X-ray shows everything).
        config: inference settings; default: those stored in the model.
        refine_config: :class:`xrecon.solve.refine.RefineConfig` (default: its CPU levels).

    Returns:
        :class:`SCRRegistration`. A failed PnP gives ``success=False`` with the
        reason and a NaN pose (refinement is then skipped).

    Raises:
        InputError: unreadable model, image / camera mismatch, a CT other than
            the training CT, ``refine`` without a CT.
    """
    from xrecon.anatomy.ct_io import read_ct, read_labels
    from xrecon.methods.scr.model_io import load_scr_model

    model, info = load_scr_model(model_path, device)
    if config is None:
        config = SCRInferenceConfig.from_dict(info.inference)
    if refine and ct is None:
        raise InputError("refinement needs the CT the model was trained on (pass ct=...)")
    ct = _as_volume(ct, read_ct)
    if ct is not None and info.ct.get("sha256") and ct_fingerprint(ct) != info.ct["sha256"]:
        raise InputError(f"this CT is not the one the SCR model was trained on ({info.ct.get('path', '?')}); "
                         "a patient-specific model registers only its own CT", ct.source)
    if camera is None:
        camera = info.camera
        log.info("no camera given: using the model's training detector (%dx%d px)", camera.height, camera.width)
    net_h, net_w = info.camera.height, info.camera.width
    x, cam_net = prepare_image(image, camera, net_h, net_w)
    t0 = time.perf_counter()
    coords = model.predict(x.to(device))
    t1 = time.perf_counter()
    corr = scene_correspondences(coords, 0, config.use_exit)
    res = pose_from_correspondences(corr, cam_net, config)
    t2 = time.perf_counter()
    n_pass = int((corr.log_variance <= config.log_var_threshold).sum()) if config.log_var_threshold is not None \
        else len(corr)
    out = SCRRegistration(
        world_to_cam=res.world_to_cam.copy(), success=res.success, reason=res.reason,
        pnp_world_to_cam=res.world_to_cam.copy(), refined=False, n_correspondences=n_pass,
        n_inliers=res.n_inliers, reprojection_error_px=res.reprojection_error_px,
        timings_s={"network": t1 - t0, "pnp": t2 - t1},
        details={"inference": dataclasses.asdict(config), "network_size_px": [net_h, net_w]},
    )
    if refine:
        if not res.success:
            out.details["refine"] = "skipped: PnP failed"
            return out
        structures = None
        if bone_only_refine:
            if labels is None:
                raise InputError("bone-only refinement needs the label map (pass labels=...)")
            if isinstance(labels, (str, Path)):
                labels = read_labels(labels, like=ct, names="totalsegmentator")
            structures = [int(i) for i in info.ct.get("structure_ids", [])] or None
        from xrecon.solve.refine import IntensityRefiner

        refiner = IntensityRefiner(ct, camera, labels=labels if bone_only_refine else None, structures=structures,
                                   config=refine_config)
        ref = refiner.refine(torch.as_tensor(np.asarray(image), dtype=torch.float32).reshape(camera.height,
                                                                                            camera.width),
                             res.world_to_cam)
        out.timings_s["refine"] = ref.time_s
        out.details["refine"] = {"success": ref.success, "reason": ref.reason,
                                 "similarity_init": ref.similarity_init, "similarity_final": ref.similarity_final,
                                 "n_iterations": ref.n_iterations}
        if ref.success:
            out.world_to_cam = np.asarray(ref.world_to_cam).copy()
            out.refined = True
    return out
