"""Benchmark: fit the bundled pelvis model to silhouettes in one view or two (biplanar).

Held-out test subjects of the ready model's fixed split. Views: AP (along the
anterior axis) and lateral, 90 degrees apart, SDD 1000 mm, source-to-pelvis
750 mm, 512 x 512 px at 0.8 mm (0.6 mm per pixel at the bone). Silhouettes are
ray cast with open3d (pixel-centre rays), independent of the fitter's outline.
Conditions: pose known, or unknown (start 10 deg about a random axis and 20 mm
in a random direction off); "clean" (exact masks; the subject lies almost in
the model span) and "realistic" (the true bone gets a smooth 1 mm RMS
out-of-model deformation and the contour points 1 px Gaussian noise).
Metrics: ASSD (mm) to the true surface as posed, and after removing a rigid
motion (shape only).

    python benchmarks/bench_ssm_fit2d.py [--quick]
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
from shape_models.fit2d import Fit2DConfig, contour_from_mask, fit_contours  # noqa: E402
from shape_models.procrustes import exp_so3  # noqa: E402
from shape_models.procrustes import align_points, apply_transform  # noqa: E402
from shape_models.synthetic import biplanar_cameras, noisy_contour, render_silhouette, smooth_deformation  # noqa: E402
from xrecon.metrics.shape import assd  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def start_pose(centre, seed):
    rng = np.random.default_rng(seed)
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    shift = rng.standard_normal(3)
    shift = 20.0 * shift / np.linalg.norm(shift)
    T = np.eye(4)
    T[:3, :3] = exp_so3(np.radians(10.0) * axis)
    T[:3, 3] = centre - T[:3, :3] @ centre + shift
    return T


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 cases per condition")
    args = ap.parse_args()
    n_cases = 3 if args.quick else 12
    model = bundled.load_model("pelvis")
    shapes, ids = bundled.subject_shapes(model, "test")
    cams = biplanar_cameras(model.mean_.mean(axis=0))
    rows = []
    for realism in ("clean", "realistic"):
        for i in range(n_cases):
            truth = shapes[i] if realism == "clean" else smooth_deformation(shapes[i], 1.0, seed=i)
            masks = [render_silhouette(truth, model.faces_, cams, v) for v in range(2)]
            obs = [contour_from_mask(m) for m in masks]
            if realism == "realistic":
                obs = [noisy_contour(o, 1.0, seed=10 * i + v) for v, o in enumerate(obs)]
            for views in ("single", "biplanar"):
                sel = [0] if views == "single" else [0, 1]
                for pose in ("known", "unknown"):
                    init = np.eye(4) if pose == "known" else start_pose(truth.mean(axis=0), 100 + i)
                    cfg = Fit2DConfig(estimate_pose=pose == "unknown")
                    t0 = time.perf_counter()
                    res = fit_contours(model, [obs[v] for v in sel], cams[sel], init, cfg)
                    dt = time.perf_counter() - t0
                    err = assd((res.vertices, model.faces_), (truth, model.faces_), n_samples=10000)
                    aligned = apply_transform(align_points(res.vertices, truth, "rigid"), res.vertices)
                    err_shape = assd((aligned, model.faces_), (truth, model.faces_), n_samples=10000)
                    rows.append({"realism": realism, "views": views, "pose": pose, "subject": int(ids[i]),
                                 "assd_mm": err, "assd_shape_mm": err_shape, "success": bool(res.success),
                                 "reason": res.reason, "rms_px": res.rms_px, "seconds": dt})
                    print(f"{realism:9s} {views:8s} pose {pose:7s} subject {ids[i]:3d}  ASSD {err:5.2f} mm "
                          f"(shape {err_shape:5.2f})  {'ok' if res.success else 'FAIL ' + res.reason}  {dt:.1f} s",
                          flush=True)
    summary = []
    for key in sorted({(r["realism"], r["views"], r["pose"]) for r in rows}):
        sel = [r for r in rows if (r["realism"], r["views"], r["pose"]) == key]
        a = np.array([r["assd_mm"] for r in sel])
        summary.append({"realism": key[0], "views": key[1], "pose": key[2], "n": len(sel),
                        "assd_median": float(np.median(a)), "assd_p95": float(np.percentile(a, 95)),
                        "assd_mean": float(a.mean()),
                        "assd_shape_median": float(np.median([r["assd_shape_mm"] for r in sel])),
                        "success_rate": float(np.mean([r["success"] for r in sel])),
                        "seconds_median": float(np.median([r["seconds"] for r in sel]))})
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = {"date": date, "machine": "2-core CPU, no GPU", "quick": args.quick,
            "data": "articulated-ssm 0.2.0 ready pelvis model, held-out test subjects, simulated silhouettes "
                    "(open3d ray casting, 512 px at 0.8 mm, SDD 1000 mm, source-object 750 mm)",
            "command": "python benchmarks/bench_ssm_fit2d.py" + (" --quick" if args.quick else "")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_ssm_fit2d.json").write_text(json.dumps({"meta": meta, "summary": summary, "cases": rows},
                                                             indent=1))
    lines = ["# Fit to 2D silhouettes (bench_ssm_fit2d)", "", f"{date}; {meta['machine']}; {meta['data']}.",
             f"Command: `{meta['command']}`", "",
             "| condition | views | pose | n | ASSD median | ASSD p95 | ASSD mean | shape-only ASSD median | success | s / fit |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['realism']} | {s['views']} | {s['pose']} | {s['n']} | {s['assd_median']:.2f} | "
                     f"{s['assd_p95']:.2f} | {s['assd_mean']:.2f} | {s['assd_shape_median']:.2f} | "
                     f"{100 * s['success_rate']:.0f} % | {s['seconds_median']:.1f} |")
    lines += ["", "ASSD in mm to the true surface as posed in the world; shape-only after removing the best rigid "
              "motion. Unknown pose: start 10 deg / 20 mm off."]
    (RESULTS / "bench_ssm_fit2d.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
