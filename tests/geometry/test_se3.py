import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from xrecon.geometry import se3


def test_invert_and_compose_are_identity():
    g = torch.Generator().manual_seed(0)
    T = se3.make(se3.random_rotation(10, g), torch.randn(10, 3, generator=g, dtype=torch.float64) * 100)
    I = T @ se3.invert(T)
    assert torch.allclose(I, torch.eye(4, dtype=torch.float64).expand(10, 4, 4), atol=1e-12)


def test_apply_matches_matrix_product():
    T = se3.from_rotvec(torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64), torch.tensor([1.0, 2.0, 3.0]))
    X = torch.randn(7, 3, dtype=torch.float64)
    Xh = torch.cat([X, torch.ones(7, 1, dtype=torch.float64)], 1)
    assert torch.allclose(se3.apply(T, X), (Xh @ T.T)[:, :3])


@pytest.mark.parametrize("angle_deg", [1e-4, 0.01, 1.0, 90.0, 179.0])
def test_geodesic_is_precise_for_small_and_large_angles(angle_deg):
    axis = np.array([1.0, 2.0, -0.5]) / np.linalg.norm([1.0, 2.0, -0.5])
    R = torch.tensor(Rotation.from_rotvec(np.deg2rad(angle_deg) * axis).as_matrix())
    got = se3.geodesic_deg(R, torch.eye(3, dtype=torch.float64))
    assert abs(float(got) - angle_deg) < 1e-9 * max(1.0, angle_deg)


def test_euler_matches_scipy():
    angles = [10.0, -20.0, 30.0]
    T = se3.from_euler(torch.tensor(angles, dtype=torch.float64), torch.zeros(3))
    ref = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    assert np.allclose(T[:3, :3].numpy(), ref, atol=1e-12)


def test_pose_errors_of_planted_offset():
    gt = se3.from_rotvec(torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 800.0]))
    est = se3.from_rotvec(torch.tensor([0.0, np.deg2rad(3.0), 0.0]), torch.tensor([3.0, 4.0, 800.0]))
    rot, trans = se3.pose_errors(est, gt)
    assert abs(float(rot) - 3.0) < 1e-9 and abs(float(trans) - 5.0) < 1e-9


def test_random_rotations_are_proper():
    R = se3.random_rotation(100, torch.Generator().manual_seed(3))
    assert torch.allclose(torch.linalg.det(R), torch.ones(100, dtype=torch.float64), atol=1e-10)
