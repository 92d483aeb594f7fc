"""An X-ray made ready for a network: checked, and resized together with its camera.

Every method that runs a network on an X-ray (scene coordinate regression,
the patient-wide reconstruction, the evaluation harness) prepares the image
here, so they all check and resample it the same way. The module sits below
:mod:`xrecon.methods` and knows only :mod:`xrecon.geometry` and
:mod:`xrecon.errors`: resizing an image changes its pixel grid, so the camera
is resized with it (:meth:`~xrecon.geometry.camera.Camera.resized`; pixel
conventions in ../shared/CONVENTIONS.md).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from xrecon.errors import InputError, ShapeError
from xrecon.geometry import Camera


def prepare_image(image, camera: Camera, height: int, width: int) -> tuple[torch.Tensor, Camera]:
    """An X-ray ``(H, W)`` (numpy / torch, any intensity scale) resized to the
    network's ``height x width`` as ``(1, 1, height, width)`` float32, and the
    camera resized to match (:meth:`Camera.resized`).

    Leading singleton axes (``(1, 1, H, W)``) are dropped; the resampling is
    area averaging (``F.interpolate(mode="area")``), skipped when the size
    already matches.

    Raises:
        ShapeError: the image is not 2D after dropping leading singleton axes.
        InputError: the image's size differs from its camera's, or it holds
            NaN / inf, or it is constant.
    """
    img = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image).float()
    while img.ndim > 2 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 2:
        raise ShapeError("image", "(H, W) grey-level X-ray", tuple(img.shape))
    if (img.shape[0], img.shape[1]) != (camera.height, camera.width):
        raise InputError(f"image is {img.shape[0]}x{img.shape[1]} px but its camera describes "
                         f"{camera.height}x{camera.width} px")
    if not torch.isfinite(img).all():
        raise InputError("image holds NaN or inf")
    if float(img.std()) == 0.0:
        raise InputError("image is constant (no anatomy to register)")
    if img.shape != (height, width):
        img = F.interpolate(img[None, None], size=(height, width), mode="area")[0, 0]
        camera = camera.resized(height, width)
    return img[None, None].contiguous(), camera
