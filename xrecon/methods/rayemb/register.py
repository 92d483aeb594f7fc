"""RayEmb inference: find each landmark of a CT in an X-ray, then the CT's pose.

Pipeline (seed 003), for a CT (any frame, labels or a HU threshold) and an X-ray:

1. sample ``K`` landmarks on, in and around the CT's bone
   (:func:`~xrecon.methods.rayemb.landmarks.sample_ct_landmarks`), or take the
   user's own list;
2. template rays: DRRs at ``T`` known poses, embedded, read at each landmark's
   projections (:mod:`~xrecon.methods.rayemb.templates`; cached per CT);
3. embed the X-ray; score every pixel's ray against each landmark's subspace
   (:func:`~xrecon.methods.rayemb.subspace.subspace_similarity`); the arg-max is
   the landmark's 2D position (sub-pixel: a parabola through the peak and its
   neighbours on each axis), its similarity the score
   (:func:`locate_landmarks`);
4. keep the confident landmarks (score at least ``min_score``, at most
   ``max_landmarks`` best) and solve PnP + RANSAC (:func:`xrecon.solve.pnp.solve_pnp`,
   scores as weights);
5. optionally refine the pose by intensity (:class:`xrecon.solve.refine.IntensityRefiner`).

Frames: landmarks and poses are in the CT's frame; the result is ``ct_to_cam``
(OpenCV, ../shared/CONVENTIONS.md); pixels are the input X-ray's.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from xrecon.anatomy.volume import Volume
from xrecon.errors import InputError, ShapeError
from xrecon.geometry import Camera
from xrecon.methods.rayemb.landmarks import sample_ct_landmarks
from xrecon.methods.rayemb.subspace import similarity_maps, subspace_basis
from xrecon.methods.rayemb.templates import (DEFAULT_TEMPLATE_ANGLES, TemplateSet, build_templates,
                                             template_cache_key, template_poses)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayEmbConfig:
    """Settings of :func:`register_ct` / :class:`RayEmbRegistrar`.

    Attributes:
        n_landmarks: landmarks sampled in the CT (``K``).
        landmark_seed: seed of that sampling.
        template_angles_deg: ``(LAO, cranial)`` of each template view.
        min_templates: fewest templates a landmark must project into.
        min_score: keep landmarks whose peak similarity is at least this.
        max_landmarks: at most this many (highest scores) reach PnP.
        reproj_threshold_px: RANSAC inlier threshold in the *network's* image pixels.
        render_spacing_mm, n_samples: template renderer settings.
        hu_threshold: bone threshold when no label map is given.
        eps: Gram regularisation of the subspace similarity.
    """

    n_landmarks: int = 200
    landmark_seed: int = 0
    template_angles_deg: tuple = DEFAULT_TEMPLATE_ANGLES
    min_templates: int = 2
    min_score: float = 0.5
    max_landmarks: int = 120
    reproj_threshold_px: float = 3.0
    render_spacing_mm: float = 2.0
    n_samples: int = 200
    hu_threshold: float = 200.0
    eps: float = 1e-5

    def __post_init__(self):
        if self.n_landmarks < 4 or self.max_landmarks < 4:
            raise InputError("n_landmarks and max_landmarks must be >= 4 (PnP needs four points)")
        if self.min_templates < 1 or self.min_templates > len(self.template_angles_deg):
            raise InputError(f"min_templates must be in 1..{len(self.template_angles_deg)}")


@dataclass
class LandmarkDetections:
    """Where each landmark was found in one image.

    Attributes:
        landmarks_ct: ``(L, 3)`` CT frame, mm.
        uv: ``(L, 2)`` pixels of the image the embeddings came from (NaN: not searched).
        score: ``(L,)`` peak similarity in [0, 1] (NaN: not searched: too few templates).
        confident: ``(L,)`` bool, kept for PnP.
    """

    landmarks_ct: np.ndarray
    uv: np.ndarray
    score: np.ndarray
    confident: np.ndarray


def _subpixel(maps: torch.Tensor, idx: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Sub-pixel peaks ``(L, 2)`` of ``maps: (L, H*W)`` around arg-max ``idx: (L,)``.

    A 2D quadratic ``a + b du + c dv + d du^2 + e du dv + f dv^2`` is fitted to
    the 3 x 3 neighbourhood by least squares and its maximum taken (the cross
    term matters: a landmark's similarity peak is an ellipse at any angle); the
    offset is kept within one pixel, and a peak on the border or a fit that is
    not a maximum keeps the whole pixel.
    """
    v0, u0 = idx // w, idx % w
    ok = (u0 > 0) & (u0 < w - 1) & (v0 > 0) & (v0 < h - 1)
    du, dv = torch.meshgrid(torch.arange(-1, 2), torch.arange(-1, 2), indexing="xy")
    du, dv = du.reshape(-1), dv.reshape(-1)  # 9 offsets
    uu, vv = (u0[:, None] + du).clamp(0, w - 1), (v0[:, None] + dv).clamp(0, h - 1)
    vals = maps.gather(1, vv * w + uu)  # (L, 9)
    A = torch.stack([torch.ones(9), du, dv, du * du, du * dv, dv * dv], -1).to(maps.dtype)  # (9, 6)
    coef = vals @ torch.linalg.pinv(A).T  # (L, 6)
    b, c, d, e, f = coef[:, 1], coef[:, 2], coef[:, 3], coef[:, 4], coef[:, 5]
    det = 4 * d * f - e * e
    is_max = ok & (d < 0) & (det > 1e-18)
    safe = torch.where(is_max, det, torch.ones_like(det))
    off_u = (-2 * f * b + e * c) / safe
    off_v = (-2 * d * c + e * b) / safe
    keep = is_max & (off_u.abs() <= 1) & (off_v.abs() <= 1)
    off_u = torch.where(keep, off_u, torch.zeros_like(off_u))
    off_v = torch.where(keep, off_v, torch.zeros_like(off_v))
    return torch.stack([u0.to(maps.dtype) + off_u, v0.to(maps.dtype) + off_v], dim=-1)


