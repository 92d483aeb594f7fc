import json

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from xrecon.anatomy.xray_io import read_xray, write_image
from xrecon.errors import InputError
from xrecon.geometry.camera import Camera

H, W = 60, 80


def _line_integrals():
    """An analytic 'X-ray': a bright disc (bone) off-centre toward the top-left on a ramp."""
    v, u = np.mgrid[0:H, 0:W].astype(float)
    bone = ((u - 25) ** 2 + (v - 20) ** 2 <= 12**2) * 2.0
    return 0.5 + 0.01 * u + bone


def _normalised(x):
    return (x - x.min()) / (x.max() - x.min())


def test_png_8_and_16_bit_round_trip_with_explicit_geometry(tmp_path):
    img = _normalised(_line_integrals())
    for bits, tol in ((8, 1 / 255), (16, 1 / 65535)):
        write_image(tmp_path / f"x{bits}.png", img, bits=bits)
        got, cam = read_xray(tmp_path / f"x{bits}.png", sdd_mm=1000.0, pixel_spacing_mm=0.5)
        assert got.dtype == np.float32 and got.shape == (H, W)
        assert np.abs(got - img).max() <= tol
        K = cam.K[0].numpy()
        np.testing.assert_allclose(K, [[2000, 0, W / 2 - 0.5], [0, 2000, H / 2 - 0.5], [0, 0, 1]])
        assert cam.pixel_spacing_mm == (0.5, 0.5)


def test_deepfluoro_style_raw_tiff_with_border_flip_and_sidecar(tmp_path):
    mu = _line_integrals()
    raw = 4000.0 * np.exp(-mu)  # photon counts: bone dark
    stored = np.zeros((H + 10, W + 14), np.float32)  # collimator border: no photons
    stored[5:-5, 7:-7] = raw[:, ::-1]  # the detector reads out mirrored
    tifffile.imwrite(tmp_path / "frame.tif", stored)
    (tmp_path / "frame.json").write_text(json.dumps({"sdd_mm": 1020.0, "pixel_spacing_mm": [0.194, 0.2], "principal_offset_mm": [0.97, 0.0]}))
    img, cam = read_xray(tmp_path / "frame.tif", log_transform=True, crop_border_px=(5, 5, 7, 7), flip_horizontal=True)
    np.testing.assert_allclose(img, _normalised(mu), atol=1e-5)
    assert img[20, 25] > 0.9  # bone bright, at its true place
    K = cam.K[0].numpy()
    # principal point of the stored detector (centre + 5 px offset), then crop, then mirror
    cx_stored = (W + 14) / 2 - 0.5 + 0.97 / 0.194
    assert K[0, 2] == pytest.approx((W - 1) - (cx_stored - 7))
    assert K[1, 2] == pytest.approx((H + 10) / 2 - 0.5 - 5)
    assert K[0, 0] == pytest.approx(1020 / 0.194) and K[1, 1] == pytest.approx(1020 / 0.2)
    # explicit arguments win over the sidecar
    _, cam2 = read_xray(tmp_path / "frame.tif", sdd_mm=900.0, log_transform=True, crop_border_px=(5, 5, 7, 7))
    assert float(cam2.sdd_mm[0]) == pytest.approx(900.0)


def test_resize_scales_k_consistently(tmp_path):
    write_image(tmp_path / "x.png", _normalised(_line_integrals()))
    img, cam = read_xray(tmp_path / "x.png", sdd_mm=1000.0, pixel_spacing_mm=0.5, size=(30, 40))
    full = Camera.from_detector(1000.0, 0.5, H, W)
    assert img.shape == (30, 40)
    # a world point projects to the same place in detector mm at both sizes
    X = np.array([[12.0, -7.0, 800.0]])
    uv_full, _ = full.project(X)
    uv_small, _ = cam.project(X)
    np.testing.assert_allclose((uv_small[0, 0].numpy() + 0.5) * 2, uv_full[0, 0].numpy() + 0.5, atol=1e-9)
    # bone still where it was: centre (25, 20) -> (12.25, 9.75)
    assert img[10, 12] > 0.8


