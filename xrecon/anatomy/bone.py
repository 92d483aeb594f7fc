"""Bone surface models in the world frame (RAS+ mm).

:class:`BoneModel` is the one bone type passed between the simulator, the
solvers and the methods: a closed triangle mesh plus named landmarks.
:func:`bone_from_labels` and :func:`bone_from_threshold` build one from a CT's
label map or an HU threshold (marching cubes, cached on disk).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from xrecon.errors import InputError

if TYPE_CHECKING:
    from xrecon.anatomy.volume import Volume


@dataclass
class BoneModel:
    """A bone (or a set of bones) as a triangle mesh with landmarks.

    Attributes:
        vertices: ``(V, 3)`` float64, mm, in ``frame``.
        faces: ``(F, 3)`` int64, counter-clockwise seen from outside (normals point out).
        landmarks: ``(L, 3)`` float64, mm, in ``frame``.
        landmark_names: ``L`` names.
        frame: name of the frame the coordinates are in (default the CT world, RAS+ mm).
        source: provenance, for messages and manifests.
    """

    vertices: np.ndarray
    faces: np.ndarray
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    landmark_names: list[str] = field(default_factory=list)
    frame: str = "world (RAS+ mm)"
    source: str = "<memory>"

    def __post_init__(self):
        self.vertices = np.asarray(self.vertices, dtype=np.float64)
        self.faces = np.asarray(self.faces, dtype=np.int64)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float64).reshape(-1, 3)
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3 or len(self.vertices) == 0:
            raise InputError(f"mesh needs (V, 3) vertices, got {self.vertices.shape}", self.source)
        if self.faces.ndim != 2 or self.faces.shape[1] != 3 or len(self.faces) == 0:
            raise InputError(f"mesh has no faces (got faces of shape {self.faces.shape})", self.source)
        if not np.isfinite(self.vertices).all():
            raise InputError("mesh vertices hold NaN or inf", self.source)
        if self.faces.min() < 0 or self.faces.max() >= len(self.vertices):
            raise InputError("mesh faces index missing vertices", self.source)
        if len(self.landmark_names) != len(self.landmarks):
            raise InputError(f"{len(self.landmarks)} landmarks but {len(self.landmark_names)} names", self.source)

    def transformed(self, a_to_b: np.ndarray, frame: str | None = None) -> "BoneModel":
        """The same bone with every coordinate mapped by the 4x4 ``a_to_b``."""
        A = np.asarray(a_to_b, dtype=np.float64)

        def f(x):
            return x @ A[:3, :3].T + A[:3, 3]

        faces = self.faces if np.linalg.det(A[:3, :3]) > 0 else self.faces[:, ::-1].copy()
        return BoneModel(f(self.vertices), faces, f(self.landmarks), list(self.landmark_names), frame or self.frame, self.source)

    def sample_points(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``n`` points uniformly on the surface and their unit normals, ``(n, 3)`` each."""
        import trimesh

        mesh = trimesh.Trimesh(self.vertices, self.faces, process=False)
        pts, fid = trimesh.sample.sample_surface(mesh, n, seed=seed)
        return np.asarray(pts), np.asarray(mesh.face_normals[fid])


# ====================================================================== bones from CT
#: Default face budget of an extracted mesh (a thoracic skeleton stays near 100k).
DEFAULT_MAX_FACES = 120_000
_MESH_ALGO_VERSION = 2


