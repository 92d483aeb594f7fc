"""From an ``xrecon simulate`` dataset and its CT to everything a
patient-specific training run needs (SCR and the baselines).

The dataset (:class:`xrecon.sim.dataset.SimulatedDataset`) already yields the
batches the methods use: ``image (1, H, W)`` in [0, 1] (augmented at load time
with seed 002's inversion, colour jitter and random erasing, plus gamma, noise
and blur), ``entry_world`` / ``exit_world (3, H, W)`` (world mm, NaN off the
bone), ``mask (H, W)``, ``K (3, 3)`` and ``world_to_cam (4, 4)``. This module
adds what comes from the CT:

* a check that the dataset was simulated from this CT (content hash);
* the bone structures (the dataset's own, recorded in its manifest);
* the coordinate normaliser: the bounding box of the structures' voxels;
* mTRE targets: one centroid per structure (world mm);
* landmarks of the heatmap baseline: centroids of ``landmark_structures``;
* points and the reference pose of the PoseNet baseline;
* a seeded train / validation split (validation without augmentation).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from xrecon.anatomy.volume import Volume
from xrecon.errors import InputError
from xrecon.geometry import Camera
from xrecon.methods.scr.network import CoordinateNormalizer

log = logging.getLogger(__name__)

#: Fields read for SCR; the baselines need only the pose and intrinsics.
SCR_FIELDS = ("entry_world", "exit_world", "mask", "world_to_cam", "K")
POSE_FIELDS = ("world_to_cam", "K")


def first_items(dataset: Dataset, n: int) -> Dataset:
    """The first ``n`` items of ``dataset`` (all when it has fewer): a fixed
    validation subset that gets a full PnP every epoch."""
    return Subset(dataset, list(range(min(n, len(dataset)))))


def structure_centroids(labels: Volume, ids: dict[int, str]) -> tuple[np.ndarray, list[str]]:
    """Centroid ``(S, 3)`` (world mm) of each structure ``{id: name}`` of a label map, and the names."""
    pts, names = [], []
    for i, name in ids.items():
        ijk = np.argwhere(labels.data == i)
        if len(ijk) == 0:
            raise InputError(f"structure {name} (id {i}) is empty in the label map", labels.source)
        pts.append(labels.voxel_to_world_points(ijk.mean(0)[None])[0])
        names.append(name)
    return np.asarray(pts, dtype=np.float64), names


def structure_points(labels: Volume, ids: dict[int, str], n: int | None = None, seed: int = 0) -> np.ndarray:
    """World positions ``(N, 3)`` of the structures' voxel centres (all, or ``n`` drawn with ``seed``)."""
    ijk = np.argwhere(np.isin(labels.data, list(ids)))
    if len(ijk) == 0:
        raise InputError("the selected structures are empty in the label map", labels.source)
    if n is not None and len(ijk) > n:
        ijk = ijk[np.random.default_rng(seed).choice(len(ijk), n, replace=False)]
    return labels.voxel_to_world_points(ijk)


