"""C-arm positioner angles to world_to_cam about the isocentre (xrecon.geometry.carm):
known answers, and the simulator's own C-arm poses expressed in the DICOM angles."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xrecon.errors import InputError
from xrecon.geometry import Camera
from xrecon.geometry.carm import CArmAngles, carm_world_to_cam, detector_direction

SOD, SDD = 765.0, 1020.0


def camera(primary, secondary, sod=SOD) -> Camera:
    return Camera.from_detector(SDD, 0.5, 101, 121, torch.as_tensor(carm_world_to_cam(primary, secondary, sod)))


def project(cam: Camera, x) -> np.ndarray:
    return cam.project(torch.as_tensor(np.atleast_2d(x), dtype=torch.float64))[0][0].numpy()


@pytest.mark.parametrize("primary, secondary", [(0, 0), (90, 0), (-90, 0), (30, 20), (-135, -40), (180, 0)])
def test_a_rigid_pose_with_the_isocentre_on_the_principal_ray(primary, secondary):
    T = carm_world_to_cam(primary, secondary, SOD)
    R = T[:3, :3]
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    cam = camera(primary, secondary)
    np.testing.assert_allclose(project(cam, [0.0, 0.0, 0.0])[0], [60.0, 50.0], atol=1e-9)  # principal point
    # the source sits source_to_isocentre_mm from the isocentre, opposite the detector
    source = -R.T @ T[:3, 3]
    np.testing.assert_allclose(source, -SOD * detector_direction(primary, secondary), atol=1e-9)


def test_two_views_90_deg_apart_both_see_the_isocentre_at_the_principal_point():
    for cam in (camera(0, 0), camera(90, 0)):
        np.testing.assert_allclose(project(cam, [0.0, 0.0, 0.0])[0], [60.0, 50.0], atol=1e-9)
    # their beams are perpendicular
    assert detector_direction(0, 0) @ detector_direction(90, 0) == pytest.approx(0.0, abs=1e-12)


def test_the_dicom_directions():
    """Primary 0: detector anterior (+y RAS), source posterior; LAO 90: detector at the
    patient's left (-x RAS); cranial 90: detector superior (+z)."""
    np.testing.assert_allclose(detector_direction(0, 0), [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(detector_direction(90, 0), [-1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(detector_direction(-90, 0), [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(detector_direction(0, 90), [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(detector_direction(0, 30), [0, np.cos(np.pi / 6), 0.5], atol=1e-12)


def test_image_axes_at_both_angles_zero():
    """Seen from the (posterior) source: patient right on the image right, superior up."""
    cam = camera(0, 0)
    right, up = project(cam, [20.0, 0.0, 0.0])[0], project(cam, [0.0, 0.0, 20.0])[0]
    assert right[0] > 60.0 + 1 and right[1] == pytest.approx(50.0)
    assert up[1] < 50.0 - 1 and up[0] == pytest.approx(60.0)
    # magnification SDD / SOD at the isocentre: 20 mm -> 20 * 1020 / 765 / 0.5 px
    assert right[0] - 60.0 == pytest.approx(20 * SDD / SOD / 0.5)


def test_a_point_on_the_primary_axis_projects_to_the_same_pixel_at_every_primary_angle():
    """The primary rotation is about the patient's long axis through the isocentre: a point
    on it stays put in every view (superior: above the principal point)."""
    p = [0.0, 0.0, 37.0]
    uv = np.array([project(camera(a, 0), p)[0] for a in (-120, -45, 0, 30, 90, 170)])
    np.testing.assert_allclose(uv, np.tile(uv[0], (len(uv), 1)), atol=1e-9)
    np.testing.assert_allclose(uv[0], [60.0, 50.0 - 37.0 * SDD / SOD / 0.5], atol=1e-9)
    # a point off the axis moves
    q = [25.0, 0.0, 0.0]
    assert np.ptp([project(camera(a, 0), q)[0][0] for a in (0, 45, 90)]) > 5


def test_the_simulators_c_arm_is_the_dicom_one_turned_half_way():
    """xrecon.sim.poses.carm_pose (lao_deg 0 = source anterior; cranial moves the source up) is
    this module's view at primary lao + 180, secondary -cranial."""
    from xrecon.sim.poses import carm_pose

    for lao, cran in [(0.0, 0.0), (30.0, 0.0), (-45.0, 10.0), (20.0, -15.0)]:
        sim = carm_pose(torch.zeros(1, 3), torch.tensor([lao]), torch.tensor([cran]), torch.zeros(1),
                        torch.tensor([SOD]))[0].numpy()
        primary = (lao + 180.0 + 180.0) % 360.0 - 180.0
        np.testing.assert_allclose(carm_world_to_cam(primary, -cran, SOD), sim, atol=1e-9)


def test_rays_of_two_c_arm_views_meet_at_the_point_they_see():
    """Round trip: points projected by two views 30 deg apart are recovered by intersecting
    the back-projected rays in the isocentre frame (xrecon.solve.multiview.triangulate_rays)."""
    from xrecon.solve.multiview import triangulate_rays

    pts = np.random.default_rng(0).uniform(-60, 60, (20, 3))
    cams = [camera(-15, 10), camera(15, -5)]
    for x in pts:
        origins, dirs = [], []
        for cam in cams:
            o, d = cam.rays_world(torch.as_tensor(project(cam, x)))
            origins.append(o.numpy().reshape(-1, 3)[0])
            dirs.append(d.numpy().reshape(-1, 3)[0])
        np.testing.assert_allclose(triangulate_rays(np.array(origins), np.array(dirs)), x, atol=1e-6)


@pytest.mark.parametrize("kwargs, word", [((200.0, 0.0, SOD), "primary_angle_deg"), ((0.0, 95.0, SOD), "secondary"),
                                          ((0.0, 0.0, -1.0), "source_to_isocentre_mm"),
                                          ((float("nan"), 0.0, SOD), "finite")])
def test_angles_out_of_range_are_refused(kwargs, word):
    with pytest.raises(InputError, match=word):
        CArmAngles(*kwargs)
