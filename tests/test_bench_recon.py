"""benchmarks/bench_recon.py: the ``--set FIELD=VALUE`` overrides of ReconConfig, and the
registration table per band of the reconstruction's coverage."""
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


def test_the_residual_step_is_switched_off_or_set_field_by_field(bench):
    assert bench.recon_config(["residual=none"]).residual is None
    cfg = bench.recon_config(["residual=noise_mm:2,max_points:500"]).residual
    assert cfg.noise_mm == 2.0 and cfg.max_points == 500 and isinstance(cfg.max_points, int)
    assert cfg.length_mm == ReconConfig().residual.length_mm  # the rest unchanged


@pytest.mark.parametrize("item, words", [("nope=1", "FIELD one of"), ("pnp_max_points", "FIELD=VALUE"),
                                          ("pnp_max_points=abc", "not a valid value"),
                                          ("refine_shape=maybe", "not a valid value"),
                                          ("residual=nope:1", "not a valid value")])
def test_bad_overrides_name_the_problem(bench, item, words):
    with pytest.raises(SystemExit, match=words):
        bench.recon_config([item])


def test_registrations_are_banded_by_the_reconstructions_coverage(bench):
    rows = [{"index": 0, "mtre_mm": 3.0}, {"index": 1, "mtre_mm": 12.0}, {"index": 2, "mtre_mm": float("nan")},
            {"index": 3, "mtre_mm": 4.0}, {"index": 4, "mtre_mm": 1.0}, {"index": 5, "mtre_mm": 2.0}]
    # 0.5 and 0.8 open the next band; a coverage of exactly 1 is in the last; case 5 has no reconstruction
    coverage = {0: 0.1, 1: 0.5, 2: 0.79, 3: 0.8, 4: 1.0, 5: None}
    low, mid, high = bench.by_coverage(rows, coverage)
    assert [b["n"] for b in (low, mid, high)] == [1, 2, 2]
    assert low["mtre_mm"]["median"] == 3.0 and low["gfr10"] == 0.0
    assert mid["mtre_mm"]["n_failed"] == 1 and mid["gfr10"] == 1.0  # 12 mm and a failed registration
    assert high["mtre_mm"]["median"] == 2.5 and high["gfr10"] == 0.0


def test_png16_round_trip_is_the_readers_image(load_benchmark, tmp_path):
    """bench_recon_stability's 16-bit image equals what write_image + read_xray give back."""
    import numpy as np

    from xrecon.anatomy.xray_io import read_xray, write_image

    stab = load_benchmark("bench_recon_stability")
    img = np.random.default_rng(0).normal(3.0, 1.0, (16, 16)).astype(np.float32)
    q = stab.as_png16(img)
    scaled = (img - img.min()) / (img.max() - img.min())
    assert np.abs(q - scaled).max() <= 0.5 / 65535 + 1e-7 and q.min() == 0.0 and q.max() == 1.0
    write_image(tmp_path / "x.png", scaled, bits=16)
    back, _ = read_xray(tmp_path / "x.png", sdd_mm=1000.0, pixel_spacing_mm=1.0)
    assert np.array_equal(back, q)
