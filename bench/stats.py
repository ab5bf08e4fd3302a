"""Summaries of timing samples and the ratios between them."""

from __future__ import annotations

import math
from typing import Any


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, linear between the closest ranks."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def summarize_ms(samples_s: list[float]) -> dict[str, Any]:
    """n, p50/p90/p99, mean, min, max of samples given in seconds, reported in milliseconds."""
    values = sorted(s * 1000 for s in samples_s)
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(percentile(values, 0.50), 3),
        "p90": round(percentile(values, 0.90), 3),
        "p99": round(percentile(values, 0.99), 3),
        "mean": round(sum(values) / len(values), 3),
        "min": round(values[0], 3),
        "max": round(values[-1], 3),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator rounded to 3 digits; None when either is missing or zero."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    if math.isnan(numerator) or math.isnan(denominator):
        return None
    return round(numerator / denominator, 3)
