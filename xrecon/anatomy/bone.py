"""Bone surface models in the world frame (RAS+ mm).

:class:`BoneModel` is the one bone type passed between the simulator, the
solvers and the methods: a closed triangle mesh plus named landmarks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xrecon.errors import InputError


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
