import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from xrecon.anatomy.ct_io import check_same_grid, read_ct, read_labels, write_volume
from xrecon.anatomy.volume import Volume
from xrecon.errors import InputError


def _affine():
    # oblique, flipped axis: a rotation about z by 30 deg times spacing, det < 0
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, -1.0]])
    A = np.eye(4)
    A[:3, :3] = R * np.array([0.8, 0.9, 2.0])
    A[:3, 3] = (12.0, -40.0, 100.0)
    return A


def _save_nifti(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))


def test_nifti_round_trip_keeps_hu_and_affine(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 2000, size=(7, 6, 5)).astype(np.int16)
    _save_nifti(tmp_path / "ct.nii.gz", data, _affine())
    vol = read_ct(tmp_path / "ct.nii.gz")
    assert vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_allclose(vol.voxel_to_world, _affine(), atol=1e-5)


def test_sitk_file_is_converted_from_lps_to_ras(tmp_path):
    data_kji = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    img = sitk.GetImageFromArray(data_kji)  # size (i, j, k) = (7, 6, 5)
    img.SetSpacing((0.7, 0.8, 2.5))
    img.SetOrigin((10.0, -20.0, 30.0))
    img.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    for suffix in (".nrrd", ".mha"):
        sitk.WriteImage(img, str(tmp_path / f"ct{suffix}"))
        vol = read_ct(tmp_path / f"ct{suffix}")
        assert vol.shape == (7, 6, 5)
        for ijk in [(0, 0, 0), (6, 5, 4), (3, 1, 2)]:
            lps = np.array(img.TransformIndexToPhysicalPoint(ijk))
            ras = lps * np.array([-1, -1, 1])
            np.testing.assert_allclose(vol.voxel_to_world_points(np.array([ijk]))[0], ras, atol=1e-6)
            assert vol.data[ijk] == data_kji[ijk[2], ijk[1], ijk[0]]


def test_write_volume_round_trips_through_every_format(tmp_path):
    vol = Volume(np.random.default_rng(1).normal(size=(6, 5, 4)).astype(np.float32), _affine())
    for name in ("v.nii.gz", "v.nrrd", "v.mha"):
        write_volume(tmp_path / name, vol)
        back = read_ct(tmp_path / name)
        np.testing.assert_allclose(back.data, vol.data)
        np.testing.assert_allclose(back.voxel_to_world, vol.voxel_to_world, atol=1e-5)


