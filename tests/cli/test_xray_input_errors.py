"""Bad X-ray inputs to ``reconstruct`` / ``register`` end in one ``xrecon: error:``
line naming the file at fault and exit code 2, not a traceback (issue 31)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from xrecon.anatomy.xray_io import write_image
from xrecon.cli.main import app
from xrecon.geometry import Camera

runner = CliRunner()


@pytest.fixture()
def xray(tmp_path):
    path = tmp_path / "x.png"
    write_image(path, np.random.default_rng(0).random((48, 64)))
    return path


def _camera_file(tmp_path, **changes):
    d = Camera.from_detector(1020.0, 0.5, 48, 64).to_dict()
    d.update(changes)
    path = tmp_path / "cam.json"
    path.write_text(json.dumps(d))
    return path


def _error(result) -> str:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines[-1].startswith("xrecon: error: "), result.output
    assert "Traceback" not in result.output
    return lines[-1]


@pytest.mark.parametrize("command", ["reconstruct", "register"])
@pytest.mark.parametrize("field,value", [("K", [[1, 0], [0, 1]]), ("world_to_cam", np.eye(3).tolist()),
                                         ("height", "48"), ("principal_offset_mm", 3.0)])
def test_a_bad_camera_field_names_the_camera_file(tmp_path, xray, command, field, value):
    cam = _camera_file(tmp_path, **{field: value})
    ct = Path(__file__).resolve().parents[2] / "examples" / "pelvis_ct.nii.gz"  # a real CT: the camera is wrong
    extra = ["--ct", str(ct)] if command == "register" else []
    res = runner.invoke(app, [command, str(xray), "--camera", str(cam), *extra, "--out", str(tmp_path / "out")])
    assert _error(res).startswith(f"xrecon: error: {cam}: camera JSON field '{field}'")


def test_a_camera_file_without_sdd_is_reported_against_that_file(tmp_path, xray):
    cam = _camera_file(tmp_path)
    d = json.loads(cam.read_text())
    del d["K"], d["sdd_mm"]
    cam.write_text(json.dumps(d))
    line = _error(runner.invoke(app, ["reconstruct", str(xray), "--camera", str(cam), "--out", str(tmp_path / "o")]))
    assert line.startswith(f"xrecon: error: {cam}: camera file gives no 'sdd_mm'"), line
    assert "sidecar" not in line  # no advice to write a file that already exists


def test_an_image_over_the_pixel_cap_is_refused(tmp_path, xray, monkeypatch):
    import xrecon.anatomy.xray_io as xio

    monkeypatch.setattr(xio, "MAX_PIXELS", 1000)
    line = _error(runner.invoke(app, ["reconstruct", str(xray), "--sdd", "1000", "--pixel-spacing", "0.3",
                                      "--out", str(tmp_path / "o")]))
    assert line.startswith(f"xrecon: error: {xray}: ") and "limit of" in line, line
