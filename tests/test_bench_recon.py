"""benchmarks/bench_recon.py: the ``--set FIELD=VALUE`` overrides of ReconConfig."""
from __future__ import annotations

import pytest

from xrecon.methods.recon.pipeline import ReconConfig


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_recon")


def test_overrides_are_parsed_as_each_fields_type(bench):
    cfg = bench.recon_config(["pnp_max_points=5000", "reproj_threshold_net_px=2", "refine_shape=false",
                              "mask_threshold=0.4", "depth_range_mm=400,1200"])
    assert cfg.pnp_max_points == 5000 and isinstance(cfg.pnp_max_points, int)
    assert cfg.reproj_threshold_net_px == 2.0
    assert cfg.refine_shape is False
    assert cfg.mask_threshold == 0.4
    assert cfg.depth_range_mm == (400.0, 1200.0)
    # everything not named keeps the product's value
    assert cfg.max_sigma_mm == ReconConfig().max_sigma_mm
    assert bench.recon_config([]) == ReconConfig()


@pytest.mark.parametrize("item, words", [("nope=1", "FIELD one of"), ("pnp_max_points", "FIELD=VALUE"),
                                          ("pnp_max_points=abc", "not a valid value"),
                                          ("refine_shape=maybe", "not a valid value")])
def test_bad_overrides_name_the_problem(bench, item, words):
    with pytest.raises(SystemExit, match=words):
        bench.recon_config([item])
