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
        init = torch.as_tensor(np.asarray(init_world_to_cam, dtype=np.float64))
        if init.shape != (4, 4):
            raise ShapeError("init_world_to_cam", "(4, 4)", tuple(init.shape))
        xray = torch.as_tensor(xray)
        if xray.shape != (self.camera.height, self.camera.width):
            raise ShapeError("xray", f"({self.camera.height}, {self.camera.width})", tuple(xray.shape))
        nan = float("nan")
        res = RefineResult(init.numpy().copy(), init.numpy().copy(), nan, nan)

        def done(reason: str = "") -> RefineResult:
            res.success, res.reason, res.time_s = not reason, reason, time.perf_counter() - t0
            if reason:
                log.info("intensity refinement: %s", reason)
            return res

        if not torch.isfinite(init).all():
            return done("start pose holds NaN or inf")
        xray = xray.to(torch.float32)
        if not torch.isfinite(xray).all():
            return done("X-ray image holds NaN or inf")
        if float(xray.max() - xray.min()) <= 1e-12 * max(1.0, float(xray.abs().max())):
            return done("X-ray image is constant (empty): nothing to register to")

        centre = torch.as_tensor(self.centre_world, dtype=torch.float64)
        targets = [_downsample(xray, cam.height, cam.width) for cam in self.level_cameras]
        with torch.no_grad():
            res.similarity_init = float(self._level_similarity(targets[-1], init[None], -1)[0])

        pose = init
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=sum(lv.max_iterations for lv in self.config.levels), desc="refine", leave=False)
        for li, level in enumerate(self.config.levels):
            module = PoseIncrement(pose, pose[:3, :3] @ centre + pose[:3, 3])
            opt = torch.optim.Adam([
                {"params": [module.rotation], "lr": math.radians(level.lr_rotation_deg)},
                {"params": [module.translation], "lr": level.lr_translation_mm},
            ])
            best_sim, best_pose, stale = -math.inf, pose, 0
            for it in range(level.max_iterations):
                opt.zero_grad()
                current = module()
                sim = self._level_similarity(targets[li], current, li)[0]
                (-sim).backward()
                value = float(sim.detach())
                res.history.append({"level": li, "iteration": it, "similarity": value})
                res.n_iterations += 1
                if bar is not None:
                    bar.update(1)
                if value > best_sim + self.config.min_improvement:
                    best_sim, best_pose, stale = value, current.detach()[0].clone(), 0
                else:
                    if value > best_sim:
                        best_sim, best_pose = value, current.detach()[0].clone()
                    stale += 1
                    if stale >= self.config.patience:
                        break
                if not all(torch.isfinite(p.grad).all() for p in (module.rotation, module.translation)):
                    break
                opt.step()
            pose = best_pose
        if bar is not None:
            bar.close()

        with torch.no_grad():
            res.similarity_final = float(self._level_similarity(targets[-1], pose[None], -1)[0])
        if not torch.isfinite(pose).all():
            return done("optimisation diverged (non-finite pose); start pose kept")
        if res.similarity_final < res.similarity_init:
            res.similarity_final = res.similarity_init
            return done("refinement lowered the similarity; start pose kept")
        res.world_to_cam = pose.numpy().copy()
        return done()
