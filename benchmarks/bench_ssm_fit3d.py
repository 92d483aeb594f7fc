"""Benchmark: fit the bundled pelvis / femur models to partial, noisy 3D point clouds.

Held-out instances: the test subjects of the ready models' fixed split (not used
to build them). Each observation: 5000 surface samples, half of the surface
removed (default "backfacing": normals facing away from a random direction;
also reported: "plane", a random plane cut at the median), 1 mm Gaussian noise
per coordinate, 10 % uniform outliers, a random rigid frame. Metric: ASSD (mm)
between the fitted and the true full surface (xrecon.metrics.shape).

    python benchmarks/bench_ssm_fit3d.py [--quick]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from shape_models import bundled  # noqa: E402
from shape_models.fit3d import fit_points  # noqa: E402
from shape_models.procrustes import apply_transform  # noqa: E402
from shape_models.synthetic import partial_point_cloud  # noqa: E402
from xrecon.metrics.shape import surface_distance  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def run(names, n_cases, protocols):
    rows = []
    for name in names:
        model = bundled.load_model(name)
        shapes, ids = bundled.subject_shapes(model, "test")
        for missing in protocols:
            for i in range(min(n_cases, len(shapes))):
                obs = partial_point_cloud(shapes[i], model.faces_, n_points=5000, noise_mm=1.0,
                                          outlier_fraction=0.1, seed=1000 + i, missing=missing)
                t0 = time.perf_counter()
                res = fit_points(model, obs.points)
                dt = time.perf_counter() - t0
                truth = apply_transform(obs.model_to_obs, shapes[i])
                d = surface_distance((res.vertices, model.faces_), (truth, model.faces_), n_samples=10000)
                rows.append({"model": name, "missing": missing, "subject": int(ids[i]), "assd_mm": d.assd,
                             "hd95_mm": d.hd95, "success": bool(res.success), "reason": res.reason,
                             "outliers_rejected": float((~res.inliers[obs.is_outlier]).mean()),
                             "seconds": dt})
                print(f"{name:6s} {missing:10s} subject {ids[i]:3d}  ASSD {d.assd:6.2f} mm  HD95 {d.hd95:6.2f}  "
                      f"{'ok' if res.success else 'FAIL ' + res.reason}  {dt:.1f} s", flush=True)
    return rows


def summarise(rows):
    out = []
    keys = sorted({(r["model"], r["missing"]) for r in rows})
    for model, missing in keys:
        sel = [r for r in rows if r["model"] == model and r["missing"] == missing]
        a = np.array([r["assd_mm"] for r in sel])
        out.append({"model": model, "missing": missing, "n": len(sel),
                    "assd_p25": float(np.percentile(a, 25)), "assd_median": float(np.median(a)),
                    "assd_p95": float(np.percentile(a, 95)), "assd_mean": float(a.mean()),
                    "hd95_median": float(np.median([r["hd95_mm"] for r in sel])),
                    "success_rate": float(np.mean([r["success"] for r in sel])),
                    "fail_gt_5mm": float((a > 5).mean()),
                    "seconds_median": float(np.median([r["seconds"] for r in sel]))})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 cases per model, backfacing only")
    args = ap.parse_args()
    n = 4 if args.quick else 16
    protocols = ["backfacing"] if args.quick else ["backfacing", "plane"]
    rows = run(["pelvis", "femur"], n, protocols)
    summary = summarise(rows)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = {"date": date, "machine": "2-core CPU, no GPU", "quick": args.quick,
            "data": "articulated-ssm 0.2.0 ready models (shape_models/data), held-out test subjects, simulated "
                    "point clouds: 5000 samples, half the surface missing, 1 mm noise, 10 % outliers, random frame",
            "command": "python benchmarks/bench_ssm_fit3d.py" + (" --quick" if args.quick else "")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_ssm_fit3d.json").write_text(json.dumps({"meta": meta, "summary": summary, "cases": rows},
                                                             indent=1))
    lines = [f"# Fit to 3D points (bench_ssm_fit3d)", "",
             f"{meta['date']}; {meta['machine']}; {meta['data']}.", f"Command: `{meta['command']}`", "",
             "| model | missing half | n | ASSD p25 | ASSD median | ASSD p95 | HD95 median | success | ASSD > 5 mm | s / fit |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['model']} | {s['missing']} | {s['n']} | {s['assd_p25']:.2f} | {s['assd_median']:.2f} | "
                     f"{s['assd_p95']:.2f} | {s['hd95_median']:.2f} | {100 * s['success_rate']:.0f} % | "
                     f"{100 * s['fail_gt_5mm']:.0f} % | {s['seconds_median']:.1f} |")
    lines.append("")
    lines.append("ASSD / HD95 in mm between the fitted and the true full surface, in the points frame.")
    (RESULTS / "bench_ssm_fit3d.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
