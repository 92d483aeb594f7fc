"""How much the CT registration's confidence means, from a bench_recon run.

For the registrations of one ``bench_recon`` results file (in-span or
out-of-span test set), reports what a user relying on ``confident`` gets:

* the share of gross registrations (mTRE > 10 mm, failures included) that the
  result flags *not* confident (the acceptance target is >= 90 %), and the share
  of good ones (< 5 mm) it flags not confident (target <= 15 %);
* risk-coverage curves: keep the cases with the highest score and report the
  GFR@10 of what is kept against the share kept, for each per-case score the
  result carries (the reconstruction's coverage, the silhouette Dice).

    python benchmarks/recon_confidence.py benchmarks/results/bench_recon.json [--name NAME]

Writes benchmarks/results/<NAME>.{json,md,png} (default NAME: recon_confidence
for bench_recon.json, recon_confidence_<suffix> for bench_recon_<suffix>.json).
Simulated data only (the bench_recon run's).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GROSS_MM, GOOD_MM = 10.0, 5.0


def flag_shares(mtre: np.ndarray, confident: np.ndarray) -> dict:
    """Shares of gross (> 10 mm or failed) and good (< 5 mm) registrations flagged not confident."""
    gross = ~(mtre <= GROSS_MM)  # NaN (failed) counts as gross
    good = mtre < GOOD_MM
    return {"n": int(len(mtre)), "n_gross": int(gross.sum()), "n_good": int(good.sum()),
            "n_confident": int(confident.sum()),
            "gross_flagged_not_confident": float(np.mean(~confident[gross])) if gross.any() else float("nan"),
            "good_flagged_not_confident": float(np.mean(~confident[good])) if good.any() else float("nan"),
            "gfr10_confident": float(np.mean(gross[confident])) if confident.any() else float("nan"),
            "gfr10_all": float(np.mean(gross)) if len(mtre) else float("nan")}


def risk_coverage(mtre: np.ndarray, score: np.ndarray) -> dict:
    """GFR@10 of the kept cases when keeping those with the highest ``score`` (NaN scores last)."""
    order = np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")
    gross = ~(mtre[order] <= GROSS_MM)
    kept = np.arange(1, len(order) + 1)
    return {"coverage": (kept / len(order)).tolist(), "gfr10": (np.cumsum(gross) / kept).tolist()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a bench_recon results JSON")
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    data = json.loads(args.results.read_text())
    rows = data["registration_cases"]
    coverage_of = {c["index"]: c.get("coverage", float("nan")) for c in data["cases"]}
    mtre = np.array([r.get("mtre_mm", np.nan) if r.get("success") else np.nan for r in rows], np.float64)
    confident = np.array([bool(r.get("confident")) for r in rows])
    scores = {"coverage": np.array([coverage_of.get(r["index"], np.nan) for r in rows], np.float64),
              "silhouette_dice": np.array([r.get("silhouette_dice", np.nan) for r in rows], np.float64)}
    if any("silhouette_move_mm" in r for r in rows):  # lower is better: the two cues agree
        scores["agreement (-silhouette move)"] = -np.array([r.get("silhouette_move_mm", np.nan) for r in rows],
                                                           np.float64)
    if any(np.isfinite(r.get("silhouette_outline_px", np.nan)) for r in rows):  # lower is better
        scores["outline fit (-silhouette outline px)"] = -np.array(
            [r.get("silhouette_outline_px", np.nan) for r in rows], np.float64)
    summary = data["summary"]
    out = {"source": str(args.results.relative_to(ROOT) if args.results.is_absolute() else args.results),
           "data": summary.get("data"), "population": summary.get("population", "ssm"),
           "date_of_run": summary.get("date"),
           "flags": flag_shares(mtre, confident),
           "risk_coverage": {k: risk_coverage(mtre, v) for k, v in scores.items()},
           "command": " ".join(["python", "benchmarks/recon_confidence.py"] + (argv if argv is not None
                                                                                 else sys.argv[1:]))}
    stem = args.results.stem
    name = args.name or ("recon_confidence" + stem[len("bench_recon"):] if stem.startswith("bench_recon")
                         else f"recon_confidence_{stem}")
    f = out["flags"]
    md = [f"# {name}: what the CT registration's confidence flag means", "",
          f"From `{out['source']}` (run {out['date_of_run']}; {out['data']}).", f"Command: `{out['command']}`.", "",
          "| registrations | gross (> 10 mm or failed) | good (< 5 mm) | flagged confident |",
          "|---|---|---|---|", f"| {f['n']} | {f['n_gross']} | {f['n_good']} | {f['n_confident']} |", "",
          "| measure | value | target |", "|---|---|---|",
          f"| gross registrations flagged not confident | {100 * f['gross_flagged_not_confident']:.0f} % | >= 90 % |",
          f"| good registrations flagged not confident | {100 * f['good_flagged_not_confident']:.0f} % | <= 15 % |",
          f"| GFR@10 of the confident ones | {100 * f['gfr10_confident']:.1f} % | - |",
          f"| GFR@10 of all | {100 * f['gfr10_all']:.1f} % | - |", "",
          "Risk-coverage (GFR@10 of the kept cases when keeping the highest-scoring share):", "",
          "| score | keep 50 % | keep 80 % | keep 100 % |", "|---|---|---|---|"]
    for k, rc in out["risk_coverage"].items():
        cov, g = np.array(rc["coverage"]), np.array(rc["gfr10"])
        at = [g[np.searchsorted(cov, q - 1e-9)] for q in (0.5, 0.8, 1.0)] if len(cov) else [np.nan] * 3
        md.append(f"| {k} | " + " | ".join(f"{100 * x:.1f} %" for x in at) + " |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=1, allow_nan=True))
    (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n")
    figure(out, RESULTS / f"{name}.png")
    print("\n".join(md))
    return 0


def figure(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for k, rc in out["risk_coverage"].items():
        ax.plot(np.array(rc["coverage"]) * 100, np.array(rc["gfr10"]) * 100, label=f"kept by {k}")
    ax.set_xlabel("share of registrations kept (%)")
    ax.set_ylabel("GFR@10 of those kept (%)")
    ax.set_title(f"risk-coverage ({out['population']} test set)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
