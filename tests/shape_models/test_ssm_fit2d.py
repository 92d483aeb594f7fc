"""fit_contours: single view and biplanar on a held-out pelvis, known and unknown pose."""
import numpy as np
import pytest

from shape_models import bundled
from shape_models.fit2d import Fit2DConfig, contour_from_mask, fit_contours, mesh_edges
from shape_models.procrustes import align_points, apply_transform, exp_so3
from shape_models.synthetic import biplanar_cameras, render_silhouette, smooth_deformation
from xrecon.errors import InputError
from xrecon.metrics.shape import assd


@pytest.fixture(scope="module")
def scene():
    model = bundled.load_model("pelvis")
    shapes, _ = bundled.subject_shapes(model, "test")
    truth = smooth_deformation(shapes[2], rms_mm=0.5, seed=3)  # held out + off the model's span
    cams = biplanar_cameras(model.mean_.mean(axis=0), size_px=256, pixel_spacing_mm=1.6)
    masks = [render_silhouette(truth, model.faces_, cams, v) for v in range(2)]
    return model, truth, cams, masks


def test_mesh_edges_of_a_tetrahedron():
    faces = np.array([[0, 1, 2], [0, 3, 1], [1, 3, 2], [0, 2, 3]])
    edges, adj = mesh_edges(faces)
    assert len(edges) == 6 and (adj >= 0).all()
    for (a, b), (f, g) in zip(edges, adj):
        assert {a, b} <= set(faces[f]) and {a, b} <= set(faces[g]) and f != g


def test_contour_from_mask_is_subpixel_boundary():
    mask = np.zeros((40, 50), bool)
    mask[10:30, 5:45] = True
    pts = contour_from_mask(mask)
    # boundary half a pixel outside the set pixels' centres
    assert np.isclose(pts[:, 0].min(), 4.5) and np.isclose(pts[:, 0].max(), 44.5)
    assert np.isclose(pts[:, 1].min(), 9.5) and np.isclose(pts[:, 1].max(), 29.5)
    with pytest.raises(InputError, match="empty"):
        contour_from_mask(np.zeros((5, 5)))


def test_biplanar_known_pose(scene):
    model, truth, cams, masks = scene
    start = assd((model.mean_, model.faces_), (truth, model.faces_), n_samples=5000)
    res = fit_contours(model, masks, cams)
    assert res.success, res.reason
    err = assd((res.vertices, model.faces_), (truth, model.faces_), n_samples=5000)
    assert err < 1.5 and err < 0.5 * start


def test_single_view_unknown_pose(scene):
    model, truth, cams, masks = scene
    c = truth.mean(axis=0)
    init = np.eye(4)
    init[:3, :3] = exp_so3(np.radians(10.0) * np.array([0.6, 0.8, 0.0]))
    init[:3, 3] = c - init[:3, :3] @ c + np.array([12.0, -16.0, 0.0])  # 10 deg, 20 mm off
    res = fit_contours(model, masks[:1], cams[[0]], init, Fit2DConfig(estimate_pose=True))
    assert res.success, res.reason
    start_mesh = model.mean_ @ init[:3, :3].T + init[:3, 3]
    start = assd((start_mesh, model.faces_), (truth, model.faces_), n_samples=5000)
    err = assd((res.vertices, model.faces_), (truth, model.faces_), n_samples=5000)
    # one view with the depth unknown: the distance to the source is weakly observed
    # (perspective only), so the posed error is mostly a shift along the view axis;
    # the shape itself (after removing a rigid motion) must be accurate
    assert err < 0.6 * start
    aligned = apply_transform(align_points(res.vertices, truth, "rigid"), res.vertices)
    assert assd((aligned, model.faces_), (truth, model.faces_), n_samples=5000) < 1.0


def test_bad_observations_are_refused(scene):
    model, _, cams, masks = scene
    with pytest.raises(InputError, match="observations"):
        fit_contours(model, masks, cams[[0]])
    with pytest.raises(InputError, match="mask"):
        fit_contours(model, [np.zeros((3, 3, 3))], cams[[0]])
