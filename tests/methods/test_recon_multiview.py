"""Several views of one bone, cameras in one shared world frame
(:mod:`xrecon.methods.recon.multiview`), on planted scenes: the pelvis model's
instance at a known world pose, seen by C-arm cameras at known angles, with the
exact correspondences a perfect network would give (the size the network
reports is wrong on purpose: only the second view can fix it)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from xrecon.geometry import Camera
from xrecon.methods.recon.data import model_to_world
from xrecon.methods.recon.multiview import combine_views, reconstruct_views, register_ct_views
from xrecon.methods.recon.pipeline import ReconConfig, reconstruct_from_prediction
from xrecon.methods.recon.predict import DensePrediction
from xrecon.methods.recon.shape import ShapeSpace
from xrecon.methods.recon.targets import view_targets
from xrecon.metrics.registration import mtre_mm
from xrecon.sim.poses import carm_pose

SIZE = 64
CFG = ReconConfig(residual=None, n_points=300)


@pytest.fixture(scope="module")
def scene():
    space = ShapeSpace.bundled("pelvis")
    b = np.zeros(space.n_modes)
    b[:4] = [0.6, -1.0, 0.7, 0.4]
    inst = space.instance(b)
    m2w = model_to_world(space)
    return space, b, inst, m2w, inst @ m2w[:3, :3].T + m2w[:3, 3]


def camera_at(lao_deg: float, isocentre=(10.0, -5.0, 8.0)) -> Camera:
    w2c = carm_pose(torch.tensor([isocentre]), torch.tensor([lao_deg]), torch.zeros(1), torch.zeros(1),
                    torch.tensor([765.0]))[0]
    return Camera.from_detector(1020.0, 300.0 / SIZE, SIZE, SIZE, w2c)


def oracle(space, vertices_world, cam, b_net) -> DensePrediction:
    """Exact canonical coordinates of every bone pixel of ``cam``'s view of the mesh."""
    tg = view_targets(space, vertices_world, cam)
    vs, us = np.nonzero(tg.mask)
    uv = np.stack([us, vs], 1).astype(np.float64)
    can = np.concatenate([tg.canonical[0][:, vs, us].T, tg.canonical[1][:, vs, us].T]).astype(np.float64)
    return DensePrediction(can, np.concatenate([uv, uv]), np.full(len(can), 1.0), np.repeat([0, 1], len(us)),
                           tg.mask.astype(float), b_net, cam)


@pytest.fixture(scope="module")
def views(scene):
    """Single-view reconstructions at LAO 0, 40 and 80 from exact correspondences, with
    the network's size wrong by +0.8 SD (the single views come out too large and too far)."""
    space, b, inst, m2w, vw = scene
    b_net = b.copy()
    b_net[0] += 0.8
    cams = [camera_at(a) for a in (0.0, 40.0, 80.0)]
    recs = [reconstruct_from_prediction(oracle(space, vw, c, b_net), space, c, CFG) for c in cams]
    assert all(r.success for r in recs)
    return cams, recs, b_net


def depth_error(vertices_world, truth_world, cam) -> float:
    W = cam.world_to_cam[0].numpy()
    return float(W[2, :3] @ (vertices_world.mean(0) - truth_world.mean(0)))


def test_two_views_fix_the_depth_one_view_cannot(scene, views):
    space, b, inst, m2w, vw = scene
    cams, recs, _ = views
    W0 = cams[0].world_to_cam[0].numpy()
    single_world = (np.linalg.inv(W0) @ np.r_[recs[0].vertices_cam.T, np.ones((1, len(inst)))])[:3].T
    single = abs(depth_error(single_world, vw, cams[0]))
    mrec = combine_views(recs[:2], space, cams[:2], [1.0, 1.0], CFG)
    assert mrec.success and mrec.confident, mrec.notes
    assert [r.status for r in mrec.reports] == ["used", "used"]
    assert mrec.baseline_deg == pytest.approx(40.0, abs=3.0)
    two = abs(depth_error(mrec.vertices_world, vw, cams[0]))
    assert single > 3.0, single  # the wrong size puts one view's bone several mm off in depth
    assert two < 0.2 and two < 0.05 * single, (two, single)
    np.testing.assert_allclose(mrec.shape_sd, b, atol=0.02)  # the size mode too
    assert np.linalg.norm(mrec.vertices_world - vw, axis=1).max() < 0.3
    np.testing.assert_allclose(mrec.model_to_world, m2w, atol=1e-3)
    # each view's pose is the world pose seen from its camera
    np.testing.assert_allclose(mrec.model_to_cam(1), cams[1].world_to_cam[0].numpy() @ mrec.model_to_world)


