import numpy as np
import pytest
import torch

from xrecon.errors import InputError, ShapeError
from xrecon.geometry import Camera, se3
from xrecon.solve import pnp as pnp_module
from xrecon.solve.pnp import PnPConfig, reprojection_errors_px, solve_pnp

METHODS = ["poselib", "opencv"]


def _scene(n=300, outlier_share=0.0, noise_px=0.0, seed=0):
    """A 128 px C-arm view of a bone-sized point cloud; returns camera, pose, points and outlier mask."""
    rng = np.random.default_rng(seed)
    world_to_cam = se3.from_euler(torch.tensor([20.0, -35.0, 170.0]), torch.tensor([15.0, -10.0, 780.0]))
    cam = Camera.from_detector(1020.0, 3.0, 128, 128, world_to_cam)
    x = rng.normal(size=(n, 3)) * np.array([40.0, 60.0, 30.0]) + np.array([5.0, -20.0, 12.0])
    uv = cam.project(torch.as_tensor(x))[0][0].numpy()
    uv = uv + rng.normal(size=uv.shape) * noise_px
    out = rng.random(n) < outlier_share
    uv[out] = rng.uniform(0, 128, size=(out.sum(), 2))
    return cam, world_to_cam.numpy(), x, uv, out


@pytest.mark.parametrize("method", METHODS)
def test_recovers_planted_pose_from_a_camera_object(method):
    cam, gt, x, uv, _ = _scene()
    res = solve_pnp(x, uv, cam, method=method)
    assert res.success and res.reason == ""
    rot, trans = se3.pose_errors(torch.as_tensor(res.world_to_cam), torch.as_tensor(gt))
    assert float(rot) < 1e-4 and float(trans) < 1e-2
    assert res.inliers.all() and res.reprojection_error_px < 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_thirty_percent_outliers_and_noise(method):
    cam, gt, x, uv, out = _scene(n=400, outlier_share=0.3, noise_px=0.5, seed=1)
    res = solve_pnp(x, uv, cam.K[0], method=method, reproj_threshold_px=3.0, max_points=None)
    assert res.success
    rot, trans = se3.pose_errors(torch.as_tensor(res.world_to_cam), torch.as_tensor(gt))
    assert float(rot) < 0.5 and float(trans) < 10.0
    # inliers are the true correspondences (an outlier may land within 3 px by chance)
    assert res.inliers[~out].mean() > 0.97 and res.inliers[out].mean() < 0.1
    errs = reprojection_errors_px(res.world_to_cam, x, uv, cam.K[0].numpy())
    assert np.allclose(res.inliers, errs <= 3.0)


def test_log_sigma_filter_removes_uncertain_points_before_ransac():
    cam, gt, x, uv, out = _scene(n=200, outlier_share=0.5, seed=2)
    log_sigma = np.where(out, 1.0, -1.0)
    res = solve_pnp(x, uv, cam, log_sigma=log_sigma, log_sigma_threshold=0.0)
    assert res.success and res.n_used == int((~out).sum())
    assert not res.inliers[out].any()


def test_max_points_keeps_the_most_confident_and_the_polish_uses_all():
    cam, gt, x, uv, out = _scene(n=500, noise_px=0.5, seed=3)
    weights = np.random.default_rng(0).random(500)
    bounded = solve_pnp(x, uv, cam, weights=weights, max_points=50, final_refine_points=0)
    assert bounded.success and bounded.n_used == 50 and bounded.inliers.sum() == 50
    assert weights[bounded.inliers].min() >= np.sort(weights)[-50]
    polished = solve_pnp(x, uv, cam, weights=weights, max_points=50)
    assert polished.success and polished.n_used == 500 and polished.inliers.sum() == 500
    err = [float(se3.pose_errors(torch.as_tensor(r.world_to_cam), torch.as_tensor(gt))[1]) for r in (bounded, polished)]
    assert err[1] < err[0]  # ten times the points: a better pose


def test_same_seed_same_answer_and_seed002_preset():
    cam, gt, x, uv, _ = _scene(n=300, outlier_share=0.3, noise_px=0.5, seed=4)
    a = solve_pnp(x, uv, cam, seed=7)
    b = solve_pnp(x, uv, cam, seed=7)
    assert np.array_equal(a.world_to_cam, b.world_to_cam)
    cfg = PnPConfig.seed002()
    assert (cfg.method, cfg.opencv_flag, cfg.max_iterations, cfg.reproj_threshold_px) == ("opencv", "iterative", 1000, 10.0)
    assert PnPConfig.seed002(real=True).reproj_threshold_px == 20.0
    assert solve_pnp(x, uv, cam, config=cfg).success


