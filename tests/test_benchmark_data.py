"""benchmarks/_registration_data.py: the helpers that make benchmark results comparable."""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest


@pytest.fixture(scope="module")
def data(load_benchmark):
    return load_benchmark("_registration_data")


def _write_shards(folder: Path, images: np.ndarray, poses: np.ndarray, shard_size: int = 2) -> None:
    folder.mkdir(parents=True)
    for k, start in enumerate(range(0, len(images), shard_size)):
        with h5py.File(folder / f"shard-{k:05d}.h5", "w") as f:
            f["image"] = images[start:start + shard_size]
            f["world_to_cam"] = poses[start:start + shard_size]
            f["mask"] = np.zeros_like(images[start:start + shard_size], dtype=bool)


def test_dataset_digest_follows_contents_not_paths(data, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(5, 8, 8)).astype(np.float32)
    poses = np.tile(np.eye(4), (5, 1, 1))
    _write_shards(tmp_path / "a", images, poses)
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    reference = data.dataset_digest(tmp_path / "a")
    assert data.dataset_digest(tmp_path / "copy") == reference

    changed = images.copy()
    changed[4, 3, 3] += 1e-3                        # one pixel of the last shard
    _write_shards(tmp_path / "b", changed, poses)
    assert data.dataset_digest(tmp_path / "b") != reference

    moved = poses.copy()
    moved[0, 2, 3] = 1.0                            # one pose, same images
    _write_shards(tmp_path / "c", images, moved)
    assert data.dataset_digest(tmp_path / "c") != reference

    # a field outside the digest (the mask) does not change it
    with h5py.File(tmp_path / "copy" / "shard-00000.h5", "a") as f:
        f["mask"][0, 0, 0] = True
    assert data.dataset_digest(tmp_path / "copy") == reference


def test_machine_reports_the_torch_thread_count(data):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert "torch threads 1," in data.machine()
        torch.set_num_threads(2)
        assert "torch threads 2," in data.machine()
    finally:
        torch.set_num_threads(before)
