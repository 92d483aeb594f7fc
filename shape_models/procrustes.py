"""Procrustes alignment of point sets in correspondence.

Transforms act on row-vector points as ``y = scale * x @ R.T + t`` and are also
returned as 4x4 matrices ``a_to_b`` whose upper-left block is ``scale * R`` (the
same column-vector convention as the rest of xrecon, see
``/work/shared/CONVENTIONS.md``).

Modes (the ``procrustes`` hyperparameter of :class:`shape_models.ShapeModel`):

* ``"similarity"``: rotation, translation and one isotropic scale are removed.
* ``"rigid"``: rotation and translation only (size stays in the model).
* ``None``: no alignment; shapes are used in the frame they come in.
"""
from __future__ import annotations

import logging

import numpy as np

from xrecon.errors import InputError, check_shape

log = logging.getLogger(__name__)

PROCRUSTES_MODES = ("similarity", "rigid", None)


def check_mode(mode) -> None:
    if mode not in PROCRUSTES_MODES:
        raise InputError(f"procrustes must be one of {PROCRUSTES_MODES}, got {mode!r}")


def similarity_matrix(rotation: np.ndarray, translation: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """4x4 ``a_to_b`` from ``rotation (3, 3)``, ``translation (3,)`` and an isotropic ``scale``."""
    m = np.eye(4)
    m[:3, :3] = scale * np.asarray(rotation, dtype=np.float64)
    m[:3, 3] = translation
    return m


def apply_transform(a_to_b: np.ndarray, points_a: np.ndarray) -> np.ndarray:
    """Map ``points_a: (..., N, 3)`` by ``a_to_b: (..., 4, 4)`` (similarity allowed)."""
    a_to_b = np.asarray(a_to_b, dtype=np.float64)
    return np.einsum("...ij,...nj->...ni", a_to_b[..., :3, :3], points_a) + a_to_b[..., None, :3, 3]


def invert_transform(a_to_b: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 similarity ``a_to_b: (..., 4, 4)``."""
    return np.linalg.inv(np.asarray(a_to_b, dtype=np.float64))


def align_points(source: np.ndarray, target: np.ndarray, mode: str | None = "similarity",
                 weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares ``source_to_target`` 4x4 for corresponding points (Umeyama 1991).

    Args:
        source: ``(N, 3)`` points.
        target: ``(N, 3)`` corresponding points.
        mode: ``"similarity"``, ``"rigid"`` or ``None`` (identity).
        weights: optional ``(N,)`` non-negative weights.

    Returns:
        ``(4, 4)`` transform with ``target ~= scale * R @ source + t``; a proper
        rotation (det +1) is enforced.
    """
    check_mode(mode)
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    check_shape("source", source, (None, 3))
    check_shape("target", target, (len(source), 3))
    if mode is None:
        return np.eye(4)
    w = np.ones(len(source)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu_s = w @ source
    mu_t = w @ target
    xs = source - mu_s
    xt = target - mu_t
    cov = (xt * w[:, None]).T @ xs
    U, S, Vt = np.linalg.svd(cov)
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[2, 2] = -1.0
    R = U @ D @ Vt
    scale = 1.0
    if mode == "similarity":
        var_s = float(w @ (xs**2).sum(axis=1))
        scale = float(np.trace(np.diag(S) @ D) / var_s) if var_s > 0 else 1.0
    t = mu_t - scale * R @ mu_s
    return similarity_matrix(R, t, scale)


def skew(v: np.ndarray) -> np.ndarray:
    """Cross-product matrices ``(N, 3, 3)`` of ``v: (N, 3)`` (``skew(v) @ w = v x w``)."""
    z = np.zeros(len(v))
    return np.stack([np.stack([z, -v[:, 2], v[:, 1]], -1), np.stack([v[:, 2], z, -v[:, 0]], -1),
                     np.stack([-v[:, 1], v[:, 0], z], -1)], axis=1)


def exp_so3(rotvec: np.ndarray) -> np.ndarray:
    """Rotation matrix ``(3, 3)`` of a rotation vector ``(3,)`` (Rodrigues), radians."""
    theta = float(np.linalg.norm(rotvec))
    if theta < 1e-12:
        return np.eye(3)
    k = np.asarray(rotvec, np.float64) / theta
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * K + (1 - np.cos(theta)) * K @ K


def centroid_size(points: np.ndarray) -> np.ndarray:
    """RMS distance of the points ``(..., N, 3)`` to their centroid, ``(...)`` in mm."""
    points = np.asarray(points, dtype=np.float64)
    c = points - points.mean(axis=-2, keepdims=True)
    return np.sqrt((c**2).sum(axis=-1).mean(axis=-1))


def generalized_procrustes(shapes: np.ndarray, mode: str | None = "similarity", max_iter: int = 50,
                           tol_mm: float = 1e-9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generalised Procrustes analysis of shapes in correspondence.

    The reference starts as the first shape (centred) and is updated to the mean
    of the aligned shapes until it moves less than ``tol_mm`` (RMS per vertex).
    With ``"similarity"`` the mean is rescaled to the average centroid size of
    the input shapes so the model stays in millimetres. The final reference is
    placed (rigidly) onto the plain average of the inputs, so a population given
    in an anatomical frame keeps that frame.

    Args:
        shapes: ``(S, V, 3)`` vertices in mm.
        mode: see module docstring.

    Returns:
        ``aligned (S, V, 3)``, ``shape_to_model (S, 4, 4)`` (the similarity that
        maps each input shape onto the reference frame), ``reference (V, 3)``.
    """
    check_mode(mode)
    shapes = np.asarray(shapes, dtype=np.float64)
    check_shape("shapes", shapes, (None, None, 3))
    n = len(shapes)
    if mode is None:
        return shapes.copy(), np.tile(np.eye(4), (n, 1, 1)), shapes.mean(axis=0)
    target_size = float(centroid_size(shapes).mean())
    ref = shapes[0] - shapes[0].mean(axis=0)
    transforms = np.tile(np.eye(4), (n, 1, 1))
    aligned = shapes.copy()
    for it in range(max_iter):
        for i in range(n):
            transforms[i] = align_points(shapes[i], ref, mode)
        aligned = apply_transform(transforms, shapes)
        new_ref = aligned.mean(axis=0)
        new_ref -= new_ref.mean(axis=0)
        if mode == "similarity":
            new_ref *= target_size / centroid_size(new_ref)
        change = float(np.sqrt(((new_ref - ref) ** 2).sum(axis=1).mean()))
        ref = new_ref
        if change < tol_mm:
            break
    else:
        log.info("generalised Procrustes stopped after %d iterations (last change %.3g mm)", max_iter, change)
    # keep the caller's frame: place the reference rigidly onto the plain average of the inputs
    # (e.g. an anatomical frame the population was given in)
    ref = apply_transform(align_points(ref, shapes.mean(axis=0), "rigid"), ref)
    for i in range(n):
        transforms[i] = align_points(shapes[i], ref, mode)
    aligned = apply_transform(transforms, shapes)
    return aligned, transforms, ref
