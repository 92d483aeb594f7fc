import numpy as np
import pytest

from tests.anatomy.scenes import ellipsoid_volume
from xrecon.anatomy.bone import (
    bone_from_labels,
    bone_from_threshold,
    coarser_spacing,
    mesh_from_mask,
    signed_volume,
    structure_centroids,
)
from xrecon.anatomy.volume import Volume
from xrecon.errors import InputError

RADII = np.array([14.0, 11.0, 13.0])


def _ellipsoid_labels(affine=None):
    ct = ellipsoid_volume(radii_mm=tuple(RADII), affine=affine)
    lab = Volume((ct.data > 500).astype(np.uint8) * 5, ct.voxel_to_world, "<labels>", {5: "blob"})
    return ct, lab


def _ellipsoid_residual(verts, centre, axes_world):
    """|r| - 1 where r is the ellipsoid 'radius' of each vertex (0 on the surface)."""
    local = (verts - centre) @ axes_world  # coordinates along the ellipsoid's axes
    return np.linalg.norm(local / RADII, axis=1) - 1.0


def _outward_fraction(verts, faces, centre):
    tri = verts[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return np.mean(np.einsum("ij,ij->i", n, tri.mean(1) - centre) > 0)


@pytest.mark.parametrize("flip", [False, True])
def test_ellipsoid_mesh_is_on_the_surface_outward_and_has_the_right_volume(flip, tmp_path, monkeypatch):
    monkeypatch.setenv("XRECON_CACHE_DIR", str(tmp_path))
    affine = np.diag([1.0, 1.2, 1.5, 1.0])
    affine[:3, 3] = (-10.0, 20.0, -30.0)
    if flip:  # det < 0: the i axis runs toward -x (like the chest CT)
        affine[0, 0] = -1.0
    ct, lab = _ellipsoid_labels(affine)
    bone = bone_from_labels(lab, "blob", ct=ct, smooth_sigma_mm=0.0, max_faces=None)
    centre = ct.center_world
    axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    # vertices within about half a voxel of the analytic surface
    res_mm = np.abs(_ellipsoid_residual(bone.vertices, centre, axes)) * RADII.min()
    assert res_mm.max() < 0.5 * 1.5
    assert _outward_fraction(bone.vertices, bone.faces, centre) > 0.99
    vol = signed_volume(bone.vertices, bone.faces)
    assert vol == pytest.approx(4 / 3 * np.pi * RADII.prod(), rel=0.05)
    # landmark = centroid of the voxels = the ellipsoid's centre
    assert bone.landmark_names == ["blob"]
    np.testing.assert_allclose(bone.landmarks[0], centre, atol=1e-6)


def test_smoothing_and_decimation_keep_the_shape():
    ct, lab = _ellipsoid_labels()
    raw = bone_from_labels(lab, 5, max_faces=None, smooth_sigma_mm=0.0, cache=False)
    small = bone_from_labels(lab, 5, max_faces=800, smooth_sigma_mm=0.8, cache=False)
    assert len(small.faces) <= 800 < len(raw.faces)
    assert signed_volume(small.vertices, small.faces) == pytest.approx(signed_volume(raw.vertices, raw.faces), rel=0.05)
    axes = np.eye(3)
    res_mm = np.abs(_ellipsoid_residual(small.vertices, ct.center_world, axes)) * RADII.min()
    assert np.median(res_mm) < 0.5
    assert _outward_fraction(small.vertices, small.faces, ct.center_world) > 0.99


def test_coarser_spacing_hits_the_face_budget():
    sp = np.array([0.7, 0.7, 2.5])
    new = coarser_spacing(sp, 900_000, 300_000)
    assert new[2] == 2.5 and new[0] > 0.7
    density = lambda s: 1 / (s[0] * s[1]) + 1 / (s[1] * s[2]) + 1 / (s[0] * s[2])  # noqa: E731
    assert 900_000 * density(new) / density(sp) == pytest.approx(300_000, rel=1e-3)


def test_cache_returns_the_same_mesh_and_keys_on_content(tmp_path, monkeypatch):
    monkeypatch.setenv("XRECON_CACHE_DIR", str(tmp_path))
    _, lab = _ellipsoid_labels()
    mask = lab.data > 0
    v1, f1 = mesh_from_mask(mask, lab.voxel_to_world, max_faces=None)
    entries = list((tmp_path / "bone_mesh").glob("*.npz"))
    assert len(entries) == 1
    v2, f2 = mesh_from_mask(mask, lab.voxel_to_world, max_faces=None)
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_array_equal(f1, f2)
    shifted = lab.voxel_to_world.copy()
    shifted[0, 3] += 5.0
    v3, _ = mesh_from_mask(mask, shifted, max_faces=None)
    assert len(list((tmp_path / "bone_mesh").glob("*.npz"))) == 2
    np.testing.assert_allclose(v3, v1 + [5.0, 0, 0], atol=1e-9)
    entries[0].write_bytes(b"corrupt")  # a corrupt entry is rebuilt, not an error
    v4, _ = mesh_from_mask(mask, lab.voxel_to_world, max_faces=None)
    np.testing.assert_array_equal(v4, v1)


def test_empty_masks_and_missing_labels_raise():
    _, lab = _ellipsoid_labels()
    with pytest.raises(InputError, match="<labels>: label id 3"):
        bone_from_labels(lab, 3)
    with pytest.raises(InputError, match="unknown label 'blog'.*blob"):
        bone_from_labels(lab, "blog")
    empty = lab.with_data(np.zeros_like(lab.data), source="empty.nii.gz")
    with pytest.raises(InputError, match="empty.nii.gz: label map holds no structure"):
        bone_from_labels(empty)
    with pytest.raises(InputError, match="empty mask"):
        mesh_from_mask(np.zeros((4, 4, 4), bool), np.eye(4))
    speck = np.zeros((10, 10, 10), bool)
    speck[5, 5, 5] = True
    with pytest.raises(InputError, match="speck.nii: mask is too thin to survive smooth_sigma_mm=2"):
        mesh_from_mask(speck, np.eye(4), smooth_sigma_mm=2.0, cache=False, source="speck.nii")


def test_threshold_keeps_large_components_ordered_by_size():
    shape = (50, 30, 30)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    data = np.full(shape, -50.0, np.float32)
    big_c, small_c = np.array([14, 15, 15]), np.array([38, 15, 15])
    data[np.linalg.norm(idx - big_c, axis=-1) <= 9] = 900
    data[np.linalg.norm(idx - small_c, axis=-1) <= 6] = 700
    data[2, 2, 2] = 1500  # a speck below min_component_voxels
    ct = Volume(data, np.diag([1.0, 1.0, 1.0, 1.0]), "ct.nii.gz")
    bone = bone_from_threshold(ct, 250, min_component_voxels=50, max_faces=None, cache=False)
    assert bone.landmark_names == ["component_1", "component_2"]
    np.testing.assert_allclose(bone.landmarks, [big_c, small_c], atol=1e-6)
    one = bone_from_threshold(ct, 250, min_component_voxels=50, max_components=1, max_faces=None, cache=False)
    assert len(one.landmarks) == 1 and one.vertices[:, 0].max() < 25
    with pytest.raises(InputError, match=r"ct.nii.gz: empty mask: no component .* >= 2000 HU"):
        bone_from_threshold(ct, 2000)


def test_hollow_bone_is_filled_when_asked():
    shape = (30, 30, 30)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    r = np.linalg.norm(idx - 14.5, axis=-1)
    data = np.where((r <= 10) & (r >= 7), 1200.0, 100.0).astype(np.float32)  # shell with marrow inside
    ct = Volume(data, np.eye(4), "<shell>")
    filled = bone_from_threshold(ct, 250, max_faces=None, cache=False, smooth_sigma_mm=0)
    hollow = bone_from_threshold(ct, 250, max_faces=None, cache=False, smooth_sigma_mm=0, fill_holes=False)
    assert signed_volume(filled.vertices, filled.faces) == pytest.approx(4 / 3 * np.pi * 10**3, rel=0.08)
    assert signed_volume(hollow.vertices, hollow.faces) == pytest.approx(4 / 3 * np.pi * (10**3 - 7**3), rel=0.12)


def test_structure_centroids_matches_a_naive_loop():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 4, size=(9, 8, 7))
    A = np.diag([0.5, 2.0, -1.0, 1.0])
    A[:3, 3] = (1, 2, 3)
    got = structure_centroids(lab, np.array([1, 3, 9]), A)
    for row, i in zip(got[:2], (1, 3)):
        ijk = np.argwhere(lab == i).mean(0)
        np.testing.assert_allclose(row, A[:3, :3] @ ijk + A[:3, 3])
    assert np.isnan(got[2]).all()


def test_real_ct_vertebra(default_ct):
    ct, labels = default_ct
    bone = bone_from_labels(labels, "vertebrae_T7", ct=ct, max_faces=None, cache=False)
    assert bone.landmark_names == ["vertebrae_T7"]
    # a vertebra: some tens of cm^3, its surface encloses its centroid region; all outward
    vol_cm3 = signed_volume(bone.vertices, bone.faces) / 1e3
    assert 10 < vol_cm3 < 60
    n_vox = int((labels.data == 37).sum())
    assert vol_cm3 == pytest.approx(n_vox * np.prod(ct.spacing_mm) / 1e3, rel=0.1)
    lo, hi = bone.vertices.min(0), bone.vertices.max(0)
    assert np.all(bone.landmarks[0] > lo) and np.all(bone.landmarks[0] < hi)
