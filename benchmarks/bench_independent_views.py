"""Benchmark of several X-rays whose relative poses are unknown (films taken
separately; issue 28, case c): per-view CT registration through one shared
shape (:mod:`xrecon.methods.recon.independent_views`) against the single-view
pipeline on the same images, paired view by view.

Data: the views ``bench_recon_multiview.py`` rendered and cached
(``data/recon_bench/multiview_*.h5``; its 16 test subjects per population, of
which the first ``--n`` are used), each pair's cameras given to the solver
without their poses. Pairs: two C-arm shots 30 deg apart (LAO ``a``, ``a + 30``)
and the oblique pair (LAO -45 / +45). Per view: the CT registration's mTRE
(500 bone-surface points, camera frame; the CT at 2 mm in a random rigid frame,
half LPS-flipped, as in ``bench_recon_multiview.py``) before intensity
refinement, single view (:func:`~xrecon.methods.recon.pipeline.register_ct_points`,
silhouette step included) and through the pair
(:func:`~xrecon.methods.recon.independent_views.register_ct_independent`); the
shared shape's ASSD after similarity alignment against each view's own.

    python benchmarks/bench_independent_views.py [--population ssm|out-of-span] [--n 12] [--threads 1]

Writes benchmarks/results/bench_independent_views[_out_of_span].{json,md}. Simulated data only.
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
from bench_recon import POPULATION_TEXT, gfr, percentiles, random_frame, recon_config  # noqa: E402
from bench_recon_multiview import VIEW_NAMES, simulate, subjects  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
log = logging.getLogger("bench_independent_views")

PAIRS = {"two C-arm shots 30 deg apart": ("a+0", "a+30"), "oblique pair (-45 / +45)": ("oblique -45", "oblique +45")}
#: subjects rendered by bench_recon_multiview.py (its cache holds this many per population)
CACHED_SUBJECTS = 16


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """``a`` (several views) against ``b`` (single view), case by case; a failure counts as +inf."""
    from scipy.stats import wilcoxon

    a, b = np.where(np.isfinite(a), a, np.inf), np.where(np.isfinite(b), b, np.inf)
    better, worse = int((a < 0.99 * b).sum()), int((a > 1.01 * b).sum())
    both = np.isfinite(a) & np.isfinite(b)
    d = a[both] - b[both]
    p = float(wilcoxon(d).pvalue) if (d != 0).sum() >= 5 else float("nan")
    return {"better": better, "worse": worse, "n": int(len(a)), "median_difference_mm": float(np.median(d))
            if len(d) else float("nan"), "wilcoxon_p": p}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--population", choices=("ssm", "out-of-span"), default="ssm")
    ap.add_argument("--n", type=int, default=12, help=f"subjects (at most {CACHED_SUBJECTS}, the cached ones)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default=None, help="model file (default: the shipped weights)")
    ap.add_argument("--data", default=str(ROOT / "data" / "recon_bench"), help="cache of the rendered views")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                    help="override one ReconConfig field (as bench_recon.py)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    if not 1 <= args.n <= CACHED_SUBJECTS:
        raise SystemExit(f"--n must be 1..{CACHED_SUBJECTS}")

    from xrecon.anatomy.bone import bone_from_labels
    from xrecon.geometry import Camera
    from xrecon.methods.recon.data import ReconDataConfig, phantom_of
    from xrecon.methods.recon.independent_views import combine_independent, register_ct_independent
    from xrecon.methods.recon.model_io import DEFAULT_MODEL, load_recon_model
    from xrecon.methods.recon.pipeline import reconstruct_image, register_ct_points
    from xrecon.metrics.registration import mtre_mm
    from xrecon.metrics.shape import surface_distance
    from xrecon.solve.align3d import umeyama

    net, space, info = load_recon_model(args.model)
    cfg = recon_config(args.overrides)
    subj = subjects(space, args.population, CACHED_SUBJECTS)
    digest = "_".join(sorted({s["digest"] for s in subj}))
    cache = Path(args.data) / (f"multiview_{args.population.replace('-', '_')}_{digest}_{space.fingerprint}_"
                               f"{len(subj)}s.h5")
    if not cache.is_file():
        raise SystemExit(f"{cache} is missing: run benchmarks/bench_recon_multiview.py --population "
                         f"{args.population} --n {CACHED_SUBJECTS} first (it renders the views)")
    data = simulate(space, subj, cache)
    faces = space.faces
    size = data["image"].shape[-1]
    spacing = ReconDataConfig().camera().pixel_spacing_mm
    px_net = size / net.config.image_size
    rng = np.random.default_rng(7)  # bench_recon_multiview's CT frames, subject by subject
    rows = []
    t_start = time.monotonic()
    for s, sub in enumerate(subj[: args.n]):
        truth_model = sub["vertices"]
        ct, labels = phantom_of(space, truth_model, ReconDataConfig(phantom_spacing_mm=2.0), seed=sub["seed"])
        bone = bone_from_labels(labels, cache=False)
        world_to_ct = random_frame(rng, lps=bool(s % 2))
        bone_ct = bone.transformed(world_to_ct)
        pts, nrm = bone_ct.sample_points(30000, seed=0)
        targets = bone_ct.vertices[np.random.default_rng(0).choice(len(bone_ct.vertices), 500, replace=False)]
        ct_to_world = np.linalg.inv(world_to_ct)
        mesh = (bone_ct.vertices, bone_ct.faces)
        single = {}
        for name in sorted({nm for pair in PAIRS.values() for nm in pair}, key=VIEW_NAMES.index):
            v = VIEW_NAMES.index(name)
            W = data["world_to_cam"][s, v]
            cam = Camera(data["K"][s, v], np.eye(4), size, size, spacing)  # a film: intrinsics only
            t0 = time.monotonic()
            rec = reconstruct_image(net, space, data["image"][s, v], cam, cfg)
            t_rec = time.monotonic() - t0
            reg = register_ct_points(rec, pts, nrm, cfg, ct_mesh=mesh) if rec.success else None
            ok = reg is not None and reg.success
            single[name] = {"rec": rec, "cam": cam, "truth": W @ ct_to_world, "t_rec": t_rec,
                            "t_reg": time.monotonic() - t0 - t_rec,
                            "mtre": float(mtre_mm(reg.ct_to_cam, W @ ct_to_world, targets)[0]) if ok else float("nan"),
                            "confident": bool(ok and reg.confident),
                            "shape": (surface_distance((umeyama(rec.vertices_model, truth_model, with_scale=True)
                                                        .apply(rec.vertices_model), faces), (truth_model, faces),
                                                       5000).assd if rec.success else float("nan"))}
        for pair_name, pair in PAIRS.items():
            t0 = time.monotonic()
            irec = combine_independent([single[nm]["rec"] for nm in pair], space, [single[nm]["cam"] for nm in pair],
                                       [px_net] * 2, cfg)
            t_rec = time.monotonic() - t0
            ireg = register_ct_independent(irec, pts, nrm, cfg, ct_mesh=mesh) if irec.success else None
            t_reg = time.monotonic() - t0 - t_rec
            shape = (surface_distance((umeyama(irec.vertices_model, truth_model, with_scale=True)
                                       .apply(irec.vertices_model), faces), (truth_model, faces), 5000).assd
                     if irec.success else float("nan"))
            for k, nm in enumerate(pair):
                ok = ireg is not None and ireg.success and np.isfinite(ireg.ct_to_cam[k]).all()
                row = {"subject_index": s, "population": sub["population"], "subject": sub["subject"],
                       "pair": pair_name, "view": nm, "lao_deg": float(data["lao_deg"][s, VIEW_NAMES.index(nm)]),
                       "single_mtre_mm": single[nm]["mtre"], "single_confident": single[nm]["confident"],
                       "single_shape_assd_mm": single[nm]["shape"],
                       "single_time_s": single[nm]["t_rec"] + single[nm]["t_reg"],
                       "pair_mtre_mm": (float(mtre_mm(ireg.ct_to_cam[k], single[nm]["truth"], targets)[0])
                                        if ok else float("nan")),
                       "pair_confident": bool(ok and ireg.confident), "pair_shape_assd_mm": shape,
                       "view_status": irec.reports[k].status, "pair_reason": irec.reason or (
                           ireg.reason if ireg is not None else ""),
                       "pair_time_s": single[pair[0]]["t_rec"] + single[pair[1]]["t_rec"] + t_rec + t_reg}
                rows.append(row)
                log.info("subject %d %s %s: mTRE single %.2f, pair %.2f; shape %.2f -> %.2f", s, pair_name, nm,
                         row["single_mtre_mm"], row["pair_mtre_mm"], row["single_shape_assd_mm"], shape)

    def col(pair, key):
        return np.array([r[key] for r in rows if pair is None or r["pair"] == pair], np.float64)

    summary_rows = []
    for pair in [*PAIRS, None]:
        entry = {"pair": pair or "both pairs", "n_views": int(len(col(pair, "single_mtre_mm")))}
        for arm in ("single", "pair"):
            m = col(pair, f"{arm}_mtre_mm")
            conf = np.array([r[f"{arm}_confident"] for r in rows if pair is None or r["pair"] == pair], bool)
            entry["single_view" if arm == "single" else "through_pair"] = {"mtre_mm": percentiles(m), "gfr10": gfr(m, 10.0), "gfr5": gfr(m, 5.0),
                          "shape_assd_mm": percentiles(col(pair, f"{arm}_shape_assd_mm")),
                          "confident": int(conf.sum()),
                          "time_s": percentiles(col(pair, f"{arm}_time_s"), failed_as_inf=False)}
        entry["paired_mtre"] = paired(col(pair, "pair_mtre_mm"), col(pair, "single_mtre_mm"))
        entry["paired_shape"] = paired(col(pair, "pair_shape_assd_mm"), col(pair, "single_shape_assd_mm"))
        summary_rows.append(entry)
    pops = sorted({x["population"] for x in subj[: args.n]})
    counts = ", ".join(f"{p} {sum(x['population'] == p for x in subj[: args.n])}" for p in pops)
    summary = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, no GPU (shared 2-core machine)",
        "population": args.population,
        "data": (f"{POPULATION_TEXT[args.population]}, test split: the first {args.n} of the {CACHED_SUBJECTS} "
                 f"held-out subjects of bench_recon_multiview ({counts}), its cached 128 px DRRs "
                 f"({cache.name}); each pair's cameras without their poses; simulated, no real X-rays"),
        "model": {"file": str(args.model or DEFAULT_MODEL), "command": info.get("command"),
                  "epochs": info.get("epochs_run")},
        "pairs": summary_rows,
        "wall_time_s": time.monotonic() - t_start,
        "recon_config": dataclasses.asdict(cfg),
        "command": " ".join(["python", "benchmarks/bench_independent_views.py"]
                            + (argv if argv is not None else sys.argv[1:])),
    }
    name = "bench_independent_views" + ("" if args.population == "ssm" else "_out_of_span")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"summary": summary, "cases": rows}, indent=1, default=float))
    (RESULTS / f"{name}.md").write_text(markdown(summary))
    log.info("%s", markdown(summary))
    return 0


def fmt(p: dict, key: str = "median") -> str:
    v = p.get(key) if isinstance(p, dict) else None
    return "-" if v is None or not np.isfinite(v) else f"{v:.2f}"


def markdown(s: dict) -> str:
    lines = [
        "# bench_independent_views: CT registration per view, films without a shared frame vs one view",
        "",
        f"Date {s['date']}; machine: {s['machine']}.",
        f"Data: {s['data']}.",
        f"Model: `{s['model']['file']}` ({s['model']['epochs']} epochs; command: `{s['model']['command']}`).",
        f"Command: `{s['command']}`.",
        "",
        "Per view: the CT registration's mTRE before intensity refinement, camera frame; medians (a failed case "
        "counts as +inf), in brackets the 95th percentile. Paired: views where the pair's registration is better / "
        "worse than the single view's by more than 1 %, median difference (pair - single, views where both "
        "succeeded), Wilcoxon signed-rank p.",
        "",
        "| pair | views | mTRE single view (mm) | mTRE through the pair (mm) | GFR@10 single / pair | "
        "GFR@5 single / pair | paired mTRE: better / worse, median diff (mm), p | shape ASSD single / shared (mm) | "
        "confident single / pair |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in s["pairs"]:
        a, b, pm = e["single_view"], e["through_pair"], e["paired_mtre"]
        lines.append(
            f"| {e['pair']} | {e['n_views']} | {fmt(a['mtre_mm'])} [{fmt(a['mtre_mm'], 'p95')}] | "
            f"{fmt(b['mtre_mm'])} [{fmt(b['mtre_mm'], 'p95')}] | {100 * a['gfr10']:.1f} / {100 * b['gfr10']:.1f} % | "
            f"{100 * a['gfr5']:.1f} / {100 * b['gfr5']:.1f} % | {pm['better']} / {pm['worse']}, "
            f"{pm['median_difference_mm']:+.2f}, p = {pm['wilcoxon_p']:.2g} | {fmt(a['shape_assd_mm'])} / "
            f"{fmt(b['shape_assd_mm'])} | {a['confident']} / {b['confident']} |")
    lines += [
        "",
        "Single view: the product's single-view path (reconstruction, CT registration with the silhouette step). "
        "Through the pair: one shape shared by the two views, one pose per view, the CT's model-to-CT mapping "
        "shared, each view's silhouette step (xrecon.methods.recon.independent_views). The cameras carry no "
        "pose: the two views' relative pose is unknown to the solver.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
