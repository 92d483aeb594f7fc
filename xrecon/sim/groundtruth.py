"""One simulated C-arm view with its exact ground truth.

:class:`Simulator` holds what is expensive to build for one CT and bone (the
DRR renderer over the cropped / resampled volume and the ray-casting scene);
:meth:`Simulator.simulate` turns a batch of poses into :class:`SimulatedViews`:

* ``image``: the DRR (line integrals of attenuation, float32, ``(B, H, W)``),
* ``entry_world`` / ``exit_world``: scene coordinates of the first / last bone
  surface along each pixel's ray (world RAS+ mm, NaN off the bone), their camera
  depths ``entry_depth_mm`` / ``exit_depth_mm``, and the bone ``mask``,
* visible-surface samples ``surface_world`` with their sub-pixel ``surface_uv``,
* landmark projections ``landmark_uv`` with depth and visibility,
* the ``camera`` (intrinsics + ``world_to_cam``).

Everything is in the world frame of the CT (RAS+ mm) and the OpenCV camera
convention of :mod:`xrecon.geometry`. :func:`simulate_views` is the one-call
form.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from xrecon.anatomy.bone import BoneModel
from xrecon.anatomy.volume import Volume
from xrecon.errors import InputError
from xrecon.geometry import Camera
from xrecon.sim.drr import DrrRenderer
from xrecon.sim.raycast import BoneRaycaster, SurfaceSamples


@dataclass(frozen=True)
class SimConfig:
    """How to render a view (the detector and pose sampler are chosen elsewhere).

    Attributes:
        spacing_mm: resample the CT to about this voxel size for the DRR (None:
            full resolution). 2 mm with 128 samples correlates r >= 0.999 with
            full-resolution Siddon on the chest CT (``benchmarks/bench_simulate.py``).
        n_samples: trilinear samples per ray.
        renderer: ``"trilinear"`` or ``"siddon"``.
        bone_only_drr: render only the bone's label structures (needs labels).
        n_surface_samples: visible-surface points per view.
        max_batch: poses per DRR call (memory bound).
    """

    spacing_mm: float | None = 2.0
    n_samples: int = 128
    renderer: str = "trilinear"
    bone_only_drr: bool = False
    n_surface_samples: int = 1024
    max_batch: int = 4

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SimulatedViews:
    """A batch of simulated views (numpy arrays, batch first; see the module docs).

    Attributes:
        image: ``(B, H, W)`` float32 DRR.
        entry_world, exit_world: ``(B, H, W, 3)`` float32 world mm, NaN off the bone.
        entry_depth_mm, exit_depth_mm: ``(B, H, W)`` float32 camera z, NaN off the bone.
        mask: ``(B, H, W)`` bool, the ray hits the bone.
        surface_world: ``(B, N, 3)`` float32 visible-surface points (NaN if invalid).
        surface_uv: ``(B, N, 2)`` float32 their pixels (u, v).
        surface_valid: ``(B, N)`` bool.
        landmark_uv: ``(B, L, 2)`` float64 projections (u, v).
        landmark_depth_mm: ``(B, L)`` camera z.
        landmark_in_image: ``(B, L)`` bool: in front of the source and on the
            detector (pixel-centre coordinates within ``[-0.5, W - 0.5)`` etc.).
        landmark_on_bone: ``(B, L)`` bool: in the image and its pixel is on the bone mask.
        landmark_names: ``L`` names.
        camera: the ``B`` views.
    """

    image: np.ndarray
    entry_world: np.ndarray
    exit_world: np.ndarray
    entry_depth_mm: np.ndarray
    exit_depth_mm: np.ndarray
    mask: np.ndarray
    surface_world: np.ndarray
    surface_uv: np.ndarray
    surface_valid: np.ndarray
    landmark_uv: np.ndarray
    landmark_depth_mm: np.ndarray
    landmark_in_image: np.ndarray
    landmark_on_bone: np.ndarray
    landmark_names: list[str] = field(default_factory=list)
    camera: Camera | None = None

    def __len__(self) -> int:
        return len(self.image)


#: Meshing of the ground-truth bone (see :func:`bone_for_simulation`).
GT_MESH_SMOOTH_SIGMA_MM = 0.25


def bone_for_simulation(labels: Volume, structures=None, *, landmarks="centroids") -> BoneModel:
    """The ground-truth bone of a label map for simulation: the label's surface
    with light smoothing (0.25 mm) and no decimation, so that it follows the
    voxels the DRR shows. On the chest CT at 256 px its ray-cast mask matches the
    bone-only DRR with IoU 0.99 (0.96-0.97 with 0.5 mm smoothing and 120k faces,
    the defaults of :func:`xrecon.anatomy.bone.bone_from_labels`).
    """
    from xrecon.anatomy.bone import bone_from_labels

    return bone_from_labels(labels, structures, landmarks=landmarks, smooth_sigma_mm=GT_MESH_SMOOTH_SIGMA_MM, max_faces=None)


def project_landmarks(camera: Camera, landmarks_world: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project ``landmarks_world: (L, 3)`` into every view of ``camera``.

    Returns ``uv (B, L, 2)``, ``depth_mm (B, L)`` and ``in_image (B, L)`` (in front of
    the source and within the detector's pixel area).
    """
    landmarks = np.asarray(landmarks_world, dtype=np.float64).reshape(-1, 3)
    B = len(camera)
    if len(landmarks) == 0:
        return np.zeros((B, 0, 2)), np.zeros((B, 0)), np.zeros((B, 0), dtype=bool)
    uv, depth = camera.project(torch.from_numpy(landmarks)[None].expand(B, -1, -1))
    uv, depth = uv.numpy(), depth.numpy()
    in_image = (
        (depth > 0)
        & (uv[..., 0] >= -0.5)
        & (uv[..., 0] < camera.width - 0.5)
        & (uv[..., 1] >= -0.5)
        & (uv[..., 1] < camera.height - 0.5)
    )
    return uv, depth, in_image


