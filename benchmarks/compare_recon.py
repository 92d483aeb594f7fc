"""Case-by-case comparison of two bench_recon runs on the same cases (issue 6).

Two models (or two settings) benchmarked with the same split, views and
seeds see the same images; this pairs their per-case CT registration errors
(mTRE before refinement, its depth part) and reconstruction errors (posed
ASSD, shape-only ASSD), counts the cases each wins, and tests the paired
difference (Wilcoxon signed-rank, two-sided). A failed registration counts
as an error larger than any other (only ranks enter the test).

    python benchmarks/compare_recon.py benchmarks/results/bench_recon_val.json \\
        benchmarks/results/bench_recon_val_zoom.json --name compare_recon_val_zoom

writes ``benchmarks/results/<name>.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _registration_data import machine, today, write_results  # noqa: E402

#: (table, per-case field, label); lower is better for all.
QUANTITIES = (
    ("registration_cases", "mtre_mm", "CT registration mTRE before refinement (mm)"),
    ("registration_cases", "depth_error_mm", "abs. depth error of the CT targets (mm)"),
    ("registration_cases", "projected_mtre_mm", "projected mTRE (mm)"),
    ("cases", "posed_assd_mm", "posed ASSD (mm)"),
    ("cases", "similarity_assd_mm", "ASSD after similarity alignment (mm)"),
)
FAILED = 1e6  # stands for a failed case: above every real error


def _values(run: dict, table: str, field: str) -> dict[int, float]:
    out = {}
    for case in run.get(table, []):
        v = case.get(field)
        ok = case.get("success", True) and v is not None and v != "inf"
        out[int(case["index"])] = abs(float(v)) if ok else FAILED
    return out


def _model_name(model) -> str:
    if isinstance(model, dict):
        return f"{model.get('file', '?')}, {model.get('epochs', '?')} epochs"
    return str(model)


def paired(a: dict[int, float], b: dict[int, float]) -> dict:
    """Paired statistics of ``b`` against ``a`` over their common case indices."""
    from scipy.stats import wilcoxon

    keys = sorted(set(a) & set(b))
    x, y = np.array([a[k] for k in keys]), np.array([b[k] for k in keys])
    if len(keys) == 0:
        return {"n": 0}
    diff = y - x
    res = {"n": len(keys), "median_a": float(np.median(x)), "median_b": float(np.median(y)),
           "failed_a": int((x >= FAILED).sum()), "failed_b": int((y >= FAILED).sum()),
           "b_better": int((diff < 0).sum()), "b_worse": int((diff > 0).sum()), "ties": int((diff == 0).sum()),
           "gfr10_a_pct": float(100 * (x > 10).mean()), "gfr10_b_pct": float(100 * (y > 10).mean())}
    res["wilcoxon_p"] = float(wilcoxon(x, y).pvalue) if np.any(diff != 0) else 1.0
    return res


def paired_table(rows: dict[str, dict], gfr_row: str, unit: str) -> list[str]:
    """Markdown lines of :func:`paired` results (``{label: result}``): GFR@10 is shown
    for the row ``gfr_row`` and the footnote counts its failures; ``unit`` names a
    case ("cases", "images")."""
    lines = ["| quantity | n | median A | median B | GFR@10 A | GFR@10 B | B better | B worse | Wilcoxon p |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, r in rows.items():
        if r["n"] == 0:
            lines.append(f"| {label} | 0 | - | - | - | - | - | - | - |")
            continue
        gfr = f"{r['gfr10_a_pct']:.1f} % | {r['gfr10_b_pct']:.1f} %" if label == gfr_row else "- | -"
        lines.append(f"| {label} | {r['n']} | {r['median_a']:.2f} | {r['median_b']:.2f} | {gfr} | "
                     f"{r['b_better']} | {r['b_worse']} | {r['wilcoxon_p']:.2g} |")
    first = rows[gfr_row]
    return lines + ["", f"A failed registration counts as an error above every other (failed: A "
                        f"{first.get('failed_a', 0)}, B {first.get('failed_b', 0)}). B better / worse: {unit} where "
                        "B's error is lower / higher than A's."]


def write_and_print(name: str, payload: dict, lines: list[str]) -> None:
    """Write ``results/<name>.{json,md}`` and print the table."""
    j, m = write_results(name, payload, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {j} and {m}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path, help="results JSON of the reference run (bench_recon)")
    ap.add_argument("b", type=Path, help="results JSON of the run compared with it")
    ap.add_argument("--name", default="compare_recon", help="results file name")
    args = ap.parse_args(argv)
    runs = []
    for p in (args.a, args.b):
        try:
            runs.append(json.loads(p.read_text()))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"compare_recon: error: {p}: cannot read a results file ({exc})") from exc
        if not isinstance(runs[-1], dict) or "cases" not in runs[-1]:
            raise SystemExit(f"compare_recon: error: {p}: not a bench_recon results file")
    rows = {label: paired(_values(runs[0], t, f), _values(runs[1], t, f)) for t, f, label in QUANTITIES}
    models = [r["summary"]["model"] for r in runs]
    payload = {"date": today(), "machine": machine(), "a": str(args.a), "b": str(args.b),
               "model_a": models[0], "model_b": models[1], "quantities": rows,
               "command": "python benchmarks/compare_recon.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    lines = [f"# {args.name}: case-by-case comparison of two bench_recon runs", "",
             f"Date {payload['date']}; {payload['machine']}.",
             f"A: `{args.a}` (model `{_model_name(models[0])}`).",
             f"B: `{args.b}` (model `{_model_name(models[1])}`).",
             f"Command: `{payload['command']}`.", "",
             *paired_table(rows, QUANTITIES[0][2], "cases")]
    write_and_print(args.name, payload, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
