"""Real films (issue 30, item 5): a CR / DX DICOM with MONOCHROME1, 10-16 bits stored,
a VOI LUT, collimator strips, a lead marker and incomplete geometry tags loads into
the same image as its clean MONOCHROME2 twin, with the strips cut off, the marker
painted out, the camera cropped with the image and the assumed geometry stated."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from tests.anatomy.film_files import MARKER_BOX, film, phantom, strip_widths, write_dicom
from xrecon.anatomy import film as film_mod
from xrecon.anatomy.xray_io import DEFAULT_DETECTOR_SIDE_MM, DEFAULT_SDD_MM, read_xray, read_xray_report
from xrecon.errors import InputError

H, W = 200, 160
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _normalised(x):
    return (x - x.min()) / (x.max() - x.min())


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    """The same film as MONOCHROME1 (rescaled, VOI LUT, zero PixelSpacing, no
    distance) and as MONOCHROME2 (plain), 12 bits stored."""
    tmp = tmp_path_factory.mktemp("films")
    stored = film(phantom(H, W), 12)
    voi = Dataset()
    voi.LUTDescriptor = [4096, 0, 16]
    voi.LUTData = np.arange(0, 65536, 16, dtype=np.uint16).tobytes()
    m1 = write_dicom(tmp / "m1.dcm", stored, photometric="MONOCHROME1", PixelSpacing=["0", "0"],
                     RescaleSlope="2", RescaleIntercept="-100", WindowCenter="1000", WindowWidth="200",
                     VOILUTSequence=Sequence([voi]))
    m2 = write_dicom(tmp / "m2.dcm", stored, photometric="MONOCHROME2", modality="DX")
    return m1, m2


def test_monochrome1_film_loads_as_its_monochrome2_twin_with_strips_cut_and_marker_painted(films):
    m1, m2 = films
    r1, r2 = read_xray_report(m1), read_xray_report(m2)
    np.testing.assert_allclose(r1.image, r2.image, atol=1e-6)
    # every strip found, within a pixel or two of its widest point, and cut with nothing left of it
    truth = strip_widths(H, W)
    found = {e.side: e for e in r1.collimation}
    assert set(found) == set(truth)
    for side, width in truth.items():
        assert abs(found[side].max_width_px - width) <= 2, (side, found[side], width)
    assert abs(found["right"].angle_deg - 1.5) < 0.5 and max(abs(found[s].angle_deg) for s in truth if s != "right") < 0.3
    top, bottom, left, right = r1.crop_px
    for cut, side in zip(r1.crop_px, ("top", "bottom", "left", "right")):
        assert truth[side] <= cut <= truth[side] + 3, (side, cut)
    assert r1.image.shape == (H - top - bottom, W - left - right)
    # the marker is flagged where it is, and painted out
    assert len(r1.markers) == 1, r1.markers
    r0, c0, rr1, cc1 = r1.markers[0].box
    tr0, tc0, tr1, tc1 = MARKER_BOX
    assert abs(r0 - tr0) <= 1 and abs(c0 - tc0) <= 1 and abs(rr1 - tr1) <= 1 and abs(cc1 - tc1) <= 1
    assert any("marker" in n for n in r1.notes) and any("collimator strip along the right" in n for n in r1.notes)
    # the rest is the film's own values, untouched but for the min-max scaling, bone bright
    stored = film(phantom(H, W), 12)[top : H - bottom, left : W - right]
    unpainted = np.ones(stored.shape, bool)  # the painted pixels are the marker's box grown by 2 px
    unpainted[tr0 - top - 2 : tr1 - top + 2, tc0 - left - 2 : tc1 - left + 2] = False
    ref = (stored - stored[unpainted].min()) / (stored[unpainted].max() - stored[unpainted].min())
    away = np.ones(ref.shape, bool)
    away[tr0 - top - 4 : tr1 - top + 4, tc0 - left - 4 : tc1 - left + 4] = False
    np.testing.assert_allclose(r1.image[away], ref[away], atol=1e-6)
    clean = _normalised(phantom(H, W)[top : H - bottom, left : W - right])
    assert np.abs(r1.image - clean).mean() < 0.01  # and that is the phantom, up to the film's grain
    painted = r1.image[tr0 - top : tr1 - top, tc0 - left : tc1 - left]
    assert painted.max() < ref.max() - 0.05 and np.abs(painted - clean[~away].mean()).max() < 0.35


def test_missing_geometry_is_assumed_stated_and_the_camera_follows_the_crop(films):
    m1, _ = films
    r = read_xray_report(m1)
    assert not r.calibrated and r.geometry["assumed"] == ["sdd_mm", "pixel_spacing_mm"]
    statement = r.geometry["statement"]
    assert statement.startswith("geometry: ASSUMED") and "up to scale" in statement and "--sdd" in statement
    assert statement in r.notes
    assert any("PixelSpacing (0028,0030) holds zero" in n and "read as missing" in n for n in r.notes)
    dx = DEFAULT_DETECTOR_SIDE_MM / max(H, W)
    assert r.camera.pixel_spacing_mm == pytest.approx((dx, dx))
    assert float(r.camera.sdd_mm[0]) == pytest.approx(DEFAULT_SDD_MM)
    # the detector's centre stays where it was on the film: the crop shifts the principal point
    top, _, left, _ = r.crop_px
    uv = r.camera.project(np.array([[0.0, 0.0, 700.0], [30.0, -20.0, 800.0]]))[0][0].numpy()
    f = DEFAULT_SDD_MM / dx
    np.testing.assert_allclose(uv[0], [(W - 1) / 2 - left, (H - 1) / 2 - top], atol=1e-9)
    np.testing.assert_allclose(uv[1], [(W - 1) / 2 - left + f * 30 / 800, (H - 1) / 2 - top - f * 20 / 800],
                               atol=1e-9)
    # given by the user, the geometry is calibrated and the statement says where it came from
    r = read_xray_report(m1, sdd_mm=1150, pixel_spacing_mm=0.2)
    assert r.calibrated and r.geometry["statement"].startswith("geometry: calibrated")
    assert r.geometry["sources"] == {"sdd_mm": "argument", "pixel_spacing_mm": "argument"}
    assert float(r.camera.K[0, 0, 0]) == pytest.approx(1150 / 0.2)
    # a distance of 0 is "unknown" too; a real spacing tag is used, and only the distance assumed
    path = write_dicom(m1.parent / "sdd0.dcm", film(phantom(H, W)), DistanceSourceToDetector="0",
                       ImagerPixelSpacing=["0.15", "0.15"])
    r = read_xray_report(path)
    assert r.geometry["assumed"] == ["sdd_mm"] and r.camera.pixel_spacing_mm == (0.15, 0.15)
    assert any("DistanceSourceToDetector (0018,1110) is 0: read as missing" in n for n in r.notes)


def test_the_voi_lut_is_not_applied_and_says_so(films):
    m1, _ = films
    plain = write_dicom(m1.parent / "novoi.dcm", film(phantom(H, W)), photometric="MONOCHROME1",
                        RescaleSlope="2", RescaleIntercept="-100")
    with_voi = read_xray_report(m1)
    np.testing.assert_array_equal(with_voi.image, read_xray_report(plain).image)
    assert any("VOI LUT (WindowCenter / WindowWidth and VOI LUT Sequence) not applied" in s
               for s in with_voi.intensity)
    assert any("MONOCHROME1" in s and "inverted" in s for s in with_voi.intensity)


@pytest.mark.parametrize("bits,photometric,slope,intercept", [(10, "MONOCHROME1", "1", "0"),
                                                              (12, "MONOCHROME2", "0.5", "-1024"),
                                                              (16, "MONOCHROME1", "3", "100")])
def test_10_to_16_bit_values_map_to_the_same_bone_bright_image(tmp_path, bits, photometric, slope, intercept):
    stored = film(phantom(H, W), bits, strips=False, marker=False)
    path = write_dicom(tmp_path / "f.dcm", stored, bits=bits,
                       photometric=photometric, RescaleSlope=slope, RescaleIntercept=intercept,
                       DistanceSourceToDetector="1000", ImagerPixelSpacing=["0.2", "0.2"])
    r = read_xray_report(path)
    assert r.collimation == [] and r.markers == [] and r.crop_px == (0, 0, 0, 0)
    np.testing.assert_allclose(r.image, _normalised(stored), atol=1e-6)
    assert r.calibrated


def test_no_strips_or_markers_are_found_on_a_drr_or_a_ramp():
    img, _ = read_xray(EXAMPLES / "pelvis_xray.png")
    assert film_mod.find_collimation(img) == [] and film_mod.find_markers(img) == []
    r = read_xray_report(EXAMPLES / "pelvis_xray.png", find_borders=True)
    np.testing.assert_array_equal(r.image, img)
    v, u = np.mgrid[0:H, 0:W].astype(float)
    assert film_mod.find_collimation(0.5 + 0.01 * u + 0.002 * v) == []  # a smooth ramp ends at a side, no step


def test_a_rotated_black_mask_strip_is_found_too():
    img = phantom(H, W) * 0.8 + 0.2 + np.random.default_rng(0).normal(0, 0.002, (H, W))
    v, u = np.mgrid[0:H, 0:W].astype(float)
    img[v < 20 + np.tan(np.radians(-3.0)) * (u - W / 2)] = 0.0  # electronically masked, tilted 3 deg
    (edge,) = film_mod.find_collimation(img)
    assert edge.side == "top" and abs(edge.angle_deg + 3.0) < 0.5 and abs(edge.width_px - 20) < 1.5


def test_dicoms_that_are_not_grey_images_are_refused_naming_the_file(tmp_path):
    stored = film(phantom(H, W))
    path = write_dicom(tmp_path / "empty.dcm", stored, PixelData=None)
    with pytest.raises(InputError, match=r"empty\.dcm: DICOM holds no pixel data"):
        read_xray(path)
    path = write_dicom(tmp_path / "rgb.dcm", stored, photometric="RGB")
    with pytest.raises(InputError, match=r"rgb\.dcm: unsupported photometric interpretation 'RGB'"):
        read_xray(path)