@pytest.mark.parametrize("method", METHODS)
def test_nan_rows_are_dropped_not_fatal(method):
    cam, gt, x, uv, _ = _scene(n=100, seed=5)
    x[:10] = np.nan
    res = solve_pnp(x, uv, cam, method=method)
    assert res.success and not res.inliers[:10].any() and res.n_used == 90


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", ["three_points", "all_nan", "collinear_3d", "collinear_2d", "all_outliers", "one_point"])
def test_degenerate_inputs_fail_with_a_reason(method, case):
    cam, gt, x, uv, _ = _scene(n=100, seed=6)
    rng = np.random.default_rng(0)
    if case == "three_points":
        x, uv = x[:3], uv[:3]
    elif case == "all_nan":
        uv[:] = np.nan
    elif case == "collinear_3d":
        x = np.linspace(0, 1, 100)[:, None] * np.array([[10.0, 20.0, 5.0]])
    elif case == "collinear_2d":
        uv = np.stack([np.linspace(0, 127, 100), np.linspace(0, 127, 100) * 0.5 + 3], 1)
    elif case == "all_outliers":
        uv = rng.uniform(0, 128, size=uv.shape)
    elif case == "one_point":
        x[:] = x[0]
    res = solve_pnp(x, uv, cam, method=method, reproj_threshold_px=2.0)
    assert not res.success and res.reason
    assert np.isnan(res.world_to_cam).all() and np.isnan(res.reprojection_error_px)


def test_bad_shapes_and_settings_raise_typed_errors():
    cam, gt, x, uv, _ = _scene(n=20)
    with pytest.raises(ShapeError):
        solve_pnp(x, uv[:10], cam)
    with pytest.raises(ShapeError):
        solve_pnp(x[:, :2], uv, cam)
    with pytest.raises(ShapeError):
        solve_pnp(x, uv, cam, weights=np.ones(3))
    with pytest.raises(InputError):
        solve_pnp(x, uv, cam, method="magic")
    with pytest.raises(InputError):
        solve_pnp(x, uv, np.zeros((3, 3)))


def test_few_exact_landmarks_still_give_a_pose_with_the_polish():
    # a landmark detector yields a handful of points: the polish must not drop them
    cam, gt, x, uv, _ = _scene(n=5, seed=8)
    res = solve_pnp(x, uv, cam, min_inliers=4, min_inlier_ratio=0.5)
    assert res.success and res.n_inliers == 5
    rot, trans = se3.pose_errors(torch.as_tensor(res.world_to_cam), torch.as_tensor(gt))
    assert float(rot) < 1e-3 and float(trans) < 0.1


def test_float32_polish_matches_a_float64_robust_least_squares_reference():
    # the fast path (float32 IRLS Gauss-Newton on (6, N) rows) against scipy's
    # least_squares with the same Cauchy loss, in float64, on a noisy dense view
    from scipy.optimize import least_squares
    from scipy.spatial.transform import Rotation

    cam, gt, x, uv, _ = _scene(n=4000, noise_px=0.7, seed=9)
    x = x + 500.0  # far from the origin: the polish must centre before float32
    gt = gt.astype(np.float64)
    gt[:3, 3] -= gt[:3, :3] @ np.full(3, 500.0)
    K = cam.K[0].numpy()
    start = gt.copy()
    start[:3, :3] = Rotation.from_rotvec([0.01, -0.02, 0.015]).as_matrix() @ gt[:3, :3]
    start[:3, 3] += [2.0, -1.0, 8.0]
    cfg = PnPConfig(reproj_threshold_px=10.0, final_refine_iterations=8)
    T, err = pnp_module._polish(start, x, uv, K, cfg, np.random.default_rng(0))

    s2 = (10.0 / 4) ** 2  # the polish's Cauchy scale, squared

    def residuals(p):
        # one residual per point whose square is the Cauchy cost s^2 log(1 + r^2 / s^2) of its
        # 2D reprojection error r: the stationary point the reweighted Gauss-Newton converges to
        R = Rotation.from_rotvec(p[:3]).as_matrix()
        h = (x @ R.T + p[3:]) @ K.T
        r2 = ((h[:, :2] / h[:, 2:3] - uv) ** 2).sum(1)
        return np.sqrt(s2 * np.log1p(r2 / s2))

    p0 = np.concatenate([Rotation.from_matrix(start[:3, :3]).as_rotvec(), start[:3, 3]])
    ref = least_squares(residuals, p0, x_scale="jac", xtol=1e-12, ftol=1e-12, gtol=1e-12)
    R_ref = Rotation.from_rotvec(ref.x[:3]).as_matrix()
    assert np.abs(T[:3, :3] - R_ref).max() < 1e-6
    assert np.abs(T[:3, 3] - ref.x[3:]).max() < 1e-3  # mm
    assert np.allclose(err, reprojection_errors_px(T, x, uv, K), atol=0.05)  # errors before the last tiny step
    assert float(se3.pose_errors(torch.as_tensor(T), torch.as_tensor(gt))[1]) < 1.0
