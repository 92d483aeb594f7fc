"""Distance from a silhouette: a sphere of known radius, its exact projected disk
as the mask, the sphere's mesh placed too near or too far."""
from __future__ import annotations

import numpy as np
import pytest

from xrecon.errors import ShapeError
from xrecon.solve.silhouette import silhouette_depth, silhouette_masks

F_PX, SIZE, RADIUS, DIST = 300.0, 96, 40.0, 600.0
K = np.array([[F_PX, 0.0, 47.5], [0.0, F_PX, 47.5], [0.0, 0.0, 1.0]])


def sphere(centre=(0.0, 0.0, DIST)):
    """A finely triangulated sphere (vertices on the true sphere), camera frame."""
    import open3d as o3d

    m = o3d.geometry.TriangleMesh.create_sphere(radius=RADIUS, resolution=80)
    return np.asarray(m.vertices) + np.asarray(centre), np.asarray(m.triangles)


def disk_mask(centre=(0.0, 0.0, DIST)):
    """The sphere's exact silhouette: pixels whose ray passes within RADIUS of its centre."""
    v, u = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    rays = np.stack([(u - K[0, 2]) / F_PX, (v - K[1, 2]) / F_PX, np.ones_like(u)], -1)
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    c = np.asarray(centre)
    dist_to_centre = np.linalg.norm(np.cross(rays, c), axis=-1)
    return (dist_to_centre <= RADIUS).astype(np.float64)


@pytest.mark.parametrize("offset", [0.96, 1.0, 1.05])
def test_the_silhouette_finds_the_true_distance(offset):
    """Points placed at ``offset`` x the true distance: the factor that brings them
    back is 1 / offset."""
    verts, faces = sphere(centre=(10.0, -5.0, DIST * offset))
    mask = disk_mask(centre=(10.0, -5.0, DIST))
    res = silhouette_depth(verts, faces, K, mask)
    assert res.success and not res.at_bound
    assert abs(res.scale * offset - 1.0) < 0.004, res.scale
    assert res.dice > 0.97
    if offset != 1.0:
        assert res.dice > res.dice_at_input + 0.02


def test_silhouettes_are_the_exact_projection_and_follow_offsets():
    """The sphere's silhouette is its disk, also where the image border cuts it;
    an offset moves it as moving the mesh would."""
    centre = np.array([60.0, 0.0, DIST])  # the disk is cut by the right edge
    verts, faces = sphere(centre=centre)
    offsets = np.array([[0.0, 0.0, 0.0], [-30.0, 10.0, 40.0]])
    sil = silhouette_masks(verts, faces, K, SIZE, SIZE, offsets)
    for s, off in zip(sil, offsets):
        disk = disk_mask(centre + off) > 0.5
        assert disk[:, -1].any() if not off.any() else disk.any()
        assert (sil_diff := (s ^ disk).sum()) <= 0.02 * disk.sum(), sil_diff


def test_no_overlap_fails_with_a_reason():
    verts, faces = sphere()
    res = silhouette_depth(verts, faces, K, np.zeros((SIZE, SIZE)))
    assert not res.success and "does not meet the mask" in res.reason


def test_bad_shapes_are_refused():
    verts, faces = sphere()
    with pytest.raises(ShapeError):
        silhouette_depth(np.zeros((5, 2)), faces, K, np.zeros((8, 8)))
    with pytest.raises(ShapeError):
        silhouette_depth(verts, faces, K, np.zeros(8))
