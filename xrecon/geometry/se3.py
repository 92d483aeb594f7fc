"""Rigid transforms as 4x4 matrices (batch first), rotation parameterisations
and distances. Conventions: see :mod:`xrecon.geometry`.

All functions take and return ``torch.Tensor`` and broadcast over leading batch
dimensions (written ``...`` below). Quaternions are ``(..., 4)`` in XYZW order
(scipy's and roma's); rotation vectors ``(..., 3)`` are axis * angle in radians,
the angle in [0, pi].

The rotation maps are xrecon's own (a few lines each, autograd-safe) rather
than roma's: ``import roma`` loads ``torch._dynamo`` and doubles the cost of
``import torch``. They follow roma 1.8 (itself adapted from scipy) operation for
operation, so their results equal roma's to the last bit or two; the tests
compare them with roma where it is installed (``tests/geometry/test_se3.py``).
"""
from __future__ import annotations

import numpy as np
import torch

from xrecon.errors import InputError, check_shape


def _t(x, dtype=None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x if dtype is None else x.to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype or torch.float64)


# ------------------------------------------------------------------ rotation maps
def rotvec_to_rotmat(rotvec: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
    """Rotation vector ``(..., 3)`` (radians) -> rotation matrix ``(..., 3, 3)``.

    Rodrigues' formula with the unit axis ``k = rotvec / theta``::

        R = I + sin(theta) [k]x + (1 - cos(theta)) [k]x^2

    Below ``theta < epsilon`` the series to second order, ``R = I + [r]x + [r]x^2 / 2``
    (error O(theta^3), under 1e-18 at the default ``epsilon``); the axis is
    computed with a clamped norm so neither branch makes a NaN gradient, and the
    derivative at ``rotvec = 0`` is exact (``dR = [d rotvec]x``).
    """
    rotvec = _t(rotvec)
    check_shape("rotvec", rotvec, (..., 3))
    theta = torch.linalg.vector_norm(rotvec, dim=-1)
    axis = rotvec / torch.clamp_min(theta[..., None], epsilon)
    kx, ky, kz = axis.unbind(-1)
    s, c = torch.sin(theta), 1 - torch.cos(theta)
    xs, ys, zs = kx * s, ky * s, kz * s
    xyc, xzc, yzc = kx * ky * c, kx * kz * c, ky * kz * c
    xxc, yyc, zzc = kx**2 * c, ky**2 * c, kz**2 * c
    rodrigues = torch.stack([1 - yyc - zzc, xyc - zs, xzc + ys,
                             xyc + zs, 1 - xxc - zzc, yzc - xs,
                             xzc - ys, yzc + xs, 1 - xxc - yyc], dim=-1)
    # second-order series: I + [r]x + (r r^T - |r|^2 I) / 2
    x, y, z = rotvec.unbind(-1)
    h = 0.5 * (x * x + y * y + z * z)
    series = torch.stack([1 + 0.5 * x * x - h, 0.5 * x * y - z, 0.5 * x * z + y,
                          0.5 * x * y + z, 1 + 0.5 * y * y - h, 0.5 * y * z - x,
                          0.5 * x * z - y, 0.5 * y * z + x, 1 + 0.5 * z * z - h], dim=-1)
    R = torch.where((theta < epsilon)[..., None], series, rodrigues)
    return R.reshape(*rotvec.shape[:-1], 3, 3)


def _taylor_switch(x: torch.Tensor) -> float:
    """Where sin(x)/x and x/sin(x) switch to their series: 2 eps^(1/6) (about 5e-3
    in float64), the point where the closed form's rounding error in the first
    derivative overtakes the series' truncation error (roma's choice)."""
    return 2.0 * torch.finfo(x.dtype).eps ** (1 / 6)


def _sinc(x: torch.Tensor) -> torch.Tensor:
    """``sin(x) / x``, with its series near 0."""
    small = torch.abs(x) < _taylor_switch(x)
    return torch.where(small, 1 - x**2 / 6 + x**4 / 120, torch.sin(x) / torch.where(small, torch.ones_like(x), x))


def _inv_sinc(x: torch.Tensor) -> torch.Tensor:
    """``x / sin(x)``, with its series near 0."""
    small = torch.abs(x) < _taylor_switch(x)
    return torch.where(small, 1 + x**2 / 6 + 7 * x**4 / 360, x / torch.where(small, torch.ones_like(x), torch.sin(x)))


def rotvec_to_unitquat(rotvec: torch.Tensor) -> torch.Tensor:
    """Rotation vector ``(..., 3)`` -> unit quaternion ``(..., 4)`` (XYZW, w >= 0)."""
    rotvec = _t(rotvec)
    half = torch.linalg.vector_norm(rotvec, dim=-1) / 2
    return torch.cat([(_sinc(half) / 2)[..., None] * rotvec, torch.cos(half)[..., None]], dim=-1)


def unitquat_to_rotvec(quat: torch.Tensor) -> torch.Tensor:
    """Unit quaternion ``(..., 4)`` (XYZW) -> the rotation vector of angle in [0, pi]
    (``q`` and ``-q`` give the same vector: the sign is made ``w >= 0`` first)."""
    quat = _t(quat)
    quat = quat * ((quat[..., 3] > 0).to(quat.dtype) * 2 - 1)[..., None]
    half = torch.atan2(torch.linalg.vector_norm(quat[..., :3], dim=-1), quat[..., 3])
    return (2 * _inv_sinc(half))[..., None] * quat[..., :3]


def unitquat_to_rotmat(quat: torch.Tensor) -> torch.Tensor:
    """Unit quaternion ``(..., 4)`` (XYZW, not renormalised) -> rotation matrix ``(..., 3, 3)``."""
    quat = _t(quat)
    x, y, z, w = quat.unbind(-1)
    x2, y2, z2, w2 = x * x, y * y, z * z, w * w
    xy, zw, xz, yw, yz, xw = x * y, z * w, x * z, y * w, y * z, x * w
    R = torch.stack([x2 - y2 - z2 + w2, 2 * (xy - zw), 2 * (xz + yw),
                     2 * (xy + zw), -x2 + y2 - z2 + w2, 2 * (yz - xw),
                     2 * (xz - yw), 2 * (yz + xw), -x2 - y2 + z2 + w2], dim=-1)
    return R.reshape(*quat.shape[:-1], 3, 3)


def rotmat_to_unitquat(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrix ``(..., 3, 3)`` -> unit quaternion ``(..., 4)`` (XYZW, sign arbitrary).

    Markley's variant of Shepperd's method (J. Guid. Control Dyn. 31(2), 2008):
    the four vectors ``4 q_i q`` are formed from the entries of ``A = R^T`` and the
    one with the largest ``q_i^2`` is normalised, which is accurate for every
    angle (0 and pi included) and still returns a unit quaternion when ``R`` is
    slightly off orthonormal.
    """
    R = _t(R)
    check_shape("R", R, (..., 3, 3))
    (a11, a12, a13), (a21, a22, a23), (a31, a32, a33) = (row.unbind(-1) for row in R.transpose(-1, -2).unbind(-2))
    x = torch.stack([1 + a11 - a22 - a33, a12 + a21, a13 + a31, a23 - a32,
                     a21 + a12, 1 + a22 - a33 - a11, a23 + a32, a31 - a13,
                     a31 + a13, a32 + a23, 1 + a33 - a11 - a22, a12 - a21,
                     a23 - a32, a31 - a13, a12 - a21, 1 + a11 + a22 + a33], dim=-1).unflatten(-1, (4, 4))
    i = x.diagonal(dim1=-2, dim2=-1).argmax(dim=-1)
    best = torch.gather(x, -2, i[..., None, None].expand(*i.shape, 1, 4))[..., 0, :]
    return best / torch.linalg.vector_norm(best, dim=-1, keepdim=True)


def rotmat_to_rotvec(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrix ``(..., 3, 3)`` -> rotation vector ``(..., 3)``, angle in [0, pi]
    (through the quaternion: precise near 0 and near pi, unlike ``arccos`` of the trace)."""
    return unitquat_to_rotvec(rotmat_to_unitquat(R))


def euler_to_rotmat(convention: str, angles, degrees: bool = False) -> torch.Tensor:
    """Euler angles ``(..., D)`` -> rotation matrix ``(..., 3, 3)`` (scipy's and roma's convention).

    ``convention`` is D axes, lower-case for extrinsic rotations (about the fixed
    axes, applied left to right: ``"xyz"`` gives ``R = Rz(c) Ry(b) Rx(a)``) or
    upper-case for intrinsic ones (about the rotating axes: ``"XYZ"`` gives
    ``R = Rx(a) Ry(b) Rz(c)``); the two cannot be mixed.
    """
    angles = _t(angles)
    if not convention or not (convention.islower() or convention.isupper()) or set(convention.lower()) - set("xyz"):
        raise InputError(f"Euler convention must be axes among x, y, z, all lower-case (extrinsic) or all "
                         f"upper-case (intrinsic), got {convention!r}")
    check_shape("angles", angles, (..., len(convention)))
    if degrees:
        angles = torch.deg2rad(angles)
    R = None
    for axis, angle in zip(convention.lower(), angles.unbind(-1)):
        rotvec = torch.zeros(*angle.shape, 3, dtype=angle.dtype, device=angle.device)
        rotvec[..., "xyz".index(axis)] = angle
        Ri = rotvec_to_rotmat(rotvec)
        R = Ri if R is None else (Ri @ R if convention.islower() else R @ Ri)
    return R


def special_gramschmidt(M: torch.Tensor, epsilon: float = 0.0) -> torch.Tensor:
    """The rotation ``(..., 3, 3)`` whose first two columns are the Gram-Schmidt
    orthonormalisation of the first two columns of ``M: (..., 3, N >= 2)``
    (the "6D" rotation parameterisation; the third column is their cross
    product). ``epsilon`` clamps the norms so that a degenerate input gives a
    finite (not orthonormal) result instead of NaN."""
    M = _t(M)
    x, y = M[..., :, 0], M[..., :, 1]
    x = x / torch.clamp_min(torch.linalg.vector_norm(x, dim=-1, keepdim=True), epsilon)
    y = y - torch.sum(x * y, dim=-1, keepdim=True) * x
    y = y / torch.clamp_min(torch.linalg.vector_norm(y, dim=-1, keepdim=True), epsilon)
    return torch.stack([x, y, torch.linalg.cross(x, y, dim=-1)], dim=-1)


def special_procrustes(M: torch.Tensor) -> torch.Tensor:
    """The rotation ``(..., 3, 3)`` nearest to ``M: (..., 3, 3)`` in Frobenius norm:
    ``U diag(1, 1, det(U V^T)) V^T`` from the SVD ``M = U S V^T`` (the smallest
    singular direction is flipped when ``U V^T`` is a reflection)."""
    M = _t(M)
    U, _S, Vh = torch.linalg.svd(M)
    d = torch.sign(torch.linalg.det(U) * torch.linalg.det(Vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    Vh = torch.cat([Vh[..., :2, :], d[..., None, None] * Vh[..., 2:, :]], dim=-2)
    return U @ Vh


# ------------------------------------------------------------------ 4x4 poses
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
    return make(rotvec_to_rotmat(rotvec), _t(t, rotvec.dtype))


def to_rotvec(a_to_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a pose into axis-angle ``(..., 3)`` (radians) and translation ``(..., 3)``."""
    a_to_b = _t(a_to_b)
    return rotmat_to_rotvec(a_to_b[..., :3, :3]), a_to_b[..., :3, 3]


def from_euler(angles_deg, t, convention: str = "xyz") -> torch.Tensor:
    """Pose from Euler angles in degrees (see :func:`euler_to_rotmat`; default extrinsic xyz)."""
    angles = _t(angles_deg)
    R = euler_to_rotmat(convention, angles, degrees=True)
    return make(R, _t(t, R.dtype))


def rotation_angle_deg(R: torch.Tensor) -> torch.Tensor:
    """Rotation angle of ``R: (..., 3, 3)`` in degrees, via the Rodrigues vector norm
    (precise near 0, unlike ``arccos`` of the trace)."""
    return torch.rad2deg(rotmat_to_rotvec(_t(R)).norm(dim=-1))


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
    return unitquat_to_rotmat(q)


def similarity(R: torch.Tensor, t: torch.Tensor, scale) -> torch.Tensor:
    """Similarity ``x -> s R x + t`` as ``(..., 4, 4)``."""
    T = make(R, t)
    T[..., :3, :3] = T[..., :3, :3] * _t(scale, T.dtype)[..., None, None]
    return T

