"""SCR network, loss and inference on synthetic ellipsoid scenes with exact answers."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _scr_scene import camera_at, ellipsoid_scene, surface_points  # noqa: E402

from xrecon.errors import InputError, ShapeError  # noqa: E402
from xrecon.geometry import se3  # noqa: E402
from xrecon.methods.scr.loss import absent_penalty, gaussian_nll, scr_loss  # noqa: E402
from xrecon.methods.scr.network import (  # noqa: E402
    LOG_SIGMA_MAX, LOG_SIGMA_MIN, CoordinateNormalizer, SceneCoordinateNet, SceneCoordinates)
from xrecon.imaging import prepare_image  # noqa: E402
from xrecon.methods.scr.predict import (  # noqa: E402
    SCRInferenceConfig, pose_from_correspondences, scene_correspondences)
from xrecon.methods.scr.unet import UNet  # noqa: E402

torch.set_num_threads(1)


def test_unet_shapes_and_size_check():
    net = UNet(1, 8, base_channels=4, levels=3, input_stride=1)
    assert net(torch.zeros(2, 1, 16, 24)).shape == (2, 8, 16, 24)
    with pytest.raises(ShapeError, match="divisible by 4"):
        net(torch.zeros(1, 1, 18, 16))
    half = UNet(1, 3, base_channels=4, levels=3, input_stride=2)
    assert half(torch.zeros(2, 1, 16, 24)).shape == (2, 3, 16, 24)  # dense output at input size
    assert half.encode(torch.zeros(1, 1, 16, 24))[0].shape[-2:] == (8, 12)  # half resolution inside
    with pytest.raises(ShapeError, match="divisible by 8"):
        half(torch.zeros(1, 1, 20, 16))


def test_normalizer_round_trip_and_bounds():
    pts = surface_points()
    norm = CoordinateNormalizer.from_points(pts)
    net = SceneCoordinateNet(norm, base_channels=4, levels=2)
    x = torch.tensor(pts, dtype=torch.float64)
    y = net.normalize(x)
    assert y.abs().max() <= 1.0 + 1e-6  # bounding box maps into [-1, 1]
    assert torch.allclose(net.denormalize(y), x, atol=1e-4)
    with pytest.raises(InputError):
        CoordinateNormalizer.from_points(np.zeros((3, 3)))


def test_log_sigma_is_squashed_into_its_range():
    net = SceneCoordinateNet(CoordinateNormalizer((0.0, 0.0, 0.0), 1.0), base_channels=4, levels=2)
    with torch.no_grad():
        net.unet.head.bias[3] = 1e4
        net.unet.head.bias[7] = -1e4
    with torch.no_grad():
        out = net(torch.rand(1, 1, 8, 8))
    assert float(out[:, 3].min()) <= LOG_SIGMA_MAX and float(out[:, 3].min()) > LOG_SIGMA_MAX - 1e-3
    assert float(out[:, 7].max()) >= LOG_SIGMA_MIN and float(out[:, 7].max()) < LOG_SIGMA_MIN + 1e-3


def test_gaussian_nll_is_minimal_at_sigma_equal_to_the_error():
    d = 0.3  # |X - u| in normalised units
    target = torch.zeros(1, 3, 1, 1)
    mean = torch.tensor([d, 0.0, 0.0]).reshape(1, 3, 1, 1)
    s = torch.linspace(-3, 1, 401).reshape(1, 1, -1).expand(1, 1, 401)
    nll = gaussian_nll(target.expand(1, 3, 1, 401), mean.expand(1, 3, 1, 401), s)[0, 0]
    best = s[0, 0, int(nll.argmin())]
    assert abs(float(best) - np.log(d)) < 0.02
    # beta-NLL keeps the minimiser but weights the pixel by sigma^(2 beta) (no gradient through the weight)
    nll_b = gaussian_nll(target.expand(1, 3, 1, 401), mean.expand(1, 3, 1, 401), s, beta=0.5)[0, 0]
    assert torch.allclose(nll_b, nll * torch.exp(s[0]))
    ls = torch.tensor([[[0.3]]], requires_grad=True)
    m = mean.clone().requires_grad_(True)
    gaussian_nll(target, m, ls, beta=0.5).sum().backward()
    assert torch.allclose(m.grad[0, 0], torch.tensor([[2 * d * np.exp(-2 * 0.3) * np.exp(0.3)]], dtype=torch.float32))
    # the penalty for absent coordinates falls as sigma grows
    assert torch.all(absent_penalty(torch.tensor([0.0, 1.0, 2.0])).diff() < 0)


def test_scr_loss_ignores_nan_targets_off_the_bone_and_is_per_image():
    b, h, w = 2, 4, 4
    out = torch.zeros(b, 8, h, w, requires_grad=True)
    entry = torch.full((b, 3, h, w), float("nan"))
    exit_ = torch.full((b, 3, h, w), float("nan"))
    mask = torch.zeros(b, h, w, dtype=torch.bool)
    mask[0, :2] = True
    entry[0, :, :2] = 0.5
    exit_[0, :, :2] = -0.5
    terms = scr_loss(out, entry, exit_, mask)
    assert terms["loss"].shape == (b,)
    terms["loss"].sum().backward()
    assert torch.isfinite(out.grad).all()
    # image 1 has no bone: only the absent penalty (e^0 = 1 for entry and exit)
    assert torch.allclose(terms["loss"][1], torch.tensor(2.0))
    # image 0: nll = |(.5,.5,.5)|^2 * 2 maps (entry, exit) = 0.75 * 2 ; absent = 2
    assert torch.allclose(terms["nll"][0], torch.tensor(1.5))
    assert torch.allclose(terms["error_norm"][0], torch.tensor(np.sqrt(0.75), dtype=torch.float32))
    with pytest.raises(ShapeError):
        scr_loss(out, entry[:, :2], exit_, mask)
    # a bone pixel with an undefined exit point is left out of the exit likelihood only
    exit_[0, :, 0, 0] = float("nan")
    again = scr_loss(out, entry, exit_, mask)
    assert torch.isfinite(again["loss"]).all()
    assert torch.allclose(again["nll"], terms["nll"]) and torch.allclose(again["absent"], terms["absent"])


def _oracle_coordinates(cam, noise_mm=0.0, outlier_share=0.0, seed=0):
    """SceneCoordinates holding the exact answer (plus noise / outliers); sigma
    small on the bone and large elsewhere, as a trained network would give."""
    entry, exit_, mask, _ = ellipsoid_scene(cam)
    g = np.random.default_rng(seed)
    maps = []
    for m in (entry, exit_):
        m = np.where(mask[..., None], m, 0.0) + g.normal(0, noise_mm, m.shape)
        bad = g.random(mask.shape) < outlier_share
        m[bad] += g.normal(0, 80.0, (int(bad.sum()), 3))
        maps.append(torch.tensor(m, dtype=torch.float32))
    log_sigma = torch.tensor(np.where(mask, -4.0, 3.0), dtype=torch.float32)
    return SceneCoordinates(maps[0], maps[1], log_sigma, log_sigma.clone(), 100.0), mask


def test_correspondences_follow_pixel_order_and_filter():
    cam = camera_at(1, size=16)
    coords, mask = _oracle_coordinates(cam)
    corr = scene_correspondences(coords, 0, use_exit=True)
    assert len(corr) == 2 * 16 * 16
    assert np.allclose(corr.pixels_uv[16 * 3 + 5], [5, 3])  # row-major: v * W + u
    assert np.allclose(corr.pixels_uv[256 + 17], corr.pixels_uv[17])
    assert int((corr.log_variance <= 0.0).sum()) == 2 * int(mask.sum())


@pytest.mark.parametrize("method", ["poselib", "opencv"])
def test_pnp_on_oracle_scene_coordinates_recovers_the_pose(method):
    cam = camera_at(2, size=32, seed=3)
    coords, _ = _oracle_coordinates(cam, noise_mm=0.5, outlier_share=0.2, seed=1)
    cfg = SCRInferenceConfig(reproj_threshold_px=2.0, pnp_method=method)
    for i in range(2):
        res = pose_from_correspondences(scene_correspondences(coords, i), cam[i], cfg)
        assert res.success, res.reason
        rot, trans = se3.pose_errors(torch.tensor(res.world_to_cam), cam.world_to_cam[i])
        assert float(rot) < 1.0 and float(trans) < 10.0


def test_uncertainty_filter_rejects_everything_when_no_pixel_is_confident():
    cam = camera_at(1, size=16)
    coords, _ = _oracle_coordinates(cam)
    coords.entry_log_sigma.fill_(2.0)
    coords.exit_log_sigma.fill_(2.0)
    res = pose_from_correspondences(scene_correspondences(coords, 0), cam, SCRInferenceConfig(log_var_threshold=0.0))
    assert not res.success and "fewer than 4" in res.reason
    assert np.isnan(res.world_to_cam).all()


def test_prepare_image_resizes_image_and_camera_together():
    cam = camera_at(1, size=64)
    img = np.random.default_rng(0).random((64, 64))
    x, cam_small = prepare_image(img, cam, 32, 32)
    assert x.shape == (1, 1, 32, 32)
    # a world point projects to the same detector position at both resolutions
    p = torch.tensor([[10.0, -20.0, 30.0]])
    uv_big, _ = cam.project(p)
    uv_small, _ = cam_small.project(p)
    assert torch.allclose((uv_small + 0.5) * 2, uv_big + 0.5, atol=1e-9)
    with pytest.raises(InputError, match="camera describes"):
        prepare_image(img[:32], cam, 32, 32)
    with pytest.raises(InputError, match="constant"):
        prepare_image(np.ones((64, 64)), cam, 32, 32)
