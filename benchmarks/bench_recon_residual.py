"""Does the residual deformation beyond the shape model's span bring the shape closer?

The reconstruction's shape is the shape model's instance plus a Gaussian-process
residual deformation given the image's correspondences (``ReconConfig.residual``,
:mod:`xrecon.methods.recon.residual`). This benchmark chooses its settings on the
*validation* subjects and measures the chosen one on the *test* subjects:

1. validation (out-of-span: deformed val draws + the 6 LLP26 val subjects, one
   seed-002 view each, poses seed 2000): every setting of a small grid (prior
   amplitude, noise floor, weight of the network's predicted error) and "off"; the
   one with the lowest median shape error is chosen (off included: if no setting
   beats the plain instance on validation, the choice is off);
2. test, both columns (in the model's span, and out of it): the chosen setting
   against no residual (the shape model's instance alone), paired per image.

Shape error: ASSD after a similarity alignment to the true mesh (model frame, mm),
as ``bench_recon``'s "shape only" (the shape model's own best fit to each truth is
in ``bench_recon``'s results).

    python benchmarks/bench_recon_residual.py [--model PATH] [--views-per-subject 1]

Writes benchmarks/results/bench_recon_residual.{json,md}. Simulated data only
(``bench_recon``'s test sets, cached under data/recon_bench).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_recon  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
log = logging.getLogger("bench_recon_residual")

#: the validation grid: (amplitude_mm, noise_mm, sigma_scale); length scale as calibrated (20 mm)
GRID = [(a, n, s) for a in (2.0, 3.58, 5.0) for n in (1.0, 2.0) for s in (0.0, 0.6, 1.0)]


def shape_errors(net, space, ts, ids, configs, progress_desc: str) -> dict:
    """Per image of ``ids``: ASSD after similarity alignment of the reconstruction with each
    :class:`ResidualConfig` of ``configs`` (None = off); the pose and the shape model's fit
    are computed once (the residual only adds a deformation on top)."""
    from tqdm import tqdm

    from xrecon.errors import InputError
    from xrecon.geometry import Camera
    from xrecon.methods.recon.pipeline import ReconConfig, reconstruct_image
    from xrecon.methods.recon.residual import residual_deformation
    from xrecon.metrics.shape import surface_distance
    from xrecon.solve.align3d import umeyama
    from xrecon.solve.pnp import intrinsics_matrix

    size = ts["image"].shape[-1]
    faces = space.faces
    out = {"index": [], "population": [], "errors": [[] for _ in configs]}
    for i in tqdm(ids, desc=progress_desc):
        cam = Camera(ts["K"][i], np.eye(4), size, size, ts["spacing"])
        try:
            rec = reconstruct_image(net, space, ts["image"][i], cam, ReconConfig(residual=None))
        except InputError:  # a view that misses the volume: a constant image
            continue
        if not rec.success or rec.inliers.sum() < 12:
            continue
        truth = ts["truth_shapes"][ts["shape_index"][i]]
        inl = rec.inliers
        out["index"].append(int(i))
        out["population"].append(ts["shape_population"][ts["shape_index"][i]])
        for j, c in enumerate(configs):
            v = rec.vertices_model
            if c is not None:
                u, _ = residual_deformation(v, rec.corr_instance_mm[inl], rec.corr_uv[inl], rec.corr_sigma_mm[inl],
                                            rec.model_to_cam, intrinsics_matrix(rec.camera), c)
                v = v + u
            aligned = umeyama(v, truth, with_scale=True).apply(v)
            out["errors"][j].append(surface_distance((aligned, faces), (truth, faces), 5000).assd)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model file (default: the shipped weights)")
    ap.add_argument("--views", type=int, default=3, help="views per subject of bench_recon's sets")
    ap.add_argument("--views-per-subject", type=int, default=1, help="views of each subject used")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=str(ROOT / "data" / "recon_bench"))
    ap.add_argument("--quick", action="store_true", help="3 subjects per population (smoke run)")
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    from xrecon.methods.recon.model_io import DEFAULT_MODEL, load_recon_model
    from xrecon.methods.recon.residual import ResidualConfig

    net, space, info = load_recon_model(args.model)
    t0 = time.monotonic()

    def ids_of(ts):
        return [i for i in range(len(ts["image"])) if i % args.views < args.views_per_subject]

    grid = [ResidualConfig(amplitude_mm=a, noise_mm=n, sigma_scale=s) for a, n, s in GRID]
    val = bench_recon.load_test_set(space, "out-of-span", "val", args.views, args.quick, args.data)
    v = shape_errors(net, space, val, ids_of(val), [None] + grid, "validation")
    med = [float(np.median(e)) for e in v["errors"]]
    best = int(np.argmin(med))  # 0 = off
    chosen = None if best == 0 else grid[best - 1]
    val_rows = [{"setting": "off" if c is None else dataclasses.asdict(c), "median_mm": m,
                 "share_better_than_off": (float(np.mean(np.array(e) < np.array(v["errors"][0]))) if c else None)}
                for c, m, e in zip([None] + grid, med, v["errors"])]

    test = {}
    for pop in ("ssm", "out-of-span"):
        ts = bench_recon.load_test_set(space, pop, "test", args.views, args.quick, args.data)
        r = shape_errors(net, space, ts, ids_of(ts), [None, chosen or grid[0]], f"test {pop}")
        off, on = np.array(r["errors"][0]), np.array(r["errors"][1])
        pops = np.array(r["population"])
        test[pop] = {"n": len(off), "off": bench_recon.percentiles(off), "on": bench_recon.percentiles(on),
                     "share_better": float(np.mean(on < off)), "median_paired_change_mm": float(np.median(on - off)),
                     "by_population": {p: {"n": int((pops == p).sum()), "off_median": float(np.median(off[pops == p])),
                                           "on_median": float(np.median(on[pops == p]))} for p in sorted(set(pops))}}
    summary = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} CPU ({os.cpu_count()} cores), {torch.get_num_threads()} threads, no GPU",
        "data": (f"validation: {bench_recon.POPULATION_TEXT['out-of-span']}, val split, {len(v['index'])} images; "
                 f"test: both columns, {args.views_per_subject} seed-002 view(s) per subject of bench_recon's test "
                 "sets (128 px, simulated)"),
        "model": {"file": str(args.model or DEFAULT_MODEL), "command": info.get("command")},
        "chosen": None if chosen is None else dataclasses.asdict(chosen), "validation": val_rows, "test": test,
        "wall_time_s": time.monotonic() - t0,
        "command": " ".join(["python", "benchmarks/bench_recon_residual.py"]
                            + (argv if argv is not None else sys.argv[1:])),
    }
    name = args.name or ("bench_recon_residual" + ("_quick" if args.quick else ""))
    md = [f"# {name}: shape beyond the model's span (Gaussian-process residual)", "",
          f"Date {summary['date']}; machine: {summary['machine']}.", f"Data: {summary['data']}.",
          f"Model: `{summary['model']['file']}`.", f"Command: `{summary['command']}`.", "",
          "Shape error: ASSD after similarity alignment (mm). Validation (out of span), median per setting:", "",
          "| amplitude (mm) | noise floor (mm) | predicted-error weight | median | better than off |",
          "|---|---|---|---|---|"]
    for row in val_rows:
        s = row["setting"]
        if s == "off":
            md.append(f"| off | | | {row['median_mm']:.3f} | |")
        else:
            md.append(f"| {s['amplitude_mm']} | {s['noise_mm']} | {s['sigma_scale']} | {row['median_mm']:.3f} | "
                      f"{100 * row['share_better_than_off']:.0f} % |")
    md += ["", ("Chosen: off (no setting beat the shape model's instance on validation; the test rows show the "
                "first setting of the grid)." if chosen is None else f"Chosen: amplitude {chosen.amplitude_mm} mm, "
                f"noise {chosen.noise_mm} mm, predicted-error weight {chosen.sigma_scale}."),
           "", "Test (paired, same images):", "",
           "| test set | n | off: median | residual: median | better | median change (mm) |", "|---|---|---|---|---|---|"]
    for pop, t in test.items():
        label = "in the model's span" if pop == "ssm" else "out of the model's span"
        md.append(f"| {label} | {t['n']} | {t['off']['median']:.3f} | {t['on']['median']:.3f} | "
                  f"{100 * t['share_better']:.0f} % | {t['median_paired_change_mm']:+.3f} |")
        for p, b in t["by_population"].items():
            if pop != "ssm":
                md.append(f"| - {p} | {b['n']} | {b['off_median']:.3f} | {b['on_median']:.3f} | | |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=1, default=float))
    (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
