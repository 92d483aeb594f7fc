"""The shape space the reconstruction lives in: a statistical shape model seen
as meshes, and the canonical (mean-shape) coordinates the network predicts.

Frames
------
* **model frame**: the shape model's own frame (for the bundled pelvis the
  articulated-ssm anatomical frame: origin midway between the ASIS, +x anterior,
  +y superior, +z right, mm). Instances ``mean + sum_k b_k sd_k mode_k`` live here.
* **canonical coordinates**: a point on the *mean* mesh, given in the model
  frame. A canonical point names an anatomical location: the same triangle
  and barycentric weights on any instance give "the same" point on that
  instance (:meth:`ShapeSpace.transfer`).
* **patient world** (RAS+ mm): :attr:`ShapeSpace.model_to_ras` rotates the model
  frame into the patient frame (phantoms, simulated C-arm poses).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from xrecon.errors import InputError, ShapeError
from xrecon.geometry.mesh import raycasting_scene

#: articulated-ssm pelvis frame (+x anterior, +y superior, +z right) -> RAS+
#: (+x right, +y anterior, +z superior): a proper rotation (det +1).
ISB_TO_RAS = np.array([[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class SurfaceLocation:
    """Points on a mesh as triangle ids and barycentric weights.

    Attributes:
        triangle: ``(N,)`` int triangle index.
        barycentric: ``(N, 3)`` weights of the triangle's three vertices (sum 1).
        distance_mm: ``(N,)`` distance from the query point to the mesh (0 for exact hits).
    """

    triangle: np.ndarray
    barycentric: np.ndarray
    distance_mm: np.ndarray


def barycentric_from_uv(primitive_uvs: np.ndarray) -> np.ndarray:
    """open3d's ``primitive_uvs (N, 2)`` (weights of vertices 1 and 2) -> ``(N, 3)`` weights."""
    uv = np.asarray(primitive_uvs, dtype=np.float64)
    return np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=1)


def points_at(vertices: np.ndarray, faces: np.ndarray, where: SurfaceLocation) -> np.ndarray:
    """The points ``(N, 3)`` at ``where`` on the mesh ``(vertices (V, 3), faces (F, 3))``
    (any mesh with the same triangulation: mean shape or an instance)."""
    tri = np.asarray(vertices)[np.asarray(faces)[where.triangle]]  # (N, 3, 3)
    return np.einsum("nk,nkd->nd", where.barycentric, tri)