@torch.no_grad()
def locate_landmarks(query_embedding: torch.Tensor, templates: TemplateSet, *, min_templates: int = 2,
                     eps: float = 1e-5, chunk: int = 64, return_maps: bool = False):
    """Each landmark's 2D position and score in one image.

    Args:
        query_embedding: ``(D, H, W)`` ray embeddings of the image.
        templates: the landmarks' template rays (:class:`TemplateSet`, same ``D``).
        min_templates: landmarks seen in fewer templates are not searched (NaN).
        eps: Gram regularisation.
        chunk: landmarks scored together (memory: ``chunk * H * W * T`` floats).
        return_maps: also return the similarity maps ``(L, H, W)``.

    Returns:
        ``uv (L, 2)`` float64 pixels, ``score (L,)`` float64 (peak similarity),
        and the maps when asked.
    """
    if query_embedding.ndim != 3 or query_embedding.shape[0] != templates.embeddings.shape[-1]:
        raise ShapeError("query_embedding", f"({templates.embeddings.shape[-1]}, H, W)", tuple(query_embedding.shape))
    d, h, w = query_embedding.shape
    flat = query_embedding.reshape(d, -1).T.to(templates.embeddings.dtype)  # (HW, D)
    n = len(templates)
    uv = torch.full((n, 2), float("nan"), dtype=torch.float64)
    score = torch.full((n,), float("nan"), dtype=torch.float64)
    maps = torch.zeros((n, h, w)) if return_maps else None
    searched = torch.nonzero(templates.valid.sum(1) >= min_templates)[:, 0]
    for start in range(0, len(searched), chunk):
        ids = searched[start:start + chunk]
        sim = similarity_maps(flat, subspace_basis(templates.embeddings[ids], templates.valid[ids], eps))  # (c, HW)
        best, idx = sim.max(dim=1)
        uv[ids] = _subpixel(sim, idx, h, w).double()
        score[ids] = best.double()
        if return_maps:
            maps[ids] = sim.view(-1, h, w).float()
    out = (uv.numpy(), score.numpy())
    return out + (maps,) if return_maps else out


def select_confident(score: np.ndarray, min_score: float, max_keep: int) -> np.ndarray:
    """``(L,)`` bool: scores at least ``min_score`` (NaN never), the ``max_keep`` highest."""
    s = np.where(np.isfinite(score), score, -np.inf)
    keep = s >= min_score
    if keep.sum() > max_keep:
        keep &= s >= np.sort(s[keep])[-max_keep]
    return keep


