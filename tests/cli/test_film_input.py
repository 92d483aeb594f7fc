"""A real-looking film through ``xrecon reconstruct`` as a user runs it (issue 30's
acceptance line): the example pelvis X-ray written as a 12-bit MONOCHROME1 CR DICOM
with collimator strips, a lead marker, a zero PixelSpacing and no distance runs end
to end without manual steps and names the geometry it assumed; DICOMs that are not
grey images give one error line naming the file, exit code 2, nothing written."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.anatomy.film_files import write_dicom
from xrecon.cli.main import run

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PAD = (10, 8, 12, 6)  # strips: top, bottom, left, right (px)


def _pelvis_film(path: Path) -> Path:
    """The example X-ray (bone bright) as 12-bit values with unexposed strips around
    it and a lead marker in its top-left corner (air)."""
    img = np.asarray(Image.open(EXAMPLES / "pelvis_xray.png"), np.float64) / 65535.0
    grain = np.random.default_rng(0).normal(0, 0.002, img.shape)
    code = np.clip(np.round(4095 * (0.1 + 0.75 * img + grain)), 0, 4095)
    t, b, left, right = PAD
    stored = np.pad(code, ((t, b), (left, right)), constant_values=4095)
    stored[t + 4 : t + 14, left + 4 : left + 11] = 4095  # the "L" marker's bar
    return write_dicom(path, stored, photometric="MONOCHROME1", PixelSpacing=["0", "0"])


def _run(argv, capsys):
    logging.disable(logging.CRITICAL)
    try:
        with pytest.raises(SystemExit) as exit_info:
            run(argv)
    finally:
        logging.disable(logging.NOTSET)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_a_cr_film_reconstructs_without_manual_steps_and_names_the_assumed_geometry(tmp_path, capsys):
    dcm = _pelvis_film(tmp_path / "film.dcm")
    code, out, err = _run(["reconstruct", str(dcm), "--out", str(tmp_path / "out")], capsys)
    assert code == 0, out + err
    assert "geometry: ASSUMED" in out
    pose = json.loads((tmp_path / "out" / "pose.json").read_text())
    xray = pose["xray"]
    assert xray["geometry"]["calibrated"] is False and xray["geometry"]["assumed"] == ["sdd_mm", "pixel_spacing_mm"]
    assert "up to scale" in xray["geometry"]["statement"] and xray["geometry"]["statement"] in pose["notes"]
    assert {e["side"] for e in xray["collimation"]} == {"top", "bottom", "left", "right"}
    for cut, pad in zip(xray["crop_px"], PAD):
        assert pad <= cut <= pad + 3
    assert len(xray["markers"]) == 1
    t, b, left, right = xray["crop_px"]
    assert pose["camera"]["height"] == 128 + PAD[0] + PAD[1] - t - b
    assert pose["camera"]["width"] == 128 + PAD[2] + PAD[3] - left - right
    for name in ("reconstruction_cam.ply", "points.csv", "overlay.png"):
        assert (tmp_path / "out" / name).is_file()


@pytest.mark.parametrize("kind,message", [("empty", "DICOM holds no pixel data"),
                                          ("rgb", "unsupported photometric interpretation 'RGB'")])
def test_a_dicom_that_is_not_a_grey_image_is_refused_naming_it(tmp_path, capsys, kind, message):
    stored = np.full((40, 48), 1000.0)
    stored[10:20, 10:20] = 3000
    dcm = write_dicom(tmp_path / f"{kind}.dcm", stored, **({"PixelData": None} if kind == "empty"
                                                           else {"photometric": "RGB"}))
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = _run(["reconstruct", str(dcm), "--out", str(tmp_path / "out")], capsys)
    errors = [line for line in err.splitlines() if line.startswith("xrecon: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in out + err
    assert errors[0].startswith(f"xrecon: error: {dcm}: {message}"), errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
