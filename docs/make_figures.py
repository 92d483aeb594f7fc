"""Draw the figures of README.md and docs/ into docs/figures/.

    python docs/make_figures.py [--demo out/demo]

* Error distributions (cumulative share of cases against error, log scale)
  from the per-case errors in ``benchmarks/results/bench_recon.json`` and
  ``benchmarks/results/bench_scr.json``: ``recon_errors.png``, ``scr_errors.png``.
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


def _ecdf(ax, errors: np.ndarray, label: str, x_max: float) -> None:
    e = np.sort(np.minimum(errors, x_max))
    share = np.arange(1, len(e) + 1) / len(e) * 100
    ax.step(e, share, where="post", label=f"{label} (n = {len(e)})")


def _axes(ax, x_max: float, title: str) -> None:
    ax.axvline(10, color="grey", ls="--", lw=1)
    ax.text(10.5, 3, "10 mm (GFR@10)", color="grey", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(0.1, x_max)
    ax.set_ylim(0, 100)
    ax.set_xlabel("error (mm, log scale; failures at the right edge)")
    ax.set_ylabel("cases with a smaller error (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


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
    args = ap.parse_args(argv)
    FIGURES.mkdir(parents=True, exist_ok=True)
    recon_errors(FIGURES)
    scr_errors(FIGURES)
    made = overlays(Path(args.demo), FIGURES)
    print("wrote", ", ".join(["recon_errors.png", "scr_errors.png", *made]), "in", FIGURES)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
