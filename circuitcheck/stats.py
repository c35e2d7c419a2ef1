"""Confidence intervals: paired bootstrap over prompts, Wilson intervals for rates; and the
verdict of an interval against a threshold (used by sweeps and the ``assert_*`` helpers)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def bootstrap_ci(
    stat: Callable[[np.ndarray], np.ndarray],
    n: int,
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over ``n`` prompts, resampled in pairs.

    ``stat`` takes an index array of shape [n_boot, n] and returns [n_boot] statistics, so
    paired quantities (circuit vs full model on the same prompts) are resampled together and
    the whole bootstrap is a few vectorised numpy operations.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.asarray(stat(idx), dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def t_quantile(p: float, df: float) -> float:
    """Student-t quantile by its Cornish-Fisher expansion in the normal quantile (Abramowitz &
    Stegun 26.7.5), with no scipy. Checked by integrating the t density: the tail beyond it is
    within 1% of 1 - p for df >= 10 even at p = 0.9999, and up to ~15% more than 1 - p for
    df 3-5 in such far tails; always above the normal quantile."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(p)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return float(z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4)


def wilson_ci(successes: np.ndarray, trials: np.ndarray, confidence: float = 0.95
              ) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for binomial rates (element-wise)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    s = np.asarray(successes, dtype=float)
    t = np.maximum(np.asarray(trials, dtype=float), 1e-12)
    p = s / t
    den = 1 + z**2 / t
    centre = (p + z**2 / (2 * t)) / den
    half = z * np.sqrt(p * (1 - p) / t + z**2 / (4 * t**2)) / den
    return centre - half, centre + half


# -- verdicts -------------------------------------------------------------------------------

HOLDS, FAILED, INCONCLUSIVE, UNMEASURABLE = "held", "failed", "inconclusive", "unmeasurable"


def verdict(m: Any, *, at_least: float | None = None, at_most: float | None = None) -> str:
    """``held`` / ``failed`` / ``inconclusive`` / ``unmeasurable`` for a threshold.

    ``m`` is a measurement (its ``ci`` and ``problem``): held when the whole interval is past the
    threshold, failed when the whole interval is short of it, inconclusive otherwise. It lives
    here, below the measurements, so a sweep decides its cells by the assertions' rule.
    """
    if (at_least is None) == (at_most is None):
        raise ValueError("give exactly one of at_least= or at_most=")
    if m.problem:
        return UNMEASURABLE
    lo, hi = m.ci
    if at_least is not None:
        if lo >= at_least:
            return HOLDS
        return FAILED if hi < at_least else INCONCLUSIVE
    if hi <= at_most:
        return HOLDS
    return FAILED if lo > at_most else INCONCLUSIVE
