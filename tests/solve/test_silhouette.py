"""Depth and pose from a silhouette: a sphere of known radius with its exact
projected disk as the mask, placed too near or too far; the pose of three
ellipsoids recovered from a perturbed start by either search."""
from __future__ import annotations

import numpy as np
import pytest

from xrecon.errors import ShapeError
from xrecon.solve.silhouette import silhouette_depth, silhouette_masks, silhouette_pose

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
    assert (disk_mask(centre) > 0.5)[:, -1].any()  # the first disk is cut by the edge
    for s, off in zip(sil, offsets):
        disk = disk_mask(centre + off) > 0.5
        assert (s ^ disk).sum() <= 0.02 * disk.sum(), (s ^ disk).sum()


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


def three_blobs():
    """Three ellipsoids of different sizes and axes, apart from each other, centred
    on their frame's origin: unlike one ellipsoid (whose elliptic silhouette a
    rotation and a change of distance can trade for each other), their
    silhouette fixes all six degrees of freedom."""
    parts = []
    for centre, axes in [((-40, 0, 0), (1.0, 0.5, 0.35)), ((35, 10, 0), (0.6, 0.8, 0.3)),
                         ((0, -35, 15), (0.5, 0.35, 0.4))]:
        v, f = sphere(centre=(0.0, 0.0, 0.0))
        parts.append((v * 0.7 * np.array(axes) + np.array(centre, np.float64), f))
    offsets = np.cumsum([0] + [len(v) for v, _ in parts])
    verts = np.concatenate([v for v, _ in parts])
    faces = np.concatenate([f + o for (_, f), o in zip(parts, offsets)])
    return verts - verts.mean(0), faces


@pytest.mark.parametrize("method", ["contour", "nelder-mead", "powell"])
@pytest.mark.parametrize("change", [(2, -2, 1, 3.0, -2.5, 25.0), (1, 2, -2, 2.0, 3.0, -20.0)])
def test_the_pose_search_recovers_a_perturbed_pose(method, change):
    """Three blobs seen at a known pose give the mask; started about 3 deg, 4 mm
    across and 20-25 mm (4 %) along the optical axis away, the search comes back
    to it (within the pixel grid's resolution: 1 px is 2 mm across and ~4 % of
    the distance for these 100 mm blobs at 600 mm)."""
    from scipy.spatial.transform import Rotation

    verts, faces = three_blobs()
    truth = np.eye(4)
    truth[:3, :3] = Rotation.from_euler("xyz", [20, -30, 15], degrees=True).as_matrix()
    truth[:3, 3] = [8.0, -6.0, DIST]
    mask = silhouette_masks(verts @ truth[:3, :3].T + truth[:3, 3], faces, K, SIZE, SIZE)[0].astype(float)
    start = truth.copy()
    start[:3, :3] = Rotation.from_euler("xyz", change[:3], degrees=True).as_matrix() @ truth[:3, :3]
    start[:3, 3] += change[3:]
    res = silhouette_pose(verts, faces, start, K, mask, method=method)
    assert res.success and res.dice > res.dice_at_input + 0.05 and res.dice > 0.98
    found = res.object_to_cam  # the blobs are centred on their frame's origin: t is their centroid
    assert abs(found[2, 3] - DIST) < 4.0 and np.linalg.norm(found[:2, 3] - truth[:2, 3]) < 1.0, found[:3, 3]
    rot_err = np.degrees(np.arccos(np.clip((np.trace(found[:3, :3].T @ truth[:3, :3]) - 1) / 2, -1, 1)))
    assert rot_err < 2.0, rot_err


def test_the_pose_search_refuses_a_start_off_the_mask_and_bad_settings():
    """A start whose silhouette misses the mask is refused, the pose returned
    unchanged; an unknown search method is a clear error."""
    verts, faces = three_blobs()
    truth = np.eye(4)
    truth[2, 3] = DIST
    mask = silhouette_masks(verts + truth[:3, 3], faces, K, SIZE, SIZE)[0].astype(float)
    far = truth.copy()
    far[:3, 3] = [400.0, 0.0, DIST]
    miss = silhouette_pose(verts, faces, far, K, mask)
    assert not miss.success and np.array_equal(miss.object_to_cam, far) and miss.reason
    with pytest.raises(ValueError, match="method must be one of"):
        silhouette_pose(verts, faces, truth, K, mask, method="bfgs")
    with pytest.raises(ValueError, match="simplex_runs"):
        silhouette_pose(verts, faces, truth, K, mask, simplex_runs=0)


def test_the_pose_search_keeps_to_its_evaluation_budget():
    """``max_evaluations`` bounds every silhouette rendered, the start's included,
    over the simplex runs and the polish together."""
    verts, faces = three_blobs()
    truth = np.eye(4)
    truth[2, 3] = DIST
    mask = silhouette_masks(verts + truth[:3, 3], faces, K, SIZE, SIZE)[0].astype(float)
    start = truth.copy()
    start[:3, 3] += [3.0, -2.0, 25.0]
    for budget in (1, 2, 40):
        res = silhouette_pose(verts, faces, start, K, mask, max_evaluations=budget)
        assert res.success and res.n_evaluations <= budget, (budget, res.n_evaluations)
    assert res.dice > res.dice_at_input  # 40 silhouettes already improve on the start


def test_the_contour_search_hardly_moves_when_the_mask_is_rounded():
    """A soft mask (the blobs' silhouette, blurred like a network's output) and the
    same mask rounded to 1 / 65535 with a start 0.05 mm away: the outline search
    lands within 0.05 mm of itself, where the Dice search, whose objective is made
    of whole pixels, scatters by tenths of a millimetre or more."""
    from scipy.ndimage import gaussian_filter
    from scipy.spatial.transform import Rotation

    verts, faces = three_blobs()
    truth = np.eye(4)
    truth[:3, :3] = Rotation.from_euler("xyz", [20, -30, 15], degrees=True).as_matrix()
    truth[:3, 3] = [8.0, -6.0, DIST]
    mask = gaussian_filter(silhouette_masks(verts @ truth[:3, :3].T + truth[:3, 3], faces, K, SIZE, SIZE)[0]
                           .astype(float), 0.8)
    start = truth.copy()
    start[:3, :3] = Rotation.from_euler("xyz", [1, 2, -2], degrees=True).as_matrix() @ truth[:3, :3]
    start[:3, 3] += [2.0, 3.0, -20.0]
    nudged = start.copy()
    nudged[:3, 3] += [0.05, -0.03, 0.04]

    def apart(a, b):
        return np.linalg.norm(verts @ (a[:3, :3] - b[:3, :3]).T + (a[:3, 3] - b[:3, 3]), axis=1).mean()

    spread, found = {}, {}
    for method in ("contour", "nelder-mead"):
        a = silhouette_pose(verts, faces, start, K, mask, method=method)
        b = silhouette_pose(verts, faces, nudged, K, np.round(mask * 65535) / 65535, method=method)
        assert a.success and b.success
        spread[method], found[method] = apart(a.object_to_cam, b.object_to_cam), a.object_to_cam
    assert spread["contour"] < 0.05, spread
    assert spread["contour"] < spread["nelder-mead"], spread
    assert apart(found["contour"], truth) < 3.0  # and near the truth (1 px ~ 2 mm across here)
