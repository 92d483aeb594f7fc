import numpy as np
import open3d as o3d
import pytest
import trimesh

from xrecon.anatomy.bone import BoneModel
from xrecon.anatomy.phantom import PhantomConfig, ct_from_mesh, inside_mask
from xrecon.errors import InputError

CENTRE = np.array([100.0, -50.0, 30.0])
R = 20.0


@pytest.fixture(scope="module")
def sphere():
    m = trimesh.creation.icosphere(subdivisions=4, radius=R)
    return BoneModel(np.asarray(m.vertices) + CENTRE, np.asarray(m.faces), source="sphere")


@pytest.fixture(scope="module")
def sphere_phantom(sphere):
    cfg = PhantomConfig(cortical_hu=(1500, 1500), trabecular_hu=(300, 300), soft_tissue_hu=(40, 40), noise_hu=(5, 5))
    return ct_from_mesh(sphere, spacing_mm=1.0, cortical_thickness_mm=3.0, soft_tissue_mm=15.0, seed=3, config=cfg)


def _radius_of_voxels(vol):
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij"), -1).reshape(-1, 3)
    return np.linalg.norm(vol.voxel_to_world_points(ijk) - CENTRE, axis=1).reshape(vol.shape)


def test_labels_fill_the_mesh_in_its_own_frame(sphere, sphere_phantom):
    ct, labels = sphere_phantom
    assert labels.label_names == {1: "bone"}
    np.testing.assert_array_equal(ct.voxel_to_world, labels.voxel_to_world)
    mesh_volume = trimesh.Trimesh(sphere.vertices, sphere.faces).volume
    assert labels.data.sum() * 1.0 == pytest.approx(mesh_volume, rel=0.02)
    ijk = np.argwhere(labels.data == 1)
    np.testing.assert_allclose(labels.voxel_to_world_points(ijk).mean(0), CENTRE, atol=0.1)
    r = _radius_of_voxels(labels)
    assert (labels.data[r < R - 1.0] == 1).all() and (labels.data[r > R + 0.5] == 0).all()


def test_tissue_layers_have_plausible_hu(sphere_phantom):
    ct, _ = sphere_phantom
    r = _radius_of_voxels(ct)
    shell = ct.data[(r > R - 2.0) & (r < R - 1.0)]  # inside the 3 mm cortex
    core = ct.data[r < R - 6.0]
    soft = ct.data[(r > R + 3.0) & (r < R + 10.0)]
    air = ct.data[r > R + 30.0]
    assert 1400 < np.median(shell) < 1550
    assert 250 < np.median(core) < 350 and core.std() > 20  # textured trabecular bone
    assert 20 < np.median(soft) < 60
    assert -1020 < np.median(air) < -980
    assert np.isfinite(ct.data).all() and ct.data.dtype == np.float32


def test_same_seed_same_volume_other_seed_other_volume(sphere):
    a, _ = ct_from_mesh(sphere, spacing_mm=2.0, seed=7)
    b, _ = ct_from_mesh(sphere, spacing_mm=2.0, seed=7)
    c, _ = ct_from_mesh(sphere, spacing_mm=2.0, seed=8)
    np.testing.assert_array_equal(a.data, b.data)
    assert not np.array_equal(a.data, c.data)


def test_inside_mask_matches_point_occupancy_on_a_non_convex_mesh():
    torus = trimesh.creation.torus(major_radius=20.0, minor_radius=6.0, major_sections=48, minor_sections=24)
    v, f = np.asarray(torus.vertices) + [3.3, -1.7, 2.9], np.asarray(torus.faces)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(v.astype(np.float32)), o3d.core.Tensor(f.astype(np.uint32)))
    A = np.diag([1.3, 1.1, 0.9, 1.0])
    A[:3, 3] = (-32.0, -30.0, -10.0)
    shape = (52, 58, 30)
    got = inside_mask(scene, A, shape)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    pts = (ijk * np.diag(A)[:3] + A[:3, 3]).astype(np.float32)
    ref = scene.compute_occupancy(o3d.core.Tensor(pts), nsamples=5).numpy().reshape(shape) > 0.5
    assert got.sum() > 1000
    assert (got != ref).sum() == 0
    # the hole of the torus is outside
    centre_ijk = np.round((np.array([3.3, -1.7, 2.9]) - A[:3, 3]) / np.diag(A)[:3]).astype(int)
    assert not got[tuple(centre_ijk)]


def test_degenerate_inputs_raise(sphere):
    tiny = trimesh.creation.icosphere(subdivisions=1, radius=0.2)
    bone = BoneModel(np.asarray(tiny.vertices) + 0.75, np.asarray(tiny.faces), source="tiny.ply")
    with pytest.raises(InputError, match="tiny.ply: mesh encloses no voxel"):
        ct_from_mesh(bone, spacing_mm=1.5, margin_mm=3.0)
    with pytest.raises(InputError, match="sphere: spacing_mm"):
        ct_from_mesh(sphere, spacing_mm=0.0)


def test_band_distance_covers_every_voxel_near_the_surface(sphere):
    from xrecon.anatomy.phantom import _band_signed_distance
    from xrecon.geometry.mesh import raycasting_scene

    h = 1.5
    A = np.diag([h, h, h, 1.0])
    A[:3, 3] = CENTRE - 30.0 + [0.3, 0.1, 0.7]
    shape = (41, 41, 41)
    scene = raycasting_scene(sphere.vertices, sphere.faces)
    inside = inside_mask(scene, A, shape)
    d = _band_signed_distance(scene, inside, A, inner_mm=2.0 + 0.5 * h, outer_mm=0.5 * h)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    exact = (np.linalg.norm(ijk * h + A[:3, 3] - CENTRE, axis=1) - R).reshape(shape)
    need = (exact > -(2.0 + 0.5 * h) + 0.1) & (exact < 0.5 * h - 0.1)
    assert need.sum() > 1000
    assert np.isfinite(d[need]).all()
    np.testing.assert_allclose(d[need], exact[need], atol=0.1)  # icosphere vs true sphere
    # beyond the band: -inf deep inside, +inf far outside
    assert (np.isneginf(d) == (inside & ~np.isfinite(d))).all()
    assert (np.isposinf(d) == (~inside & ~np.isfinite(d))).all()