def test_truncated_nifti_is_rejected_naming_the_file(tmp_path):
    data = np.zeros((30, 30, 30), np.int16)
    _save_nifti(tmp_path / "ct.nii.gz", data, np.eye(4))
    raw = (tmp_path / "ct.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="cut.nii.gz.*truncated"):
        read_ct(tmp_path / "cut.nii.gz")
    # an uncompressed file cut short
    (tmp_path / "cut.nii").write_bytes(gzip.decompress(raw)[:5000])
    with pytest.raises(InputError, match="cut.nii"):
        read_ct(tmp_path / "cut.nii")


def test_2d_images_and_unknown_formats_are_rejected(tmp_path):
    _save_nifti(tmp_path / "flat.nii.gz", np.zeros((64, 64, 1), np.int16), np.eye(4))
    with pytest.raises(InputError, match="flat.nii.gz.*2D"):
        read_ct(tmp_path / "flat.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.uint8)), str(tmp_path / "xray.mha"))
    with pytest.raises(InputError, match="xray.mha.*2D"):
        read_ct(tmp_path / "xray.mha")
    (tmp_path / "xray.png").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(InputError, match="xray.png: unknown volume format"):
        read_ct(tmp_path / "xray.png")
    with pytest.raises(InputError, match="missing.nii.gz: no such file"):
        read_ct(tmp_path / "missing.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM series"):
        read_ct(tmp_path / "empty")


def test_nan_voxels_are_rejected(tmp_path):
    data = np.zeros((5, 5, 5), np.float32)
    data[1, 2, 3] = np.nan
    _save_nifti(tmp_path / "nan.nii.gz", data, np.eye(4))
    with pytest.raises(InputError, match=r"nan.nii.gz: volume holds 1 NaN/inf voxel\(s\) \(first at index \(1, 2, 3\)\)"):
        read_ct(tmp_path / "nan.nii.gz")


def test_nifti_without_a_known_spacing_is_refused_and_without_orientation_warned(tmp_path, caplog):
    data = np.zeros((5, 6, 4), np.int16)
    # neither qform nor sform: the standard's fall-back, pixdim spacing, no orientation -> read, with a warning
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(data.shape)
    hdr.set_zooms((0.7, 0.8, 2.5))
    img = nib.Nifti1Image(data, None, hdr)
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    nib.save(img, str(tmp_path / "noform.nii.gz"))
    with caplog.at_level("WARNING", logger="xrecon.anatomy.ct_io"):
        vol = read_ct(tmp_path / "noform.nii.gz")
    np.testing.assert_allclose(vol.spacing_mm, [0.7, 0.8, 2.5], atol=1e-6)
    assert "noform.nii.gz: NIfTI has neither qform nor sform" in caplog.text
    # a zero spacing and no sform: nibabel would read 1 mm -> refused
    zero = nib.Nifti1Image(data, np.eye(4))
    zero.header["pixdim"][1:4] = 0
    zero.set_qform(None, code=0)
    zero.set_sform(None, code=0)
    nib.save(zero, str(tmp_path / "zero.nii.gz"))
    with pytest.raises(InputError, match=r"zero.nii.gz: NIfTI header gives voxel spacing pixdim\[1:4\] = \(0.0, 0.0, 0.0\)"):
        read_ct(tmp_path / "zero.nii.gz")
    # an ordinary file (sform) reads without a warning
    caplog.clear()
    _save_nifti(tmp_path / "ct.nii.gz", data, _affine())
    with caplog.at_level("WARNING", logger="xrecon.anatomy.ct_io"):
        read_ct(tmp_path / "ct.nii.gz")
    assert caplog.text == ""


def test_nrrd_and_metaimage_without_spacing_are_read_as_1mm_with_a_warning(tmp_path, caplog):
    raw = np.arange(5 * 6 * 4, dtype=np.int16).tobytes()
    (tmp_path / "bare.nrrd").write_bytes(
        b"NRRD0004\ntype: short\ndimension: 3\nsizes: 5 6 4\nendian: little\nencoding: raw\n\n" + raw)
    (tmp_path / "bare.mha").write_bytes(
        b"ObjectType = Image\nNDims = 3\nDimSize = 5 6 4\nElementType = MET_SHORT\nElementDataFile = LOCAL\n" + raw)
    for name in ("bare.nrrd", "bare.mha"):
        caplog.clear()
        with caplog.at_level("WARNING", logger="xrecon.anatomy.ct_io"):
            vol = read_ct(tmp_path / name)
        np.testing.assert_allclose(vol.spacing_mm, 1.0)
        assert f"{name}: the header gives no voxel spacing" in caplog.text
    (tmp_path / "spaced.nrrd").write_bytes(
        b"NRRD0004\ntype: short\ndimension: 3\nsizes: 5 6 4\nspacings: 0.7 0.8 2.5\nendian: little\nencoding: raw\n\n" + raw)
    caplog.clear()
    with caplog.at_level("WARNING", logger="xrecon.anatomy.ct_io"):
        vol = read_ct(tmp_path / "spaced.nrrd")
    np.testing.assert_allclose(vol.spacing_mm, [0.7, 0.8, 2.5])
    assert caplog.text == ""


def test_labels_must_be_integers_on_the_ct_grid(tmp_path):
    ct = Volume(np.zeros((6, 5, 4), np.float32), _affine(), "ct.nii.gz")
    lab = np.zeros((6, 5, 4), np.uint8)
    lab[2:4, 1:3, 1:3] = 7
    _save_nifti(tmp_path / "lab.nii.gz", lab, _affine())
    out = read_labels(tmp_path / "lab.nii.gz", like=ct, names={7: "bone"})
    assert out.label_names == {7: "bone"} and np.issubdtype(out.data.dtype, np.integer)
    assert (out.data == 7).sum() == 8
    shifted = _affine()
    shifted[0, 3] += 0.5
    _save_nifti(tmp_path / "shifted.nii.gz", lab, shifted)
    with pytest.raises(InputError, match="shifted.nii.gz: label map affine differs"):
        read_labels(tmp_path / "shifted.nii.gz", like=ct)
    with pytest.raises(InputError, match="shape"):
        check_same_grid(Volume(np.zeros((6, 5, 3), np.int32), _affine(), "l"), ct)
    _save_nifti(tmp_path / "float.nii.gz", np.full((6, 5, 4), 0.5, np.float32), _affine())
    with pytest.raises(InputError, match="non-integer"):
        read_labels(tmp_path / "float.nii.gz")


def test_default_ct_and_labels(default_ct):
    ct, labels = default_ct
    assert ct.shape == (512, 512, 133) and ct.data.dtype == np.float32
    np.testing.assert_allclose(ct.spacing_mm, [0.703125, 0.703125, 2.5], atol=1e-4)
    assert ct.voxel_to_world[0, 0] < 0  # stored L-A-S: i runs toward patient right, kept as is
    np.testing.assert_array_equal(labels.voxel_to_world, ct.voxel_to_world)
    assert labels.label_names[37] == "vertebrae_T7"
    assert 37 in np.unique(labels.data[::4, ::4, ::2])
    # vertebrae are bone: their median HU is well above soft tissue
    assert np.median(ct.data[labels.data == 37]) > 150
