import numpy as np
import trimesh

from xrecon.metrics.shape import point_set_distance, point_to_surface, sample_surface, surface_distance


def _sphere(r):
    m = trimesh.creation.icosphere(4, r)
    return np.asarray(m.vertices), np.asarray(m.faces)


def test_concentric_spheres_distance_is_radius_gap():
    d = surface_distance(_sphere(10.0), _sphere(12.0), n_samples=5000)
    # icosphere faces sit slightly inside the radius: allow 0.05 mm
    assert abs(d.assd - 2.0) < 0.05
    assert abs(d.hd95 - 2.0) < 0.08
    assert abs(d.chamfer - 4.0) < 0.1


def test_identical_meshes_have_zero_distance():
    d = surface_distance(_sphere(10.0), _sphere(10.0), n_samples=3000)
    assert d.assd < 1e-4 and d.hausdorff < 1e-3


def test_point_to_surface_matches_naive_plane_distance():
    box = trimesh.creation.box(extents=(20, 20, 20))
    pts = np.array([[0.0, 0.0, 15.0], [0.0, 0.0, 0.0], [13.0, 0, 0]])
    d = point_to_surface(pts, box.vertices, box.faces)
    assert np.allclose(d, [5.0, 10.0, 3.0], atol=1e-4)


def test_samples_lie_on_surface_and_point_sets_agree():
    v, f = _sphere(10.0)
    p = sample_surface(v, f, 2000)
    assert point_to_surface(p, v, f).max() < 1e-4
    d = point_set_distance(p, p + np.array([0.0, 0.0, 1.0]))
    assert 0.0 < d.assd <= 1.0 + 1e-9
