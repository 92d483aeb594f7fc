"""Meshes, point clouds and poses on disk. Every writer is atomic (temporary
file, then rename: :mod:`xrecon.io`), and every file says which frame it is in.

- Meshes (:func:`write_mesh` / :func:`read_mesh`): PLY, STL or OBJ through
  trimesh (vertices stored as float32 in PLY / STL: about 3e-5 mm at 300 mm).
  Beside ``bone.ply`` a sidecar ``bone.ply.json`` holds the frame, the source
  and the landmarks (names and world mm), which mesh formats cannot carry.
- Point clouds (:func:`write_points` / :func:`read_points`): binary PLY, one
  ``vertex`` element with ``double x, y, z`` plus one property per attribute
  (e.g. ``u``, ``v`` image coordinates in px, ``confidence``); an ``(N, k)``
  attribute ``a`` becomes properties ``a_0 .. a_{k-1}``. The frame is a header
  comment ``comment frame: <frame>``. Any PLY reader gets the xyz; the extra
  properties are ordinary PLY.
- Poses (:func:`write_pose` / :func:`read_pose`): JSON
  ``{"from_frame": "ct (RAS+ mm)", "to_frame": "camera (OpenCV)", "matrix": 4x4, ...extra}``
  where ``x_to = matrix @ x_from`` (column vectors, see docs/conventions.md).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xrecon.anatomy.bone import BoneModel
from xrecon.errors import InputError
from xrecon.io import atomic_path, atomic_write_json, atomic_write_text

MESH_SUFFIXES = (".ply", ".stl", ".obj")
_PLY_TYPES = {
    np.dtype("<f8"): "double",
    np.dtype("<f4"): "float",
    np.dtype("<i4"): "int",
    np.dtype("<u1"): "uchar",
}


# ---------------------------------------------------------------------- meshes
def mesh_sidecar(path: str | Path) -> Path:
    """The JSON beside a mesh file holding its frame and landmarks (``bone.ply`` -> ``bone.ply.json``)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def write_mesh(path: str | Path, bone: BoneModel) -> None:
    """Write ``bone`` as PLY / STL / OBJ (by suffix) plus its sidecar JSON, atomically."""
    import trimesh

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise InputError(f"cannot write meshes as '{suffix}' (use {', '.join(MESH_SUFFIXES)})", path)
    mesh = trimesh.Trimesh(bone.vertices, bone.faces, process=False)
    data = mesh.export(file_type=suffix[1:])
    meta = {
        "frame": bone.frame,
        "units": "mm",
        "source": bone.source,
        "n_vertices": int(len(bone.vertices)),
        "n_faces": int(len(bone.faces)),
        "landmark_names": list(bone.landmark_names),
        "landmarks": bone.landmarks.tolist(),
    }
    with atomic_path(path) as tmp:
        tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
        atomic_write_text(mesh_sidecar(path), json.dumps(meta, indent=1))


def read_mesh(path: str | Path, frame: str | None = None) -> BoneModel:
    """Read a PLY / STL / OBJ mesh as a :class:`BoneModel`.

    Frame and landmarks come from the sidecar JSON when there is one; ``frame``
    overrides. STL's duplicated vertices are merged.
    """
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise InputError("no such mesh file", path)
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise InputError(f"unknown mesh format '{suffix}' (expected {', '.join(MESH_SUFFIXES)})", path)
    try:
        mesh = trimesh.load(str(path), file_type=suffix[1:], process=False, force="mesh")
    except Exception as exc:  # trimesh raises many types on corrupt files
        raise InputError(f"cannot read mesh ({type(exc).__name__}: {exc})", path) from exc
    faces = np.asarray(getattr(mesh, "faces", np.zeros((0, 3))))
    if len(faces) == 0:
        raise InputError("file holds no triangles (a point cloud or an empty mesh?)", path)
    if suffix == ".stl":
        mesh.merge_vertices()
    kw: dict = {"source": str(path)}
    side = mesh_sidecar(path)
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
            kw.update(
                landmarks=np.asarray(meta.get("landmarks", []), dtype=np.float64).reshape(-1, 3),
                landmark_names=[str(n) for n in meta.get("landmark_names", [])],
                frame=str(meta.get("frame", BoneModel.frame)),
            )
        except (OSError, ValueError, TypeError) as exc:
            raise InputError(f"cannot read the mesh's sidecar ({exc})", side) from exc
    if frame is not None:
        kw["frame"] = frame
    return BoneModel(np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64), **kw)


