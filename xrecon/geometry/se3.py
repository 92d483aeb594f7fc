"""Rigid transforms as 4x4 matrices (batch first), rotation parameterisations
and distances. Conventions: see :mod:`xrecon.geometry`.

All functions take and return ``torch.Tensor`` and broadcast over leading batch
dimensions. Rotation maths is delegated to roma.
"""
from __future__ import annotations

import numpy as np
import roma
import torch


def _t(x, dtype=None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x if dtype is None else x.to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype or torch.float64)


def make(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Stack rotation ``R: (..., 3, 3)`` and translation ``t: (..., 3)`` into ``(..., 4, 4)``."""
    R, t = _t(R), _t(t)
    batch = torch.broadcast_shapes(R.shape[:-2], t.shape[:-1])
    T = torch.zeros(*batch, 4, 4, dtype=R.dtype, device=R.device)
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T


def invert(a_to_b: torch.Tensor) -> torch.Tensor:
    """Inverse of a rigid ``a_to_b: (..., 4, 4)``, i.e. ``b_to_a`` (exact, no matrix inverse)."""
    a_to_b = _t(a_to_b)
    R = a_to_b[..., :3, :3]
    t = a_to_b[..., :3, 3]
    Rt = R.transpose(-1, -2)
    return make(Rt, -(Rt @ t.unsqueeze(-1)).squeeze(-1))


def apply(a_to_b: torch.Tensor, points_a: torch.Tensor) -> torch.Tensor:
    """Map ``points_a: (..., N, 3)`` with ``a_to_b: (..., 4, 4)`` (rigid or similarity)."""
    a_to_b, points_a = _t(a_to_b), _t(points_a)
    dtype = torch.promote_types(a_to_b.dtype, points_a.dtype)
    a_to_b, points_a = a_to_b.to(dtype), points_a.to(dtype)
    return points_a @ a_to_b[..., :3, :3].transpose(-1, -2) + a_to_b[..., None, :3, 3]


def from_rotvec(rotvec: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Pose from an axis-angle vector ``(..., 3)`` in radians and translation ``(..., 3)``."""
    rotvec = _t(rotvec)
    return make(roma.rotvec_to_rotmat(rotvec), _t(t, rotvec.dtype))


def to_rotvec(a_to_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a pose into axis-angle ``(..., 3)`` (radians) and translation ``(..., 3)``."""
    a_to_b = _t(a_to_b)
    return roma.rotmat_to_rotvec(a_to_b[..., :3, :3]), a_to_b[..., :3, 3]


def from_euler(angles_deg, t, convention: str = "xyz") -> torch.Tensor:
    """Pose from intrinsic-free (extrinsic, roma/scipy lower-case) Euler angles in degrees."""
    angles = _t(angles_deg)
    R = roma.euler_to_rotmat(convention, angles, degrees=True)
    return make(R, _t(t, R.dtype))


def rotation_angle_deg(R: torch.Tensor) -> torch.Tensor:
    """Rotation angle of ``R: (..., 3, 3)`` in degrees, via the Rodrigues vector norm
    (precise near 0, unlike ``arccos`` of the trace)."""
    return torch.rad2deg(roma.rotmat_to_rotvec(_t(R)).norm(dim=-1))


def geodesic_deg(R_a: torch.Tensor, R_b: torch.Tensor) -> torch.Tensor:
    """Geodesic distance ``|log(R_a R_b^T)|`` in degrees between ``(..., 3, 3)`` rotations."""
    R_a, R_b = _t(R_a), _t(R_b)
    return rotation_angle_deg(R_a @ R_b.transpose(-1, -2).to(R_a.dtype))


def pose_errors(est_a_to_b: torch.Tensor, gt_a_to_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation error (deg, geodesic) and translation error (mm, norm of the
    translation difference) between two ``(..., 4, 4)`` poses."""
    est, gt = _t(est_a_to_b), _t(gt_a_to_b)
    rot = geodesic_deg(est[..., :3, :3], gt[..., :3, :3])
    trans = (est[..., :3, 3] - gt[..., :3, 3].to(est.dtype)).norm(dim=-1)
    return rot, trans


def random_rotation(n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
    """``n`` rotations drawn uniformly on SO(3): ``(n, 3, 3)``."""
    q = torch.randn(n, 4, generator=generator, dtype=dtype)
    q = q / q.norm(dim=-1, keepdim=True)
    return roma.unitquat_to_rotmat(q)


def similarity(R: torch.Tensor, t: torch.Tensor, scale) -> torch.Tensor:
    """Similarity ``x -> s R x + t`` as ``(..., 4, 4)``."""
    T = make(R, t)
    T[..., :3, :3] = T[..., :3, :3] * _t(scale, T.dtype)[..., None, None]
    return T

