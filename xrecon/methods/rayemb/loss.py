"""The contrastive loss of RayEmb (seed 003) over intersecting and non-intersecting rays.

For one subject seen in ``V`` views and one 3D landmark ``X`` projecting to
``uv_v`` in view ``v``: each view ``q`` in turn is the query; the landmark's
subspace is spanned by the embeddings at ``uv_v`` of the *other* views
(:func:`~xrecon.methods.rayemb.subspace.subspace_similarity`); the ray of ``q``
through ``X`` (pixel ``uv_q``) is the positive and every other pixel of ``q``
(rays missing ``X``) a negative::

    loss = -log( exp(sim(P, x+) / tau) / sum_x exp(sim(P, x) / tau) )

The positive's pixel is sub-pixel: its probability mass is split bilinearly over
the four pixels around ``uv_q`` (a soft cross-entropy target), so the loss does
not ask neighbouring, almost intersecting rays to be far apart. Pixels are
OpenCV's (integer values at pixel centres, ../shared/CONVENTIONS.md).
A (landmark, query) pair counts only when ``X`` projects inside the query and
inside at least ``min_templates`` other views.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from xrecon.errors import ShapeError
from xrecon.methods.rayemb.subspace import similarity_maps, subspace_basis


def sample_embeddings(embedding: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear read of ``embedding: (B, D, H, W)`` at pixels ``uv: (B, L, 2)``
    (``(u, v)`` = column, row; integers at pixel centres) -> ``(B, L, D)``.
    Points outside the image read the border (mask them with the in-image flag)."""
    _, _, h, w = embedding.shape
    grid = torch.stack([2 * uv[..., 0] / max(w - 1, 1) - 1, 2 * uv[..., 1] / max(h - 1, 1) - 1], dim=-1)
    out = F.grid_sample(embedding, grid[:, None].to(embedding.dtype), mode="bilinear", padding_mode="border",
                        align_corners=True)  # (B, D, 1, L)
    return out[:, :, 0].transpose(1, 2)


def inside_image(uv: torch.Tensor, height: int, width: int, margin_px: float = 0.0) -> torch.Tensor:
    """``(...)`` bool: ``uv: (..., 2)`` lies within the pixel centres' box shrunk by ``margin_px``."""
    return ((uv[..., 0] >= margin_px) & (uv[..., 0] <= width - 1 - margin_px)
            & (uv[..., 1] >= margin_px) & (uv[..., 1] <= height - 1 - margin_px))


