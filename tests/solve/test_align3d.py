import numpy as np
import pytest
import torch
import trimesh

from xrecon.errors import InputError, ShapeError
from xrecon.geometry import frames, se3
from xrecon.solve.align3d import AlignConfig, align_surfaces, umeyama


def _planted(seed=0, scale=1.0, lps_flip=False):
    g = torch.Generator().manual_seed(seed)
    R = se3.random_rotation(1, g)[0].numpy()
    T = np.eye(4)
    T[:3, :3] = scale * R
    T[:3, 3] = np.random.default_rng(seed).uniform(-500, 500, 3)
    if lps_flip:
        T = T @ frames.LPS_TO_RAS.numpy()
    return T


def _apply(T, x):
    return x @ T[:3, :3].T + T[:3, 3]


def _bone_like_points(n, seed):
    """Surface samples of an asymmetric 'bone': a long box, a knob and a bent arm (~120 mm)."""
    parts = [
        trimesh.creation.box(extents=(30, 40, 120)),
        trimesh.creation.icosphere(2, 22).apply_translation((10, 5, 70)),
        trimesh.creation.cylinder(8, 60).apply_transform(
            trimesh.transformations.rotation_matrix(np.pi / 2, (0, 1, 0))).apply_translation((40, 0, -40)),
    ]
    mesh = trimesh.util.concatenate(parts)
    pts, _ = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return np.asarray(pts)


def _transform_error(est, gt, pts):
    return float(np.linalg.norm(_apply(est, pts) - _apply(gt, pts), axis=1).max())


# ----------------------------------------------------------------------------- umeyama
def test_umeyama_recovers_weighted_rigid_transform_ignoring_zero_weight_outliers():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3)) * 30
    T = _planted(1)
    y = _apply(T, x)
    y[:10] += rng.normal(size=(10, 3)) * 100
    w = np.r_[np.zeros(10), np.ones(40)]
    res = umeyama(x, y, w)
    assert res.success and res.scale == 1.0
    assert np.allclose(res.src_to_dst, T, atol=1e-9) and res.rmse_mm < 1e-9
    assert not np.allclose(umeyama(x, y).src_to_dst, T, atol=1e-3)  # the weights matter


def test_umeyama_with_scale():
    x = np.random.default_rng(1).normal(size=(30, 3)) * 20
    T = _planted(2, scale=1.7)
    res = umeyama(x, _apply(T, x), with_scale=True)
    assert res.success and abs(res.scale - 1.7) < 1e-9 and np.allclose(res.src_to_dst, T, atol=1e-8)


def test_umeyama_never_returns_a_reflection():
    x = np.random.default_rng(2).normal(size=(30, 3)) * 20
    mirrored = x * np.array([-1.0, 1.0, 1.0])
    res = umeyama(x, mirrored)
    assert res.success and np.linalg.det(res.src_to_dst[:3, :3]) > 0.999
    assert res.rmse_mm > 1.0  # the best proper rotation cannot explain a mirror image


@pytest.mark.parametrize("case", ["two_points", "collinear", "all_nan", "zero_weights"])
def test_umeyama_degenerate_inputs_fail_with_reason(case):
    x = np.random.default_rng(3).normal(size=(20, 3))
    w = None
    if case == "two_points":
        x = x[:2]
    elif case == "collinear":
        x = np.linspace(0, 1, 20)[:, None] * np.array([[1.0, 2.0, 3.0]])
    elif case == "all_nan":
        x[:] = np.nan
    elif case == "zero_weights":
        w = np.zeros(20)
    res = umeyama(x, x + 1.0, w)
    assert not res.success and res.reason and np.isnan(res.src_to_dst).all()


def test_umeyama_shape_errors():
    with pytest.raises(ShapeError):
        umeyama(np.zeros((5, 3)), np.zeros((4, 3)))
    with pytest.raises(ShapeError):
        umeyama(np.zeros((5, 2)), np.zeros((5, 2)))


# ----------------------------------------------------------------------------- surfaces
@pytest.mark.parametrize("seed,lps_flip", [(0, False), (1, True), (2, True)])
def test_align_surfaces_any_pose_lps_flip_and_missing_part(seed, lps_flip):
    src = _bone_like_points(3000, seed)
    dst = _bone_like_points(3000, seed + 100)
    normal = np.random.default_rng(seed).normal(size=3)
    keep = dst @ normal < np.quantile(dst @ normal, 0.7)  # 30 % of the surface missing
    T = _planted(seed, lps_flip=lps_flip)
    res = align_surfaces(src, _apply(T, dst[keep]))
    assert res.success, res.reason
    assert _transform_error(res.src_to_dst, T, src) < 1.0
    assert 0.5 < res.fitness <= 1.0


def test_align_surfaces_with_scale_and_pca_only():
    src = _bone_like_points(3000, 5)
    T = _planted(5, scale=0.8)
    res = align_surfaces(src, _apply(T, _bone_like_points(3000, 6)), with_scale=True, global_init=("pca",))
    assert res.success and abs(res.scale - 0.8) < 0.01
    assert _transform_error(res.src_to_dst, T, src) < 1.5


@pytest.mark.parametrize("case", ["few_points", "flat", "nan"])
def test_align_surfaces_degenerate_inputs_fail_with_reason(case):
    src = _bone_like_points(500, 7)
    dst = src.copy()
    if case == "few_points":
        dst = dst[:5]
    elif case == "flat":
        dst[:, 2] = 0.0
    elif case == "nan":
        dst[:] = np.nan
    res = align_surfaces(src, dst)
    assert not res.success and res.reason and np.isnan(res.src_to_dst).all()


def test_align_surfaces_rejects_unknown_init():
    with pytest.raises(InputError):
        AlignConfig(global_init=("magic",))
