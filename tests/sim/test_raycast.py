"""Ray casting against analytic spheres: entry / exit points and depths, mask,
surface samples, and their pixels."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from xrecon.anatomy.bone import BoneModel
from xrecon.errors import InputError
from xrecon.geometry import Camera
from xrecon.sim.poses import carm_pose
from xrecon.sim.raycast import BoneRaycaster

CENTRE = np.array([10.0, 20.0, 30.0])
RADIUS = 30.0
TESSELLATION_MM = 0.05  # icosphere(5) of radius 30 mm deviates from the sphere by < 0.02 mm


def _sphere(centre=CENTRE, radius=RADIUS) -> trimesh.Trimesh:
    m = trimesh.creation.icosphere(5, radius=radius)
    m.apply_translation(centre)
    return m


def _camera(height=40, width=56, offset=(3.0, -2.0)) -> Camera:
    w2c = carm_pose(torch.from_numpy(CENTRE + [4.0, -3.0, 6.0]), torch.tensor([20.0, -35.0]), torch.tensor([10.0, 0.0]), torch.tensor([5.0, -20.0]), torch.tensor([500.0, 600.0]))
    return Camera.from_detector(1000.0, (3.0, 2.5), height, width, w2c, principal_offset_mm=offset)


def _analytic_depths(camera: Camera, centre, radius):
    """Camera depths of the two ray-sphere intersections for every pixel (NaN if missed)."""
    origin, d = camera.rays_world(camera.pixel_grid())
    oc = origin.numpy() - centre
    d = d.numpy()
    b = (oc * d).sum(-1)
    disc = b**2 - ((oc * oc).sum(-1) - radius**2)
    sq = np.sqrt(np.where(disc >= 0, disc, np.nan))
    z_per_mm = 1.0 / camera.rays_camera(camera.pixel_grid()).norm(dim=-1).numpy()
    shape = (len(camera), camera.height, camera.width)
    miss_margin = (np.sqrt(np.maximum((oc * oc).sum(-1) - b**2, 0)) - radius).reshape(shape)
    return ((-b - sq) * z_per_mm).reshape(shape), ((-b + sq) * z_per_mm).reshape(shape), miss_margin


@pytest.fixture(scope="module")
def sphere_hits():
    cam = _camera()
    rc = BoneRaycaster(BoneModel(_sphere().vertices, _sphere().faces))
    return cam, rc, rc.cast_image(cam)


def test_entry_and_exit_depths_match_the_sphere(sphere_hits):
    cam, _, hits = sphere_hits
    entry, exit_, margin = _analytic_depths(cam, CENTRE, RADIUS)
    clear = np.abs(margin) > 0.5  # pixels whose ray is not grazing the silhouette
    assert (hits.hit[clear] == (margin[clear] < 0)).all()
    inside = clear & (margin < 0)
    assert inside.sum() > 100 and (~hits.hit).sum() > 100
    # a slanted ray through a tessellated sphere: depth error about tessellation / cos
    assert np.nanmax(np.abs(hits.entry_depth_mm - entry)[inside]) < 1.0
    assert np.nanmedian(np.abs(hits.entry_depth_mm - entry)[inside]) < TESSELLATION_MM
    assert np.nanmedian(np.abs(hits.exit_depth_mm - exit_)[inside]) < TESSELLATION_MM
    assert (hits.exit_depth_mm[hits.hit] > hits.entry_depth_mm[hits.hit]).all()
    assert np.isnan(hits.entry_world[~hits.hit]).all() and np.isnan(hits.exit_depth_mm[~hits.hit]).all()


def test_entry_points_lie_on_the_surface_and_project_to_their_pixel(sphere_hits):
    cam, _, hits = sphere_hits
    for pts in (hits.entry_world, hits.exit_world):
        dist = np.linalg.norm(pts[hits.hit] - CENTRE, axis=-1)
        assert np.abs(dist - RADIUS).max() < TESSELLATION_MM
    B, H, W = hits.hit.shape
    uv, depth = cam.project(torch.from_numpy(np.nan_to_num(hits.entry_world.reshape(B, -1, 3))))
    grid = cam.pixel_grid().numpy()
    err = np.abs(uv.numpy() - grid[None]).max(-1).reshape(B, H, W)
    assert err[hits.hit].max() < 0.01
    assert np.abs(depth.numpy().reshape(B, H, W) - hits.entry_depth_mm)[hits.hit].max() < 1e-6
    # the scene coordinate formula X = R^T (d K^-1 x - t) gives the entry point back
    X = cam.unproject(torch.from_numpy(grid)[None].expand(B, -1, -1), torch.from_numpy(np.nan_to_num(hits.entry_depth_mm.reshape(B, -1))))
    assert np.abs(X.numpy().reshape(B, H, W, 3) - hits.entry_world)[hits.hit].max() < 1e-6


def test_exit_is_the_last_surface_of_several_bones():
    far_centre = CENTRE + np.array([0.0, -90.0, 0.0])  # behind the first sphere seen from the anterior source
    both = trimesh.util.concatenate([_sphere(), _sphere(far_centre, 20.0)])
    cam = Camera.from_detector(1000.0, 2.0, 16, 16, carm_pose(torch.from_numpy(CENTRE), 0.0, 0.0, 0.0, 500.0))
    hits = BoneRaycaster(BoneModel(both.vertices, both.faces)).cast(cam, torch.tensor([[7.5, 7.5]]))
    # the principal ray runs along -y through both centres
    assert hits.entry_world[0, 0, 1] == pytest.approx(CENTRE[1] + RADIUS, abs=0.1)
    assert hits.exit_world[0, 0, 1] == pytest.approx(far_centre[1] - 20.0, abs=0.1)


def test_surface_samples_are_visible_surface_points_at_their_pixels(sphere_hits):
    cam, rc, hits = sphere_hits
    samples = rc.surface_samples(cam, hits.hit, 300, np.random.default_rng(0))
    assert samples.valid.all()
    pts = samples.points_world
    assert np.abs(np.linalg.norm(pts - CENTRE, axis=-1) - RADIUS).max() < TESSELLATION_MM
    uv, _ = cam.project(torch.from_numpy(pts))
    assert np.abs(uv.numpy() - samples.uv).max() < 1e-6
    # entry surface faces the source
    normals = (pts - CENTRE) / RADIUS
    to_source = cam.source_world.numpy()[:, None, :] - pts
    assert ((normals * to_source).sum(-1) > 0).all()
    # sub-pixel positions, inside the mask's pixels
    rows, cols = np.round(samples.uv[..., 1]).astype(int), np.round(samples.uv[..., 0]).astype(int)
    assert hits.hit[np.arange(2)[:, None], rows, cols].all()
    assert np.abs(samples.uv - np.round(samples.uv)).max() > 0.1


def test_surface_samples_of_an_empty_view_are_invalid(sphere_hits):
    cam, rc, hits = sphere_hits
    mask = hits.hit.copy()
    mask[1] = False
    samples = rc.surface_samples(cam, mask, 10, np.random.default_rng(0))
    assert samples.valid[0].all() and not samples.valid[1].any()
    assert np.isnan(samples.points_world[1]).all()
    with pytest.raises(InputError):
        rc.surface_samples(cam, mask, 0, np.random.default_rng(0))
