"""Pose samplers and detector presets: axes in RAS terms, seed-002 statistics,
reproducibility."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from xrecon.errors import InputError
from xrecon.geometry import Camera
from xrecon.sim.detector import PRESETS, get_preset, preset_for_size
from xrecon.sim.poses import GENERAL, SEED002, PoseSamplerConfig, carm_pose, get_sampler, sample_poses

ISO = torch.tensor([12.0, -40.0, 300.0], dtype=torch.float64)


def _project(w2c, points):
    return Camera.from_detector(1000.0, 1.0, 101, 101, w2c).project(torch.as_tensor(points, dtype=torch.float64))[0][0]


def test_base_view_is_ap_with_superior_up_and_patient_left_right():
    w2c = carm_pose(ISO, 0.0, 0.0, 0.0, 700.0)
    cam = Camera.from_detector(1000.0, 1.0, 101, 101, w2c)
    assert torch.allclose(cam.source_world[0], ISO + torch.tensor([0.0, 700.0, 0.0], dtype=torch.float64))
    uv = _project(w2c, torch.stack([ISO, ISO + torch.tensor([0, 0, 10.0]), ISO + torch.tensor([-10.0, 0, 0])]))
    assert torch.allclose(uv[0], torch.tensor([50.0, 50.0], dtype=torch.float64))
    assert uv[1, 1] < 50 and abs(uv[1, 0] - 50) < 1e-9  # superior is up
    assert uv[2, 0] > 50 and abs(uv[2, 1] - 50) < 1e-9  # patient left (-x) is image right


@pytest.mark.parametrize("lao,cranial,roll", [(30.0, 0.0, 0.0), (-45.0, 0.0, 0.0), (0.0, 15.0, 0.0), (20.0, -10.0, 7.0)])
def test_angles_move_the_source_as_documented(lao, cranial, roll):
    w2c = carm_pose(ISO, lao, cranial, roll, 700.0)
    R = w2c[0, :3, :3]
    assert torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-12) and torch.linalg.det(R) > 0
    source = Camera.from_detector(1000.0, 1.0, 8, 8, w2c).source_world[0]
    rel = (source - ISO) / 700.0
    assert rel.norm() == pytest.approx(1.0)
    expected = torch.tensor(
        [-np.sin(np.radians(lao)) * np.cos(np.radians(cranial)), np.cos(np.radians(lao)) * np.cos(np.radians(cranial)), np.sin(np.radians(cranial))],
        dtype=torch.float64,
    )
    assert torch.allclose(rel, expected, atol=1e-12)
    # the isocentre stays on the principal ray whatever the angles
    assert torch.allclose(_project(w2c, ISO[None])[0], torch.tensor([50.0, 50.0], dtype=torch.float64))


def test_roll_turns_the_image_about_the_principal_point():
    up = ISO + torch.tensor([0.0, 0.0, 20.0], dtype=torch.float64)
    uv0 = _project(carm_pose(ISO, 0.0, 0.0, 0.0, 700.0), up[None])[0] - 50
    uv1 = _project(carm_pose(ISO, 0.0, 0.0, 30.0, 700.0), up[None])[0] - 50
    angle = torch.rad2deg(torch.atan2(uv1[1], uv1[0]) - torch.atan2(uv0[1], uv0[0]))
    assert abs(abs(float(angle)) - 30.0) < 1e-6
    assert uv1.norm() == pytest.approx(float(uv0.norm()))


def test_seed002_statistics():
    sample = sample_poses(SEED002, 4000, ISO.numpy(), np.random.default_rng(0), source_to_isocentre_mm=765.0)
    assert sample.world_to_cam.shape == (4000, 4, 4)
    assert np.array_equal(sample.lao_deg, np.round(sample.lao_deg))
    assert sample.lao_deg.min() == -45 and sample.lao_deg.max() == 45
    assert len(np.unique(sample.lao_deg)) == 91
    std = sample.offset_mm.std(0)
    assert np.allclose(std, [90.0, 30.0, 30.0], rtol=0.05)
    assert np.abs(sample.offset_mm.mean(0)).max() < 5.0
    assert (sample.cranial_deg == 0).all() and (sample.roll_deg == 0).all()
    sources = Camera.from_detector(1000.0, 1.0, 8, 8, sample.world_to_cam).source_world.numpy()
    assert np.allclose(np.linalg.norm(sources - sample.isocentre_world, axis=1), 765.0)
    assert np.allclose(sample.isocentre_world, ISO.numpy() + sample.offset_mm)


def test_samplers_are_reproducible_from_a_seed():
    a = sample_poses(GENERAL, 5, ISO.numpy(), np.random.default_rng([3, 1]))
    b = sample_poses(GENERAL, 5, ISO.numpy(), np.random.default_rng([3, 1]))
    c = sample_poses(GENERAL, 5, ISO.numpy(), np.random.default_rng([3, 2]))
    assert torch.equal(a.world_to_cam, b.world_to_cam)
    assert not torch.allclose(a.world_to_cam, c.world_to_cam)
    assert (np.abs(a.cranial_deg) <= 20).all() and (a.source_to_isocentre_mm >= 650).all()


def test_bad_sampler_ranges_raise():
    with pytest.raises(InputError):
        PoseSamplerConfig(lao_deg=(10.0, -10.0))
    with pytest.raises(InputError):
        dataclasses.replace(SEED002, offset_std_mm=(1.0, -1.0, 0.0))
    with pytest.raises(InputError):
        get_sampler("nope")


def test_detector_presets():
    full = get_preset("deepfluoro")
    assert (full.size_px, full.pixel_spacing_mm, full.sdd_mm) == (1536, 0.194, 1020.0)
    small = get_preset("cpu128")
    assert small.size_px == 128 and small.pixel_spacing_mm == pytest.approx(0.194 * 12)
    assert small.width_mm == pytest.approx(full.width_mm)
    # a binned camera is the full camera resized
    w2c = carm_pose(ISO, 10.0, 0.0, 0.0, 765.0)
    X = ISO[None] + torch.tensor([[30.0, 5.0, -50.0]], dtype=torch.float64)
    uv_small = small.camera(w2c).project(X)[0]
    uv_full = full.camera(w2c).resized(128, 128).project(X)[0]
    assert torch.allclose(uv_small, uv_full, atol=1e-9)
    assert set(PRESETS) >= {"deepfluoro", "cpu128", "cpu256"}
    assert preset_for_size(256) is PRESETS["cpu256"]
    assert preset_for_size(200).pixel_spacing_mm == pytest.approx(1536 * 0.194 / 200)
    with pytest.raises(InputError, match="cpu128"):
        get_preset("cpu999")
