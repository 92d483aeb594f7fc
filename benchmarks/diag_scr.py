"""Where the patient-specific SCR network's error comes from (issue 5 diagnostic).

On held-out test images of the chest-CT benchmark (the data of
``bench_scr.py``), per pixel with a true scene coordinate (entry and exit):

* 3D error of the predicted scene coordinate, split into the component along
  the pixel's true ray (harmless for PnP: it does not move the projection) and
  the component across it (what PnP sees), and the reprojection error of the
  prediction under the *true* pose (px; RANSAC's threshold is in these units);
* the same error on "smooth" pixels (no jump above 10 mm in the true scene
  coordinates within 2 px) and on pixels next to a discontinuity (the edge of
  a rib, a gap between ribs: the entry or exit jumps to another structure);
* the error per decile of the predicted sigma (does the uncertainty pick the
  good correspondences?);
* per image: PnP + RANSAC on all correspondences (the product's settings)
  against an oracle that keeps only the correspondences whose true error is
  below 5 mm (how good the pose would be if the good ones could be told apart).

    python benchmarks/diag_scr.py [--n 40] [--model PATH] [--name diag_scr]

Writes benchmarks/results/diag_scr.{json,md}. Simulated data only.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _registration_data import depth_bias, machine, today, write_results  # noqa: E402

#: a true scene coordinate jumping more than this (mm) within JUMP_RADIUS_PX marks a discontinuity
JUMP_MM, JUMP_RADIUS_PX = 10.0, 2


def discontinuity(points: np.ndarray, radius: int = JUMP_RADIUS_PX) -> np.ndarray:
    """``points: (H, W, 3)`` (NaN off the bone) -> ``(H, W)`` largest distance (mm) to a
    neighbour within ``radius`` px (a missing neighbour counts as a jump)."""
    H, W, _ = points.shape
    padded = np.pad(points, ((radius, radius), (radius, radius), (0, 0)), constant_values=np.nan)
    jump = np.zeros((H, W))
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            d = np.linalg.norm(padded[radius + dy:radius + dy + H, radius + dx:radius + dx + W] - points, axis=-1)
            jump = np.maximum(jump, np.where(np.isfinite(d), d, np.inf))
    return jump


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None,
                    help="SCR model (default: runs/scr/scr/scr.pt, else the shipped weights)")
    ap.add_argument("--test-data", type=Path, default=ROOT / "runs" / "scr" / "data" / "test")
    ap.add_argument("--n", type=int, default=40, help="test images")
    ap.add_argument("--name", default="diag_scr", help="results file name (benchmarks/results/NAME.{json,md})")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from tqdm import tqdm

    from xrecon.methods.scr.model_io import load_scr_model
    from xrecon.methods.scr.predict import (Correspondences, SCRInferenceConfig, pose_from_correspondences,
                                            scene_correspondences)
    from xrecon.metrics.registration import depth_error_mm, mtre_mm
    from xrecon.sim.dataset import SimulatedDataset

    path = args.model or next(p for p in (ROOT / "runs" / "scr" / "scr" / "scr.pt",
                                          ROOT / "xrecon" / "weights" / "scr_default.pt") if p.exists())
    model, info = load_scr_model(path)
    config = SCRInferenceConfig.from_dict(info.inference)
    ds = SimulatedDataset(args.test_data, fields=("entry_world", "exit_world", "world_to_cam", "K"))
    n = min(args.n, len(ds))
    err, along, across, reproj, jump, logvar, per_image = [], [], [], [], [], [], []
    for i in tqdm(range(n), desc="images"):
        s = ds[i]
        coords = model.predict(s["image"][None])
        corr = scene_correspondences(coords, 0, config.use_exit)
        maps = [s["entry_world"].permute(1, 2, 0).numpy()] + ([s["exit_world"].permute(1, 2, 0).numpy()]
                                                             if config.use_exit else [])
        truth = np.concatenate([m.reshape(-1, 3) for m in maps]).astype(np.float64)
        jumps = np.concatenate([discontinuity(m).ravel() for m in maps])
        ok = np.isfinite(truth).all(1)
        T, K = s["world_to_cam"].numpy().astype(np.float64), s["K"].numpy().astype(np.float64)
        pred_cam = corr.points_world @ T[:3, :3].T + T[:3, 3]
        true_cam = truth @ T[:3, :3].T + T[:3, 3]
        d = (pred_cam - true_cam)[ok]
        ray = true_cam[ok] / np.linalg.norm(true_cam[ok], axis=1, keepdims=True)
        a = (d * ray).sum(1)
        proj = pred_cam[ok] @ K.T
        uv = proj[:, :2] / np.where(np.abs(proj[:, 2:3]) > 1e-9, proj[:, 2:3], np.nan)
        e = np.linalg.norm(d, axis=1)
        err.append(e)
        along.append(np.abs(a))
        across.append(np.linalg.norm(d - a[:, None] * ray, axis=1))
        reproj.append(np.linalg.norm(uv - corr.pixels_uv[ok], axis=1))
        jump.append(jumps[ok])
        logvar.append(corr.log_variance[ok])
        targets = truth[ok][:: max(1, ok.sum() // 500)]
        net = pose_from_correspondences(corr, ds.camera, config)
        # in-plane scale of the prediction about its centroid, camera frame, least squares
        # (< 1: the predicted skeleton is smaller than the true one); PnP reads the depth from it
        a = pred_cam[ok][:, :2] - pred_cam[ok][:, :2].mean(0)
        b = true_cam[ok][:, :2] - true_cam[ok][:, :2].mean(0)
        good = np.flatnonzero(ok)[e < 5.0]
        oracle = (pose_from_correspondences(Correspondences(corr.points_world[good], corr.pixels_uv[good],
                                                            corr.log_variance[good]), ds.camera, config)
                  if len(good) >= 6 else None)
        per_image.append({
            "index": i, "bone_pixels": int(ok.sum()), "share_within_5mm": float(np.mean(e < 5.0)),
            # a shift shared by the whole image (e.g. one vertebral level off) vs scatter
            "mean_error_mm": float(e.mean()), "mean_offset_mm": float(np.linalg.norm(d.mean(0))),
            "mtre_mm": float(mtre_mm(net.world_to_cam, T, targets)[0]) if net.success else float("inf"),
            "depth_error_mm": float(depth_error_mm(net.world_to_cam, T, targets)[0]) if net.success else float("nan"),
            "true_depth_mm": float(true_cam[ok][:, 2].mean()),
            "prediction_scale": float((a * b).sum() / (b * b).sum()),
            "oracle_mtre_mm": (float(mtre_mm(oracle.world_to_cam, T, targets)[0])
                               if oracle is not None and oracle.success else float("inf"))})
    err, along, across, reproj, jump, logvar = map(np.concatenate, (err, along, across, reproj, jump, logvar))
    smooth = jump < JUMP_MM

    def q(x):
        x = x[np.isfinite(x)]
        return {"p25": float(np.percentile(x, 25)), "median": float(np.median(x)),
                "p75": float(np.percentile(x, 75)), "n": int(len(x))} if len(x) else {"n": 0}

    edges = np.quantile(logvar, np.linspace(0, 1, 11))
    deciles = [q(err[(logvar >= lo) & (logvar <= hi)]) for lo, hi in zip(edges[:-1], edges[1:])]
    summary = {
        "date": today(), "machine": machine(), "model": str(path), "data": str(args.test_data), "n_images": n,
        "command": " ".join(["python", "benchmarks/diag_scr.py"] + sys.argv[1:]),
        "error_mm": q(err), "along_ray_mm": q(along), "across_ray_mm": q(across), "reprojection_px": q(reproj),
        "share_reprojection_below_threshold": float(np.mean(reproj < config.reproj_threshold_px)),
        "reproj_threshold_px": config.reproj_threshold_px,
        "share_smooth_pixels": float(smooth.mean()),
        "error_smooth_mm": q(err[smooth]), "error_discontinuity_mm": q(err[~smooth]),
        "error_by_sigma_decile_mm": deciles,
        "per_image_mean_error_mm": q(np.array([r["mean_error_mm"] for r in per_image])),
        "per_image_mean_offset_mm": q(np.array([r["mean_offset_mm"] for r in per_image])),
        "pnp_mtre_mm": q(np.array([r["mtre_mm"] for r in per_image])),
        "oracle_pnp_mtre_mm": q(np.array([r["oracle_mtre_mm"] for r in per_image])),
    }
    rows = [r for r in per_image if np.isfinite(r["depth_error_mm"])]
    depth = np.array([r["depth_error_mm"] for r in rows])
    true_depth = np.array([r["true_depth_mm"] for r in rows])
    scale = np.array([r["prediction_scale"] for r in rows])
    if len(rows) >= 3:
        bias = depth_bias(depth, true_depth)
        summary["depth"] = {
            "abs_error_mm": q(np.abs(depth)), "n": len(rows),
            "slope_vs_true_offset": bias["slope"], "r_vs_true_offset": bias["r"],
            # relative depth error against the prediction's scale error: PnP's depth is the scale's
            "r_relative_depth_vs_scale": float(np.corrcoef(scale - 1, depth / true_depth)[0, 1]),
            "prediction_scale": q(scale)}
    write_results(args.name, {"summary": summary, "images": per_image}, markdown(summary))
    print(markdown(summary))


def markdown(s: dict) -> str:
    def f(p, k="median"):
        return f"{p[k]:.1f}" if k in p else "-"

    lines = [
        "# diag_scr: where the SCR network's error comes from (chest CT)", "",
        f"{s['date']}; {s['machine']}. Model `{s['model']}`; data `{s['data']}` (first {s['n_images']} held-out "
        f"test images, simulated). Command: `{s['command']}`.", "",
        "| per-pixel quantity (entry and exit, pixels with a true scene coordinate) | p25 | median | p75 | n |",
        "|---|---|---|---|---|",
    ]
    for name, key in [("3D error (mm)", "error_mm"), ("  along the true ray (mm; harmless for PnP)", "along_ray_mm"),
                      ("  across the ray (mm)", "across_ray_mm"), ("reprojection under the true pose (px)",
                                                                    "reprojection_px"),
                      (f"3D error, smooth pixels (no jump > {JUMP_MM:.0f} mm within {JUMP_RADIUS_PX} px)",
                       "error_smooth_mm"),
                      ("3D error, pixels next to a discontinuity", "error_discontinuity_mm")]:
        p = s[key]
        lines.append(f"| {name} | {f(p, 'p25')} | {f(p)} | {f(p, 'p75')} | {p['n']} |")
    lines += [
        "",
        f"Share of predictions within RANSAC's {s['reproj_threshold_px']:.1f} px of their pixel under the true pose: "
        f"{100 * s['share_reprojection_below_threshold']:.0f} %. Share of smooth pixels: "
        f"{100 * s['share_smooth_pixels']:.0f} %.",
        "",
        f"Per image, the mean 3D error is {f(s['per_image_mean_error_mm'])} mm (median over images), of which a "
        f"shift shared by all its pixels is {f(s['per_image_mean_offset_mm'])} mm: scatter, not a global offset.",
        "",
        "Median 3D error (mm) per decile of the predicted sigma, most confident first: "
        + ", ".join(f(d) for d in s["error_by_sigma_decile_mm"]) + ".",
        "",
        f"PnP + RANSAC per image, median mTRE over ~500 of the image's true scene coordinates (not bench_scr's "
        f"structure centroids): {f(s['pnp_mtre_mm'])} mm with every "
        f"correspondence (the product's settings); {f(s['oracle_pnp_mtre_mm'])} mm keeping only those whose true "
        "error is below 5 mm (an oracle: what a network whose uncertainty told the good ones apart would reach).",
        "",
    ]
    d = s.get("depth")
    if d:
        lines += [
            f"Depth (PnP poses of {d['n']} images): median abs. depth error {f(d['abs_error_mm'])} mm, against a median "
            f"mTRE of {f(s['pnp_mtre_mm'])} mm. Depth error against the true depth's offset from the mean: slope "
            f"{d['slope_vs_true_offset']:.2f} (r {d['r_vs_true_offset']:.2f}; -1 = every pose at the mean depth). The "
            f"predicted skeleton's in-plane scale (least squares, camera frame; median "
            f"{d['prediction_scale']['median']:.3f}) against the relative depth error: r "
            f"{d['r_relative_depth_vs_scale']:.2f}. PnP reads the depth from the predicted size.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
