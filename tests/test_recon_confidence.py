"""benchmarks/recon_confidence.py: the shares of gross and good registrations a
confidence flag catches, and the risk-coverage curve, on planted cases."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def conf(load_benchmark):
    return load_benchmark("recon_confidence")


def test_flag_shares_count_failures_as_gross(conf):
    mtre = np.array([1.0, 2.0, 3.0, 12.0, np.nan, 7.0])
    confident = np.array([True, True, False, False, False, True])
    f = conf.flag_shares(mtre, confident)
    assert f["n_gross"] == 2 and f["n_good"] == 3
    assert f["gross_flagged_not_confident"] == 1.0          # 12 mm and the failure: both flagged
    assert f["good_flagged_not_confident"] == pytest.approx(1 / 3)
    assert f["gfr10_confident"] == 0.0 and f["gfr10_all"] == pytest.approx(2 / 6)


def test_risk_coverage_keeps_the_highest_scores_first(conf):
    mtre = np.array([20.0, 1.0, 2.0, np.nan])
    score = np.array([0.1, 0.9, 0.8, np.nan])               # the gross cases score lowest
    rc = conf.risk_coverage(mtre, score)
    assert rc["coverage"] == [0.25, 0.5, 0.75, 1.0]
    assert rc["gfr10"] == pytest.approx([0.0, 0.0, 1 / 3, 0.5])
