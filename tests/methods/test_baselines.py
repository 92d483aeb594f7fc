"""PoseNet and landmark-heatmap baselines: parameterisation, targets, decoding, losses."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _scr_scene import camera_at, surface_points  # noqa: E402

from xrecon.errors import ShapeError  # noqa: E402
from xrecon.geometry import se3  # noqa: E402
from xrecon.methods.baselines.landmarks import (  # noqa: E402
    LandmarkHeatmapNet, decode_heatmaps, heatmap_loss, heatmap_targets, project_landmarks)
from xrecon.methods.baselines.posenet import PoseNet, geometric_loss, reference_pose  # noqa: E402

torch.set_num_threads(1)


def test_reference_pose_is_the_mean_of_identical_poses_and_spread_is_floored():
    cam = camera_at(5, seed=2)
    ref, spread = reference_pose(cam.world_to_cam.numpy()[[0, 0, 0]])
    assert np.allclose(ref, cam.world_to_cam.numpy()[0], atol=1e-9)
    assert np.allclose(spread, 1.0)
    ref, spread = reference_pose(cam.world_to_cam.numpy())
    assert np.allclose(ref[:3, :3] @ ref[:3, :3].T, np.eye(3), atol=1e-9)
    assert (spread >= 1.0).all()


def test_untrained_posenet_outputs_the_reference_pose_and_loss_is_zero_at_truth():
    cam = camera_at(3, seed=1)
    ref, spread = reference_pose(cam.world_to_cam.numpy())
    net = PoseNet(surface_points(64), ref, spread, base_channels=4, levels=3)
    with torch.no_grad():
        pose = net(torch.rand(2, 1, 32, 32))
    assert pose.shape == (2, 4, 4)
    assert torch.allclose(pose[0].double(), torch.tensor(ref), atol=1e-4)
    gt = cam.world_to_cam
    assert torch.allclose(geometric_loss(gt, gt, net.points_world, net.scale_mm), torch.zeros(3, dtype=torch.float64))
    # a pure 10 mm shift of the camera costs exactly 10 mm / scale
    shifted = gt.clone()
    shifted[:, 0, 3] += 10.0
    loss = geometric_loss(shifted, gt, net.points_world, net.scale_mm)
    assert torch.allclose(loss, torch.full((3,), 10.0 / float(net.scale_mm), dtype=torch.float64), atol=1e-6)


def test_posenet_learns_a_single_pose():
    """Gradient flows through the 6D rotation and translation: the net fits one image's pose."""
    torch.manual_seed(0)
    cam = camera_at(4, seed=5)
    ref, spread = reference_pose(cam.world_to_cam.numpy())
    net = PoseNet(surface_points(64), ref, spread, base_channels=4, levels=3)
    img = torch.rand(1, 1, 32, 32)
    gt = cam.world_to_cam[:1]
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = geometric_loss(net(img), gt, net.points_world, net.scale_mm).mean()
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.2 * first


def test_heatmap_targets_peak_at_the_projection_and_vanish_outside():
    cam = camera_at(2, size=32, seed=4)
    lm = torch.tensor(surface_points(6, seed=3), dtype=torch.float64)
    uv, depth = project_landmarks(lm, cam.K, cam.world_to_cam)
    uv_ref, _ = cam.project(lm)
    assert torch.allclose(uv, uv_ref)
    uv = uv.clone()
    uv[0, 0] = torch.tensor([12.0, 7.0])
    uv[1, 2] = torch.tensor([-9.0, 40.0])
    maps, inside = heatmap_targets(uv, 32, 32, sigma_px=1.5)
    assert maps.shape == (2, 6, 32, 32)
    assert float(maps[0, 0, 7, 12]) == pytest.approx(1.0)
    assert not bool(inside[1, 2]) and float(maps[1, 2].abs().max()) == 0.0


def test_decode_recovers_subpixel_peaks_and_reports_absent_landmarks():
    uv_true = torch.tensor([[[10.3, 20.6], [5.0, 5.0], [25.7, 3.2]]], dtype=torch.float64)
    maps, _ = heatmap_targets(uv_true, 32, 32, sigma_px=1.5)
    maps[0, 1] = 0.0  # landmark 1 is absent
    logits = torch.logit(maps.clamp(1e-4, 1 - 1e-4)).float()
    uv, peak, detected = decode_heatmaps(logits, min_peak=0.5)
    assert detected.tolist() == [[True, False, True]]
    err = (uv[0, [0, 2]].double() - uv_true[0, [0, 2]]).norm(dim=-1)
    assert float(err.max()) < 0.02


def test_heatmap_loss_prefers_the_right_map_and_net_shapes():
    uv = torch.tensor([[[8.0, 8.0], [20.0, 12.0], [3.0, 30.0], [16.0, 16.0]]])
    t, _ = heatmap_targets(uv, 32, 32, 2.0)
    good = torch.logit(t.clamp(1e-3, 1 - 1e-3))
    bad = torch.logit(t.roll(5, dims=-1).clamp(1e-3, 1 - 1e-3))
    assert float(heatmap_loss(good, t)) < float(heatmap_loss(bad, t))
    net = LandmarkHeatmapNet(surface_points(4), [f"p{i}" for i in range(4)], base_channels=4, levels=3)
    assert net(torch.rand(2, 1, 32, 32)).shape == (2, 4, 32, 32)
    with pytest.raises(ShapeError, match="L >= 4"):
        LandmarkHeatmapNet(surface_points(3), ["a", "b", "c"])


@pytest.mark.parametrize("kind", ["posenet", "landmarks"])
def test_baseline_trains_through_the_loop_and_round_trips(tmp_path, kind):
    from _scr_scene import EllipsoidDataset

    from xrecon.errors import InputError
    from xrecon.methods.baselines.train import LandmarkPnPConfig, landmark_pose, load_baseline, train_baseline
    from xrecon.train import TrainConfig

    tr, va = EllipsoidDataset(16, seed=0), EllipsoidDataset(4, seed=1)
    pts = surface_points(32)
    if kind == "posenet":
        ref, spread = reference_pose(tr.camera.world_to_cam.numpy())
        init = dict(points_world=pts, ref_world_to_cam=ref, t_scale_mm=spread, base_channels=4, levels=3)
    else:
        init = dict(landmarks_world=pts[:6], landmark_names=[f"p{i}" for i in range(6)], base_channels=4, levels=3)
    cfg = TrainConfig(out_dir=str(tmp_path), epochs=3, batch_size=8, lr=3e-3, warmup_steps=0, progress=False,
                      num_threads=1)
    path, result = train_baseline(kind, tr, va, init_args=init, camera=tr.camera[0], targets_world=pts[:8],
                                  train_config=cfg)
    assert result.history[-1]["train"]["loss"] < result.history[0]["train"]["loss"]
    assert "mtre_clipped_mm" in result.history[-1]["val_metrics"]
    model, meta = load_baseline(path, kind)
    assert meta["camera"].height == 32 and path.with_suffix(".json").exists()
    x = va[0]["image"][None]
    with torch.no_grad():
        out = model(x)
    if kind == "landmarks":
        res = landmark_pose(out, pts[:6], meta["camera"], LandmarkPnPConfig(min_peak=2.0))
        assert not res.success and "fewer than 4" in res.reason  # no peak can reach 2.0
    else:
        assert out.shape == (1, 4, 4)
    with pytest.raises(InputError, match="not a"):
        load_baseline(path, "landmarks" if kind == "posenet" else "posenet")
