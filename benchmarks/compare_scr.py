"""Case-by-case comparison of two bench_scr runs on the same test images (issue 5).

Pairs the per-image mTRE (network + PnP, before refinement) and the absolute
depth error of one method (default ``scr``) in two results files, counts the
images each wins and tests the paired difference (Wilcoxon signed-rank,
two-sided), with the rules of ``compare_recon.py`` (a failed registration
counts as an error above every other). The two runs must have used the same
test data: when both files carry ``test_data_sha256`` and the digests differ,
the comparison is refused.

    python benchmarks/compare_scr.py benchmarks/results/bench_scr_shipped_recheck.json \\
        benchmarks/results/bench_scr_ray01b.json --name compare_scr_ray01b

writes ``benchmarks/results/<name>.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _registration_data import machine, today  # noqa: E402
from compare_recon import FAILED, paired, paired_table, write_and_print  # noqa: E402

#: (per-case field, label); lower (in absolute value) is better for both.
QUANTITIES = (
    ("per_case_mtre_mm", "mTRE before refinement (mm)"),
    ("per_case_depth_error_mm", "abs. depth error of the targets (mm)"),
)


def per_case(method_result: dict, field: str) -> dict[int, float]:
    """``{image index: |value|}``, a missing or infinite value (failed PnP) as ``FAILED``."""
    out = {}
    for i, v in enumerate(method_result.get(field, [])):
        ok = v is not None and v not in ("inf", "-inf")
        out[i] = abs(float(v)) if ok else FAILED
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path, help="results JSON of the reference run (bench_scr)")
    ap.add_argument("b", type=Path, help="results JSON of the run compared with it")
    ap.add_argument("--method", default="scr", help="method to compare (scr, posenet, landmarks)")
    ap.add_argument("--name", default="compare_scr", help="results file name")
    args = ap.parse_args(argv)
    runs = []
    for p in (args.a, args.b):
        try:
            run = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"compare_scr: error: {p}: cannot read a results file ({exc})") from exc
        if not isinstance(run, dict) or args.method not in run.get("methods", {}):
            raise SystemExit(f"compare_scr: error: {p}: not a bench_scr results file with method {args.method!r}")
        runs.append(run)
    digests = [r.get("test_data_sha256") for r in runs]
    if None not in digests and digests[0] != digests[1]:
        raise SystemExit(f"compare_scr: error: {args.a} and {args.b} were measured on different test data "
                         f"(sha256 {digests[0][:12]}... vs {digests[1][:12]}...): their images cannot be paired")
    methods = [r["methods"][args.method] for r in runs]
    rows = {label: paired(per_case(methods[0], f), per_case(methods[1], f)) for f, label in QUANTITIES}
    payload = {"date": today(), "machine": machine(), "a": str(args.a), "b": str(args.b), "method": args.method,
               "model_a": methods[0].get("model"), "model_b": methods[1].get("model"),
               "test_data_sha256": digests, "quantities": rows,
               "command": "python benchmarks/compare_scr.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    same = ("same test data (sha256 " + digests[0][:12] + "...)" if None not in digests
            else "test data digest missing in at least one file: same data not checked")
    lines = [f"# {args.name}: case-by-case comparison of two bench_scr runs ({args.method})", "",
             f"Date {payload['date']}; {payload['machine']}; {same}.",
             f"A: `{args.a}` (model `{payload['model_a']}`).",
             f"B: `{args.b}` (model `{payload['model_b']}`).",
             f"Command: `{payload['command']}`.", "",
             *paired_table(rows, QUANTITIES[0][1], "images")]
    write_and_print(args.name, payload, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
