"""Choose between reconstruction models on the validation subjects (shape and pose only).

A quick model-selection run, no CT registration: every second image of
``bench_recon``'s validation set of each population (seed-002 poses, seed 2000,
CT-like phantoms, 128 px) is reconstructed by each model (the residual
deformation off, so the models' own outputs are compared), and per image:

* shape: ASSD after a similarity alignment to the true mesh (model frame, mm);
* rotation error of ``model_to_cam`` (deg) and the share above 5 deg;
* depth error: distance of the posed reconstruction's centroid from the truth's
  along the optical axis (mm; one view fixes it poorly, the CT path fixes it);
* in-plane error: angle between the two centroids' viewing rays (mrad).

    python benchmarks/compare_recon_models.py --model xrecon/weights/recon_default.pt \\
        --model runs/ow2/recon_model.pt --name compare_recon_models_val

Writes benchmarks/results/<name>.{json,md}. Simulated data only; the test
subjects are never read.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_recon  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def evaluate(model, population: str, data_dir: str, views: int, every: int) -> dict:
    """Per-image errors of one model on one population's validation set."""
    from xrecon.errors import InputError
    from xrecon.geometry import Camera
    from xrecon.methods.recon.model_io import load_recon_model
    from xrecon.methods.recon.pipeline import ReconConfig, reconstruct_image
    from xrecon.metrics.registration import rotation_error_deg
    from xrecon.metrics.shape import surface_distance
    from xrecon.solve.align3d import umeyama

    net, space, _ = load_recon_model(model)
    ts = bench_recon.load_test_set(space, population, "val", views, False, data_dir)
    images, K, si = ts["image"], ts["K"], ts["shape_index"]
    size = images.shape[-1]
    cols = {"shape_mm": [], "rotation_deg": [], "depth_mm": [], "inplane_mrad": []}
    for i in range(0, len(images), every):
        cam = Camera(K[i], np.eye(4), size, size, ts["spacing"])
        try:
            rec = reconstruct_image(net, space, images[i], cam, ReconConfig(residual=None))
        except InputError:  # a view that misses the volume: a constant image
            rec = None
        if rec is None or not rec.success:
            for v in cols.values():
                v.append(float("inf"))
            continue
        truth = ts["truth_shapes"][si[i]]
        T = ts["model_to_cam"][i]
        aligned = umeyama(rec.vertices_model, truth, with_scale=True).apply(rec.vertices_model)
        cols["shape_mm"].append(surface_distance((aligned, space.faces), (truth, space.faces), 3000).assd)
        cols["rotation_deg"].append(float(rotation_error_deg(rec.model_to_cam, T)[0]))
        c_rec = rec.vertices_cam.mean(0)
        c_true = (truth @ T[:3, :3].T + T[:3, 3]).mean(0)
        cols["depth_mm"].append(float(abs(c_rec[2] - c_true[2])))
        cols["inplane_mrad"].append(float(1000 * np.linalg.norm(c_rec[:2] / c_rec[2] - c_true[:2] / c_true[2])))
    return cols


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, help="a model file (repeat; 'default' = shipped)")
    ap.add_argument("--population", action="append", default=None,
                    help="ssm | out-of-span (repeat; default: both)")
    ap.add_argument("--every", type=int, default=2, help="use every n-th validation image")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=str(ROOT / "data" / "recon_bench"))
    ap.add_argument("--name", default="compare_recon_models_val")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    populations = args.population or ["ssm", "out-of-span"]
    views = {"ssm": 4, "out-of-span": 3}
    rows = []
    for pop in populations:
        for m in args.model:
            cols = evaluate(None if m == "default" else m, pop, args.data, views.get(pop, 3), args.every)
            rot = np.array(cols["rotation_deg"])
            rows.append({"population": pop, "model": m, "n": len(rot),
                         **{f"{k}_median": float(np.median(v)) for k, v in cols.items()},
                         "rotation_over_5deg": float(np.mean(~(rot <= 5.0))), "per_image": cols})
    summary = {"date": datetime.date.today().isoformat(),
               "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, no GPU",
               "data": "bench_recon's validation sets (simulated, 128 px, CT-like phantoms), every "
                       f"{args.every}. image; " + "; ".join(bench_recon.POPULATION_TEXT[p] for p in populations),
               "command": " ".join(["python", "benchmarks/compare_recon_models.py"]
                                   + (argv if argv is not None else sys.argv[1:]))}
    md = [f"# {args.name}: reconstruction models on the validation subjects", "",
          f"Date {summary['date']}; machine: {summary['machine']}.", f"Data: {summary['data']}.",
          f"Command: `{summary['command']}`.", "",
          "Medians per image (a failed reconstruction counts as infinite); residual deformation off.", "",
          "| validation set | model | n | shape ASSD (mm) | rotation (deg) | rotation > 5 deg | depth (mm) | "
          "in-plane (mrad) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        label = "in the model's span" if r["population"] == "ssm" else "out of the model's span"
        md.append(f"| {label} | `{r['model']}` | {r['n']} | {r['shape_mm_median']:.3f} | "
                  f"{r['rotation_deg_median']:.2f} | {100 * r['rotation_over_5deg']:.1f} % | "
                  f"{r['depth_mm_median']:.1f} | {r['inplane_mrad_median']:.2f} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1,
                                                          default=float))
    (RESULTS / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
