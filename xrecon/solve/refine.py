"""Intensity-based pose refinement: move ``world_to_cam`` until the DRR of the
CT looks like the X-ray.

:class:`IntensityRefiner` (an ``nn.Module``) holds one differentiable DRR
renderer (:class:`xrecon.sim.drr.DrrRenderer`) per pyramid level, built once
per CT and camera, and :meth:`IntensityRefiner.refine` optimises one case:

* **Parameterisation.** A small se(3) increment ``(omega, tau)`` (radians, mm)
  around the start pose, rotating about the CT centre ``c`` (in the start
  camera frame) rather than about the X-ray source, which decouples rotation
  and translation: ``x_cam' = R(omega) (x_cam - c) + c + tau``
  (:class:`PoseIncrement`; rotations by :func:`xrecon.geometry.se3.rotvec_to_rotmat`).
* **Coarse to fine.** Each :class:`RefineLevel` sets the image size (the X-ray
  is box-downsampled, the camera :meth:`~xrecon.geometry.Camera.resized`), the
  CT voxel size, the Adam step sizes and an iteration cap. Each level starts
  from the best pose of the previous one.
* **Early stopping.** A level ends after ``patience`` iterations without an
  improvement of the similarity by ``min_improvement``.
* **Safety.** The final pose is compared with the start at the finest level;
  if the similarity got worse, the start pose is returned with
  ``success=False`` and a reason. A constant X-ray or a non-finite start pose
  fails at once.

Several views: :class:`MultiViewRefiner` moves one ``ct_to_world`` seen through
cameras that share one world frame (each view's DRR at ``world_to_cam[i] @
ct_to_world``), maximising the views' mean similarity with the same levels and
safety checks. One view pins the bone across the image but hardly along the
ray; a second view from another direction pins that too.

Similarity: :mod:`xrecon.solve.similarity` (multiscale NCC by default). The CPU
defaults (32 -> 64 -> 128 px, CT at 4 -> 3 -> 2 mm) take seconds to tens of
seconds per case; the same code runs on a GPU with larger levels.
Poses follow :mod:`xrecon.geometry` (OpenCV ``world_to_cam``, RAS+ world).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from xrecon.errors import InputError, ShapeError
from xrecon.geometry.se3 import rotvec_to_rotmat
from xrecon.solve.similarity import image_similarity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefineLevel:
    """One pyramid level.

    Attributes:
        image_size: image height in pixels at this level (width keeps the aspect).
        spacing_mm: CT voxel size rendered at this level.
        max_iterations: optimiser steps at most.
        lr_rotation_deg: Adam step size of the rotation increment (degrees).
        lr_translation_mm: Adam step size of the translation increment (mm).
    """

    image_size: int
    spacing_mm: float
    max_iterations: int
    lr_rotation_deg: float
    lr_translation_mm: float


@dataclass(frozen=True)
class RefineConfig:
    """Settings of :class:`IntensityRefiner`.

    Attributes:
        levels: coarse-to-fine levels (image size must not exceed the X-ray's).
        similarity: a name from :data:`xrecon.solve.similarity.SIMILARITIES`.
        patience: iterations without improvement before a level stops.
        min_improvement: similarity gain that counts as an improvement.
        n_samples: samples per ray of the trilinear DRR renderer.
    """

    levels: tuple[RefineLevel, ...] = (
        RefineLevel(32, 4.0, 80, 1.0, 3.0),
        RefineLevel(64, 3.0, 50, 0.3, 1.0),
        RefineLevel(128, 2.0, 30, 0.1, 0.3),
    )
    similarity: str = "multiscale_ncc"
    patience: int = 10
    min_improvement: float = 1e-4
    n_samples: int = 200

    def __post_init__(self):
        image_similarity(self.similarity)  # validates the name
        if not self.levels:
            raise InputError("RefineConfig needs at least one level")


@dataclass
class RefineResult:
    """Outcome of :meth:`IntensityRefiner.refine`.

    Attributes:
        world_to_cam: ``(4, 4)`` float64 refined pose (the start pose when
            ``success`` is False).
        init_world_to_cam: ``(4, 4)`` the start pose.
        similarity_init, similarity_final: similarity at the finest level for
            the start and the returned pose.
        history: one ``{"level", "iteration", "similarity"}`` per step (the loss
            history; loss = -similarity).
        n_iterations: optimiser steps over all levels.
        success, reason, time_s: as for every solver.
    """

    world_to_cam: np.ndarray
    init_world_to_cam: np.ndarray
    similarity_init: float
    similarity_final: float
    history: list[dict] = field(default_factory=list)
    n_iterations: int = 0
    success: bool = False
    reason: str = ""
    time_s: float = 0.0


class PoseIncrement(torch.nn.Module):
    """``world_to_cam = increment(omega, tau) o start``, rotating about ``centre_cam``.

    Args:
        init_world_to_cam: ``(4, 4)`` start pose.
        centre_cam: ``(3,)`` rotation centre in the start camera frame (mm).
    """

    def __init__(self, init_world_to_cam: torch.Tensor, centre_cam: torch.Tensor):
        super().__init__()
        self.register_buffer("init_world_to_cam", torch.as_tensor(init_world_to_cam, dtype=torch.float64))
        self.register_buffer("centre_cam", torch.as_tensor(centre_cam, dtype=torch.float64))
        self.rotation = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))  # radians
        self.translation = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))  # mm

    def forward(self) -> torch.Tensor:
        """The current pose ``(1, 4, 4)`` (differentiable in the parameters)."""
        R = rotvec_to_rotmat(self.rotation)
        c = self.centre_cam
        delta = torch.eye(4, dtype=torch.float64)
        delta = torch.cat([torch.cat([R, (c - R @ c + self.translation)[:, None]], 1), delta[3:]], 0)
        return (delta @ self.init_world_to_cam)[None]


def _downsample(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Area-average ``(H, W)`` to ``(height, width)``."""
    if image.shape == (height, width):
        return image
    return torch.nn.functional.interpolate(image[None, None], size=(height, width), mode="area")[0, 0]


class IntensityRefiner(torch.nn.Module):
    """DRR renderers of one CT for one detector, one per pyramid level.

    Args:
        ct: CT volume (HU, RAS+ world).
        camera: the X-ray's detector (intrinsics and full image size).
        labels, structures: optional label map and label ids to render (e.g.
            bone only); see :class:`~xrecon.sim.drr.DrrRenderer`.
        config: :class:`RefineConfig`.
        device: torch device.
    """

    def __init__(self, ct, camera, *, labels=None, structures=None, config: RefineConfig | None = None,
                 device: str | torch.device = "cpu"):
        super().__init__()
        from xrecon.sim.drr import DrrRenderer

        self.config = config or RefineConfig()
        self.camera = camera
        self.renderers = torch.nn.ModuleList()
        self.level_cameras = []
        for level in self.config.levels:
            if level.image_size > camera.height:
                raise InputError(f"level image size {level.image_size} exceeds the X-ray height {camera.height}")
            h = int(level.image_size)
            w = max(1, int(round(camera.width * h / camera.height)))
            cam = camera.resized(h, w)
            self.level_cameras.append(cam)
            self.renderers.append(DrrRenderer(ct, cam, labels=labels, structures=structures,
                                              spacing_mm=level.spacing_mm, n_samples=self.config.n_samples,
                                              device=device))
        fine = self.renderers[-1]
        shape = np.asarray(fine.render_shape, dtype=np.float64)
        A = fine.render_voxel_to_world
        #: ``(3,)`` world position of the rendered volume's centre: the rotation centre.
        self.centre_world = A[:3, :3] @ ((shape - 1) / 2) + A[:3, 3]
        self._similarity = image_similarity(self.config.similarity)

    def similarity(self, xray: torch.Tensor, world_to_cam: torch.Tensor, level: int = -1) -> torch.Tensor:
        """Similarity ``(B,)`` of ``xray: (H, W)`` (full size) with the DRRs of
        ``world_to_cam: (B, 4, 4)`` at pyramid ``level``."""
        cam = self.level_cameras[level]
        target = _downsample(torch.as_tensor(xray, dtype=torch.float32), cam.height, cam.width)
        return self._level_similarity(target, world_to_cam, level)

    def _level_similarity(self, target: torch.Tensor, world_to_cam: torch.Tensor, level: int) -> torch.Tensor:
        drr = self.renderers[level](world_to_cam)
        return self._similarity(drr, target.expand_as(drr))

    def refine(self, xray: torch.Tensor, init_world_to_cam, *, progress: bool = False) -> RefineResult:
        """Refine one pose.

        Args:
            xray: ``(H, W)`` image of the camera's size (any intensity scale; the
                similarity is invariant to affine intensity changes; bright = dense,
                like a DRR / log-transformed X-ray).
            init_world_to_cam: ``(4, 4)`` start pose.
            progress: show a tqdm bar over the iterations.
        """
        t0 = time.perf_counter()
        init = _start_pose(init_world_to_cam)
        res = RefineResult(init.numpy().copy(), init.numpy().copy(), float("nan"), float("nan"))
        xray = _check_xray(xray, self.camera, "xray")
        reason = _bad_input(init, [xray])
        if reason:
            return _done(res, t0, reason)
        targets = [_downsample(xray, cam.height, cam.width) for cam in self.level_cameras]
        centre = torch.as_tensor(self.centre_world, dtype=torch.float64)
        pose = _coarse_to_fine(lambda li, p: self._level_similarity(targets[li], p, li)[0], init, centre,
                               self.config, res, progress)
        return _finish(res, pose, t0)


class MultiViewRefiner(torch.nn.Module):
    """Intensity refinement of one CT seen in several X-rays whose cameras share
    one world frame (a calibrated biplanar system, C-arm shots at known angles).

    One rigid ``ct_to_world`` is optimised against the mean of the views'
    similarities (each view's DRR at ``world_to_cam[i] @ ct_to_world``), coarse to
    fine as :class:`IntensityRefiner`, rotating about the CT centre. A second view
    from another direction fixes what one view leaves loose: the distance along
    the first view's ray, which one image's intensities hardly change.

    Args:
        ct: CT volume (HU, RAS+ world of the file).
        cameras: one :class:`~xrecon.geometry.Camera` per X-ray (intrinsics and
            size; each camera's own pose is ignored: poses are given to :meth:`refine`).
        labels, structures, config, device: as :class:`IntensityRefiner`.
    """

    def __init__(self, ct, cameras, *, labels=None, structures=None, config: RefineConfig | None = None,
                 device: str | torch.device = "cpu"):
        super().__init__()
        if not cameras:
            raise InputError("MultiViewRefiner needs at least one camera")
        self.config = config or RefineConfig()
        self.views = torch.nn.ModuleList([IntensityRefiner(ct, cam, labels=labels, structures=structures,
                                                           config=self.config, device=device) for cam in cameras])
        #: ``(3,)`` the CT centre (rotation centre), CT frame.
        self.centre_ct = self.views[0].centre_world

    def similarity(self, xrays, world_to_cam, ct_to_world, level: int = -1) -> torch.Tensor:
        """Mean similarity of ``xrays`` (one ``(H, W)`` per view) with the DRRs at
        ``world_to_cam[i] @ ct_to_world`` (``(4, 4)`` each)."""
        w2c = _view_poses(world_to_cam, len(self.views))
        ct2w = torch.as_tensor(np.asarray(ct_to_world, np.float64))
        return torch.stack([v.similarity(torch.as_tensor(x), (w2c[i] @ ct2w)[None], level)[0]
                            for i, (v, x) in enumerate(zip(self.views, xrays))]).mean()

    def refine(self, xrays, world_to_cam, init_ct_to_world, *, progress: bool = False) -> RefineResult:
        """Refine ``init_ct_to_world (4, 4)`` against ``xrays`` (one ``(H, W)`` image of
        each camera's size per view) seen through ``world_to_cam`` (one ``(4, 4)`` per
        view). The result's ``world_to_cam`` / ``init_world_to_cam`` fields hold the
        refined / start **ct_to_world**; the similarities are the views' mean."""
        t0 = time.perf_counter()
        init = _start_pose(init_ct_to_world)
        res = RefineResult(init.numpy().copy(), init.numpy().copy(), float("nan"), float("nan"))
        if len(xrays) != len(self.views):
            raise InputError(f"{len(xrays)} X-rays for {len(self.views)} cameras: give one image per camera")
        w2c = _view_poses(world_to_cam, len(self.views))
        xrays = [_check_xray(x, v.camera, f"xrays[{i}]") for i, (x, v) in enumerate(zip(xrays, self.views))]
        reason = _bad_input(init, xrays)
        if not reason and not torch.isfinite(w2c).all():
            reason = "a view's world_to_cam holds NaN or inf"
        if reason:
            return _done(res, t0, reason)
        targets = [[_downsample(x, cam.height, cam.width) for cam in v.level_cameras]
                   for x, v in zip(xrays, self.views)]

        def level_similarity(li: int, ct_to_world: torch.Tensor) -> torch.Tensor:
            return torch.stack([v._level_similarity(targets[i][li], w2c[i][None] @ ct_to_world, li)[0]
                                for i, v in enumerate(self.views)]).mean()

        centre = torch.as_tensor(self.centre_ct, dtype=torch.float64)
        pose = _coarse_to_fine(level_similarity, init, centre, self.config, res, progress)
        return _finish(res, pose, t0)


def _start_pose(pose) -> torch.Tensor:
    init = torch.as_tensor(np.asarray(pose, dtype=np.float64))
    if init.shape != (4, 4):
        raise ShapeError("start pose", "(4, 4)", tuple(init.shape))
    return init


def _view_poses(world_to_cam, n_views: int) -> torch.Tensor:
    w2c = torch.as_tensor(np.asarray(world_to_cam, dtype=np.float64))
    if w2c.shape != (n_views, 4, 4):
        raise ShapeError("world_to_cam", f"({n_views}, 4, 4) one pose per view", tuple(w2c.shape))
    return w2c


def _check_xray(xray, camera, name: str) -> torch.Tensor:
    xray = torch.as_tensor(xray)
    if xray.shape != (camera.height, camera.width):
        raise ShapeError(name, f"({camera.height}, {camera.width})", tuple(xray.shape))
    return xray.to(torch.float32)


def _bad_input(init: torch.Tensor, xrays: list[torch.Tensor]) -> str:
    """Why the refinement cannot start (``""`` when it can)."""
    if not torch.isfinite(init).all():
        return "start pose holds NaN or inf"
    for x in xrays:
        if not torch.isfinite(x).all():
            return "X-ray image holds NaN or inf"
        if float(x.max() - x.min()) <= 1e-12 * max(1.0, float(x.abs().max())):
            return "X-ray image is constant (empty): nothing to register to"
    return ""


def _done(res: RefineResult, t0: float, reason: str = "") -> RefineResult:
    res.success, res.reason, res.time_s = not reason, reason, time.perf_counter() - t0
    if reason:
        log.info("intensity refinement: %s", reason)
    return res


def _coarse_to_fine(level_similarity, init: torch.Tensor, centre: torch.Tensor, config: RefineConfig,
                    res: RefineResult, progress: bool) -> torch.Tensor:
    """The optimisation shared by one and several views: from ``init (4, 4)``, per
    level an Adam search over a :class:`PoseIncrement` rotating about the point
    ``centre (3,)`` (in ``init``'s source frame), maximising
    ``level_similarity(level, pose (1, 4, 4)) -> scalar``; each level starts from
    the previous level's best pose. Fills ``res`` (start / final similarity at the
    finest level, history, iterations) and returns the best pose ``(4, 4)``."""
    with torch.no_grad():
        res.similarity_init = float(level_similarity(len(config.levels) - 1, init[None]))
    pose = init
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(lv.max_iterations for lv in config.levels), desc="refine", leave=False)
    for li, level in enumerate(config.levels):
        module = PoseIncrement(pose, pose[:3, :3] @ centre + pose[:3, 3])
        opt = torch.optim.Adam([
            {"params": [module.rotation], "lr": math.radians(level.lr_rotation_deg)},
            {"params": [module.translation], "lr": level.lr_translation_mm},
        ])
        best_sim, best_pose, stale = -math.inf, pose, 0
        for it in range(level.max_iterations):
            opt.zero_grad()
            current = module()
            sim = level_similarity(li, current)
            (-sim).backward()
            value = float(sim.detach())
            res.history.append({"level": li, "iteration": it, "similarity": value})
            res.n_iterations += 1
            if bar is not None:
                bar.update(1)
            if value > best_sim + config.min_improvement:
                best_sim, best_pose, stale = value, current.detach()[0].clone(), 0
            else:
                if value > best_sim:
                    best_sim, best_pose = value, current.detach()[0].clone()
                stale += 1
                if stale >= config.patience:
                    break
            if not all(torch.isfinite(p.grad).all() for p in (module.rotation, module.translation)):
                break
            opt.step()
        pose = best_pose
    if bar is not None:
        bar.close()
    with torch.no_grad():
        res.similarity_final = float(level_similarity(len(config.levels) - 1, pose[None]))
    return pose


def _finish(res: RefineResult, pose: torch.Tensor, t0: float) -> RefineResult:
    """The safety checks on the optimised ``pose``: the start is kept when the
    optimisation diverged or lowered the similarity."""
    if not torch.isfinite(pose).all():
        return _done(res, t0, "optimisation diverged (non-finite pose); start pose kept")
    if res.similarity_final < res.similarity_init:
        res.similarity_final = res.similarity_init
        return _done(res, t0, "refinement lowered the similarity; start pose kept")
    res.world_to_cam = pose.numpy().copy()
    return _done(res, t0)