def pose_from_detections(detections: LandmarkDetections, K: np.ndarray, reproj_threshold_px: float = 3.0, **pnp):
    """PnP + RANSAC (:func:`xrecon.solve.pnp.solve_pnp`, poselib) on the confident
    detections, scores as weights -> :class:`~xrecon.solve.pnp.PnPResult` (``ct_to_cam``;
    ``inliers`` over the confident subset)."""
    from xrecon.solve.pnp import PnPConfig, solve_pnp

    keep = detections.confident
    cfg = PnPConfig(reproj_threshold_px=reproj_threshold_px, max_points=None, min_inliers=6, **pnp)
    return solve_pnp(detections.landmarks_ct[keep], detections.uv[keep], K, config=cfg,
                     weights=detections.score[keep])


@dataclass
class RayEmbResult:
    """Outcome of :meth:`RayEmbRegistrar.register`.

    Attributes:
        ct_to_cam: ``(4, 4)`` CT-to-camera pose after PnP (NaN when ``success`` is False).
        ct_to_cam_refined: after intensity refinement (``None`` when not asked or not improved).
        detections: landmarks with their pixels *in the input image* and scores.
        n_confident, n_inliers: landmarks kept for PnP and the RANSAC inliers among them.
        success, reason: as for every solver.
        timings_s: ``templates`` (image preparation + template set: built, read from disk or
            kept in memory), ``embed``, ``locate``, ``pnp``, ``refine``, ``total``.
    """

    ct_to_cam: np.ndarray
    detections: LandmarkDetections
    n_confident: int
    n_inliers: int
    success: bool
    reason: str = ""
    ct_to_cam_refined: np.ndarray | None = None
    timings_s: dict = field(default_factory=dict)


