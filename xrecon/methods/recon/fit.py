"""Shape-model-regularised fit of pose and shape to 2D correspondences.

Each correspondence ``i`` is a fixed anatomical point of the shape model
(triangle + barycentric weights), so its model-frame position is linear in the
shape coefficients: ``X_i(b) = A_i + B_i b`` (``A``: the point on the mean,
``B``: its displacement per SD of each mode). The fit minimises, over the
model-to-camera pose and ``b``,

    sum_i rho( w_i |pi(K (R X_i(b) + t)) - uv_i|^2 / sigma_px^2 )
      + sum_k ((b_k - b0_k) / prior_sd_k)^2

with ``rho`` scipy's soft-L1 (robust to the outliers RANSAC missed), ``b0`` the
network's coefficients and ``prior_sd`` how far the image may move them. Mode
1 of the pelvis model is size, which a single perspective view cannot separate
from depth (../shared/DATA.md): its prior is tight, so size stays what the
network inferred from the training pose distribution, and the image geometry
refines the shape modes and the pose.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from xrecon.errors import ShapeError


@dataclass
class PoseShapeFit:
    """Outcome of :func:`fit_pose_shape`.

    Attributes:
        model_to_cam: ``(4, 4)`` rigid pose of the model frame in the camera.
        shape_sd: ``(K,)`` fitted coefficients (SD).
        reprojection_error_px: mean reprojection error of the correspondences.
        success, reason: as for every solver (non-finite result or no convergence).
        n_evaluations: residual evaluations spent.
    """

    model_to_cam: np.ndarray
    shape_sd: np.ndarray
    reprojection_error_px: float
    success: bool
    reason: str = ""
    n_evaluations: int = 0


def _project(K: np.ndarray, pts_cam: np.ndarray) -> np.ndarray:
    h = pts_cam @ K.T
    return h[:, :2] / h[:, 2:3]


def fit_pose_shape(A: np.ndarray, B: np.ndarray, uv: np.ndarray, K: np.ndarray, model_to_cam0: np.ndarray,
                   shape_sd0: np.ndarray, prior_sd: np.ndarray, weights: np.ndarray | None = None,
                   sigma_px: float = 1.0, max_nfev: int = 100) -> PoseShapeFit:
    """Refine pose and shape (see module docstring).

    Args:
        A: ``(M, 3)`` correspondences' points on the mean shape (model frame, mm).
        B: ``(M, 3, K)`` their displacement per +1 SD of each mode (mm).
        uv: ``(M, 2)`` observed pixels.
        K: ``(3, 3)`` intrinsics.
        model_to_cam0: ``(4, 4)`` starting pose (e.g. from PnP).
        shape_sd0: ``(K,)`` prior mean of the coefficients (the network's).
        prior_sd: ``(K,)`` prior spread around ``shape_sd0`` (SD units; > 0).
        weights: ``(M,)`` confidences (default 1).
        sigma_px: residual unit (expected correspondence error, px).
    """
    A, B, uv = np.asarray(A, np.float64), np.asarray(B, np.float64), np.asarray(uv, np.float64)
    m = len(A)
    if A.shape != (m, 3) or B.ndim != 3 or B.shape[:2] != (m, 3) or uv.shape != (m, 2):
        raise ShapeError("A, B, uv", "(M, 3), (M, 3, K), (M, 2)", (A.shape, B.shape, uv.shape))
    k = B.shape[2]
    b0 = np.asarray(shape_sd0, np.float64)[:k]
    psd = np.maximum(np.asarray(prior_sd, np.float64)[:k], 1e-6)
    w = np.ones(m) if weights is None else np.clip(np.asarray(weights, np.float64), 0.0, None)
    sw = np.sqrt(w)[:, None] / sigma_px
    R0 = np.asarray(model_to_cam0, np.float64)[:3, :3]
    t0 = np.asarray(model_to_cam0, np.float64)[:3, 3]

    def unpack(x):
        R = Rotation.from_rotvec(x[:3]).as_matrix() @ R0
        return R, t0 + x[3:6], x[6:]

    def residuals(x):
        R, t, b = unpack(x)
        pts = A + B @ b
        proj = _project(K, pts @ R.T + t)
        return np.concatenate([((proj - uv) * sw).ravel(), (b - b0) / psd])

    x0 = np.concatenate([np.zeros(6), b0])
    try:
        sol = least_squares(residuals, x0, loss="soft_l1", f_scale=1.0, max_nfev=max_nfev, x_scale="jac")
    except (ValueError, np.linalg.LinAlgError) as exc:
        return PoseShapeFit(np.full((4, 4), np.nan), b0, float("nan"), False, f"least squares failed: {exc}")
    R, t, b = unpack(sol.x)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    if not np.isfinite(T).all() or not np.isfinite(b).all():
        return PoseShapeFit(np.full((4, 4), np.nan), b0, float("nan"), False, "non-finite result", sol.nfev)
    pts_cam = (A + B @ b) @ R.T + t
    if (pts_cam[:, 2] <= 0).any():
        return PoseShapeFit(T, b, float("nan"), False, "points behind the source after the fit", sol.nfev)
    err = np.linalg.norm(_project(K, pts_cam) - uv, axis=1)
    return PoseShapeFit(T, b, float(np.average(err, weights=np.maximum(w, 1e-12))), True, "", int(sol.nfev))
