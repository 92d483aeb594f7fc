"""Sharded datasets: content, reproducibility, resuming, splitting, workers, errors."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import trimesh

from xrecon.anatomy.bone import BoneModel
from xrecon.anatomy.volume import Volume
from xrecon.errors import InputError
from xrecon.sim import dataset as ds_mod
from xrecon.sim.augment import DEFAULT_AUGMENT
from xrecon.sim.dataset import DatasetConfig, SimulatedDataset, dataset_status, write_dataset
from xrecon.sim.detector import preset_for_size
from xrecon.sim.groundtruth import SimConfig
from xrecon.sim.poses import PoseSamplerConfig, sample_poses

from .conftest import ball_phantom

CENTRE = np.array([5.0, -8.0, 50.0])
DETECTOR = preset_for_size(24)
CONFIG = DatasetConfig(
    n=7,
    seed=3,
    shard_size=3,
    poses=PoseSamplerConfig(offset_std_mm=(4.0, 4.0, 4.0)),
    sim=SimConfig(spacing_mm=2.0, n_samples=48, n_surface_samples=32),
)


@pytest.fixture(scope="module")
def scene():
    ct, labels = ball_phantom(centre_world=CENTRE, radius_mm=15.0, shape=(48, 48, 48))
    sphere = trimesh.creation.icosphere(3, radius=15.0)
    sphere.apply_translation(CENTRE)
    bone = BoneModel(sphere.vertices, sphere.faces, [CENTRE, CENTRE + [0, 0, 500.0]], ["centre", "far"])
    return ct, labels, bone


@pytest.fixture(scope="module")
def reference(scene, tmp_path_factory):
    """The dataset written in one go, in this process."""
    ct, labels, bone = scene
    out = tmp_path_factory.mktemp("reference")
    summary = write_dataset(out, ct, bone, DETECTOR, CONFIG, labels=labels, structures={1: "ball"}, progress=False)
    assert summary.shards_written == 3 and summary.samples_written == 7
    return out


def _all(root: Path) -> dict[str, np.ndarray]:
    out = {}
    for k in range(3):
        with h5py.File(root / f"shard-{k:05d}.h5", "r") as f:
            for name in f:
                out.setdefault(name, []).append(f[name][()])
    return {k: np.concatenate(v) for k, v in out.items()}


def test_dataset_content_and_manifest(reference, scene):
    ct, _, bone = scene
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["n"] == 7 and manifest["n_shards"] == 3 and manifest["seed"] == 3
    assert manifest["identity"]["ct_sha256"] == ds_mod.volume_digest(ct)
    assert "diffdrr" in manifest["versions"] and "torch" in manifest["versions"]
    assert manifest["bone"]["landmark_names"] == ["centre", "far"]
    for name in ("manifest.json", "shard-00000.h5"):  # readable by the other machines of a split job
        assert (reference / name).stat().st_mode & 0o044 == 0o044
    data = _all(reference)
    assert np.array_equal(data["sample_index"], np.arange(7))
    assert data["image"].shape == (7, 24, 24) and data["entry_world"].shape == (7, 24, 24, 3)
    # sample i's pose comes from default_rng([seed, i]) alone
    for i in (0, 4, 6):
        pose = sample_poses(CONFIG.poses, 1, ds_mod.bone_centre(bone), np.random.default_rng([3, i]), DETECTOR.source_to_isocentre_mm)
        assert np.allclose(data["world_to_cam"][i], pose.world_to_cam[0].numpy())
        assert data["lao_deg"][i] == pose.lao_deg[0]
    assert data["mask"].any(axis=(1, 2)).all()  # the ball is in every view
    assert (data["landmark_in_image"][:, 0] == 1).all() and (data["landmark_in_image"][:, 1] == 0).all()


def test_reader_returns_tensors_and_augments(reference):
    plain = SimulatedDataset(reference, fields=("entry_world", "mask", "world_to_cam", "landmark_uv"))
    assert len(plain) == 7
    item = plain[4]
    assert item["image"].shape == (1, 24, 24) and item["image"].min() == 0 and item["image"].max() == 1
    assert item["entry_world"].shape == (3, 24, 24) and item["mask"].dtype == torch.bool
    assert int(item["sample_index"]) == 4
    assert torch.isnan(item["entry_world"][:, ~item["mask"]]).all()
    assert not torch.isnan(item["entry_world"][:, item["mask"]]).any()
    torch.manual_seed(0)
    augmented = SimulatedDataset(reference, fields=("mask",), augment=DEFAULT_AUGMENT)
    changed = [not torch.equal(augmented[i]["image"], plain[i]["image"]) for i in range(7)]
    assert any(changed)
    assert torch.equal(augmented[4]["mask"], item["mask"])  # geometry untouched
    loader = torch.utils.data.DataLoader(plain, batch_size=4, num_workers=0)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 1, 24, 24) and batch["world_to_cam"].shape == (4, 4, 4)
    with pytest.raises(InputError, match="unknown dataset fields"):
        SimulatedDataset(reference, fields=("nope",))


def test_interrupted_run_resumes_without_duplicates_or_losses(reference, scene, tmp_path, monkeypatch):
    ct, labels, bone = scene
    real_write = ds_mod._write_shard
    calls = []

    def dying_write(path, *args):
        calls.append(path.name)
        if len(calls) == 2:  # killed while writing the second shard
            (path.parent / f".{path.name}.partial.h5").write_bytes(b"half a file")
            raise KeyboardInterrupt
        real_write(path, *args)

    monkeypatch.setattr(ds_mod, "_write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path, ct, bone, DETECTOR, CONFIG, labels=labels, structures={1: "ball"}, progress=False)
    monkeypatch.setattr(ds_mod, "_write_shard", real_write)
    _, missing = dataset_status(tmp_path)
    assert missing == [1, 2]
    with pytest.raises(InputError, match="incomplete"):
        SimulatedDataset(tmp_path)
    assert len(SimulatedDataset(tmp_path, allow_incomplete=True)) == 3

    summary = write_dataset(tmp_path, ct, bone, DETECTOR, CONFIG, labels=labels, structures={1: "ball"}, progress=False)
    assert (summary.shards_skipped, summary.shards_written, summary.samples_written) == (1, 2, 4)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # stale temporary removed
    resumed, ref = _all(tmp_path), _all(reference)
    assert np.array_equal(resumed["sample_index"], np.arange(7))
    for name in ("image", "entry_world", "mask", "world_to_cam", "surface_uv"):
        assert np.array_equal(resumed[name], ref[name], equal_nan=True), name


def test_split_across_machines_and_workers_give_the_same_dataset(reference, scene, tmp_path):
    ct, labels, bone = scene
    kw = dict(labels=labels, structures={1: "ball"}, progress=False)
    first = write_dataset(tmp_path, ct, bone, DETECTOR, CONFIG, shard=(0, 2), **kw)
    assert first.shards_mine == 2 and dataset_status(tmp_path)[1] == [1]
    second = write_dataset(tmp_path, ct, bone, DETECTOR, CONFIG, shard=(1, 2), workers=2, **kw)
    assert second.shards_written == 1 and dataset_status(tmp_path)[1] == []
    parallel = tmp_path / "parallel"
    write_dataset(parallel, ct, bone, DETECTOR, CONFIG, workers=2, **kw)
    ref = _all(reference)
    for root in (tmp_path, parallel):
        got = _all(root)
        for name in ("image", "exit_world", "surface_world"):
            assert np.array_equal(got[name], ref[name], equal_nan=True), name


def test_refuses_a_folder_holding_another_dataset(reference, scene):
    ct, labels, bone = scene
    other = DatasetConfig(n=7, seed=4, shard_size=3, poses=CONFIG.poses, sim=CONFIG.sim)
    with pytest.raises(InputError, match="different dataset"):
        write_dataset(reference, ct, bone, DETECTOR, other, labels=labels, structures={1: "ball"}, progress=False)


def test_bad_input_leaves_no_dataset(scene, tmp_path):
    ct, labels, bone = scene
    nan = ct.data.copy()
    nan[10, 10, 10] = np.nan
    out = tmp_path / "never"
    with pytest.raises(InputError, match="NaN"):
        write_dataset(out, Volume(nan, ct.voxel_to_world, "nan_ct.nii.gz"), bone, DETECTOR, CONFIG, progress=False)
    assert not out.exists()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(InputError, match="not writable"):
        write_dataset(blocker / "out", ct, bone, DETECTOR, CONFIG, progress=False)
    with pytest.raises(InputError, match="shard split"):
        write_dataset(tmp_path / "x", ct, bone, DETECTOR, CONFIG, shard=(2, 2), progress=False)


def test_a_two_view_protocol_shares_each_acquisition_and_orbits_its_views(scene, tmp_path):
    """``carm-pair``: samples 2a and 2a + 1 are one acquisition: the same isocentre,
    tilt and distance, LAO 30 deg apart; the single-view identity is unchanged."""
    from dataclasses import replace

    from xrecon.sim.poses import PROTOCOLS, with_protocol

    ct, labels, bone = scene
    config = replace(CONFIG, n=4, shard_size=4, poses=with_protocol(CONFIG.poses, "carm-pair"))
    write_dataset(tmp_path, ct, bone, DETECTOR, config, labels=labels, structures={1: "ball"}, progress=False)
    with h5py.File(tmp_path / "shard-00000.h5", "r") as f:
        d = {k: f[k][()] for k in ("acquisition", "view", "lao_deg", "offset_mm", "world_to_cam")}
    assert d["acquisition"].tolist() == [0, 0, 1, 1] and d["view"].tolist() == [0, 1, 0, 1]
    for a in (0, 2):
        assert d["lao_deg"][a + 1] - d["lao_deg"][a] == pytest.approx(30.0)
        assert np.allclose(d["offset_mm"][a], d["offset_mm"][a + 1])
        # both cameras look at the same isocentre: it projects to each principal ray
        iso = ds_mod.bone_centre(bone) + d["offset_mm"][a]
        for v in (a, a + 1):
            x = d["world_to_cam"][v][:3, :3] @ iso + d["world_to_cam"][v][:3, 3]
            assert np.allclose(x[:2], 0.0, atol=1e-6)
    assert not np.allclose(d["offset_mm"][0], d["offset_mm"][2])  # acquisitions differ
    assert "view_offsets_deg" not in CONFIG.to_dict()["poses"]  # one view: the identity as before
    assert with_protocol(CONFIG.poses, "ap-lateral").lao_deg == (0.0, 0.0) and set(PROTOCOLS) >= {"single", "sweep"}
    with pytest.raises(InputError, match="unknown view protocol"):
        with_protocol(CONFIG.poses, "quadplanar")
