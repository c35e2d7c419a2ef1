"""Confidence intervals: paired bootstrap over prompts, Wilson intervals for rates."""
from __future__ import annotations

from collections.abc import Callable

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
