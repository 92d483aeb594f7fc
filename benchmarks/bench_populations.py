"""Benchmark: how far each shape population lies from the bundled pelvis model's span.

Populations (shape_models.populations, docs/populations.md):

* ``in-span``: the 32 test subjects of the ready pelvis model's split (articulated-ssm).
* ``llp26-val`` / ``llp26-test``: the LLP26 subjects' hip bones (real people, another
  study), surfaces built from the cubic Lagrange elements and put into the model's
  correspondence by non-rigid registration of the model's mean mesh.
* ``deformed a=<A> l=<L>``: test-split draws of OutOfSpanPopulation (test subjects + a
  smooth Gaussian-process displacement of RMS A mm, length scale L mm).
* ``mirrored``: the test subjects mirrored across the sagittal plane (halves swapped).

Per shape: the model's best fit with known correspondence, a least-squares projection
onto all 10 modes after a rigid alignment, no prior (shape_models.populations.span_residual);
reported as the ASSD (mm, xrecon.metrics.shape, 10,000 samples per surface) between
the projection and the shape's own surface (for LLP26: the surface built from the
elements, not the registered template), the RMS vertex distance and |b| (SD).
For LLP26 also shape_models.fit3d.fit_points (3000 surface samples, noise 1 mm, the
model's prior; started from the projection's pose): ASSD, |b| and whether it succeeds.

The deformation amplitude and length scale are calibrated on the LLP26 *val* subjects:
the residual's normal component (RMS and the distance at which its spatial correlation
falls to exp(-1/2)) is matched by draws at unit amplitude over a grid of length scales.

    python benchmarks/bench_populations.py [--quick]

LLP26 registrations are cached (xrecon.anatomy.cache, keyed by a hash of the inputs;
about 40 s per subject the first time).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from shape_models import bundled, populations  # noqa: E402
from shape_models.correspond import RegistrationConfig, register_template  # noqa: E402
from shape_models.procrustes import align_points, apply_transform  # noqa: E402
from xrecon.anatomy.cache import cached_arrays, hash_inputs  # noqa: E402
from xrecon.metrics.shape import surface_distance  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LENGTH_GRID_MM = (10.0, 15.0, 20.0, 30.0, 40.0, 60.0)
AMPLITUDES_MM = (0.5, 1.0, 2.0, 4.0)
SUBDIVISIONS = 6


def registered_llp26(model, subject: int, nodes: np.ndarray, config: RegistrationConfig) -> dict:
    """Registration of the model's mean onto one LLP26 subject's hip bones (cached)."""
    v, f = populations.llp26_pelvis_surface(nodes, ("right_hip", "left_hip"), SUBDIVISIONS)
    key = hash_inputs("llp26-hip-registration", nodes, model.mean_, model.faces_, SUBDIVISIONS, asdict(config))

    def compute():
        t0 = time.perf_counter()
        r = register_template(model.mean_, model.faces_, v, f, config, source=f"LLP26 subject {subject}")
        return {"vertices": r.vertices, "assd_mm": np.array(r.assd_mm), "hd95_mm": np.array(r.hd95_mm),
                "success": np.array(r.success), "seconds": np.array(time.perf_counter() - t0)}

    out = dict(cached_arrays("llp26_registration", key, compute))
    out["surface"] = (v, f)
    return out


def residual_row(model, name, shape, truth_surface=None, subject=None, seed=0) -> dict:
    """The span residual of one shape in correspondence; ASSD against ``truth_surface`` (its own
    frame) or, by default, the shape's own mesh."""
    r = populations.span_residual(model, shape)
    aligned, proj = r.aligned[0], r.projection[0]
    T = align_points(shape, aligned, "rigid")  # shape frame -> model frame (exact: aligned is a rigid copy)
    if truth_surface is None:
        truth = (aligned, model.faces_)
    else:
        truth = (apply_transform(T, truth_surface[0]), truth_surface[1])
    d = surface_distance((proj, model.faces_), truth, n_samples=10000, seed=seed)
    return {"population": name, "subject": subject, "assd_mm": float(d.assd), "hd95_mm": float(d.hd95),
            "vertex_rms_mm": float(r.rms_mm[0]), "normal_rms_mm": float(r.normal_rms_mm[0]),
            "b_norm_sd": float(np.linalg.norm(r.coefficients[0])), "_span": r, "_model_from_shape": T}


def llp26_fit_points(model, row, surface, seed=0) -> dict:
    from shape_models.fit3d import Fit3DConfig, fit_points
    from shape_models.synthetic import sample_surface_normals

    pts, _ = sample_surface_normals(surface[0], surface[1], 3000, seed=seed)
    start = np.linalg.inv(row["_model_from_shape"])
    t0 = time.perf_counter()
    res = fit_points(model, pts, Fit3DConfig(noise_mm=1.0), init_model_to_points=start)
    d = surface_distance((res.vertices, model.faces_), surface, n_samples=10000, seed=seed)
    return {"fit_assd_mm": float(d.assd), "fit_b_norm_sd": float(res.mahalanobis), "fit_success": bool(res.success),
            "fit_reason": res.reason, "fit_seconds": time.perf_counter() - t0}


