"""The residual deformation beyond the shape model's span (xrecon.methods.recon.residual):
synthetic scenes with a known displacement field."""
import numpy as np
import pytest

from xrecon.errors import InputError, ShapeError
from xrecon.methods.recon.residual import ResidualConfig, _thin, ray_residuals, residual_deformation

K = np.array([[1000.0, 0.0, 64.0], [0.0, 1000.0, 64.0], [0.0, 0.0, 1.0]])


def _scene(seed=0):
    """An ellipsoid-shaped cloud of 'vertices' (model frame) 800 mm in front of the
    camera, rotated; correspondences on a subset of them."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(3000, 3))
    v = d / np.linalg.norm(d, axis=1, keepdims=True) * np.array([90.0, 60.0, 40.0])
    a = 0.4
    R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, [5.0, -10.0, 800.0]
    corr = rng.choice(len(v), 900, replace=False)
    return v, T, corr


def _project(T, x):
    xc = x @ T[:3, :3].T + T[:3, 3]
    h = xc @ K.T
    return h[:, :2] / h[:, 2:]


def _smooth_field(v, seed=1, amp=3.0, length=30.0):
    rng = np.random.default_rng(seed)
    om = rng.normal(size=(64, 3)) / length
    ph = rng.uniform(0, 2 * np.pi, 64)
    w = rng.normal(size=(64, 3))
    f = np.cos(v @ om.T + ph) @ w
    return f * amp / np.sqrt((f**2).sum(1).mean())


def test_no_residual_no_deformation():
    v, T, corr = _scene()
    uv = _project(T, v[corr])
    u, n = residual_deformation(v, v[corr], uv, np.full(len(corr), 2.0), T, K)
    assert n > 50
    assert np.abs(u).max() < 1e-6


def test_ray_residual_is_the_offset_to_the_ray():
    v, T, corr = _scene()
    x = v[corr[:50]]
    shift = np.array([3.0, -2.0, 0.0])  # camera frame, perpendicular to the optical axis
    uv = _project(T, x + shift @ T[:3, :3])  # the points seen 'shifted'
    y, P = ray_residuals(x, uv, T, K)
    e = np.einsum("mkd,mk->md", P, y)  # back to 3D, camera frame
    # the applied shift, seen perpendicular to each (slightly oblique) ray: its x / y
    # components agree; the small z part is what makes the offset perpendicular to the ray
    assert np.abs(e[:, :2] - shift[:2]).max() < 0.05
    xc = x @ T[:3, :3].T + T[:3, 3]
    rays = (xc + shift) / np.linalg.norm(xc + shift, axis=1, keepdims=True)
    assert np.abs((e * rays).sum(1)).max() < 1e-6
    # the basis is orthonormal and perpendicular to the ray
    assert np.allclose(np.einsum("mkd,mld->mkl", P, P), np.eye(2)[None], atol=1e-9)


def test_recovers_the_in_plane_part_of_a_smooth_deformation():
    v, T, corr = _scene()
    u_true = _smooth_field(v)
    truth = v + u_true
    uv = _project(T, truth[corr])  # the pixels see the true anatomy; the instance is v
    u, n = residual_deformation(v, v[corr], uv, np.full(len(corr), 0.5), T, K,
                                ResidualConfig(amplitude_mm=3.0, length_mm=30.0, noise_mm=0.2))
    R = T[:3, :3]
    ez = R.T @ np.array([0.0, 0.0, 1.0])  # optical axis in the model frame
    perp = lambda a: a - (a @ ez)[:, None] * ez  # noqa: E731
    before = np.linalg.norm(perp(u_true), axis=1)
    after = np.linalg.norm(perp(u_true - u), axis=1)
    assert after.mean() < 0.3 * before.mean()
    # the component along the rays is not observed: left (nearly) at the prior mean
    assert np.abs(u @ ez).mean() < 0.2 * np.abs(u_true @ ez).mean() + 0.1


def test_noise_shrinks_the_correction_and_far_vertices_keep_the_model():
    v, T, corr = _scene()
    u_true = _smooth_field(v)
    uv = _project(T, (v + u_true)[corr])
    sig = np.full(len(corr), 1.0)
    u_tight, _ = residual_deformation(v, v[corr], uv, sig, T, K, ResidualConfig(noise_mm=0.2, sigma_scale=0.0))
    u_loose, _ = residual_deformation(v, v[corr], uv, sig, T, K, ResidualConfig(noise_mm=20.0, sigma_scale=0.0))
    assert np.linalg.norm(u_loose, axis=1).mean() < 0.5 * np.linalg.norm(u_tight, axis=1).mean()
    # the correction fades with the distance from the evidence: vertices 2-3 length
    # scales (40-60 mm) outside the cloud move far less than those on it
    u_on, _ = residual_deformation(v, v[corr], uv, sig, T, K)
    outside = v[:200] / np.linalg.norm(v[:200], axis=1, keepdims=True) * (np.linalg.norm(v[:200], axis=1,
                                                                                      keepdims=True) + 50.0)
    u_out, _ = residual_deformation(outside, v[corr], uv, sig, T, K)
    assert np.linalg.norm(u_out, axis=1).mean() < 0.25 * np.linalg.norm(u_on[:200], axis=1).mean()


def test_thinning_keeps_the_most_confident_point_of_each_cell():
    pts = np.array([[0.1, 0.1, 0.1], [0.2, 0.2, 0.2], [5.1, 0.0, 0.0], [5.2, 0.1, 0.0], [10.5, 0.0, 0.0]])
    score = np.array([1.0, 3.0, 2.0, 0.5, 0.1])
    assert _thin(pts, score, 4.0, 10).tolist() == [1, 2, 4]  # one per 4 mm cube, the best of each
    assert _thin(pts, score, 4.0, 2).tolist() == [1, 2]  # then the best ones up to max_points


def test_bad_settings_and_shapes_refused():
    with pytest.raises(InputError, match="length_mm"):
        ResidualConfig(length_mm=0)
    with pytest.raises(InputError, match="not both 0"):
        ResidualConfig(noise_mm=0, sigma_scale=0)
    v, T, corr = _scene()
    with pytest.raises(ShapeError, match="uv"):
        residual_deformation(v, v[corr], np.zeros((3, 2)), np.ones(len(corr)), T, K)
