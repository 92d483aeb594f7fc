"""Intensity refinement from registration-like starts on held-out pelvis phantoms.

bench_recon refines the poses that the registration through the reconstruction
returns; some of them end further from the truth than they started. This
benchmark isolates the refinement: each case is the first view of one
subject of a simulated test (or validation) set (the bench_recon data,
``data/recon_bench/``), the CT is the phantom the X-ray was simulated from
(sampled at 2 mm, as in bench_recon), and the start pose is the truth moved
the way the registration errs: a rotation of ``--rotation-deg`` (normal per
axis) about the bone's centre, a shift across the view of ``--lateral-mm``
(normal per axis) and a shift along the viewing direction of ``--depth-mm``
(normal), all from a fixed seed. The refinement is the product's
(:func:`xrecon.api.recon_refine_config`) with ``--set FIELD=VALUE`` overrides
of :class:`xrecon.solve.refine.RefineConfig`.

Reports mTRE (500 bone vertices, camera frame) before and after, the share of
cases that end worse than they started (and worse by > 1 mm), the depth error
after, and the similarity at the true pose beside the refined one's (when the
refined pose scores higher than the truth, the objective, not the optimiser,
moved it away).

    python benchmarks/bench_refine_phantoms.py --population out-of-span --split val --n 24 --threads 1
    python benchmarks/bench_refine_phantoms.py --population out-of-span --split val --n 24 \\
        --set depth_prior_mm=5 --name bench_refine_phantoms_out_of_span_val_prior5

Writes benchmarks/results/<NAME>.{json,md} (default NAME:
bench_refine_phantoms_<population>_<split>). Simulated X-rays only.
"""
from __future__ import annotations

import argparse
import dataclasses
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
log = logging.getLogger("bench_refine_phantoms")


def refine_config(overrides: list[str]):
    """The product's refinement settings with ``FIELD=VALUE`` overrides (numbers, names)."""
    from xrecon.api import recon_refine_config

    base = recon_refine_config()
    fields = {f.name: f for f in dataclasses.fields(base)}
    changes = {}
    for item in overrides:
        name, sep, text = item.partition("=")
        if not sep or name not in fields or name == "levels":
            raise SystemExit(f"--set {item}: expected FIELD=VALUE with FIELD one of "
                             f"{sorted(k for k in fields if k != 'levels')}")
        current = getattr(base, name)
        try:
            changes[name] = (None if text.lower() == "none" else float(text)) if current is None \
                else type(current)(text)
        except ValueError:
            raise SystemExit(f"--set {item}: {text!r} is not a valid value for {name}") from None
    return dataclasses.replace(base, **changes)


