"""The reconstruction pipeline downstream of the network, fed with planted
(ground-truth) correspondences: it must return the planted pose and shape, and
register a CT surface written in any frame to the same camera pose."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xrecon.geometry import se3
from xrecon.methods.recon.pipeline import ReconConfig, reconstruct_from_prediction, register_ct_points
from xrecon.methods.recon.predict import DensePrediction, net_to_image_uv
from xrecon.methods.recon.shape import ShapeSpace
from xrecon.methods.recon.targets import view_targets
from xrecon.metrics.registration import mtre_mm

from test_recon_geometry import posed_camera


@pytest.fixture(scope="module")
def scene():
    space = ShapeSpace.bundled("pelvis")
    b = np.zeros(space.n_modes)
    b[:4] = [0.6, -1.0, 0.7, 0.4]
    inst = space.instance(b)
    cam, m2c = posed_camera(space, size=128)
    tg = view_targets(space, inst, cam)
    return space, b, inst, cam, m2c, tg


def oracle(scene, noise_mm=0.0, b_net=None, seed=0):
    space, b, inst, cam, m2c, tg = scene
    vs, us = np.nonzero(tg.mask)
    uv = np.stack([us, vs], 1).astype(np.float64)
    can = np.concatenate([tg.canonical[0][:, vs, us].T, tg.canonical[1][:, vs, us].T]).astype(np.float64)
    can += np.random.default_rng(seed).normal(0, noise_mm, can.shape)
    return DensePrediction(can, np.concatenate([uv, uv]), np.full(len(can), max(noise_mm, 1.0)),
                           np.repeat([0, 1], len(us)), tg.mask.astype(float), b if b_net is None else b_net, cam)


def test_exact_correspondences_give_the_planted_pose(scene):
    space, b, inst, cam, m2c, _ = scene
    rec = reconstruct_from_prediction(oracle(scene), space, cam)
    assert rec.success and rec.confident, rec.notes
    rot, trans = se3.pose_errors(torch.as_tensor(rec.model_to_cam), torch.as_tensor(m2c))
    assert float(rot) < 0.01 and float(trans) < 0.05
    np.testing.assert_allclose(rec.shape_sd, b, atol=0.01)
    # the output point cloud projects where the planted pose puts it
    truth_uv = cam.project(inst[rec.point_ids])[0][0].numpy()
    assert np.abs(rec.points_uv - truth_uv).max() < 0.05
    assert rec.points_confidence.max() > 0.9 and rec.points_confidence.min() >= 0.0


def test_shape_fit_corrects_a_wrong_shape_mode(scene):
    space, b, inst, cam, m2c, _ = scene
    b_wrong = b.copy()
    b_wrong[1] += 1.0  # mode 2 off by one SD (about 4 mm of surface)
    plain = reconstruct_from_prediction(oracle(scene, 0.5, b_wrong), space, cam, ReconConfig(refine_shape=False))
    fitted = reconstruct_from_prediction(oracle(scene, 0.5, b_wrong), space, cam, ReconConfig(refine_shape=True))
    truth_cam = se3.apply(torch.as_tensor(m2c), torch.as_tensor(inst)).numpy()
    err_plain = np.linalg.norm(plain.vertices_cam - truth_cam, axis=1).mean()
    err_fit = np.linalg.norm(fitted.vertices_cam - truth_cam, axis=1).mean()
    assert abs(fitted.shape_sd[1] - b[1]) < 0.3
    assert err_fit < 0.5 * err_plain


def test_no_bone_fails_with_a_reason(scene):
    space, b, _, cam, _, _ = scene
    empty = DensePrediction(np.zeros((0, 3)), np.zeros((0, 2)), np.zeros(0), np.zeros(0, int),
                            np.zeros((128, 128)), b, cam)
    rec = reconstruct_from_prediction(empty, space, cam)
    assert not rec.success and "too little bone" in rec.reason
    assert not np.isfinite(rec.model_to_cam).any()


def test_ct_registration_is_the_same_in_any_ct_frame(scene):
    """The CT is the instance's surface written in two random rigid frames (one
    LPS-like, a half turn about z): both give the planted CT-to-camera pose."""
    space, b, inst, cam, m2c, _ = scene
    rec = reconstruct_from_prediction(oracle(scene, 1.0), space, cam)
    assert rec.success
    rng = np.random.default_rng(3)
    from xrecon.anatomy.bone import BoneModel

    pts, nrm = BoneModel(inst, space.faces).sample_points(30000, seed=0)
    results = []
    for i, flip in enumerate([False, True]):
        R = se3.random_rotation(1, torch.Generator().manual_seed(10 + i))[0].numpy()
        model_to_ct = np.eye(4)
        model_to_ct[:3, :3], model_to_ct[:3, 3] = R, rng.normal(0, 200, 3)
        if flip:
            model_to_ct = np.diag([-1.0, -1.0, 1.0, 1.0]) @ model_to_ct
        ct_pts = pts @ model_to_ct[:3, :3].T + model_to_ct[:3, 3]
        ct_mesh = (inst @ model_to_ct[:3, :3].T + model_to_ct[:3, 3], space.faces)
        reg = register_ct_points(rec, ct_pts, nrm @ model_to_ct[:3, :3].T, ct_mesh=ct_mesh)
        assert reg.success, reg.reason
        truth = m2c @ np.linalg.inv(model_to_ct)
        err = float(mtre_mm(reg.ct_to_cam, truth, ct_pts[:500])[0])
        assert err < 1.5, err
        assert reg.silhouette_outline_px < 1.0  # the exact mask's outline is met within a pixel
        # the same CT points in the camera, whatever frame the CT came in
        results.append(ct_pts[:500] @ reg.ct_to_cam[:3, :3].T + reg.ct_to_cam[:3, 3])
    # (exactly: the CT is moved to its own principal-axis frame first)
    assert np.linalg.norm(results[0] - results[1], axis=1).max() < 0.01


def test_net_to_image_uv_inverts_camera_resizing(scene):
    _, _, inst, cam, _, _ = scene
    small = cam.resized(32, 32)
    uv_small = small.project(inst[:50])[0][0].numpy()
    uv_full = cam.project(inst[:50])[0][0].numpy()
    np.testing.assert_allclose(net_to_image_uv(uv_small, (32, 32), (128, 128)), uv_full, atol=1e-9)


def test_a_pose_outside_the_training_depths_is_low_confidence(scene):
    space, _, inst, cam, m2c, _ = scene
    depth = float((inst @ m2c[2, :3] + m2c[2, 3]).mean())
    ok = reconstruct_from_prediction(oracle(scene), space, cam, ReconConfig(depth_range_mm=(depth - 50, depth + 50)))
    far = reconstruct_from_prediction(oracle(scene), space, cam, ReconConfig(depth_range_mm=(depth + 50, depth + 400)))
    assert ok.success and ok.confident, ok.notes
    assert far.success and not far.confident
    assert any("outside the training range" in n for n in far.notes)


def test_a_small_visible_patch_is_low_confidence(scene):
    space, b, inst, cam, m2c, tg = scene
    full = reconstruct_from_prediction(oracle(scene), space, cam)
    assert full.success and full.confident and full.coverage > 0.3, (full.coverage, full.notes)
    # keep the correspondences of a 5 x 5 pixel patch of the bone only
    pred = oracle(scene)
    v0, u0 = np.argwhere(tg.mask)[len(np.argwhere(tg.mask)) // 2]
    near = (np.abs(pred.uv[:, 0] - u0) <= 2) & (np.abs(pred.uv[:, 1] - v0) <= 2)
    patch = DensePrediction(pred.canonical_mm[near], pred.uv[near], pred.sigma_mm[near], pred.surface[near],
                            pred.mask_prob, pred.shape_sd, pred.net_camera)
    rec = reconstruct_from_prediction(patch, space, cam, ReconConfig(min_inliers=6))
    assert rec.success and rec.coverage < 0.05 and not rec.confident
    assert any("shows little of the bone" in n for n in rec.notes)
    assert rec.summary()["coverage"] == rec.coverage


def test_the_silhouette_corrects_the_depth_of_biased_correspondences(scene):
    """Pixels spread 3 % too wide about the image centre (a network that shrinks
    its coordinates' spread) put the CT about 3 % too near the source; moving it
    to where its silhouette matches the (true) bone mask undoes most of that,
    along the ray (``"depth"``) or in all six degrees of freedom (``"pose"``)."""
    from xrecon.anatomy.bone import BoneModel

    space, b, inst, cam, m2c, _ = scene
    pred = oracle(scene)
    centre = cam.K[0, :2, 2].numpy()
    pred.uv = centre + 1.03 * (pred.uv - centre)
    rec = reconstruct_from_prediction(pred, space, cam)
    assert rec.success and rec.mask_prob is not None
    pts, nrm = BoneModel(inst, space.faces).sample_points(30000, seed=0)
    mesh = (inst, space.faces)
    plain = register_ct_points(rec, pts, nrm, ReconConfig(silhouette="off"))
    depth = register_ct_points(rec, pts, nrm, ReconConfig(silhouette="depth"), ct_mesh=mesh)
    pose = register_ct_points(rec, pts, nrm, ReconConfig(silhouette="pose"), ct_mesh=mesh)
    assert plain.success and depth.success and pose.success
    assert np.isnan(plain.silhouette_dice) and depth.silhouette_dice > 0.95 and pose.silhouette_dice > 0.95

    def depth_error(reg):
        return float((inst @ (reg.ct_to_cam[2, :3] - m2c[2, :3]) + reg.ct_to_cam[2, 3] - m2c[2, 3]).mean())

    assert depth_error(plain) < -12.0, depth_error(plain)
    for reg in (depth, pose):
        assert abs(depth_error(reg)) < 5.0, depth_error(reg)  # from -21 mm (exact correspondences: 0.1 mm)
        assert abs(reg.silhouette_depth_change_mm - (depth_error(reg) - depth_error(plain))) < 0.5
        err, err0 = float(mtre_mm(reg.ct_to_cam, m2c, inst[::20])[0]), float(mtre_mm(plain.ct_to_cam, m2c, inst[::20])[0])
        assert err < 0.3 * err0, (err, err0)
        # how far the step moved the CT: the mean displacement of its vertices between the two poses
        moved = np.linalg.norm(inst @ (reg.ct_to_cam[:3, :3] - plain.ct_to_cam[:3, :3]).T
                               + reg.ct_to_cam[:3, 3] - plain.ct_to_cam[:3, 3], axis=1).mean()
        assert abs(reg.silhouette_move_mm - moved) < 0.05 * moved + 0.05, (reg.silhouette_move_mm, moved)
    assert np.isnan(plain.silhouette_move_mm)
    with pytest.raises(ValueError, match="ct_mesh"):
        register_ct_points(rec, pts, nrm)  # the default needs the mesh
    with pytest.raises(ValueError, match="'off', 'depth' or 'pose'"):
        register_ct_points(rec, pts, nrm, ReconConfig(silhouette="yes"), ct_mesh=mesh)
    with pytest.raises(ValueError, match="silhouette_search must be one of"):
        register_ct_points(rec, pts, nrm, ReconConfig(silhouette_search="bfgs"), ct_mesh=mesh)


def test_the_residual_step_follows_anatomy_beyond_the_span(scene):
    """The truth is the instance plus a smooth deformation no mode expresses: with exact
    correspondences the residual step moves the surface toward it (the modes alone cannot),
    and with it off the output is exactly a model instance."""
    from shape_models.populations import smooth_deformation

    space, b, inst, cam, m2c, _ = scene
    u_true = smooth_deformation(inst, np.random.default_rng(3), amplitude_mm=4.0, length_scale_mm=20.0)
    truth = inst + u_true
    tg = view_targets(space, truth, cam)
    pred = oracle((space, b, truth, cam, m2c, tg))
    off = reconstruct_from_prediction(pred, space, cam, ReconConfig(residual=None))
    on = reconstruct_from_prediction(pred, space, cam)
    assert off.residual_rms_mm == 0.0
    np.testing.assert_allclose(off.vertices_model, space.instance(off.shape_sd), atol=1e-9)
    assert on.residual_rms_mm > 0.3
    from xrecon.solve.align3d import umeyama

    truth_cam = truth @ m2c[:3, :3].T + m2c[:3, 3]
    K = cam.K[0].numpy()

    def projected(x):
        h = x @ K.T
        return h[:, :2] / h[:, 2:]

    # every vertex's projection (what the one view observes), and the shape after similarity alignment
    err_px = {k: np.linalg.norm(projected(r.vertices_cam) - projected(truth_cam), axis=1).mean()
              for k, r in (("off", off), ("on", on))}
    err_mm = {k: np.linalg.norm(umeyama(r.vertices_model, truth, with_scale=True).apply(r.vertices_model) - truth,
                                axis=1).mean() for k, r in (("off", off), ("on", on))}
    assert err_px["on"] < 0.6 * err_px["off"], err_px
    assert err_mm["on"] < 0.9 * err_mm["off"], err_mm
