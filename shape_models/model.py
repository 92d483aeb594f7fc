"""The statistical shape model: generalised Procrustes + PCA, scikit-learn style.

A shape is ``(V, 3)`` vertices in mm, in correspondence across the population
(vertex ``i`` is the same anatomical point in every shape). Shapes are first
aligned by generalised Procrustes analysis (see :mod:`shape_models.procrustes`),
then PCA (``sklearn.decomposition.PCA``) finds the modes. Coefficients are in
standard deviations (SD): ``shape = mean + sum_k b_k * sqrt(variance_k) * mode_k``,
so ``b ~ N(0, I)`` for the training population and ``|b|`` is the Mahalanobis
distance of a shape inside the model subspace.

Usage::

    model = ShapeModel(n_components=0.98, procrustes="similarity").fit(shapes, faces=faces)
    b = model.transform(new_shapes)           # (S, K) SD, after aligning to the mean
    x = model.inverse_transform(b)            # (S, V, 3), in the model frame
    model.save("pelvis.npz"); ShapeModel.load("pelvis.npz")
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from xrecon.errors import InputError, NotFittedError, ShapeError, check_shape
from shape_models.procrustes import (align_points, apply_transform, check_mode, generalized_procrustes,
                                     invert_transform)

log = logging.getLogger(__name__)

#: Version of the ``.npz`` layout written by :meth:`ShapeModel.save`. Files of
#: another version are refused with a message (no silent reinterpretation).
FORMAT_VERSION = 1

_REL_VARIANCE_FLOOR = 1e-12  # modes below this share of the total variance are numerical noise


def check_shapes(shapes, name: str = "shapes", source=None) -> np.ndarray:
    """Validate ``shapes: (S, V, 3)`` (finite numbers); returns float64."""
    try:
        arr = np.asarray(shapes, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be an array of shape (S, V, 3) ({exc}); are the vertex counts mismatched?",
                         source) from exc
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[1] == 0:
        raise ShapeError(name, "(S, V, 3)", arr.shape)
    if not np.isfinite(arr).all():
        bad = np.unique(np.nonzero(~np.isfinite(arr))[0])
        raise InputError(f"{name} hold NaN or inf (shapes {bad[:10].tolist()})", source)
    return arr


class ShapeModel:
    """Point distribution model (generalised Procrustes + PCA).

    Hyperparameters:
        n_components: number of modes (int), a fraction of the variance to keep
            (float in (0, 1]), or ``None`` for every mode with non-zero variance
            (at most ``S - 1``).
        procrustes: ``"similarity"`` (remove pose and size), ``"rigid"`` (remove
            pose, keep size: mode 1 is then mostly size) or ``None`` (use the
            shapes as given).
        max_procrustes_iter: iterations of generalised Procrustes.

    Learned attributes (after :meth:`fit`, :meth:`from_pca` or :meth:`load`):
        mean_: ``(V, 3)`` mean shape, mm, model frame.
        reference_: ``(V, 3)`` the Procrustes reference new shapes are aligned to
            (the normalised mean of generalised Procrustes; equals ``mean_`` up to
            a scale of a fraction of a percent with ``"similarity"``).
        components_: ``(K, 3V)`` unit modes, rows orthonormal, interleaved x, y, z per vertex.
        explained_variance_: ``(K,)`` variance of each mode, mm^2.
        explained_variance_ratio_: ``(K,)`` share of the total (aligned) variance.
        total_variance_: float, total variance of the aligned training shapes, mm^2.
        n_components_: K.
        faces_: ``(F, 3)`` int64 triangles or ``None``.
        landmark_names_: list of L names; landmark_vertex_ids_: ``(L,)`` vertex ids.
        training_scores_: ``(S, K)`` SD coefficients of the training shapes (may be empty).
        metadata_: dict (units, frame, source, split, anything JSON-serialisable).
        extra_arrays_: dict of named arrays saved with the model (empty unless given to :meth:`save`).
    """

    def __init__(self, n_components: int | float | None = None, procrustes: str | None = "similarity",
                 max_procrustes_iter: int = 100):
        self.n_components = n_components
        self.procrustes = procrustes
        self.max_procrustes_iter = max_procrustes_iter

    # ------------------------------------------------------------------ fitting
    def fit(self, shapes, faces=None, landmarks: dict[str, int] | None = None, metadata: dict | None = None):
        """Learn the model from ``shapes: (S, V, 3)`` in correspondence (mm).

        Args:
            shapes: ``(S, V, 3)`` training shapes.
            faces: optional ``(F, 3)`` triangles shared by all shapes.
            landmarks: optional ``{name: vertex id}``.
            metadata: optional JSON-serialisable dict merged into ``metadata_``
                (``units`` defaults to "mm", ``frame`` to the Procrustes frame).

        Returns:
            self
        """
        from sklearn.decomposition import PCA

        check_mode(self.procrustes)
        shapes = check_shapes(shapes)
        n_shapes, n_vertices, _ = shapes.shape
        if n_shapes < 2:
            raise InputError(f"need at least 2 shapes to build a model, got {n_shapes}")
        max_modes = min(n_shapes - 1, 3 * n_vertices)
        nc = self.n_components
        if nc is None:
            pca_nc = max_modes
        elif isinstance(nc, (int, np.integer)) and not isinstance(nc, bool):
            if nc < 1:
                raise InputError(f"n_components must be >= 1, got {nc}")
            if nc > max_modes:
                raise InputError(f"too few shapes for {nc} modes: {n_shapes} shapes give at most {max_modes} "
                                 f"modes; pass more shapes or n_components <= {max_modes}")
            pca_nc = int(nc)
        elif isinstance(nc, float) and 0.0 < nc <= 1.0:
            pca_nc = max_modes if nc == 1.0 else nc
        else:
            raise InputError(f"n_components must be an int >= 1, a float in (0, 1] or None, got {nc!r}")

        aligned, shape_to_model, reference = generalized_procrustes(shapes, self.procrustes,
                                                                    self.max_procrustes_iter)
        flat = aligned.reshape(n_shapes, -1)
        pca = PCA(n_components=pca_nc, svd_solver="full").fit(flat)
        total = float(flat.var(axis=0, ddof=1).sum())
        var = pca.explained_variance_
        keep = var > _REL_VARIANCE_FLOOR * max(total, 1e-300)
        if not keep.any():
            raise InputError("the shapes do not vary after alignment: no mode to learn")
        self.mean_ = pca.mean_.reshape(n_vertices, 3)
        self.reference_ = reference
        self.components_ = pca.components_[keep]
        self.explained_variance_ = var[keep]
        self.total_variance_ = total
        self.explained_variance_ratio_ = self.explained_variance_ / total
        self.n_components_ = int(keep.sum())
        self.faces_ = _check_faces(faces, n_vertices)
        self._set_landmarks(landmarks)
        self.training_to_model_ = shape_to_model
        self.training_scores_ = self._project(aligned)
        self.extra_arrays_ = {}
        self.metadata_ = {"units": "mm", "frame": f"model frame ({self.procrustes or 'no'} Procrustes)",
                          "source": "ShapeModel.fit", "n_training_shapes": n_shapes}
        self.metadata_.update(metadata or {})
        log.info("shape model: %d shapes, %d vertices, %d modes (%.1f %% of the variance)", n_shapes, n_vertices,
                 self.n_components_, 100 * self.explained_variance_ratio_.sum())
        return self

    @classmethod
    def from_pca(cls, mean, components, variances, faces=None, landmarks: dict[str, int] | None = None,
                 training_scores=None, procrustes: str | None = None, metadata: dict | None = None,
                 total_variance: float | None = None, reference=None) -> "ShapeModel":
        """Build a model from a published PCA.

        Args:
            mean: ``(V, 3)`` or ``(3V,)`` (interleaved x, y, z) mean shape, mm.
            components: ``(K, 3V)`` modes (rows; re-orthonormalised if needed).
            variances: ``(K,)`` mode variances, mm^2 (must be > 0).
            training_scores: optional ``(S, K)`` scores **in SD**.
            procrustes: how the population was aligned (recorded; used by :meth:`transform`).
            total_variance: total population variance if known (else the sum of ``variances``).
            reference: ``(V, 3)`` Procrustes reference (default: the mean).
        """
        check_mode(procrustes)
        mean = np.asarray(mean, dtype=np.float64).reshape(-1, 3)
        comps = np.asarray(components, dtype=np.float64)
        var = np.asarray(variances, dtype=np.float64).reshape(-1)
        check_shape("components", comps, (len(var), mean.size))
        if not (np.isfinite(mean).all() and np.isfinite(comps).all() and np.isfinite(var).all()):
            raise InputError("published PCA holds NaN or inf")
        if (var <= 0).any():
            raise InputError("published PCA has non-positive variances")
        gram = comps @ comps.T
        if not np.allclose(gram, np.eye(len(var)), atol=1e-4):
            raise InputError("published PCA modes are not orthonormal (max |C C^T - I| = "
                             f"{np.abs(gram - np.eye(len(var))).max():.3g})")
        model = cls(n_components=len(var), procrustes=procrustes)
        model.mean_ = mean
        model.reference_ = mean.copy() if reference is None else np.asarray(reference, np.float64).reshape(-1, 3)
        check_shape("reference", model.reference_, mean.shape)
        model.components_ = comps
        model.explained_variance_ = var
        model.total_variance_ = float(total_variance if total_variance is not None else var.sum())
        model.explained_variance_ratio_ = var / model.total_variance_
        model.n_components_ = len(var)
        model.faces_ = _check_faces(faces, len(mean))
        model._set_landmarks(landmarks)
        model.training_to_model_ = np.zeros((0, 4, 4))
        scores = np.zeros((0, len(var))) if training_scores is None else np.asarray(training_scores, np.float64)
        check_shape("training_scores", scores, (None, len(var)))
        model.training_scores_ = scores
        model.extra_arrays_ = {}
        model.metadata_ = {"units": "mm", "frame": "published model frame", "source": "ShapeModel.from_pca"}
        model.metadata_.update(metadata or {})
        return model

    # ------------------------------------------------------------------ helpers
    def _check_fitted(self):
        if not hasattr(self, "components_"):
            raise NotFittedError("this ShapeModel is not fitted yet: call fit(), from_pca() or load() first")

    def _set_landmarks(self, landmarks):
        landmarks = dict(landmarks or {})
        ids = np.asarray(list(landmarks.values()), dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self.mean_)):
            raise InputError(f"landmark vertex ids must lie in [0, {len(self.mean_)})")
        self.landmark_names_ = list(landmarks.keys())
        self.landmark_vertex_ids_ = ids

    @property
    def n_vertices_(self) -> int:
        self._check_fitted()
        return len(self.mean_)

    @property
    def std_(self) -> np.ndarray:
        """``(K,)`` standard deviation of each mode, mm."""
        self._check_fitted()
        return np.sqrt(self.explained_variance_)

    @property
    def modes_(self) -> np.ndarray:
        """``(K, V, 3)`` modes scaled to one SD (mm per SD)."""
        return (self.components_ * self.std_[:, None]).reshape(self.n_components_, -1, 3)

    def _project(self, aligned: np.ndarray) -> np.ndarray:
        diff = aligned.reshape(len(aligned), -1) - self.mean_.reshape(1, -1)
        return (diff @ self.components_.T) / self.std_

    def _as_shapes(self, shapes) -> tuple[np.ndarray, bool]:
        arr = np.asarray(shapes, dtype=np.float64)
        single = arr.ndim == 2
        arr = check_shapes(arr[None] if single else arr)
        if arr.shape[1] != self.n_vertices_:
            raise InputError(f"shapes have {arr.shape[1]} vertices but the model has {self.n_vertices_}; "
                             "bring them into correspondence first (shape_models.correspond)")
        return arr, single

    def _as_coeffs(self, coeffs) -> tuple[np.ndarray, bool]:
        b = np.asarray(coeffs, dtype=np.float64)
        single = b.ndim == 1
        b = b[None] if single else b
        if b.ndim != 2 or b.shape[1] > self.n_components_:
            raise ShapeError("coefficients", f"(S, k <= {self.n_components_})", b.shape)
        if not np.isfinite(b).all():
            raise InputError("coefficients hold NaN or inf")
        return b, single

    # ------------------------------------------------------------------ API
    def align(self, shapes) -> tuple[np.ndarray, np.ndarray]:
        """Align ``shapes: (S, V, 3)`` to ``reference_`` with the model's Procrustes mode.

        Returns ``aligned (S, V, 3)`` and ``shape_to_model (S, 4, 4)``.
        """
        self._check_fitted()
        arr, _ = self._as_shapes(shapes)
        transforms = np.stack([align_points(s, self.reference_, self.procrustes) for s in arr])
        return apply_transform(transforms, arr), transforms

    def transform(self, shapes, align: bool = True) -> np.ndarray:
        """Coefficients in SD, ``(S, K)`` (or ``(K,)`` for one ``(V, 3)`` shape).

        With ``align`` (default) each shape is first aligned to the mean with
        the model's Procrustes mode, so the input may be in any frame.
        """
        self._check_fitted()
        arr, single = self._as_shapes(shapes)
        if align:
            arr, _ = self.align(arr)
        b = self._project(arr)
        return b[0] if single else b

    def inverse_transform(self, coeffs) -> np.ndarray:
        """Shapes ``(S, V, 3)`` in the model frame from coefficients ``(S, k)`` in SD.

        ``k <= K``: missing trailing coefficients are zero.
        """
        self._check_fitted()
        b, single = self._as_coeffs(coeffs)
        k = b.shape[1]
        flat = self.mean_.reshape(1, -1) + (b * self.std_[:k]) @ self.components_[:k]
        out = flat.reshape(len(b), -1, 3)
        return out[0] if single else out

    def reconstruct(self, shapes, n_components: int | None = None) -> np.ndarray:
        """Best model approximation of ``shapes: (S, V, 3)`` in their own frame,
        using the first ``n_components`` modes (all by default)."""
        arr, single = self._as_shapes(shapes)
        aligned, shape_to_model = self.align(arr)
        b = self._project(aligned)[:, : (n_components or self.n_components_)]
        rec = apply_transform(invert_transform(shape_to_model), self.inverse_transform(b))
        return rec[0] if single else rec

    def sample(self, n: int, seed: int = 0, max_sd: float | None = None) -> np.ndarray:
        """``n`` random plausible shapes ``(n, V, 3)``: coefficients ``~ N(0, I)``,
        optionally clipped to ``[-max_sd, max_sd]``."""
        self._check_fitted()
        b = np.random.default_rng(seed).standard_normal((int(n), self.n_components_))
        if max_sd is not None:
            b = np.clip(b, -max_sd, max_sd)
        return self.inverse_transform(b)

    def mahalanobis(self, x) -> np.ndarray | float:
        """Mahalanobis distance inside the model subspace (``|b|`` in SD).

        ``x`` is either coefficients ``(S, k)`` / ``(k,)`` or shapes
        ``(S, V, 3)`` / ``(V, 3)`` (aligned and projected first). The part of a
        shape outside the model subspace is not counted; see :meth:`reconstruct`
        for that residual.
        """
        self._check_fitted()
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim >= 2 and arr.shape[-1] == 3 and arr.shape[-2] == self.n_vertices_:
            b = self.transform(arr)
        else:
            b, _ = self._as_coeffs(arr)
            b = b[0] if arr.ndim == 1 else b
        d = np.sqrt((np.atleast_2d(b) ** 2).sum(axis=1))
        return float(d[0]) if np.ndim(b) == 1 else d

    def landmarks(self, shapes) -> np.ndarray:
        """Landmark positions ``(S, L, 3)`` (or ``(L, 3)``) of shapes in correspondence."""
        self._check_fitted()
        arr = np.asarray(shapes, dtype=np.float64)
        return arr[..., self.landmark_vertex_ids_, :]

    def truncated(self, n_components: int) -> "ShapeModel":
        """A copy keeping only the first ``n_components`` modes."""
        self._check_fitted()
        if not 1 <= n_components <= self.n_components_:
            raise InputError(f"n_components must lie in [1, {self.n_components_}], got {n_components}")
        k = int(n_components)
        m = ShapeModel.from_pca(self.mean_, self.components_[:k], self.explained_variance_[:k], self.faces_,
                                dict(zip(self.landmark_names_, self.landmark_vertex_ids_.tolist())),
                                self.training_scores_[:, :k], self.procrustes, dict(self.metadata_),
                                self.total_variance_, self.reference_)
        return m

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | Path, dtype=np.float32, extra_arrays: dict | None = None) -> None:
        """Write the model to one ``.npz`` file (atomically).

        Args:
            dtype: of the float arrays (float32 halves the size; float64 keeps round trips exact).
            extra_arrays: optional ``{name: array}`` stored alongside (e.g. the scores of
                held-out subjects); :meth:`load` returns them in ``extra_arrays_``.
        """
        from xrecon.io import atomic_path

        self._check_fitted()
        path = Path(path)
        meta = dict(self.metadata_)
        meta.update({"procrustes": self.procrustes, "n_components": self.n_components_})
        arrays = {
            "format_version": np.int64(FORMAT_VERSION),
            "mean": self.mean_.astype(dtype),
            "reference": self.reference_.astype(dtype),
            "components": self.components_.astype(dtype),
            "explained_variance": self.explained_variance_.astype(np.float64),
            "total_variance": np.float64(self.total_variance_),
            "faces": (np.zeros((0, 3), np.int32) if self.faces_ is None else self.faces_.astype(np.int32)),
            "landmark_names": np.asarray(self.landmark_names_, dtype=str),
            "landmark_vertex_ids": self.landmark_vertex_ids_.astype(np.int64),
            "training_scores": self.training_scores_.astype(dtype),
            "metadata_json": np.asarray(json.dumps(meta, default=_json_default)),
        }
        for key, value in (extra_arrays or {}).items():
            arrays[f"extra__{key}"] = np.asarray(value)
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "ShapeModel":
        """Read a file written by :meth:`save`; another format version is refused."""
        path = Path(path)
        if not path.is_file():
            raise InputError("no such model file", path)
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise InputError(f"not a shape model .npz file ({exc})", path) from exc
        if "format_version" not in data:
            raise InputError("not a shape model file (no format_version)", path)
        version = int(data["format_version"])
        if version != FORMAT_VERSION:
            raise InputError(f"shape model format version {version}; this code reads version {FORMAT_VERSION} "
                             "(rebuild the model with this version of shape_models)", path)
        try:
            meta = json.loads(str(data["metadata_json"]))
            faces = data["faces"] if len(data["faces"]) else None
            landmarks = dict(zip(data["landmark_names"].tolist(), data["landmark_vertex_ids"].tolist()))
            model = cls.from_pca(data["mean"], data["components"], data["explained_variance"], faces, landmarks,
                                 data["training_scores"], meta.get("procrustes"), meta,
                                 float(data["total_variance"]), data["reference"])
        except KeyError as exc:
            raise InputError(f"shape model file lacks {exc}", path) from exc
        except InputError as exc:
            raise InputError(exc.problem, path) from exc
        model.extra_arrays_ = {k[len("extra__"):]: v for k, v in data.items() if k.startswith("extra__")}
        return model

    def __repr__(self) -> str:
        if not hasattr(self, "components_"):
            return f"ShapeModel(n_components={self.n_components!r}, procrustes={self.procrustes!r})"
        return (f"ShapeModel({self.n_vertices_} vertices, {self.n_components_} modes, "
                f"{100 * self.explained_variance_ratio_.sum():.1f} % variance, procrustes={self.procrustes!r}, "
                f"source={self.metadata_.get('source')!r})")


def _check_faces(faces, n_vertices: int):
    if faces is None:
        return None
    f = np.asarray(faces)
    if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        raise InputError(f"faces must be (F, 3) triangles, got shape {f.shape}")
    f = f.astype(np.int64)
    if f.min() < 0 or f.max() >= n_vertices:
        raise InputError(f"faces index vertices outside [0, {n_vertices})")
    return f


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o)}")
