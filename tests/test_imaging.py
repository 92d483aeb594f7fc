"""xrecon.imaging.prepare_image: the one image preparation every method uses."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xrecon.errors import InputError, ShapeError
from xrecon.geometry import Camera
from xrecon.imaging import prepare_image


def _camera(height: int, width: int) -> Camera:
    return Camera.from_detector(sdd_mm=1000.0, pixel_spacing_mm=0.5, height=height, width=width)


def test_downsizing_averages_blocks_and_resizes_the_camera():
    img = np.random.default_rng(0).normal(size=(64, 48)) * 300 + 40
    cam = _camera(64, 48)
    x, cam_small = prepare_image(img, cam, 16, 12)
    assert x.shape == (1, 1, 16, 12) and x.dtype == torch.float32 and x.is_contiguous()
    # naive reference: the mean of each 4 x 4 block
    blocks = img.astype(np.float32).reshape(16, 4, 12, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(x[0, 0].numpy(), blocks, rtol=1e-5, atol=1e-3)
    assert (cam_small.height, cam_small.width) == (16, 12)
    # the detector is unchanged: a world point lands at the same place in mm
    p = torch.tensor([[10.0, -20.0, 900.0]], dtype=torch.float64)
    uv_big, _ = cam.project(p)
    uv_small, _ = cam_small.project(p)
    assert torch.allclose((uv_small + 0.5) * 4, uv_big + 0.5, atol=1e-9)


def test_same_size_passes_through_and_leading_axes_are_dropped():
    img = torch.arange(20 * 30, dtype=torch.float64).reshape(1, 1, 20, 30)
    cam = _camera(20, 30)
    x, cam_out = prepare_image(img, cam, 20, 30)
    assert cam_out is cam
    assert torch.equal(x, img.float())


def test_bad_images_are_refused():
    cam = _camera(8, 8)
    with pytest.raises(ShapeError):
        prepare_image(np.ones((2, 8, 8)), cam, 4, 4)
    with pytest.raises(InputError, match="camera describes 8x8"):
        prepare_image(np.random.default_rng(1).random((8, 9)), cam, 4, 4)
    bad = np.random.default_rng(2).random((8, 8))
    bad[3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        prepare_image(bad, cam, 4, 4)
    with pytest.raises(InputError, match="constant"):
        prepare_image(np.full((8, 8), 7.0), cam, 4, 4)
