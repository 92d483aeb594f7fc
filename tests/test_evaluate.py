"""The evaluation harness and `xrecon evaluate` on a small planted set of cases."""
import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from xrecon.errors import InputError
from xrecon.evaluate import evaluate, load_ground_truth, load_predictions
from xrecon.geometry import Camera, se3


def _write_set(tmp_path, shifts_mm, specimens, fail=(), fmt="json"):
    """Cases whose prediction is the truth shifted by ``shifts_mm`` along x (so mTRE = shift)."""
    cam = Camera.from_detector(1000.0, 2.0, 64, 64)
    targets = (np.random.default_rng(0).normal(size=(5, 3)) * 30).tolist()
    gt_cases, pred_cases = [], []
    for i, (s, sp) in enumerate(zip(shifts_mm, specimens)):
        T = se3.from_euler(torch.tensor([0.0, 10.0 * i, 0.0], dtype=torch.float64), torch.tensor([0.0, 0.0, 800.0])).numpy()
        gt_cases.append({"case_id": f"c{i}", "specimen": sp, "world_to_cam": T.tolist()})
        est = T.copy()
        est[0, 3] += s
        pred_cases.append({"case_id": f"c{i}", "world_to_cam": None if i in fail else est.tolist(), "time_s": 0.5})
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps({"camera": cam.to_dict(), "targets_world": targets, "cases": gt_cases}))
    if fmt == "json":
        pred_path = tmp_path / "pred.json"
        pred_path.write_text(json.dumps({"cases": pred_cases[:-1]}))  # the last case has no prediction
    else:
        pred_path = tmp_path / "pred.csv"
        with pred_path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case_id", "time_s"] + [f"m{i}{j}" for i in range(4) for j in range(4)])
            for c in pred_cases[:-1]:
                m = [""] * 16 if c["world_to_cam"] is None else np.asarray(c["world_to_cam"]).ravel().tolist()
                w.writerow([c["case_id"], c["time_s"]] + m)
    return pred_path, gt_path


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_per_case_errors_tables_and_files(tmp_path, fmt):
    shifts = [1.0, 2.0, 3.0, 7.0, 12.0, 0.5, 4.0]
    pred, gt = _write_set(tmp_path, shifts, ["a", "a", "a", "a", "b", "b", "b"], fail=(5,), fmt=fmt)
    table, paths = evaluate(pred, gt, tmp_path / "out", title="planted")
    rows = {r["case_id"]: r for r in table.rows}
    assert rows["c0"]["mtre_mm"] == pytest.approx(1.0) and rows["c3"]["translation_mm"] == pytest.approx(7.0)
    assert rows["c0"]["rotation_deg"] == pytest.approx(0.0, abs=1e-6)
    assert not rows["c5"]["success"] and np.isnan(rows["c5"]["mtre_mm"])  # failed
    assert not rows["c6"]["success"]  # missing prediction counts as a failure
    # projected mTRE: a 1 mm lateral shift at depth ~800 mm shows as ~1.25 mm on a 1000 mm SDD detector
    assert 1.0 < rows["c0"]["projected_mtre_mm"] < 1.6
    a, b, everything = table.mtre["a"], table.mtre["b"], table.mtre["all"]
    assert a.p50 == pytest.approx(2.5) and a.gfr[10.0] == 0.0 and a.gfr[5.0] == pytest.approx(0.25)
    assert b.n == 3 and b.n_failed == 2 and b.gfr[10.0] == pytest.approx(1.0)
    assert everything.n == 7 and everything.gfr[10.0] == pytest.approx(3 / 7)
    for name in ("per_case", "summary_json", "summary_md", "error_histogram", "success_curve"):
        assert paths[name].is_file() and paths[name].stat().st_size > 0
    with paths["per_case"].open() as f:
        assert len(list(csv.DictReader(f))) == 7
    summary = json.loads(paths["summary_json"].read_text())
    assert summary["mtre_mm"]["a"]["p50"] == pytest.approx(2.5) and summary["mtre_mm"]["b"]["p95"] == "inf"
    md = paths["summary_md"].read_text()
    assert "| a | 4 |" in md and "| all | 7 |" in md


def test_cli_prints_the_table_and_reports_bad_files(tmp_path):
    from xrecon.cli.main import app

    pred, gt = _write_set(tmp_path, [1.0, 2.0, 3.0], ["x", "x", "x"])
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", str(pred), str(gt), "--out", str(tmp_path / "o"), "--no-plots"])
    assert res.exit_code == 0, res.output
    assert "| x | 3 |" in res.output and (tmp_path / "o" / "summary.md").is_file()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = runner.invoke(app, ["evaluate", str(pred), str(bad), "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "bad.json" in res.output


def test_malformed_inputs_raise_input_errors_naming_the_file(tmp_path):
    p = tmp_path / "gt.json"
    p.write_text(json.dumps({"cases": [{"case_id": "a", "world_to_cam": [[1, 0], [0, 1]], "targets_world": [[0, 0, 0]]}]}))
    with pytest.raises(InputError, match="gt.json"):
        load_ground_truth(p)
    p.write_text(json.dumps({"cases": [{"case_id": "a", "world_to_cam": np.eye(4).tolist()}]}))
    with pytest.raises(InputError, match="targets_world"):
        load_ground_truth(p)
    p.write_text(json.dumps({"cases": []}))
    with pytest.raises(InputError):
        load_ground_truth(p)
    q = tmp_path / "pred.csv"
    q.write_text("case_id,time_s\na,1\n")
    with pytest.raises(InputError, match="m00"):
        load_predictions(q)