def bilinear_target(uv: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Soft one-hot maps ``(L, H * W)``: the bilinear weights of ``uv: (L, 2)`` on
    the four surrounding pixel centres (weights of pixels outside are dropped and
    the rest renormalised)."""
    u0, v0 = uv[:, 0].floor(), uv[:, 1].floor()
    fu, fv = uv[:, 0] - u0, uv[:, 1] - v0
    target = torch.zeros(len(uv), height * width, dtype=uv.dtype, device=uv.device)
    for du, dv, wgt in ((0, 0, (1 - fu) * (1 - fv)), (1, 0, fu * (1 - fv)), (0, 1, (1 - fu) * fv), (1, 1, fu * fv)):
        uu, vv = (u0 + du).long(), (v0 + dv).long()
        ok = (uu >= 0) & (uu < width) & (vv >= 0) & (vv < height)
        idx = (vv.clamp(0, height - 1) * width + uu.clamp(0, width - 1))
        target.scatter_add_(1, idx[:, None], (wgt * ok)[:, None])
    return target / target.sum(1, keepdim=True).clamp_min(1e-12)


def ray_contrastive_loss(embeddings: torch.Tensor, uv: torch.Tensor, valid: torch.Tensor, tau: float = 0.03,
                         min_templates: int = 2, eps: float = 1e-5, with_error: bool = False):
    """Seed 003's contrastive loss for a batch of subjects.

    Args:
        embeddings: ``(S, V, D, H, W)`` ray embeddings of ``V`` views of each of ``S`` subjects.
        uv: ``(S, L, V, 2)`` pixels of ``L`` landmarks of each subject in each view.
        valid: ``(S, L, V)`` bool, the landmark projects inside the view.
        tau: temperature.
        min_templates: fewest other views a landmark must be seen in to build its subspace.
        eps: Gram regularisation (:func:`subspace_similarity`).
        with_error: also return each subject's mean pixel distance between the
            similarity's arg-max and the true projection (a validation metric).

    Returns:
        ``loss (S,)`` (mean over the subject's counted pairs; 0 where none),
        ``n_pairs (S,)``, and with ``with_error`` ``error_px (S,)`` (NaN where none).
    """
    s_n, v_n, d, h, w = embeddings.shape
    if uv.shape[:1] != (s_n,) or uv.shape[2:] != (v_n, 2) or valid.shape != uv.shape[:3]:
        raise ShapeError("uv / valid", f"({s_n}, L, {v_n}, 2) / ({s_n}, L, {v_n})", (tuple(uv.shape), tuple(valid.shape)))
    losses, counts, errors = [], [], []
    for s in range(s_n):
        emb = embeddings[s]  # (V, D, H, W)
        rays = sample_embeddings(emb, uv[s].transpose(0, 1))  # (V, L, D)
        rays = rays.transpose(0, 1)  # (L, V, D)
        flat = emb.flatten(2).transpose(1, 2)  # (V, HW, D)
        total = embeddings.new_zeros(())
        err_sum, n = 0.0, 0
        for q in range(v_n):
            others = valid[s].clone()
            others[:, q] = False
            use = valid[s, :, q] & (others.sum(1) >= min_templates)
            if not use.any():
                continue
            sim = similarity_maps(flat[q], subspace_basis(rays[use], others[use], eps))  # (L', HW)
            logp = F.log_softmax(sim / tau, dim=-1)
            target = bilinear_target(uv[s, use, q].to(sim.dtype), h, w)
            total = total - (target * logp).sum()
            n += int(use.sum())
            if with_error:
                with torch.no_grad():
                    idx = sim.argmax(-1)
                    found = torch.stack([(idx % w).to(uv.dtype), (idx // w).to(uv.dtype)], -1)
                    err_sum += float((found - uv[s, use, q]).norm(dim=-1).sum())
        losses.append(total / max(n, 1))
        counts.append(n)
        errors.append(err_sum / n if n else float("nan"))
    out = (torch.stack(losses), torch.tensor(counts, device=embeddings.device))
    if with_error:
        return out + (torch.tensor(errors, dtype=torch.float64),)
    return out


class RayEmbLoss:
    """``loss_fn(model, batch)`` and ``metrics(model, batch)`` for :func:`xrecon.train.train`.

    ``batch``: ``image (S, V, 1, H, W)``, ``uv (S, L, V, 2)``, ``valid (S, L, V)``
    (:class:`~xrecon.methods.rayemb.data.RayEmbDataset` items, collated).
    """

    def __init__(self, tau: float = 0.03, min_templates: int = 2):
        self.tau, self.min_templates = float(tau), int(min_templates)

    def _embed(self, model, batch) -> torch.Tensor:
        img = batch["image"]
        s, v = img.shape[:2]
        emb = model(img.flatten(0, 1))
        return emb.view(s, v, *emb.shape[1:])

    def __call__(self, model, batch):
        emb = self._embed(model, batch)
        loss, n = ray_contrastive_loss(emb, batch["uv"], batch["valid"] > 0.5, self.tau, self.min_templates)
        counted = (n > 0).to(loss.dtype)
        return (loss * counted).sum() / counted.sum().clamp_min(1.0), {"pairs": n.float().mean()}

    @torch.no_grad()
    def metrics(self, model, batch) -> dict:
        emb = self._embed(model, batch)
        _, n, err = ray_contrastive_loss(emb, batch["uv"], batch["valid"] > 0.5, self.tau, self.min_templates,
                                         with_error=True)
        # a subject with no usable landmark counts as the worst case, never silently dropped
        return {"argmax_error_px": torch.nan_to_num(err, nan=float(batch["image"].shape[-1]))}