def normalizer_for(labels: Volume, ids: dict[int, str]) -> CoordinateNormalizer:
    """Normaliser from the bounding box of the structures (voxel-corner exact)."""
    ijk = np.argwhere(np.isin(labels.data, list(ids)))
    if len(ijk) == 0:
        raise InputError("the selected structures are empty in the label map", labels.source)
    lo, hi = ijk.min(0) - 0.5, ijk.max(0) + 0.5
    corners = np.array([[a[0], b[1], c[2]] for a in (lo, hi) for b in (lo, hi) for c in (lo, hi)])
    return CoordinateNormalizer.from_points(labels.voxel_to_world_points(corners))


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint ``(train, val)`` index arrays over ``range(n)``."""
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"validation fraction must be in [0, 1), got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


@dataclass
class TrainingSetup:
    """Everything a training run needs (see the module docstring)."""

    train_set: Dataset
    val_set: Dataset | None
    camera: Camera
    normalizer: CoordinateNormalizer
    targets_world: np.ndarray
    target_names: list[str]
    landmarks_world: np.ndarray
    landmark_names: list[str]
    posenet_points_world: np.ndarray
    ct_info: dict
    dataset_info: dict = field(default_factory=dict)
    train_poses: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 4, 4)))

    def describe(self) -> dict:
        return {"n_train": len(self.train_set), "n_val": 0 if self.val_set is None else len(self.val_set),
                "ct": self.ct_info, "dataset": self.dataset_info, "image_size": [self.camera.height, self.camera.width],
                "n_targets": len(self.target_names), "n_landmarks": len(self.landmark_names)}

    def baseline_init_args(self, method: str, base_channels: int, levels: int, input_stride: int = 2) -> dict:
        """Constructor arguments of the baseline networks."""
        if method == "posenet":
            from xrecon.methods.baselines.posenet import reference_pose

            ref, spread = reference_pose(self.train_poses)
            return {"points_world": self.posenet_points_world, "ref_world_to_cam": ref, "t_scale_mm": spread,
                    "base_channels": base_channels, "levels": levels + 1, "input_stride": input_stride}
        return {"landmarks_world": self.landmarks_world, "landmark_names": self.landmark_names,
                "base_channels": base_channels, "levels": levels, "input_stride": input_stride}


def dataset_poses(dataset) -> np.ndarray:
    """All ``world_to_cam (N, 4, 4)`` of a :class:`~xrecon.sim.dataset.SimulatedDataset`, in its order."""
    if len(dataset) == 0:
        return np.zeros((0, 4, 4))
    return np.stack([dataset[i]["world_to_cam"].numpy() for i in range(len(dataset))])


def load_ct_and_labels(ct_path: str | Path, labels_path: str | Path | None,
                       label_names="totalsegmentator") -> tuple[Volume, Volume]:
    """Read the CT and its label map (on the CT's grid; names as in
    :func:`xrecon.anatomy.ct_io.read_labels`, TotalSegmentator v1 by default);
    without ``labels_path`` the bundled chest CT's label map is used when
    ``ct_path`` is that CT (else an error)."""
    from xrecon.anatomy.ct_io import default_ct_paths, read_ct, read_labels

    ct = read_ct(ct_path)
    if labels_path is not None:
        return ct, read_labels(labels_path, like=ct, names=label_names)
    default_ct, default_labels = default_ct_paths()
    if Path(ct_path).resolve() == Path(default_ct).resolve():
        return ct, read_labels(default_labels, like=ct, names="totalsegmentator")
    raise InputError("a label map is needed for this CT (pass --labels)", ct_path)


def prepare_training(
    *,
    ct_path: str | Path,
    labels_path: str | Path | None,
    data_dir: str | Path,
    structures: str | None = None,
    val_fraction: float = 0.05,
    seed: int = 0,
    augment: bool = True,
    landmark_structures: str | None = None,
    fields: tuple[str, ...] = SCR_FIELDS,
    n_posenet_points: int = 512,
    allow_incomplete: bool = False,
) -> TrainingSetup:
    """Check the dataset against the CT and build a :class:`TrainingSetup`.

    Args:
        ct_path, labels_path: the CT the dataset was simulated from and its label map.
        data_dir: dataset folder from ``xrecon simulate``.
        structures: the bone structures; ``None`` = the dataset's (recorded in
            its manifest); a different selection than the dataset's is an error.
        val_fraction, seed: seeded split.
        augment: load-time domain randomisation on the training part.
        landmark_structures: structures whose centroids are the heatmap
            baseline's landmarks (``None``: none, for the other methods).
        fields: dataset fields to read.
        allow_incomplete: train on the complete shards of a dataset that is
            still being simulated (the shards present now; logged).

    Raises:
        InputError: a dataset of another CT or other structures, an incomplete
            dataset, a missing label map, empty structures.
    """
    from xrecon.anatomy.labels import resolve_structures
    from xrecon.sim.augment import DEFAULT_AUGMENT
    from xrecon.sim.dataset import SimulatedDataset, read_manifest, volume_digest

    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    ct, labels = load_ct_and_labels(ct_path, labels_path)
    digest = volume_digest(ct)
    if manifest["identity"]["ct_sha256"] != digest:
        raise InputError(f"dataset {data_dir} was simulated from another CT (content hash differs)", ct_path)
    present = np.unique(labels.data)
    recorded = manifest["identity"].get("structures")
    if recorded:
        ids = {int(k): v for k, v in recorded.items()}
        if structures is not None:
            asked = resolve_structures(structures, labels.label_names, present, labels.source)
            if set(asked) != set(ids):
                raise InputError(f"--structures selects {len(asked)} structures but the dataset was simulated "
                                 f"with {len(ids)} others; leave --structures out to use the dataset's", data_dir)
    else:
        ids = resolve_structures(structures or "thoracic_skeleton", labels.label_names, present, labels.source)
    targets, target_names = structure_centroids(labels, ids)
    landmarks, landmark_names = np.zeros((0, 3)), []
    if landmark_structures:
        lm_ids = resolve_structures(landmark_structures, labels.label_names, present, labels.source)
        landmarks, landmark_names = structure_centroids(labels, lm_ids)

    kw = {"allow_incomplete": allow_incomplete}
    train_full = SimulatedDataset(data_dir, fields=fields, augment=DEFAULT_AUGMENT if augment else None, **kw)
    val_full = SimulatedDataset(data_dir, fields=fields, augment=None, **kw)
    pose_view = SimulatedDataset(data_dir, fields=("world_to_cam",), normalise=False, **kw)
    if not len(train_full) == len(val_full) == len(pose_view):
        raise InputError("dataset changed while it was opened (a simulation is still writing it); try again",
                         data_dir)
    if len(train_full) < manifest["n"]:
        log.warning("training on the %d complete samples of %d (dataset still incomplete)", len(train_full),
                    manifest["n"])
    tr, va = split_indices(len(train_full), val_fraction, seed)
    poses = dataset_poses(pose_view)
    camera = train_full.camera
    log.info("dataset %s: %d training and %d validation images of %dx%d px, %d structures",
             data_dir, len(tr), len(va), camera.height, camera.width, len(ids))
    return TrainingSetup(
        train_set=Subset(train_full, tr.tolist()),
        val_set=Subset(val_full, va.tolist()) if len(va) else None,
        camera=camera,
        normalizer=normalizer_for(labels, ids),
        targets_world=targets, target_names=target_names,
        landmarks_world=landmarks, landmark_names=landmark_names,
        posenet_points_world=structure_points(labels, ids, n_posenet_points, seed),
        ct_info={"path": str(ct_path), "sha256": digest, "structures": [ids[i] for i in sorted(ids)],
                 "structure_ids": sorted(int(i) for i in ids)},
        dataset_info={"path": str(data_dir), "n_samples_used": len(train_full), "n_samples_dataset": manifest["n"],
                      "identity_sha256": manifest["identity_sha256"]},
        train_poses=poses[tr],
    )
