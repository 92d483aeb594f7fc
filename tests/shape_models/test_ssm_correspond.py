"""Template registration: re-meshed, moved shapes come back in correspondence."""
import numpy as np
import pytest
import trimesh

from shape_models.correspond import RegistrationConfig, build_model_from_meshes, check_mesh, register_template
from shape_models.procrustes import align_points, apply_transform
from shape_models.synthetic import random_rigid, remesh
from xrecon.errors import InputError

FAST = RegistrationConfig(n_control_points=120, n_target_samples=4000, iters_per_level=3, bootstrap_modes=0)


def _bumpy(stretch, bump):
    """A closed, asymmetric surface: an icosphere stretched, with one bump (planted shape change)."""
    s = trimesh.creation.icosphere(subdivisions=3, radius=30.0)
    v = s.vertices * np.array([stretch, 1.0, 0.7])
    d = v - np.array([0.0, 30.0, 0.0])
    v = v + bump * np.exp(-(d**2).sum(1) / (2 * 12.0**2))[:, None] * s.vertex_normals
    y = v[:, 1].copy()
    v[:, 0] += 0.004 * y**2  # break the mirror and 180-degree symmetries of the ellipsoid
    v[:, 2] += 0.0002 * y**3
    return v, s.faces


def test_remeshed_moved_shape_is_recovered_in_correspondence():
    tv, tf = _bumpy(1.2, 0.0)
    truth, _ = _bumpy(1.35, 6.0)
    gv, gf = remesh(truth, tf, 1200, seed=1)
    T = random_rigid(np.random.default_rng(2), 200.0)
    res = register_template(tv, tf, apply_transform(T, gv), gf, FAST)
    assert res.success, res.reason
    assert res.assd_mm < 0.3
    # vertex i lands near the true position of vertex i (sliding on the surface allowed)
    err = np.linalg.norm(res.vertices - apply_transform(T, truth), axis=1)
    assert np.median(err) < 2.5


def test_model_from_meshes_recovers_the_planted_mode():
    rng = np.random.default_rng(0)
    stretches = 1.2 + 0.15 * rng.standard_normal(6)
    meshes, truths = [], []
    for i, st in enumerate(stretches):
        v, f = _bumpy(st, 0.0)
        truths.append(v)
        gv, gf = remesh(v, f, int(rng.integers(900, 1500)), seed=i)
        meshes.append((apply_transform(random_rigid(rng, 100.0), gv), gf))
    template = _bumpy(1.2, 0.0)
    model, results = build_model_from_meshes(meshes, template, n_components=2, procrustes="rigid", config=FAST,
                                             progress=False)
    assert all(r.assd_mm < 0.5 for r in results)
    # planted mode: stretch along x of the template frame
    reference = type(model)(n_components=2, procrustes="rigid").fit(np.stack(truths))
    R = align_points(model.mean_, reference.mean_, "rigid")[:3, :3]
    mode = (model.components_[0].reshape(-1, 3) @ R.T).ravel()
    assert abs(mode @ reference.components_[0]) > 0.95
    assert model.explained_variance_ratio_[0] > 0.8


def test_bad_meshes_are_refused():
    with pytest.raises(InputError, match="no faces"):
        check_mesh(np.zeros((10, 3)), None)
    v, f = _bumpy(1.0, 0.0)
    bad = v.copy()
    bad[3, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        check_mesh(bad, f)
    with pytest.raises(InputError, match="at least 2"):
        build_model_from_meshes([(v, f)])
    from shape_models.correspond import deform_to_target

    with pytest.raises(InputError, match="regulariser"):
        deform_to_target(v, v, f, v, (10.0,), RegistrationConfig(regulariser="tps"))


def test_affine_stage_recovers_a_planted_affine_map():
    from shape_models.correspond import affine_to_target
    from shape_models.synthetic import sample_surface_normals

    tv, tf = _bumpy(1.2, 4.0)
    A = np.array([[1.15, 0.08, 0.0], [0.0, 0.9, 0.05], [0.04, 0.0, 1.05]])
    truth = tv @ A.T + np.array([3.0, -2.0, 1.0])
    gv, gf = remesh(truth, tf, 1500, seed=3)
    pts, _ = sample_surface_normals(gv, gf, 4000, seed=0)
    out, affine = affine_to_target(tv, gv, gf, pts, n_iter=20)
    assert np.allclose(out, tv @ affine[:3, :3].T + affine[:3, 3])
    # vertex i moves toward the true image of vertex i (not only onto the surface); the
    # near-ellipsoid leaves some affine ambiguity, hence a relative bound
    before = np.median(np.linalg.norm(tv - truth, axis=1))
    assert np.median(np.linalg.norm(out - truth, axis=1)) < 0.3 * before


def test_affine_laplacian_annihilates_affine_fields_only():
    from shape_models.correspond import _affine_laplacian

    nodes = np.random.default_rng(0).uniform(-50, 50, (200, 3))
    L = _affine_laplacian(nodes, 10)
    affine = nodes @ np.array([[0.1, 0.2, 0.0], [0.0, -0.1, 0.3], [0.2, 0.0, 0.1]]).T + np.array([1.0, 2.0, 3.0])
    bent = 0.01 * nodes**2
    assert np.abs(L @ affine).max() < 0.05 * np.abs(affine).std()
    assert np.abs(L @ bent).mean() > 5 * np.abs(L @ affine).mean()
