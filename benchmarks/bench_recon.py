"""Benchmark of the patient-wide reconstruction and CT registration (issue 6).

Held-out *test* subjects, each turned into a CT-like phantom and simulated at
held-out seed-002 poses (128 px, the cpu128 detector). ``--population`` picks
the subjects: ``ssm`` (default) the bundled pelvis shape model's own test
subjects, inside its span; ``out-of-span`` anatomy the model never saw: its test
subjects moved by a smooth random deformation beyond the span (``deformed``)
plus the LLP26 real test subjects (``llp26``); see docs/populations.md. Per case:

* reconstruction: ASSD of the posed reconstruction to the posed truth (camera
  frame, mm), ASSD after a similarity alignment (shape only, model frame), and
  the baselines "mean shape posed by the true camera" and "the shape model's
  own best fit to the true shape" (similarity-aligned least squares in its span);
* registration: the subject's phantom CT written in a random rigid frame (half
  of them LPS-flipped), its bone surface from its label map, registered through
  the reconstruction; mTRE over 500 surface points of the bone (camera frame),
  GFR at 10 / 5 mm, before and after intensity refinement (a subset);
* frame invariance: a few CTs written in 5 frames; mTRE between the runs;
* time per image of each stage.

    python benchmarks/bench_recon.py [--population ssm|out-of-span] [--quick] [--model PATH]

Diagnostic: ``--correspondences truth`` replaces the network's dense
correspondences (canonical coordinates and bone mask) by the simulation's
ground truth, keeping the network's shape coefficients, and writes
bench_recon_truth_correspondences.*: what the solvers reach when the
correspondences are exact, i.e. how much of the error the network causes.

Thresholds (``ReconConfig.min_coverage``) are chosen on the validation split:
``--split val`` runs the same protocol on the validation subjects (poses seed
2000) and writes bench_recon_val.*, with each pose's rotation error and
coverage and the list of gross pose errors.

Writes benchmarks/results/bench_recon.{json,md,png} (``--population out-of-span``:
bench_recon_out_of_span.*). Simulated data only.
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
from _registration_data import depth_bias  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
POPULATION_TEXT = {
    "ssm": "bundled pelvis shape model (articulated-ssm), its own subjects (in its span)",
    "deformed": "bundled pelvis shape model's subjects moved by a smooth random deformation beyond its span",
    "llp26": "LLP26 real pelvis subjects (musculoskeletal-models), outside the shape model's span",
    "out-of-span": ("out of the shape model's span: its subjects moved by a smooth random deformation, and the "
                    "LLP26 real pelvis subjects"),
}
log = logging.getLogger("bench_recon")
#: a reconstruction's rotation error above this counts as a gross pose error (the
#: coverage threshold ReconConfig.min_coverage is read off these cases)
GROSS_ROTATION_DEG = 15.0


def percentiles(x, failed_as_inf: bool = True) -> dict:
    """p25 / median / p95 / mean / std of per-case values. An error of a failed
    case (NaN) sorts as +inf, as in every seed table (:mod:`xrecon.metrics.aggregate`);
    mean and std are over the finite cases, and ``n_failed`` says how many were
    left out of those. ``failed_as_inf=False`` is for quantities where NaN means
    "not applicable" (times, ratios): statistics over the finite values only."""
    from xrecon.metrics.aggregate import summarize

    x = np.asarray(x, np.float64)
    out = {"n": int(len(x)), "n_failed": int((~np.isfinite(x)).sum())}
    ok = x if failed_as_inf else x[np.isfinite(x)]
    if len(ok):
        s = summarize(ok, ())
        out.update({"p25": s.p25, "median": s.p50, "p95": s.p95, "mean": s.mean, "std": s.std})
    return out


def population_digest(cfg) -> str:
    """A short digest of what a population's shapes depend on (its generator's settings),
    so a cached test set is rebuilt when they change."""
    import dataclasses as dc

    from shape_models.populations import OutOfSpanPopulation
    from xrecon.anatomy.cache import hash_inputs

    settings = dc.asdict(OutOfSpanPopulation()) if cfg.population == "deformed" else {}
    return hash_inputs(cfg.population, settings)[:8]


def load_test_set(space, population: str, split: str, views: int, quick: bool, data_dir,
                  with_truth_correspondences: bool = False) -> dict:
    """The simulated test set of ``population`` (``out-of-span`` = ``deformed`` + ``llp26``),
    simulated into ``data_dir`` on first use: the arrays of every file concatenated
    (``image``, ``shape_sd``, ``model_to_cam``, ``world_to_cam``, ``K``, ``subject``,
    ``shape_index`` numbered over all files), and per shape its true vertices
    (``truth_shapes``, model frame), its phantom's seed (``shape_seed``: the
    patient's CT is the phantom the X-ray was simulated from) and population."""
    import h5py

    from xrecon.methods.recon.data import ReconDataConfig, generate_dataset

    populations = ["deformed", "llp26"] if population == "out-of-span" else [population]
    # poses of the test set: seed 1000; of the validation set: seed 2000 (neither is a training seed)
    configs = [ReconDataConfig(split=split, views_per_shape=views, protocol="seed002", population=pop,
                               seed=1000 if split == "test" else 2000, n_shapes=3 if quick else None)
               for pop in populations]
    arrays: dict[str, list] = {}
    out = {"truth_shapes": [], "shape_seed": [], "shape_population": [], "configs": configs}
    for cfg in configs:
        pop_tag = "" if cfg.population == "ssm" else f"_{cfg.population}_{population_digest(cfg)}"
        data_path = Path(data_dir) / f"{split}{pop_tag}_{space.fingerprint}_{views}v{'_quick' if quick else ''}.h5"
        if not data_path.is_file():
            log.info("simulating the test set into %s", data_path)
            generate_dataset(data_path, cfg)
        keys = ["image", "shape_sd", "model_to_cam", "world_to_cam", "K", "subject", "shape_index"]
        keys += ["canonical", "mask"] if with_truth_correspondences else []
        with h5py.File(data_path, "r") as h5:
            block = {k: h5[k][:] for k in keys}
            out["spacing"] = tuple(h5.attrs["pixel_spacing_mm"])
            n_shapes = int(block["shape_index"].max()) + 1
            first_row = [int(np.flatnonzero(block["shape_index"] == s)[0]) for s in range(n_shapes)]
            shapes = (h5["shapes"][:].astype(np.float64) if "shapes" in h5
                      else np.stack([space.instance(block["shape_sd"][r]) for r in first_row]))
        block["shape_index"] = block["shape_index"] + len(out["truth_shapes"])  # one numbering over all files
        out["truth_shapes"] += list(shapes)
        out["shape_seed"] += [cfg.seed * 100003 + s for s in range(n_shapes)]  # generate_dataset's phantom seeds
        out["shape_population"] += [cfg.population] * n_shapes
        for k, v in block.items():
            arrays.setdefault(k, []).append(v)
    out.update({k: np.concatenate(v) for k, v in arrays.items()})
    return out


