"""Benchmark: build a model from meshes NOT in correspondence (template registration).

Population: 20 instances of the bundled pelvis model whose coefficients have a
sample covariance of exactly the identity, each re-meshed (open3d quadric
decimation to 6,000-14,000 triangles, vertices shuffled) and moved to a random
rigid frame. The template is the source model's mean mesh.

Reference ("source" modes): because the sample covariance of the coefficients
is exactly the identity, the PCA of these same 20 instances in their true
correspondence has exactly the source model's modes and variances, so the
comparison is not blurred by sampling noise; the benchmark checks this by
also comparing against that 20-instance PCA (the two columns agree).

Reported per variant (named registration configurations, ``--variants``):
per-shape registration residuals and vertex correspondence errors; |cos|
between each of the first three modes of the built model and the reference
(the acceptance: > 0.95 each); the principal angles between the span of modes
2-3 (and 1-3) of the built model and of the reference (insensitive to a
rotation inside the span); variance ratios of modes 2 and 3; leave-one-out
ASSD of the built model vs the same in true correspondence.

    python benchmarks/bench_ssm_correspond.py [--variants default,previous] [--quick]
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from shape_models import bundled  # noqa: E402
from shape_models.correspond import RegistrationConfig, build_model_from_meshes  # noqa: E402
from shape_models.model import ShapeModel  # noqa: E402
from shape_models.procrustes import align_points, apply_transform  # noqa: E402
from shape_models.quality import generalisation  # noqa: E402
from shape_models.synthetic import random_rigid, remesh, whitened_coefficients  # noqa: E402
from xrecon.io import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

#: Registration configurations compared. ``previous``: the default before the affine stage, the
#: 12 rounds per kernel width and ridge 0.02 (4 rounds, two model-based bootstrap rounds); the others are the
#: alternatives measured while choosing the default (see docs/shape_models.md).
_OLD = dict(affine_iters=0, iters_per_level=4, ridge=0.1, bootstrap_modes=0)
VARIANTS = {
    "default": RegistrationConfig(),
    "previous": RegistrationConfig(**{**_OLD, "bootstrap_modes": 8, "bootstrap_rounds": 2}),
    "previous_no_bootstrap": RegistrationConfig(**_OLD),
    "affine_4_rounds": RegistrationConfig(iters_per_level=4, ridge=0.1),
    "laplacian_1": RegistrationConfig(iters_per_level=4, regulariser="laplacian", laplacian_weight=1.0),
    "laplacian_10": RegistrationConfig(iters_per_level=4, regulariser="laplacian", laplacian_weight=10.0),
    "laplacian_100": RegistrationConfig(iters_per_level=6, regulariser="laplacian", laplacian_weight=100.0),
    "laplacian_1000": RegistrationConfig(iters_per_level=6, regulariser="laplacian", laplacian_weight=1000.0),
    "ridge_0.1": RegistrationConfig(ridge=0.1),
    "25_rounds_no_10mm": RegistrationConfig(iters_per_level=25, ridge=0.1, sigmas_mm=(60.0, 40.0, 25.0, 15.0)),
}


def _rotated_modes(model: ShapeModel, reference: ShapeModel, n: int) -> np.ndarray:
    """``(n, 3V)`` first modes of ``model`` expressed in ``reference``'s frame."""
    R = align_points(model.mean_, reference.mean_, "rigid")[:3, :3]
    return np.stack([(model.components_[k].reshape(-1, 3) @ R.T).ravel() for k in range(n)])


def mode_cosines(model: ShapeModel, reference: ShapeModel, n: int = 3) -> list[float]:
    """|cos| between the first ``n`` modes, after rotating ``model``'s frame onto ``reference``'s."""
    a = _rotated_modes(model, reference, n)
    b = reference.components_[:n]
    return [float(abs(a[k] @ b[k]) / np.linalg.norm(a[k]) / np.linalg.norm(b[k])) for k in range(n)]


def subspace_cosines(model: ShapeModel, reference: ShapeModel, first: int = 1, last: int = 3) -> list[float]:
    """Cosines of the principal angles between the spans of modes ``first..last`` (1-based,
    inclusive) of the two models (all 1: the same subspace, whatever the rotation inside it)."""
    a = _rotated_modes(model, reference, last)[first - 1:]
    qa, _ = np.linalg.qr(a.T)
    qb, _ = np.linalg.qr(reference.components_[first - 1:last].T)
    return np.clip(np.linalg.svd(qa.T @ qb, compute_uv=False), 0.0, 1.0).tolist()


def make_population(n: int, source: ShapeModel):
    """``truth (n, V, 3)`` in the model frame, the re-meshed moved meshes and their frames ``(4, 4)``."""
    b = whitened_coefficients(n, source.n_components_, seed=0)
    truth = source.inverse_transform(b)  # (n, V, 3), model frame, in correspondence
    rng = np.random.default_rng(0)
    meshes, frames = [], []
    for i in range(n):
        v, f = remesh(truth[i], source.faces_, int(rng.integers(6000, 14000)), seed=i)
        T = random_rigid(rng)
        meshes.append((apply_transform(T, v), f))
        frames.append(T)
    return truth, meshes, frames