class Simulator:
    """Simulates views of one CT and bone for one detector.

    Args:
        ct: CT (HU) in the world frame (RAS+ mm).
        bone: bone mesh + landmarks in the same frame (the ground truth geometry).
        detector: camera giving the intrinsics and image size (its poses are ignored).
        config: rendering options.
        labels, structures: label map and ids for ``config.bone_only_drr``.
    """

    def __init__(
        self,
        ct: Volume,
        bone: BoneModel,
        detector: Camera,
        config: SimConfig = SimConfig(),
        *,
        labels: Volume | None = None,
        structures: list[int] | None = None,
    ):
        if config.bone_only_drr and labels is None:
            raise InputError("bone_only_drr needs a label map")
        self.config = config
        self.bone = bone
        self.detector = detector[0]
        self.renderer = DrrRenderer(
            ct,
            self.detector,
            labels=labels if config.bone_only_drr else None,
            structures=structures if config.bone_only_drr else None,
            spacing_mm=config.spacing_mm,
            renderer=config.renderer,
            n_samples=config.n_samples,
            max_batch=config.max_batch,
        )
        self.raycaster = BoneRaycaster(bone)

    def simulate(
        self, world_to_cam: torch.Tensor, rng: np.random.Generator | Sequence[np.random.Generator]
    ) -> SimulatedViews:
        """Render the views ``world_to_cam: (B, 4, 4)``.

        ``rng`` draws the surface samples: one generator for the batch, or one per
        view (so that a view does not depend on the others in its batch).
        """
        camera = self.detector.with_pose(torch.as_tensor(world_to_cam, dtype=torch.float64))
        with torch.no_grad():
            image = self.renderer(camera.world_to_cam).numpy()
        hits = self.raycaster.cast_image(camera)
        n = self.config.n_surface_samples
        if isinstance(rng, np.random.Generator):
            samples = self.raycaster.surface_samples(camera, hits.hit, n, rng)
        else:
            if len(rng) != len(camera):
                raise InputError(f"{len(rng)} generators for {len(camera)} views")
            parts = [self.raycaster.surface_samples(camera[b], hits.hit[b : b + 1], n, r) for b, r in enumerate(rng)]
            samples = SurfaceSamples(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("points_world", "uv", "valid")))
        uv, depth, in_image = project_landmarks(camera, self.bone.landmarks)
        on_bone = np.zeros_like(in_image)
        if uv.shape[1]:
            cols = np.clip(np.round(uv[..., 0]), 0, camera.width - 1).astype(int)
            rows = np.clip(np.round(uv[..., 1]), 0, camera.height - 1).astype(int)
            on_bone = in_image & hits.hit[np.arange(len(camera))[:, None], rows, cols]
        f32 = np.float32
        return SimulatedViews(
            image=image.astype(f32),
            entry_world=hits.entry_world.astype(f32),
            exit_world=hits.exit_world.astype(f32),
            entry_depth_mm=hits.entry_depth_mm.astype(f32),
            exit_depth_mm=hits.exit_depth_mm.astype(f32),
            mask=hits.hit,
            surface_world=samples.points_world.astype(f32),
            surface_uv=samples.uv.astype(f32),
            surface_valid=samples.valid,
            landmark_uv=uv,
            landmark_depth_mm=depth,
            landmark_in_image=in_image,
            landmark_on_bone=on_bone,
            landmark_names=list(self.bone.landmark_names),
            camera=camera,
        )


def simulate_views(
    ct: Volume,
    bone: BoneModel,
    camera: Camera,
    config: SimConfig = SimConfig(),
    *,
    labels: Volume | None = None,
    structures: list[int] | None = None,
    seed: int = 0,
) -> SimulatedViews:
    """One call: every view of ``camera`` (its poses) simulated with all ground truth.
    Build a :class:`Simulator` instead when simulating many batches of one CT."""
    sim = Simulator(ct, bone, camera, config, labels=labels, structures=structures)
    return sim.simulate(camera.world_to_cam, np.random.default_rng(seed))
