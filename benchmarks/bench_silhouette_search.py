"""The silhouette step's search, compared on the recon benchmark's registrations.

The CT registration's last step (``ReconConfig.silhouette = "pose"``) moves the
CT's bone mesh to where its ray-cast silhouette best overlaps the network's
bone mask (:func:`xrecon.solve.silhouette.silhouette_pose`). Its objective is
piecewise constant (whole pixels), so a search's result depends on where it
starts. This benchmark takes the registrations of ``bench_recon.py`` (same
split, views, cases, CT frames and seeds), solves each up to the joint solver
once (``silhouette="off"``), then runs the silhouette search from that pose

* with each search method (the outline fit, the product's default; Nelder-Mead;
  the bounded Powell search),
* from the start moved by each of ``--perturb-mm`` along every axis (0 = the
  product's start: the run-to-run scatter of a method is how far its results
  move for starts a few hundredths of a millimetre apart),
* against the network's mask and, as an upper bound on what the step can do,
  the simulation's true bone mask,

and reports the CT registration mTRE before refinement (median, GFR@10, GFR@5)
of each, the paired wins of Nelder-Mead over Powell pooled over the starts
(sign test), and each method's run-to-run scatter.

    python benchmarks/bench_silhouette_search.py [--split val] [--n-register 128]

writes ``benchmarks/results/bench_silhouette_search[_<split>].{json,md}``. Simulated data only.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _registration_data import machine, today, write_results  # noqa: E402
from bench_recon import ROOT, random_frame  # noqa: E402

from xrecon.solve.silhouette import SEARCH_METHODS as METHODS  # noqa: E402

log = logging.getLogger("bench_silhouette_search")


def summary(errors: np.ndarray) -> dict:
    """Median, p90 and GFR of mTREs ``(N,)`` (NaN = failed, counted as gross)."""
    e = np.where(np.isnan(errors), np.inf, errors)
    return {"median_mm": float(np.median(e)), "p90_mm": float(np.percentile(e, 90)),
            "gfr10_pct": float(100 * np.mean(e > 10)), "gfr5_pct": float(100 * np.mean(e > 5)), "n": int(len(e))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", choices=("test", "val"), default="val")
    ap.add_argument("--views", type=int, default=None,
                    help="views per subject (default: as bench_recon's runs, 3 on test, 4 on validation)")
    ap.add_argument("--n-register", type=int, default=128)
    ap.add_argument("--perturb-mm", default="0,0.02,0.05", help="start offsets, mm, comma-separated")
    ap.add_argument("--model", default=None, help="model file (default: the shipped weights)")
    ap.add_argument("--data", default=str(ROOT / "data" / "recon_bench"), help="bench_recon's cache of the split")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    if args.views is None:
        args.views = 3 if args.split == "test" else 4
    command = "python benchmarks/bench_silhouette_search.py " + " ".join(sys.argv[1:] if argv is None else argv)
    perturbs = [float(p) for p in args.perturb_mm.split(",")]

    import h5py
    from tqdm import tqdm

    from shape_models.bundled import load_model
    from xrecon.anatomy.bone import bone_from_labels
    from xrecon.errors import InputError
    from xrecon.geometry import Camera
    from xrecon.methods.recon.data import ReconDataConfig, generate_dataset, phantom_of, split_shapes
    from xrecon.methods.recon.model_io import load_recon_model
    from xrecon.methods.recon.pipeline import ReconConfig, _canonical_frame, reconstruct_image, register_ct_points
    from xrecon.metrics.registration import mtre_mm
    from xrecon.solve.silhouette import silhouette_pose

    net, space, _ = load_recon_model(args.model)
    data_cfg = ReconDataConfig(split=args.split, views_per_shape=args.views, protocol="seed002",
                               seed=1000 if args.split == "test" else 2000)
    data_path = Path(args.data) / f"{args.split}_{space.fingerprint}_{args.views}v.h5"
    if not data_path.is_file():
        log.info("simulating the %s set into %s", args.split, data_path)
        generate_dataset(data_path, data_cfg)
    with h5py.File(data_path, "r") as h5:
        images, shape_sd, true_mask = h5["image"][:], h5["shape_sd"][:], h5["mask"][:]
        world_to_cam, K, subject = h5["world_to_cam"][:], h5["K"][:], h5["subject"][:]
        spacing = tuple(h5.attrs["pixel_spacing_mm"])
    n, size = len(images), images.shape[-1]
    cfg = ReconConfig(silhouette="off")
    # the same cases, CT frames and phantoms as bench_recon.py
    split_position = {int(sj): k for k, sj in enumerate(split_shapes(load_model(data_cfg.shape_model), data_cfg)[1])}
    order = np.argsort([i % args.views * 10000 + int(subject[i]) for i in range(n)], kind="stable")
    reg_ids = [int(j) for j in order[: args.n_register]]
    rng = np.random.default_rng(7)
    bones: dict[int, object] = {}
    variants = [(m, mk, p) for mk in ("network", "truth") for m in METHODS for p in perturbs]
    errors = {v: [] for v in variants}
    joint_errors, rows = [], []
    t0 = time.monotonic()
    for k, i in enumerate(tqdm(reg_ids, desc="register")):
        s = int(subject[i])
        if s not in bones:
            _, labels = phantom_of(space, space.instance(shape_sd[i]), ReconDataConfig(phantom_spacing_mm=2.0),
                                   seed=data_cfg.seed * 100003 + split_position[s])
            bones[s] = bone_from_labels(labels, cache=False)
        world_to_ct = random_frame(rng, lps=bool(k % 2))
        bone_ct = bones[s].transformed(world_to_ct)
        pts, nrm = bone_ct.sample_points(30000, seed=0)
        truth = world_to_cam[i] @ np.linalg.inv(world_to_ct)
        targets = bone_ct.vertices[np.random.default_rng(0).choice(len(bone_ct.vertices), 500, replace=False)]
        cam = Camera(K[i], np.eye(4), size, size, spacing)
        try:
            rec = reconstruct_image(net, space, images[i], cam, cfg)
            reg = register_ct_points(rec, pts, nrm, cfg)
        except InputError:
            reg = None
        ok = reg is not None and reg.success
        joint_errors.append(float(mtre_mm(reg.ct_to_cam, truth, targets)[0]) if ok else np.nan)
        if not ok:
            for v in variants:
                errors[v].append(np.nan)
            continue
        # the product's frame for the search: the sampled surface's principal axes
        ct_to_canon = _canonical_frame(pts)
        verts = bone_ct.vertices @ ct_to_canon[:3, :3].T + ct_to_canon[:3, 3]
        start = reg.ct_to_cam @ np.linalg.inv(ct_to_canon)
        h, w = rec.mask_prob.shape
        K_mask = rec.camera.resized(h, w).K[0].numpy()
        masks = {"network": rec.mask_prob, "truth": true_mask[i].astype(np.float64)}
        if masks["truth"].shape != (h, w):
            raise SystemExit(f"{data_path}: true masks {masks['truth'].shape} differ from the network's {(h, w)}")
        row = {"index": i, "subject": s, "joint_mtre_mm": joint_errors[-1]}
        for m, mk, p in variants:
            T = start.copy()
            T[:3, 3] += p
            res = silhouette_pose(verts, bone_ct.faces, T, K_mask, masks[mk],
                                  max_depth_change=cfg.silhouette_max_depth_change, method=m, nthreads=args.threads)
            e = float(mtre_mm(res.object_to_cam @ ct_to_canon, truth, targets)[0])
            errors[(m, mk, p)].append(e)
            row[f"{m}/{mk}/{p}"] = e
        rows.append(row)
    elapsed = time.monotonic() - t0

    from scipy.stats import binomtest

    table = [{"method": m, "mask": mk, "perturb_mm": p, **summary(np.array(errors[(m, mk, p)]))}
             for m, mk, p in variants]
    pooled, scatter = {}, {}
    for mk in ("network", "truth"):
        a = np.concatenate([errors[("nelder-mead", mk, p)] for p in perturbs])
        b = np.concatenate([errors[("powell", mk, p)] for p in perturbs])
        keep = ~(np.isnan(a) | np.isnan(b))
        better, worse = int(np.sum(a[keep] < b[keep] - 1e-6)), int(np.sum(a[keep] > b[keep] + 1e-6))
        pooled[mk] = {"nelder_mead_better": better, "nelder_mead_worse": worse,
                      "sign_test_p": float(binomtest(better, better + worse).pvalue) if better + worse else 1.0,
                      "mean_gfr10_pct": {m: float(np.mean([summary(np.array(errors[(m, mk, p)]))["gfr10_pct"]
                                                           for p in perturbs])) for m in METHODS},
                      "mean_median_mm": {m: float(np.mean([summary(np.array(errors[(m, mk, p)]))["median_mm"]
                                                           for p in perturbs])) for m in METHODS}}
        for m in METHODS:
            base = np.array(errors[(m, mk, perturbs[0])])
            diffs, flips = [], 0
            for p in perturbs[1:]:
                other = np.array(errors[(m, mk, p)])
                keep = ~(np.isnan(base) | np.isnan(other))
                diffs.append(np.abs(base[keep] - other[keep]))
                flips += int(np.sum((base[keep] > 10) != (other[keep] > 10)))
            change = float(np.median(np.concatenate(diffs))) if diffs else None
            scatter[f"{m}/{mk}"] = {"median_abs_change_mm": change, "gfr10_flips": flips}
    payload = {"date": today(), "machine": machine(), "command": command.strip(), "split": args.split,
               "views": args.views, "n_register": len(reg_ids), "perturb_mm": perturbs,
               "model": args.model or "the shipped weights (xrecon/weights/recon_default.pt)",
               "data": f"{data_path.name}: DRRs of CT-like phantoms of the bundled pelvis model's held-out "
                       f"{args.split} subjects (seed-002 poses)",
               "joint_only": summary(np.array(joint_errors)), "variants": table, "paired": pooled,
               "scatter": scatter, "elapsed_s": elapsed, "cases": rows}
    lines = [f"# Silhouette search: Nelder-Mead vs Powell ({args.split} split)", "",
             f"{payload['date']}; {payload['machine']}; {payload['data']}; {len(reg_ids)} registrations; "
             f"`{command.strip()}`.",
             "", f"Joint solve only (no silhouette step): median {payload['joint_only']['median_mm']:.2f} mm, "
                 f"GFR@10 {payload['joint_only']['gfr10_pct']:.1f} %.", "",
             "| mask | search | start offset (mm) | median mTRE | p90 | GFR@10 | GFR@5 |",
             "|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['mask']} | {r['method']} | {r['perturb_mm']} | {r['median_mm']:.2f} mm | "
                     f"{r['p90_mm']:.1f} mm | {r['gfr10_pct']:.1f} % | {r['gfr5_pct']:.1f} % |")
    lines += ["", "| mask | Nelder-Mead better / worse (all starts) | sign test p | mean GFR@10 NM / Powell | "
                  "mean median NM / Powell |", "|---|---|---|---|---|"]
    for mk, r in pooled.items():
        lines.append(f"| {mk} | {r['nelder_mead_better']} / {r['nelder_mead_worse']} | {r['sign_test_p']:.2g} | "
                     f"{r['mean_gfr10_pct']['nelder-mead']:.1f} / {r['mean_gfr10_pct']['powell']:.1f} % | "
                     f"{r['mean_median_mm']['nelder-mead']:.2f} / {r['mean_median_mm']['powell']:.2f} mm |")
    lines += ["", "Run-to-run scatter (start offset 0 against the others): median |change| of a case's mTRE, "
                  "and cases crossing 10 mm.", "", "| search / mask | median abs. change | GFR@10 flips |",
              "|---|---|---|"]
    for key, r in scatter.items():
        change = "-" if r["median_abs_change_mm"] is None else f"{r['median_abs_change_mm']:.2f} mm"
        lines.append(f"| {key} | {change} | {r['gfr10_flips']} |")
    name = args.name or f"bench_silhouette_search{'' if args.split == 'test' else '_' + args.split}"
    write_results(name, payload, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
