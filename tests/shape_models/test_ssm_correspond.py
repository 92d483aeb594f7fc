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