class RayEmbRegistrar:
    """One CT, ready to be registered to X-rays with a RayEmb network.

    The landmarks are sampled once; the template set is built on the first
    image of each detector and kept (in memory, and on disk by
    :func:`~xrecon.methods.rayemb.templates.template_cache_key`).

    Args:
        net: a :class:`~xrecon.methods.rayemb.network.RayEmbNet` (eval mode).
        ct: the CT (HU), any world frame.
        labels, structures: optional bone label map on the CT grid (else ``hu_threshold``).
        landmarks_ct: ``(L, 3)`` the user's own landmarks (CT frame, mm); default: sampled.
        ct_to_patient: the CT frame in patient RAS+ axes (identity for a CT read from
            a file), used to place the template C-arm views.
        config: :class:`RayEmbConfig`.
        disk_cache: cache template sets on disk.
    """

    def __init__(self, net, ct: Volume, *, labels: Volume | None = None, structures: list[int] | None = None,
                 landmarks_ct: np.ndarray | None = None, ct_to_patient: np.ndarray | None = None,
                 config: RayEmbConfig = RayEmbConfig(), disk_cache: bool = True):
        from xrecon.methods.rayemb.landmarks import bone_mask

        self.net, self.ct, self.labels, self.structures, self.config = net, ct, labels, structures, config
        if landmarks_ct is None:
            landmarks_ct = sample_ct_landmarks(ct, config.n_landmarks, labels=labels, structures=structures,
                                               hu_threshold=config.hu_threshold, seed=config.landmark_seed)
        self.landmarks_ct = np.asarray(landmarks_ct, np.float64)
        if self.landmarks_ct.ndim != 2 or self.landmarks_ct.shape[1] != 3 or len(self.landmarks_ct) < 4:
            raise ShapeError("landmarks_ct", "(L, 3) with L >= 4", self.landmarks_ct.shape)
        mask = bone_mask(ct, labels, structures, config.hu_threshold)
        #: isocentre of the template views: the bone's centroid (CT frame)
        self.centre_ct = ct.voxel_to_world_points(np.argwhere(mask).mean(0)[None])[0]
        self.ct_to_patient = ct_to_patient
        self.disk_cache = disk_cache
        self._templates: dict[tuple, TemplateSet] = {}

    @property
    def image_size(self) -> int:
        return int(self.net.config.image_size)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` -> ``(B, D, H, W)`` with the network (no gradients)."""
        with torch.no_grad():
            return torch.cat([self.net(x) for x in images.split(8)])

    def templates_for(self, net_camera: Camera, source_to_isocentre_mm: float | None = None) -> TemplateSet:
        """The template set for a detector at the network's size (built once per detector)."""
        K = net_camera.K[0].numpy()
        key = (tuple(np.round(K.ravel(), 6)), net_camera.height, net_camera.width)
        if key not in self._templates:
            sod = source_to_isocentre_mm
            if sod is None:  # the isocentre distance of a C-arm with this focal length (DeepFluoro's ratio)
                sod = float(net_camera.sdd_mm[0]) * 765.0 / 1020.0
            poses = template_poses(self.centre_ct, self.config.template_angles_deg, sod, self.ct_to_patient)
            cache_key = None
            if self.disk_cache:
                cache_key = template_cache_key(self.ct, net_camera, self.landmarks_ct, poses,
                                               network_fingerprint(self.net), self.labels, self.structures,
                                               self.config.render_spacing_mm, self.config.n_samples)
            self._templates[key] = build_templates(
                self.ct, net_camera, self.landmarks_ct, self.embed, poses,
                spacing_mm=self.config.render_spacing_mm, n_samples=self.config.n_samples, cache_key=cache_key)
        return self._templates[key]

    def register(self, image, camera: Camera, *, refine: bool = False, refine_config=None) -> RayEmbResult:
        """Pose of the CT in the camera of ``image: (H, W)`` (any intensity scale).

        ``camera``: the X-ray's detector (intrinsics; its pose is ignored).
        """
        from xrecon.imaging import prepare_image

        cfg = self.config
        t0 = time.monotonic()
        x, net_cam = prepare_image(image, camera[0], self.image_size, self.image_size)
        tpl = self.templates_for(net_cam)
        t1 = time.monotonic()
        emb = self.embed(x)[0]
        t2 = time.monotonic()
        uv_net, score = locate_landmarks(emb, tpl, min_templates=cfg.min_templates, eps=cfg.eps)
        confident = select_confident(score, cfg.min_score, cfg.max_landmarks)
        t3 = time.monotonic()
        det = LandmarkDetections(self.landmarks_ct, uv_net, score, confident)
        pnp = pose_from_detections(det, tpl.K, cfg.reproj_threshold_px)
        t4 = time.monotonic()
        # pixels of the input image: undo the network resize (both cameras share the detector)
        sx, sy = camera.width / net_cam.width, camera.height / net_cam.height
        uv_in = np.stack([(uv_net[:, 0] + 0.5) * sx - 0.5, (uv_net[:, 1] + 0.5) * sy - 0.5], axis=1)
        result = RayEmbResult(np.asarray(pnp.world_to_cam, np.float64), LandmarkDetections(
            self.landmarks_ct, uv_in, score, confident), int(confident.sum()), int(pnp.n_inliers), bool(pnp.success),
            pnp.reason)
        t5 = time.monotonic()
        if refine and pnp.success:
            from xrecon.solve.refine import IntensityRefiner

            refiner = IntensityRefiner(self.ct, camera[0], config=refine_config)
            res = refiner.refine(torch.as_tensor(np.asarray(image, np.float32)), torch.as_tensor(result.ct_to_cam))
            result.ct_to_cam_refined = np.asarray(res.world_to_cam, np.float64) if res.success else None
        result.timings_s = {"templates": t1 - t0, "embed": t2 - t1,
                            "locate": t3 - t2, "pnp": t4 - t3, "refine": time.monotonic() - t5,
                            "total": time.monotonic() - t0}
        return result


def network_fingerprint(net) -> str:
    """A digest of a network's configuration and weights (the template cache depends on it)."""
    fp = getattr(net, "_rayemb_fingerprint", None)
    if fp is None:
        from xrecon.anatomy.cache import hash_inputs

        state = net.state_dict()
        fp = hash_inputs(getattr(getattr(net, "config", None), "to_dict", lambda: {})(),
                         *[state[k].detach().cpu().numpy() for k in sorted(state)])
        net._rayemb_fingerprint = fp
    return fp


def register_ct(net, image, camera: Camera, ct: Volume, *, labels: Volume | None = None,
                structures: list[int] | None = None, landmarks_ct: np.ndarray | None = None,
                config: RayEmbConfig = RayEmbConfig(), refine: bool = False) -> RayEmbResult:
    """One-shot :class:`RayEmbRegistrar` (builds or reads the templates each call)."""
    return RayEmbRegistrar(net, ct, labels=labels, structures=structures, landmarks_ct=landmarks_ct,
                           config=config).register(image, camera, refine=refine)