def run_variant(config: RegistrationConfig, source: ShapeModel, reference: ShapeModel, truth, meshes, frames):
    n = len(meshes)
    t0 = time.perf_counter()
    built, results = build_model_from_meshes(meshes, template=(source.mean_, source.faces_), procrustes="rigid",
                                             config=config, progress=True)
    seconds = time.perf_counter() - t0
    registered = np.stack([r.vertices for r in results])
    ks = [3, n - 2]
    loo_built = generalisation(registered, ks, source.faces_, "rigid")
    loo_true = generalisation(truth, ks, source.faces_, "rigid")
    # vertex correspondence error: registered vertex vs the true position of that vertex
    corr_err = [float(np.linalg.norm(r.vertices - apply_transform(T, x), axis=1).mean())
                for r, T, x in zip(results, frames, truth)]
    ratio = lambda m: (m.explained_variance_[1:3] / m.explained_variance_[0]).tolist()  # noqa: E731
    summary = {
        "seconds_total": seconds,
        "registration_assd_median_mm": float(np.median([r.assd_mm for r in results])),
        "registration_assd_max_mm": float(max(r.assd_mm for r in results)),
        "registration_hd95_median_mm": float(np.median([r.hd95_mm for r in results])),
        "vertex_correspondence_error_mean_mm": float(np.mean(corr_err)),
        "all_success": bool(all(r.success for r in results)),
        "mode_abs_cos_vs_source": mode_cosines(built, source),
        "mode_abs_cos_vs_20_instance_pca": mode_cosines(built, reference),
        "principal_angles_deg_modes_2_3_vs_source": np.degrees(np.arccos(subspace_cosines(built, source, 2, 3))).tolist(),
        "principal_cosines_modes_1_3_vs_source": subspace_cosines(built, source, 1, 3),
        "variance_ratio_modes_2_3_to_1_built": ratio(built),
        "variance_ratio_modes_2_3_to_1_source": ratio(source),
        "loo_modes": ks,
        "loo_assd_built_mean_mm": loo_built.mean(axis=1).tolist(),
        "loo_assd_true_correspondence_mean_mm": loo_true.mean(axis=1).tolist(),
    }
    per_shape = [{"assd_mm": r.assd_mm, "hd95_mm": r.hd95_mm, "max_mm": r.max_mm, "success": r.success,
                  "vertex_error_mm": e, "loo_assd_built_mm": float(lb), "loo_assd_true_mm": float(lt)}
                 for r, e, lb, lt in zip(results, corr_err, loo_built[-1], loo_true[-1])]
    return summary, per_shape


def _fmt(xs, digits=3):
    return ", ".join(f"{x:.{digits}f}" for x in xs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="12 instances instead of 20")
    ap.add_argument("--variants", default="default",
                    help=f"comma-separated registration configurations, of {sorted(VARIANTS)}")
    args = ap.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    n = 12 if args.quick else 20
    source = bundled.load_model("pelvis")
    truth, meshes, frames = make_population(n, source)
    reference = ShapeModel(procrustes="rigid").fit(truth, source.faces_)  # PCA of the same instances
    out = {}
    for name in names:
        summary, per_shape = run_variant(VARIANTS[name], source, reference, truth, meshes, frames)
        out[name] = {"config": dataclasses.asdict(VARIANTS[name]), "summary": summary, "per_shape": per_shape}
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python benchmarks/bench_ssm_correspond.py --variants " + ",".join(names) + (" --quick" if args.quick else "")
    meta = {"date": date, "machine": "2-core CPU (shared with other jobs), no GPU",
            "data": f"{n} whitened instances of the bundled articulated-ssm pelvis model (shape_models/data, "
                    "10 modes), re-meshed, random rigid frames; template = the model's mean mesh",
            "command": command}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "bench_ssm_correspond.json", json.dumps({"meta": meta, "variants": out}, indent=1))
    s = {k: v["summary"] for k, v in out.items()}
    ratio_src = _fmt(s[names[0]]["variance_ratio_modes_2_3_to_1_source"], 4)
    rows = [
        ("modes 1-3 \\|cos\\| vs source (target > 0.95 each)", lambda x: _fmt(x["mode_abs_cos_vs_source"])),
        ("modes 1-3 \\|cos\\| vs PCA of the same 20 instances", lambda x: _fmt(x["mode_abs_cos_vs_20_instance_pca"])),
        ("principal angles, span of modes 2-3 vs source", lambda x: _fmt(x["principal_angles_deg_modes_2_3_vs_source"], 1) + " deg"),
        ("principal cosines, span of modes 1-3 vs source", lambda x: _fmt(x["principal_cosines_modes_1_3_vs_source"])),
        (f"variance of modes 2, 3 / mode 1 (source: {ratio_src})",
         lambda x: _fmt(x["variance_ratio_modes_2_3_to_1_built"], 4)),
        ("registration residual ASSD, median / max", lambda x: f"{x['registration_assd_median_mm']:.3f} / {x['registration_assd_max_mm']:.3f} mm"),
        ("registration residual HD95, median", lambda x: f"{x['registration_hd95_median_mm']:.3f} mm"),
        ("vertex correspondence error (sliding on the surface), mean", lambda x: f"{x['vertex_correspondence_error_mean_mm']:.2f} mm"),
        (f"leave-one-out ASSD ({' / '.join(map(str, s[names[0]]['loo_modes']))} modes), built",
         lambda x: _fmt(x["loo_assd_built_mean_mm"]) + " mm"),
        ("leave-one-out ASSD, true correspondence", lambda x: _fmt(x["loo_assd_true_correspondence_mean_mm"]) + " mm"),
        ("time (registration + build)", lambda x: f"{x['seconds_total']:.0f} s"),
    ]
    lines = ["# Model from meshes not in correspondence (bench_ssm_correspond)", "",
             f"{date}; {meta['machine']}; {meta['data']}.", f"Command: `{command}`", "",
             "| quantity | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {label} | " + " | ".join(f(s[k]) for k in names) + " |" for label, f in rows]
    atomic_write_text(RESULTS / "bench_ssm_correspond.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
