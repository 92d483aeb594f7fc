"""Several views of one bone whose relative poses are unknown
(:mod:`xrecon.methods.recon.independent_views`), on planted scenes: the pelvis
model's instance seen by C-arm cameras, with the exact correspondences a perfect
network would give, except the size the network reports (wrong on purpose: with
no shared frame, nothing but a CT can fix it)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xrecon.geometry import Camera
from xrecon.methods.recon.data import model_to_world
from xrecon.methods.recon.independent_views import combine_independent, register_ct_independent
from xrecon.methods.recon.pipeline import ReconConfig, reconstruct_from_prediction
from xrecon.methods.recon.predict import DensePrediction
from xrecon.methods.recon.shape import ShapeSpace
from xrecon.methods.recon.targets import view_targets
from xrecon.metrics.registration import mtre_mm, rotation_error_deg
from xrecon.sim.poses import carm_pose
from xrecon.solve.align3d import umeyama

SIZE = 64
CFG = ReconConfig(residual=None, n_points=300, silhouette="off")


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


def unposed(cam: Camera) -> Camera:
    """The camera as a film taken separately gives it: intrinsics only."""
    return cam.with_pose(torch.eye(4, dtype=torch.float64))


@pytest.fixture(scope="module")
def views(scene):
    """Single-view reconstructions at LAO 0 and 40 from exact correspondences; the network's
    size is +0.8 SD wrong and its other modes are off by up to 0.5 SD, differently per view."""
    space, b, inst, m2w, vw = scene
    cams = [camera_at(a) for a in (0.0, 40.0)]
    recs = []
    for k, c in enumerate(cams):
        b_net = b.copy()
        b_net[0] += 0.8
        b_net[1:5] += np.random.default_rng(k).uniform(-0.5, 0.5, 4)
        recs.append(reconstruct_from_prediction(oracle(space, vw, c, b_net), space, unposed(c), CFG))
    assert all(r.success for r in recs)
    return cams, recs


def test_one_shape_one_pose_per_view(scene, views):
    space, b, inst, m2w, vw = scene
    cams, recs = views
    irec = combine_independent(recs, space, [unposed(c) for c in cams], [1.0, 1.0], CFG)
    assert irec.success, irec.reason
    assert [r.status for r in irec.reports] == ["used", "used"]
    for i in range(2):  # each view's pose explains its own correspondences
        assert irec.reports[i].reprojection_error_px < 0.3, irec.reports[i]
        np.testing.assert_allclose(irec.vertices_cam(i), irec.vertices_model @ irec.model_to_cam[i][:3, :3].T
                                   + irec.model_to_cam[i][:3, 3])
    # the views' relative rotation is the true one (nothing told the solver)
    rel = irec.model_to_cam[1] @ np.linalg.inv(irec.model_to_cam[0])
    true_rel = cams[1].world_to_cam[0].numpy() @ np.linalg.inv(cams[0].world_to_cam[0].numpy())
    assert float(rotation_error_deg(rel, true_rel)[0]) < 0.5
    # the modes after the size are the truth's, where each view's network values were up to 0.5 SD off
    np.testing.assert_allclose(irec.shape_sd[1:4], b[1:4], atol=0.1)

    def shape_error(v):  # mean distance after similarity alignment (mm)
        return float(np.linalg.norm(umeyama(v, inst, with_scale=True).apply(v) - inst, axis=1).mean())

    joint, alone = shape_error(irec.vertices_model), [shape_error(r.vertices_model) for r in recs]
    assert joint < 0.3 and joint < 0.9 * min(alone), (joint, alone)  # measured: 0.24 vs 0.34 / 0.32


def test_a_garbage_view_does_not_drag_the_shape(scene, views):
    space, b, inst, m2w, vw = scene
    cams, recs = views
    pred = oracle(space, vw, cams[1], recs[1].shape_sd_network)
    pred.canonical_mm = pred.canonical_mm[np.random.default_rng(0).permutation(len(pred.canonical_mm))]
    garbage = reconstruct_from_prediction(pred, space, unposed(cams[1]), CFG)
    irec = combine_independent([recs[0], garbage], space, [unposed(c) for c in cams], [1.0, 1.0], CFG)
    assert irec.success and irec.used_views() == [0] and irec.reports[1].status == "refused"
    assert irec.reports[1].reason and not irec.confident
    assert np.isnan(irec.model_to_cam[1]).all()
    np.testing.assert_allclose(irec.vertices_model, recs[0].vertices_model)


def test_ct_registration_per_view(scene, views):
    """The instance's surface as a CT in a random rigid frame: each view's ct_to_cam is its
    camera's view of it, the depth set by the CT's known size although the network's is wrong."""
    from xrecon.anatomy.bone import BoneModel
    from xrecon.geometry import se3

    space, b, inst, m2w, vw = scene
    cams, recs = views
    irec = combine_independent(recs, space, [unposed(c) for c in cams], [1.0, 1.0], CFG)
    pts, nrm = BoneModel(vw, space.faces).sample_points(20000, seed=0)
    world_to_ct = se3.from_euler([30.0, -70.0, 120.0], [100.0, -250.0, 40.0]).numpy()
    ct_pts = pts @ world_to_ct[:3, :3].T + world_to_ct[:3, 3]
    reg = register_ct_independent(irec, ct_pts, nrm @ world_to_ct[:3, :3].T, CFG)
    assert reg.success and reg.confident, reg.notes
    assert reg.scale == pytest.approx(1.0 + 0.0, abs=0.1)
    for i in range(2):
        truth = cams[i].world_to_cam[0].numpy() @ np.linalg.inv(world_to_ct)
        assert float(mtre_mm(reg.ct_to_cam[i], truth, ct_pts[:500])[0]) < 1.0
