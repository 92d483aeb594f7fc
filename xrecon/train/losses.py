"""Loss pieces shared by the dense-correspondence networks (scene coordinates,
canonical coordinates).

:func:`inplane_scale`: the *scale* of a predicted point field in the image
plane, relative to the truth. A per-pixel loss treats pixels as independent;
PnP does not: it reads the bone's distance from how far apart the predicted
points of the image lie. Points spread 1 % too little put the bone 1 % too
close to the source (about 8 mm at seed 002's 765 mm), however small each
pixel's error. A loss on ``|s - 1|`` singles out that component.

:func:`along_ray_sq` / :func:`ray_weighted_sq`: the same argument per point.
A predicted point that is wrong only *along* its pixel's ray still projects
onto its pixel; PnP needs the component *across* the ray. A per-pixel loss
that weights the along-ray part less (scene coordinate regression trained on
the reprojection error, as DSAC* does, is the limit ``along_weight = 0``)
spends the network's capacity where the pose is decided.
"""
from __future__ import annotations

import torch

#: fewer points than this: the in-plane scale of a case is not fitted (reported as 1)
MIN_LAYOUT_POINTS = 50


def inplane_scale(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                  cam_rotation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares scale of the predicted points about their centroid, in the image plane.

    Args:
        pred, target: ``(B, S, 3, H, W)`` predicted and true points of S surfaces
            (entry / exit) per pixel, in any units, the same frame.
        mask: ``(B, H, W)`` (every surface) or ``(B, S, H, W)`` points that count;
            non-finite targets never count.
        cam_rotation: ``(B, 3, 3)`` rotation from that frame to the camera's axes
            (the rotation of ``frame_to_cam``, see ``docs/conventions.md``).

    Returns:
        ``s (B,)`` minimising ``sum |P_c - s T_c|^2`` over the points that count,
        with ``P_c``, ``T_c`` their camera-x/y components centred on their own
        means (1 where fewer than :data:`MIN_LAYOUT_POINTS` points count), and
        the number of points that count ``(B,)``.
    """
    b, n_surf = pred.shape[:2]
    if mask.ndim == 3:
        mask = mask[:, None].expand(b, n_surf, *mask.shape[1:])
    m = (mask.bool() & torch.isfinite(target).all(dim=2)).reshape(b, n_surf, 1, -1)
    target = torch.where(m.reshape(b, n_surf, 1, *pred.shape[3:]), target, torch.zeros_like(target))
    w = m.to(pred.dtype)
    n = w.sum(dim=(1, 2, 3))
    rot = cam_rotation[:, :2].to(pred)  # (B, 2, 3): the camera's x and y axes

    def centred(x):
        xy = torch.einsum("bij,bsjp->bsip", rot, x.reshape(b, n_surf, 3, -1))  # (B, S, 2, P)
        mean = (xy * w).sum(dim=(1, 3), keepdim=True) / n.clamp_min(1.0).reshape(b, 1, 1, 1)
        return (xy - mean) * w

    p, t = centred(pred), centred(target)
    s = (p * t).sum(dim=(1, 2, 3)) / (t * t).sum(dim=(1, 2, 3)).clamp_min(1e-12)
    return torch.where(n >= MIN_LAYOUT_POINTS, s, torch.ones_like(s)), n


def scale_error_pct(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                    cam_rotation: torch.Tensor) -> torch.Tensor:
    """``|s - 1|`` in per cent ``(B,)`` for :func:`inplane_scale`'s ``s`` (differentiable):
    the layout loss term."""
    s, _ = inplane_scale(pred, target, mask, cam_rotation)
    return (s - 1).abs() * 100.0


def along_ray_sq(pred: torch.Tensor, target: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared error of each predicted point, split along and across its pixel's ray.

    The ray of a pixel runs from the X-ray source through the true point, so
    the part of the error along it moves the point along its own ray, which
    does not change where it projects: PnP cannot see it. The part across the
    ray is about the reprojection error times depth / focal length.

    Args:
        pred, target: ``(B, ..., 3, H, W)`` points (any units, one frame); the
            coordinate axis is the third from last.
        source: ``(B, 3)`` the X-ray source (camera centre) in that frame and unit.

    Returns:
        ``(along_sq, across_sq)``, each ``pred``'s shape without the coordinate
        axis: ``((e . d)^2, |e|^2 - (e . d)^2)`` with ``e = pred - target`` and
        ``d`` the unit direction from the source to the target. Smooth in
        ``pred`` everywhere (no norm is taken).
    """
    shape = (source.shape[0],) + (1,) * (pred.ndim - 4) + (3, 1, 1)
    ray = target - source.to(target).reshape(shape)
    ray = ray / ray.norm(dim=-3, keepdim=True).clamp_min(1e-12)
    e = pred - target
    along_sq = (e * ray).sum(dim=-3).pow(2)
    return along_sq, (e.pow(2).sum(dim=-3) - along_sq).clamp_min(0.0)


def ray_weighted_sq(pred: torch.Tensor, target: torch.Tensor, source: torch.Tensor | None,
                    along_weight: float = 1.0) -> torch.Tensor:
    """``|e_across|^2 + along_weight^2 |e_along|^2`` per point (see :func:`along_ray_sq`);
    ``along_weight = 1`` (or no ``source``) is the plain squared distance."""
    if along_weight == 1.0 or source is None:
        return (pred - target).pow(2).sum(dim=-3)
    along_sq, across_sq = along_ray_sq(pred, target, source)
    return across_sq + along_weight**2 * along_sq
