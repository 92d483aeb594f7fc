"""Run the reconstruction network on one X-ray and read out its correspondences.

:func:`predict_dense` resizes the image (and its camera) to the network's
input size, runs the network, and returns every bone pixel's predicted
canonical entry and exit points with their pixel coordinates *in the original
image* and their predicted error, plus the shape coefficients.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from xrecon.errors import InputError
from xrecon.geometry import Camera
from xrecon.imaging import prepare_image
from xrecon.methods.recon.network import ReconNet


@dataclass
class DensePrediction:
    """Network read-out for one image.

    Attributes:
        canonical_mm: ``(M, 3)`` predicted canonical points (model frame, mm),
            entry points first then exit points of the bone pixels.
        uv: ``(M, 2)`` their pixel ``(u, v)`` in the original image.
        sigma_mm: ``(M,)`` predicted error of each point (mm).
        surface: ``(M,)`` 0 = entry point, 1 = exit point.
        mask_prob: ``(h, w)`` bone probability at the network's resolution.
        shape_sd: ``(K,)`` predicted shape coefficients (SD).
        net_camera: the camera resized to the network's ``h x w`` grid.
    """

    canonical_mm: np.ndarray
    uv: np.ndarray
    sigma_mm: np.ndarray
    surface: np.ndarray
    mask_prob: np.ndarray
    shape_sd: np.ndarray
    net_camera: Camera


def net_to_image_uv(uv_net: np.ndarray, net_size: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
    """Pixel centres ``(N, 2)`` of an ``h x w`` resampling -> pixels of the ``H x W`` original
    (the inverse of :meth:`Camera.resized`: ``u = (u' + 0.5) W / w - 0.5``)."""
    (h, w), (H, W) = net_size, image_size
    out = np.asarray(uv_net, np.float64).copy()
    out[:, 0] = (out[:, 0] + 0.5) * W / w - 0.5
    out[:, 1] = (out[:, 1] + 0.5) * H / h - 0.5
    return out


#: pixel shifts ``(dx, dy)`` used by test-time augmentation, in order; ``shifts=n`` uses the first n
#: (the odd shifts change the stride-2 phase, the others the pooling grid's)
TTA_SHIFTS = ((0, 0), (1, 1), (8, 8), (1, 0), (0, 1), (4, 12), (12, 4), (9, 9))


@torch.no_grad()
def network_outputs(net: ReconNet, x: torch.Tensor, shifts: int = 1) -> tuple[torch.Tensor, ...]:
    """Dense outputs for one prepared image ``x: (1, 1, h, w)``, averaged over the
    first ``shifts`` entries of :data:`TTA_SHIFTS`.

    Each copy is the image moved right / down by ``(dx, dy)`` (edge pixels
    repeated); its outputs are moved back, and every pixel averages the copies
    in which it was inside the image (normalised coordinates, log sigma, mask
    probability; the shape coefficients are averaged over all copies).

    Returns:
        coords ``(2, 3, h, w)`` normalised, log_sigma ``(2, h, w)``, mask probability ``(h, w)``, shape_sd ``(K,)``.
    """
    if not 1 <= shifts <= len(TTA_SHIFTS):
        raise InputError(f"tta shifts must be in 1..{len(TTA_SHIFTS)}, got {shifts}")
    h, w = x.shape[-2:]
    acc = torch.zeros(10, h, w, device=x.device)  # 6 coords, 2 log sigma, mask prob, count
    shape_sd = 0.0
    for dx, dy in TTA_SHIFTS[:shifts]:
        xs = F.pad(x, (dx, 0, dy, 0), mode="replicate")[..., :h, :w] if dx or dy else x
        out = net(xs)
        dense = torch.cat([out.coords[0].reshape(6, h, w), out.log_sigma[0], torch.sigmoid(out.mask_logit)])
        acc[:9, : h - dy, : w - dx] += dense[:, dy:, dx:]
        acc[9, : h - dy, : w - dx] += 1
        shape_sd = shape_sd + out.shape_sd[0]
    mean = acc[:9] / acc[9]
    return mean[:6].reshape(2, 3, h, w), mean[6:8], mean[8], shape_sd / shifts


@torch.no_grad()
def predict_dense(net: ReconNet, image, camera: Camera, mask_threshold: float = 0.5,
                  shifts: int = 1) -> DensePrediction:
    """Correspondences of one X-ray ``image: (H, W)`` seen by ``camera`` (its view 0);
    ``shifts > 1`` averages the network over shifted copies (:func:`network_outputs`).

    Raises :class:`~xrecon.errors.InputError` for an image that does not match
    its camera, holds NaN, or is constant.
    """
    size = net.config.image_size
    x, net_cam = prepare_image(image, camera[0], size, size)
    dev = next(net.parameters()).device
    coords_n, log_sigma, prob_t, shape_sd = network_outputs(net, x.to(dev), shifts)
    prob = prob_t.cpu().numpy()
    fg = prob > mask_threshold
    vs, us = np.nonzero(fg)
    coords = net.denormalize(coords_n.permute(0, 2, 3, 1)).cpu().numpy()  # (2, h, w, 3)
    sigma = (torch.exp(log_sigma) * net.scale_mm).cpu().numpy()  # (2, h, w)
    uv_net = np.stack([us, vs], axis=1).astype(np.float64)
    uv = net_to_image_uv(uv_net, (size, size), (camera.height, camera.width))
    canonical = np.concatenate([coords[0][vs, us], coords[1][vs, us]]).astype(np.float64)
    return DensePrediction(
        canonical_mm=canonical,
        uv=np.concatenate([uv, uv]),
        sigma_mm=np.concatenate([sigma[0][vs, us], sigma[1][vs, us]]).astype(np.float64),
        surface=np.repeat(np.array([0, 1]), len(us)),
        mask_prob=prob,
        shape_sd=shape_sd.cpu().numpy().astype(np.float64),
        net_camera=net_cam,
    )
