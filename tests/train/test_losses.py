"""Loss pieces shared by the dense-correspondence networks."""
from __future__ import annotations

import torch
from scipy.spatial.transform import Rotation

from xrecon.train.losses import MIN_LAYOUT_POINTS, inplane_scale, scale_error_pct


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
