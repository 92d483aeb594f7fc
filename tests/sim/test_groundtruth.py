"""One simulated view: DRR and ray-cast ground truth agree with each other."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.measure import marching_cubes

from xrecon.anatomy.bone import BoneModel
from xrecon.errors import InputError
from xrecon.geometry import Camera
from xrecon.sim.groundtruth import SimConfig, Simulator, project_landmarks, simulate_views
from xrecon.sim.poses import carm_pose

from .conftest import ball_phantom

CENTRE = np.array([5.0, -8.0, 50.0])
RADIUS = 10.0


@pytest.fixture(scope="module")
def scene():
    ct, labels = ball_phantom(centre_world=CENTRE, radius_mm=RADIUS, shape=(56, 56, 56))
    # the bone surface of the label map (voxels padded so the surface closes)
    verts, faces, _, _ = marching_cubes(np.pad(labels.data.astype(np.float32), 1), 0.5)
    if np.linalg.det(labels.voxel_to_world[:3, :3]) < 0:  # a mirrored affine flips the winding
        faces = faces[:, ::-1]
    landmarks = np.array([CENTRE, CENTRE + [0.0, 0.0, 5.0], CENTRE + [0.0, 0.0, 200.0]])
    bone = BoneModel(labels.voxel_to_world_points(verts - 1), faces, landmarks, ["centre", "inside", "far_above"])
    w2c = carm_pose(torch.from_numpy(CENTRE), torch.tensor([0.0, 30.0, -40.0]), torch.tensor([0.0, 10.0, -5.0]), 0.0, torch.tensor([300.0, 320.0, 280.0]))
    cam = Camera.from_detector(600.0, 1.0, 48, 40, w2c, principal_offset_mm=(2.0, -3.0))
    return ct, labels, bone, cam


def test_views_hold_consistent_ground_truth(scene):
    ct, labels, bone, cam = scene
    config = SimConfig(spacing_mm=None, renderer="siddon", bone_only_drr=True, n_surface_samples=64)
    views = simulate_views(ct, bone, cam, config, labels=labels, structures=[1], seed=0)
    B, H, W = 3, 48, 40
    assert views.image.shape == (B, H, W) and views.entry_world.shape == (B, H, W, 3)
    # the bone-only DRR and the ray-cast mask cover the same pixels (up to the
    # voxel corners that the label's surface cuts off: 1 mm voxels seen at 0.5 mm)
    drr_mask = views.image > 0
    iou = (drr_mask & views.mask).sum() / (drr_mask | views.mask).sum()
    assert iou > 0.93
    # entry before exit, both on the sphere, depth consistent with the pose
    m = views.mask
    assert (views.exit_depth_mm[m] > views.entry_depth_mm[m]).all()
    assert np.abs(np.linalg.norm(views.entry_world[m] - CENTRE, axis=-1) - RADIUS).max() < 1.0  # voxelised ball
    pc = np.einsum("bij,bhwj->bhwi", cam.world_to_cam[:, :3, :3].numpy(), views.entry_world) + cam.world_to_cam[:, None, None, :3, 3].numpy()
    assert np.abs(pc[..., 2] - views.entry_depth_mm)[m].max() < 1e-3
    # surface samples project onto their pixels
    uv, _ = cam.project(torch.from_numpy(views.surface_world.astype(np.float64)))
    assert views.surface_valid.all()
    assert np.abs(uv.numpy() - views.surface_uv).max() < 1e-3
    # landmarks: the centre and the inner point lie on the bone in every view; the far one is off the image
    assert views.landmark_names == ["centre", "inside", "far_above"]
    assert views.landmark_in_image[:, :2].all() and views.landmark_on_bone[:, :2].all()
    assert not views.landmark_in_image[:, 2].any() and not views.landmark_on_bone[:, 2].any()
    # inside points lie between the entry and the exit depth along their own ray
    hits = Simulator(ct, bone, cam, config, labels=labels, structures=[1]).raycaster.cast(cam, torch.from_numpy(views.landmark_uv[:, :2]))
    assert (hits.entry_depth_mm <= views.landmark_depth_mm[:, :2]).all()
    assert (views.landmark_depth_mm[:, :2] <= hits.exit_depth_mm).all()
    assert views.camera is not None and torch.equal(views.camera.world_to_cam, cam.world_to_cam)


def test_per_view_generators_make_views_independent_of_their_batch(scene):
    ct, _, bone, cam = scene
    sim = Simulator(ct, bone, cam, SimConfig(spacing_mm=2.0, n_samples=64, n_surface_samples=16))
    both = sim.simulate(cam.world_to_cam[:2], [np.random.default_rng(1), np.random.default_rng(2)])
    alone = sim.simulate(cam.world_to_cam[1:2], [np.random.default_rng(2)])
    assert np.array_equal(both.surface_uv[1], alone.surface_uv[0])
    assert np.allclose(both.image[1], alone.image[0], atol=1e-5 * both.image.max())
    with pytest.raises(InputError):
        sim.simulate(cam.world_to_cam[:2], [np.random.default_rng(1)])


def test_project_landmarks_visibility():
    cam = Camera.from_detector(1000.0, 1.0, 10, 20, carm_pose(torch.zeros(3), 0.0, 0.0, 0.0, 500.0))
    behind = [0.0, 600.0, 0.0]  # behind the source (source at y = +500)
    edge = [-4.85, 0.0, 0.0]  # u = 9.5 + 2 * 4.85 = 19.2: in the last pixel column
    outside = [-5.05, 0.0, 0.0]  # u = 19.6: beyond the detector's edge (19.5)
    uv, depth, vis = project_landmarks(cam, np.array([[0.0, 0.0, 0.0], behind, edge, outside]))
    assert vis[0].tolist() == [True, False, True, False]
    assert depth[0, 0] == pytest.approx(500.0)
    assert project_landmarks(cam, np.zeros((0, 3)))[0].shape == (1, 0, 2)