def bone_from_labels(
    labels: "Volume",
    structures=None,
    *,
    ct: "Volume | None" = None,
    landmarks="centroids",
    smooth_sigma_mm: float = 0.5,
    max_faces: int | None = DEFAULT_MAX_FACES,
    cache: bool = True,
) -> BoneModel:
    """A surface mesh of the selected structures of a label map, in world mm.

    The union of the structures is one binary mask, lightly smoothed (Gaussian,
    ``smooth_sigma_mm``) and meshed by marching cubes at the 0.5 level (skimage).
    Vertices are mapped through the label map's affine; faces wind
    counter-clockwise seen from outside whatever the affine's handedness.
    Structures cut by the volume edge are closed by a cap at the edge. Meshes
    above ``max_faces`` are decimated (open3d quadric decimation). The mesh is
    cached on disk by a hash of the mask, affine and parameters
    (:mod:`xrecon.anatomy.cache`).

    Args:
        labels: integer label map (its ``label_names`` resolve names).
        structures: names, ids or groups (see
            :func:`xrecon.anatomy.labels.resolve_structures`); ``None`` = every
            label present.
        ct: the CT the labels belong to; only checked to lie on the same grid.
        landmarks: ``"centroids"`` (one per structure, the centroid of its
            voxels, named after the structure), ``None`` (none), or a mapping
            ``{name: (3,) world mm}`` of user points.
        smooth_sigma_mm: Gaussian sigma applied to the mask before meshing
            (0 = raw voxel staircase).
        max_faces: face budget (``None`` = keep every face).
        cache: use the on-disk cache.

    Raises:
        InputError: unknown or absent structure, empty mask, CT on another grid.
    """
    from xrecon.anatomy.ct_io import check_same_grid
    from xrecon.anatomy.labels import resolve_structures

    if ct is not None:
        check_same_grid(labels, ct)
    data = np.asarray(labels.data)
    if not np.issubdtype(data.dtype, np.integer) or (data.size and data.min() < 0):
        raise InputError(f"label map must hold non-negative integer ids, got dtype {data.dtype}", labels.source)
    counts = np.bincount(data.ravel(order="K"))
    present = np.flatnonzero(counts)
    selected = resolve_structures(structures, labels.label_names, present, labels.source)
    ids = np.fromiter(selected, dtype=np.int64)
    lut = np.zeros(len(counts), bool)
    lut[ids[ids < len(counts)]] = True
    mask = lut[data]
    if not mask.any():
        raise InputError(f"empty mask: no voxel carries the selected labels {list(selected.values())[:5]}", labels.source)
    verts, faces = mesh_from_mask(
        mask, labels.voxel_to_world, smooth_sigma_mm=smooth_sigma_mm, max_faces=max_faces, cache=cache, source=labels.source
    )
    if isinstance(landmarks, str) and landmarks == "centroids":
        lm = structure_centroids(data, ids, labels.voxel_to_world, within=mask)
        names = list(selected.values())
    else:
        lm, names = _user_landmarks(landmarks, labels.source)
    source = f"{labels.source} [{_selection_text(selected)}]"
    return BoneModel(verts, faces, lm, names, source=source)