def correlation_length_of(row, model) -> float:
    r = row["_span"]
    c, corr = populations.residual_correlogram(r.aligned[0] - r.projection[0], r.projection[0], model.faces_)
    return populations.correlation_length(c, corr)


def summarise(rows):
    out = []
    for name in dict.fromkeys(r["population"] for r in rows):
        sel = [r for r in rows if r["population"] == name]
        a = np.array([r["assd_mm"] for r in sel])
        s = {"population": name, "n": len(sel), "assd_median": float(np.median(a)),
             "assd_p95": float(np.percentile(a, 95)), "assd_max": float(a.max()),
             "vertex_rms_median": float(np.median([r["vertex_rms_mm"] for r in sel])),
             "normal_rms_median": float(np.median([r["normal_rms_mm"] for r in sel])),
             "b_norm_median": float(np.median([r["b_norm_sd"] for r in sel]))}
        if "fit_assd_mm" in sel[0]:
            f = np.array([r["fit_assd_mm"] for r in sel])
            s.update({"fit_assd_median": float(np.median(f)), "fit_assd_p95": float(np.percentile(f, 95)),
                      "fit_b_norm_median": float(np.median([r["fit_b_norm_sd"] for r in sel])),
                      "fit_success_rate": float(np.mean([r["fit_success"] for r in sel])),
                      "registration_assd_median": float(np.median([r["registration_assd_mm"] for r in sel]))})
        out.append(s)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 shapes per population, 2 LLP26 subjects per split")
    ap.add_argument("--register-only", action="store_true", help="only fill the LLP26 registration cache")
    ap.add_argument("--no-fit", action="store_true", help="skip fit_points on LLP26")
    args = ap.parse_args()
    t_start = time.time()
    model = bundled.load_model("pelvis")
    config = RegistrationConfig()
    split = populations.population_split("llp26")
    n_draws = 4 if args.quick else 16
    llp_ids = {s: (ids[:2] if args.quick else ids) for s, ids in (("val", split["val"]), ("test", split["test"]))}
    nodes = populations.llp26_pelvis_nodes()

    rows = []
    # ------------------------------------------------ LLP26 (val first: it calibrates the deformations)
    llp_rows = {"val": [], "test": []}
    for s in ("val", "test"):
        for i in llp_ids[s]:
            reg = registered_llp26(model, i, nodes[i], config)
            print(f"LLP26 {s} subject {i:2d}: registration ASSD {float(reg['assd_mm']):.3f} mm "
                  f"({float(reg['seconds']):.0f} s when computed)", flush=True)
            if args.register_only:
                continue
            row = residual_row(model, f"llp26-{s}", reg["vertices"], reg["surface"], subject=int(i))
            row["registration_assd_mm"] = float(reg["assd_mm"])
            row["correlation_length_mm"] = correlation_length_of(row, model)
            if not args.no_fit:
                row.update(llp26_fit_points(model, row, reg["surface"]))
            print(f"   span ASSD {row['assd_mm']:.2f} mm, vertex RMS {row['vertex_rms_mm']:.2f}, normal RMS "
                  f"{row['normal_rms_mm']:.2f}, |b| {row['b_norm_sd']:.1f} SD, corr. length "
                  f"{row['correlation_length_mm']:.1f} mm" + (f"; fit_points ASSD {row['fit_assd_mm']:.2f} mm, |b| "
                  f"{row['fit_b_norm_sd']:.1f}, {'ok' if row['fit_success'] else row['fit_reason']}"
                  if "fit_assd_mm" in row else ""), flush=True)
            llp_rows[s].append(row)
            rows.append(row)
    if args.register_only:
        return

    # ------------------------------------------------ calibration of (b) on LLP26 val
    target_normal = float(np.median([r["normal_rms_mm"] for r in llp_rows["val"]]))
    target_length = float(np.median([r["correlation_length_mm"] for r in llp_rows["val"]]))
    grid = []
    for ell in LENGTH_GRID_MM:
        pop = populations.OutOfSpanPopulation(amplitude_mm=1.0, length_scale_mm=ell)
        g = [residual_row(model, "calibration", inst.vertices) for inst in pop.draws(model, "val", n_draws)]
        grid.append({"length_scale_mm": ell,
                     "normal_rms_per_mm": float(np.median([r["normal_rms_mm"] for r in g])),
                     "assd_per_mm": float(np.median([r["assd_mm"] for r in g])),
                     "correlation_length_mm": float(np.median([correlation_length_of(r, model) for r in g]))})
        print(f"calibration l = {ell:4.0f} mm: residual normal RMS {grid[-1]['normal_rms_per_mm']:.3f} per mm of "
              f"amplitude, correlation length {grid[-1]['correlation_length_mm']:.1f} mm", flush=True)
    best = min(grid, key=lambda g: abs(np.log(g["correlation_length_mm"] / target_length)))
    ell_cal = best["length_scale_mm"]
    amp_cal = float(round(target_normal / best["normal_rms_per_mm"], 2))
    calibration = {"llp26_val_normal_rms_median_mm": target_normal,
                   "llp26_val_correlation_length_median_mm": target_length,
                   "grid": grid, "length_scale_mm": ell_cal, "amplitude_mm": amp_cal}
    print(f"calibrated: amplitude {amp_cal} mm, length scale {ell_cal} mm", flush=True)

    # ------------------------------------------------ in-span, deformed, mirrored (test split)
    test_shapes, test_ids = bundled.subject_shapes(model, "test")
    for k in range(min(len(test_shapes), 2 * n_draws)):
        rows.append(residual_row(model, "in-span", test_shapes[k], subject=int(test_ids[k])))
    sweep = sorted(set(AMPLITUDES_MM) | {amp_cal})
    for amp in sweep:
        name = f"deformed a={amp:g} l={ell_cal:g}" + (" (calibrated)" if amp == amp_cal else "")
        pop = populations.OutOfSpanPopulation(amplitude_mm=amp, length_scale_mm=ell_cal)
        for inst in pop.draws(model, "test", n_draws):
            rows.append(residual_row(model, name, inst.vertices, subject=int(inst.base.split()[-1])))
    perm = populations.pelvis_mirror_permutation(model)
    for k in range(min(len(test_shapes), 2 * n_draws)):
        rows.append(residual_row(model, "mirrored", populations.mirror_in_correspondence(test_shapes[k], perm),
                                 subject=int(test_ids[k])))
    summary = summarise(rows)
    for s in summary:
        print(f"{s['population']:32s} n={s['n']:2d} ASSD median {s['assd_median']:.3f} p95 {s['assd_p95']:.3f} mm, "
              f"|b| {s['b_norm_median']:.1f} SD")

    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}, no GPU used"
    cmd = "python benchmarks/bench_populations.py" + (" --quick" if args.quick else "") + \
          (" --no-fit" if args.no_fit else "")
    name = "bench_populations" + ("_quick" if args.quick else "")
    payload = {"command": cmd, "date": stamp, "machine": machine, "seconds": time.time() - t_start,
               "model": "bundled pelvis (articulated-ssm, 10 modes, train split)",
               "llp26_split": split, "calibration": calibration, "summary": summary, "rows": clean}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    md = [f"# bench_populations ({stamp})", "", f"`{cmd}`; {machine}; {payload['seconds'] / 60:.0f} min.", "",
          "Residual of the bundled pelvis model (10 modes) on each population: least-squares projection on all "
          "modes after a rigid alignment, no prior (shape_models.populations.span_residual). ASSD between the "
          "projection and the shape's own surface (LLP26: the surface built from its elements).", "",
          "| population | n | ASSD median (mm) | ASSD p95 (mm) | vertex RMS median (mm) | normal RMS median (mm) "
          "| \\|b\\| median (SD) |", "|---|---|---|---|---|---|---|"]
    for s in summary:
        md.append(f"| {s['population']} | {s['n']} | {s['assd_median']:.3f} | {s['assd_p95']:.3f} | "
                  f"{s['vertex_rms_median']:.2f} | {s['normal_rms_median']:.2f} | {s['b_norm_median']:.1f} |")
    fits = [s for s in summary if "fit_assd_median" in s]
    if fits:
        md += ["", "LLP26 with `fit_points` (3000 surface samples, noise 1 mm, the model's prior, started from the "
               "projection's pose) and the registration residual of the template:", "",
               "| population | n | registration ASSD median (mm) | fit ASSD median (mm) | fit ASSD p95 (mm) "
               "| fit \\|b\\| median (SD) | fit success |", "|---|---|---|---|---|---|---|"]
        for s in fits:
            md.append(f"| {s['population']} | {s['n']} | {s['registration_assd_median']:.3f} | "
                      f"{s['fit_assd_median']:.2f} | {s['fit_assd_p95']:.2f} | {s['fit_b_norm_median']:.1f} | "
                      f"{100 * s['fit_success_rate']:.0f} % |")
    md += ["", f"Calibration on LLP26 val ({len(llp_rows['val'])} subjects): residual normal RMS median "
           f"{target_normal:.2f} mm, correlation length median {target_length:.1f} mm. Draws at unit amplitude "
           f"({n_draws} val draws per length scale):", "",
           "| length scale (mm) | residual normal RMS per mm of amplitude | residual ASSD per mm | "
           "residual correlation length (mm) |", "|---|---|---|---|"]
    for g in grid:
        md.append(f"| {g['length_scale_mm']:g} | {g['normal_rms_per_mm']:.3f} | {g['assd_per_mm']:.3f} | "
                  f"{g['correlation_length_mm']:.1f} |")
    md += ["", f"Chosen: length scale {ell_cal:g} mm (residual correlation length closest to LLP26's), amplitude "
           f"{amp_cal:g} mm (matches LLP26 val's residual normal RMS).", ""]
    (RESULTS / f"{name}.md").write_text("\n".join(md))
    print(f"wrote {RESULTS / name}.json/.md")


if __name__ == "__main__":
    main()
