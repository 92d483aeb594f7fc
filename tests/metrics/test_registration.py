import math

import numpy as np
import pytest
import torch

from xrecon.errors import ShapeError
from xrecon.geometry import se3
from xrecon.metrics.aggregate import gross_failure_rate, percentiles, summarize, summarize_groups
from xrecon.metrics.registration import (
    depth_error_mm,
    mtre_mm,
    projected_mtre_mm,
    registration_errors,
    rotation_error_deg,
    translation_error_mm,
)


def _gt(batch=3):
    g = torch.Generator().manual_seed(1)
    R = se3.random_rotation(batch, g)
    t = torch.tensor([0.0, 0.0, 800.0], dtype=torch.float64).expand(batch, 3)
    return se3.make(R, t)


def test_pure_translation_gives_its_length_as_mtre_and_translation_error():
    gt = _gt()
    shift = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, -12.0]], dtype=torch.float64)
    est = gt.clone()
    est[:, :3, 3] += shift
    targets = torch.randn(20, 3, dtype=torch.float64) * 50
    assert torch.allclose(mtre_mm(est, gt, targets), torch.tensor([5.0, 0.0, 12.0], dtype=torch.float64))
    assert torch.allclose(translation_error_mm(est, gt), torch.tensor([5.0, 0.0, 12.0], dtype=torch.float64))
    assert torch.allclose(rotation_error_deg(est, gt), torch.zeros(3, dtype=torch.float64), atol=1e-9)


def test_rotation_about_a_target_ring_matches_chord_length():
    # rotating world points on a circle of radius r about the circle's axis by theta
    # moves each by the chord 2 r sin(theta / 2)
    r, theta = 40.0, math.radians(7.0)
    phi = torch.linspace(0, 2 * math.pi, 37, dtype=torch.float64)[:-1]
    ring = torch.stack([r * torch.cos(phi), r * torch.sin(phi), torch.zeros_like(phi)], -1)
    gt = se3.make(torch.eye(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 900.0]))[None]
    est = gt @ se3.from_rotvec(torch.tensor([0.0, 0.0, theta], dtype=torch.float64), torch.zeros(3))[None]
    assert abs(float(mtre_mm(est, gt, ring)) - 2 * r * math.sin(theta / 2)) < 1e-9
    assert abs(float(rotation_error_deg(est, gt)) - 7.0) < 1e-9


def test_projected_mtre_of_lateral_shift_is_magnified_by_sdd_over_depth():
    sdd, depth, spacing = 1000.0, 500.0, 0.5
    K = torch.tensor([[sdd / spacing, 0, 64], [0, sdd / spacing, 64], [0, 0, 1]], dtype=torch.float64)
    gt = se3.make(torch.eye(3, dtype=torch.float64), torch.tensor([0.0, 0.0, depth]))[None]
    est = gt.clone()
    est[:, 0, 3] += 2.0  # 2 mm lateral at depth 500 -> 4 mm on the detector
    targets = torch.zeros(1, 3, dtype=torch.float64)
    got = projected_mtre_mm(est, gt, targets, K, spacing)
    assert abs(float(got) - 4.0) < 1e-9


def test_projected_mtre_ignores_motion_along_the_ray():
    K = torch.tensor([[2000.0, 0, 64], [0, 2000.0, 64], [0, 0, 1]], dtype=torch.float64)
    gt = se3.make(torch.eye(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 600.0]))[None]
    est = gt.clone()
    est[:, 2, 3] += 50.0
    target_on_axis = torch.zeros(1, 3, dtype=torch.float64)
    assert float(projected_mtre_mm(est, gt, target_on_axis, K, 0.5)) < 1e-9
    assert abs(float(mtre_mm(est, gt, target_on_axis)) - 50.0) < 1e-9


def test_depth_error_is_signed_along_the_viewing_axis_and_blind_to_lateral_motion():
    gt = _gt(3)
    est = gt.clone()
    est[0, 2, 3] += 9.0  # further from the source
    est[1, 2, 3] -= 4.0  # closer
    est[2, 0, 3] += 25.0  # lateral only
    targets = torch.randn(30, 3, dtype=torch.float64) * 60
    got = depth_error_mm(est, gt, targets)
    assert torch.allclose(got, torch.tensor([9.0, -4.0, 0.0], dtype=torch.float64), atol=1e-9)
    # a rotation about the targets' centroid moves them around it: no mean depth change
    centroid = targets.mean(0)
    spin = se3.from_rotvec(torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64), torch.zeros(3))
    about = se3.make(torch.eye(3, dtype=torch.float64), centroid) @ spin @ se3.make(torch.eye(3, dtype=torch.float64),
                                                                                   -centroid)
    assert abs(float(depth_error_mm((gt[0] @ about)[None], gt[0][None], targets))) < 1e-9
    assert float(mtre_mm((gt[0] @ about)[None], gt[0][None], targets)) > 1.0


def test_per_case_targets_and_nan_pose_propagate_per_case():
    gt = _gt(2)
    est = gt.clone()
    est[1] = float("nan")
    targets = torch.randn(2, 5, 3, dtype=torch.float64)
    errs = registration_errors(est, gt, targets, K=torch.eye(3), pixel_spacing_mm=(1.0, 1.0))
    assert set(errs) == {"mtre_mm", "depth_error_mm", "rotation_deg", "translation_mm", "projected_mtre_mm"}
    for v in errs.values():
        assert v.shape == (2,)
        assert float(v[0]) < 1e-6 and torch.isnan(v[1])


def test_shape_errors_are_typed():
    with pytest.raises(ShapeError):
        mtre_mm(torch.eye(4)[None].repeat(2, 1, 1), torch.eye(4)[None].repeat(3, 1, 1), torch.zeros(4, 3))
    with pytest.raises(ShapeError):
        mtre_mm(torch.eye(4), torch.eye(4), torch.zeros(4, 2))
    with pytest.raises(ShapeError):
        mtre_mm(torch.eye(4), torch.eye(4), torch.zeros(0, 3))


def test_percentiles_match_numpy_on_finite_values():
    v = np.random.default_rng(0).gamma(2.0, 3.0, size=101)
    assert np.allclose(percentiles(v), np.percentile(v, [25, 50, 95]))


def test_failed_cases_count_as_failures_and_infinite_percentiles():
    v = np.array([1.0, 2.0, 3.0, 6.0, np.nan, 20.0, 0.5, 0.7, 0.9, np.inf])
    s = summarize(v)
    assert s.n == 10 and s.n_failed == 2
    assert s.gfr[10.0] == pytest.approx(0.3)  # 20, nan, inf
    assert s.gfr[5.0] == pytest.approx(0.4)  # + 6
    assert s.p95 == np.inf
    assert s.p50 == pytest.approx(np.percentile([0.5, 0.7, 0.9, 1, 2, 3, 6, 20, 1e9, 1e9], 50))
    finite = v[np.isfinite(v)]
    assert s.mean == pytest.approx(finite.mean()) and s.std == pytest.approx(finite.std())
    assert gross_failure_rate([], 10.0) != gross_failure_rate([], 10.0)  # nan for no cases


def test_group_summaries_split_by_label():
    v = np.array([1.0, 2.0, 30.0, 4.0])
    out = summarize_groups(v, ["b", "a", "b", "a"])
    assert list(out) == ["a", "b", "all"]
    assert out["a"].p50 == pytest.approx(3.0) and out["a"].gfr[10.0] == 0.0
    assert out["b"].gfr[10.0] == pytest.approx(0.5) and out["all"].n == 4
    with pytest.raises(ShapeError):
        summarize_groups(v, ["a"])