# ---------------------------------------------------------------------- point clouds
def write_points(
    path: str | Path,
    points: np.ndarray,
    attributes: Mapping[str, np.ndarray] | None = None,
    *,
    frame: str = "world (RAS+ mm)",
) -> None:
    """Write a point cloud as binary PLY with per-point attributes, atomically.

    Args:
        points: ``(N, 3)`` coordinates (mm) in ``frame``.
        attributes: ``{name: (N,) or (N, k)}`` arrays, e.g. ``{"uv": (N, 2)
            pixel coordinates, "confidence": (N,)}``. Floats keep their
            precision (float32 / float64), integers are stored as int32, bools
            as uchar.
        frame: written as the header comment ``frame: ...``.
    """
    path = Path(path)
    if path.suffix.lower() != ".ply":
        raise InputError("point clouds are written as .ply", path)
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InputError(f"points must be (N, 3), got {pts.shape}", path)
    columns: list[tuple[str, np.ndarray]] = [("x", pts[:, 0]), ("y", pts[:, 1]), ("z", pts[:, 2])]
    for name, values in (attributes or {}).items():
        if not str(name).isidentifier() or name in ("x", "y", "z"):
            raise InputError(f"attribute name '{name}' is not usable as a PLY property", path)
        a = np.asarray(values)
        if a.shape[:1] != (len(pts),) or a.ndim > 2:
            raise InputError(f"attribute '{name}' has shape {a.shape}; expected ({len(pts)},) or ({len(pts)}, k)", path)
        a = _ply_dtype(a, name, path)
        if a.ndim == 1:
            columns.append((name, a))
        else:
            columns.extend((f"{name}_{j}", a[:, j]) for j in range(a.shape[1]))
    table = np.empty(len(pts), dtype=[(n, c.dtype) for n, c in columns])
    for n, c in columns:
        table[n] = c
    if "\n" in frame:
        raise InputError("frame name must be one line", path)
    header = ["ply", "format binary_little_endian 1.0", f"comment frame: {frame}", f"element vertex {len(pts)}"]
    header += [f"property {_PLY_TYPES[c.dtype]} {n}" for n, c in columns]
    header.append("end_header")
    with atomic_path(path) as tmp:
        tmp.write_bytes(("\n".join(header) + "\n").encode("ascii") + table.tobytes())


def read_points(path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray], str | None]:
    """Read a PLY point cloud: ``points (N, 3)`` float64, ``{property: (N,)}`` of every
    other vertex property (``a_0, a_1`` stay separate columns), and the frame
    comment (``None`` when absent)."""
    import trimesh

    path = Path(path)
    frame = None
    try:
        with open(path, "rb") as f:
            for raw in f:
                line = raw.decode("ascii", "replace").strip()
                if line.startswith("comment frame:"):
                    frame = line.split(":", 1)[1].strip()
                if line == "end_header":
                    break
        cloud = trimesh.load(str(path), file_type="ply", process=False)
        table = cloud.metadata["_ply_raw"]["vertex"]["data"]
    except (OSError, KeyError, ValueError, TypeError, IndexError) as exc:
        raise InputError(f"cannot read point cloud ({type(exc).__name__}: {exc})", path) from exc
    names = table.dtype.names or ()
    if not {"x", "y", "z"} <= set(names):
        raise InputError("PLY vertices lack x, y, z", path)
    points = np.stack([table[c].astype(np.float64) for c in "xyz"], axis=1)
    attrs = {n: np.asarray(table[n]) for n in names if n not in ("x", "y", "z")}
    return points, attrs, frame


