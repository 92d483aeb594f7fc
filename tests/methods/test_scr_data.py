"""From a simulated dataset + its CT to a training set-up: hash check, structures,
normaliser, targets, split; then one SCR training epoch and register_scr on
the same tiny synthetic CT (an ellipsoidal 'bone' with two labels)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xrecon.anatomy.bone import BoneModel
from xrecon.anatomy.ct_io import write_volume
from xrecon.anatomy.volume import Volume
from xrecon.errors import InputError
from xrecon.methods.scr.data import (
    normalizer_for, prepare_training, split_indices, structure_centroids)

torch.set_num_threads(1)

#: TotalSegmentator v1 ids (the default label names).
T1, T2 = 43, 42


def _phantom():
    """CT (HU) and labels: two boxes of 'bone' (vertebrae T1, T2) in water; 2 mm voxels."""
    shape = (40, 40, 30)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-40.0, -40.0, -30.0)
    lab = np.zeros(shape, np.int16)
    lab[10:20, 12:28, 8:22] = T1
    lab[22:30, 15:25, 10:20] = T2
    ct = np.where(lab > 0, 1200.0, 0.0).astype(np.float32)
    return (Volume(ct, affine, "<phantom>"),
            Volume(lab, affine, "<phantom labels>", {T1: "vertebrae_T1", T2: "vertebrae_T2"}))


def _bone(labels):
    import trimesh

    meshes = []
    for i in (T1, T2):
        ijk = np.argwhere(labels.data == i)
        lo = labels.voxel_to_world_points(ijk.min(0)[None] - 0.5)[0]
        hi = labels.voxel_to_world_points(ijk.max(0)[None] + 0.5)[0]
        meshes.append(trimesh.creation.box(bounds=np.stack([lo, hi])))
    m = trimesh.util.concatenate(meshes)
    return BoneModel(m.vertices, m.faces, source="<phantom bone>")


def test_split_is_seeded_disjoint_and_complete():
    tr, va = split_indices(50, 0.2, seed=3)
    assert len(va) == 10 and not set(tr) & set(va) and sorted([*tr, *va]) == list(range(50))
    assert np.array_equal(split_indices(50, 0.2, seed=3)[1], va)
    with pytest.raises(InputError):
        split_indices(10, 1.0, 0)


def test_centroids_and_normaliser_from_labels():
    _, labels = _phantom()
    pts, names = structure_centroids(labels, {T1: "vertebrae_T1", T2: "vertebrae_T2"})
    assert names == ["vertebrae_T1", "vertebrae_T2"]
    # box 1: voxels 10..19, 12..27, 8..21 -> centre index (14.5, 19.5, 14.5)
    assert np.allclose(pts[0], [-40 + 2 * 14.5, -40 + 2 * 19.5, -30 + 2 * 14.5])
    norm = normalizer_for(labels, {T1: "a", T2: "b"})
    # union box: i 10..29, j 12..27, k 8..21 -> corners -40+2*(9.5, 11.5, 7.5) .. (29.5, 27.5, 21.5)
    assert norm.scale_mm == pytest.approx(2 * 20 / 2)
    assert np.allclose(norm.centre_mm, [-40 + 2 * 19.5, -40 + 2 * 19.5, -30 + 2 * 14.5])
    with pytest.raises(InputError, match="empty"):
        structure_centroids(labels, {7: "missing"})


@pytest.fixture(scope="module")
def phantom_dataset(tmp_path_factory):
    from xrecon.sim.dataset import DatasetConfig, write_dataset
    from xrecon.sim.detector import DEEPFLUORO
    from xrecon.sim.poses import PoseSamplerConfig

    root = tmp_path_factory.mktemp("phantom")
    ct, labels = _phantom()
    write_volume(root / "ct.nii.gz", ct)
    write_volume(root / "labels.nii.gz", labels)
    detector = DEEPFLUORO.binned(32)
    cfg = DatasetConfig(n=8, seed=0, shard_size=4,
                        poses=PoseSamplerConfig(offset_std_mm=(5.0, 5.0, 5.0)))
    write_dataset(root / "data", ct, _bone(labels), detector, cfg, labels=labels,
                  structures={T1: "vertebrae_T1", T2: "vertebrae_T2"}, progress=False)
    return root


def test_prepare_training_checks_the_ct_and_builds_the_setup(phantom_dataset):
    root = phantom_dataset
    setup = prepare_training(ct_path=root / "ct.nii.gz", labels_path=root / "labels.nii.gz",
                             data_dir=root / "data", val_fraction=0.25, seed=0,
                             landmark_structures="vertebrae_T1,vertebrae_T2")
    assert len(setup.train_set) == 6 and len(setup.val_set) == 2
    assert setup.target_names == ["vertebrae_T1", "vertebrae_T2"] and setup.camera.height == 32
    sample = setup.train_set[0]
    assert sample["image"].shape == (1, 32, 32) and sample["entry_world"].shape == (3, 32, 32)
    assert sample["mask"].dtype == torch.bool and sample["mask"].any()
    # scene coordinates of the dataset lie inside the normaliser's box
    e = sample["entry_world"].permute(1, 2, 0)[sample["mask"]].double()
    y = (e - torch.tensor(setup.normalizer.centre_mm)) / setup.normalizer.scale_mm
    assert float(y.abs().max()) <= 1.0 + 1e-3
    assert setup.train_poses.shape == (6, 4, 4)
    args = setup.baseline_init_args("posenet", 4, 3)
    assert args["levels"] == 4 and args["points_world"].shape[1] == 3
    # the wrong CT, or other structures than the dataset's, are refused
    ct, _ = _phantom()
    ct.data[0, 0, 0] = 5.0
    write_volume(root / "other.nii.gz", ct)
    with pytest.raises(InputError, match="another CT"):
        prepare_training(ct_path=root / "other.nii.gz", labels_path=root / "labels.nii.gz", data_dir=root / "data")
    with pytest.raises(InputError, match="dataset was simulated"):
        prepare_training(ct_path=root / "ct.nii.gz", labels_path=root / "labels.nii.gz", data_dir=root / "data",
                         structures="vertebrae_T1", landmark_structures="vertebrae_T1")
    with pytest.raises(InputError, match="pass --labels"):
        prepare_training(ct_path=root / "ct.nii.gz", labels_path=None, data_dir=root / "data")


def test_cli_trains_scr_and_register_scr_checks_the_ct(phantom_dataset, tmp_path):
    from typer.testing import CliRunner
    import typer

    from xrecon.cli.train_scr import scr
    from xrecon.methods.scr.predict import register_scr

    root = phantom_dataset
    app = typer.Typer()
    app.command()(scr)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["--ct", str(root / "ct.nii.gz"), "--labels", str(root / "labels.nii.gz"),
                                   "--data", str(root / "data"), "--out", str(out), "--epochs", "1",
                                   "--batch-size", "4", "--base-channels", "4", "--levels", "3",
                                   "--val-fraction", "0.25", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert (out / "scr.pt").exists() and (out / "curves.png").exists() and "model:" in res.output
    from xrecon.sim.dataset import SimulatedDataset

    ds = SimulatedDataset(root / "data", fields=("K",))
    image = ds[0]["image"][0].numpy()
    r = register_scr(image, ds.camera, out / "scr.pt", ct=root / "ct.nii.gz")
    assert r.world_to_cam.shape == (4, 4)
    other, _ = _phantom()
    other.data[0, 0, 0] = 5.0
    write_volume(tmp_path / "other.nii.gz", other)
    with pytest.raises(InputError, match="not the one the SCR model was trained on"):
        register_scr(image, ds.camera, out / "scr.pt", ct=tmp_path / "other.nii.gz")
    bad = CliRunner().invoke(app, ["--ct", str(root / "ct.nii.gz"), "--labels", str(root / "labels.nii.gz"),
                                   "--data", str(tmp_path / "nowhere"), "--out", str(out / "x")])
    assert bad.exit_code == 2 and "no manifest.json" in bad.output


def test_incomplete_dataset_is_refused_unless_allowed(phantom_dataset, tmp_path):
    import shutil

    data = tmp_path / "partial"
    shutil.copytree(phantom_dataset / "data", data)
    (data / "shard-00001.h5").unlink()
    kw = dict(ct_path=phantom_dataset / "ct.nii.gz", labels_path=phantom_dataset / "labels.nii.gz", data_dir=data,
              val_fraction=0.25)
    with pytest.raises(InputError, match="incomplete"):
        prepare_training(**kw)
    setup = prepare_training(**kw, allow_incomplete=True)
    assert len(setup.train_set) + len(setup.val_set) == 4 and setup.dataset_info["n_samples_used"] == 4
    assert setup.train_poses.shape == (3, 4, 4)


def test_zoom_is_exactly_a_longer_focal_length():
    """A zoomed sample is the image of the same pose with the focal length times
    the zoom: its scene coordinates reproject to their own pixels under the new K
    (to nearest-neighbour rounding) and its mask and image match that camera's."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _scr_scene import EllipsoidDataset, ellipsoid_scene

    from xrecon.geometry import Camera
    from xrecon.sim.augment import ZoomAugment, zoom_sample

    ds = EllipsoidDataset(2, size=48, seed=3)
    zoom = 1.12
    s = zoom_sample(ds[0], ds.camera.K[0], zoom)
    K = ds.camera.K[0].clone()
    K[0, 0] *= zoom
    K[1, 1] *= zoom
    assert torch.allclose(s["K"].double(), K)
    zoomed = Camera(K, ds.camera.world_to_cam[0], 48, 48, ds.camera.pixel_spacing_mm)
    for name in ("entry_world", "exit_world"):
        pts = s[name].permute(1, 2, 0).reshape(-1, 3).double()
        ok = torch.isfinite(pts).all(1)
        uv, _ = zoomed.project(pts[ok])
        grid = zoomed.pixel_grid().reshape(-1, 2)[ok]
        # nearest neighbour: the source pixel is at most half a pixel away, i.e. zoom / 2 after zooming
        assert (uv[0] - grid).abs().max() <= 0.5 * zoom + 1e-4
    entry, _, mask, image = ellipsoid_scene(zoomed)
    iou = (s["mask"] & torch.as_tensor(mask[0])).sum() / (s["mask"] | torch.as_tensor(mask[0])).sum()
    assert iou > 0.9
    assert np.corrcoef(s["image"][0].numpy().ravel(), image[0].ravel())[0, 1] > 0.98
    # the wrapper: p = 0 leaves samples alone, p = 1 always zooms (K changes), zoom-in only
    assert torch.equal(ZoomAugment(ds, ds.camera.K[0], 1.2, p=0.0)[1]["image"], ds[1]["image"])
    torch.manual_seed(0)
    k = ZoomAugment(ds, ds.camera.K[0], 1.2, p=1.0)[1]["K"]
    assert 1.0 <= float(k[0, 0] / ds.camera.K[1][0, 0]) <= 1.2 and float(k[0, 0]) != float(ds.camera.K[1][0, 0])
    with pytest.raises(InputError):
        ZoomAugment(ds, ds.camera.K[0], 0.9)
