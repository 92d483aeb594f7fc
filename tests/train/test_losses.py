"""Loss pieces shared by the dense-correspondence networks."""
from __future__ import annotations

import torch
from scipy.spatial.transform import Rotation

from xrecon.train.losses import MIN_LAYOUT_POINTS, along_ray_sq, inplane_scale, ray_weighted_sq, scale_error_pct


def test_inplane_scale_reads_a_planted_magnification_and_ignores_depth():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 2, 3, 16, 16, generator=g) * 50 + torch.tensor([10.0, -5.0, 3.0]).reshape(1, 1, 3, 1, 1)
    rot = torch.tensor(Rotation.random(2, random_state=1).as_matrix(), dtype=torch.float32)  # model -> camera axes
    mask = torch.ones(2, 16, 16, dtype=torch.bool)
    # in camera axes: x and y scaled about the centroid by 1.03 and 0.98, z (depth) scrambled, then shifted
    cam = torch.einsum("bij,bsjhw->bsihw", rot, target)
    centre = cam.mean(dim=(1, 3, 4), keepdim=True)
    scales = torch.tensor([1.03, 0.98]).reshape(2, 1, 1, 1, 1)
    moved = cam.clone()
    moved[:, :, :2] = centre[:, :, :2] + scales * (cam[:, :, :2] - centre[:, :, :2]) + 7.0
    moved[:, :, 2] = torch.randn(2, 2, 16, 16, generator=g) * 30
    pred = torch.einsum("bji,bsjhw->bsihw", rot, moved)  # back to the model frame (R^T)
    s, n = inplane_scale(pred, target, mask, rot)
    torch.testing.assert_close(s, torch.tensor([1.03, 0.98]), atol=1e-4, rtol=0)
    assert n.tolist() == [512, 512]  # points: an entry and an exit per pixel
    # a perfect prediction has scale 1; too few pixels count as 1 (no fit)
    torch.testing.assert_close(inplane_scale(target, target, mask, rot)[0], torch.ones(2))
    few = torch.zeros_like(mask)
    few[:, 0, : MIN_LAYOUT_POINTS // 2 - 1] = True
    torch.testing.assert_close(inplane_scale(pred, target, few, rot)[0], torch.ones(2))
    # per-surface masks; a NaN target (a ray leaving through a hole) does not count and does not poison the fit
    per_surface = mask[:, None].expand(2, 2, 16, 16).clone()
    per_surface[:, 1, 8:10] = False
    holed = target.clone()
    holed[:, 1, :, :8] = float("nan")
    s2, n2 = inplane_scale(pred, holed, per_surface, rot)
    torch.testing.assert_close(s2, torch.tensor([1.03, 0.98]), atol=1e-4, rtol=0)
    assert n2.tolist() == [256 + 96, 256 + 96]
    torch.testing.assert_close(scale_error_pct(pred, target, mask, rot), torch.tensor([3.0, 2.0]), atol=1e-2, rtol=0)


def _project(w2c: torch.Tensor, K: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x (B, S, 3, H, W)`` world points -> ``(B, S, 2, H, W)`` pixels (OpenCV pinhole)."""
    cam = torch.einsum("bij,bsjhw->bsihw", w2c[:, :3, :3], x) + w2c[:, :3, 3].reshape(-1, 1, 3, 1, 1)
    pix = torch.einsum("ij,bsjhw->bsihw", K, cam)
    return pix[:, :, :2] / pix[:, :, 2:]


def test_along_ray_error_is_the_part_that_does_not_move_the_projection():
    g = torch.Generator().manual_seed(0)
    rot = torch.tensor(Rotation.random(2, random_state=2).as_matrix(), dtype=torch.float64)
    w2c = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    w2c[:, :3, :3] = rot
    w2c[:, :3, 3] = torch.tensor([[5.0, -10.0, 760.0], [-20.0, 15.0, 700.0]], dtype=torch.float64)
    source = -torch.einsum("bji,bj->bi", rot, w2c[:, :3, 3])  # the camera centre in the world frame
    K = torch.tensor([[1000.0, 0, 64], [0, 1000.0, 64], [0, 0, 1]], dtype=torch.float64)
    target = torch.randn(2, 2, 3, 8, 8, generator=g, dtype=torch.float64) * 40
    # slide every point along its own ray by a random amount: it still projects onto its pixel
    ray = target - source.reshape(2, 1, 3, 1, 1)
    slide = torch.randn(2, 2, 1, 8, 8, generator=g, dtype=torch.float64) * 0.02 * ray
    along_sq, across_sq = along_ray_sq(target + slide, target, source)
    torch.testing.assert_close(_project(w2c, K, target + slide), _project(w2c, K, target))
    torch.testing.assert_close(along_sq, slide.pow(2).sum(dim=2))
    assert float(across_sq.max()) < 1e-9
    # a step across the ray moves the projection and is all "across"
    side = torch.linalg.cross(ray, torch.randn(2, 2, 3, 8, 8, generator=g, dtype=torch.float64), dim=2)
    side = side / side.norm(dim=2, keepdim=True) * 3.0
    along_sq, across_sq = along_ray_sq(target + side, target, source)
    torch.testing.assert_close(across_sq, torch.full_like(across_sq, 9.0))
    assert float(along_sq.max()) < 1e-9
    assert float((_project(w2c, K, target + side) - _project(w2c, K, target)).norm(dim=2).min()) > 1.0
    # the weighted error: 1 is the plain squared distance, 0 keeps only the part across the ray
    pred = target + slide + side
    plain = (pred - target).pow(2).sum(dim=2)
    torch.testing.assert_close(ray_weighted_sq(pred, target, source, 1.0), plain)
    torch.testing.assert_close(ray_weighted_sq(pred, target, None, 0.5), plain)
    torch.testing.assert_close(ray_weighted_sq(pred, target, source, 0.0), torch.full_like(plain, 9.0))
    torch.testing.assert_close(ray_weighted_sq(pred, target, source, 0.5),
                               9.0 + 0.25 * slide.pow(2).sum(dim=2))
    # (B, 3, H, W) fields (one surface) work the same way
    torch.testing.assert_close(ray_weighted_sq(pred[:, 0], target[:, 0], source, 0.0), torch.full_like(plain[:, 0], 9.0))