def gfr(x, threshold) -> float:
    x = np.asarray(x, np.float64)
    return float(np.mean(~(x <= threshold))) if len(x) else float("nan")  # NaN (failed) counts as failure


def random_frame(rng: np.random.Generator, lps: bool) -> np.ndarray:
    """A random rigid ``world_to_ct`` (any rotation, offset up to ~300 mm), optionally LPS-flipped."""
    from xrecon.geometry import se3

    R = se3.random_rotation(1, torch.Generator().manual_seed(int(rng.integers(1 << 31))))[0].numpy()
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, rng.uniform(-300, 300, 3)
    if lps:
        T = np.diag([-1.0, -1.0, 1.0, 1.0]) @ T
    return T


def true_prediction(pred, canonical: np.ndarray, mask: np.ndarray):
    """The network read-out ``pred`` with its dense correspondences replaced by the
    simulation's: ``canonical: (2, 3, H, W)`` entry / exit points on the mean shape
    (mm), ``mask: (H, W)`` bone pixels; a uniform 2 mm predicted error. The
    image must be at the network's resolution (the benchmark's are)."""
    from xrecon.methods.recon.predict import DensePrediction

    vs, us = np.nonzero(mask > 0.5)
    uv = np.stack([us, vs], axis=1).astype(np.float64)
    points = np.concatenate([canonical[0][:, vs, us].T, canonical[1][:, vs, us].T]).astype(np.float64)
    return DensePrediction(points, np.concatenate([uv, uv]), np.full(len(points), 2.0),
                           np.repeat(np.array([0, 1]), len(us)), (mask > 0.5).astype(np.float64), pred.shape_sd,
                           pred.net_camera)


