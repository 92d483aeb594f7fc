"""Acceptance: the same CT read as NIfTI, as a DICOM series, and stored with a
flipped / permuted / rotated affine gives the same bone mesh in world mm
(within half a voxel). Uses a small crop of the real chest CT around T7."""
import nibabel as nib
import numpy as np
import open3d as o3d
import pytest

from tests.anatomy.scenes import write_dicom_series
from xrecon.anatomy.bone import bone_from_threshold
from xrecon.anatomy.ct_io import read_ct
from xrecon.anatomy.volume import Volume


@pytest.fixture(scope="module")
def t7_crop(default_ct):
    ct, labels = default_ct
    ijk = np.argwhere(labels.data == 37)
    lo, hi = ijk.min(0) - (4, 4, 1), ijk.max(0) + (5, 5, 2)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    A = ct.voxel_to_world.copy()
    A[:3, 3] = ct.voxel_to_world_points(lo[None])[0]
    return Volume(np.ascontiguousarray(ct.data[box]), A, "T7 crop")


def _mesh(ct):
    return bone_from_threshold(ct, 200.0, min_component_voxels=200, max_faces=None, cache=False, smooth_sigma_mm=0.5)


def _max_surface_distance(a, b):
    """Largest distance from a vertex of one mesh to the other's surface, both ways (mm)."""
    worst = 0.0
    for src, dst in ((a, b), (b, a)):
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(dst.vertices.astype(np.float32)), o3d.core.Tensor(dst.faces.astype(np.uint32)))
        d = scene.compute_distance(o3d.core.Tensor(src.vertices.astype(np.float32))).numpy()
        worst = max(worst, float(d.max()))
    return worst


def test_nifti_dicom_and_reoriented_storage_give_the_same_mesh(t7_crop, tmp_path):
    crop = t7_crop
    half_voxel = 0.5 * crop.spacing_mm.min()
    nib.save(nib.Nifti1Image(crop.data.astype(np.int16), crop.voxel_to_world), str(tmp_path / "ct.nii.gz"))
    ref = _mesh(read_ct(tmp_path / "ct.nii.gz"))
    assert len(ref.faces) > 5000

    write_dicom_series(crop, tmp_path / "dicom")
    from_dicom = read_ct(tmp_path / "dicom")
    assert from_dicom.shape == crop.shape
    # stored L-A-S, i.e. left-handed in LPS: the series comes back with k reversed
    # or not, but the voxels land on the same world positions
    assert _max_surface_distance(ref, _mesh(from_dicom)) < half_voxel

    # the same voxels stored with flipped and permuted axes (affine adjusted)
    I, J, K = crop.shape
    P = np.zeros((4, 4))
    P[3, 3] = 1
    # new index (a, b, c) = (k, I-1-i, j)  =>  old (i, j, k) = (I-1-b, c, a)
    P[0, 1], P[0, 3] = -1, I - 1
    P[1, 2] = 1
    P[2, 0] = 1
    data2 = np.transpose(crop.data[::-1], (2, 0, 1))
    A2 = crop.voxel_to_world @ P
    np.testing.assert_array_equal(data2[3, 5, 7], crop.data[I - 1 - 5, 7, 3])
    nib.save(nib.Nifti1Image(data2.astype(np.int16), A2), str(tmp_path / "flipped.nii.gz"))
    assert _max_surface_distance(ref, _mesh(read_ct(tmp_path / "flipped.nii.gz"))) < half_voxel


def test_rotated_world_moves_the_mesh_rigidly(t7_crop, tmp_path):
    crop = t7_crop
    c, s = np.cos(0.4), np.sin(0.4)
    world_a_to_b = np.array([[c, 0, s, 15.0], [0, 1, 0, -7.0], [-s, 0, c, 3.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(crop.data.astype(np.int16), world_a_to_b @ crop.voxel_to_world), str(tmp_path / "rot.nii.gz"))
    rotated = _mesh(read_ct(tmp_path / "rot.nii.gz"))
    expected = _mesh(crop).transformed(world_a_to_b)
    assert _max_surface_distance(expected, rotated) < 0.5 * crop.spacing_mm.min()
    # and it did move: the meshes before and after differ by far more than that
    assert np.abs(rotated.vertices.mean(0) - _mesh(crop).vertices.mean(0)).max() > 5.0