def test_one_view_is_the_single_view_result(scene, views):
    space, *_ = scene
    cams, recs, _ = views
    one = combine_views(recs[:1], space, cams[:1], [1.0], CFG)
    assert one.success and not one.confident
    assert any("only view 0 is usable" in n for n in one.notes)
    np.testing.assert_allclose(one.model_to_world, np.linalg.inv(cams[0].world_to_cam[0].numpy())
                               @ recs[0].model_to_cam, atol=1e-9)
    np.testing.assert_allclose(one.vertices_model, recs[0].vertices_model)


def test_a_view_of_another_bone_is_refused(scene, views):
    """The third view sees the same kind of bone at another pose (another patient's,
    or a mislabelled file): alone it is a perfect reconstruction, but it disagrees
    with the other two, so it is refused and does not move the result."""
    space, b, inst, m2w, vw = scene
    cams, recs, b_net = views
    from xrecon.geometry import se3

    moved = se3.from_euler([0.0, 0.0, 25.0], [40.0, 0.0, -30.0]).numpy()
    other = vw @ moved[:3, :3].T + moved[:3, 3]
    wrong = reconstruct_from_prediction(oracle(space, other, cams[2], b_net), space, cams[2], CFG)
    assert wrong.success
    mrec = combine_views([recs[0], recs[1], wrong], space, cams, [1.0] * 3, CFG)
    assert mrec.success
    assert [r.status for r in mrec.reports] == ["used", "used", "refused"]
    assert "disagree with the other views" in mrec.reports[2].reason
    assert any("view 2 refused" in n for n in mrec.notes)
    assert mrec.used_views() == [0, 1] and not mrec.inliers[2].any()
    assert np.linalg.norm(mrec.vertices_world - vw, axis=1).max() < 0.3


def test_a_garbage_view_cannot_drag_a_pair(scene, views):
    """Two views, one of them noise (canonical coordinates shuffled between pixels):
    it is refused and the result is the good view's own, flagged low-confidence."""
    space, b, inst, m2w, vw = scene
    cams, recs, b_net = views
    pred = oracle(space, vw, cams[1], b_net)
    pred.canonical_mm = pred.canonical_mm[np.random.default_rng(0).permutation(len(pred.canonical_mm))]
    garbage = reconstruct_from_prediction(pred, space, cams[1], CFG)
    mrec = combine_views([recs[0], garbage], space, cams[:2], [1.0, 1.0], CFG)
    assert mrec.success and mrec.reports[1].status == "refused" and mrec.reports[1].reason
    assert mrec.used_views() == [0] and not mrec.confident
    np.testing.assert_allclose(mrec.vertices_model, recs[0].vertices_model)


def test_a_view_showing_little_of_the_bone_is_down_weighted(scene, views):
    space, b, inst, m2w, vw = scene
    cams, recs, b_net = views
    # the second view keeps the correspondences of a 7 x 7 pixel patch of the bone only
    # (as if the rest lay outside the detector)
    edge = cams[1]
    pred = oracle(space, vw, edge, b_net)
    v0, u0 = np.median(pred.uv[:, 1]), np.median(pred.uv[:, 0])
    near = (np.abs(pred.uv[:, 0] - u0) <= 3) & (np.abs(pred.uv[:, 1] - v0) <= 3)
    pred = DensePrediction(pred.canonical_mm[near], pred.uv[near], pred.sigma_mm[near], pred.surface[near],
                           pred.mask_prob, pred.shape_sd, pred.net_camera)
    part = reconstruct_from_prediction(pred, space, edge, dataclasses.replace(CFG, min_inliers=6))
    assert part.success and part.coverage < CFG.min_coverage, part.coverage
    mrec = combine_views([recs[0], part], space, [cams[0], edge], [1.0, 1.0], CFG)
    assert mrec.success
    r = mrec.reports[1]
    assert r.status == "down-weighted" and 0 < r.weight < 1 and "little of the bone" in r.reason
    # one view showing enough of the bone does not fix the size: flagged, and the size mode stays tight
    assert not mrec.confident and any("fewer than two views show" in n for n in mrec.notes)
    assert abs(depth_error(mrec.vertices_world, vw, cams[0])) < 1.0


