"""Several-view solver pieces (:mod:`xrecon.solve.multiview`) on planted geometry."""
from __future__ import annotations

import numpy as np
import pytest

from xrecon.solve.multiview import ViewPoints, refine_ct_to_world, rotation_angle_deg, triangulate_rays


def test_rays_through_one_point_meet_there():
    rng = np.random.default_rng(0)
    target = np.array([12.0, -40.0, 700.0])
    origins = rng.normal(0, 500, (4, 3))
    dirs = (target - origins) * rng.uniform(0.5, 3.0, (4, 1))  # any lengths
    np.testing.assert_allclose(triangulate_rays(origins, dirs), target, atol=1e-6)
    # a wrong ray with no weight changes nothing
    origins2 = np.vstack([origins, [0.0, 0.0, 0.0]])
    dirs2 = np.vstack([dirs, [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(triangulate_rays(origins2, dirs2, np.r_[np.ones(4), 0.0]), target, atol=1e-6)


def test_one_ray_gives_the_point_on_it_nearest_the_prior():
    p = triangulate_rays(np.zeros((1, 3)), np.array([[0.0, 0.0, 1.0]]), prior_point=np.array([5.0, 0.0, 300.0]))
    np.testing.assert_allclose(p, [0.0, 0.0, 300.0], atol=1e-3)


def test_two_views_recover_a_planted_ct_pose_from_a_wrong_start():
    """Points on a sphere-like surface seen by two cameras 60 deg apart; the CT is
    the same surface: from a start 3 deg / 15 mm off (and a 5 % wrong model scale)
    the refinement returns the planted ct_to_world and unit scale."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(1)
    d = rng.normal(size=(4000, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    ct = d * np.array([80.0, 60.0, 40.0])  # an ellipsoid (CT frame)
    normals = ct / np.array([80.0, 60.0, 40.0]) ** 2
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    ct_to_world = np.eye(4)
    ct_to_world[:3, :3] = Rotation.from_rotvec([0.3, -0.2, 0.5]).as_matrix()
    ct_to_world[:3, 3] = [5.0, -10.0, 20.0]
    K = np.array([[1000.0, 0, 64], [0, 1000.0, 64], [0, 0, 1]])
    views = []
    for ang in (0.0, 60.0):
        w2c = np.eye(4)
        w2c[:3, :3] = Rotation.from_euler("y", ang, degrees=True).as_matrix()
        w2c[:3, 3] = [0.0, 0.0, 800.0]
        pc = (ct @ ct_to_world[:3, :3].T + ct_to_world[:3, 3]) @ w2c[:3, :3].T + w2c[:3, 3]
        front = rng.choice(len(ct), 600, replace=False)
        uv = (pc[front] @ K.T)[:, :2] / pc[front, 2:3]
        views.append(ViewPoints(ct[front], uv, np.ones(len(front)), K, w2c, 1.0))  # model frame = CT frame
    start = np.eye(4)
    start[:3, :3] = Rotation.from_rotvec([0.0, 0.05, 0.0]).as_matrix() @ ct_to_world[:3, :3]
    start[:3, 3] = ct_to_world[:3, 3] + [10.0, 0.0, 11.0]
    model_to_ct0 = np.diag([1.05, 1.05, 1.05, 1.0])
    fit = refine_ct_to_world(start, model_to_ct0, views, ct, normals, rounds=4)
    assert fit.success
    assert rotation_angle_deg(fit.ct_to_world[:3, :3], ct_to_world[:3, :3]) < 0.05
    assert np.linalg.norm(fit.ct_to_world[:3, 3] - ct_to_world[:3, 3]) < 0.2
    assert fit.scale == pytest.approx(1.0, abs=2e-3)
    assert fit.reprojection_error_px.max() < 0.05