def _ply_dtype(a: np.ndarray, name: str, path: Path) -> np.ndarray:
    if a.dtype == bool:
        return a.astype("<u1")
    if np.issubdtype(a.dtype, np.floating):
        return a.astype("<f8" if a.dtype == np.float64 else "<f4")
    if np.issubdtype(a.dtype, np.integer):
        if a.size and (a.min() < np.iinfo(np.int32).min or a.max() > np.iinfo(np.int32).max):
            raise InputError(f"attribute '{name}' does not fit int32", path)
        return a.astype("<i4")
    raise InputError(f"attribute '{name}' has unsupported dtype {a.dtype}", path)


# ---------------------------------------------------------------------- poses
@dataclass
class PoseFile:
    """A transform read from a pose JSON: ``x_to = matrix @ x_from`` (column vectors).

    Attributes:
        matrix: ``(4, 4)`` float64.
        from_frame, to_frame: frame names, e.g. ``"ct (RAS+ mm)"`` -> ``"camera (OpenCV)"``.
        extra: every other key of the file (success flags, errors, timings, ...).
    """

    matrix: np.ndarray
    from_frame: str
    to_frame: str
    extra: dict = field(default_factory=dict)


def write_pose(path: str | Path, matrix: np.ndarray, from_frame: str, to_frame: str, *, rigid: bool = True, **extra) -> None:
    """Write ``{"from_frame", "to_frame", "matrix", **extra}`` as JSON, atomically.

    Args:
        matrix: ``(4, 4)`` transform, ``x_to = matrix @ x_from``.
        rigid: check that the 3x3 block is a rotation (set False for a
            similarity or a general affine).
        extra: more JSON-ready keys (numpy arrays / scalars are converted).
    """
    path = Path(path)
    M = _check_matrix(matrix, rigid, path)
    reserved = {"from_frame", "to_frame", "matrix"} & set(extra)
    if reserved:
        raise InputError(f"extra keys {sorted(reserved)} clash with the pose's own keys", path)
    doc = {"from_frame": str(from_frame), "to_frame": str(to_frame), "matrix": M.tolist()}
    doc.update(extra)
    atomic_write_json(path, doc)


def read_pose(
    path: str | Path, *, from_frame: str | None = None, to_frame: str | None = None, rigid: bool = True
) -> PoseFile:
    """Read a pose JSON. ``from_frame`` / ``to_frame``, when given, must match the
    file's (so a ``cam_to_ct`` is never used as a ``ct_to_cam``)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"cannot read pose ({exc.strerror or exc})", path) from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"pose is not valid JSON ({exc.msg}, line {exc.lineno})", path) from exc
    if not isinstance(doc, dict) or not {"from_frame", "to_frame", "matrix"} <= set(doc):
        raise InputError("pose JSON needs the keys from_frame, to_frame and matrix", path)
    M = _check_matrix(doc.pop("matrix"), rigid, path)
    got_from, got_to = str(doc.pop("from_frame")), str(doc.pop("to_frame"))
    for want, got, what in ((from_frame, got_from, "from_frame"), (to_frame, got_to, "to_frame")):
        if want is not None and want != got:
            raise InputError(f"pose {what} is '{got}', expected '{want}'", path)
    return PoseFile(M, got_from, got_to, doc)


def _check_matrix(matrix, rigid: bool, path: Path) -> np.ndarray:
    try:
        M = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"pose matrix is not numeric ({exc})", path) from exc
    if M.shape != (4, 4):
        raise InputError(f"pose matrix must be 4x4, got shape {M.shape}", path)
    if not np.isfinite(M).all():
        raise InputError("pose matrix holds NaN or inf", path)
    if not np.allclose(M[3], [0, 0, 0, 1], atol=1e-9):
        raise InputError(f"pose matrix's last row must be [0, 0, 0, 1], got {M[3].tolist()}", path)
    if rigid:
        R = M[:3, :3]
        err = np.abs(R.T @ R - np.eye(3)).max()
        if err > 1e-5 or np.linalg.det(R) < 0:
            raise InputError(f"pose matrix is not rigid (|R^T R - I| = {err:.2g}, det {np.linalg.det(R):.4g})", path)
    return M

