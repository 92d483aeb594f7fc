"""Seed 002's loss: Gaussian negative log-likelihood where the ray meets bone,
a sigma penalty where it does not.

For a pixel with a scene coordinate ``X`` (normalised units), predicted mean
``u`` and log standard deviation ``s``::

    intersecting (eq. 4):  |X - u|^2 / sigma^2 + 2 log sigma  =  |X - u|^2 e^{-2s} + 2 s
    non-existent (eq. 5):  1 / sigma                          =  e^{-s}

Each term is averaged over its own pixels per image, for the entry and the exit
maps, and the four averages are summed; the result is one value per image
(batch first) so no failing case hides in a batch mean.

``beta`` > 0 weights each pixel's likelihood term by ``sigma^(2 beta)`` with the
weight's gradient stopped (beta-NLL, Seitzer et al., ICLR 2022). With ``beta =
0`` the loss is exactly the seed's; the plain NLL scales the mean's gradient by
``1 / sigma^2``, so pixels the network does not fit yet (large sigma) barely
move the mean and training is slow, which matters on a CPU budget. ``beta =
0.5`` keeps the minimiser (``u = X``, ``sigma = |X - u|``) and speeds it up.

``along_weight`` < 1 (with the source position) counts the part of ``X - u``
along the pixel's ray that much less in ``|X - u|^2``
(:func:`xrecon.train.losses.ray_weighted_sq`): moving a point along its own
ray does not move its projection, so PnP cannot see that part; sigma then
learns the error PnP does see. ``along_weight = 1`` is the seed's loss.
"""
from __future__ import annotations

import torch

from xrecon.errors import ShapeError
from xrecon.train.losses import along_ray_sq, ray_weighted_sq


def gaussian_nll(target: torch.Tensor, mean: torch.Tensor, log_sigma: torch.Tensor, beta: float = 0.0,
                 source: torch.Tensor | None = None, along_weight: float = 1.0) -> torch.Tensor:
    """Per-pixel NLL of eq. 4. ``target, mean: (B, 3, H, W)``, ``log_sigma: (B, H, W)`` -> ``(B, H, W)``;
    ``beta > 0`` multiplies it by the gradient-free weight ``sigma^(2 beta)`` (beta-NLL);
    ``source (B, 3)`` and ``along_weight`` < 1 weight the error along the pixel's ray less."""
    sq = ray_weighted_sq(mean, target, source, along_weight)
    nll = sq * torch.exp(-2.0 * log_sigma) + 2.0 * log_sigma
    if beta:
        nll = nll * torch.exp(2.0 * beta * log_sigma).detach()
    return nll


def absent_penalty(log_sigma: torch.Tensor) -> torch.Tensor:
    """Per-pixel penalty of eq. 5, ``1 / sigma``: ``(B, H, W)`` -> ``(B, H, W)``."""
    return torch.exp(-log_sigma)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values: (B, H, W)`` over ``mask: (B, H, W)`` per image -> ``(B,)`` (0 where empty)."""
    m = mask.to(values.dtype)
    return (values * m).sum(dim=(-1, -2)) / m.sum(dim=(-1, -2)).clamp_min(1.0)


def scr_loss(
    output: torch.Tensor,
    entry_norm: torch.Tensor,
    exit_norm: torch.Tensor,
    bone_mask: torch.Tensor,
    absent_weight: float = 1.0,
    beta: float = 0.0,
    source: torch.Tensor | None = None,
    along_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Seed 002's loss per image.

    Args:
        output: ``(B, 8, H, W)`` network output (see
            :class:`~xrecon.methods.scr.network.SceneCoordinateNet`).
        entry_norm, exit_norm: ``(B, 3, H, W)`` true scene coordinates,
            normalised units; values outside ``bone_mask`` are ignored (may be
            NaN), and so are non-finite values inside it (that pixel is left
            out of that map's likelihood).
        bone_mask: ``(B, H, W)`` bool, True where the pixel's ray meets bone.
        absent_weight: weight of the non-existent term.
        beta: beta-NLL exponent (0 = the seed's loss).
        source: ``(B, 3)`` the X-ray source in the targets' normalised frame
            (needed when ``along_weight`` != 1).
        along_weight: weight of the error along each pixel's ray (1 = the seed's loss).

    Returns:
        ``{"loss": (B,), "nll": (B,), "absent": (B,), "error_norm": (B,)}`` where
        ``error_norm`` is the mean entry/exit distance on bone pixels
        (normalised units; a diagnostic, no gradient).
    """
    if output.ndim != 4 or output.shape[1] != 8:
        raise ShapeError("output", "(B, 8, H, W)", tuple(output.shape))
    b, _, h, w = output.shape
    for name, t in (("entry_norm", entry_norm), ("exit_norm", exit_norm)):
        if tuple(t.shape) != (b, 3, h, w):
            raise ShapeError(name, f"({b}, 3, {h}, {w})", tuple(t.shape))
    if tuple(bone_mask.shape) != (b, h, w):
        raise ShapeError("bone_mask", f"({b}, {h}, {w})", tuple(bone_mask.shape))
    if along_weight != 1.0 and (source is None or tuple(source.shape) != (b, 3)):
        raise ShapeError("source", f"({b}, 3)", () if source is None else tuple(source.shape))
    mask = bone_mask.bool()
    zero = torch.zeros((), dtype=output.dtype, device=output.device)
    nll = absent = 0.0
    err, across = [], []
    for target, sl in ((entry_norm, slice(0, 4)), (exit_norm, slice(4, 8))):
        target = target.to(output.dtype)
        # a bone pixel whose coordinate is undefined (e.g. a ray leaving through
        # a hole of the mesh) is ignored for that map
        valid = mask & torch.isfinite(target).all(dim=1)
        target = torch.where(valid[:, None], target, zero)  # NaN never reaches a gradient
        mean, log_sigma = output[:, sl][:, :3], output[:, sl][:, 3]
        nll = nll + _masked_mean(gaussian_nll(target, mean, log_sigma, beta, source, along_weight), valid)
        absent = absent + _masked_mean(absent_penalty(log_sigma), ~mask)
        with torch.no_grad():
            err.append(_masked_mean((target - mean).norm(dim=1), valid))
            if source is not None:
                across.append(_masked_mean(along_ray_sq(mean, target, source)[1].sqrt(), valid))
    terms = {"loss": nll + absent_weight * absent, "nll": nll, "absent": absent, "error_norm": (err[0] + err[1]) / 2}
    if across:
        terms["across_error_norm"] = (across[0] + across[1]) / 2
    return terms
