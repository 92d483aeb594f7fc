"""Shape space, ray-cast targets and the SSM-regularised fit of the reconstruction,
on the bundled pelvis model with planted poses and shapes (analytic answers)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xrecon.geometry import Camera, se3
from xrecon.methods.recon.fit import fit_pose_shape
from xrecon.methods.recon.shape import ShapeSpace, SurfaceLocation, points_at
from xrecon.methods.recon.targets import view_targets


@pytest.fixture(scope="module")
def space():
    return ShapeSpace.bundled("pelvis")


def posed_camera(space, rot_deg=(95.0, 8.0, -4.0), offset=(10.0, -15.0, 760.0), size=96):
    """A 1020 mm / 300 mm detector looking at the model's centroid from ``offset``."""
    R = se3.from_euler(list(rot_deg), [0, 0, 0]).numpy()[:3, :3]
    m2c = np.eye(4)
    m2c[:3, :3] = R
    m2c[:3, 3] = -R @ space.centre_mm + np.asarray(offset)
    return Camera.from_detector(1020.0, 300.0 / size, size, size, torch.as_tensor(m2c)), m2c


def test_transfer_maps_mean_points_to_the_same_barycentrics(space):
    rng = np.random.default_rng(0)
    tri = rng.integers(0, len(space.faces), 200)
    w = rng.dirichlet([1, 1, 1], 200)
    where = SurfaceLocation(tri, w, np.zeros(200))
    on_mean = points_at(space.mean_vertices, space.faces, where)
    b = np.zeros(space.n_modes)
    b[:3] = [1.0, -0.5, 0.8]
    inst = space.instance(b)
    moved, dist = space.transfer(on_mean, inst)
    assert dist.max() < 1e-3
    np.testing.assert_allclose(moved, points_at(inst, space.faces, where), atol=2e-3)
    # a point pushed off the surface along its normal comes back to the surface
    located = space.locate_on_mean(on_mean + 0.0)
    np.testing.assert_allclose(space.canonical_of(located), on_mean, atol=2e-3)


def test_instance_is_linear_in_the_coefficients(space):
    b = np.linspace(-1, 1, space.n_modes)
    both = space.instance(np.stack([b, -b]))
    np.testing.assert_allclose(both[0] + both[1], 2 * space.mean_vertices, atol=1e-9)
    assert space.instance(b[:2]).shape == space.mean_vertices.shape


def test_vertex_subset_spreads_over_the_surface(space):
    ids = space.vertex_subset(300, seed=0)
    assert len(np.unique(ids)) == 300
    v = space.mean_vertices[ids]
    from scipy.spatial import cKDTree

    nn = cKDTree(v).query(v, k=2)[0][:, 1]
    assert nn.min() > 3.0  # farthest-point sampling never picks neighbours


def test_view_targets_hit_the_instance_where_the_rays_say(space):
    b = np.zeros(space.n_modes)
    b[:2] = [0.8, -1.0]
    inst = space.instance(b)
    cam, m2c = posed_camera(space)
    tg = view_targets(space, inst, cam)  # world frame = model frame here
    assert 0.05 < tg.mask.mean() < 0.9
    vs, us = np.nonzero(tg.mask)
    uv = torch.as_tensor(np.stack([us, vs], 1), dtype=torch.float64)
    for k in range(2):
        d = torch.as_tensor(tg.depth_mm[k][vs, us], dtype=torch.float64)
        origin, dirs = cam.rays_world(uv)
        p_world = (origin[0] + dirs[0] * d[:, None]).numpy()
        # the hit lies on the instance and its canonical point transfers back to it
        moved, dist = space.transfer(tg.canonical[k][:, vs, us].T.astype(np.float64), inst)
        assert dist.max() < 0.05
        assert np.percentile(np.linalg.norm(moved - p_world, axis=1), 99) < 0.05
    assert (tg.depth_mm[1][tg.mask] >= tg.depth_mm[0][tg.mask] - 1e-3).all()
    assert (tg.canonical[:, :, ~tg.mask] == 0).all()


def test_pose_shape_fit_recovers_a_planted_pose_and_shape(space):
    rng = np.random.default_rng(1)
    cam, m2c = posed_camera(space, size=128)
    ids = space.vertex_subset(400, seed=1)
    A = space.mean_vertices[ids]
    B = space.modes_mm[:, ids].transpose(1, 2, 0)  # (M, 3, K)
    b_true = np.zeros(space.n_modes)
    b_true[:4] = [0.5, 1.2, -0.8, 0.6]
    uv = cam.project(A + B @ b_true)[0][0].numpy()
    # start: pose off by ~2 deg / 8 mm, shape modes 2-4 at the mean; size (mode 1) known
    delta = se3.from_euler([1.5, -1.0, 1.0], [5.0, -4.0, 4.0]).numpy()
    b0 = b_true.copy()
    b0[1:4] = 0.0
    prior = np.full(space.n_modes, 2.0)
    prior[0] = 0.01
    fit = fit_pose_shape(A, B, uv + rng.normal(0, 0.2, uv.shape), cam.K[0].numpy(), delta @ m2c, b0, prior,
                         sigma_px=0.5)
    assert fit.success
    rot, trans = se3.pose_errors(torch.as_tensor(fit.model_to_cam), torch.as_tensor(m2c))
    assert float(rot) < 0.3 and float(trans) < 2.0
    np.testing.assert_allclose(fit.shape_sd[:4], b_true[:4], atol=0.15)
    assert fit.reprojection_error_px < 0.5
