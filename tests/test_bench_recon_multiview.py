"""benchmarks/bench_recon_multiview.py: its protocols name views it renders, the
out-of-span subjects split between the two populations, and the table marks an
empty confident subset."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_recon_multiview")


def test_every_protocol_uses_rendered_views_and_starts_from_its_single_view(bench):
    for views in bench.PROTOCOLS.values():
        assert views and set(views) <= set(bench.VIEW_NAMES)
    assert bench.PROTOCOLS["two C-arm shots 30 deg apart"] == ["a+0", "a+30"]
    assert bench.PROTOCOLS["single view (C-arm a)"] == ["a+0"]
    assert bench.FIXED_VIEWS["lateral"] - bench.FIXED_VIEWS["AP"] == 90.0


def test_markdown_marks_an_empty_confident_subset(bench):
    p = {"n": 2, "n_failed": 0, "median": 1.0, "p25": 0.5, "p95": 2.0}
    row = {"protocol": "x", "views": ["AP"], "posed_assd_mm": p, "similarity_assd_mm": p, "abs_depth_error_mm": p,
           "centroid_error_mm": p, "views_refused": 0, "mtre_mm": p, "gfr10": 0.5, "gfr5": 0.5,
           "confident_subset": {"n": 0, "mtre_mm": {"n": 0, "n_failed": 0}, "gfr10": float("nan")}}
    summary = {"date": "d", "machine": "m", "data": "x", "model": {"file": "f", "epochs": 1, "command": "c"},
               "command": "c", "protocols": [row]}
    text = bench.markdown(summary)
    assert "| x | 0 | - | - |" in text and "nan" not in text
    assert "| x | 1.00 [2.00] |" in text and "50.0 %" in text
