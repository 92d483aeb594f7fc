"""Intensity refinement from one view and from several, on the same subjects and starts.

One X-ray's intensities hardly change when the bone moves along the ray
(``bench_refine_phantoms.py``): the refined depth wanders by a few mm. This
benchmark refines the same start pose of each subject's CT against one view and
against several views whose cameras share one world frame
(:class:`xrecon.solve.refine.MultiViewRefiner`).

Subjects and views: bench_recon_multiview's (the first ``--n`` held-out test
subjects of ``--population``, their bench_recon phantoms, one C-arm isocentre
per subject, views cached in ``data/recon_bench/multiview_*.h5``). The CT is
the subject's phantom at 2 mm (as in bench_recon); the start ``ct_to_world``
is the truth moved by a rotation of N(0, ``--rotation-deg``) deg per axis about
the bone centre, N(0, ``--lateral-mm``) across and N(0, ``--depth-mm``) mm along
the first shot's ray (seeded). Protocols (rows): the C-arm shot ``a`` alone; two
shots 30 deg apart (``a``, ``a + 30``); the three-shot sweep; AP alone; AP +
lateral. mTRE over 500 bone vertices (world frame), depth error along each
protocol's first view, share of cases ending worse than the start.

    python benchmarks/bench_refine_multiview.py [--population ssm|out-of-span] [--n 16] [--threads 1] \\
        [--protocols 0,1,4]

Writes benchmarks/results/bench_refine_multiview[_out_of_span].{json,md}. Simulated X-rays only.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))
log = logging.getLogger("bench_refine_multiview")

PROTOCOLS = {
    "single view (C-arm a)": ["a+0"],
    "two C-arm shots 30 deg apart": ["a+0", "a+30"],
    "three-shot sweep (a, a+15, a+30)": ["a+0", "a+15", "a+30"],
    "single view (AP)": ["AP"],
    "AP + lateral (90 deg)": ["AP", "lateral"],
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--population", choices=("ssm", "out-of-span"), default="out-of-span")
    ap.add_argument("--n", type=int, default=16, help="subjects")
    ap.add_argument("--rotation-deg", type=float, default=1.5)
    ap.add_argument("--lateral-mm", type=float, default=1.0)
    ap.add_argument("--depth-mm", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=str(ROOT / "data" / "recon_bench"))
    ap.add_argument("--protocols", default=None,
                    help="comma-separated protocol numbers (0-based, in the module doc's order; default all)")
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    protocols = dict(list(PROTOCOLS.items()) if args.protocols is None else
                     [list(PROTOCOLS.items())[int(k)] for k in args.protocols.split(",")])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    from tqdm import tqdm

    from bench_recon_multiview import VIEW_NAMES, simulate, subjects
    from bench_refine_phantoms import perturbed
    from xrecon.anatomy.bone import bone_from_labels
    from xrecon.api import recon_refine_config
    from xrecon.geometry import Camera
    from xrecon.metrics.aggregate import percentiles as _percentiles
    from xrecon.methods.recon.data import ReconDataConfig, phantom_of
    from xrecon.methods.recon.model_io import load_recon_model
    from xrecon.metrics.registration import depth_error_mm, mtre_mm
    from xrecon.solve.refine import MultiViewRefiner

    def percentiles(v) -> list:
        return _percentiles(v).tolist()

    _, space, _ = load_recon_model(None)
    subj = subjects(space, args.population, args.n)
    digest = "_".join(sorted({s["digest"] for s in subj}))
    data = simulate(space, subj, Path(args.data) / (f"multiview_{args.population.replace('-', '_')}_{digest}_"
                                                    f"{space.fingerprint}_{len(subj)}s.h5"))
    size = data["image"].shape[-1]
    spacing = ReconDataConfig().camera().pixel_spacing_mm
    cfg = recon_refine_config()
    rng = np.random.default_rng(11)
    rows = []
    for s, sub in enumerate(tqdm(subj, desc="subjects")):
        ct, labels = phantom_of(space, sub["vertices"], ReconDataConfig(phantom_spacing_mm=2.0), seed=sub["seed"])
        bone = bone_from_labels(labels, cache=False)
        targets = bone.vertices[np.random.default_rng(0).choice(len(bone.vertices), 500, replace=False)]
        first = data["world_to_cam"][s, VIEW_NAMES.index("a+0")]
        # the start, drawn in the first shot's camera frame, as a ct_to_world (the CT is in the world frame)
        start = np.linalg.inv(first) @ perturbed(first, bone.vertices.mean(0), rng, args.rotation_deg,
                                                 args.lateral_mm, args.depth_mm)
        for proto, names in protocols.items():
            v = [VIEW_NAMES.index(n) for n in names]
            w2c = data["world_to_cam"][s, v]
            cams = [Camera(data["K"][s, j], data["world_to_cam"][s, j], size, size, spacing) for j in v]
            if any(float(np.ptp(data["image"][s, j])) <= 0 for j in v):
                rows.append({"subject_index": s, "protocol": proto, "skipped": "a view misses the volume"})
                continue
            refiner = MultiViewRefiner(ct, cams, config=cfg)
            res = refiner.refine([torch.as_tensor(data["image"][s, j]) for j in v], w2c, start)
            view0 = w2c[0]
            rows.append({"subject_index": s, "population": sub["population"], "protocol": proto,
                         "mtre_start_mm": float(mtre_mm(start, np.eye(4), targets)[0]),
                         "mtre_mm": float(mtre_mm(res.world_to_cam, np.eye(4), targets)[0]),
                         "depth_error_start_mm": float(depth_error_mm(view0 @ start, view0, targets)[0]),
                         "depth_error_mm": float(depth_error_mm(view0 @ res.world_to_cam, view0, targets)[0]),
                         "similarity": [res.similarity_init, res.similarity_final], "success": bool(res.success),
                         "reason": res.reason, "time_s": res.time_s})
            log.info("%d %s: %.2f -> %.2f mm (%.0f s)", s, proto, rows[-1]["mtre_start_mm"], rows[-1]["mtre_mm"],
                     res.time_s)

    summary = []
    for proto in protocols:
        rr = [r for r in rows if r["protocol"] == proto and "mtre_mm" in r]
        before, after = np.array([r["mtre_start_mm"] for r in rr]), np.array([r["mtre_mm"] for r in rr])
        summary.append({"protocol": proto, "views": protocols[proto], "n": len(rr),
                        "mtre_start_mm": percentiles(before), "mtre_mm": percentiles(after),
                        "abs_depth_error_mm": percentiles(np.abs([r["depth_error_mm"] for r in rr])),
                        "share_worse": float(np.mean(after > before)) if len(rr) else float("nan"),
                        "share_worse_by_1mm": float(np.mean(after > before + 1.0)) if len(rr) else float("nan"),
                        "time_per_case_s": percentiles([r["time_s"] for r in rr])})
    name = args.name or "bench_refine_multiview" + ("" if args.population == "ssm" else "_out_of_span")
    meta = {"date": time.strftime("%Y-%m-%d"),
            "machine": f"x86_64 CPU, {args.threads} threads, no GPU (shared 2-core machine)",
            "data": f"{args.population} test subjects ({len(subj)}), bench_recon_multiview's C-arm views (128 px), "
                    "CT = the subject's phantom at 2 mm; simulated, no real X-rays",
            "start": {"rotation_deg_sd": args.rotation_deg, "lateral_mm_sd": args.lateral_mm,
                      "depth_mm_sd": args.depth_mm, "seed": 11, "frame": "the first C-arm shot's camera"},
            "refine_similarity": cfg.similarity,
            "command": " ".join(["python", "benchmarks/bench_refine_multiview.py"]
                                + (argv if argv is not None else sys.argv[1:]))}
    md = [f"# {name}: intensity refinement from one view and from several", "",
          f"{meta['data']}; run {meta['date']} on {meta['machine']}. Start: the truth moved by "
          f"N(0, {args.rotation_deg}) deg per axis, N(0, {args.lateral_mm}) mm across and N(0, {args.depth_mm}) mm "
          f"along the first C-arm shot's ray (the same start for every protocol). Refinement: the product's "
          f"levels with {cfg.similarity}, one loss over all views. Command: `{meta['command']}`.", "",
          "| protocol | n | mTRE start median (mm) | mTRE after p25 / median / p95 (mm) | abs. depth error after "
          "median (mm) | ended worse | worse by > 1 mm | time per case (s) |", "|---|---|---|---|---|---|---|---|"]
    for e in summary:
        m = e["mtre_mm"]
        md.append(f"| {e['protocol']} | {e['n']} | {e['mtre_start_mm'][1]:.2f} | {m[0]:.2f} / {m[1]:.2f} / "
                  f"{m[2]:.2f} | {e['abs_depth_error_mm'][1]:.2f} | {100 * e['share_worse']:.0f} % | "
                  f"{100 * e['share_worse_by_1mm']:.0f} % | {e['time_per_case_s'][1]:.0f} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"summary": meta, "protocols": summary, "cases": rows},
                                                     indent=1, allow_nan=True))
    (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
