import numpy as np
import pytest
import torch

from xrecon.errors import InputError, ShapeError
from xrecon.geometry import Camera, se3


def _camera(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    R = se3.random_rotation(n, g)
    t = torch.randn(n, 3, generator=g, dtype=torch.float64) * 20 + torch.tensor([0.0, 0.0, 800.0], dtype=torch.float64)
    return Camera.from_detector(1020.0, (0.5, 0.6), 96, 128, world_to_cam=se3.make(R, t))


def test_principal_point_projects_to_image_centre():
    cam = Camera.from_detector(1000.0, 1.0, 100, 200)
    uv, z = cam.project(torch.tensor([[0.0, 0.0, 500.0]]))
    assert torch.allclose(uv[0, 0], torch.tensor([99.5, 49.5], dtype=torch.float64))
    assert z[0, 0] == 500.0


def test_image_axes_follow_opencv():
    cam = Camera.from_detector(1000.0, 1.0, 64, 64)
    uv, _ = cam.project(torch.tensor([[10.0, 0.0, 500.0], [0.0, 10.0, 500.0]]))
    assert uv[0, 0, 0] > 31.5 and abs(uv[0, 0, 1] - 31.5) < 1e-9  # +x -> right
    assert uv[0, 1, 1] > 31.5 and abs(uv[0, 1, 0] - 31.5) < 1e-9  # +y -> down
    # magnification: 10 mm at half the SDD spans 20 px of 1 mm
    assert abs(uv[0, 0, 0] - 31.5 - 20.0) < 1e-9


def test_unproject_inverts_project():
    cam = _camera()
    g = torch.Generator().manual_seed(1)
    X = torch.randn(3, 50, 3, generator=g, dtype=torch.float64) * 50
    uv, depth = cam.project(X)
    assert torch.allclose(cam.unproject(uv, depth), X, atol=1e-9)


def test_world_rays_pass_through_points():
    cam = _camera()
    X = torch.randn(3, 20, 3, dtype=torch.float64) * 30
    uv, _ = cam.project(X)
    o, d = cam.rays_world(uv)
    v = X - o
    cross = torch.linalg.cross(v, d)
    assert cross.norm(dim=-1).max() < 1e-8
    assert torch.allclose(d.norm(dim=-1), torch.ones(3, 20, dtype=torch.float64))


def test_a_bone_scaled_about_the_source_gives_the_same_image():
    # the size / depth ambiguity of one view (docs/reconstruction.md): a shape k times
    # larger and k times further from the source projects to the same pixels, so
    # the image alone cannot tell its absolute size; only a depth change does move it
    cam = _camera(1)
    g = torch.Generator().manual_seed(2)
    X = torch.randn(1, 200, 3, generator=g, dtype=torch.float64) * 60  # a bone about its centre
    src = cam.source_world
    uv, depth = cam.project(X)
    for k in (0.8, 1.17):
        uv_k, depth_k = cam.project(src[:, None] + k * (X - src[:, None]))
        assert torch.allclose(uv_k, uv, atol=1e-9)
        assert torch.allclose(depth_k, k * depth)
    moved = X + 30.0 * cam.world_to_cam[0, 2, :3]  # 30 mm further along the optical axis, same size
    assert (cam.project(moved)[0] - uv).norm(dim=-1).max() > 0.5


def test_resize_keeps_projection_consistent():
    cam = Camera.from_detector(1020.0, 0.194, 1536, 1536)
    small = cam.resized(128, 128)
    X = torch.tensor([[12.0, -40.0, 600.0]])
    uv_big, _ = cam.project(X)
    uv_small, _ = small.project(X)
    # pixel edges scale: (u + 0.5) * s - 0.5
    assert torch.allclose((uv_big + 0.5) * (128 / 1536) - 0.5, uv_small, atol=1e-9)
    assert abs(small.pixel_spacing_mm[0] - 0.194 * 12) < 1e-12
    assert torch.allclose(small.sdd_mm, cam.sdd_mm)


def test_crop_shifts_principal_point():
    cam = _camera(1)
    X = torch.randn(1, 5, 3, dtype=torch.float64) * 10
    uv, _ = cam.project(X)
    uv_c, _ = cam.cropped(10, 20, 50, 60).project(X)
    assert torch.allclose(uv_c, uv - torch.tensor([20.0, 10.0], dtype=torch.float64))


def test_json_round_trip(tmp_path):
    cam = _camera(1)
    cam.save(tmp_path / "cam.json")
    back = Camera.load(tmp_path / "cam.json")
    assert torch.allclose(back.K, cam.K) and torch.allclose(back.world_to_cam, cam.world_to_cam)
    assert back.pixel_spacing_mm == cam.pixel_spacing_mm


def test_bad_camera_json_names_file(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"height": 10}')
    with pytest.raises(InputError, match="bad.json"):
        Camera.load(p)


def test_shape_errors_are_typed():
    with pytest.raises(ShapeError, match=r"expected shape \(\*, 3, 3\)"):
        Camera(torch.eye(4), torch.eye(4), 10, 10)
