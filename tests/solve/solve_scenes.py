"""Small synthetic scenes with analytic answers, shared by the solver tests."""
import numpy as np
import torch
import trimesh

from xrecon.geometry import frames, se3


def planted_transform(seed=0, scale=1.0, lps_flip=False):
    """A random ``(4, 4)`` rigid (or similarity) transform: any rotation, translation up to 500 mm,
    optionally composed with the LPS/RAS half-turn."""
    g = torch.Generator().manual_seed(seed)
    T = np.eye(4)
    T[:3, :3] = scale * se3.random_rotation(1, g)[0].numpy()
    T[:3, 3] = np.random.default_rng(seed).uniform(-500, 500, 3)
    if lps_flip:
        T = T @ frames.LPS_TO_RAS.numpy()
    return T


def apply(T, x):
    return x @ T[:3, :3].T + T[:3, 3]


def bone_like_mesh():
    """An asymmetric 'bone' about 120 mm long: a long box, a knob and a bent arm."""
    parts = [
        trimesh.creation.box(extents=(30, 40, 120)),
        trimesh.creation.icosphere(2, 22).apply_translation((10, 5, 70)),
        trimesh.creation.cylinder(8, 60).apply_transform(
            trimesh.transformations.rotation_matrix(np.pi / 2, (0, 1, 0))).apply_translation((40, 0, -40)),
    ]
    return trimesh.util.concatenate(parts)


def bone_like_points(n, seed):
    pts, _ = trimesh.sample.sample_surface(bone_like_mesh(), n, seed=seed)
    return np.asarray(pts)
