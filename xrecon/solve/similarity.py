"""Image similarity between X-rays and DRRs, one value per case.

Every function takes two batches of images ``(B, H, W)`` or ``(B, 1, H, W)``
(torch, any float dtype, differentiable) and returns ``(B,)``: 1 for identical
images up to an affine intensity change, about 0 for unrelated ones. All of
them are invariant to ``a -> alpha a + beta`` (alpha > 0), so a DRR's
arbitrary intensity scale and a log-transformed X-ray compare directly.

* :func:`ncc`: global normalised cross-correlation (Pearson's r).
* :func:`gradient_ncc`: NCC of the Sobel gradients (mean of the x and y
  parts); driven by edges, insensitive to slowly varying soft tissue.
* :func:`patch_ncc`: mean local NCC over ``patch_size`` windows (box filters,
  kornia), so each region is normalised on its own.
* :func:`multiscale_ncc`: the mean of the global NCC and patch NCCs at
  several window sizes; the default intensity-refinement objective.
* :func:`image_similarity`: pick one by name.

A constant image has no defined correlation: it scores 0 (an epsilon keeps the
gradients finite).
"""
from __future__ import annotations

import torch

from xrecon.errors import InputError, ShapeError

_EPS = 1e-8


def _as_batch(name: str, x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise ShapeError(name, "(B, H, W) or (B, 1, H, W)", tuple(x.shape))
    return x if x.is_floating_point() else x.float()


def _pair(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_batch("a", a), _as_batch("b", b)
    if a.shape != b.shape:
        raise ShapeError("b", f"{tuple(a.shape)} to match a", tuple(b.shape))
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(dtype)


def ncc(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Global NCC ``(B,)`` of ``a, b: (B, H, W)``; ``mask: (B, H, W)`` or ``(H, W)``
    restricts it to the pixels where the mask is non-zero (weights)."""
    a, b = _pair(a, b)
    w = torch.ones_like(a) if mask is None else torch.as_tensor(mask, dtype=a.dtype).expand_as(a)
    wsum = w.sum(dim=(-2, -1)).clamp(min=_EPS)
    ma = (w * a).sum(dim=(-2, -1)) / wsum
    mb = (w * b).sum(dim=(-2, -1)) / wsum
    da, db = a - ma[:, None, None], b - mb[:, None, None]
    cov = (w * da * db).sum(dim=(-2, -1))
    var_a = (w * da * da).sum(dim=(-2, -1))
    var_b = (w * db * db).sum(dim=(-2, -1))
    return cov / torch.sqrt(var_a * var_b + _EPS)


def gradient_ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Gradient NCC ``(B,)``: mean of the NCCs of the x and y Sobel gradients."""
    from kornia.filters import spatial_gradient

    a, b = _pair(a, b)
    ga = spatial_gradient(a[:, None])[:, 0]  # (B, 2, H, W)
    gb = spatial_gradient(b[:, None])[:, 0]
    # drop the one-pixel border where the filter sees the padding
    ga, gb = ga[..., 1:-1, 1:-1], gb[..., 1:-1, 1:-1]
    return 0.5 * (ncc(ga[:, 0], gb[:, 0]) + ncc(ga[:, 1], gb[:, 1]))


def patch_ncc(a: torch.Tensor, b: torch.Tensor, patch_size: int = 9) -> torch.Tensor:
    """Mean local NCC ``(B,)`` over ``patch_size x patch_size`` windows centred on
    every pixel (box filters with reflected borders). Flat windows in both
    images count as 0."""
    from kornia.filters import box_blur

    if patch_size < 3 or patch_size % 2 == 0:
        raise InputError(f"patch_size must be an odd number >= 3, got {patch_size}")
    a, b = _pair(a, b)
    if min(a.shape[-2:]) < patch_size:
        raise ShapeError("a", f"images at least {patch_size} px on each side", tuple(a.shape))

    def mean(x):
        return box_blur(x[:, None], patch_size)[:, 0]

    ma, mb = mean(a), mean(b)
    cov = mean(a * b) - ma * mb
    var_a = (mean(a * a) - ma * ma).clamp(min=0)
    var_b = (mean(b * b) - mb * mb).clamp(min=0)
    # scale-free epsilon: relative to each image's global variance
    eps_a = 1e-6 * a.var(dim=(-2, -1), keepdim=True) + _EPS
    eps_b = 1e-6 * b.var(dim=(-2, -1), keepdim=True) + _EPS
    local = cov / torch.sqrt((var_a + eps_a) * (var_b + eps_b))
    return local.mean(dim=(-2, -1))


def multiscale_ncc(a: torch.Tensor, b: torch.Tensor, patch_sizes: tuple[int, ...] = (9, 17)) -> torch.Tensor:
    """Mean of the global NCC and the patch NCCs at ``patch_sizes`` ``(B,)``.
    Windows larger than the image are skipped."""
    a, b = _pair(a, b)
    terms = [ncc(a, b)]
    terms += [patch_ncc(a, b, p) for p in patch_sizes if p <= min(a.shape[-2:])]
    return torch.stack(terms, 0).mean(0)


SIMILARITIES = {"ncc": ncc, "gradient_ncc": gradient_ncc, "patch_ncc": patch_ncc, "multiscale_ncc": multiscale_ncc}


def image_similarity(name: str):
    """The similarity function called ``name`` (one of :data:`SIMILARITIES`)."""
    try:
        return SIMILARITIES[name]
    except KeyError:
        raise InputError(f"unknown similarity {name!r}; choose from {sorted(SIMILARITIES)}") from None
