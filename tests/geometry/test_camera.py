import json

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


# ---------------------------------------------------------------------- camera JSON schema
def _valid_camera_dict():
    R = se3.random_rotation(1, torch.Generator().manual_seed(3))[0]
    return Camera.from_detector(1020.0, (0.5, 0.6), 96, 128, world_to_cam=se3.make(R, torch.tensor(
        [1.0, -2.0, 800.0], dtype=torch.float64))).to_dict()


def _reflection():
    T = np.eye(4)
    T[0, 0] = -1.0
    return T.tolist()


BAD_FIELDS = [
    ("K", [[1.0, 0.0], [0.0, 1.0]], "3x3"),
    ("K", [[500, 0, 64], [0, 500, "48"], [0, 0, 1]], "3x3"),
    ("K", [[500, 0, 64], [0, 500], [0, 0, 1]], "3x3"),
    ("K", [[float("nan"), 0, 64], [0, 500, 48], [0, 0, 1]], "NaN"),
    ("K", [[-500, 0, 64], [0, 500, 48], [0, 0, 1]], "positive focal"),
    ("K", [[500, 0, 64], [0, 500, 48], [0, 0, 2]], "0, 0, 1"),
    ("K", "eye(3)", "3x3"),
    ("world_to_cam", np.eye(4)[:3].tolist(), "4x4"),
    ("world_to_cam", (np.eye(4) * [2, 2, 2, 1]).tolist(), "not rigid"),
    ("world_to_cam", _reflection(), "not rigid"),
    ("world_to_cam", [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], "0, 0, 0, 1"),
    ("world_to_cam", [[1, 0, 0, float("inf")], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "NaN or infinite"),
    ("height", "96", "positive whole number"),
    ("height", 0, "positive whole number"),
    ("height", 95.5, "positive whole number"),
    ("width", True, "positive whole number"),
    ("width", [128], "positive whole number"),
    ("principal_offset_mm", [1.0], "two finite numbers"),
    ("principal_offset_mm", [1.0, float("nan")], "two finite numbers"),
    ("principal_offset_mm", "0, 0", "two finite numbers"),
    ("sdd_mm", -1020.0, "positive number"),
    ("sdd_mm", "1020", "positive number"),
    ("sdd_mm", float("inf"), "positive number"),
    ("pixel_spacing_mm", [0.5, 0.6, 0.7], "one number dx or two"),
    ("pixel_spacing_mm", 0, "positive and finite"),
    ("pixel_spacing_mm", [0.5, -0.6], "positive and finite"),
]


@pytest.mark.parametrize("field,value,words", BAD_FIELDS, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD_FIELDS)])
def test_each_bad_camera_field_names_the_json_file_and_the_field(tmp_path, field, value, words):
    d = _valid_camera_dict()
    if field in ("sdd_mm", "principal_offset_mm"):
        d.pop("K")  # so that the detector fields are the ones used
    d[field] = value
    p = tmp_path / "cam_bad.json"
    p.write_text(json.dumps(d))  # NaN / Infinity are written as JSON's non-standard literals, as Python reads them
    with pytest.raises(InputError) as info:
        Camera.load(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}: camera JSON field '{field}'"), msg
    assert words in msg, msg
    # the same file as an image's sidecar is refused by the same schema, naming the sidecar
    from xrecon.anatomy.xray_io import read_xray, write_image

    write_image(tmp_path / "img.png", np.random.default_rng(0).random((96, 128)))
    with pytest.raises(InputError, match=f"cam_bad.json: camera JSON field '{field}'"):
        read_xray(tmp_path / "img.png", sidecar=p)


def test_missing_fields_and_non_objects_name_the_file(tmp_path):
    p = tmp_path / "cam.json"
    for d, words in (([1, 2], "must be an object"), ({"height": 96}, "field 'width' is missing"),
                     ({"height": 96, "width": 128}, "needs 'K'"),
                     ({"K": np.eye(3).tolist(), "pixel_spacing_mm": 1.0}, "needs 'height' and 'width'")):
        p.write_text(json.dumps(d))
        with pytest.raises(InputError, match=f"cam.json: .*{words}"):
            Camera.load(p)
    p.write_bytes(b"\xff\xfe not text")
    with pytest.raises(InputError, match="cam.json: camera JSON is not valid JSON"):
        Camera.load(p)
    with pytest.raises(InputError, match="nowhere.json: cannot read the camera JSON"):
        Camera.load(tmp_path / "nowhere.json")


def test_a_rotation_written_with_six_decimals_is_accepted_and_k_wins_over_sdd(tmp_path):
    d = _valid_camera_dict()
    d["world_to_cam"] = np.round(np.asarray(d["world_to_cam"]), 6).tolist()
    d["sdd_mm"] = 1.0  # inconsistent with K: K is what a camera JSON's pixels obey
    (tmp_path / "cam.json").write_text(json.dumps(d))
    cam = Camera.load(tmp_path / "cam.json")
    np.testing.assert_allclose(cam.K[0].numpy(), d["K"])
    np.testing.assert_allclose(cam.world_to_cam[0].numpy(), d["world_to_cam"])
    # and the schema's tolerance is not loose: 1e-4 off is refused
    d["world_to_cam"][0][0] += 1e-4
    (tmp_path / "cam.json").write_text(json.dumps(d))
    with pytest.raises(InputError, match="not rigid"):
        Camera.load(tmp_path / "cam.json")


def test_size_within_keeps_aspect_and_resized_within_keeps_projection():
    from xrecon.geometry.camera import size_within

    assert size_within(100, 50, 200) == (100, 50)
    assert size_within(10000, 10000, 2048) == (2048, 2048)
    assert size_within(3000, 1000, 1024) == (1024, 341)
    assert size_within(1000, 3001, 1024) == (341, 1024)
    cam = _camera(1)
    small = cam.resized_within(32)
    assert (small.height, small.width) == (24, 32)
    assert cam.resized_within(500) is cam
    X = torch.randn(1, 30, 3, dtype=torch.float64) * 20
    uv, _ = cam.project(X)
    uv_small, _ = small.project(X)
    scale = torch.tensor([32 / 128, 24 / 96], dtype=torch.float64)
    assert torch.allclose((uv + 0.5) * scale - 0.5, uv_small, atol=1e-9)