@dataclass
class ShapeSpace:
    """A shape model with faces, ready for the reconstruction.

    Attributes:
        mean_vertices: ``(V, 3)`` mean shape, model frame, mm.
        faces: ``(F, 3)`` triangles shared by every instance.
        modes_mm: ``(K, V, 3)`` displacement of every vertex per +1 SD of each mode.
        landmarks: ``{name: vertex id}``.
        model_to_ras: ``(4, 4)`` rotation of the model frame into the patient's RAS+ frame.
        name: model name (provenance).
    """

    mean_vertices: np.ndarray
    faces: np.ndarray
    modes_mm: np.ndarray
    landmarks: dict
    model_to_ras: np.ndarray
    name: str = "shape model"

    def __post_init__(self):
        self.mean_vertices = np.asarray(self.mean_vertices, np.float64)
        self.faces = np.asarray(self.faces, np.int64)
        self.modes_mm = np.asarray(self.modes_mm, np.float64)
        if self.modes_mm.shape[1:] != self.mean_vertices.shape:
            raise ShapeError("modes_mm", f"(K, {len(self.mean_vertices)}, 3)", self.modes_mm.shape)

    @classmethod
    def from_shape_model(cls, model, model_to_ras: np.ndarray | None = None) -> "ShapeSpace":
        """From a fitted :class:`shape_models.model.ShapeModel` that has faces."""
        if getattr(model, "faces_", None) is None:
            raise InputError("the shape model has no faces; the reconstruction needs a mesh model")
        lm = dict(zip(getattr(model, "landmark_names_", []), np.asarray(getattr(model, "landmark_vertex_ids_", []))))
        return cls(model.mean_, model.faces_, model.modes_, {k: int(v) for k, v in lm.items()},
                   ISB_TO_RAS.copy() if model_to_ras is None else np.asarray(model_to_ras, np.float64),
                   str(model.metadata_.get("name", "shape model")))

    @classmethod
    def bundled(cls, name: str = "pelvis") -> "ShapeSpace":
        """The ready model shipped with ``shape_models`` (frame: articulated-ssm ISB)."""
        from shape_models.bundled import load_model

        return cls.from_shape_model(load_model(name), ISB_TO_RAS.copy())

    @cached_property
    def fingerprint(self) -> str:
        """Short hash of the mean, modes and faces: a network trained on one shape
        model must not be used with another that happens to share its name."""
        import hashlib

        h = hashlib.sha1()
        for a in (self.mean_vertices.astype(np.float32), self.modes_mm.astype(np.float32), self.faces.astype(np.int32)):
            h.update(np.ascontiguousarray(np.round(a, 3)).tobytes())
        return h.hexdigest()[:16]

    @property
    def n_modes(self) -> int:
        return self.modes_mm.shape[0]

    @cached_property
    def centre_mm(self) -> np.ndarray:
        """Centroid of the mean shape's vertices ``(3,)`` (normalisation of canonical coordinates)."""
        return self.mean_vertices.mean(axis=0)

    def instance(self, shape_sd: np.ndarray) -> np.ndarray:
        """Vertices ``(V, 3)`` (or ``(B, V, 3)`` for ``(B, K')``) of coefficients in SD units.
        Fewer than K coefficients leave the remaining modes at 0."""
        b = np.asarray(shape_sd, np.float64)
        single = b.ndim == 1
        b = np.atleast_2d(b)
        k = b.shape[1]
        if k > self.n_modes:
            raise ShapeError("shape_sd", f"(..., <= {self.n_modes})", b.shape)
        out = self.mean_vertices[None] + np.einsum("bk,kvd->bvd", b, self.modes_mm[:k])
        return out[0] if single else out

    @cached_property
    def _mean_scene(self):
        return raycasting_scene(self.mean_vertices, self.faces)

    def locate_on_mean(self, points_canonical: np.ndarray) -> SurfaceLocation:
        """Closest points on the mean mesh to ``points_canonical: (N, 3)`` (model frame, mm)."""
        import open3d as o3d

        p = np.asarray(points_canonical, np.float32).reshape(-1, 3)
        ans = self._mean_scene.compute_closest_points(o3d.core.Tensor(p))
        tri = ans["primitive_ids"].numpy().astype(np.int64)
        bary = barycentric_from_uv(ans["primitive_uvs"].numpy())
        dist = np.linalg.norm(ans["points"].numpy().astype(np.float64) - p, axis=1)
        return SurfaceLocation(tri, bary, dist)

    def transfer(self, points_canonical: np.ndarray, instance_vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map canonical points ``(N, 3)`` to the same anatomical points on an instance
        ``(V, 3)``: returns the instance points ``(N, 3)`` (model frame) and each
        query's distance to the mean surface ``(N,)`` (mm, how far off-surface the
        prediction was)."""
        where = self.locate_on_mean(points_canonical)
        return points_at(instance_vertices, self.faces, where), where.distance_mm

    def canonical_of(self, where: SurfaceLocation) -> np.ndarray:
        """Canonical coordinates ``(N, 3)`` of surface locations of *any* instance."""
        return points_at(self.mean_vertices, self.faces, where)

    def vertex_subset(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` vertex ids spread over the surface (farthest-point sampling on the
        mean shape, seeded), for fixed-size point clouds and losses."""
        v = self.mean_vertices
        n = min(n, len(v))
        rng = np.random.default_rng(seed)
        chosen = [int(rng.integers(len(v)))]
        d = np.linalg.norm(v - v[chosen[0]], axis=1)
        for _ in range(n - 1):
            i = int(np.argmax(d))
            chosen.append(i)
            d = np.minimum(d, np.linalg.norm(v - v[i], axis=1))
        return np.asarray(chosen, np.int64)
