import json

import numpy as np
import pytest
import trimesh

from xrecon.anatomy.bone import BoneModel, signed_volume
from xrecon.anatomy.mesh_io import (
    mesh_sidecar,
    read_mesh,
    read_points,
    read_pose,
    write_mesh,
    write_points,
    write_pose,
)
from xrecon.errors import InputError


def _box_bone():
    m = trimesh.creation.box(extents=(10.0, 20.0, 30.0))
    v = np.asarray(m.vertices) + [100.0, -50.0, 7.25]
    return BoneModel(v, np.asarray(m.faces), [[1.0, 2.0, 3.0]], ["tip"], frame="ct (RAS+ mm)", source="box")


@pytest.mark.parametrize("suffix", [".ply", ".stl", ".obj"])
def test_mesh_round_trip_keeps_geometry_landmarks_and_frame(tmp_path, suffix):
    bone = _box_bone()
    path = tmp_path / f"bone{suffix}"
    write_mesh(path, bone)
    back = read_mesh(path)
    assert len(back.faces) == len(bone.faces) and len(back.vertices) == len(bone.vertices)
    # same surface: every vertex of one lies on a vertex of the other
    d = np.linalg.norm(back.vertices[:, None] - bone.vertices[None], axis=-1).min(1)
    assert d.max() < 1e-4
    assert signed_volume(back.vertices, back.faces) == pytest.approx(6000.0, rel=1e-5)  # orientation kept
    assert back.landmark_names == ["tip"] and back.frame == "ct (RAS+ mm)"
    np.testing.assert_allclose(back.landmarks, [[1.0, 2.0, 3.0]])
    assert json.loads(mesh_sidecar(path).read_text())["units"] == "mm"
    assert read_mesh(path, frame="other").frame == "other"


def test_mesh_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="bone.vtk: cannot write meshes"):
        write_mesh(tmp_path / "bone.vtk", _box_bone())
    (tmp_path / "bad.stl").write_bytes(b"solid nothing\nendsolid\n")
    with pytest.raises(InputError, match="bad.stl"):
        read_mesh(tmp_path / "bad.stl")
    with pytest.raises(InputError, match="missing.ply: no such mesh file"):
        read_mesh(tmp_path / "missing.ply")
    write_points(tmp_path / "cloud.ply", np.zeros((4, 3)))
    with pytest.raises(InputError, match="cloud.ply: file holds no triangles"):
        read_mesh(tmp_path / "cloud.ply")


def test_points_with_attributes_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(50, 3)) * 100
    uv = rng.uniform(0, 256, size=(50, 2)).astype(np.float32)
    conf = rng.uniform(size=50)
    vis = rng.uniform(size=50) > 0.5
    write_points(tmp_path / "p.ply", pts, {"uv": uv, "confidence": conf, "visible": vis, "pixel": np.arange(50)}, frame="ct (RAS+ mm)")
    back, attrs, frame = read_points(tmp_path / "p.ply")
    np.testing.assert_array_equal(back, pts)  # float64 kept
    assert frame == "ct (RAS+ mm)"
    assert set(attrs) == {"uv_0", "uv_1", "confidence", "visible", "pixel"}
    np.testing.assert_array_equal(np.stack([attrs["uv_0"], attrs["uv_1"]], 1), uv)
    np.testing.assert_array_equal(attrs["confidence"], conf)
    np.testing.assert_array_equal(attrs["visible"].astype(bool), vis)
    np.testing.assert_array_equal(attrs["pixel"], np.arange(50))
    # an ordinary PLY reader sees the points
    import open3d as o3d

    np.testing.assert_allclose(np.asarray(o3d.io.read_point_cloud(str(tmp_path / "p.ply")).points), pts)
    with pytest.raises(InputError, match="attribute 'uv' has shape"):
        write_points(tmp_path / "q.ply", pts, {"uv": uv[:3]})
    with pytest.raises(InputError, match="q.xyz"):
        write_points(tmp_path / "q.xyz", pts)


def test_pose_round_trip_and_frame_checks(tmp_path):
    c, s = np.cos(0.3), np.sin(0.3)
    M = np.array([[c, -s, 0, 10], [s, c, 0, -5], [0, 0, 1, 800], [0, 0, 0, 1.0]])
    write_pose(tmp_path / "pose.json", M, "ct (RAS+ mm)", "camera (OpenCV)", success=True, mtre_mm=np.float64(1.5))
    p = read_pose(tmp_path / "pose.json", from_frame="ct (RAS+ mm)")
    np.testing.assert_array_equal(p.matrix, M)
    assert (p.from_frame, p.to_frame) == ("ct (RAS+ mm)", "camera (OpenCV)")
    assert p.extra == {"success": True, "mtre_mm": 1.5}
    with pytest.raises(InputError, match="pose.json: pose to_frame is 'camera \\(OpenCV\\)', expected 'ct'"):
        read_pose(tmp_path / "pose.json", to_frame="ct")
    bad = M.copy()
    bad[:3, :3] *= 1.1
    with pytest.raises(InputError, match="not rigid"):
        write_pose(tmp_path / "s.json", bad, "a", "b")
    write_pose(tmp_path / "s.json", bad, "a", "b", rigid=False)
    assert read_pose(tmp_path / "s.json", rigid=False).matrix[0, 0] == pytest.approx(1.1 * c)
    (tmp_path / "nan.json").write_text('{"from_frame": "a", "to_frame": "b", "matrix": [[1,0,0,0],[0,1,0,0],[0,0,1,0]]}')
    with pytest.raises(InputError, match="nan.json: pose matrix must be 4x4"):
        read_pose(tmp_path / "nan.json")


def test_a_failed_write_leaves_the_existing_file_untouched(tmp_path):
    write_points(tmp_path / "p.ply", np.zeros((3, 3)))
    before = (tmp_path / "p.ply").read_bytes()
    with pytest.raises(InputError):
        write_points(tmp_path / "p.ply", np.zeros((3, 3)), {"a": np.array(["x", "y", "z"])})
    assert (tmp_path / "p.ply").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.ply"]  # no temporary left behind
