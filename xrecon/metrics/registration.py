"""Registration errors, one value per case (batch first).

Definitions (../shared/CONVENTIONS.md, "Metrics"; seed 002, eq. 6):

* **mTRE** (mm): mean 3D distance between the target points mapped by the
  estimated and by the true ``world_to_cam``, measured in the camera frame.
* **projected mTRE** (mm): mean distance between the targets projected with the
  estimated and the true pose, on the detector plane (pixel offsets times the
  detector pixel spacing ``(dx, dy)``).
* **depth error** (mm, signed): mean offset of the targets along the camera's
  viewing axis (camera z, away from the source) under the estimated minus the
  true pose. A single view constrains depth least (the image hardly changes
  when the bone slides along the rays), so mTRE minus projected mTRE is mostly
  this term.
* **rotation error** (deg): geodesic angle ``|log(R_est R_gt^T)|`` via the
  Rodrigues vector norm (:func:`xrecon.geometry.se3.geodesic_deg`).
* **translation error** (mm): norm of the difference of the two ``world_to_cam``
  translations (the camera-frame position of the world origin).
* **GFR** (gross failure rate): share of cases whose mTRE exceeds a threshold
  (10 mm and 5 mm in the tables). See :mod:`xrecon.metrics.aggregate`.

A pose is a ``(B, 4, 4)`` ``world_to_cam`` (``x_cam = R x_world + t``); target
points are ``(B, N, 3)`` or shared ``(N, 3)`` in the world frame. Every function
takes numpy arrays or torch tensors and returns a float64 ``torch.Tensor`` of
shape ``(B,)``. A case whose estimate is missing (a failed solve) should carry a
pose full of NaN: its errors come out NaN, and the aggregates count it as a
failure rather than dropping it.
"""
from __future__ import annotations

import torch

from xrecon.errors import ShapeError, check_shape
from xrecon.geometry import se3


def _poses(name: str, x) -> torch.Tensor:
    x = se3._t(x, torch.float64)
    if x.ndim == 2:
        x = x[None]
    check_shape(name, x, (None, 4, 4))
    return x


def _targets(x, batch: int) -> torch.Tensor:
    x = se3._t(x, torch.float64)
    if x.ndim == 2:
        x = x[None]
    check_shape("targets_world", x, (None, None, 3))
    if x.shape[0] not in (1, batch):
        raise ShapeError("targets_world", f"(N, 3), (1, N, 3) or ({batch}, N, 3)", tuple(x.shape))
    if x.shape[1] == 0:
        raise ShapeError("targets_world", "at least one target point (N >= 1)", tuple(x.shape))
    return x.expand(batch, -1, -1)


def _pair(est_world_to_cam, gt_world_to_cam) -> tuple[torch.Tensor, torch.Tensor]:
    est, gt = _poses("est_world_to_cam", est_world_to_cam), _poses("gt_world_to_cam", gt_world_to_cam)
    if est.shape[0] != gt.shape[0]:
        raise ShapeError("est_world_to_cam", f"({gt.shape[0]}, 4, 4) to match gt_world_to_cam", tuple(est.shape))
    return est, gt


def target_errors_mm(est_world_to_cam, gt_world_to_cam, targets_world) -> torch.Tensor:
    """Per-target 3D errors ``(B, N)`` in mm, in the camera frame."""
    est, gt = _pair(est_world_to_cam, gt_world_to_cam)
    x = _targets(targets_world, est.shape[0])
    return (se3.apply(est, x) - se3.apply(gt, x)).norm(dim=-1)


def mtre_mm(est_world_to_cam, gt_world_to_cam, targets_world) -> torch.Tensor:
    """Mean target registration error ``(B,)`` in mm (3D, camera frame).

    Args:
        est_world_to_cam: ``(B, 4, 4)`` estimated poses (or ``(4, 4)``).
        gt_world_to_cam: ``(B, 4, 4)`` true poses.
        targets_world: ``(B, N, 3)`` or ``(N, 3)`` target points (landmarks), world mm.
    """
    return target_errors_mm(est_world_to_cam, gt_world_to_cam, targets_world).mean(dim=-1)


