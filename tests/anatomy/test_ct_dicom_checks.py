"""A DICOM CT that does not say where its voxels are is refused, never read as 1 mm.

The series and multi-frame files are written here with pydicom, tag by tag, so
each test controls exactly which geometry tags exist.
"""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from xrecon.anatomy.ct_io import read_ct
from xrecon.errors import InputError

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2.1"

ROWS, COLS = 6, 5
ROW_SPACING, COL_SPACING, SLICE_MM = 0.7, 0.8, 2.5  # PixelSpacing is (row, column) spacing
ORIGIN_LPS = (10.0, -20.0, 30.0)


def _dataset(sop_class: str, study: str, series: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid
    ds.Modality, ds.PatientName, ds.PatientID = "CT", "Test", "0"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Rows, ds.Columns = ROWS, COLS
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    return ds


def _write_series(folder, n=4, omit=(), omit_in=None, z_mm=None):
    """A CT series of ``n`` axial slices; ``omit`` tags are left out of every
    slice, or only of slice ``omit_in``; ``z_mm`` overrides the slice positions."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    z_mm = [ORIGIN_LPS[2] + k * SLICE_MM for k in range(n)] if z_mm is None else z_mm
    for k, z in enumerate(z_mm):
        ds = _dataset(CT_IMAGE, study, series)
        ds.InstanceNumber = k + 1
        ds.SliceThickness = SLICE_MM
        drop = omit if omit_in is None or omit_in == k else ()
        if "PixelSpacing" not in drop:
            ds.PixelSpacing = [ROW_SPACING, COL_SPACING]
        if "ImageOrientationPatient" not in drop:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        if "ImagePositionPatient" not in drop:
            ds.ImagePositionPatient = [ORIGIN_LPS[0], ORIGIN_LPS[1], z]
        ds.PixelData = (np.arange(ROWS * COLS, dtype=np.int16).reshape(ROWS, COLS) + 100 * k).tobytes()
        pydicom.dcmwrite(str(folder / f"s{k:03d}.dcm"), ds, enforce_file_format=True)
    return folder


def _item(**values) -> Dataset:
    d = Dataset()
    for k, v in values.items():
        setattr(d, k, v)
    return d


def _write_multiframe(path, n=4, per_frame_positions=True, shared_groups=True):
    """One enhanced CT file holding ``n`` frames, positions per frame; spacing
    and orientation in the shared functional groups (or, with
    ``shared_groups=False``, at the top level, where SimpleITK does not look)."""
    ds = _dataset(ENHANCED_CT_IMAGE, generate_uid(), generate_uid())
    ds.NumberOfFrames = n
    if shared_groups:
        shared = Dataset()
        shared.PixelMeasuresSequence = Sequence([_item(PixelSpacing=[ROW_SPACING, COL_SPACING], SliceThickness=SLICE_MM)])
        shared.PlaneOrientationSequence = Sequence([_item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
    else:
        ds.PixelSpacing, ds.ImageOrientationPatient = [ROW_SPACING, COL_SPACING], [1, 0, 0, 0, 1, 0]
    frames = []
    for k in range(n):
        f = Dataset()
        if per_frame_positions:
            pos = [ORIGIN_LPS[0], ORIGIN_LPS[1], ORIGIN_LPS[2] + k * SLICE_MM]
            f.PlanePositionSequence = Sequence([_item(ImagePositionPatient=pos)])
        frames.append(f)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.arange(n * ROWS * COLS, dtype=np.int16).tobytes()
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    return path


def _expected_affine_ras():
    A = np.diag([-COL_SPACING, -ROW_SPACING, SLICE_MM, 1.0])  # axial LPS slices, seen in RAS+
    A[:3, 3] = (-ORIGIN_LPS[0], -ORIGIN_LPS[1], ORIGIN_LPS[2])
    return A


def test_a_complete_series_is_read_with_its_spacing(tmp_path):
    vol = read_ct(_write_series(tmp_path / "ct"))
    assert vol.shape == (COLS, ROWS, 4)
    np.testing.assert_allclose(vol.voxel_to_world, _expected_affine_ras(), atol=1e-6)


@pytest.mark.parametrize("tag", ["PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient"])
def test_a_series_without_a_geometry_tag_is_refused_naming_it(tmp_path, tag):
    folder = _write_series(tmp_path / "ct", omit=(tag,))
    with pytest.raises(InputError, match=rf"ct: DICOM series .* lacks .*{tag} \(.*\) in every slice \(first: s000.dcm\)"):
        read_ct(folder)


def test_every_missing_tag_is_named_with_the_first_slice_lacking_it(tmp_path):
    folder = _write_series(tmp_path / "ct", omit=("PixelSpacing", "ImagePositionPatient"), omit_in=2)
    with pytest.raises(InputError) as info:
        read_ct(folder)
    msg = str(info.value)
    assert "PixelSpacing (0028,0030) in 1 of 4 slices (first: s002.dcm)" in msg
    assert "ImagePositionPatient (0020,0032) in 1 of 4 slices (first: s002.dcm)" in msg
    assert "ImageOrientationPatient" not in msg and "1 mm" in msg


def test_slices_sharing_a_position_or_missing_are_refused(tmp_path):
    z0 = ORIGIN_LPS[2]
    with pytest.raises(InputError, match="share a position"):
        read_ct(_write_series(tmp_path / "same", z_mm=[z0, z0 + 2.5, z0 + 2.5, z0 + 5.0]))
    with pytest.raises(InputError, match=r"spacing between slices varies from 2.5 to 5 mm \(missing slices\?\)"):
        read_ct(_write_series(tmp_path / "gap", z_mm=[z0, z0 + 2.5, z0 + 7.5, z0 + 10.0]))


def test_a_multiframe_file_is_read_only_with_its_geometry(tmp_path):
    vol = read_ct(_write_multiframe(tmp_path / "enhanced.dcm"))
    np.testing.assert_allclose(vol.voxel_to_world, _expected_affine_ras(), atol=1e-6)
    with pytest.raises(InputError, match=r"enhanced_nopos.dcm: DICOM file lacks .*ImagePositionPatient .* in every frame"):
        read_ct(_write_multiframe(tmp_path / "enhanced_nopos.dcm", per_frame_positions=False))


def test_a_multiframe_file_whose_tags_simpleitk_ignores_is_refused(tmp_path):
    # the tags are all there, but SimpleITK reads 1 mm voxels: it looks for the
    # spacing of an enhanced CT only in the functional groups
    path = _write_multiframe(tmp_path / "top.dcm", shared_groups=False)
    with pytest.raises(InputError, match=r"top.dcm: SimpleITK reads this DICOM's grid as spacing \(1.0, 1.0, 1.0\)"):
        read_ct(path)
