"""``xrecon reconstruct`` / ``xrecon register`` with several X-rays: bad inputs (cameras
and images that do not pair up, a camera without its pose in the shared world frame,
images of different sizes, two views from one pose) give one line naming the
problem, exit code 2, and write nothing; the API refuses the same."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xrecon.cli.main import app
from xrecon.errors import InputError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
runner = CliRunner()


def _view(tmp: Path, name: str, world_to_cam=None, size: int | None = None) -> tuple[Path, Path]:
    """A copy of the example X-ray (or a ``size`` px noise image) and a camera JSON
    ``<name>_camera.json``: the example's geometry, with ``world_to_cam`` when given."""
    img = tmp / f"{name}.png"
    cam = json.loads((EXAMPLES / "pelvis_xray.json").read_text())
    cam.pop("world_to_cam")
    if size is None:
        shutil.copy(EXAMPLES / "pelvis_xray.png", img)
    else:
        Image.fromarray((np.random.default_rng(0).random((size, size)) * 255).astype(np.uint8)).save(img)
        cam.pop("K")
        cam["height"] = cam["width"] = size
        cam["pixel_spacing_mm"] = 298.0 / size
    if world_to_cam is not None:
        cam["world_to_cam"] = np.asarray(world_to_cam).tolist()
    path = tmp / f"{name}_camera.json"
    path.write_text(json.dumps(cam))
    return img, path


def _pose(angle_deg: float) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("y", angle_deg, degrees=True).as_matrix()
    T[:3, 3] = [0.0, 0.0, 765.0]
    return T


def _fails_cleanly(result, out: Path, *words):
    assert result.exit_code == 2, result.output
    text = result.output.lower()
    assert "xrecon: error:" in text and len(text.strip().splitlines()) == 1, text
    for w in words:
        assert w.lower() in text, text
    assert not out.exists() or not any(out.iterdir())


CASES = ["fewer cameras", "more cameras", "no world_to_cam", "different sizes", "same pose"]


def _argv(case: str, tmp: Path) -> tuple[list[str], list[str]]:
    """The X-rays and --camera options of a bad case, and the words its error must hold."""
    a, ca = _view(tmp, "a", _pose(0.0))
    b, cb = _view(tmp, "b", _pose(60.0))
    if case == "fewer cameras":
        return [str(a), str(b), "--camera", str(ca)], ["2 images but 1 camera"]
    if case == "more cameras":
        return [str(a), "--camera", str(ca), "--camera", str(cb)], ["1 image but 2 cameras"]
    if case == "no world_to_cam":
        b, cb = _view(tmp, "b", None)
        return [str(a), str(b), "--camera", str(ca), "--camera", str(cb)], ["b_camera.json", "world_to_cam"]
    if case == "different sizes":
        b, cb = _view(tmp, "b", _pose(60.0), size=64)
        return [str(a), str(b), "--camera", str(ca), "--camera", str(cb)], ["b.png", "differ in size"]
    b, cb = _view(tmp, "b", _pose(0.0))
    return [str(a), str(b), "--camera", str(ca), "--camera", str(cb)], ["b.png", "same world_to_cam"]


@pytest.mark.parametrize("case", CASES)
def test_reconstruct_refuses_views_that_do_not_pair_up(tmp_path, case):
    views, words = _argv(case, tmp_path)
    out = tmp_path / "out"
    _fails_cleanly(runner.invoke(app, ["reconstruct", *views, "--out", str(out)]), out, *words)


@pytest.mark.parametrize("case", ["fewer cameras", "no world_to_cam", "different sizes"])
def test_register_refuses_views_that_do_not_pair_up(tmp_path, case):
    views, words = _argv(case, tmp_path)
    out = tmp_path / "out"
    res = runner.invoke(app, ["register", *views, "--ct", str(EXAMPLES / "pelvis_ct.nii.gz"), "--out", str(out)])
    _fails_cleanly(res, out, *words)


def test_register_refuses_refinement_over_several_views(tmp_path):
    a, ca = _view(tmp_path, "a", _pose(0.0))
    b, cb = _view(tmp_path, "b", _pose(60.0))
    out = tmp_path / "out"
    res = runner.invoke(app, ["register", str(a), str(b), "--camera", str(ca), "--camera", str(cb), "--ct",
                              str(EXAMPLES / "pelvis_ct.nii.gz"), "--refine", "--out", str(out)])
    _fails_cleanly(res, out, "refine")


def test_a_sidecar_without_world_to_cam_is_named(tmp_path):
    """Without --camera each X-ray's own sidecar is read; the example's has a pose,
    a copy without one is refused, naming the sidecar."""
    from xrecon import api

    a, ca = _view(tmp_path, "a", _pose(0.0))
    b, cb = _view(tmp_path, "b", None)
    shutil.copy(ca, tmp_path / "a.json")
    shutil.copy(cb, tmp_path / "b.json")
    with pytest.raises(InputError, match=r"b\.json.*world_to_cam"):
        api.load_views([a, b])
    imgs, cams = api.load_views([a, b], [ca, _view(tmp_path, "c", _pose(60.0))[1]])
    assert len(imgs) == 2 and np.allclose(cams[1].world_to_cam[0].numpy(), _pose(60.0))
