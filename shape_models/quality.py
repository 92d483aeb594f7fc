"""Quality of a shape model: compactness, generalisation, specificity (Davies et al. style).

* **Compactness** ``C(k)``: share of the total variance held by the first ``k`` modes.
* **Generalisation** ``G(k)``: leave-one-out reconstruction error. For each
  left-out shape, a model is built from all the other shapes, the left-out
  shape is aligned to it and reconstructed with ``k`` modes; the error is the
  ASSD (mm) between the reconstruction and the aligned left-out surface (or the
  mean vertex distance when there are no faces).
* **Specificity** ``S(k)``: random instances of the ``k``-mode model (``b ~ N(0, I)``)
  compared with the closest training shape (mean vertex distance in the model
  frame, mm): how far from real shapes the model's samples are.

Curves are arrays over ``ks`` (numbers of modes); all functions are pure.
"""
from __future__ import annotations

import logging

import numpy as np

from xrecon.errors import InputError
from shape_models.model import ShapeModel, check_shapes

log = logging.getLogger(__name__)


def compactness(model: ShapeModel) -> np.ndarray:
    """``(K,)`` cumulative share of the total variance of the first 1..K modes."""
    model._check_fitted()
    return np.cumsum(model.explained_variance_) / model.total_variance_


def _surface_error(a, b, faces, n_samples: int) -> float:
    if faces is None:
        return float(np.linalg.norm(a - b, axis=1).mean())
    from xrecon.metrics.shape import assd

    return assd((a, faces), (b, faces), n_samples=n_samples)


def generalisation(shapes, ks, faces=None, procrustes: str | None = "similarity", left_out=None,
                   n_samples: int = 5000, progress: bool = False) -> np.ndarray:
    """Leave-one-out errors ``(len(ks), L)`` in mm.

    Args:
        shapes: ``(S, V, 3)`` in correspondence.
        ks: numbers of modes to evaluate (each <= S - 2).
        faces: ``(F, 3)`` for surface ASSD (else mean vertex distance).
        procrustes: alignment of the models built.
        left_out: indices left out one at a time (default all S); each model is
            built from all the other shapes.
    """
    from tqdm import tqdm

    shapes = check_shapes(shapes)
    ks = [int(k) for k in ks]
    if max(ks) > len(shapes) - 2:
        raise InputError(f"generalisation with {max(ks)} modes needs at least {max(ks) + 2} shapes")
    left_out = list(range(len(shapes))) if left_out is None else list(left_out)
    errors = np.zeros((len(ks), len(left_out)))
    for j, i in enumerate(tqdm(left_out, desc="leave-one-out", disable=not progress)):
        rest = np.delete(shapes, i, axis=0)
        model = ShapeModel(n_components=max(ks), procrustes=procrustes).fit(rest)
        aligned = model.align(shapes[i])[0][0]
        b = model.transform(aligned, align=False)  # (K,)
        for r, k in enumerate(ks):
            rec = model.inverse_transform(b[:k])
            errors[r, j] = _surface_error(rec, aligned, faces, n_samples)
    return errors


def specificity(model: ShapeModel, training_shapes, ks, n_samples: int = 200, seed: int = 0,
                max_vertices: int = 1000) -> np.ndarray:
    """Specificity errors ``(len(ks), n_samples)``: for each sampled instance the mean
    vertex distance (mm) to the closest training shape, both in the model frame
    (training shapes aligned with :meth:`ShapeModel.align`); ``max_vertices``
    evenly chosen vertices are used."""
    model._check_fitted()
    train = check_shapes(training_shapes)
    aligned_train, _ = model.align(train)
    rng = np.random.default_rng(seed)
    vid = np.linspace(0, model.n_vertices_ - 1, min(max_vertices, model.n_vertices_)).astype(int)
    b_all = rng.standard_normal((n_samples, model.n_components_))
    ref = aligned_train[:, vid]  # (S, v, 3)
    out = np.zeros((len(ks), n_samples))
    for r, k in enumerate(ks):
        samples = model.inverse_transform(b_all[:, :k])[:, vid]
        for s, x in enumerate(samples):
            out[r, s] = float(np.linalg.norm(ref - x[None], axis=2).mean(axis=1).min())
    return out
