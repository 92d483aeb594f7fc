"""`xrecon ssm` commands: build, info, and clear errors on bad input."""
import numpy as np
import trimesh
from typer.testing import CliRunner

from shape_models import bundled
from xrecon.cli.ssm import app

runner = CliRunner()


def _ellipsoids(folder, n=4, subdivisions=2, seed=0):
    """n ellipsoids (icospheres stretched along x, y by random factors) written as PLY."""
    rng = np.random.default_rng(seed)
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions, radius=30.0)
    folder.mkdir(exist_ok=True)
    for i in range(n):
        v = sphere.vertices * np.array([1.0 + 0.3 * rng.standard_normal(), 1.0 + 0.1 * rng.standard_normal(), 0.8])
        trimesh.Trimesh(v, sphere.faces, process=False).export(folder / f"bone_{i}.ply")
    return sphere


def test_info_of_the_bundled_pelvis():
    res = runner.invoke(app, ["info", "pelvis"])
    assert res.exit_code == 0, res.output
    assert "9366" in res.output and "train 260" in res.output and "ASIS_left" in res.output


def test_build_in_correspondence_and_info(tmp_path):
    _ellipsoids(tmp_path / "meshes")
    out = tmp_path / "m.npz"
    res = runner.invoke(app, ["build", str(tmp_path / "meshes"), "--out", str(out), "--in-correspondence",
                              "--n-components", "2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["info", str(out)])
    assert res.exit_code == 0 and "modes 2" in res.output


def test_bad_inputs_give_one_line_errors(tmp_path):
    folder = tmp_path / "meshes"
    sphere = _ellipsoids(folder, n=2)
    # a point cloud (no faces)
    trimesh.PointCloud(sphere.vertices).export(folder / "cloud.ply")
    res = runner.invoke(app, ["build", str(folder), "--out", str(tmp_path / "m.npz")])
    assert res.exit_code == 2 and "no faces" in res.output
    (folder / "cloud.ply").unlink()
    # mismatched vertex counts with --in-correspondence
    small = trimesh.creation.icosphere(subdivisions=1)
    small.export(folder / "small.ply")
    res = runner.invoke(app, ["build", str(folder), "--out", str(tmp_path / "m.npz"), "--in-correspondence"])
    assert res.exit_code == 2 and "different vertex counts" in res.output
    # a model file of another format version
    data = dict(np.load(bundled.model_path("femur")))
    data["format_version"] = np.int64(99)
    np.savez(tmp_path / "old.npz", **data)
    res = runner.invoke(app, ["info", str(tmp_path / "old.npz")])
    assert res.exit_code == 2 and "format version 99" in res.output
    # masks without one camera each
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "m.png")
    res = runner.invoke(app, ["fit", "pelvis", str(tmp_path / "m.png")])
    assert res.exit_code == 2 and "--camera" in res.output