def projected_target_errors_mm(est_world_to_cam, gt_world_to_cam, targets_world, K,
                               pixel_spacing_mm: float | tuple[float, float]) -> torch.Tensor:
    """Per-target reprojection offsets on the detector ``(B, N)`` in mm.

    ``K``: ``(B, 3, 3)`` or ``(3, 3)`` intrinsics in pixels; ``pixel_spacing_mm``:
    ``dx`` or ``(dx, dy)`` of the detector (mm per pixel along u and v).
    """
    est, gt = _pair(est_world_to_cam, gt_world_to_cam)
    x = _targets(targets_world, est.shape[0])
    K = se3._t(K, torch.float64)
    if K.ndim == 2:
        K = K[None]
    check_shape("K", K, (None, 3, 3))
    dx, dy = (pixel_spacing_mm, pixel_spacing_mm) if isinstance(pixel_spacing_mm, (int, float)) else pixel_spacing_mm

    def project(pose):
        h = se3.apply(pose, x) @ K.transpose(-1, -2)
        return h[..., :2] / h[..., 2:3]

    d = project(est) - project(gt)
    scale = torch.tensor([float(dx), float(dy)], dtype=torch.float64)
    return (d * scale).norm(dim=-1)


def projected_mtre_mm(est_world_to_cam, gt_world_to_cam, targets_world, K,
                      pixel_spacing_mm: float | tuple[float, float]) -> torch.Tensor:
    """Projected mTRE ``(B,)`` in mm on the detector plane (see the module doc)."""
    return projected_target_errors_mm(est_world_to_cam, gt_world_to_cam, targets_world, K,
                                      pixel_spacing_mm).mean(dim=-1)


def depth_error_mm(est_world_to_cam, gt_world_to_cam, targets_world) -> torch.Tensor:
    """Signed depth error ``(B,)`` in mm: mean camera-z of the targets under the
    estimated pose minus under the true pose (positive = placed too far from the source)."""
    est, gt = _pair(est_world_to_cam, gt_world_to_cam)
    x = _targets(targets_world, est.shape[0])
    return (se3.apply(est, x)[..., 2] - se3.apply(gt, x)[..., 2]).mean(dim=-1)


def rotation_error_deg(est_world_to_cam, gt_world_to_cam) -> torch.Tensor:
    """Geodesic rotation error ``(B,)`` in degrees."""
    est, gt = _pair(est_world_to_cam, gt_world_to_cam)
    return se3.geodesic_deg(est[:, :3, :3], gt[:, :3, :3])


def translation_error_mm(est_world_to_cam, gt_world_to_cam) -> torch.Tensor:
    """Translation error ``(B,)`` in mm: ``|t_est - t_gt|`` of the ``world_to_cam`` poses."""
    est, gt = _pair(est_world_to_cam, gt_world_to_cam)
    return (est[:, :3, 3] - gt[:, :3, 3]).norm(dim=-1)


def registration_errors(est_world_to_cam, gt_world_to_cam, targets_world, K=None,
                        pixel_spacing_mm: float | tuple[float, float] = 1.0) -> dict[str, torch.Tensor]:
    """Every per-case error at once: ``{"mtre_mm", "depth_error_mm", "rotation_deg", "translation_mm"}``
    plus ``"projected_mtre_mm"`` when ``K`` is given; each ``(B,)``."""
    out = {
        "mtre_mm": mtre_mm(est_world_to_cam, gt_world_to_cam, targets_world),
        "depth_error_mm": depth_error_mm(est_world_to_cam, gt_world_to_cam, targets_world),
        "rotation_deg": rotation_error_deg(est_world_to_cam, gt_world_to_cam),
        "translation_mm": translation_error_mm(est_world_to_cam, gt_world_to_cam),
    }
    if K is not None:
        out["projected_mtre_mm"] = projected_mtre_mm(est_world_to_cam, gt_world_to_cam, targets_world, K,
                                                     pixel_spacing_mm)
    return out
