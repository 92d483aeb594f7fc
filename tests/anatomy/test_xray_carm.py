"""C-arm poses read with the X-ray (case b of several views): the DICOM positioner tags
and the camera JSON's angle fields give each view's world_to_cam in the isocentre frame
(xrecon.geometry.carm); malformed or partial ones are refused naming the tag or field;
api.load_views checks that every view's pose is in one frame."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from xrecon import api
from xrecon.anatomy.xray_io import read_geometry, read_xray
from xrecon.errors import InputError
from xrecon.geometry.carm import carm_world_to_cam

H, W = 40, 48


def write_dicom(path, primary=None, secondary=None, sod=None, size=(H, W), **tags):
    """A one-frame 16-bit XA DICOM (noise) with its detector tags and the given positioner tags."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality = "XA"
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.DistanceSourceToDetector = "1020"
    ds.ImagerPixelSpacing = ["0.5", "0.5"]
    for keyword, value in (("PositionerPrimaryAngle", primary), ("PositionerSecondaryAngle", secondary),
                           ("DistanceSourceToPatient", sod)):
        if value is not None:
            setattr(ds, keyword, str(value))
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = np.random.default_rng(0).integers(0, 60000, size).astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_dicom_positioner_tags_give_the_isocentre_pose(tmp_path):
    path = write_dicom(tmp_path / "v.dcm", 30, -10, 765)
    geo = read_geometry(path)
    assert geo["pose_kind"] == "carm" and geo["pose_source"] == path
    _, cam = read_xray(path)
    np.testing.assert_allclose(cam.world_to_cam[0].numpy(), carm_world_to_cam(30, -10, 765), atol=1e-12)
    # the isocentre projects to the principal point
    uv = cam.project(np.zeros((1, 3)))[0][0, 0].numpy()
    np.testing.assert_allclose(uv, [(W - 1) / 2, (H - 1) / 2], atol=1e-9)


def test_a_sidecar_pose_wins_over_the_tags(tmp_path):
    path = write_dicom(tmp_path / "v.dcm", 30, -10, 765)
    T = carm_world_to_cam(-20, 0, 700)
    (tmp_path / "v.json").write_text(json.dumps({"world_to_cam": T.tolist()}))
    assert read_geometry(path)["pose_kind"] == "world_to_cam"
    np.testing.assert_allclose(read_xray(path)[1].world_to_cam[0].numpy(), T, atol=1e-12)
    (tmp_path / "v.json").write_text(json.dumps({"primary_angle_deg": 45, "secondary_angle_deg": 5,
                                                 "source_to_isocentre_mm": 800}))
    np.testing.assert_allclose(read_xray(path)[1].world_to_cam[0].numpy(), carm_world_to_cam(45, 5, 800),
                               atol=1e-12)


def test_partial_or_malformed_positioner_tags_give_no_pose_and_say_why(tmp_path):
    path = write_dicom(tmp_path / "p.dcm", 30, None, 765)
    geo = read_geometry(path)
    assert geo["pose_kind"] is None and "PositionerSecondaryAngle (0018,1511)" in geo["pose_problem"]
    np.testing.assert_allclose(read_xray(path)[1].world_to_cam[0].numpy(), np.eye(4))  # one view needs no pose
    other = write_dicom(tmp_path / "q.dcm", 60, 0, 765)
    with pytest.raises(InputError, match=r"p\.dcm.*no pose in a shared frame.*PositionerSecondaryAngle"):
        api.load_views([path, other])
    bad = write_dicom(tmp_path / "b.dcm", 30, 0, 1500)  # isocentre beyond the detector
    with pytest.raises(InputError, match="source-to-isocentre distance"):
        read_xray(bad)


@pytest.mark.parametrize("fields, word", [
    ({"primary_angle_deg": 10, "secondary_angle_deg": 0}, "source_to_isocentre_mm' is missing"),
    ({"primary_angle_deg": 10, "secondary_angle_deg": 0, "source_to_isocentre_mm": 765,
      "world_to_cam": np.eye(4).tolist()}, "both given"),
    ({"primary_angle_deg": "LAO 10", "secondary_angle_deg": 0, "source_to_isocentre_mm": 765}, "must be a number"),
    ({"primary_angle_deg": 10, "secondary_angle_deg": 120, "source_to_isocentre_mm": 765}, r"\[-90, 90\]"),
    ({"primary_angle_deg": 10, "secondary_angle_deg": 0, "source_to_isocentre_mm": 1100, "sdd_mm": 1020},
     "below sdd_mm"),
])
def test_camera_json_angles_are_checked_naming_the_field(tmp_path, fields, word):
    path = write_dicom(tmp_path / "v.dcm")
    (tmp_path / "cam.json").write_text(json.dumps(fields))
    with pytest.raises(InputError, match=word) as err:
        read_xray(path, sidecar=tmp_path / "cam.json")
    assert "cam.json" in str(err.value)


def test_load_views_in_the_isocentre_frame(tmp_path):
    """Two views 90 deg apart from their tags: the isocentre projects to the principal point
    in both, and their frame is the isocentre's."""
    paths = [write_dicom(tmp_path / "ap.dcm", 0, 0, 765), write_dicom(tmp_path / "lat.dcm", 90, 0, 765)]
    imgs, cams = api.load_views(paths)
    for cam, primary in zip(cams, (0, 90)):
        np.testing.assert_allclose(cam.world_to_cam[0].numpy(), carm_world_to_cam(primary, 0, 765), atol=1e-12)
        np.testing.assert_allclose(cam.project(np.zeros((1, 3)))[0][0, 0].numpy(), [(W - 1) / 2, (H - 1) / 2],
                                   atol=1e-9)
    assert api.views_frame(paths) == "isocentre"
    # two shots at the same angles are one pose twice
    with pytest.raises(InputError, match="same world_to_cam"):
        api.load_views([paths[0], write_dicom(tmp_path / "ap2.dcm", 0, 0, 765)])


def test_frames_that_disagree_are_refused_and_independent_views_ignore_poses(tmp_path):
    dcm = write_dicom(tmp_path / "a.dcm", 0, 0, 765)
    other = write_dicom(tmp_path / "b.dcm", size=(H + 8, W))
    (tmp_path / "b.json").write_text(json.dumps({"world_to_cam": carm_world_to_cam(40, 0, 765).tolist()}))
    with pytest.raises(InputError, match=r"b\.json: the views' frames disagree.*C-arm angles.*--independent-views"):
        api.load_views([dcm, other])
    imgs, cams = api.load_views([dcm, other], independent_views=True)  # sizes may differ, poses are dropped
    assert [i.shape for i in imgs] == [(H, W), (H + 8, W)]
    for cam in cams:
        np.testing.assert_allclose(cam.world_to_cam[0].numpy(), np.eye(4))
    assert api.views_frame([dcm, other], independent_views=True) == "none"
    (tmp_path / "b.json").unlink()
    with pytest.raises(InputError, match=r"b\.dcm: X-ray gives no pose in a shared frame.*--independent-views"):
        api.load_views([dcm, other])
