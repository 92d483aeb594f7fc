"""benchmarks/compare_recon.py: pairing of two benchmark runs case by case."""
from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def compare(load_benchmark):
    return load_benchmark("compare_recon")


def test_paired_counts_wins_and_treats_failures_as_worst(compare):
    a = {i: float(i + 1) for i in range(10)}
    b = {i: v - 0.5 for i, v in a.items()}          # B better on every case ...
    b[3] = compare.FAILED                            # ... except one it fails
    b[99] = 0.0                                      # not in A: ignored
    res = compare.paired(a, b)
    assert res["n"] == 10
    assert (res["b_better"], res["b_worse"], res["ties"]) == (9, 1, 0)
    assert res["failed_a"] == 0 and res["failed_b"] == 1
    assert res["gfr10_a_pct"] == 0.0 and res["gfr10_b_pct"] == 10.0
    assert 0.0 < res["wilcoxon_p"] < 0.1


def test_identical_runs_tie(compare):
    a = {i: float(i) for i in range(8)}
    res = compare.paired(a, dict(a))
    assert res["ties"] == 8 and res["wilcoxon_p"] == 1.0


def test_command_writes_both_tables(compare, tmp_path, monkeypatch):
    def run(errors):
        return {"summary": {"model": {"file": "m.pt", "epochs": 1}},
                "registration_cases": [{"index": i, "success": e is not None, "mtre_mm": e,
                                        "depth_error_mm": e, "projected_mtre_mm": e}
                                       for i, e in enumerate(errors)],
                "cases": [{"index": i, "posed_assd_mm": 1.0, "similarity_assd_mm": 1.0}
                          for i in range(len(errors))]}
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(run([1.0, 2.0, 12.0, 4.0])))
    pb.write_text(json.dumps(run([0.5, 3.0, None, 3.0])))
    written = {}

    def _write(name, data, md):
        written.update(name=name, data=data, md=md)
        return tmp_path / f"{name}.json", tmp_path / f"{name}.md"

    monkeypatch.setattr(compare, "write_results", _write)
    assert compare.main([str(pa), str(pb), "--name", "cmp_test"]) == 0
    assert written["name"] == "cmp_test"
    reg = written["data"]["quantities"][compare.QUANTITIES[0][2]]
    assert "| 4 |" in written["md"]
    assert (reg["b_better"], reg["b_worse"], reg["failed_b"]) == (2, 2, 1)


def test_a_file_that_is_not_a_benchmark_is_named(compare, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(SystemExit, match="bad.json: not a bench_recon results file"):
        compare.main([str(bad), str(bad)])