def test_reconstruct_views_checks_its_inputs(scene, views):
    space, *_ = scene
    cams, _, b_net = views
    with pytest.raises(ValueError, match="one camera per view"):
        reconstruct_views([], space, cams[:1])


def test_ct_registration_from_two_views(scene, views):
    """The instance's surface as a CT in a random rigid frame: one ct_to_world from
    both views, and each view's ct_to_cam its camera's view of it."""
    from xrecon.anatomy.bone import BoneModel
    from xrecon.geometry import se3

    space, b, inst, m2w, vw = scene
    cams, recs, _ = views
    mrec = combine_views(recs[:2], space, cams[:2], [1.0, 1.0], CFG)
    pts, nrm = BoneModel(vw, space.faces).sample_points(20000, seed=0)
    world_to_ct = se3.from_euler([30.0, -70.0, 120.0], [100.0, -250.0, 40.0]).numpy()
    ct_pts = pts @ world_to_ct[:3, :3].T + world_to_ct[:3, 3]
    reg = register_ct_views(mrec, ct_pts, nrm @ world_to_ct[:3, :3].T, CFG)
    assert reg.success and reg.confident, reg.notes
    truth = np.linalg.inv(world_to_ct)
    assert float(mtre_mm(reg.ct_to_world, truth, ct_pts[:500])[0]) < 0.5
    assert reg.scale == pytest.approx(1.0, abs=0.01)
    for i in range(2):
        np.testing.assert_allclose(reg.ct_to_cam[i], cams[i].world_to_cam[0].numpy() @ reg.ct_to_world)


def test_views_posed_by_dicom_c_arm_angles_round_trip_through_the_shared_frame_solve(scene, views, tmp_path):
    """Case (b) into case (a): two XA DICOM files carrying only their positioner angles
    (PositionerPrimaryAngle -25 / +25, DistanceSourceToPatient 765); the cameras read from
    them place the planted bone, seen in the isocentre frame, at its true pose and depth."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from xrecon import api

    space, b, inst, m2w, vw = scene
    _, _, b_net = views
    paths = []
    for k, primary in enumerate((-25.0, 25.0)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(tmp_path / f"v{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.Modality, ds.SOPClassUID, ds.SOPInstanceUID = "XA", meta.MediaStorageSOPClassUID, generate_uid()
        ds.Rows = ds.Columns = SIZE
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.DistanceSourceToDetector, ds.ImagerPixelSpacing = "1020", [str(300.0 / SIZE)] * 2
        ds.PositionerPrimaryAngle, ds.PositionerSecondaryAngle, ds.DistanceSourceToPatient = str(primary), "0", "765"
        ds.PixelData = np.random.default_rng(k).integers(0, 60000, (SIZE, SIZE)).astype(np.uint16).tobytes()
        ds.save_as(str(tmp_path / f"v{k}.dcm"), enforce_file_format=True)
        paths.append(tmp_path / f"v{k}.dcm")
    _, cams = api.load_views(paths)
    recs = [reconstruct_from_prediction(oracle(space, vw, c, b_net), space, c, CFG) for c in cams]
    mrec = combine_views(recs, space, cams, [1.0, 1.0], CFG)
    assert mrec.success and mrec.confident, mrec.notes
    assert mrec.baseline_deg == pytest.approx(50.0, abs=3.0)
    np.testing.assert_allclose(mrec.model_to_world, m2w, atol=1e-2)
    assert abs(depth_error(mrec.vertices_world, vw, cams[0])) < 0.2
