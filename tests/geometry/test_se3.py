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


# ---------------------------------------------------------------- rotation maps
def _rotvecs(n: int = 300, seed: int = 0) -> torch.Tensor:
    """Rotation vectors over the whole range: uniform angles in [0, pi), angles
    near 0 (1e-12 .. 1e-2, and around the series switch 1e-6) and near pi."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.randn(4 * n + 6, 3, generator=g, dtype=torch.float64)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    u = torch.rand(4 * n, generator=g, dtype=torch.float64)
    angle = torch.cat([u[:n] * np.pi, 10 ** (-12 + 10 * u[n:2 * n]), np.pi - 10 ** (-12 + 10 * u[2 * n:3 * n]),
                       1e-6 * (1 + (u[3 * n:] - 0.5) * 1e-3),
                       torch.tensor([0.0, 1e-300, 1e-6, np.pi, np.pi - 1e-15, np.pi / 2], dtype=torch.float64)])
    return axis * angle[:, None]


def test_rotvec_to_rotmat_matches_scipy_and_is_a_rotation():
    rv = _rotvecs()
    R = se3.rotvec_to_rotmat(rv)
    ref = torch.as_tensor(Rotation.from_rotvec(rv.numpy()).as_matrix())
    torch.testing.assert_close(R, ref, atol=1e-14, rtol=0)
    eye = torch.eye(3, dtype=torch.float64).expand_as(R)
    torch.testing.assert_close(R @ R.transpose(-1, -2), eye, atol=1e-14, rtol=0)


def test_small_angle_branch_is_second_order():
    """Below the switch (1e-6 rad) the matrix keeps the (1 - cos) term: the
    off-diagonal ``y z / 2`` (-6e-14 here) that a first-order formula drops."""
    rv = torch.tensor([[1e-7, 0.0, 0.0], [0.0, 3e-7, -4e-7]], dtype=torch.float64)
    R = se3.rotvec_to_rotmat(rv)
    ref = torch.as_tensor(Rotation.from_rotvec(rv.numpy()).as_matrix())
    off = ~torch.eye(3, dtype=torch.bool)
    assert float((R - ref)[:, off].abs().max()) < 1e-19  # third-order term, theta^3 / 6 = 2e-20
    assert float((R - ref).abs().max()) <= 2.3e-16  # the diagonal, to 1 ulp of 1.0
    assert float(R[1, 1, 2]) == pytest.approx(0.5 * 3e-7 * -4e-7, rel=1e-12)  # -x + y z / 2, x = 0


def test_rotvec_round_trip_near_zero_and_pi():
    rv = _rotvecs(seed=1)
    back = se3.rotmat_to_rotvec(se3.rotvec_to_rotmat(rv))
    angle = rv.norm(dim=-1)
    # the angle itself is recovered to 1e-15 everywhere; at pi - eps the vector is
    # defined only up to sign at exactly pi, hence the comparison of matrices there
    assert float((back.norm(dim=-1) - angle).abs().max()) < 1e-12
    away = angle < np.pi - 1e-6
    torch.testing.assert_close(back[away], rv[away], atol=1e-12, rtol=0)
    torch.testing.assert_close(se3.rotvec_to_rotmat(back), se3.rotvec_to_rotmat(rv), atol=1e-12, rtol=0)
    assert float(back.norm(dim=-1).max()) <= np.pi


def test_derivative_of_rotvec_to_rotmat_at_zero_is_the_hat_map():
    J = torch.autograd.functional.jacobian(se3.rotvec_to_rotmat, torch.zeros(3, dtype=torch.float64))
    hat = torch.zeros(3, 3, 3, dtype=torch.float64)  # d R / d r_k = [e_k]x
    hat[2, 1, 0], hat[1, 2, 0] = 1, -1
    hat[0, 2, 1], hat[2, 0, 1] = 1, -1
    hat[1, 0, 2], hat[0, 1, 2] = 1, -1
    torch.testing.assert_close(J, hat, atol=0, rtol=0)
    for rv in ([1e-3, -2e-3, 5e-4], [0.4, -1.0, 2.0], [1e-8, 2e-8, 0.0]):
        r = torch.tensor(rv, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(se3.rotvec_to_rotmat, (r,))


def test_quaternions_match_scipy():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(500, 4, generator=g, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    R = se3.unitquat_to_rotmat(q)
    torch.testing.assert_close(R, torch.as_tensor(Rotation.from_quat(q.numpy()).as_matrix()), atol=1e-14, rtol=0)
    q_back = se3.rotmat_to_unitquat(R)
    torch.testing.assert_close(q_back * torch.sign(q_back[:, 3:] * q[:, 3:]), q, atol=1e-14, rtol=0)


@pytest.mark.parametrize("convention", ["xyz", "XYZ", "zyx", "ZXZ", "yxy", "x", "ZY"])
def test_euler_conventions_match_scipy(convention):
    g = torch.Generator().manual_seed(4)
    angles = torch.rand(50, len(convention), generator=g, dtype=torch.float64) * 360 - 180
    R = se3.euler_to_rotmat(convention, angles, degrees=True)
    ref = Rotation.from_euler(convention, angles.numpy(), degrees=True).as_matrix()
    torch.testing.assert_close(R, torch.as_tensor(ref), atol=1e-14, rtol=0)


def test_euler_refuses_a_mixed_convention():
    from xrecon.errors import InputError

    with pytest.raises(InputError, match="lower-case"):
        se3.euler_to_rotmat("xYz", torch.zeros(3))


def test_special_procrustes_is_the_nearest_rotation():
    g = torch.Generator().manual_seed(5)
    R = se3.random_rotation(200, g)
    noisy = R + 0.05 * torch.randn(200, 3, 3, generator=g, dtype=torch.float64)
    P = se3.special_procrustes(noisy)
    torch.testing.assert_close(torch.linalg.det(P), torch.ones(200, dtype=torch.float64), atol=1e-12, rtol=0)
    # no random rotation near P is closer to the noisy matrix (first-order optimality)
    for k in range(3):
        step = torch.zeros(200, 3, dtype=torch.float64)
        step[:, k] = 1e-4
        for sgn in (1, -1):
            other = se3.rotvec_to_rotmat(sgn * step) @ P
            assert bool(((other - noisy).norm(dim=(-2, -1)) >= (P - noisy).norm(dim=(-2, -1)) - 1e-15).all())
    # a reflection is turned into a rotation (flip of the least significant direction)
    M = torch.diag(torch.tensor([3.0, 2.0, -1.0], dtype=torch.float64))
    torch.testing.assert_close(se3.special_procrustes(M), torch.eye(3, dtype=torch.float64), atol=1e-15, rtol=0)


def test_special_gramschmidt_keeps_the_first_column_direction():
    g = torch.Generator().manual_seed(6)
    M = torch.randn(100, 3, 2, generator=g, dtype=torch.float64)
    R = se3.special_gramschmidt(M)
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(100, 3, 3),
                               atol=1e-14, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(100, dtype=torch.float64), atol=1e-14, rtol=0)
    torch.testing.assert_close(R[..., 0], M[..., 0] / M[..., 0].norm(dim=-1, keepdim=True), atol=1e-15, rtol=0)
    assert bool(((R[..., 1] * M[..., 1]).sum(-1) > 0).all())  # second column on the side of the input's


# ------------------------------------------- agreement with roma (the former implementation)
def test_rotation_maps_equal_roma():
    """xrecon's maps replaced roma's; where roma is installed, they agree to 1e-12
    in float64 on random inputs, near 0 and near pi (in practice to a few ulp)."""
    roma = pytest.importorskip("roma")
    rv = _rotvecs(seed=7)
    R = roma.rotvec_to_rotmat(rv)
    torch.testing.assert_close(se3.rotvec_to_rotmat(rv), R, atol=1e-12, rtol=0)
    torch.testing.assert_close(se3.rotmat_to_rotvec(R), roma.rotmat_to_rotvec(R), atol=1e-12, rtol=0)
    torch.testing.assert_close(se3.rotmat_to_unitquat(R), roma.rotmat_to_unitquat(R), atol=1e-12, rtol=0)
    torch.testing.assert_close(se3.rotvec_to_unitquat(rv), roma.rotvec_to_unitquat(rv), atol=1e-12, rtol=0)
    g = torch.Generator().manual_seed(8)
    q = torch.randn(500, 4, generator=g, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(se3.unitquat_to_rotmat(q), roma.unitquat_to_rotmat(q), atol=1e-12, rtol=0)
    torch.testing.assert_close(se3.unitquat_to_rotvec(q), roma.unitquat_to_rotvec(q), atol=1e-12, rtol=0)
    angles = torch.rand(200, 3, generator=g, dtype=torch.float64) * 360 - 180
    for convention in ("xyz", "XYZ", "zxz"):
        torch.testing.assert_close(se3.euler_to_rotmat(convention, angles, degrees=True),
                                   roma.euler_to_rotmat(convention, angles, degrees=True), atol=1e-12, rtol=0)
    M = se3.random_rotation(200, g) + 0.1 * torch.randn(200, 3, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(se3.special_procrustes(M), roma.special_procrustes(M), atol=1e-12, rtol=0)
    cols = torch.randn(200, 3, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(se3.special_gramschmidt(cols, epsilon=1e-6),
                               roma.special_gramschmidt(cols, epsilon=1e-6), atol=1e-12, rtol=0)
    # float32 stays float32 and close
    R32 = se3.rotvec_to_rotmat(rv.float())
    assert R32.dtype == torch.float32
    torch.testing.assert_close(R32, roma.rotvec_to_rotmat(rv.float()), atol=1e-6, rtol=0)


def test_gradients_equal_roma():
    roma = pytest.importorskip("roma")
    for rv in ([0.0, 0.0, 0.0], [1e-3, -2e-3, 5e-4], [0.4, -1.0, 2.0]):
        r = torch.tensor(rv, dtype=torch.float64)
        torch.testing.assert_close(torch.autograd.functional.jacobian(se3.rotvec_to_rotmat, r),
                                   torch.autograd.functional.jacobian(roma.rotvec_to_rotmat, r), atol=1e-12, rtol=0)
