"""Draw the figures of README.md and docs/ into docs/figures/.

    python docs/make_figures.py [--demo out/demo] [--only NAME,...]

* Error distributions (cumulative share of cases against error, log scale)
  from the per-case errors in ``benchmarks/results/bench_recon.json`` and
  ``benchmarks/results/bench_scr.json``: ``recon_errors.png``, ``scr_errors.png``.
* One error-distribution figure per further benchmark whose results JSON holds
  per-case values (``python docs/make_figures.py --only pnp_128,joint`` draws
  a few): ``<benchmark>_errors.png`` (``pnp_128_errors.png``, ...) for bench_pnp_128 / _256 (mTRE),
  bench_align3d (ASSD), bench_joint and bench_refine (mTRE), bench_ssm_fit3d,
  bench_ssm_fit2d and bench_ssm_correspond (ASSD), bench_populations (model
  residual and fit ASSD), bench_silhouette_search and its _val run (mTRE) and
  bench_simulate (mask IoU per view). bench_anatomy, bench_startup and
  bench_large_image hold timings, bench_ssm_quality only per-mode curves:
  no per-case errors, no figure.
* Example overlays, from the folder ``xrecon demo --out DIR`` writes (skipped
  when it is missing): the outline pixels of the overlay PNGs the commands
  write (green: the result; yellow: before refinement, when refined), redrawn
  on the shipped example X-ray without the PnP inlier points (which fill the
  bone's area), enlarged 4x without smoothing so the outlines stay sharp:
  ``reconstruct_pelvis.png``, ``register_pelvis.png``, ``register_chest.png``.

A failed case (no pose) is drawn at the right edge of the error axis (it
counts as a gross failure in every GFR).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "figures"
#: demo overlay -> (the X-ray it was drawn on, figure name)
OVERLAYS = {"pelvis/reconstruct/overlay.png": ("examples/pelvis_xray.png", "reconstruct_pelvis.png"),
            "pelvis/register/overlay.png": ("examples/pelvis_xray.png", "register_pelvis.png"),
            "chest/overlay.png": ("examples/chest_xray.png", "register_chest.png")}
#: outline colours of xrecon.methods.recon.overlay (green: result; yellow: before refinement)
OUTLINES = [(250, 220, 40), (40, 220, 60)]


def _values(xs) -> np.ndarray:
    """Per-case errors; None / NaN / inf (a failed case) -> inf."""
    out = [math.inf if x is None or not math.isfinite(float(x)) else float(x) for x in xs]
    return np.asarray(out, dtype=float)


def _ecdf(ax, errors: np.ndarray, label: str, x_max: float, x_min: float | None = None, **style) -> None:
    e = np.sort(np.minimum(errors, x_max))
    if x_min is not None:  # values below the axis are drawn at its left edge
        e = np.maximum(e, x_min)
    share = np.arange(1, len(e) + 1) / len(e) * 100
    ax.step(e, share, where="post", label=f"{label} (n = {len(e)})", **style)


def _axes(ax, x_max: float, title: str, x_min: float = 0.1,
          xlabel: str = "error (mm, log scale; failures at the right edge)", legend_size: float = 8,
          legend_loc: str = "lower right") -> None:
    if x_min < 10 < x_max:
        ax.axvline(10, color="grey", ls="--", lw=1)
        ax.text(10.5, 3, "10 mm (GFR@10)", color="grey", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(x_min, x_max)
    ax.set_ylim(0, 100)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("cases with a smaller error (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size, loc=legend_loc)


def recon_errors(out: Path) -> None:
    d = json.loads((RESULTS / "bench_recon.json").read_text())
    reg, cases = d["registration_cases"], d["cases"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    x_max = 200.0
    _ecdf(a1, _values(r["mtre_mm"] if r.get("success") else None for r in reg), "before refinement", x_max)
    refined = [r for r in reg if "refined_mtre_mm" in r]
    _ecdf(a1, _values(r["refined_mtre_mm"] if r.get("success") else None for r in refined),
          "after intensity refinement", x_max)
    _axes(a1, x_max, "CT registration mTRE, pelvis test split (bench_recon.json)")
    _ecdf(a2, _values(c.get("similarity_assd_mm") for c in cases), "shape after similarity alignment", x_max)
    _ecdf(a2, _values(c.get("posed_depth_fixed_assd_mm") for c in cases), "posed, depth from the truth", x_max)
    _ecdf(a2, _values(c.get("posed_assd_mm") for c in cases), "posed", x_max)
    _axes(a2, x_max, "reconstruction ASSD, pelvis test split (bench_recon.json)")
    fig.suptitle("Patient-wide pelvis, 96 simulated test X-rays (in-span shapes)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out / "recon_errors.png", dpi=110)
    plt.close(fig)


def scr_errors(out: Path) -> None:
    d = json.loads((RESULTS / "bench_scr.json").read_text())
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    x_max = 300.0
    names = {"scr": "SCR (shipped)", "posenet": "PoseNet", "landmarks": "landmark heatmaps"}
    for key, label in names.items():
        if key in d["methods"]:
            _ecdf(ax, _values(d["methods"][key]["per_case_mtre_mm"]), f"{label}, before refinement", x_max)
    sub = d["methods"]["scr"].get("refine_subset", {})
    if sub.get("per_case_after_mm"):
        _ecdf(ax, _values(sub["per_case_after_mm"]), "SCR after refinement, first 30", x_max)
    _axes(ax, x_max, "mTRE, chest CT, 200 simulated test X-rays (bench_scr.json)")
    fig.tight_layout()
    fig.savefig(out / "scr_errors.png", dpi=110)
    plt.close(fig)


def _load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _save(fig, out: Path, name: str) -> str:
    """Write ``name`` less its ``bench_`` prefix (as recon_errors.png, scr_errors.png)."""
    name = name.removeprefix("bench_")
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def pnp_errors(out: Path, size: int) -> str:
    name = f"bench_pnp_{size}"
    d = _load(name)
    levels = sorted({r["outliers"] for r in d["rows"]})
    fig, axes = plt.subplots(1, len(levels), figsize=(4 * len(levels), 3.6), sharey=True)
    labels = {"opencv_seed002": "OpenCV (PnPConfig.seed002())", "default": "default (PnPConfig())"}
    for ax, level in zip(np.atleast_1d(axes), levels):
        for key, label in labels.items():
            rows = [r for r in d["rows"] if r["outliers"] == level and r["method"] == key]
            _ecdf(ax, _values(r["mtre_mm"] if r.get("success") else None for r in rows), label, 10.0)
        _axes(ax, 10.0, f"{level:.0%} outliers", x_min=0.05, legend_size=7, legend_loc="upper left")
    fig.suptitle(f"Oracle PnP mTRE per pose, chest CT, {size} px ({name}.json)", fontsize=11)
    return _save(fig, out, f"{name}_errors.png")


def align3d_errors(out: Path) -> str:
    d = _load("bench_align3d")
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for bone, b in d["bones"].items():
        _ecdf(ax, _values(r["assd_mm"] if r.get("success") else None for r in b["rows"]), bone, 1.0)
    _axes(ax, 1.0, "3D alignment ASSD per random transform (bench_align3d.json)", x_min=0.003,
          xlabel="ASSD of the aligned mesh (mm, log scale)", legend_loc="upper left")
    return _save(fig, out, "bench_align3d_errors.png")


def joint_errors(out: Path) -> str:
    rows = _load("bench_joint")["rows"]
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    x_max = 300.0
    _ecdf(ax, _values(r["mtre_before_joint_refine_mm"] for r in rows), "CT-point PnP (before joint refinement)", x_max)
    _ecdf(ax, _values(r.get("mtre_without_checks_mm") if r.get("success_without_checks") else None for r in rows),
          "joint solver without the checks", x_max, ls="--")
    _ecdf(ax, _values(r["mtre_mm"] if r.get("success") else None for r in rows),
          "joint solver (final; refused = failure)", x_max)
    _axes(ax, x_max, "Joint solver mTRE, 30 synthetic chest views (bench_joint.json)", legend_size=7,
          legend_loc="lower right")
    return _save(fig, out, "bench_joint_errors.png")


def refine_errors(out: Path) -> str:
    rows = _load("bench_refine")["rows"]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    _ecdf(ax, _values(r["mtre_start_mm"] for r in rows), "start (5 deg + 20 mm off)", 100.0)
    _ecdf(ax, _values(r["mtre_mm"] if r.get("success") else None for r in rows), "after intensity refinement", 100.0)
    _axes(ax, 100.0, "Intensity refinement mTRE, chest CT, 128 px (bench_refine.json)", x_min=0.05,
          legend_loc="center left")
    return _save(fig, out, "bench_refine_errors.png")


def ssm_fit3d_errors(out: Path) -> str:
    cases = _load("bench_ssm_fit3d")["cases"]
    models = list(dict.fromkeys(c["model"] for c in cases))
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.8), sharey=True)
    x_max = 100.0
    names = {"backfacing": "back-facing half removed", "plane": "half removed by a plane"}
    for ax, model in zip(np.atleast_1d(axes), models):
        for missing in dict.fromkeys(c["missing"] for c in cases):
            sel = [c for c in cases if c["model"] == model and c["missing"] == missing]
            flagged = sum(not c["success"] for c in sel)
            _ecdf(ax, _values(c["assd_mm"] for c in sel),
                  f"{names.get(missing, missing)}, {flagged} flagged", x_max)
        _axes(ax, x_max, f"{model}: fit to partial 3D points", x_min=0.03, legend_size=7, legend_loc="lower right",
              xlabel="ASSD to the true surface (mm, log scale)")
    fig.suptitle("SSM fit to 3D points, 16 held-out test subjects per model (bench_ssm_fit3d.json)", fontsize=11)
    return _save(fig, out, "bench_ssm_fit3d_errors.png")


def ssm_fit2d_errors(out: Path) -> str:
    cases = _load("bench_ssm_fit2d")["cases"]
    realisms = list(dict.fromkeys(c["realism"] for c in cases))
    fig, axes = plt.subplots(1, len(realisms), figsize=(5.5 * len(realisms), 4.0), sharey=True)
    x_max = 10.0
    for ax, realism in zip(np.atleast_1d(axes), realisms):
        conds = list(dict.fromkeys((c["views"], c["pose"]) for c in cases if c["realism"] == realism))
        for i, (views, pose) in enumerate(conds):
            sel = [c for c in cases if c["realism"] == realism and c["views"] == views and c["pose"] == pose]
            colour = f"C{i}"
            _ecdf(ax, _values(c["assd_mm"] if c["success"] else None for c in sel),
                  f"{views}, pose {pose}", x_max, x_min=0.005, color=colour)
            _ecdf(ax, _values(c["assd_shape_mm"] if c["success"] else None for c in sel),
                  f"{views}, pose {pose}, shape only", x_max, x_min=0.005, color=colour, ls=":")
        loc = "lower right" if realism == "clean" else "upper left"  # where that panel's curves leave room
        _axes(ax, x_max, f"{realism} silhouettes", x_min=0.005, legend_size=6.5, legend_loc=loc,
              xlabel="ASSD to the true surface (mm, log scale; dotted: shape only)")
    fig.suptitle("SSM fit to X-ray contours, pelvis, 12 held-out test subjects (bench_ssm_fit2d.json)", fontsize=11)
    return _save(fig, out, "bench_ssm_fit2d_errors.png")


def ssm_correspond_errors(out: Path) -> str:
    variants = _load("bench_ssm_correspond")["variants"]
    order = [v for v in ("previous", "default") if v in variants] + [v for v in variants if v not in ("previous", "default")]
    fig, axes = plt.subplots(1, len(order), figsize=(5.2 * len(order), 3.8), sharey=True)
    quantities = {"assd_mm": "registration residual ASSD", "vertex_error_mm": "vertex correspondence error (mean)",
                  "loo_assd_built_mm": "leave-one-out ASSD, built correspondence"}
    for ax, name in zip(np.atleast_1d(axes), order):
        shapes = variants[name]["per_shape"]
        for key, label in quantities.items():
            _ecdf(ax, _values(sh.get(key) for sh in shapes), label, 10.0)
        _axes(ax, 10.0, f"variant `{name}`", x_min=0.01, legend_size=7, legend_loc="lower right",
              xlabel="per shape (mm, log scale)")
    fig.suptitle("Correspondence on 20 re-meshed pelvis instances (bench_ssm_correspond.json)", fontsize=11)
    return _save(fig, out, "bench_ssm_correspond_errors.png")


def populations_errors(out: Path) -> str:
    d = _load("bench_populations")
    rows, order = d["rows"], [s["population"] for s in d["summary"]]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.0), gridspec_kw={"width_ratios": [1.5, 1]})
    x_min, x_max = 0.01, 10.0
    for i, pop in enumerate(order):
        sel = [r for r in rows if r["population"] == pop]
        ls = "-" if pop.startswith("deformed") else "--"
        assd = _values(r["assd_mm"] for r in sel)
        label = pop + (f", all < {x_min} mm" if np.all(assd < x_min) else "")
        _ecdf(a1, assd, label, x_max, x_min=x_min, color=f"C{i}", ls=ls, lw=2.5 if label != pop else None)
    _axes(a1, x_max, "residual of the pelvis model's best fit (known correspondence)", x_min=x_min,
          xlabel="ASSD (mm, log scale; in-span draws (~0) at the left edge)", legend_size=6.5, legend_loc="upper left")
    for pop in order:
        sel = [r for r in rows if r["population"] == pop and r.get("fit_assd_mm") is not None]
        if sel:
            refused = sum(not r["fit_success"] for r in sel)
            _ecdf(a2, _values(r["fit_assd_mm"] for r in sel), f"{pop}, {refused} refused", x_max, x_min=x_min)
    _axes(a2, x_max, "fit_points on LLP26 (refused fits drawn too)", x_min=0.3,
          xlabel="ASSD (mm, log scale)", legend_size=7, legend_loc="upper left")
    fig.suptitle("Shape populations per subject (bench_populations.json)", fontsize=11)
    return _save(fig, out, "bench_populations_errors.png")


def silhouette_errors(out: Path, name: str = "bench_silhouette_search") -> str:
    d = _load(name)
    cases, n = d["cases"], int(d["n_register"])
    missing = n - len(cases)  # registrations that failed before the search: no row, a gross failure in every GFR
    perturbs = d["perturb_mm"]
    x_max = 200.0
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, mask in zip(axes, ("network", "truth")):
        _ecdf(ax, _values([c["joint_mtre_mm"] for c in cases] + [None] * missing), "joint solver only", x_max,
              color="grey")
        for j, method in enumerate(("nelder-mead", "powell")):
            for k, p in enumerate(perturbs):
                key = f"{method}/{mask}/{p}"
                _ecdf(ax, _values([c.get(key) for c in cases] + [None] * missing), f"{method}, start +{p} mm",
                      x_max, color=f"C{j}", ls=("-", "--", ":")[k % 3])
        _axes(ax, x_max, f"silhouette search on the {mask} mask", legend_size=6.5)
    fig.suptitle(f"CT registration mTRE, pelvis {d['split']} split, {n} registrations"
                 f"{f' ({missing} failed before the search)' if missing else ''} ({name}.json)", fontsize=11)
    return _save(fig, out, f"{name}_errors.png")


def simulate_errors(out: Path) -> str:
    c = _load("bench_simulate")["consistency"]
    iou = np.asarray(c["iou_per_view"], dtype=float)
    fig, ax = plt.subplots(figsize=(6.0, 3.2))
    ax.hist(iou, bins=np.linspace(math.floor(iou.min() * 200) / 200, 1.0, 31), color="C0", edgecolor="white")
    ax.axvline(iou.mean(), color="grey", ls="--", lw=1)
    ax.text(iou.mean(), ax.get_ylim()[1] * 0.9, f" mean {iou.mean():.3f}", color="grey", fontsize=8)
    ax.set_xlabel("IoU, ray-cast bone mask vs bone-only DRR > 0 (1 = identical)")
    ax.set_ylabel("views")
    ax.set_title(f"Ground-truth consistency per view, chest CT, {c['size']} px, "
                 f"{len(iou)} poses (bench_simulate.json)", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, out, "bench_simulate_errors.png")


#: figure key -> function drawing it into a folder (returns the file name)
BENCH_FIGURES = {
    "pnp_128": lambda out: pnp_errors(out, 128),
    "pnp_256": lambda out: pnp_errors(out, 256),
    "align3d": align3d_errors,
    "joint": joint_errors,
    "refine": refine_errors,
    "ssm_fit3d": ssm_fit3d_errors,
    "ssm_fit2d": ssm_fit2d_errors,
    "ssm_correspond": ssm_correspond_errors,
    "populations": populations_errors,
    "silhouette_search": silhouette_errors,
    "silhouette_search_val": lambda out: silhouette_errors(out, "bench_silhouette_search_val"),
    "simulate": simulate_errors,
}


def overlays(demo: Path, out: Path, scale: int = 4) -> list[str]:
    made = []
    for src, (xray, name) in OVERLAYS.items():
        path = demo / src
        if not path.is_file():
            continue
        drawn = np.asarray(Image.open(path).convert("RGB")).astype(int)
        img = np.asarray(Image.open(ROOT / xray)).astype(float)
        if img.shape != drawn.shape[:2]:
            raise SystemExit(f"{path}: {drawn.shape[:2]} pixels, but {xray} has {img.shape}")
        lo, hi = np.percentile(img, [0.5, 99.5])
        grey = (np.clip((img - lo) / max(hi - lo, 1e-9), 0, 1) * 255).astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        for colour in OUTLINES:
            rgb[(np.abs(drawn - colour).sum(axis=2) == 0)] = colour
        im = Image.fromarray(rgb)
        im.resize((im.width * scale, im.height * scale), Image.NEAREST).save(out / name)
        made.append(name)
    return made


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", default=str(ROOT / "out" / "demo"), help="folder written by `xrecon demo --out DIR`")
    ap.add_argument("--only", default=None,
                    help="comma-separated figures to draw: recon, scr, overlays, " + ", ".join(BENCH_FIGURES))
    args = ap.parse_args(argv)
    known = {"recon", "scr", "overlays", *BENCH_FIGURES}
    only = None if args.only is None else {k.strip() for k in args.only.split(",") if k.strip()}
    if only is not None and only - known:
        ap.error(f"unknown figure(s): {', '.join(sorted(only - known))}; known: {', '.join(sorted(known))}")
    FIGURES.mkdir(parents=True, exist_ok=True)
    made = []
    if only is None or "recon" in only:
        recon_errors(FIGURES)
        made.append("recon_errors.png")
    if only is None or "scr" in only:
        scr_errors(FIGURES)
        made.append("scr_errors.png")
    for key, draw in BENCH_FIGURES.items():
        if only is None or key in only:
            made.append(draw(FIGURES))
    if only is None or "overlays" in only:
        made += overlays(Path(args.demo), FIGURES)
    print("wrote", ", ".join(made), "in", FIGURES)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
