"""Does the CT registration depend on how the X-ray was stored?

The same simulated X-ray is registered twice through the patient-wide
reconstruction: once as the float image the simulator wrote, once as the
16-bit PNG a user would save it as (scaled to [0, 1], rounded to 1 / 65535:
what ``xrecon register image.png`` reads). The two CT-to-camera poses are
compared by the mTRE between them over 500 bone-surface points of the CT (mm),
and each against the truth. Acceptance of the open-world issue: within 1 mm of
each other in at least 90 % of out-of-span cases.

    python benchmarks/bench_recon_stability.py [--population out-of-span] [--views-per-subject 1]

Uses ``bench_recon``'s test sets (same subjects, poses and phantom CTs); the CT
in the random frame of the registration's own seed. Writes
benchmarks/results/bench_recon_stability[_<population>].{json,md}. Simulated
data only.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_recon  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
log = logging.getLogger("bench_recon_stability")


def as_png16(image: np.ndarray) -> np.ndarray:
    """The image a 16-bit PNG holds once read back: min-max scaled to [0, 1] and
    rounded to 1 / 65535 (``xrecon.anatomy.xray_io.write_image`` then ``read_xray``)."""
    img = np.asarray(image, np.float64)
    lo, hi = img.min(), img.max()
    return (np.round((img - lo) / (hi - lo) * 65535) / 65535).astype(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--population", choices=("ssm", "deformed", "llp26", "out-of-span"), default="out-of-span")
    ap.add_argument("--views", type=int, default=3, help="views per subject of the test set (bench_recon's)")
    ap.add_argument("--views-per-subject", type=int, default=1, help="views of each subject registered")
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=str(ROOT / "data" / "recon_bench"))
    ap.add_argument("--split", choices=("test", "val"), default="test",
                    help="bench_recon's test set, or its validation set (to choose settings on)")
    ap.add_argument("--n", type=int, default=None, help="at most this many cases (spread over the subjects)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                    help="change a ReconConfig field, as bench_recon.py --set")
    ap.add_argument("--quick", action="store_true", help="3 subjects per population (smoke run)")
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    from tqdm import tqdm

    from xrecon.anatomy.bone import bone_from_labels
    from xrecon.errors import InputError
    from xrecon.geometry import Camera
    from xrecon.methods.recon.data import ReconDataConfig, phantom_of
    from xrecon.methods.recon.model_io import DEFAULT_MODEL, load_recon_model
    from xrecon.methods.recon.pipeline import reconstruct_image, register_ct_points
    from xrecon.metrics.registration import mtre_mm

    net, space, info = load_recon_model(args.model)
    ts = bench_recon.load_test_set(space, args.population, args.split, args.views, args.quick, args.data)
    images, K, shape_index, spacing = ts["image"], ts["K"], ts["shape_index"], ts["spacing"]
    size = images.shape[-1]
    cfg = bench_recon.recon_config(args.overrides)
    rng = np.random.default_rng(7)
    ids = [i for i in range(len(images)) if i % args.views < args.views_per_subject]
    if args.n is not None and args.n < len(ids):
        ids = [ids[k] for k in np.linspace(0, len(ids) - 1, args.n).round().astype(int)]
    rows = []
    t0 = time.monotonic()
    for k, i in enumerate(tqdm(ids, desc="register twice")):
        s = int(shape_index[i])
        _ct, labels = phantom_of(space, ts["truth_shapes"][s], ReconDataConfig(phantom_spacing_mm=2.0),
                                 seed=ts["shape_seed"][s])
        world_to_ct = bench_recon.random_frame(rng, lps=bool(k % 2))
        bone = bone_from_labels(labels, cache=False).transformed(world_to_ct)
        pts, nrm = bone.sample_points(30000, seed=0)
        truth = ts["world_to_cam"][i] @ np.linalg.inv(world_to_ct)
        targets = bone.vertices[np.random.default_rng(0).choice(len(bone.vertices), 500, replace=False)]
        cam = Camera(K[i], np.eye(4), size, size, spacing)
        poses, joint, recs = {}, {}, {}
        for kind, img in (("float", images[i]), ("png16", as_png16(images[i]))):
            try:
                rec = reconstruct_image(net, space, img, cam, cfg)
                reg = register_ct_points(rec, pts, nrm, cfg, ct_mesh=(bone.vertices, bone.faces))
                poses[kind] = reg.ct_to_cam if reg.success else None
                # the same registration without the silhouette step: where the difference arises
                reg0 = register_ct_points(rec, pts, nrm, dataclasses.replace(cfg, silhouette="off"))
                joint[kind] = reg0.ct_to_cam if reg0.success else None
                recs[kind] = rec if rec.success else None
            except InputError:
                poses[kind] = joint[kind] = recs[kind] = None
        ok = [poses[k_] is not None for k_ in ("float", "png16")]
        row = {"index": i, "shape": s, "population": ts["shape_population"][s],
               "float_mtre_mm": float(mtre_mm(poses["float"], truth, targets)[0]) if ok[0] else float("nan"),
               "png16_mtre_mm": float(mtre_mm(poses["png16"], truth, targets)[0]) if ok[1] else float("nan"),
               "between_mm": (float(mtre_mm(poses["float"], poses["png16"], targets)[0]) if all(ok)
                              else (float("inf") if any(ok) else float("nan"))),
               "between_joint_mm": (float(mtre_mm(joint["float"], joint["png16"], targets)[0])
                                    if all(joint[k_] is not None for k_ in joint) else float("nan")),
               "between_reconstruction_mm": (
                   float(np.linalg.norm(recs["float"].vertices_cam - recs["png16"].vertices_cam, axis=1).mean())
                   if all(recs.get(k_) is not None for k_ in ("float", "png16")) else float("nan"))}
        rows.append(row)

    between = np.array([r["between_mm"] for r in rows], np.float64)
    both_failed = np.isnan(between)
    compared = between[~both_failed]
    summary = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, no GPU (shared 2-core machine)",
        "data": (f"{bench_recon.POPULATION_TEXT[args.population]}, {args.split} split: {len(set(shape_index[ids].tolist()))} "
                 f"subjects x {args.views_per_subject} view(s) of bench_recon's test set (128 px, simulated)"),
        "model": {"file": str(args.model or DEFAULT_MODEL), "command": info.get("command")},
        "settings": args.overrides, "n": len(rows), "n_both_failed": int(both_failed.sum()),
        "share_within_1mm": float(np.mean(compared <= 1.0)) if len(compared) else float("nan"),
        "between_mm": bench_recon.percentiles(compared),
        "between_joint_mm": bench_recon.percentiles([r["between_joint_mm"] for r in rows], failed_as_inf=False),
        "between_reconstruction_mm": bench_recon.percentiles([r["between_reconstruction_mm"] for r in rows],
                                                             failed_as_inf=False),
        "float_mtre_mm": bench_recon.percentiles([r["float_mtre_mm"] for r in rows]),
        "png16_mtre_mm": bench_recon.percentiles([r["png16_mtre_mm"] for r in rows]),
        "wall_time_s": time.monotonic() - t0,
        "command": " ".join(["python", "benchmarks/bench_recon_stability.py"]
                            + (argv if argv is not None else sys.argv[1:])),
    }
    name = args.name or ("bench_recon_stability" + ("_quick" if args.quick else "")
                         + ("" if args.split == "test" else "_" + args.split)
                         + ("" if args.population == "ssm" else "_" + args.population.replace("-", "_")))
    fmt = bench_recon.fmt
    md = [f"# {name}: the same X-ray as floats and as a 16-bit PNG", "",
          f"Date {summary['date']}; machine: {summary['machine']}.", f"Data: {summary['data']}.",
          f"Model: `{summary['model']['file']}`.", f"Command: `{summary['command']}`.", "",
          "| | p25 | median | p95 | n |", "|---|---|---|---|---|",
          f"| mTRE between the two registrations (mm) | {fmt(summary['between_mm'], 'p25')} | "
          f"{fmt(summary['between_mm'])} | {fmt(summary['between_mm'], 'p95')} | {len(compared)} |",
          f"| - the reconstructions alone (mean vertex distance, camera frame, mm) | "
          f"{fmt(summary['between_reconstruction_mm'], 'p25')} | {fmt(summary['between_reconstruction_mm'])} | "
          f"{fmt(summary['between_reconstruction_mm'], 'p95')} | {summary['between_reconstruction_mm'].get('n', '')} |",
          f"| - the registrations without the silhouette step (mm) | {fmt(summary['between_joint_mm'], 'p25')} | "
          f"{fmt(summary['between_joint_mm'])} | {fmt(summary['between_joint_mm'], 'p95')} | "
          f"{summary['between_joint_mm'].get('n', '')} |",
          f"| mTRE to the truth, float image | {fmt(summary['float_mtre_mm'], 'p25')} | "
          f"{fmt(summary['float_mtre_mm'])} | {fmt(summary['float_mtre_mm'], 'p95')} | {len(rows)} |",
          f"| mTRE to the truth, 16-bit PNG | {fmt(summary['png16_mtre_mm'], 'p25')} | "
          f"{fmt(summary['png16_mtre_mm'])} | {fmt(summary['png16_mtre_mm'], 'p95')} | {len(rows)} |", "",
          f"Within 1 mm of each other: **{100 * summary['share_within_1mm']:.0f} %** of the cases where either "
          f"succeeded (target >= 90 %); both failed: {summary['n_both_failed']}. A case where only one "
          "succeeded counts as not within 1 mm."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"summary": summary, "cases": rows}, indent=1, default=float))
    (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
