import numpy as np
import pytest

from xrecon.errors import InputError, ShapeError
from .solve_scenes import apply, bone_like_points, planted_transform
from xrecon.solve.align3d import AlignConfig, align_surfaces, umeyama


def _transform_error(est, gt, pts):
    return float(np.linalg.norm(apply(est, pts) - apply(gt, pts), axis=1).max())


# ----------------------------------------------------------------------------- umeyama
def test_umeyama_recovers_weighted_rigid_transform_ignoring_zero_weight_outliers():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3)) * 30
    T = planted_transform(1)
    y = apply(T, x)
    y[:10] += rng.normal(size=(10, 3)) * 100
    w = np.r_[np.zeros(10), np.ones(40)]
    res = umeyama(x, y, w)
    assert res.success and res.scale == 1.0
    assert np.allclose(res.src_to_dst, T, atol=1e-9) and res.rmse_mm < 1e-9
    assert not np.allclose(umeyama(x, y).src_to_dst, T, atol=1e-3)  # the weights matter


def test_umeyama_with_scale():
    x = np.random.default_rng(1).normal(size=(30, 3)) * 20
    T = planted_transform(2, scale=1.7)
    res = umeyama(x, apply(T, x), with_scale=True)
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
    src = bone_like_points(3000, seed)
    dst = bone_like_points(3000, seed + 100)
    normal = np.random.default_rng(seed).normal(size=3)
    keep = dst @ normal < np.quantile(dst @ normal, 0.7)  # 30 % of the surface missing
    T = planted_transform(seed, lps_flip=lps_flip)
    res = align_surfaces(src, apply(T, dst[keep]))
    assert res.success, res.reason
    assert _transform_error(res.src_to_dst, T, src) < 1.0
    assert 0.5 < res.fitness <= 1.0


def test_align_surfaces_with_scale_and_pca_only():
    src = bone_like_points(3000, 5)
    T = planted_transform(5, scale=0.8)
    res = align_surfaces(src, apply(T, bone_like_points(3000, 6)), with_scale=True, global_init=("pca",))
    assert res.success and abs(res.scale - 0.8) < 0.01
    assert _transform_error(res.src_to_dst, T, src) < 1.5


@pytest.mark.parametrize("case", ["few_points", "flat", "nan"])
def test_align_surfaces_degenerate_inputs_fail_with_reason(case):
    src = bone_like_points(500, 7)
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


def test_scale_bounds_reject_out_of_range_scales():
    src = bone_like_points(2000, 8)
    T = planted_transform(8, scale=1.6)
    dst = apply(T, bone_like_points(2000, 9))
    res = align_surfaces(src, dst, with_scale=True, init_scale=1.0, scale_bounds=(0.8, 1.25), global_init=("pca",))
    # the true scale is out of range: either no answer, or one that honours the bounds
    assert (not res.success and "scale" in res.reason) or 0.8 <= res.scale <= 1.25
    ok = align_surfaces(src, dst, with_scale=True, init_scale=1.5, scale_bounds=(1.2, 2.0), global_init=("pca",))
    assert ok.success and abs(ok.scale - 1.6) < 0.02
