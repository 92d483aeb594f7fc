import dataclasses

import numpy as np
import pytest
import torch

from .solve_scenes import apply, bone_like_points, planted_transform
from xrecon.geometry import Camera, se3
from xrecon.metrics.registration import mtre_mm
from xrecon.errors import InputError
from xrecon.solve.joint import JointConfig, solve_joint


def _case(seed, outlier_share=0.3, n=1200):
    rng = np.random.default_rng(seed)
    world_to_cam = se3.from_euler(torch.tensor([90.0, rng.uniform(-45, 45), 0.0]),
                                  torch.tensor(rng.normal(size=3) * 20 + [0, 0, 700.0]))
    cam = Camera.from_detector(1020.0, 3.0, 128, 128, world_to_cam)
    true = bone_like_points(n, seed)
    uv = cam.project(torch.as_tensor(true))[0][0].numpy() + rng.normal(size=(n, 2)) * 0.5
    pred = true + rng.normal(size=true.shape)
    out = rng.random(n) < outlier_share
    pred[out] = rng.uniform(true.min(0), true.max(0), size=(out.sum(), 3))
    world_to_ct = planted_transform(seed + 10, lps_flip=True)
    ct = apply(world_to_ct, bone_like_points(3000, seed + 50))
    ct_to_cam = world_to_cam.numpy() @ np.linalg.inv(world_to_ct)
    targets_ct = apply(world_to_ct, true[:40])
    return cam, pred, uv, ct, ct_to_cam, targets_ct, world_to_cam.numpy(), true


def test_ct_in_a_random_lps_frame_is_posed_in_the_camera():
    cam, pred, uv, ct, ct_to_cam, targets_ct, _, _ = _case(0)
    res = solve_joint(pred, uv, cam, ct_points=ct)
    assert res.success, res.reason
    assert float(mtre_mm(res.ct_to_cam, ct_to_cam, targets_ct)) < 2.0
    assert abs(res.scale - 1.0) < 0.02
    assert res.shape_cam.shape == ct.shape and np.allclose(res.shape_cam, apply(res.ct_to_cam, ct))
    assert res.cost_history and res.cost_history[-1] <= res.cost_history[0]
    assert res.reprojection_error_px < 2.0 and res.surface_residual_mm < 3.0


def test_joint_refinement_improves_on_the_ct_pnp():
    errs = {}
    for refine in (False, True):
        cam, pred, uv, ct, ct_to_cam, targets_ct, _, _ = _case(1)
        res = solve_joint(pred, uv, cam, ct_points=ct, config=JointConfig(refine=refine))
        assert res.success
        errs[refine] = float(mtre_mm(res.ct_to_cam, ct_to_cam, targets_ct))
    assert errs[True] < errs[False]


def test_without_ct_poses_the_predicted_points():
    cam, pred, uv, _, _, _, world_to_cam, true = _case(2, outlier_share=0.0)
    res = solve_joint(pred, uv, cam)
    assert res.success and np.isnan(res.ct_to_cam).all()
    assert float(mtre_mm(res.model_to_cam, world_to_cam, true)) < 5.0
    assert np.allclose(res.shape_cam, apply(res.model_to_cam, pred[res.inliers]))


@pytest.mark.parametrize("case", ["pnp_fails", "ct_too_small", "ct_flat"])
def test_degenerate_inputs_fail_with_reason(case):
    cam, pred, uv, ct, _, _, _, _ = _case(3, n=300)
    if case == "pnp_fails":
        uv[:] = np.nan
    elif case == "ct_too_small":
        ct = ct[:5]
    elif case == "ct_flat":
        ct[:, 2] = 0.0
    res = solve_joint(pred, uv, cam, ct_points=ct)
    assert not res.success and res.reason
    assert np.isnan(res.ct_to_cam).all()


def test_a_ct_that_explains_only_part_of_the_predictions_is_a_failure_not_a_pose():
    # the predictions cover the bone *and* a second object the CT does not hold:
    # the CT aligns to its part, but 40 % of the accepted predictions lie off its
    # surface (what a partial spine aligned one level off looks like)
    cam, pred, uv, ct, ct_to_cam, targets_ct, world_to_cam, true = _case(4, outlier_share=0.0, n=900)
    rng = np.random.default_rng(4)
    extra = bone_like_points(600, 99) * 0.6 + np.array([0.0, 0.0, 140.0])
    extra_uv = cam.project(torch.as_tensor(extra))[0][0].numpy() + rng.normal(size=(600, 2)) * 0.5
    pred2 = np.concatenate([pred, extra + rng.normal(size=extra.shape)])
    uv2 = np.concatenate([uv, extra_uv])
    res = solve_joint(pred2, uv2, cam, ct_points=ct)
    assert not res.success and "explains only" in res.reason
    assert 0.4 < res.surface_support < 0.85
    assert np.isnan(res.ct_to_cam).all() and np.isfinite(res.rejected_ct_to_cam).all()
    # the same data with the check off give a pose: the check is what refused it
    assert solve_joint(pred2, uv2, cam, ct_points=ct, config=JointConfig(min_surface_support=0.0)).success
    # the bone alone is supported almost entirely
    ok = solve_joint(pred, uv, cam, ct_points=ct)
    assert ok.success and ok.surface_support > 0.95 and ok.hypothesis_scores
    assert float(mtre_mm(ok.ct_to_cam, ct_to_cam, targets_ct)) < 2.0


def test_a_given_ct_to_model_guess_is_a_hypothesis_when_the_alignment_fails():
    # an alignment that cannot succeed (overlap above 100 % required) stands for
    # the alignment of the whole CT to a partial, noisy prediction set failing
    cam, pred, uv, ct, ct_to_cam, targets_ct, world_to_cam, _ = _case(5, outlier_share=0.1, n=900)
    model_to_ct = np.linalg.inv(ct_to_cam) @ world_to_cam  # the predictions' model frame is the world
    cfg = JointConfig()
    cfg = dataclasses.replace(cfg, align=dataclasses.replace(cfg.align, min_fitness=1.01))
    bad = solve_joint(pred, uv, cam, ct_points=ct, config=cfg)
    assert not bad.success and "aligning the CT surface" in bad.reason
    # the guess (the true CT-to-model map) carries the solve, and says so
    res = solve_joint(pred, uv, cam, ct_points=ct, ct_to_model_init=np.linalg.inv(model_to_ct), config=cfg)
    assert res.success, res.reason
    assert res.from_guess and not res.align.success and len(res.hypothesis_scores) == 1
    assert float(mtre_mm(res.ct_to_cam, ct_to_cam, targets_ct)) < 2.0
    # a wrong guess (a quarter turn off) is refused, not returned as a pose
    turn = np.eye(4)
    turn[:3, :3] = se3.from_euler(torch.tensor([90.0, 0.0, 0.0]), torch.zeros(3)).numpy()[:3, :3]
    wrong = solve_joint(pred, uv, cam, ct_points=ct, ct_to_model_init=turn @ np.linalg.inv(model_to_ct), config=cfg)
    assert not wrong.success and np.isnan(wrong.ct_to_cam).all()
    # a guess that is no similarity is bad input
    with pytest.raises(InputError, match="ct_to_model_init"):
        solve_joint(pred, uv, cam, ct_points=ct, ct_to_model_init=np.full((4, 4), np.nan))
