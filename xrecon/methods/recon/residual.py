"""A shape that can leave the shape model's span: a Gaussian-process posterior of the
residual deformation, given the image's correspondences.

After the pose + shape-model fit (:mod:`~xrecon.methods.recon.fit`), every inlier
correspondence still has a residual: its 3D point on the fitted instance does not
lie exactly on the ray through its pixel. Part of that is the network's error;
part is anatomy that the model's modes cannot express. The residual deformation
``u(x)`` of the instance (model frame, mm) gets a Gaussian-process prior, each
component independent with the squared-exponential kernel

    k(x, x') = s^2 exp(-|x - x'|^2 / (2 l^2)),   s^2 = amplitude_mm^2 / 3

(the kernel of :class:`shape_models.populations.OutOfSpanPopulation`, whose
amplitude and length scale were set from real subjects' residuals after the
model's best fit, docs/populations.md). Correspondence ``i`` at instance point
``x_i`` observes the two components of ``R u(x_i)`` perpendicular to its ray
(``R`` the model-to-camera rotation): ``y_i = P_i e_i``, ``e_i`` the vector from
the camera-frame point to its closest point on the ray, ``P_i`` an orthonormal
basis of the plane perpendicular to the ray. With noise ``N_i = diag(n_i^2)``,
``n_i^2 = (sigma_scale * sigma_i)^2 + noise_mm^2`` (``sigma_i`` the network's
predicted error), the posterior mean at every vertex ``v`` is

    u(v) = sum_i k(v, x_i) R^T P_i^T alpha_i,   alpha = (H K H^T + N)^-1 y

a linear solve of size ``2 M`` (``M`` correspondences, thinned to one per
``min_spacing_mm`` cell so that neighbouring pixels' correlated errors do not
count as independent evidence). The component along each ray is not observed:
there the posterior stays the shape model's (the prior mean, zero), and where the
image shows no bone the kernel's reach fades the correction out. The SSM stays the
prior; the final surface follows the network's points where the image supports
them. ``amplitude_mm``, ``noise_mm`` and ``sigma_scale``: the validation grid of
``benchmarks/bench_recon_residual.py`` is flat (every setting 1.735-1.766 mm
median shape error out of span, against 1.784 mm with the step off); the defaults
(the calibrated amplitude, 1 mm, 1) are within 0.01 mm of its best.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xrecon.errors import InputError, ShapeError


@dataclass(frozen=True)
class ResidualConfig:
    """Settings of :func:`residual_deformation`.

    Attributes:
        amplitude_mm: prior RMS length of the deformation (``s^2 = amplitude^2 / 3`` per component).
        length_mm: kernel length scale (mm).
        noise_mm: observation noise floor per component (mm).
        sigma_scale: multiplies the network's predicted error in the observation noise.
        min_spacing_mm: at most one correspondence per cube of this side (mm), the most confident.
        max_points: at most this many correspondences after the thinning (the most confident).
    """

    amplitude_mm: float = 3.58
    length_mm: float = 20.0
    noise_mm: float = 1.0
    sigma_scale: float = 1.0
    min_spacing_mm: float = 4.0
    max_points: int = 1200

    def __post_init__(self):
        for name in ("amplitude_mm", "length_mm", "min_spacing_mm"):
            if not getattr(self, name) > 0:
                raise InputError(f"ResidualConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.noise_mm < 0 or self.sigma_scale < 0 or self.noise_mm + self.sigma_scale == 0:
            raise InputError("ResidualConfig needs noise_mm >= 0, sigma_scale >= 0, not both 0")
        if self.max_points < 1:
            raise InputError(f"ResidualConfig.max_points must be >= 1, got {self.max_points}")


def _kernel(a: np.ndarray, b: np.ndarray, s2: float, length: float) -> np.ndarray:
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2.0 * a @ b.T
    return s2 * np.exp(-np.maximum(d2, 0.0) / (2.0 * length**2))


def _thin(points: np.ndarray, score: np.ndarray, spacing: float, max_points: int) -> np.ndarray:
    """Indices of at most one point per ``spacing`` cube (the highest ``score``), at most ``max_points``."""
    order = np.argsort(-score, kind="stable")
    cells = np.floor(points[order] / spacing).astype(np.int64)
    _, first = np.unique(cells, axis=0, return_index=True)
    keep = order[np.sort(first)]
    keep = keep[np.argsort(-score[keep], kind="stable")][:max_points]
    return np.sort(keep)


def _perpendicular_basis(d: np.ndarray) -> np.ndarray:
    """``(M, 2, 3)`` orthonormal bases of the planes perpendicular to unit vectors ``d: (M, 3)``."""
    helper = np.where(np.abs(d[:, :1]) < 0.9, np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 1.0, 0.0]]))
    e1 = np.cross(d, helper)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(d, e1)
    return np.stack([e1, e2], axis=1)


def ray_residuals(points_model: np.ndarray, uv: np.ndarray, model_to_cam: np.ndarray, K: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """For model-frame points ``(M, 3)`` seen at pixels ``uv: (M, 2)`` by a camera ``K`` at
    ``model_to_cam``: each point's offset to its pixel's ray, ``y (M, 2)`` in the basis
    ``P (M, 2, 3)`` (camera frame) of the plane perpendicular to the ray (mm)."""
    R, t = model_to_cam[:3, :3], model_to_cam[:3, 3]
    xc = points_model @ R.T + t
    rays = np.c_[uv, np.ones(len(uv))] @ np.linalg.inv(K).T
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    e = (xc * rays).sum(1, keepdims=True) * rays - xc  # point -> closest point of its ray
    P = _perpendicular_basis(rays)
    return np.einsum("mkd,md->mk", P, e), P


def residual_deformation(vertices_model: np.ndarray, points_model: np.ndarray, uv: np.ndarray,
                         sigma_mm: np.ndarray, model_to_cam: np.ndarray, K: np.ndarray,
                         config: ResidualConfig = ResidualConfig()) -> tuple[np.ndarray, int]:
    """Posterior mean of the residual deformation (module docstring).

    Args:
        vertices_model: ``(V, 3)`` the fitted instance (model frame, mm).
        points_model: ``(M, 3)`` the correspondences' points on that instance.
        uv: ``(M, 2)`` their pixels; ``sigma_mm`` ``(M,)`` their predicted errors (mm).
        model_to_cam: ``(4, 4)`` the fitted pose; ``K`` ``(3, 3)`` the intrinsics of ``uv``'s pixels.

    Returns:
        ``(V, 3)`` displacement to add to ``vertices_model`` (model frame, mm), and the
        number of correspondences used (after thinning).
    """
    v = np.asarray(vertices_model, np.float64)
    x = np.asarray(points_model, np.float64)
    uv = np.asarray(uv, np.float64)
    sig = np.asarray(sigma_mm, np.float64)
    m = len(x)
    if v.ndim != 2 or v.shape[1] != 3 or x.shape != (m, 3) or uv.shape != (m, 2) or sig.shape != (m,):
        raise ShapeError("vertices, points, uv, sigma", "(V, 3), (M, 3), (M, 2), (M,)",
                         (v.shape, x.shape, uv.shape, sig.shape))
    if m == 0:
        return np.zeros_like(v), 0
    cfg = config
    keep = _thin(x, -sig, cfg.min_spacing_mm, cfg.max_points)
    x, uv, sig = x[keep], uv[keep], sig[keep]
    y, P = ray_residuals(x, uv, np.asarray(model_to_cam, np.float64), np.asarray(K, np.float64))
    R = np.asarray(model_to_cam, np.float64)[:3, :3]
    H = P @ R  # (M, 2, 3): observation of a model-frame displacement
    s2 = cfg.amplitude_mm**2 / 3.0
    kxx = _kernel(x, x, s2, cfg.length_mm)  # (M, M)
    # block (i, j) of H (K (x) I3) H^T is k_ij H_i H_j^T
    HH = np.einsum("iad,jbd->iajb", H, H)  # (M, 2, M, 2)
    S = (kxx[:, None, :, None] * HH).reshape(2 * len(x), 2 * len(x))
    noise = (cfg.sigma_scale * sig) ** 2 + cfg.noise_mm**2
    S[np.diag_indices_from(S)] += np.repeat(noise, 2)
    try:
        alpha = np.linalg.solve(S, y.reshape(-1)).reshape(-1, 2)
    except np.linalg.LinAlgError:
        return np.zeros_like(v), 0
    w = np.einsum("mad,ma->md", H, alpha)  # (M, 3): H_i^T alpha_i
    return _kernel(v, x, s2, cfg.length_mm) @ w, len(x)
