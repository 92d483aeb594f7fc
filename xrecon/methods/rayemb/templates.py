"""Template views of a CT: the known rays through each landmark (seed 003).

For a patient's CT, RayEmb renders DRRs at ``T`` known C-arm poses around the
bone (:func:`template_poses`), embeds them with the network, and reads each
landmark's template ray embeddings at its exact projections in the templates
(:func:`build_templates`). A landmark's subspace is spanned by the templates
it projects into; those embeddings, ``(L, T, D)``, are all that inference needs
besides the query image, so they are computed once per CT, detector, landmark
list and network, and cached on disk by a hash of all of them
(:mod:`xrecon.anatomy.cache`).

Frames: the landmarks and the template poses are in the CT's world frame (mm);
the template poses are ``ct_to_cam`` (OpenCV, ../shared/CONVENTIONS.md). The
C-arm angles are those of :mod:`xrecon.sim.poses`, which need the patient's
axes: ``ct_to_patient`` maps the CT frame to a patient RAS+ frame (the identity
for a CT read from a file, whose affine is RAS+).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from xrecon.anatomy.volume import Volume
from xrecon.errors import InputError
from xrecon.geometry import Camera
from xrecon.methods.rayemb.loss import inside_image, sample_embeddings

log = logging.getLogger(__name__)

#: Default template views: (LAO/RAO, cranial/caudal) degrees.
DEFAULT_TEMPLATE_ANGLES = ((-40.0, 0.0), (-20.0, 0.0), (0.0, 0.0), (20.0, 0.0), (40.0, 0.0), (0.0, -15.0), (0.0, 15.0))


def template_poses(centre_ct: np.ndarray, angles_deg=DEFAULT_TEMPLATE_ANGLES, source_to_isocentre_mm: float = 765.0,
                   ct_to_patient: np.ndarray | None = None) -> np.ndarray:
    """``(T, 4, 4)`` ``ct_to_cam`` of C-arm views (``angles_deg``: ``(LAO, cranial)``
    pairs, :func:`xrecon.sim.poses.carm_pose`) with their isocentre at ``centre_ct``
    (CT frame, mm). ``ct_to_patient``: the CT frame in patient RAS+ axes (identity)."""
    from xrecon.sim.poses import carm_pose

    A = np.eye(4) if ct_to_patient is None else np.asarray(ct_to_patient, np.float64)
    angles = np.asarray(angles_deg, np.float64).reshape(-1, 2)
    centre_patient = A[:3, :3] @ np.asarray(centre_ct, np.float64) + A[:3, 3]
    patient_to_cam = carm_pose(torch.from_numpy(centre_patient)[None], torch.from_numpy(angles[:, 0]),
                               torch.from_numpy(angles[:, 1]), torch.zeros(1, dtype=torch.float64),
                               torch.tensor([float(source_to_isocentre_mm)])).numpy()
    return patient_to_cam @ A


@dataclass
class TemplateSet:
    """The template rays of ``L`` landmarks of one CT.

    Attributes:
        landmarks_ct: ``(L, 3)`` landmark positions, CT frame, mm.
        embeddings: ``(L, T, D)`` float32 template ray embeddings.
        valid: ``(L, T)`` bool, the landmark projects inside template ``t``.
        uv: ``(L, T, 2)`` the landmarks' pixels in the templates.
        ct_to_cam: ``(T, 4, 4)`` template poses.
        K: ``(3, 3)`` intrinsics of the templates (the network's image size).
        height, width: template image size.
        build_seconds: time spent rendering and embedding (0 when read from the cache).
        from_cache: whether the set was read from the cache.
    """

    landmarks_ct: np.ndarray
    embeddings: torch.Tensor
    valid: torch.Tensor
    uv: np.ndarray
    ct_to_cam: np.ndarray
    K: np.ndarray
    height: int
    width: int
    build_seconds: float = 0.0
    from_cache: bool = False

    def __len__(self) -> int:
        return len(self.landmarks_ct)


def project(ct_to_cam: np.ndarray, K: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``(T, L, 2)`` and depths ``(T, L)`` of ``points: (L, 3)`` under ``ct_to_cam: (T, 4, 4)``, ``K: (3, 3)``."""
    pc = np.einsum("tij,lj->tli", ct_to_cam[:, :3, :3], points) + ct_to_cam[:, None, :3, 3]
    h = pc @ np.asarray(K, np.float64).T
    return h[..., :2] / h[..., 2:3], pc[..., 2]


def render_templates(ct: Volume, camera: Camera, ct_to_cam: np.ndarray, *, labels: Volume | None = None,
                     structures: list[int] | None = None, spacing_mm: float = 2.0, n_samples: int = 200) -> torch.Tensor:
    """DRRs ``(T, H, W)`` of ``ct`` at ``ct_to_cam: (T, 4, 4)`` with ``camera``'s intrinsics
    (the simulator's renderer, :class:`xrecon.sim.drr.DrrRenderer`; the whole CT,
    or the ``structures`` of ``labels`` only)."""
    from xrecon.sim.drr import DrrRenderer

    renderer = DrrRenderer(ct, camera[0], labels=labels, structures=structures, spacing_mm=spacing_mm,
                           n_samples=n_samples)
    with torch.no_grad():
        return renderer(torch.as_tensor(ct_to_cam, dtype=torch.float32))


def build_templates(ct: Volume, camera: Camera, landmarks_ct: np.ndarray,
                    embed: Callable[[torch.Tensor], torch.Tensor], ct_to_cam: np.ndarray, *,
                    labels: Volume | None = None, structures: list[int] | None = None, spacing_mm: float = 2.0,
                    n_samples: int = 200, margin_px: float = 1.0, cache_key: str | None = None) -> TemplateSet:
    """Render, embed and read the template rays of ``landmarks_ct: (L, 3)``.

    Args:
        ct: the patient's CT (HU).
        camera: the detector at the network's image size (its intrinsics; the pose is unused).
        landmarks_ct: CT frame, mm.
        embed: ``images (T, 1, H, W) -> embeddings (T, D, H, W)`` (the network, in eval mode).
        ct_to_cam: ``(T, 4, 4)`` template poses (:func:`template_poses`).
        labels, structures, spacing_mm, n_samples: the renderer's (:func:`render_templates`).
        margin_px: a landmark counts in a template when it projects this far inside the border.
        cache_key: when given, the set is cached on disk under this key (a
            :func:`xrecon.anatomy.cache.hash_inputs` digest of everything it depends on:
            :func:`template_cache_key`).
    """
    landmarks_ct = np.asarray(landmarks_ct, np.float64)
    if landmarks_ct.ndim != 2 or landmarks_ct.shape[1] != 3 or not len(landmarks_ct):
        raise InputError(f"landmarks must be (L, 3) with L >= 1, got {landmarks_ct.shape}")
    ct_to_cam = np.asarray(ct_to_cam, np.float64)
    K = camera.K[0].numpy()
    h, w = camera.height, camera.width
    t0 = time.monotonic()

    def compute() -> dict:
        images = render_templates(ct, camera, ct_to_cam, labels=labels, structures=structures,
                                  spacing_mm=spacing_mm, n_samples=n_samples)
        with torch.no_grad():
            emb = embed(images[:, None])  # (T, D, H, W)
        uv, depth = project(ct_to_cam, K, landmarks_ct)  # (T, L, 2)
        valid = inside_image(torch.from_numpy(uv), h, w, margin_px).numpy() & (depth > 0)
        rays = sample_embeddings(emb.float(), torch.from_numpy(uv).float())  # (T, L, D)
        return {"embeddings": rays.transpose(0, 1).numpy(), "valid": valid.T, "uv": uv.transpose(1, 0, 2)}

    from_cache = False
    if cache_key is not None:
        from xrecon.anatomy.cache import cached_arrays

        built = []
        arrays = cached_arrays("rayemb_templates", cache_key, lambda: built.append(1) or compute())
        from_cache = not built
    else:
        arrays = compute()
    return TemplateSet(landmarks_ct, torch.as_tensor(arrays["embeddings"], dtype=torch.float32),
                       torch.as_tensor(np.asarray(arrays["valid"], bool)), np.asarray(arrays["uv"], np.float64),
                       ct_to_cam, K, h, w, 0.0 if from_cache else time.monotonic() - t0, from_cache)


def template_cache_key(ct: Volume, camera: Camera, landmarks_ct: np.ndarray, ct_to_cam: np.ndarray,
                       network_fingerprint: str, labels: Volume | None = None, structures=None,
                       spacing_mm: float = 2.0, n_samples: int = 200, margin_px: float = 1.0) -> str:
    """Digest of everything a :class:`TemplateSet` depends on (CT voxels and affine,
    labels, detector, landmarks, poses, network weights, renderer settings)."""
    from xrecon.anatomy.cache import hash_inputs

    parts = [np.asarray(ct.data), np.asarray(ct.voxel_to_world), camera.K[0].numpy(), [camera.height, camera.width],
             np.asarray(landmarks_ct, np.float64), np.asarray(ct_to_cam, np.float64), network_fingerprint,
             [structures, spacing_mm, n_samples, margin_px]]
    if labels is not None:
        parts += [np.asarray(labels.data), np.asarray(labels.voxel_to_world)]
    return hash_inputs("rayemb-templates-v1", *parts)
