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

from xrecon.geometry import Camera
from xrecon.methods.recon.network import ReconNet
from xrecon.methods.scr.predict import prepare_image


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


@torch.no_grad()
def predict_dense(net: ReconNet, image, camera: Camera, mask_threshold: float = 0.5) -> DensePrediction:
    """Correspondences of one X-ray ``image: (H, W)`` seen by ``camera`` (its view 0).

    Raises :class:`~xrecon.errors.InputError` for an image that does not match
    its camera, holds NaN, or is constant.
    """
    size = net.config.image_size
    x, net_cam = prepare_image(image, camera[0], size, size)
    dev = next(net.parameters()).device
    out = net(x.to(dev))
    prob = torch.sigmoid(out.mask_logit[0]).cpu().numpy()
    fg = prob > mask_threshold
    vs, us = np.nonzero(fg)
    coords = net.denormalize(out.coords[0].permute(0, 2, 3, 1)).cpu().numpy()  # (2, h, w, 3)
    sigma = (torch.exp(out.log_sigma[0]) * net.scale_mm).cpu().numpy()  # (2, h, w)
    uv_net = np.stack([us, vs], axis=1).astype(np.float64)
    uv = net_to_image_uv(uv_net, (size, size), (camera.height, camera.width))
    canonical = np.concatenate([coords[0][vs, us], coords[1][vs, us]]).astype(np.float64)
    return DensePrediction(
        canonical_mm=canonical,
        uv=np.concatenate([uv, uv]),
        sigma_mm=np.concatenate([sigma[0][vs, us], sigma[1][vs, us]]).astype(np.float64),
        surface=np.repeat(np.array([0, 1]), len(us)),
        mask_prob=prob,
        shape_sd=out.shape_sd[0].cpu().numpy().astype(np.float64),
        net_camera=net_cam,
    )
