"""Shape populations beyond the span of the bundled model ("open-world" anatomy).

Every bundled articulated-ssm subject lies in one 10-D PCA subspace, so the
ready models represent held-out subjects to 0.09 mm: benchmarks on them measure
interpolation. This module makes shapes the model has never seen:

* **(b) out-of-span draws** (:func:`smooth_deformation`, :class:`OutOfSpanPopulation`):
  a model instance (a subject of the fixed split, or a draw ``b ~ N(0, I)``) moved
  by a smooth random displacement field, a Gaussian process with a squared-exponential
  kernel sampled by random Fourier features, scaled to an exact RMS amplitude.
  Deterministic from ``(split, index)``: every split owns its own seed range
  (:data:`SEED_OFFSETS`).
* **(a) LLP26 real subjects** (:func:`llp26_pelvis_nodes`, :func:`llp26_pelvis_surface`,
  :func:`register_llp26`): the 26 subjects of musculoskeletal-models' LLP26 model,
  whose pelvis is a mesh of 260 cubic Lagrange elements (``tri10`` / ``quad44``;
  element list and connectivity in the package's ``atlas_meshes/pelvis_combined_cubic_flat.mesh``).
  Elements 0-72 are the right hip bone (nodes 0-539), 73-145 the left hip bone
  (540-1079), 146-259 the sacrum (1080-1945); the three parts share no node. The
  elements are evaluated into a closed triangle surface per part (Lagrange elements
  interpolate their nodes, so the surface passes through every node), then the
  bundled mean mesh is registered non-rigidly onto the hip bones
  (:func:`shape_models.correspond.register_template`), giving each subject in the
  bundled model's correspondence.
* **(c) mirroring** (:func:`mirror_mesh`, :func:`mirror_in_correspondence`): reflection
  across the model frame's sagittal plane (``z = 0``; +z is the subject's right) with
  the face winding flipped so normals stay outward; for the bundled pelvis the two
  hemipelves are mirror meshes with the same local numbering, so a mirrored pelvis
  with its halves swapped is again in the model's correspondence.
* **Splits** (:func:`population_split`): subject-level, fixed.

Residuals against the model (:func:`span_residual`): a plain least-squares
projection onto the model's span after a rigid alignment (alternated until it
settles; no prior), i.e. the best the model's modes can do with known
correspondence. Lengths are mm in the model frame (see ``docs/conventions.md``
and ``docs/populations.md``).

Uses numpy / scipy and shape_models' own modules only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from xrecon.errors import InputError, check_shape
from shape_models.model import ShapeModel
from shape_models.procrustes import align_points, apply_transform

#: First seed of each split's out-of-span draws; draw ``i`` of a split uses seed ``offset + i``.
SEED_OFFSETS = {"train": 0, "val": 1_000_000, "test": 2_000_000}
#: Draws per split (the seed ranges never overlap).
SEED_RANGE = 1_000_000

#: LLP26 pelvis parts: element range and node range in musculoskeletal-models 0.2.4
#: (``pelvis_combined_cubic_flat.mesh``; nodes = rows 0-1945 of ``LLP26_rigid.pc``).
#: Sides checked against the bundled pelvis (ASIS / PSIS after alignment): LLP26 +x is
#: the subject's left, +y posterior, +z superior.
LLP26_PELVIS_PARTS = {
    "right_hip": {"elements": (0, 73), "nodes": (0, 540)},
    "left_hip": {"elements": (73, 146), "nodes": (540, 1080)},
    "sacrum": {"elements": (146, 260), "nodes": (1080, 1946)},
}
#: Fixed LLP26 split: ``numpy.random.default_rng(LLP26_SPLIT_SEED).permutation(26)``,
#: the first ``LLP26_N_VAL`` subjects are val, the rest test; no LLP26 subject is train.
LLP26_SPLIT_SEED = 0
LLP26_N_VAL = 6
LLP26_N_SUBJECTS = 26


# ---------------------------------------------------------------------------- (b) deformations
def smooth_deformation(vertices, rng: np.random.Generator, amplitude_mm: float, length_scale_mm: float,
                       n_features: int = 512, normalise: bool = True) -> np.ndarray:
    """A smooth random displacement field at ``vertices: (V, 3)`` mm; returns ``(V, 3)`` mm.

    Each of the three components is an independent Gaussian process with the
    squared-exponential kernel ``k(r) = s^2 exp(-r^2 / (2 l^2))``, ``l = length_scale_mm``,
    sampled by ``n_features`` random Fourier features (Rahimi & Recht 2007):
    ``f(x) = sqrt(2 / M) sum_m w_m cos(omega_m . x + phi_m)`` with ``omega ~ N(0, I / l^2)``,
    ``phi ~ U(0, 2 pi)``, ``w ~ N(0, s^2 I_3)``. Cost ``O(V M)``; fine for 10-20k vertices.

    Args:
        vertices: ``(V, 3)`` positions where the field is evaluated (mm).
        rng: the random generator (the draw is a deterministic function of its state).
        amplitude_mm: RMS over the vertices of ``|displacement|``. With ``normalise``
            (default) every draw is scaled to exactly this value; without, ``s^2 =
            amplitude^2 / 3`` so it holds in expectation.
        length_scale_mm: ``l`` of the kernel (> 0).
        n_features: random Fourier features (>= 16).

    Returns:
        displacement ``(V, 3)`` mm (add it to ``vertices``).
    """
    v = np.asarray(vertices, dtype=np.float64)
    check_shape("vertices", v, (None, 3))
    if not np.isfinite(v).all():
        raise InputError("vertices hold NaN or inf")
    if not (amplitude_mm >= 0 and np.isfinite(amplitude_mm)):
        raise InputError(f"amplitude_mm must be a finite number >= 0, got {amplitude_mm}")
    if not (length_scale_mm > 0 and np.isfinite(length_scale_mm)):
        raise InputError(f"length_scale_mm must be a finite number > 0, got {length_scale_mm}")
    if n_features < 16:
        raise InputError(f"n_features must be >= 16, got {n_features}")
    omega = rng.standard_normal((n_features, 3)) / length_scale_mm
    phase = rng.uniform(0.0, 2.0 * np.pi, n_features)
    weights = rng.standard_normal((n_features, 3))
    centred = v - v.mean(axis=0)  # the field's law does not depend on the origin; this keeps cos() accurate
    disp = np.sqrt(2.0 / n_features) * np.cos(centred @ omega.T + phase) @ weights  # unit variance per component
    if amplitude_mm == 0:
        return np.zeros_like(v)
    if normalise:
        rms = float(np.sqrt((disp**2).sum(axis=1).mean()))
        return disp * (amplitude_mm / max(rms, 1e-12))
    return disp * (amplitude_mm / np.sqrt(3.0))


@dataclass
class PopulationInstance:
    """One shape of a population.

    Attributes:
        vertices: ``(V, 3)`` mm, model frame, in the model's correspondence.
        faces: ``(F, 3)`` (the model's).
        split / index / seed: where it comes from (``seed = SEED_OFFSETS[split] + index``).
        base: ``"subject <i>"`` (a subject of the model's fixed split) or ``"sample"``.
        coefficients: ``(K,)`` SD of the undeformed base instance.
        displacement_rms_mm: RMS of the added field (0 when none).
        mirrored: whether the instance was mirrored (:func:`mirror_in_correspondence`).
    """

    vertices: np.ndarray
    faces: np.ndarray
    split: str
    index: int
    seed: int
    base: str
    coefficients: np.ndarray
    displacement_rms_mm: float
    mirrored: bool = False


@dataclass(frozen=True)
class OutOfSpanPopulation:
    """Model instances plus a smooth random deformation (hyperparameters only).

    Attributes:
        amplitude_mm: RMS of the deformation field (0: in-span instances).
        length_scale_mm: squared-exponential length scale of the field.
        base: ``"subjects"`` (draw ``i`` of a split deforms subject ``i mod n`` of the
            same split of the ready model, see :func:`shape_models.bundled.subject_shapes`;
            test draws are built on test subjects only) or ``"sample"`` (``b ~ N(0, I)``,
            clipped to ``max_sd``).
        max_sd: clip of sampled coefficients.
        mirror_probability: share of instances mirrored across the sagittal plane
            (needs ``mirror_permutation``; see :func:`pelvis_mirror_permutation`).
        n_features: random Fourier features of the field.

    Defaults: the calibration on the 6 LLP26 val subjects (``benchmarks/bench_populations.py``,
    ``docs/populations.md``): with them the model's residual on these draws (ASSD median
    1.43 mm) matches the LLP26 val subjects' (1.44 mm).
    """

    amplitude_mm: float = 3.58
    length_scale_mm: float = 20.0
    base: str = "subjects"
    max_sd: float = 3.0
    mirror_probability: float = 0.0
    n_features: int = 512

    def draw(self, model: ShapeModel, split: str, index: int,
             mirror_permutation: np.ndarray | None = None) -> PopulationInstance:
        """Instance ``index`` of ``split`` (``train`` / ``val`` / ``test``) of this population for ``model``."""
        if split not in SEED_OFFSETS:
            raise InputError(f"split must be one of {list(SEED_OFFSETS)}, got {split!r}")
        if not 0 <= int(index) < SEED_RANGE:
            raise InputError(f"index must lie in [0, {SEED_RANGE}), got {index}")
        if self.base not in ("subjects", "sample"):
            raise InputError(f"base must be 'subjects' or 'sample', got {self.base!r}")
        seed = SEED_OFFSETS[split] + int(index)
        rng = np.random.default_rng(seed)
        if self.base == "subjects":
            scores = model.extra_arrays_.get("subject_scores")
            if scores is None or "split" not in model.metadata_:
                raise InputError("base='subjects' needs a ready bundled model (subject scores and split); "
                                 "use base='sample'")
            ids = list(model.metadata_["split"][split])
            subject = int(ids[int(index) % len(ids)])
            b = np.asarray(scores[subject], np.float64)
            base = f"subject {subject}"
        else:
            b = np.clip(rng.standard_normal(model.n_components_), -self.max_sd, self.max_sd)
            base = "sample"
        v = model.inverse_transform(b)
        disp = smooth_deformation(v, rng, self.amplitude_mm, self.length_scale_mm, self.n_features)
        v = v + disp
        mirrored = False
        if self.mirror_probability > 0:
            if mirror_permutation is None:
                raise InputError("mirror_probability > 0 needs mirror_permutation (pelvis_mirror_permutation(model))")
            if rng.uniform() < self.mirror_probability:
                v = mirror_in_correspondence(v, mirror_permutation)
                mirrored = True
        return PopulationInstance(v, model.faces_, split, int(index), seed, base, b,
                                  float(np.sqrt((disp**2).sum(axis=1).mean())), mirrored)

    def draws(self, model: ShapeModel, split: str, n: int, start: int = 0, **kwargs) -> list[PopulationInstance]:
        """Instances ``start .. start + n - 1`` of ``split``."""
        return [self.draw(model, split, i, **kwargs) for i in range(start, start + int(n))]


# ---------------------------------------------------------------------------- residual to the span
@dataclass
class SpanResidual:
    """What a model's span leaves of shapes in its correspondence (:func:`span_residual`).

    Attributes:
        aligned: ``(S, V, 3)`` the shapes rigidly aligned onto their projection (model frame).
        projection: ``(S, V, 3)`` the least-squares model instances (all modes, no prior).
        coefficients: ``(S, K)`` SD of the projection.
        rms_mm: ``(S,)`` RMS vertex distance aligned <-> projection (includes sliding along the surface).
        normal_rms_mm: ``(S,)`` RMS of the residual's component along the projection's vertex normals.
        surface_mm: ``(S,)`` symmetric mean vertex-to-surface distance between the aligned shape and the
            projection (an ASSD estimated on the vertices; ``nan`` without faces).
    """

    aligned: np.ndarray
    projection: np.ndarray
    coefficients: np.ndarray
    rms_mm: np.ndarray
    normal_rms_mm: np.ndarray
    surface_mm: np.ndarray


def span_residual(model: ShapeModel, shapes, n_iter: int = 20, tol_mm: float = 1e-6) -> SpanResidual:
    """Least-squares projection of ``shapes: (S, V, 3)`` (or ``(V, 3)``) onto ``model``'s span.

    Alternates a rigid alignment (similarity when the model's Procrustes mode is
    ``"similarity"``) of the shape onto its current projection with a plain
    least-squares projection on all modes (no prior, no clipping), from the mean,
    until the RMS changes less than ``tol_mm``. For an instance of the model this
    returns it exactly (residual 0).
    """
    model._check_fitted()
    arr = np.asarray(shapes, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    check_shape("shapes", arr, (None, model.n_vertices_, 3))
    mode = "similarity" if model.procrustes == "similarity" else "rigid"
    out_a, out_p, out_b, rms = [], [], [], []
    for x in arr:
        rec = model.mean_
        prev = np.inf
        for _ in range(n_iter):
            xa = apply_transform(align_points(x, rec, mode), x)
            b = model.transform(xa, align=False)
            rec = model.inverse_transform(b)
            cur = float(np.sqrt(((xa - rec) ** 2).sum(axis=1).mean()))
            if prev - cur < tol_mm:
                break
            prev = cur
        out_a.append(xa)
        out_p.append(rec)
        out_b.append(b)
        rms.append(cur)
    aligned, proj = np.stack(out_a), np.stack(out_p)
    normal_rms, surf = [], []
    for xa, rec in zip(aligned, proj):
        if model.faces_ is None:
            normal_rms.append(np.nan)
            surf.append(np.nan)
            continue
        n = vertex_normals(rec, model.faces_)
        normal_rms.append(float(np.sqrt((((xa - rec) * n).sum(axis=1) ** 2).mean())))
        surf.append(0.5 * (_vertex_to_surface(xa, rec, model.faces_).mean()
                           + _vertex_to_surface(rec, xa, model.faces_).mean()))
    return SpanResidual(aligned, proj, np.stack(out_b), np.array(rms), np.array(normal_rms), np.array(surf))


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit area-weighted vertex normals ``(V, 3)`` of a mesh ``(V, 3), (F, 3)``."""
    v = np.asarray(vertices, np.float64)
    tri = v[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2 x area
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def _vertex_to_surface(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    from shape_models.surface import closest_surface_points

    return np.linalg.norm(points - closest_surface_points(vertices, faces, points)[2], axis=1)


def signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Signed volume (mm^3) of a closed mesh: positive when the faces wind counter-clockwise
    seen from outside (outward normals)."""
    tri = np.asarray(vertices, np.float64)[np.asarray(faces)]
    return float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0)


# ---------------------------------------------------------------------------- calibration of (b)
def residual_correlogram(residual: np.ndarray, vertices: np.ndarray, faces: np.ndarray,
                         bins_mm=np.arange(0.0, 82.0, 4.0), n_pairs: int = 400_000, min_normal_cos: float = 0.7,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Spatial correlation of the normal component of a residual field.

    Args:
        residual: ``(V, 3)`` residual vectors (shape minus its model projection) at ``vertices``.
        vertices, faces: ``(V, 3)``, ``(F, 3)`` the projection mesh (for the normals).
        bins_mm: distance bin edges.
        min_normal_cos: only pairs whose normals agree this well count (a thin plate's two
            faces are a few mm apart with opposite normals; without this the correlogram
            measures the bone's thickness, not the field).

    Returns:
        ``(bin centres (B,), correlation (B,))``: ``E[s_i s_j] / E[s^2]`` over random vertex pairs
        whose distance falls in each bin (``s`` = residual . normal); ``nan`` for empty bins.
    """
    rng = np.random.default_rng(seed)
    normals = vertex_normals(vertices, faces)
    s = (residual * normals).sum(axis=1)
    i = rng.integers(0, len(s), n_pairs)
    j = rng.integers(0, len(s), n_pairs)
    keep = (normals[i] * normals[j]).sum(axis=1) >= min_normal_cos
    i, j = i[keep], j[keep]
    d = np.linalg.norm(vertices[i] - vertices[j], axis=1)
    k = np.digitize(d, bins_mm) - 1
    prod = s[i] * s[j]
    var = float((s**2).mean())
    corr = np.full(len(bins_mm) - 1, np.nan)
    for b in range(len(bins_mm) - 1):
        sel = k == b
        if sel.sum() >= 20:
            corr[b] = prod[sel].mean() / max(var, 1e-12)
    return 0.5 * (bins_mm[1:] + bins_mm[:-1]), corr


def correlation_length(centres: np.ndarray, corr: np.ndarray) -> float:
    """Length (mm) where the correlation first falls below ``exp(-1/2)`` (0.61), linearly
    interpolated: for a squared-exponential correlation this is its length scale."""
    level = np.exp(-0.5)
    ok = np.isfinite(corr)
    c, r = centres[ok], corr[ok]
    below = np.nonzero(r < level)[0]
    if len(below) == 0:
        return float("inf")
    k = int(below[0])
    if k == 0:
        return float(c[0])
    return float(c[k - 1] + (r[k - 1] - level) / (r[k - 1] - r[k]) * (c[k] - c[k - 1]))


# ---------------------------------------------------------------------------- (c) mirroring
def mirror_mesh(vertices, faces, axis: int = 2, plane_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Reflect a mesh across the plane ``x[axis] = plane_mm`` and flip its face winding.

    The default is the sagittal plane of the articulated-ssm / bundled model frame
    (``z = 0``, +z right, origin midway between the ASIS). A reflection reverses
    orientation, so the faces are re-wound (columns 1 and 2 swapped) to keep the normals
    outward: the signed volume keeps its sign and value.

    Returns ``(vertices (V, 3), faces (F, 3))``.
    """
    v = np.array(vertices, dtype=np.float64, copy=True)
    check_shape("vertices", v, (None, 3))
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2, got {axis}")
    v[:, axis] = 2.0 * plane_mm - v[:, axis]
    f = np.asarray(faces, dtype=np.int64)[:, [0, 2, 1]]
    return v, f


def pelvis_mirror_permutation(model: ShapeModel) -> np.ndarray:
    """Vertex permutation that swaps the two hemipelves of the bundled pelvis model.

    The bundled pelvis is ``Pel_L`` (first half of the vertices) + ``Pel_R`` (second half),
    mirror meshes with the same local numbering and mirrored faces (checked here: the
    faces of one half, re-wound and renumbered, are exactly those of the other), so
    ``mirror(x)[perm]`` with the model's faces is a pelvis in the model's correspondence.
    Raises :class:`InputError` for a model without that structure.
    """
    n = model.n_vertices_
    faces = model.faces_
    if faces is None or n % 2:
        raise InputError("the model has no faces or an odd vertex count: not two mirrored halves")
    h = n // 2
    first = faces[(faces < h).all(axis=1)]
    second = faces[(faces >= h).all(axis=1)]
    if len(first) + len(second) != len(faces) or len(first) != len(second):
        raise InputError("the model's faces do not split into two equal halves")

    def canon(f):
        r = np.argmin(f, axis=1)
        rolled = np.stack([np.roll(t, -k) for t, k in zip(f, r)])
        return set(map(tuple, rolled.tolist()))

    if canon(first) != canon(second[:, [0, 2, 1]] - h):
        raise InputError("the two halves of the model are not mirror meshes with the same numbering")
    return np.concatenate([np.arange(h, n), np.arange(h)])


def mirror_in_correspondence(vertices, permutation: np.ndarray, axis: int = 2, plane_mm: float = 0.0) -> np.ndarray:
    """Mirror ``vertices: (V, 3)`` across the sagittal plane and renumber by ``permutation``
    (e.g. :func:`pelvis_mirror_permutation`) so vertex ``i`` keeps its anatomical meaning;
    the model's faces stay valid and outward. Returns ``(V, 3)``."""
    v, _ = mirror_mesh(vertices, np.zeros((0, 3), np.int64), axis, plane_mm)
    return v[np.asarray(permutation)]


# ---------------------------------------------------------------------------- (a) LLP26
def _musculoskeletal_dir() -> Path:
    try:
        import musculoskeletal
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise InputError("musculoskeletal-models is not installed (pip install musculoskeletal-models==0.2.4)") from exc
    return Path(list(musculoskeletal.__path__)[0]) / "models"


@lru_cache(maxsize=1)
def llp26_pelvis_elements() -> tuple[tuple[str, ...], np.ndarray]:
    """The LLP26 pelvis element mesh: ``(types (E,), node ids (E, 16))`` (E = 260; ``-1`` pads
    the 10-node triangles).

    Read from ``atlas_meshes/pelvis_combined_cubic_flat.mesh`` (GIAS2 format): element
    points joined in ``connectivity`` share a global node; global numbers are handed out
    over the element points in (element, point) order, as GIAS2's ``mapper.do_mapping``
    does, and the ensemble's ``custom_map`` (identity in this file) gives the node row.
    Node order inside an element: ``quad44`` row-major ``i + 4 j`` (``xi1 = i / 3``,
    ``xi2 = j / 3``); ``tri10`` rows ``j = 0..3`` of ``i = 0..3-j`` (``(xi1, xi2) = (i, j) / 3``).
    """
    folder = _musculoskeletal_dir() / "atlas_meshes"
    path = folder / "pelvis_combined_cubic_flat.mesh"
    try:
        mesh = json.loads(path.read_text())
        ens = json.loads((folder / "pelvis_combined_cubic_flat.ens").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the LLP26 pelvis element mesh ({exc})", path) from exc
    conn = {}
    for key, value in mesh["connectivity"].items():
        e, p = map(int, key.split("_"))
        conn[(e, p)] = [tuple(map(int, s.split("_"))) for s in value.split()]
    if any(e < 0 for e, _ in conn):
        raise InputError("hanging nodes are not supported", path)
    glob: dict = {}
    n = 0
    for key in sorted(conn):
        if key in glob:
            continue
        glob[key] = n
        for other in conn[key]:
            glob[other] = n
        n += 1
    custom = {int(k): int(v) for k, v in ens.get("custom_map", {}).items()} or {i: i for i in range(n)}
    n_elem = int(mesh["element_counter"])
    types = tuple(mesh["elements"][str(e)].split()[1] for e in range(n_elem))
    ids = np.full((n_elem, 16), -1, np.int64)
    for e, t in enumerate(types):
        k = {"quad44": 16, "tri10": 10}.get(t)
        if k is None:
            raise InputError(f"element {e}: unsupported type {t!r}", path)
        ids[e, :k] = [custom[glob[(e, p)]] for p in range(k)]
    if n != int(mesh["number_of_points"]):
        raise InputError(f"{n} nodes mapped, the file says {mesh['number_of_points']}", path)
    return types, ids


def llp26_pelvis_nodes(subjects=None) -> np.ndarray:
    """LLP26 pelvis nodes ``(S, 1946, 3)`` mm (published frame: +x left, +y posterior,
    +z superior) of ``subjects`` (default all 26, in the order of the published scores),
    rebuilt exactly from all 26 modes (:func:`shape_models.bundled.load_llp26`)."""
    from shape_models.bundled import load_llp26

    model = load_llp26("pelvis")
    scores = model.training_scores_
    ids = np.arange(len(scores)) if subjects is None else np.asarray(subjects, np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= len(scores)):
        raise InputError(f"LLP26 subject ids must lie in [0, {len(scores)}), got {ids.tolist()}")
    return model.inverse_transform(scores[ids])


def _lagrange3(t: np.ndarray) -> np.ndarray:
    """Cubic Lagrange basis on nodes 0, 1/3, 2/3, 1: ``(N, 4)``."""
    t = np.asarray(t, np.float64)[:, None]
    nodes = np.array([0.0, 1.0, 2.0, 3.0]) / 3.0
    out = np.ones((len(t), 4))
    for a in range(4):
        for b in range(4):
            if a != b:
                out[:, a] *= (t[:, 0] - nodes[b]) / (nodes[a] - nodes[b])
    return out


def _tri10_basis(x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """Cubic Lagrange triangle basis ``(N, 10)`` in GIAS2's node order (see llp26_pelvis_elements)."""
    t0, t1, t2 = 1.0 - x0 - x1, x0, x1
    corner = lambda t: 0.5 * t * (3 * t - 1) * (3 * t - 2)  # noqa: E731
    edge = lambda ta, tb: 4.5 * ta * tb * (3 * ta - 1)  # noqa: E731  node at ta = 2/3, tb = 1/3
    return np.stack([corner(t0), edge(t0, t1), edge(t1, t0), corner(t1), edge(t0, t2), 27 * t0 * t1 * t2,
                     edge(t1, t2), edge(t2, t0), edge(t2, t1), corner(t2)], axis=1)


def _element_patch(etype: str, n: int):
    """Sample points (parametric basis ``(P, k)``) and triangles ``(T, 3)`` of one element at ``n``
    subdivisions per side."""
    if etype == "quad44":
        t = np.arange(n + 1) / n
        jj, ii = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")  # point index j * (n+1) + i
        a, b = _lagrange3(t[ii.ravel()]), _lagrange3(t[jj.ravel()])
        phi = (b[:, :, None] * a[:, None, :]).reshape(len(a), 16)  # node i + 4 j
        idx = lambda i, j: j * (n + 1) + i  # noqa: E731
        tris = []
        for j in range(n):
            for i in range(n):
                tris += [[idx(i, j), idx(i + 1, j), idx(i + 1, j + 1)], [idx(i, j), idx(i + 1, j + 1), idx(i, j + 1)]]
        return phi, np.array(tris)
    ij = [(i, j) for j in range(n + 1) for i in range(n + 1 - j)]
    pos = {p: k for k, p in enumerate(ij)}
    x = np.array(ij, np.float64) / n
    tris = []
    for j in range(n):
        for i in range(n - j):
            tris.append([pos[(i, j)], pos[(i + 1, j)], pos[(i, j + 1)]])
            if i + j + 1 < n:
                tris.append([pos[(i + 1, j)], pos[(i + 1, j + 1)], pos[(i, j + 1)]])
    return _tri10_basis(x[:, 0], x[:, 1]), np.array(tris)


def llp26_pelvis_surface(nodes, parts=("right_hip", "left_hip"), subdivisions: int = 6
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Closed triangle surface of LLP26 pelvis parts from one subject's ``nodes: (1946, 3)``.

    Every element is evaluated on a regular grid of ``subdivisions`` steps per side
    (Lagrange elements pass through their nodes; ``subdivisions = 3`` puts the vertices
    exactly on the nodes), points shared by neighbouring elements are merged, and the
    faces are wound consistently and outward (positive signed volume per closed part).

    Args:
        nodes: ``(1946, 3)`` mm, :func:`llp26_pelvis_nodes` of one subject.
        parts: keys of :data:`LLP26_PELVIS_PARTS`.
        subdivisions: grid steps per element side (6: about 2-6 mm edges on the hip bones).

    Returns:
        ``(vertices (V, 3), faces (F, 3))``.
    """
    from scipy.spatial import cKDTree

    nodes = np.asarray(nodes, np.float64)
    check_shape("nodes", nodes, (1946, 3))
    unknown = [p for p in parts if p not in LLP26_PELVIS_PARTS]
    if unknown or not parts:
        raise InputError(f"unknown LLP26 pelvis part(s) {unknown}; choose from {list(LLP26_PELVIS_PARTS)}")
    if int(subdivisions) < 1:
        raise InputError(f"subdivisions must be >= 1, got {subdivisions}")
    types, ids = llp26_pelvis_elements()
    patches = {t: _element_patch(t, int(subdivisions)) for t in set(types)}
    pts, tris, off = [], [], 0
    for part in parts:
        a, b = LLP26_PELVIS_PARTS[part]["elements"]
        for e in range(a, b):
            phi, tri = patches[types[e]]
            k = phi.shape[1]
            pts.append(phi @ nodes[ids[e, :k]])
            tris.append(tri + off)
            off += len(phi)
    p = np.concatenate(pts)
    f = np.concatenate(tris)
    # merge the points that neighbouring elements share (identical up to rounding)
    tol = 1e-6 * max(1.0, float(np.abs(p).max()))
    pairs = cKDTree(p).query_pairs(tol, output_type="ndarray")
    parent = np.arange(len(p))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([root(i) for i in range(len(p))])
    uniq, inverse = np.unique(roots, return_inverse=True)
    v = p[uniq]
    f = inverse[f]
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
    return v, orient_outward(v, f)


def orient_outward(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Faces ``(F, 3)`` re-wound consistently within each edge-connected component (breadth-first
    over shared edges) and flipped per component to a positive signed volume (outward normals
    for closed components)."""
    from collections import deque

    f = np.array(faces, np.int64, copy=True)
    edge_faces: dict = {}
    for k, (a, b, c) in enumerate(f):
        for u, w in ((a, b), (b, c), (c, a)):
            edge_faces.setdefault((min(u, w), max(u, w)), []).append(k)
    seen = np.zeros(len(f), bool)
    for start in range(len(f)):
        if seen[start]:
            continue
        comp = [start]
        seen[start] = True
        queue = deque([start])
        while queue:
            k = queue.popleft()
            a, b, c = f[k]
            for u, w in ((a, b), (b, c), (c, a)):
                for m in edge_faces[(min(u, w), max(u, w))]:
                    if seen[m]:
                        continue
                    # a consistent neighbour runs the shared edge the other way (w -> u)
                    x, y, z = f[m]
                    if (x, y) == (u, w) or (y, z) == (u, w) or (z, x) == (u, w):
                        f[m] = f[m][[0, 2, 1]]
                    seen[m] = True
                    comp.append(m)
                    queue.append(m)
        if signed_volume(vertices, f[comp]) < 0:
            f[comp] = f[comp][:, [0, 2, 1]]
    return f


def register_llp26(model: ShapeModel, subjects=None, parts=("right_hip", "left_hip"), subdivisions: int = 6,
                   config=None) -> list:
    """Each LLP26 subject's hip bones in ``model``'s correspondence.

    The model's mean mesh (the template) is registered onto the subject's surface
    (:func:`llp26_pelvis_surface`) by :func:`shape_models.correspond.register_template`
    (similarity, affine, then a smooth Gaussian-node field; vertices finally projected
    onto the surface): a non-rigid registration, not a refit inside the model's span.

    Returns a list of :class:`shape_models.correspond.CorrespondenceResult` (``vertices`` in
    the LLP26 frame, ``assd_mm`` the registration residual); about 40 s per subject on
    one loaded core.
    """
    from shape_models.correspond import RegistrationConfig, register_template

    config = config or RegistrationConfig()
    model._check_fitted()
    if model.faces_ is None:
        raise InputError("register_llp26 needs a model with faces (its mean mesh is the template)")
    ids = list(range(LLP26_N_SUBJECTS)) if subjects is None else [int(s) for s in subjects]
    nodes = llp26_pelvis_nodes(ids)
    out = []
    for i, x in zip(ids, nodes):
        v, f = llp26_pelvis_surface(x, parts, subdivisions)
        out.append(register_template(model.mean_, model.faces_, v, f, config, source=f"LLP26 subject {i}"))
    return out


# ---------------------------------------------------------------------------- splits
def population_split(name: str) -> dict:
    """Fixed subject-level split of a population.

    * ``"llp26"``: the 26 LLP26 subjects (row of the published scores). None is train
      (no model is built or trained on them); ``LLP26_N_VAL`` = 6 are **val** (the only
      LLP26 subjects used to set anything: the deformation amplitude and length scale
      of :class:`OutOfSpanPopulation`), the other 20 are **test** (out-of-span test set,
      never used to set anything).
    * ``"articulated-ssm"``: the bundled models' subject split
      (:func:`shape_models.bundled.subject_split` of the 324 left-side subjects).
    * ``"out-of-span"``: the seed ranges of :class:`OutOfSpanPopulation` per split
      (``[first, end)``); with ``base="subjects"`` a split's draws deform that split's
      articulated-ssm subjects only.
    """
    if name == "llp26":
        perm = np.random.default_rng(LLP26_SPLIT_SEED).permutation(LLP26_N_SUBJECTS)
        return {"train": [], "val": sorted(perm[:LLP26_N_VAL].tolist()), "test": sorted(perm[LLP26_N_VAL:].tolist()),
                "seed": LLP26_SPLIT_SEED,
                "subject_index": "row of projectedWeights in musculoskeletal-models 0.2.4 LLP26_rigid.pc"}
    if name == "articulated-ssm":
        from shape_models.bundled import subject_split

        return subject_split(324)
    if name == "out-of-span":
        return {s: [o, o + SEED_RANGE] for s, o in SEED_OFFSETS.items()}
    raise InputError(f"unknown population {name!r}; one of 'llp26', 'articulated-ssm', 'out-of-span'")


__all__ = ["SEED_OFFSETS", "SEED_RANGE", "LLP26_PELVIS_PARTS", "smooth_deformation", "PopulationInstance",
           "OutOfSpanPopulation", "SpanResidual", "span_residual", "vertex_normals", "signed_volume",
           "residual_correlogram", "correlation_length", "mirror_mesh", "pelvis_mirror_permutation",
           "mirror_in_correspondence", "llp26_pelvis_elements", "llp26_pelvis_nodes", "llp26_pelvis_surface",
           "orient_outward", "register_llp26", "population_split"]
