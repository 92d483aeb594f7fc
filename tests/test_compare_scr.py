"""benchmarks/compare_scr.py: pairing of two bench_scr runs image by image."""
from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def compare(load_benchmark):
    return load_benchmark("compare_scr")


def _run(mtre, depth, digest="d" * 64, model="m.pt"):
    return {"methods": {"scr": {"model": model, "per_case_mtre_mm": mtre, "per_case_depth_error_mm": depth}},
            "test_data_sha256": digest}


def test_per_case_reads_failures_and_signed_depths(compare):
    values = compare.per_case({"per_case_mtre_mm": [1.5, None, "inf", 3.0]}, "per_case_mtre_mm")
    assert values == {0: 1.5, 1: compare.FAILED, 2: compare.FAILED, 3: 3.0}
    assert compare.per_case({"d": [-4.0, 2.0]}, "d") == {0: 4.0, 1: 2.0}


def test_compare_counts_wins_and_writes_results(compare, tmp_path, monkeypatch):
    written = {}

    def fake_write(name, payload, lines):
        written.update(name=name, payload=payload, markdown="\n".join(lines))

    monkeypatch.setattr(compare, "write_and_print", fake_write)
    a = _run([5.0, 6.0, 7.0, 8.0, None], [-5.0, 6.0, 7.0, 8.0, None])
    b = _run([4.0, 5.0, 6.0, 9.0, 2.0], [4.0, -5.0, 6.0, 9.0, 2.0])
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    assert compare.main([str(pa), str(pb), "--name", "t"]) == 0
    rows = written["payload"]["quantities"]
    mtre = rows["mTRE before refinement (mm)"]
    # B better on images 0, 1, 2 and on the one A failed; worse on image 3
    assert (mtre["b_better"], mtre["b_worse"], mtre["failed_a"], mtre["failed_b"]) == (4, 1, 1, 0)
    depth = rows["abs. depth error of the targets (mm)"]
    assert depth["b_better"] == 4 and depth["median_b"] == 5.0  # absolute depth errors
    assert "same test data" in written["markdown"] and written["name"] == "t"


def test_compare_refuses_runs_on_different_test_data(compare, tmp_path):
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(_run([1.0], [1.0], digest="a" * 64)))
    pb.write_text(json.dumps(_run([1.0], [1.0], digest="b" * 64)))
    with pytest.raises(SystemExit, match="different test data"):
        compare.main([str(pa), str(pb)])


def test_compare_refuses_a_file_without_the_method(compare, tmp_path):
    pa = tmp_path / "a.json"
    pa.write_text(json.dumps({"cases": []}))
    with pytest.raises(SystemExit, match="not a bench_scr results file"):
        compare.main([str(pa), str(pa)])