def perturbed(truth: np.ndarray, centre_world: np.ndarray, rng: np.random.Generator, rotation_deg: float,
              lateral_mm: float, depth_mm: float) -> np.ndarray:
    """``truth`` moved in its camera frame: a rotation about the bone centre and a shift."""
    from xrecon.geometry.se3 import rotvec_to_rotmat

    c = truth[:3, :3] @ centre_world + truth[:3, 3]
    R = rotvec_to_rotmat(torch.as_tensor(np.deg2rad(rng.normal(0.0, rotation_deg, 3)))).numpy()
    delta = np.eye(4)
    delta[:3, :3] = R
    delta[:3, 3] = c - R @ c + np.array([*rng.normal(0.0, lateral_mm, 2), rng.normal(0.0, depth_mm)])
    return delta @ truth


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--population", choices=("ssm", "deformed", "llp26", "out-of-span"), default="out-of-span")
    ap.add_argument("--split", choices=("test", "val"), default="val")
    ap.add_argument("--n", type=int, default=24, help="subjects (first view of each)")
    ap.add_argument("--rotation-deg", type=float, default=1.5)
    ap.add_argument("--lateral-mm", type=float, default=1.0)
    ap.add_argument("--depth-mm", type=float, default=3.0)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=str(ROOT / "data" / "recon_bench"))
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    cfg = refine_config(args.overrides)

    from tqdm import tqdm

    from bench_recon import load_test_set
    from xrecon.anatomy.bone import bone_from_labels
    from xrecon.geometry import Camera
    from xrecon.metrics.aggregate import percentiles as _percentiles
    from xrecon.methods.recon.data import ReconDataConfig, phantom_of
    from xrecon.methods.recon.model_io import load_recon_model
    from xrecon.metrics.registration import depth_error_mm, mtre_mm, projected_mtre_mm
    from xrecon.solve.refine import IntensityRefiner

    _, space, _ = load_recon_model(None)
    ts = load_test_set(space, args.population, args.split, 3, False, args.data)
    images, K, world_to_cam, shape_index = ts["image"], ts["K"], ts["world_to_cam"], ts["shape_index"]
    spacing, size = ts["spacing"], ts["image"].shape[-1]
    # the first view of every subject, subjects spread over the populations in file order
    firsts = [int(np.flatnonzero(shape_index == s)[0]) for s in np.unique(shape_index)]
    pick = np.linspace(0, len(firsts) - 1, min(args.n, len(firsts))).round().astype(int)
    rng = np.random.default_rng(11)
    rows = []
    for i in tqdm([firsts[p] for p in pick], desc="refine"):
        s = int(shape_index[i])
        ct, labels = phantom_of(space, ts["truth_shapes"][s], ReconDataConfig(phantom_spacing_mm=2.0),
                                seed=ts["shape_seed"][s])
        bone = bone_from_labels(labels, cache=False)
        targets = bone.vertices[np.random.default_rng(0).choice(len(bone.vertices), 500, replace=False)]
        truth = world_to_cam[i].astype(np.float64)
        start = perturbed(truth, bone.vertices.mean(0), rng, args.rotation_deg, args.lateral_mm, args.depth_mm)
        cam = Camera(K[i], np.eye(4), size, size, spacing)
        refiner = IntensityRefiner(ct, cam, config=cfg)
        xray = torch.as_tensor(np.asarray(images[i], np.float32))
        t0 = time.monotonic()
        res = refiner.refine(xray, torch.as_tensor(start))
        with torch.no_grad():
            sim_truth = float(refiner.similarity(xray, torch.as_tensor(truth)[None])[0])
        pose = res.world_to_cam
        row = {"index": i, "shape": s, "population": ts["shape_population"][s],
               "mtre_start_mm": float(mtre_mm(start, truth, targets)[0]),
               "mtre_mm": float(mtre_mm(pose, truth, targets)[0]),
               "projected_mtre_start_mm": float(projected_mtre_mm(start, truth, targets, K[i], spacing)[0]),
               "projected_mtre_mm": float(projected_mtre_mm(pose, truth, targets, K[i], spacing)[0]),
               "depth_error_start_mm": float(depth_error_mm(start, truth, targets)[0]),
               "depth_error_mm": float(depth_error_mm(pose, truth, targets)[0]),
               "similarity_start": res.similarity_init, "similarity_final": res.similarity_final,
               "similarity_truth": sim_truth, "success": bool(res.success), "reason": res.reason,
               "n_iterations": res.n_iterations, "time_s": time.monotonic() - t0}
        rows.append(row)
        log.info("%s", {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})

    def percentiles(v) -> list:
        return _percentiles(v).tolist()

    before = np.array([r["mtre_start_mm"] for r in rows])
    after = np.array([r["mtre_mm"] for r in rows])
    s = {"n": len(rows), "mtre_start_mm": percentiles(before), "mtre_mm": percentiles(after),
         "abs_depth_error_start_mm": percentiles(np.abs([r["depth_error_start_mm"] for r in rows])),
         "abs_depth_error_mm": percentiles(np.abs([r["depth_error_mm"] for r in rows])),
         "projected_mtre_mm": percentiles([r["projected_mtre_mm"] for r in rows]),
         "share_worse": float(np.mean(after > before)),
         "share_worse_by_1mm": float(np.mean(after > before + 1.0)),
         "share_refined_above_truth_similarity": float(np.mean([r["similarity_final"] > r["similarity_truth"]
                                                                for r in rows])),
         "time_per_case_s": percentiles([r["time_s"] for r in rows])}
    name = args.name or f"bench_refine_phantoms_{args.population.replace('-', '_')}_{args.split}"
    out = {"summary": {"date": time.strftime("%Y-%m-%d"),
                       "machine": f"x86_64 CPU, {args.threads} threads, no GPU (shared 2-core machine)",
                       "data": f"{args.population} population, {args.split} split, first view of {len(rows)} "
                               "subjects, CT-like phantoms, DRR 128 px; simulated, no real X-rays",
                       "start": {"rotation_deg_sd": args.rotation_deg, "lateral_mm_sd": args.lateral_mm,
                                 "depth_mm_sd": args.depth_mm, "seed": 11},
                       "refine_config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "levels"},
                       "command": " ".join(["python", "benchmarks/bench_refine_phantoms.py"]
                                           + (argv if argv is not None else sys.argv[1:])), **s},
           "cases": rows}
    md = [f"# {name}: intensity refinement from registration-like starts", "",
          f"{out['summary']['data']}; run {out['summary']['date']} on {out['summary']['machine']}.",
          f"Start: truth moved by N(0, {args.rotation_deg}) deg per axis about the bone centre, "
          f"N(0, {args.lateral_mm}) mm across and N(0, {args.depth_mm}) mm along the view. "
          f"Refinement: {out['summary']['refine_config']}.", f"Command: `{out['summary']['command']}`.", "",
          "| measure | p25 | median | p95 |", "|---|---|---|---|"]
    for label, key in (("mTRE at the start (mm)", "mtre_start_mm"), ("mTRE after (mm)", "mtre_mm"),
                       ("abs. depth error at the start (mm)", "abs_depth_error_start_mm"),
                       ("abs. depth error after (mm)", "abs_depth_error_mm"),
                       ("projected mTRE after (mm)", "projected_mtre_mm"), ("time per case (s)", "time_per_case_s")):
        p = s[key]
        md.append(f"| {label} | {p[0]:.2f} | {p[1]:.2f} | {p[2]:.2f} |")
    md += ["", f"Ended worse than the start: {100 * s['share_worse']:.0f} % of {len(rows)} "
           f"(worse by > 1 mm: {100 * s['share_worse_by_1mm']:.0f} %). Refined pose scoring above the true pose: "
           f"{100 * s['share_refined_above_truth_similarity']:.0f} %."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=1, allow_nan=True))
    (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
