"""Overlay pictures stay bounded in size and the outline stays on the bone."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh

from xrecon.errors import ShapeError
from xrecon.geometry import Camera
from xrecon.methods.recon.overlay import GREEN, OVERLAY_MAX_SIDE, draw_overlay, silhouette


def _scene():
    """A 40 mm sphere 700 mm in front of a 400 x 600 camera, off the optical axis."""
    cam = Camera.from_detector(1000.0, 0.3, 400, 600)
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=20.0)
    centre = np.array([25.0, -10.0, 700.0])
    return cam, np.asarray(sphere.vertices) + centre, np.asarray(sphere.faces), centre


def _centroid(mask: np.ndarray) -> np.ndarray:
    v, u = np.nonzero(mask)
    return np.array([u.mean(), v.mean()])


def test_silhouette_at_a_bounded_size_is_the_scaled_full_size_silhouette():
    cam, V, F, centre = _scene()
    full = silhouette(V, F, cam)
    small = silhouette(V, F, cam, max_side=150)
    assert full.shape == (400, 600) and small.shape == (100, 150)
    scale = np.array([150 / 600, 100 / 400])
    assert np.abs((_centroid(full) + 0.5) * scale - 0.5 - _centroid(small)).max() < 0.5
    uv = cam.project(centre[None])[0][0, 0].numpy()
    assert np.abs(_centroid(full) - uv).max() < 1.0  # the sphere is where the camera says
    assert small.sum() == pytest.approx(full.sum() * scale.prod(), rel=0.1)


def test_overlay_is_bounded_and_the_outline_and_points_stay_in_place():
    cam, V, F, centre = _scene()
    big = cam.resized(2400, 3600)  # a large X-ray of the same scene
    image = np.random.default_rng(0).random((2400, 3600)).astype(np.float32)
    uv = big.project(centre[None])[0][0].numpy()  # (1, 2): the sphere's centre in the big image
    mask = silhouette(V, F, big, max_side=OVERLAY_MAX_SIDE)
    rgb = draw_overlay(image, [(mask, GREEN)], [(uv, (255, 0, 255))])
    assert rgb.shape == (683, 1024, 3) and rgb.dtype == np.uint8
    outline = np.all(rgb == GREEN, axis=-1)
    picture_centre = (uv[0] + 0.5) * np.array([1024 / 3600, 683 / 2400]) - 0.5
    assert np.abs(_centroid(outline) - picture_centre).max() < 1.0
    dot = np.argwhere(np.all(rgb == (255, 0, 255), axis=-1))
    assert len(dot) == 1 and np.abs(dot[0, ::-1] - picture_centre).max() <= 0.5 + 1e-9
    # a mask at the image's own size is shrunk onto the picture, and lands at the same place
    mid = cam.resized(600, 900)
    rgb = draw_overlay(image[:600, :900], [(silhouette(V, F, mid), GREEN)], max_side=300)
    assert rgb.shape == (200, 300, 3)
    picture_centre = (mid.project(centre[None])[0][0, 0].numpy() + 0.5) / 3 - 0.5
    assert np.abs(_centroid(np.all(rgb == GREEN, axis=-1)) - picture_centre).max() < 1.0
    with pytest.raises(ShapeError):
        draw_overlay(image, [(np.zeros((10, 10), bool), GREEN)])


def test_small_images_keep_their_size():
    cam, V, F, _ = _scene()
    image = np.random.default_rng(1).random((400, 600))
    mask = silhouette(V, F, cam, max_side=OVERLAY_MAX_SIDE)
    rgb = draw_overlay(image, [(mask, GREEN)])
    assert rgb.shape == (400, 600, 3)
    assert np.all(rgb == GREEN, axis=-1).sum() > 100
