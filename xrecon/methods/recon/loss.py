"""Loss and validation metrics of the reconstruction network.

Terms (each a mean over the batch; coordinates in the network's normalised units):

* ``coord``: Euclidean error of the entry and exit canonical coordinates on
  bone pixels (an L1-like norm: robust to the few pixels grazing the surface).
  With ``along_ray`` < 1 the error's component along the pixel's ray counts
  that much less: ``sqrt(e_across^2 + along_ray^2 e_along^2)``
  (:func:`xrecon.train.losses.ray_weighted_sq`; needs ``cam_source``). A
  heuristic here, not an invariance: the pipeline snaps each prediction onto
  the mean surface before PnP, so a slide along the ray becomes a shift
  along an oblique surface, partly visible across the ray; only the
  component along the surface normal is truly lost. Keep it well above 0;
* ``sigma``: Laplace negative log-likelihood of that (detached) error under the
  predicted sigma, ``e / sigma + log sigma``, so sigma learns to predict the
  error without pulling on the coordinates (seed 002's uncertainty, decoupled
  for stability). With ``coupled`` the error is not detached and the
  ``coord`` term leaves the loss (it is still reported): the coordinates then
  learn from the likelihood alone, each pixel's error weighted by
  ``sigma_weight / sigma``, so pixels the network is sure of pull hardest
  (seed 002's coupled likelihood, here Laplace; the scene-coordinate network
  gained from the coupled form, docs/scr.md);
* ``mask``: binary cross-entropy of the bone mask;
* ``shape``: mean vertex error (normalised mm) of the instance built from the
  predicted coefficients on a fixed vertex subset, which weights each mode by
  how far it moves the surface (mode 1, size, dominates), plus a small
  squared error on the coefficients themselves (SD units) so the weak modes
  are learnt too. Negatives (``has_bone = 0``: no bone in the image) train
  the mask only. Zoomed images (``zoom`` > 1 in the batch, from
  :class:`xrecon.sim.augment.ZoomAugment`) do not train mode 1 (size): a zoom
  is a longer focal length, which the network does not see, so a zoomed bone
  looks like a bigger or nearer one and its size label no longer matches the
  image under the training set-up's depth prior; their other modes, mask and
  canonical coordinates (attached to the rays) stay exact;
* ``layout``: the error of the in-plane *scale* of the predicted coordinates.
  Rotated into the camera's axes and centred, the predicted points of the
  image are fitted to the true ones by one scale factor ``s``
  (:func:`xrecon.train.losses.inplane_scale`); the term is ``|s - 1|`` in per
  cent (1 = a 1 % error).
  This is the part of the coordinate error that PnP turns into depth: points
  spread 1 % too little over the image put the bone 1 % (about 8 mm) too close
  to the source, however small each pixel's error. The per-pixel term treats
  pixels as independent and does not single it out (in a check on 32
  validation cases, the scale error of an earlier CPU model's predictions,
  1.0 % median, correlated with the relative depth error of the CT
  registration at r = 0.67, slope 0.97). Fine-tuning with it did not improve
  the registrations on the CPU model (docs/reconstruction.md). Needs ``cam_rotation (B, 3, 3)`` in the batch; cases with fewer
  than ``MIN_LAYOUT_POINTS`` points do not count.

A batch is a dict: ``image (B, 1, H, W)``, ``mask (B, H, W)``, ``canonical
(B, 2, 3, H, W)`` (mm, model frame), ``shape_sd (B, K)``, optionally ``has_bone (B,)``,
``cam_rotation (B, 3, 3)``, ``cam_source (B, 3)`` (mm, model frame) and ``zoom (B,)``.

Validation also reports ``coord_across_mm``: the error across the ray alone
(about the reprojection error in mm at the point's depth, before the
pipeline's snapping), whatever the weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xrecon.errors import InputError
from xrecon.train.losses import along_ray_sq, ray_weighted_sq, scale_error_pct


@dataclass(frozen=True)
class ReconLossWeights:
    """Weights of the loss terms (see module docstring). ``layout`` = 0,
    ``along_ray`` = 1 and ``coupled`` = False give the loss the first models
    were trained with; ``coupled`` = True drops ``coord`` from the loss and
    lets the ``sigma`` likelihood train the coordinates."""

    coord: float = 1.0
    sigma: float = 0.1
    mask: float = 0.2
    shape: float = 1.0
    shape_sd: float = 0.02
    layout: float = 0.0
    along_ray: float = 1.0
    coupled: bool = False

    def __post_init__(self):
        if self.coupled and self.sigma <= 0:
            raise InputError(f"the coupled likelihood needs a sigma weight > 0, got {self.sigma}")
        if self.layout < 0:
            raise InputError(f"the layout weight must be >= 0, got {self.layout}")
        if self.mask <= 0:
            raise InputError(f"the mask weight must be > 0 (the pipeline needs the bone mask), got {self.mask}")
        if not 0.0 <= self.along_ray <= 1.0:
            raise InputError(f"the along-ray weight must be in [0, 1], got {self.along_ray}")


class ReconLoss(nn.Module):
    """``loss_fn(model, batch) -> (loss, logs)`` for :func:`xrecon.train.train`.

    Args:
        modes_mm: ``(K, P, 3)`` displacement of P sample vertices per +1 SD of each mode.
        centre_mm: ``(3,)`` and ``scale_mm``: the network's coordinate normalisation.
        weights: :class:`ReconLossWeights`.
    """

    def __init__(self, modes_mm: torch.Tensor, centre_mm, scale_mm: float,
                 weights: ReconLossWeights = ReconLossWeights()):
        super().__init__()
        self.register_buffer("modes_mm", torch.as_tensor(modes_mm, dtype=torch.float32))
        self.register_buffer("centre_mm", torch.as_tensor(centre_mm, dtype=torch.float32).reshape(1, 1, 3, 1, 1))
        self.scale_mm = float(scale_mm)
        self.weights = weights

    @classmethod
    def for_network(cls, space, scale_mm: float, weights: ReconLossWeights = ReconLossWeights(),
                    n_vertices: int = 500) -> "ReconLoss":
        """The loss the training uses for a network on ``space``
        (:class:`~xrecon.methods.recon.shape.ShapeSpace`) with coordinate scale
        ``scale_mm``: the shape term on ``n_vertices`` vertices spread over the
        surface (:meth:`~xrecon.methods.recon.shape.ShapeSpace.vertex_subset`, seed 0)."""
        vids = space.vertex_subset(n_vertices, seed=0)
        return cls(torch.as_tensor(space.modes_mm[:, vids]), space.centre_mm, scale_mm, weights)

    def per_case(self, out, batch) -> dict[str, torch.Tensor]:
        """Every term and error, one value per case ``(B,)``."""
        mask = batch["mask"].float()  # (B, H, W)
        target = (batch["canonical"].float() - self.centre_mm.to(out.coords)) / self.scale_mm  # (B, 2, 3, H, W)
        source = batch.get("cam_source")
        if source is not None:
            source = (source.to(out.coords) - self.centre_mm.reshape(1, 3).to(out.coords)) / self.scale_mm
        elif self.weights.along_ray != 1.0:
            raise KeyError("ReconLoss: along_ray != 1 needs 'cam_source' in the batch")
        full = (out.coords - target).norm(dim=2)  # (B, 2, H, W)
        if self.weights.along_ray == 1.0:
            err = full
        else:
            err = (ray_weighted_sq(out.coords, target, source, self.weights.along_ray) + 1e-12).sqrt()
        m2 = mask[:, None].expand_as(err)
        n_fg = m2.sum(dim=(1, 2, 3)).clamp_min(1.0)
        coord = (err * m2).sum(dim=(1, 2, 3)) / n_fg
        with torch.no_grad():
            coord_full = (full.detach() * m2).sum(dim=(1, 2, 3)) / n_fg
            if source is not None:
                across = along_ray_sq(out.coords, target, source)[1].sqrt()
                coord_across = (across * m2).sum(dim=(1, 2, 3)) / n_fg
            else:
                coord_across = torch.full_like(coord_full, float("nan"))
        nll = (err if self.weights.coupled else err.detach()) * torch.exp(-out.log_sigma) + out.log_sigma
        sigma = (nll * m2).sum(dim=(1, 2, 3)) / n_fg
        mask_bce = F.binary_cross_entropy_with_logits(out.mask_logit, mask, reduction="none").mean(dim=(1, 2))
        d_sd = out.shape_sd - batch["shape_sd"].float()
        if "zoom" in batch:  # a zoomed image carries no size label (module docstring)
            size_known = (batch["zoom"].to(d_sd) == 1.0).to(d_sd)
            d_sd = torch.cat([d_sd[:, :1] * size_known[:, None], d_sd[:, 1:]], dim=1)
        k = d_sd.shape[1]
        vert = torch.einsum("bk,kpd->bpd", d_sd, self.modes_mm[:k].to(d_sd)).norm(dim=-1).mean(dim=1)
        with torch.no_grad():
            pred_mask = out.mask_logit > 0
            inter = (pred_mask & (mask > 0.5)).sum(dim=(1, 2)).float()
            union = (pred_mask | (mask > 0.5)).sum(dim=(1, 2)).float().clamp_min(1.0)
        has = batch.get("has_bone")
        has = torch.ones_like(vert) if has is None else has.float().to(vert)
        if "cam_rotation" in batch:
            layout = has * scale_error_pct(out.coords, target, mask > 0.5, batch["cam_rotation"])
        else:
            layout = torch.zeros_like(vert)
        return {"coord": coord, "sigma": sigma, "mask": mask_bce, "shape": has * vert / self.scale_mm,
                "shape_sd": has * (d_sd**2).mean(dim=1), "layout": layout,
                # reported in mm / SD, for people
                "coord_mm": coord_full * self.scale_mm, "coord_across_mm": coord_across * self.scale_mm,
                "shape_mm": vert.detach(),
                "size_sd_abs": d_sd[:, 0].detach().abs(), "mask_iou": (inter / union)}

    def forward(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        out = model(batch["image"])
        terms = self.per_case(out, batch)
        w = self.weights
        coord_weight = 0.0 if w.coupled else w.coord
        loss = (coord_weight * terms["coord"] + w.sigma * terms["sigma"] + w.mask * terms["mask"]
                + w.shape * terms["shape"] + w.shape_sd * terms["shape_sd"] + w.layout * terms["layout"]).mean()
        logs = {k: v.detach().mean() for k, v in terms.items()}
        return loss, logs

    @torch.no_grad()
    def metrics(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """Per-case validation metrics (mm, SD, IoU) for :func:`xrecon.train.train`."""
        terms = self.per_case(model(batch["image"]), batch)
        return {**{k: terms[k] for k in ("coord_mm", "coord_across_mm", "shape_mm", "size_sd_abs", "mask_iou")},
                "scale_error_pct": terms["layout"]}
