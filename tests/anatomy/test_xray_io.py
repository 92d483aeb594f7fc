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
    path = _write_dicom(tmp_path / "xray.dcm", np.round((1 - mu) * 60000), DistanceSourceToDetector="1100.5",
                        ImagerPixelSpacing=[0.3, 0.25],  # row, column
                        PhotometricInterpretation="MONOCHROME1")  # low values display bright
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
    with pytest.raises(InputError, match="bad.json: camera JSON is not valid JSON"):
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
    with pytest.raises(InputError, match="x.png.json: camera JSON describes a 61x80 image but the image file is 60x80"):
        read_xray(tmp_path / "x.png")


# ---------------------------------------------------------------------- input boundary
def _write_dicom(path, pixels: np.ndarray, **tags):
    """A one-frame 16-bit DX DICOM of ``pixels`` (uint16) with the given tags."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality = "DX"
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_single_valued_dicom_spacing_is_read_as_square_pixels_with_a_note(tmp_path):
    from xrecon.anatomy.xray_io import read_xray_report

    px = np.round(_normalised(_line_integrals()) * 60000).astype(np.uint16)
    path = _write_dicom(tmp_path / "one.dcm", px, DistanceSourceToDetector="1100", ImagerPixelSpacing="0.3")
    reading = read_xray_report(path)
    assert reading.camera.pixel_spacing_mm == (0.3, 0.3) and reading.calibrated
    assert any("ImagerPixelSpacing (0018,1164) holds one value (0.3)" in n and "square pixels" in n
               for n in reading.notes)
    # the argument (CLI --pixel-spacing) or a sidecar overrides the tag
    _, cam = read_xray(path, pixel_spacing_mm=0.25)
    assert cam.pixel_spacing_mm == (0.25, 0.25)
    (tmp_path / "one.json").write_text(json.dumps({"pixel_spacing_mm": [0.25, 0.3]}))
    _, cam = read_xray(path)
    assert cam.pixel_spacing_mm == (0.25, 0.3) and float(cam.sdd_mm[0]) == pytest.approx(1100.0)
    # a two-valued PixelSpacing (as the standard has it) wins over a one-valued ImagerPixelSpacing
    path = _write_dicom(tmp_path / "both.dcm", px, DistanceSourceToDetector="1100", ImagerPixelSpacing="0.3",
                        PixelSpacing=["0.2", "0.1"])
    assert read_xray(path)[1].pixel_spacing_mm == (0.1, 0.2)
    # a negative distance or spacing is a malformed tag, refused naming it
    path = _write_dicom(tmp_path / "two.dcm", px, DistanceSourceToDetector="-5", PixelSpacing=["0.2", "0.2"])
    with pytest.raises(InputError, match=r"two.dcm: DICOM tag DistanceSourceToDetector \(0018,1110\)"):
        read_xray(path)
    path = _write_dicom(tmp_path / "three.dcm", px, DistanceSourceToDetector="1000", PixelSpacing=["-0.2", "0.2"])
    with pytest.raises(InputError, match=r"three.dcm: DICOM tag PixelSpacing \(0028,0030\) holds \[-0.2, 0.2\]"):
        read_xray(path)


def test_dicom_rescale_and_monochrome1_are_unchanged_bit_for_bit(tmp_path):
    # the rescale is applied after the (here absent) shrink: same numbers as
    # rescaling the whole stored image first, as read_xray always did
    raw = (np.random.default_rng(1).random((H, W)) * 4000).astype(np.uint16)
    path = _write_dicom(tmp_path / "m1.dcm", raw, DistanceSourceToDetector="1000", ImagerPixelSpacing=["0.2", "0.2"],
                        RescaleSlope="0.37", RescaleIntercept="-1024", PhotometricInterpretation="MONOCHROME1")
    img, _ = read_xray(path, crop_border_px=(2, 3, 4, 5), flip_horizontal=True)
    full = raw.astype(np.float64) * 0.37 - 1024
    ref = (full.max() - full)[2:-3, 4:-5][:, ::-1]
    ref = ((ref - ref.min()) / (ref.max() - ref.min())).astype(np.float32)
    assert np.array_equal(img, ref)


def test_images_over_the_pixel_cap_are_refused_before_decoding(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    import xrecon.anatomy.xray_io as xio

    img = _normalised(_line_integrals())
    write_image(tmp_path / "big.png", img)
    tifffile.imwrite(tmp_path / "big.tif", img.astype(np.float32))
    _write_dicom(tmp_path / "big.dcm", np.round(img * 1000).astype(np.uint16), DistanceSourceToDetector="1000",
                 ImagerPixelSpacing=["0.2", "0.2"])
    pil_limit = PILImage.MAX_IMAGE_PIXELS
    # 4000: over our cap (our check, or PIL's warning turned into an error); 2000: PIL's own error
    for cap in (4000, 3000, 2000):
        monkeypatch.setattr(xio, "MAX_PIXELS", cap)
        for name in ("big.png", "big.tif", "big.dcm"):
            with pytest.raises(InputError, match=f"{name}: .*limit of 0 M"):
                read_xray(tmp_path / name, sdd_mm=1000, pixel_spacing_mm=0.3)
    assert PILImage.MAX_IMAGE_PIXELS == pil_limit  # PIL's global is left as it was
    monkeypatch.setattr(xio, "MAX_PIXELS", H * W)
    for name in ("big.png", "big.tif", "big.dcm"):
        assert read_xray(tmp_path / name, sdd_mm=1000, pixel_spacing_mm=0.3)[0].shape == (H, W)


def test_large_images_are_shrunk_with_their_camera(tmp_path):
    # a bright square around the projection of a world point, on a 300 x 200 image;
    # read with max_side=64 the square and the new camera's projection still agree
    Hb, Wb = 200, 300
    pose = np.eye(4)
    pose[:3, 3] = (5.0, -3.0, 700.0)
    cam_big = Camera.from_detector(1000.0, (0.31, 0.29), Hb, Wb, world_to_cam=pose, principal_offset_mm=(2.0, -1.5))
    X = np.array([[-10.0, 6.0, 40.0]])
    u, v = cam_big.project(X)[0][0, 0].numpy()
    stored = np.full((Hb, Wb), 0.1)
    stored[int(round(v)) - 12 : int(round(v)) + 13, int(round(u)) - 12 : int(round(u)) + 13] = 0.9
    write_image(tmp_path / "big.png", stored)
    cam_big.save(tmp_path / "big.json")
    img, cam = read_xray(tmp_path / "big.png", max_side=64)
    assert img.shape == (43, 64) and (cam.height, cam.width) == (43, 64)
    uv_small = cam.project(X)[0][0, 0].numpy()
    scale = np.array([64 / Wb, 43 / Hb])
    # the original projection, scaled, lands where the shrunk camera projects (< 0.5 px)
    assert np.abs((np.array([u, v]) + 0.5) * scale - 0.5 - uv_small).max() < 0.5
    # and the square's intensity centroid in the shrunk image is there too
    w8 = np.clip(img - np.median(img), 0, None)
    vv, uu = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    centroid = np.array([(w8 * uu).sum(), (w8 * vv).sum()]) / w8.sum()
    square_centre = (np.array([round(u), round(v)]) + 0.5) * scale - 0.5
    assert np.abs(centroid - square_centre).max() < 0.5
    # area averaging: an integer factor gives exact block means
    from xrecon.anatomy.xray_io import _area_downsample

    raw = np.random.default_rng(2).integers(0, 65535, (400, 240)).astype(np.uint16)
    blocks = raw.astype(np.float64).reshape(50, 8, 30, 8).mean(axis=(1, 3))
    np.testing.assert_allclose(_area_downsample(raw, 50, 30), blocks, rtol=0, atol=1e-9)
    np.testing.assert_allclose(_area_downsample(raw[::-1], 50, 30), blocks[::-1], rtol=0, atol=1e-9)


def test_images_within_the_working_size_are_bit_identical(tmp_path):
    write_image(tmp_path / "x.png", _normalised(_line_integrals()))
    a, cam_a = read_xray(tmp_path / "x.png", sdd_mm=1000.0, pixel_spacing_mm=0.5)
    b, cam_b = read_xray(tmp_path / "x.png", sdd_mm=1000.0, pixel_spacing_mm=0.5, max_side=None)
    c, cam_c = read_xray(tmp_path / "x.png", sdd_mm=1000.0, pixel_spacing_mm=0.5, max_side=max(H, W))
    assert np.array_equal(a, b) and np.array_equal(a, c)
    assert torch_equal(cam_a.K, cam_b.K) and torch_equal(cam_a.K, cam_c.K)
    d, _ = read_xray(tmp_path / "x.png", sdd_mm=1000.0, pixel_spacing_mm=0.5, max_side=W - 1)
    assert d.shape != (H, W)


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_geometry_errors_name_the_json_they_concern(tmp_path):
    write_image(tmp_path / "x.png", _normalised(_line_integrals()))
    # a camera file given explicitly (CLI --camera) that lacks sdd_mm: named, with advice that fits
    (tmp_path / "cam.json").write_text(json.dumps({"pixel_spacing_mm": 0.3}))
    with pytest.raises(InputError) as info:
        read_xray(tmp_path / "x.png", sidecar=tmp_path / "cam.json")
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'cam.json'}: camera file gives no 'sdd_mm' (or 'K')"), msg
    assert "write a sidecar" not in msg
    # the image's own sidecar, found automatically, that lacks the spacing
    (tmp_path / "x.json").write_text(json.dumps({"sdd_mm": 1000}))
    with pytest.raises(InputError, match=r"x.json: geometry sidecar of x.png gives no 'pixel_spacing_mm': add it"):
        read_xray(tmp_path / "x.png")
    _, cam = read_xray(tmp_path / "x.png", pixel_spacing_mm=0.3)  # the argument completes it
    assert float(cam.sdd_mm[0]) == pytest.approx(1000.0)
    # bad arguments are refused without blaming a file
    with pytest.raises(InputError, match="^sdd_mm must be a positive number"):
        read_xray(tmp_path / "x.png", sdd_mm=-3, pixel_spacing_mm=0.3)
    with pytest.raises(InputError, match="^pixel_spacing_mm must be one number dx or two"):
        read_xray(tmp_path / "x.png", sdd_mm=1000, pixel_spacing_mm=(0.3, 0.3, 0.3))


def test_a_camera_object_is_scaled_with_a_shrunk_image(tmp_path):
    from xrecon.api import load_xray

    write_image(tmp_path / "x.png", _normalised(_line_integrals()))
    cam = Camera.from_detector(1000.0, 0.5, H, W)
    img, got = load_xray(tmp_path / "x.png", cam)
    assert img.shape == (H, W) and torch_equal(got.K, cam.K)
    img, got = read_xray(tmp_path / "x.png", camera=cam, max_side=40)
    assert img.shape == (30, 40)
    assert torch_equal(got.K, cam.resized(30, 40).K)
    with pytest.raises(InputError, match="x.png: the camera given describes a 61x80 image"):
        read_xray(tmp_path / "x.png", camera=Camera.from_detector(1000.0, 0.5, H + 1, W))


def test_a_sidecar_k_dropped_by_an_argument_is_explained(tmp_path):
    write_image(tmp_path / "x.png", _normalised(_line_integrals()))
    (tmp_path / "x.json").write_text(json.dumps({"K": [[900, 0, 39.5], [0, 900, 29.5], [0, 0, 1]]}))
    with pytest.raises(InputError, match=r"x.json: .*no 'sdd_mm' \(or 'K'\) \(its 'K' is not used once"):
        read_xray(tmp_path / "x.png", pixel_spacing_mm=0.3)