def bone_from_threshold(
    ct: "Volume",
    hu_threshold: float = 250.0,
    *,
    min_component_voxels: int = 1000,
    max_components: int | None = None,
    fill_holes: bool = True,
    landmarks="centroids",
    smooth_sigma_mm: float = 0.5,
    max_faces: int | None = DEFAULT_MAX_FACES,
    cache: bool = True,
) -> BoneModel:
    """A surface mesh of the bone in a CT found by an HU threshold.

    Voxels ``>= hu_threshold`` are split into connected components (26-connected,
    scipy.ndimage); components smaller than ``min_component_voxels`` are dropped,
    and at most ``max_components`` of the largest are kept. With ``fill_holes``
    cavities enclosed by a component (marrow below the threshold) are filled so
    only the outer surface is meshed. Then as :func:`bone_from_labels`.

    A threshold also catches non-bone dense objects (the CT table, contrast,
    metal); pass a label map for a clean model.

    Args:
        ct: CT in HU.
        hu_threshold: HU at and above which a voxel is bone.
        landmarks: ``"centroids"`` (one per kept component, named
            ``component_1`` ... by decreasing size), ``None``, or ``{name: (3,)}``.

    Raises:
        InputError: no component survives.
    """
    from scipy import ndimage

    data = np.asarray(ct.data)
    comp, n = ndimage.label(data >= hu_threshold, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(comp.reshape(-1), minlength=n + 1)
    sizes[0] = 0
    order = np.argsort(-sizes[1:], kind="stable") + 1
    keep = [int(c) for c in order if sizes[c] >= min_component_voxels]
    if max_components is not None:
        keep = keep[: int(max_components)]
    if not keep:
        biggest = int(sizes.max()) if n else 0
        raise InputError(
            f"empty mask: no component of >= {min_component_voxels} voxels at >= {hu_threshold} HU "
            f"(largest has {biggest}); lower the threshold or min_component_voxels",
            ct.source,
        )
    # relabel kept components 1..k by decreasing size
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = np.arange(1, len(keep) + 1)
    comp = lut[comp]
    mask = comp > 0
    if fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    verts, faces = mesh_from_mask(
        mask, ct.voxel_to_world, smooth_sigma_mm=smooth_sigma_mm, max_faces=max_faces, cache=cache, source=ct.source
    )
    if isinstance(landmarks, str) and landmarks == "centroids":
        ids = np.arange(1, len(keep) + 1)
        lm = structure_centroids(comp, ids, ct.voxel_to_world, within=comp > 0)
        names = [f"component_{i}" for i in ids]
    else:
        lm, names = _user_landmarks(landmarks, ct.source)
    return BoneModel(verts, faces, lm, names, source=f"{ct.source} [>= {hu_threshold:g} HU, {len(keep)} components]")


def structure_centroids(
    labels: np.ndarray, ids: np.ndarray, voxel_to_world: np.ndarray, within: np.ndarray | None = None
) -> np.ndarray:
    """World-mm centroids ``(L, 3)`` of the voxels of each id in ``ids: (L,)``
    of the integer map ``labels: (I, J, K)`` (NaN rows for absent ids).

    ``within``: optional ``(I, J, K)`` bool mask known to hold every voxel of
    ``ids`` (it only speeds things up)."""
    ids = np.asarray(ids, dtype=np.int64)
    where = np.nonzero(within if within is not None else np.isin(labels, ids))
    lab = labels[where].astype(np.int64)
    n = int(max(ids.max(initial=0), lab.max(initial=0))) + 1
    count = np.bincount(lab, minlength=n)[ids].astype(np.float64)
    sums = np.stack([np.bincount(lab, weights=ax, minlength=n)[ids] for ax in where], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        com = sums / count[:, None]
    A = np.asarray(voxel_to_world, dtype=np.float64)
    return com @ A[:3, :3].T + A[:3, 3]


def mesh_from_mask(
    mask: np.ndarray,
    voxel_to_world: np.ndarray,
    *,
    smooth_sigma_mm: float = 0.5,
    max_faces: int | None = DEFAULT_MAX_FACES,
    cache: bool = True,
    source: str = "<mask>",
) -> tuple[np.ndarray, np.ndarray]:
    """Closed, outward-oriented surface of a binary mask.

    Args:
        mask: ``(I, J, K)`` bool.
        voxel_to_world: ``(4, 4)`` affine to world mm (any handedness).

    Returns:
        ``vertices (V, 3)`` float64 world mm and ``faces (F, 3)`` int64,
        counter-clockwise seen from outside.
    """
    from xrecon.anatomy.cache import cached_arrays, hash_inputs

    mask = np.asarray(mask, dtype=bool)
    A = np.asarray(voxel_to_world, dtype=np.float64)
    box = _bounding_box(mask)
    if box is None:
        raise InputError("empty mask: nothing to mesh", source)
    crop = np.ascontiguousarray(mask[box])
    # world affine of the crop's own voxel grid
    A_crop = A.copy()
    A_crop[:3, 3] = A[:3, :3] @ [sl.start for sl in box] + A[:3, 3]
    params = {"sigma": float(smooth_sigma_mm), "max_faces": max_faces, "algo": _MESH_ALGO_VERSION}

    def compute() -> dict[str, np.ndarray]:
        v, f = _mesh_from_mask(crop, A_crop, float(smooth_sigma_mm), max_faces, source)
        return {"vertices": v, "faces": f}

    if cache:
        key = hash_inputs(np.packbits(crop), np.array(crop.shape), A_crop, params)
        out = cached_arrays("bone_mesh", key, compute)
    else:
        out = compute()
    return np.asarray(out["vertices"], np.float64), np.asarray(out["faces"], np.int64)


def _mesh_from_mask(mask: np.ndarray, A: np.ndarray, sigma_mm: float, max_faces: int | None, source: str):
    from scipy import ndimage
    from skimage.measure import marching_cubes

    spacing = np.linalg.norm(A[:3, :3], axis=0)
    sigma_vox = sigma_mm / spacing
    pad = 2 + int(np.ceil(3 * sigma_vox.max()))
    field = np.pad(mask, pad).astype(np.float32)
    if sigma_mm > 0:
        field = ndimage.gaussian_filter(field, sigma_vox, mode="constant")
    if field.max() <= 0.5:
        raise InputError(f"mask is too thin to survive smooth_sigma_mm={sigma_mm:g}; lower it", source)
    verts, faces, _, _ = marching_cubes(field, 0.5)
    if max_faces is not None and len(faces) > 3 * max_faces:
        # Decimation time grows with the input: re-mesh on a coarser grid that
        # yields about twice the budget, then decimate to the budget.
        coarse_mm = coarser_spacing(spacing, len(faces), 2 * max_faces)
        coarse = ndimage.zoom(field, spacing / coarse_mm, order=1)
        verts, faces, _, _ = marching_cubes(coarse, 0.5)
        verts = verts * ((np.array(field.shape) - 1) / (np.array(coarse.shape) - 1))
    ijk = verts.astype(np.float64) - pad
    verts_world = ijk @ A[:3, :3].T + A[:3, 3]
    faces = faces.astype(np.int64)
    if max_faces is not None and len(faces) > max_faces:
        verts_world, faces = decimate(verts_world, faces, max_faces)
    return verts_world, orient_outward(verts_world, faces)


def coarser_spacing(spacing_mm: np.ndarray, n_faces: int, target_faces: int) -> np.ndarray:
    """Voxel spacing ``(3,)`` (each axis ``max(spacing_mm, h)``) at which marching
    cubes would give about ``target_faces`` instead of ``n_faces``.

    Faces of a surface of random orientation scale as
    ``1/(s0 s1) + 1/(s1 s2) + 1/(s0 s2)``; ``h`` is found by bisection."""
    sp = np.asarray(spacing_mm, dtype=np.float64)

    def density(s):
        return 1 / (s[0] * s[1]) + 1 / (s[1] * s[2]) + 1 / (s[0] * s[2])

    goal = density(sp) * target_faces / n_faces
    lo, hi = sp.min(), sp.max() * np.sqrt(n_faces / target_faces) + 1e-9
    for _ in range(50):
        h = 0.5 * (lo + hi)
        lo, hi = (h, hi) if density(np.maximum(sp, h)) > goal else (lo, h)
    return np.maximum(sp, hi)


def decimate(vertices: np.ndarray, faces: np.ndarray, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadric decimation (open3d) of ``vertices (V, 3)``, ``faces (F, 3)`` to at most ``max_faces``."""
    import open3d as o3d

    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(faces.astype(np.int32)))
    mesh = mesh.simplify_quadric_decimation(int(max_faces))
    mesh.remove_degenerate_triangles()
    mesh.remove_unreferenced_vertices()
    return np.asarray(mesh.vertices, np.float64), np.asarray(mesh.triangles, np.int64)


def signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Signed volume (mm^3) enclosed by a triangle mesh; > 0 when faces wind
    counter-clockwise seen from outside (normals out)."""
    tri = vertices[faces]
    return float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0)


def orient_outward(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """``faces`` with winding flipped when needed so the enclosed volume is positive.

    Marching cubes winds every face the same way relative to the field; that
    way is outward or inward depending on the affine's handedness, which this
    check absorbs."""
    return faces[:, ::-1].copy() if signed_volume(vertices, faces) < 0 else faces


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Slices of the smallest box holding every True voxel of ``mask (I, J, K)``, or None."""
    box = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if len(hit) == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _user_landmarks(landmarks, source) -> tuple[np.ndarray, list[str]]:
    if landmarks is None or (isinstance(landmarks, str) and landmarks.lower() == "none"):
        return np.zeros((0, 3)), []
    if isinstance(landmarks, str):
        raise InputError(f"landmarks must be 'centroids', None or {{name: xyz}}, got '{landmarks}'", source)
    names = [str(k) for k in landmarks]
    pts = np.asarray([np.asarray(v, dtype=np.float64).reshape(3) for v in landmarks.values()]).reshape(-1, 3)
    return pts, names


def _selection_text(selected: dict[int, str]) -> str:
    names = list(selected.values())
    return ", ".join(names) if len(names) <= 4 else f"{', '.join(names[:3])}, ... ({len(names)} structures)"