def recon_config(overrides: list[str]):
    """The product's :class:`ReconConfig` with ``FIELD=VALUE`` overrides, each value
    parsed as the field's type (a bad name or value raises ``SystemExit`` naming it);
    ``residual=none`` switches the residual deformation off, ``residual=noise_mm:2,length_mm:30``
    sets fields of its :class:`ResidualConfig`."""
    from xrecon.methods.recon.pipeline import ReconConfig
    from xrecon.methods.recon.residual import ResidualConfig

    defaults = ReconConfig()
    fields = {f.name for f in dataclasses.fields(ReconConfig)}
    changes = {}
    for item in overrides:
        name, sep, text = item.partition("=")
        if not sep or name not in fields:
            raise SystemExit(f"--set {item}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        current = getattr(defaults, name)
        try:
            if name == "residual":
                base = ResidualConfig()
                value = None if text.lower() == "none" else dataclasses.replace(base, **{
                    k: type(getattr(base, k))(v) for k, v in (p.split(":") for p in text.split(","))})
            elif isinstance(current, bool):
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                value = text.lower() in ("true", "1")
            elif isinstance(current, tuple):
                value = tuple(float(v) for v in text.split(","))
            elif current is None:
                value = None if text.lower() == "none" else float(text)
            else:
                value = type(current)(text)
        except (ValueError, TypeError, AttributeError):
            raise SystemExit(f"--set {item}: {text!r} is not a valid value for {name} "
                             f"(default {current!r})") from None
        changes[name] = value
    return dataclasses.replace(defaults, **changes)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few cases (smoke run)")
    ap.add_argument("--name", default=None, help="results file name (default: bench_recon, with suffixes for "
                                                  "--quick / --refine-similarity / --correspondences)")
    ap.add_argument("--model", default=None, help="model file (default: the shipped weights)")
    ap.add_argument("--split", choices=("test", "val"), default="test",
                    help="subjects: the held-out test split (the reported figures) or the validation split (where "
                         "thresholds are chosen; writes bench_recon_val.*)")
    ap.add_argument("--population", choices=("ssm", "deformed", "llp26", "out-of-span"), default="ssm",
                    help="test subjects: the shape model's own (in its span), or beyond it (out-of-span = "
                         "deformed + llp26)")
    ap.add_argument("--views", type=int, default=3, help="views per subject")
    ap.add_argument("--n-register", type=int, default=24, help="cases registered to their CT")
    ap.add_argument("--n-refine", type=int, default=6, help="registered cases refined by intensity")
    ap.add_argument("--n-frames-cases", type=int, default=2, help="cases registered in 5 CT frames")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--refine-similarity", default=None,
                    help="similarity of the intensity refinement (default: the product's, gradient NCC); another "
                         "name writes bench_recon_<name>.* for comparison")
    ap.add_argument("--data", default=str(ROOT / "data" / "recon_bench"), help="cache of the simulated test set")
    ap.add_argument("--correspondences", choices=("network", "truth"), default="network",
                    help="truth: the simulation's canonical coordinates and mask instead of the network's "
                         "(diagnostic upper bound; the shape coefficients stay the network's)")
    ap.add_argument("--tta-shifts", type=int, default=None,
                    help="network passes over shifted copies of each image (ReconConfig.tta_shifts; default: the "
                         "product's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                    help="override one ReconConfig field for this run (repeatable), e.g. --set pnp_max_points=5000; "
                         "default: the product's settings")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    if args.quick:
        args.views, args.n_register, args.n_refine, args.n_frames_cases = 1, 4, 1, 1

    from tqdm import tqdm

    from xrecon.anatomy.bone import bone_from_labels
    from xrecon.errors import InputError
    from xrecon.api import recon_refine_config, refine_pose
    from xrecon.geometry import Camera
    from shape_models.bundled import load_model
    from xrecon.methods.recon.data import ReconDataConfig, phantom_of
    from xrecon.methods.recon.model_io import DEFAULT_MODEL, load_recon_model
    from xrecon.methods.recon.pipeline import (reconstruct_from_prediction, reconstruct_image,
                                               register_ct_points)
    from xrecon.methods.recon.predict import predict_dense
    from xrecon.metrics.registration import depth_error_mm, mtre_mm, projected_mtre_mm, rotation_error_deg
    from xrecon.metrics.shape import surface_distance
    from xrecon.solve.align3d import umeyama

    net, space, info = load_recon_model(args.model)
    ts = load_test_set(space, args.population, args.split, args.views, args.quick, args.data,
                       with_truth_correspondences=args.correspondences == "truth")
    images, shape_sd, model_to_cam, world_to_cam = ts["image"], ts["shape_sd"], ts["model_to_cam"], ts["world_to_cam"]
    K, subject, shape_index, spacing = ts["K"], ts["subject"], ts["shape_index"], ts["spacing"]
    truth_shapes, shape_seed, shape_population = ts["truth_shapes"], ts["shape_seed"], ts["shape_population"]
    data_cfgs = ts["configs"]
    if args.correspondences == "truth":
        true_canonical, true_mask = ts["canonical"], ts["mask"]
    n = len(images)
    size = images.shape[-1]
    faces = space.faces
    cfg = recon_config(args.overrides + ([] if args.tta_shifts is None else [f"tta_shifts={args.tta_shifts}"]))
    refine_cfg = recon_refine_config()
    if args.refine_similarity:
        refine_cfg = dataclasses.replace(refine_cfg, similarity=args.refine_similarity)
    shape_model = load_model(data_cfgs[0].shape_model)
    best_fits: dict[int, float] = {}

    def best_fit_of(s: int) -> float:
        """ASSD of the shape model's own best fit to shape ``s`` (similarity-aligned least
        squares onto its span, known correspondence): what the SSM can represent at best."""
        if s not in best_fits:
            truth = truth_shapes[s]
            fit = shape_model.reconstruct(truth)  # the model's Procrustes alignment, all modes, back in truth's frame
            fit = umeyama(fit, truth, with_scale=True).apply(fit)
            best_fits[s] = surface_distance((fit, faces), (truth, faces), 5000).assd
        return best_fits[s]

    cases = []
    t_start = time.monotonic()
    for i in tqdm(range(n), desc="reconstruct"):
        cam = Camera(K[i], np.eye(4), size, size, spacing)
        try:
            if args.correspondences == "truth":
                rec = reconstruct_from_prediction(
                    true_prediction(predict_dense(net, images[i], cam), true_canonical[i], true_mask[i]), space, cam,
                    cfg)
            else:
                rec = reconstruct_image(net, space, images[i], cam, cfg)
        except InputError as exc:  # e.g. a seed-002 pose whose view misses the volume: a constant image
            rec = None
            reason = str(exc)
        truth_model = truth_shapes[shape_index[i]]
        T = model_to_cam[i]
        truth_cam = truth_model @ T[:3, :3].T + T[:3, 3]
        mean_cam = space.mean_vertices @ T[:3, :3].T + T[:3, 3]
        best_fit = best_fit_of(int(shape_index[i]))
        c = {"index": i, "subject": int(subject[i]), "shape": int(shape_index[i]),
             "population": shape_population[shape_index[i]],
             "ssm_best_fit_similarity_assd_mm": best_fit,
             "time_s": rec.timings_s.get("total", float("nan")) if rec is not None else float("nan"),
             "baseline_mean_shape_assd_mm": surface_distance((mean_cam, faces), (truth_cam, faces), 5000).assd,
             "baseline_mean_shape_similarity_assd_mm": surface_distance(
                 (umeyama(space.mean_vertices, truth_model, with_scale=True).apply(space.mean_vertices), faces),
                 (truth_model, faces), 5000).assd}
        if rec is not None and rec.success:
            c["posed_assd_mm"] = surface_distance((rec.vertices_cam, faces), (truth_cam, faces), 5000).assd
            sim = umeyama(rec.vertices_model, truth_model, with_scale=True)
            aligned = sim.apply(rec.vertices_model)
            c["similarity_assd_mm"] = surface_distance((aligned, faces), (truth_model, faces), 5000).assd
            c["size_ratio_pred_over_true"] = 1.0 / float(sim.scale)
            c["coverage"] = rec.coverage
            c["rotation_error_deg"] = float(rotation_error_deg(rec.model_to_cam, T)[0])
            c["size_sd_error"] = float(rec.shape_sd[0] - shape_sd[i][0])
            c["depth_error_mm"] = float(rec.vertices_cam[:, 2].mean() - truth_cam[:, 2].mean())
            # one view fixes the shape only up to a scaling about the X-ray source: with
            # that one scalar (the centroid's depth) from the truth, what remains is what
            # the image determines
            depth_fix = truth_cam[:, 2].mean() / rec.vertices_cam[:, 2].mean()
            c["posed_depth_fixed_assd_mm"] = surface_distance((depth_fix * rec.vertices_cam, faces),
                                                              (truth_cam, faces), 5000).assd
        else:
            c["posed_assd_mm"] = c["similarity_assd_mm"] = c["posed_depth_fixed_assd_mm"] = float("nan")
            c["reason"] = reason if rec is None else rec.reason
        c["success"], c["confident"] = rec is not None and rec.success, rec is not None and rec.confident
        c["_rec"] = rec
        cases.append(c)
    t_recon = time.monotonic() - t_start

    # ---- registration through the reconstruction
    rng = np.random.default_rng(7)
    ct_cache: dict[int, tuple] = {}

    def ct_of(i):
        s = int(shape_index[i])
        if s not in ct_cache:
            # the patient's CT: the phantom the X-ray was simulated from (same body,
            # tissue values and soft tissue), sampled at 2 mm instead of 2.5 mm
            ct, labels = phantom_of(space, truth_shapes[s], ReconDataConfig(phantom_spacing_mm=2.0),
                                    seed=shape_seed[s])
            bone = bone_from_labels(labels, cache=False)
            ct_cache[s] = (ct, labels, bone)
        return ct_cache[s]

    # registered cases: the first view of every subject first, then the second, ...
    rank = subject if args.population == "ssm" else shape_index
    order = np.argsort([c["index"] % args.views * 10000 + int(rank[c["index"]]) for c in cases], kind="stable")
    reg_ids = [int(j) for j in order[: args.n_register]]
    reg_rows = []
    for k, i in enumerate(tqdm(reg_ids, desc="register")):
        ct, labels, bone = ct_of(i)
        world_to_ct = random_frame(rng, lps=bool(k % 2))
        bone_ct = bone.transformed(world_to_ct)
        pts, nrm = bone_ct.sample_points(30000, seed=0)
        truth = world_to_cam[i] @ np.linalg.inv(world_to_ct)
        targets = bone_ct.vertices[np.random.default_rng(0).choice(len(bone_ct.vertices), 500, replace=False)]
        t0 = time.monotonic()
        if cases[i]["_rec"] is None:
            reg_rows.append({"index": i, "subject": int(subject[i]), "success": False, "mtre_mm": float("nan"),
                             "reason": cases[i]["reason"]})
            continue
        reg = register_ct_points(cases[i]["_rec"], pts, nrm, cfg, ct_mesh=(bone_ct.vertices, bone_ct.faces))
        row = {"index": i, "subject": int(subject[i]), "lps": bool(k % 2), "success": bool(reg.success),
               "confident": bool(reg.confident), "time_s": time.monotonic() - t0,
               "mtre_mm": float(mtre_mm(reg.ct_to_cam, truth, targets)[0]) if reg.success else float("nan"),
               "projected_mtre_mm": (float(projected_mtre_mm(reg.ct_to_cam, truth, targets, K[i], spacing)[0])
                                     if reg.success else float("nan")),
               # signed mean error of the targets along the viewing direction (camera z)
               "depth_error_mm": (float(depth_error_mm(reg.ct_to_cam, truth, targets)[0])
                                  if reg.success else float("nan")),
               "true_depth_mm": float((targets @ truth[:3, :3].T + truth[:3, 3])[:, 2].mean()),
               "scale_recon_over_ct": reg.scale, "silhouette_depth_change_mm": reg.silhouette_depth_change_mm,
               "silhouette_dice": reg.silhouette_dice, "silhouette_move_mm": reg.silhouette_move_mm,
               "silhouette_outline_px": reg.silhouette_outline_px,
               "reason": reg.reason, "notes": reg.notes}
        if k < args.n_refine and reg.success:
            t1 = time.monotonic()
            refined, rinfo = refine_pose(images[i], Camera(K[i], np.eye(4), size, size, spacing),
                                         ct.transformed(world_to_ct), reg.ct_to_cam, config=refine_cfg)
            pose = refined if refined is not None else reg.ct_to_cam
            row.update({"refined_mtre_mm": float(mtre_mm(pose, truth, targets)[0]),
                        "refined_projected_mtre_mm": float(projected_mtre_mm(pose, truth, targets, K[i], spacing)[0]),
                        "refine_time_s": time.monotonic() - t1,
                        "refine_improved": refined is not None, "refine_similarity": [rinfo["similarity_init"],
                                                                                       rinfo["similarity_final"]]})
        elif k < args.n_refine:
            row.update({"refined_mtre_mm": float("nan"), "refine_time_s": float("nan")})
        reg_rows.append(row)

    # ---- frame invariance: the same CT in 5 frames (cases whose registration succeeded)
    inv_rows = []
    registered = [r["index"] for r in reg_rows if r["success"]]
    for i in registered[: args.n_frames_cases]:
        _, _, bone = ct_of(i)
        targets_w = bone.vertices[::max(1, len(bone.vertices) // 500)]
        est_world_to_cam, ok = [], []
        for f in range(5):
            w2ct = random_frame(np.random.default_rng(100 + f), lps=bool(f % 2)) if f else np.eye(4)
            b = bone.transformed(w2ct)
            pts, nrm = b.sample_points(30000, seed=0)
            reg = register_ct_points(cases[i]["_rec"], pts, nrm, cfg, ct_mesh=(b.vertices, b.faces))
            est_world_to_cam.append(reg.ct_to_cam @ w2ct)
            ok.append(bool(reg.success))
        diffs = [float(mtre_mm(e, est_world_to_cam[0], targets_w)[0]) for e in est_world_to_cam[1:]]
        # a registration that succeeds in one frame and fails in another is not frame-invariant
        worst = float(np.max(diffs)) if all(ok) else (float("inf") if any(ok) else float("nan"))
        inv_rows.append({"index": i, "success_per_frame": ok, "mtre_between_runs_mm": diffs, "max_mm": worst})

    # ---- summary
    def col(rows, key):
        return [r.get(key, float("nan")) for r in rows]

    assd = {"posed_assd_mm": percentiles(col(cases, "posed_assd_mm")),
            "ssm_best_fit_similarity_assd_mm": percentiles(col(cases, "ssm_best_fit_similarity_assd_mm")),
            "similarity_aligned_assd_mm": percentiles(col(cases, "similarity_assd_mm")),
            "baseline_mean_shape_true_pose_assd_mm": percentiles(col(cases, "baseline_mean_shape_assd_mm")),
            "posed_depth_fixed_assd_mm": percentiles(col(cases, "posed_depth_fixed_assd_mm")),
            "baseline_mean_shape_similarity_assd_mm": percentiles(col(cases, "baseline_mean_shape_similarity_assd_mm"))}

    def improvement(key, baseline_key):
        return 1 - assd[key]["median"] / assd[baseline_key]["median"] if n else None

    summary = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, no GPU (shared 2-core machine)",
        "population": args.population,
        "data": (f"{POPULATION_TEXT[args.population]}, {args.split} split: {len(truth_shapes)} held-out subjects x "
                 f"{args.views} seed-002 poses, CT-like phantoms (xrecon.anatomy.phantom), DRR 128 px "
                 "(cpu128 detector); simulated, no real X-rays"),
        "model": {"file": str(args.model or DEFAULT_MODEL), "command": info.get("command"),
                  "epochs": info.get("epochs_run")},
        "reconstruction": {
            **assd,
            # from the medians in the table (a failed reconstruction counts as +inf)
            "improvement_depth_fixed_over_baseline_median": improvement("posed_depth_fixed_assd_mm",
                                                                        "baseline_mean_shape_true_pose_assd_mm"),
            "improvement_shape_over_mean_shape_median": improvement("similarity_aligned_assd_mm",
                                                                    "baseline_mean_shape_similarity_assd_mm"),
            "improvement_over_baseline_median": improvement("posed_assd_mm", "baseline_mean_shape_true_pose_assd_mm"),
            "size_ratio_pred_over_true": percentiles(col(cases, "size_ratio_pred_over_true"), failed_as_inf=False),
            "coverage": percentiles(col(cases, "coverage"), failed_as_inf=False),
            "rotation_error_deg": percentiles(col(cases, "rotation_error_deg")),
            # what ReconConfig.min_coverage is calibrated on: the gross pose errors and their coverage
            "gross_pose_errors": [{"index": c["index"], "rotation_error_deg": round(c["rotation_error_deg"], 1),
                                   "coverage": c["coverage"], "confident": c["confident"]}
                                  for c in cases if c["success"] and c["rotation_error_deg"] > GROSS_ROTATION_DEG],
            "lowest_coverage_correct_poses": sorted(c["coverage"] for c in cases if c["success"]
                                                    and c["rotation_error_deg"] <= GROSS_ROTATION_DEG)[:3],
            "depth_error_mm": percentiles(np.abs(col(cases, "depth_error_mm"))),
            "success_rate": float(np.mean([c["success"] for c in cases])),
            "confident_rate": float(np.mean([c["confident"] for c in cases])),
            "time_per_image_s": percentiles(col(cases, "time_s"), failed_as_inf=False),
        },
        "registration": {
            "mtre_mm": percentiles(col(reg_rows, "mtre_mm")),
            "gfr10": gfr(col(reg_rows, "mtre_mm"), 10.0), "gfr5": gfr(col(reg_rows, "mtre_mm"), 5.0),
            "time_per_case_s": percentiles(col(reg_rows, "time_s"), failed_as_inf=False),
            # what a user relying on the result's own confidence flag sees
            "confident_subset": {"n": sum(bool(r.get("confident")) for r in reg_rows),
                                 "mtre_mm": percentiles([r["mtre_mm"] for r in reg_rows if r.get("confident")]),
                                 "gfr10": gfr([r["mtre_mm"] for r in reg_rows if r.get("confident")], 10.0)},
            # by the reconstruction's own coverage (the share of the bone with image evidence, which a
            # user sees in the result): partial views hold the hard cases
            "by_coverage": by_coverage(reg_rows, {c["index"]: c.get("coverage") for c in cases}),
            "projected_mtre_mm": percentiles(col(reg_rows, "projected_mtre_mm")),
            "abs_depth_error_mm": percentiles(np.abs(col(reg_rows, "depth_error_mm"))),
            "depth_bias": depth_bias(col(reg_rows, "depth_error_mm"), col(reg_rows, "true_depth_mm")),
            "refined_subset": {
                "n": len([r for r in reg_rows if "refined_mtre_mm" in r]),
                "mtre_before_mm": percentiles([r["mtre_mm"] for r in reg_rows if "refined_mtre_mm" in r]),
                "mtre_after_mm": percentiles(col([r for r in reg_rows if "refined_mtre_mm" in r], "refined_mtre_mm")),
                "gfr10_after": gfr(col([r for r in reg_rows if "refined_mtre_mm" in r], "refined_mtre_mm"), 10.0),
                "confident_mtre_after_mm": percentiles(
                    col([r for r in reg_rows if "refined_mtre_mm" in r and r.get("confident")], "refined_mtre_mm")),
                "confident_gfr10_after": gfr(
                    col([r for r in reg_rows if "refined_mtre_mm" in r and r.get("confident")], "refined_mtre_mm"), 10.0),
                # gross before refinement (> 10 mm) and below 2 mm after
                "gross_before": sum(1 for r in reg_rows if "refined_mtre_mm" in r and r["mtre_mm"] > 10.0),
                "gross_before_below_2mm_after": sum(1 for r in reg_rows if "refined_mtre_mm" in r
                                                    and r["mtre_mm"] > 10.0 and r["refined_mtre_mm"] < 2.0),
                "projected_mtre_after_mm": percentiles(col([r for r in reg_rows if "refined_mtre_mm" in r],
                                                           "refined_projected_mtre_mm")),
                "time_per_case_s": percentiles(col([r for r in reg_rows if "refined_mtre_mm" in r], "refine_time_s"),
                                               failed_as_inf=False),
            },
        },
        "frame_invariance": {"cases": inv_rows,
                             "max_mtre_between_runs_mm": max([r["max_mm"] for r in inv_rows if not np.isnan(r["max_mm"])],
                                                             default=float("nan"))},
        "wall_time_s": {"reconstruction": t_recon, "total": time.monotonic() - t_start},
        "refine_similarity": refine_cfg.similarity,
        "correspondences": args.correspondences,
        "recon_config": dataclasses.asdict(cfg),
        "command": " ".join(["python", "benchmarks/bench_recon.py"] + (argv if argv is not None else sys.argv[1:])),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "bench_recon_quick" if args.quick else "bench_recon"
    if args.population != "ssm":
        name += "_" + args.population.replace("-", "_")
    if args.split != "test":
        name += f"_{args.split}"
    if args.correspondences == "truth":
        name += "_truth_correspondences"
    if args.refine_similarity and args.refine_similarity != recon_refine_config().similarity:
        name += f"_{args.refine_similarity}"
    name = args.name or name
    out_cases = [{k: v for k, v in c.items() if k != "_rec"} for c in cases]
    (RESULTS / f"{name}.json").write_text(json.dumps({"summary": summary, "cases": out_cases,
                                                       "registration_cases": reg_rows}, indent=1, default=float))
    (RESULTS / f"{name}.md").write_text(markdown(summary))
    figure(cases[: 4 * args.views: args.views] if n >= 4 * args.views else cases[:4], images,
           [truth_shapes[s] for s in shape_index], model_to_cam, space, RESULTS / f"{name}.png")
    print(markdown(summary))
    return 0


def fmt(p: dict, key: str = "median") -> str:
    v = p.get(key)
    return "-" if v is None else f"{v:.2f}"


COVERAGE_BANDS = ((0.0, 0.5), (0.5, 0.8), (0.8, 1.0))


def by_coverage(reg_rows: list[dict], coverage: dict[int, float | None]) -> list[dict]:
    """Registration before refinement per band of the reconstruction's coverage (a case
    without a reconstruction has no coverage and is left out of every band)."""
    out = []
    for lo, hi in COVERAGE_BANDS:
        last = hi == COVERAGE_BANDS[-1][1]  # the last band holds its upper end (full coverage)
        rows = [r for r in reg_rows if (c := coverage.get(r["index"])) is not None
                and lo <= c and (c < hi or (last and c <= hi))]
        mtre = [r["mtre_mm"] for r in rows]
        out.append({"coverage": [lo, hi], "n": len(rows), "mtre_mm": percentiles(mtre),
                    "gfr10": gfr(mtre, 10.0) if rows else float("nan")})
    return out


def markdown(s: dict) -> str:
    r, g = s["reconstruction"], s["registration"]
    rs = g["refined_subset"]
    lines = [
        "# bench_recon: patient-wide reconstruction and CT registration",
        "",
        f"Date {s['date']}; machine: {s['machine']}.",
        f"Data: {s['data']}.",
        f"Model: `{s['model']['file']}` ({s['model']['epochs']} epochs; command: `{s['model']['command']}`).",
        f"Command: `{s['command']}`.",
        *([] if s.get("correspondences", "network") == "network" else [
            "", "**Diagnostic run: the dense correspondences (canonical coordinates, bone mask) are the simulation's "
            "ground truth, not the network's; the shape coefficients are the network's.**"]),
        "",
        "| reconstruction (mm) | p25 | median | p95 | mean | n | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, key in [("ASSD posed (camera frame)", "posed_assd_mm"),
                      ("ASSD after similarity alignment (shape only)", "similarity_aligned_assd_mm"),
                      ("ASSD posed, depth from the truth (one scalar: scaling about the source)",
                       "posed_depth_fixed_assd_mm"),
                      ("baseline: mean shape at the true pose, ASSD", "baseline_mean_shape_true_pose_assd_mm"),
                      ("baseline: mean shape after similarity alignment", "baseline_mean_shape_similarity_assd_mm"),
                      ("baseline: the shape model's own best fit to the truth (similarity)",
                       "ssm_best_fit_similarity_assd_mm"),
                      ("abs. depth error of the centroid", "depth_error_mm")]:
        p = r[key]
        lines.append(f"| {name} | {fmt(p, 'p25')} | {fmt(p)} | {fmt(p, 'p95')} | {fmt(p, 'mean')} | {p['n']} | "
                     f"{p['n_failed']} |")
    imp = r["improvement_over_baseline_median"]
    lines += [
        "",
        f"Posed ASSD vs the baseline (medians): {100 * imp:.0f} % lower." if imp is not None else "",
        f"Posed ASSD with the depth from the truth vs the baseline (medians): "
        f"{100 * r['improvement_depth_fixed_over_baseline_median']:.0f} % lower; shape only (both after similarity "
        f"alignment): {100 * r['improvement_shape_over_mean_shape_median']:.0f} % lower.",
        f"Predicted / true size (median): {fmt(r['size_ratio_pred_over_true'])}; reconstruction success "
        f"{100 * r['success_rate']:.0f} %, flagged confident {100 * r['confident_rate']:.0f} %; "
        f"time per image median {fmt(r['time_per_image_s'])} s.",
        f"Rotation error of the pose: median {fmt(r['rotation_error_deg'])} deg, p95 "
        f"{fmt(r['rotation_error_deg'], 'p95')} deg. Gross pose errors (> {GROSS_ROTATION_DEG:.0f} deg): "
        + (", ".join(f"{e['rotation_error_deg']:.0f} deg at coverage {e['coverage']:.3f}"
                     f"{' (flagged confident)' if e['confident'] else ''}" for e in r["gross_pose_errors"]) or "none")
        + "; the lowest coverages of the other poses: " + ", ".join(f"{x:.3f}" for x in r["lowest_coverage_correct_poses"])
        + ".",
        "",
        "| CT registration | p25 | median | p95 | GFR@10 | GFR@5 | n | failed | s / case |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| before refinement (all) | {fmt(g['mtre_mm'], 'p25')} | {fmt(g['mtre_mm'])} | {fmt(g['mtre_mm'], 'p95')} | "
        f"{100 * g['gfr10']:.1f} % | {100 * g['gfr5']:.1f} % | {g['mtre_mm']['n']} | {g['mtre_mm']['n_failed']} | "
        f"{fmt(g['time_per_case_s'])} |",
        f"| before refinement (flagged confident) | {fmt(g['confident_subset']['mtre_mm'], 'p25')} | "
        f"{fmt(g['confident_subset']['mtre_mm'])} | {fmt(g['confident_subset']['mtre_mm'], 'p95')} | "
        f"{100 * g['confident_subset']['gfr10']:.1f} % | - | {g['confident_subset']['n']} | - | - |",
        f"| before refinement (refined subset) | {fmt(rs['mtre_before_mm'], 'p25')} | {fmt(rs['mtre_before_mm'])} | "
        f"{fmt(rs['mtre_before_mm'], 'p95')} | - | - | {rs['n']} | {rs['mtre_before_mm']['n_failed']} | - |",
        f"| after intensity refinement | {fmt(rs['mtre_after_mm'], 'p25')} | {fmt(rs['mtre_after_mm'])} | "
        f"{fmt(rs['mtre_after_mm'], 'p95')} | {100 * rs['gfr10_after']:.1f} % | - | {rs['n']} | "
        f"{rs['mtre_after_mm']['n_failed']} | {fmt(rs['time_per_case_s'])} |",
        f"| after intensity refinement (flagged confident) | {fmt(rs['confident_mtre_after_mm'], 'p25')} | "
        f"{fmt(rs['confident_mtre_after_mm'])} | {fmt(rs['confident_mtre_after_mm'], 'p95')} | "
        f"{100 * rs['confident_gfr10_after']:.1f} % | - | {rs['confident_mtre_after_mm']['n']} | - | - |",
        f"| projected mTRE before refinement (detector plane) | {fmt(g['projected_mtre_mm'], 'p25')} | "
        f"{fmt(g['projected_mtre_mm'])} | {fmt(g['projected_mtre_mm'], 'p95')} | - | - | {g['projected_mtre_mm']['n']} | "
        f"{g['projected_mtre_mm']['n_failed']} | - |",
        f"| abs. depth error before refinement (mean over targets) | {fmt(g['abs_depth_error_mm'], 'p25')} | "
        f"{fmt(g['abs_depth_error_mm'])} | {fmt(g['abs_depth_error_mm'], 'p95')} | - | - | "
        f"{g['abs_depth_error_mm']['n']} | {g['abs_depth_error_mm']['n_failed']} | - |",
        f"| projected mTRE after refinement | {fmt(rs['projected_mtre_after_mm'], 'p25')} | "
        f"{fmt(rs['projected_mtre_after_mm'])} | {fmt(rs['projected_mtre_after_mm'], 'p95')} | - | - | {rs['n']} | "
        f"{rs['projected_mtre_after_mm']['n_failed']} | - |",
        "",
        *([] if "by_coverage" not in g else [
            "| before refinement, by the reconstruction's coverage | p25 | median | p95 | GFR@10 | n | failed |",
            "|---|---|---|---|---|---|---|",
            *(f"| coverage {b['coverage'][0]:.1f}-{b['coverage'][1]:.1f} | {fmt(b['mtre_mm'], 'p25')} | "
              f"{fmt(b['mtre_mm'])} | {fmt(b['mtre_mm'], 'p95')} | {100 * b['gfr10']:.1f} % | {b['n']} | "
              f"{b['mtre_mm']['n_failed']} |" for b in g["by_coverage"]),
            "",
            "Coverage: the share of the reconstructed bone's surface with image evidence (`Reconstruction.coverage`); "
            "seed 002's poses include partial views.",
            "",
        ]),
        f"Depth error before refinement against the true depth's offset from its mean: slope "
        f"{fmt(g.get('depth_bias', {}), 'slope')}, r {fmt(g.get('depth_bias', {}), 'r')} (0 = unbiased; -1 = every pose at "
        "the mean depth).",
        f"Refinement brought {rs['gross_before_below_2mm_after']} of the {rs['gross_before']} refined cases above "
        "10 mm below 2 mm.",
        "mTRE: mean distance of 500 bone-surface points of the CT under the estimated and the true CT-to-camera "
        "pose (camera frame, mm). A failed case (no pose) counts as a failure in GFR and as +inf in the "
        "percentiles (mean over the others); 'failed' says how many.",
        f"Same CT in 5 frames (random rotations and offsets, LPS flips): largest mTRE between runs "
        f"{s['frame_invariance']['max_mtre_between_runs_mm']:.3f} mm.",
        "",
    ]
    return "\n".join(lines)


def figure(cases, images, truth_model, model_to_cam, space, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(cases)
    fig, ax = plt.subplots(n, 3, figsize=(11, 3.6 * n), squeeze=False)
    for row, c in enumerate(cases):
        i, rec = c["index"], c["_rec"]
        ax[row, 0].imshow(images[i], cmap="gray")
        ax[row, 0].set_title(f"input (subject {c['subject']})")
        ax[row, 1].imshow(images[i], cmap="gray")
        if rec.success:
            uv = rec.corr_uv[rec.inliers]
            ax[row, 1].scatter(uv[:, 0], uv[:, 1], s=1, c="c", alpha=0.4)
            pu = rec.points_uv
            ax[row, 1].scatter(pu[:, 0], pu[:, 1], s=2, c=rec.points_confidence, cmap="autumn", alpha=0.7)
        ax[row, 1].set_xlim(0, images.shape[-1])
        ax[row, 1].set_ylim(images.shape[-2], 0)
        ax[row, 1].set_title("inlier pixels (cyan), reconstruction points")
        T = model_to_cam[i]
        truth = truth_model[i] @ T[:3, :3].T + T[:3, 3]
        sub = slice(None, None, 15)
        ax[row, 2].scatter(truth[sub, 0], truth[sub, 2], s=1, c="k", label="truth")
        if rec.success:
            v = rec.vertices_cam
            ax[row, 2].scatter(v[sub, 0], v[sub, 2], s=1, c="r", alpha=0.5, label="reconstruction")
        ax[row, 2].set_xlabel("x (mm, camera)")
        ax[row, 2].set_ylabel("depth z (mm)")
        ax[row, 2].set_title(f"top view; posed ASSD {c.get('posed_assd_mm', float('nan')):.1f} mm")
        ax[row, 2].legend(markerscale=5, fontsize=7)
        ax[row, 2].set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
