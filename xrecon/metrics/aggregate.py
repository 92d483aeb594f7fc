"""Aggregates of per-case errors: percentiles, mean, std and gross failure rates.

Per-case values come from :mod:`xrecon.metrics.registration` (one value per
case). A case that failed (no pose) carries NaN or inf; it is never dropped:

* it counts as a gross failure at every threshold;
* it sorts as ``+inf`` in the percentiles (so a 95th percentile that reaches a
  failed case reads ``inf``, as it should);
* mean and std are over the finite cases only, and ``n_failed`` says how many
  were left out of them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from xrecon.errors import ShapeError

#: The thresholds of the seed tables (mm).
GFR_THRESHOLDS_MM = (10.0, 5.0)


@dataclass(frozen=True)
class ErrorSummary:
    """Summary of ``n`` per-case errors (units of the input, e.g. mm).

    ``gfr`` maps a threshold to the share of cases (0..1) above it or failed.
    """

    n: int
    n_failed: int
    mean: float
    std: float
    p25: float
    p50: float
    p95: float
    gfr: dict[float, float]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gfr"] = {f"{k:g}": v for k, v in self.gfr.items()}
        return d


def percentiles(values, qs=(25.0, 50.0, 95.0)) -> np.ndarray:
    """Linear-interpolated percentiles ``(len(qs),)`` where NaN / inf count as ``+inf``.

    ``numpy.percentile`` returns NaN when it interpolates towards an infinite
    value; here any interpolation that touches a failed case gives ``inf``.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return np.full(len(qs), np.nan)
    v = np.sort(np.where(np.isfinite(v), v, np.inf))
    out = []
    for q in qs:
        pos = (v.size - 1) * float(q) / 100.0
        lo, hi = int(np.floor(pos)), int(np.ceil(pos))
        frac = pos - lo
        if not np.isfinite(v[lo]) or (frac > 0 and not np.isfinite(v[hi])):
            out.append(np.inf)
        else:
            out.append(v[lo] + (v[hi] - v[lo]) * frac)
    return np.asarray(out)


def gross_failure_rate(values, threshold_mm: float = 10.0) -> float:
    """Share of cases (0..1) with an error above ``threshold_mm`` or non-finite."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return float("nan")
    return float(np.mean(~np.isfinite(v) | (v > threshold_mm)))


def summarize(values, thresholds_mm=GFR_THRESHOLDS_MM) -> ErrorSummary:
    """Summarise per-case errors ``values: (B,)`` (numpy or torch)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ShapeError("values", "(B,) one value per case", v.shape)
    finite = v[np.isfinite(v)]
    p25, p50, p95 = percentiles(v)
    return ErrorSummary(
        n=int(v.size),
        n_failed=int(v.size - finite.size),
        mean=float(finite.mean()) if finite.size else float("nan"),
        std=float(finite.std()) if finite.size else float("nan"),
        p25=float(p25),
        p50=float(p50),
        p95=float(p95),
        gfr={float(t): gross_failure_rate(v, t) for t in thresholds_mm},
    )


def summarize_groups(values, groups, thresholds_mm=GFR_THRESHOLDS_MM) -> dict[str, ErrorSummary]:
    """Summaries per group (e.g. per specimen / CT) plus ``"all"``.

    ``values: (B,)`` per-case errors; ``groups: (B,)`` a label per case.
    Groups appear in sorted order, ``"all"`` last.
    """
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    g = np.asarray([str(x) for x in groups])
    if g.shape != v.shape:
        raise ShapeError("groups", f"({v.size},) one label per case", g.shape)
    out = {name: summarize(v[g == name], thresholds_mm) for name in sorted(set(g.tolist()))}
    out["all"] = summarize(v, thresholds_mm)
    return out