def test_dicom_geometry_from_tags_and_monochrome1(tmp_path):
    mu = _normalised(_line_integrals())
    path = tmp_path / "xray.dcm"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality = "DX"
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = H, W
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"  # low values display bright
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.DistanceSourceToDetector = "1100.5"
    ds.ImagerPixelSpacing = [0.3, 0.25]  # row, column
    ds.PixelData = np.round((1 - mu) * 60000).astype(np.uint16).tobytes()
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.save_as(str(path), write_like_original=False)
    img, cam = read_xray(path)
    np.testing.assert_allclose(img, mu, atol=1e-4)
    assert cam.pixel_spacing_mm == (0.25, 0.3)
    np.testing.assert_allclose(cam.K[0, 0, 0].item(), 1100.5 / 0.25)
    np.testing.assert_allclose(cam.K[0, 1, 1].item(), 1100.5 / 0.3)
    assert pydicom.dcmread(str(path)).Modality == "DX"


def test_colour_and_geometry_errors_are_clear(tmp_path):
    grey = (np.random.default_rng(0).uniform(size=(H, W)) * 255).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "grey_rgb.png")
    img, _ = read_xray(tmp_path / "grey_rgb.png", sdd_mm=1000, pixel_spacing_mm=0.3)
    np.testing.assert_allclose(img, _normalised(grey.astype(float)), atol=1e-6)
    rgb = np.stack([grey, grey[::-1], grey], -1)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    with pytest.raises(InputError, match="photo.png: image is in colour"):
        read_xray(tmp_path / "photo.png", sdd_mm=1000, pixel_spacing_mm=0.3)
    with pytest.raises(InputError, match="grey_rgb.png: no X-ray geometry \\(sdd_mm, pixel_spacing_mm\\)"):
        read_xray(tmp_path / "grey_rgb.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "photo.png").read_bytes()[:200])
    with pytest.raises(InputError, match="cut.png: cannot read image"):
        read_xray(tmp_path / "cut.png", sdd_mm=1000, pixel_spacing_mm=0.3)
    with pytest.raises(InputError, match="removes the whole"):
        read_xray(tmp_path / "grey_rgb.png", sdd_mm=1000, pixel_spacing_mm=0.3, crop_border_px=40)
    nan = np.ones((H, W), np.float32)
    nan[3, 4] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", nan)
    with pytest.raises(InputError, match="nan.tif: image holds 1 NaN"):
        read_xray(tmp_path / "nan.tif", sdd_mm=1000, pixel_spacing_mm=0.3)
    tifffile.imwrite(tmp_path / "flat.tif", np.ones((H, W), np.float32))
    with pytest.raises(InputError, match="flat.tif: image is constant"):
        read_xray(tmp_path / "flat.tif", sdd_mm=1000, pixel_spacing_mm=0.3)
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(InputError, match="bad.json: geometry sidecar is not valid JSON"):
        read_xray(tmp_path / "grey_rgb.png", sidecar=tmp_path / "bad.json")
    with pytest.raises(InputError, match="x.bmp.*unknown image format|no such image"):
        read_xray(tmp_path / "x.bmp", sdd_mm=1000, pixel_spacing_mm=0.3)


def test_camera_json_is_a_valid_sidecar(tmp_path):
    write_image(tmp_path / "x.png", _normalised(_line_integrals()))
    pose = np.eye(4)
    pose[:3, 3] = (1.0, 2.0, 900.0)
    Camera.from_detector(1000.0, (0.4, 0.5), H, W, world_to_cam=pose).save(tmp_path / "x.png.json")
    _, cam = read_xray(tmp_path / "x.png")
    np.testing.assert_allclose(cam.world_to_cam[0].numpy(), pose)
    np.testing.assert_allclose(cam.K[0, 0, 0].item(), 2500.0)
    Camera.from_detector(1000.0, 0.4, H + 1, W).save(tmp_path / "x.png.json")
    with pytest.raises(InputError, match="x.png.json: sidecar describes a 61x80 image but the file is 60x80"):
        read_xray(tmp_path / "x.png")
