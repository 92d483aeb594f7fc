"""RayEmb (seed 003) CT-to-X-ray registration on the reconstruction benchmarks' test sets.

One command, both test columns: the in-span test split (the shape model's own
held-out subjects) and the out-of-span one (those subjects deformed beyond the
span, and LLP26 subjects), the same simulated X-rays and CT-like phantoms as
``bench_recon.py`` (``load_test_set``; cached under data/recon_bench/), the
first view of each subject in the same order, so the reconstruction path's
registrations of the same images (``bench_recon``, ``bench_recon_out_of_span``
results files) are paired case by case when present.

Per case: the patient's CT is the phantom the X-ray was simulated from (at
2 mm, with its bone label map), in its own patient frame (RAS+: the template
C-arm views need the patient's axes); ``--n-landmarks`` landmarks are sampled on,
in and around its bone; template DRRs are rendered and embedded (their time is
reported apart: a real use builds them once per CT); the X-ray is embedded, each
landmark found, the confident ones go to PnP. mTRE is over 500 vertices of the
true bone mesh. Writes benchmarks/results/<name>.{json,md}.

    python benchmarks/bench_rayemb.py --n 12 --n-refine 4 --threads 1
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_recon import POPULATION_TEXT, gfr, load_test_set, percentiles  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
log = logging.getLogger("bench_rayemb")
#: the reconstruction path's results on the same test sets (paired by image index)
RECON_RESULTS = {"ssm": "bench_recon", "out-of-span": "bench_recon_out_of_span"}


def recon_mtre_by_index(population: str) -> dict[int, float]:
    path = RESULTS / f"{RECON_RESULTS[population]}.json"
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text()).get("registration_cases", [])
    return {int(r["index"]): float(r["mtre_mm"]) if r.get("mtre_mm") is not None else float("nan") for r in rows}


def run_population(population, args, net, space, cfg, refine_cfg) -> tuple[list[dict], dict]:
    from xrecon.api import refine_pose
    from xrecon.geometry import Camera
    from xrecon.methods.rayemb.register import RayEmbRegistrar
    from xrecon.methods.recon.data import ReconDataConfig, model_to_world, phantom_of
    from xrecon.metrics.registration import mtre_mm, projected_mtre_mm

    ts = load_test_set(space, population, "test", args.views, False, args.data)
    images, world_to_cam, K, shape_index = ts["image"], ts["world_to_cam"], ts["K"], ts["shape_index"]
    spacing, size = ts["spacing"], images.shape[-1]
    m2w = model_to_world(space)
    order = [i for i in range(len(images)) if i % args.views == 0][: args.n]  # first view of each subject
    recon = recon_mtre_by_index(population)
    rows = []
    for k, i in enumerate(order):
        s = int(shape_index[i])
        t0 = time.monotonic()
        ct, labels = phantom_of(space, ts["truth_shapes"][s], ReconDataConfig(phantom_spacing_mm=2.0),
                                seed=ts["shape_seed"][s])
        t_ct = time.monotonic() - t0
        truth_world = ts["truth_shapes"][s] @ m2w[:3, :3].T + m2w[:3, 3]
        targets = truth_world[np.random.default_rng(0).choice(len(truth_world), 500, replace=False)]
        cam = Camera(K[i], np.eye(4), size, size, spacing)
        reg = RayEmbRegistrar(net, ct, labels=labels, config=cfg, disk_cache=False)
        t1 = time.monotonic()
        tpl = reg.templates_for(cam.resized(net.config.image_size, net.config.image_size) if size != net.config.image_size else cam)
        t_tpl = time.monotonic() - t1
        res = reg.register(images[i], cam)  # templates kept in memory: the per-image time
        truth = world_to_cam[i]
        # landmark localisation error against the truth (pixels of the input image)
        uv_true = np.einsum("ij,nj->ni", K[i], reg.landmarks_ct @ truth[:3, :3].T + truth[:3, 3])
        uv_true = uv_true[:, :2] / uv_true[:, 2:3]
        inside = ((uv_true >= 0) & (uv_true <= size - 1)).all(1)
        conf = res.detections.confident
        err = np.linalg.norm(res.detections.uv - uv_true, axis=1)
        row = {"index": int(i), "subject": int(ts["subject"][i]), "population": ts["shape_population"][s],
               "success": bool(res.success), "reason": res.reason, "n_confident": res.n_confident,
               "n_inliers": res.n_inliers, "n_landmarks_in_view": int(inside.sum()),
               "landmark_error_px_confident_median": float(np.median(err[conf])) if conf.any() else float("nan"),
               "landmark_within_3px_confident": float(np.mean(err[conf] < 3)) if conf.any() else float("nan"),
               "mtre_mm": float(mtre_mm(res.ct_to_cam, truth, targets)[0]) if res.success else float("nan"),
               "projected_mtre_mm": (float(projected_mtre_mm(res.ct_to_cam, truth, targets, K[i], spacing)[0])
                                     if res.success else float("nan")),
               "time_per_image_s": res.timings_s["total"], "timings_s": res.timings_s,
               "template_build_s": t_tpl, "n_templates": int(len(tpl.ct_to_cam)), "phantom_s": t_ct,
               "recon_path_registered": int(i) in recon, "recon_path_mtre_mm": recon.get(int(i), float("nan"))}
        if k < args.n_refine and res.success:
            t2 = time.monotonic()
            refined, info = refine_pose(images[i], cam, ct, res.ct_to_cam, config=refine_cfg)
            pose = refined if refined is not None else res.ct_to_cam
            row.update({"refined_mtre_mm": float(mtre_mm(pose, truth, targets)[0]), "refine_time_s": time.monotonic() - t2,
                        "refine_improved": refined is not None})
        elif k < args.n_refine:
            row.update({"refined_mtre_mm": float("nan"), "refine_time_s": float("nan")})
        log.info("%s case %d: mTRE %.2f mm (%d confident, %d inliers), recon path %.2f mm", population, i,
                 row["mtre_mm"], res.n_confident, res.n_inliers, row["recon_path_mtre_mm"])
        rows.append(row)
    return rows, ts


def summarise(rows: list[dict]) -> dict:
    def col(key, subset=rows):
        return [r.get(key, float("nan")) for r in subset]

    paired = [r for r in rows if r["recon_path_registered"]]  # a failed registration there (NaN) counts as failed
    refined = [r for r in rows if "refined_mtre_mm" in r]
    out = {"n": len(rows), "mtre_mm": percentiles(col("mtre_mm")), "gfr10": gfr(col("mtre_mm"), 10.0),
           "gfr5": gfr(col("mtre_mm"), 5.0), "projected_mtre_mm": percentiles(col("projected_mtre_mm")),
           "success_rate": float(np.mean(col("success"))) if rows else float("nan"),
           "n_confident": percentiles(col("n_confident"), failed_as_inf=False),
           "landmark_error_px_confident_median": percentiles(col("landmark_error_px_confident_median"),
                                                             failed_as_inf=False),
           "time_per_image_s": percentiles(col("time_per_image_s"), failed_as_inf=False),
           "template_build_s": percentiles(col("template_build_s"), failed_as_inf=False),
           "recon_path_same_images": {"n": len(paired), "mtre_mm": percentiles(col("recon_path_mtre_mm", paired)),
                                      "gfr10": gfr(col("recon_path_mtre_mm", paired), 10.0)},
           "refined": {"n": len(refined), "mtre_before_mm": percentiles(col("mtre_mm", refined)),
                       "mtre_after_mm": percentiles(col("refined_mtre_mm", refined)),
                       "gfr10_after": gfr(col("refined_mtre_mm", refined), 10.0)}}
    if len(paired) >= 6:
        from scipy.stats import wilcoxon

        # a failed case (NaN) ranks as the worst
        x = np.nan_to_num(np.asarray(col("mtre_mm", paired), float), nan=1e6)
        y = np.nan_to_num(np.asarray(col("recon_path_mtre_mm", paired), float), nan=1e6)
        out["paired_vs_recon_path"] = {"n": len(paired), "rayemb_better": int((x < y).sum()),
                                       "p_wilcoxon": float(wilcoxon(x, y).pvalue) if np.any(x != y) else 1.0}
    return out


def fmt(p: dict) -> str:
    return (f"{p['median']:.2f} ({p['p25']:.2f} - {p['p95']:.2f})" if p.get("median") is not None
            and np.isfinite(p.get("median", np.nan)) else "-")


def markdown(summary: dict) -> str:
    cols = summary["populations"]
    names = {"ssm": "in-span", "out-of-span": "out-of-span"}
    lines = [f"# bench_rayemb: RayEmb CT registration ({summary['date']})", "",
             f"Model: `{summary['model']['file']}` ({summary['model']['note']}). Machine: {summary['machine']}.", "",
             "Data: " + "; ".join(f"{names[p]}: {c['data']}" for p, c in cols.items()), "",
             "| measure | " + " | ".join(names[p] for p in cols) + " |", "|---|" + "---|" * len(cols)]

    def row(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(c["summary"]) for c in cols.values()) + " |")

    row("cases (first view of each subject)", lambda s: str(s["n"]))
    row("mTRE before refinement, median (p25 - p95), mm", lambda s: fmt(s["mtre_mm"]))
    row("GFR@10 / GFR@5", lambda s: f"{100 * s['gfr10']:.1f} % / {100 * s['gfr5']:.1f} %")
    row("reconstruction path on the same images, median mTRE (GFR@10)",
        lambda s: f"{fmt(s['recon_path_same_images']['mtre_mm'])} ({100 * s['recon_path_same_images']['gfr10']:.1f} %)"
        if s["recon_path_same_images"]["n"] else "-")
    row("paired: RayEmb better / n (Wilcoxon p)",
        lambda s: f"{s['paired_vs_recon_path']['rayemb_better']} / {s['paired_vs_recon_path']['n']} "
                  f"(p = {s['paired_vs_recon_path']['p_wilcoxon']:.2g})" if "paired_vs_recon_path" in s else "-")
    row("after intensity refinement (n), median mTRE, mm",
        lambda s: f"({s['refined']['n']}) {fmt(s['refined']['mtre_after_mm'])}" if s["refined"]["n"] else "-")
    row("confident landmarks per image, median", lambda s: f"{s['n_confident'].get('median', float('nan')):.0f}")
    row("their pixel error, median of per-image medians",
        lambda s: f"{s['landmark_error_px_confident_median'].get('median', float('nan')):.1f} px")
    row("time per image, templates cached, median s", lambda s: f"{s['time_per_image_s'].get('median', float('nan')):.2f}")
    row("template building per CT, median s", lambda s: f"{s['template_build_s'].get('median', float('nan')):.1f}")
    lines += ["", f"Command: `{summary['command']}`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="RayEmb model file (default: the shipped weights)")
    ap.add_argument("--n", type=int, default=12, help="cases per test column (first view of each subject)")
    ap.add_argument("--n-refine", type=int, default=4, help="cases per column refined by intensity")
    ap.add_argument("--views", type=int, default=3, help="views per subject of the cached test set")
    ap.add_argument("--populations", default="ssm,out-of-span", help="test columns: ssm (in-span), out-of-span")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a RayEmbConfig field (numbers), e.g. --set min_score=0.6")
    ap.add_argument("--data", default=str(ROOT / "data" / "recon_bench"), help="cache of the simulated test sets")
    ap.add_argument("--name", default="bench_rayemb")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    from shape_models.bundled import load_model
    from xrecon.api import recon_refine_config
    from xrecon.methods.rayemb.model_io import DEFAULT_MODEL, load_rayemb_model
    from xrecon.methods.rayemb.register import RayEmbConfig
    from xrecon.methods.recon.shape import ShapeSpace

    net, info = load_rayemb_model(args.model)
    space = ShapeSpace.from_shape_model(load_model("pelvis"))
    changes = {}
    for item in args.overrides:
        name, _, text = item.partition("=")
        current = getattr(RayEmbConfig(), name, None)
        if current is None or isinstance(current, tuple):
            raise SystemExit(f"--set {item}: not a numeric RayEmbConfig field")
        changes[name] = type(current)(text)
    cfg = dataclasses.replace(RayEmbConfig(), **changes)
    refine_cfg = recon_refine_config()
    t0 = time.monotonic()
    cols = {}
    for pop in args.populations.split(","):
        rows, ts = run_population(pop, args, net, space, cfg, refine_cfg)
        cols[pop] = {"data": (f"{POPULATION_TEXT[pop]}, test split, {len(rows)} subjects x their first seed-002 "
                              "view, CT-like phantoms, DRR 128 px (cpu128 detector); simulated, no real X-rays"),
                     "summary": summarise(rows), "cases": rows}
    summary = {"date": datetime.date.today().isoformat(),
               "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} thread(s), no GPU (shared 2-core machine)",
               "model": {"file": str(args.model or DEFAULT_MODEL.relative_to(ROOT)), "command": info.get("command"),
                         "epochs_run": info.get("epochs_run"), "train_seconds": info.get("train_seconds"),
                         "note": f"trained {info.get('train_seconds', 0) / 60:.0f} min on 1 CPU thread"},
               "rayemb_config": dataclasses.asdict(cfg), "refine_similarity": refine_cfg.similarity,
               "populations": {p: {"data": c["data"], "summary": c["summary"]} for p, c in cols.items()},
               "wall_time_s": time.monotonic() - t0,
               "command": " ".join(["python", "benchmarks/bench_rayemb.py"] + (argv if argv is not None else sys.argv[1:]))}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"summary": summary,
                                                           "cases": {p: c["cases"] for p, c in cols.items()}},
                                                          indent=1, default=float))
    text = markdown(summary)
    (RESULTS / f"{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
