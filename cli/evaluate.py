"""``xrecon evaluate``: score predicted poses against ground truth and write the
seed-002-style table, a per-case CSV and plots (see :mod:`xrecon.evaluate` for
the file formats)."""
from __future__ import annotations

from pathlib import Path

import typer

from xrecon.cli.common import handle_errors


@handle_errors
def evaluate(
    predictions: Path = typer.Argument(..., help="Predicted poses: JSON {'cases': [{case_id, world_to_cam, "
                                                 "time_s}]} or CSV (case_id, time_s, m00..m33)."),
    ground_truth: Path = typer.Argument(..., help="Ground truth JSON: per case world_to_cam, targets_world, "
                                                  "specimen, camera (optional, for projected mTRE)."),
    out: Path = typer.Option(Path("evaluation"), "--out", "-o", help="Output folder (per_case.csv, summary.json, "
                                                                     "summary.md, error_histogram.png, "
                                                                     "success_curve.png)."),
    title: str = typer.Option("Registration results", help="Title of the markdown table."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the PNG plots."),
) -> None:
    """Registration errors per case (mTRE, projected mTRE, rotation, translation)
    and per specimen (mTRE 25/50/95th percentiles, GFR at 10 and 5 mm).

    A case without a prediction, or with a NaN pose, counts as a failure.
    """
    from xrecon.evaluate import evaluate as run_evaluation, markdown_table

    table, paths = run_evaluation(predictions, ground_truth, out, title=title, plots=not no_plots)
    typer.echo(markdown_table(table), nl=False)
    typer.echo(f"wrote {', '.join(str(p) for p in paths.values())}")
