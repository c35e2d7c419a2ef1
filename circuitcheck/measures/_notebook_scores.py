"""Seed 000's own Monte-Carlo scores, kept beside circuitcheck's regression estimates.

The stochastic-ablation notebook scores a head by counting, not by regression:

- **importance** = Σ over *successful* trials of the head's keep-mask (1 kept, 0 ablated),
  normalised so the scores of all heads sum to 1: heads that are kept when the task succeeds;
- **exclusion penalty** = Σ over *failed* trials of (1 − mask), normalised to sum 1: heads that
  are ablated when the task fails.

Both need a success/failure outcome per trial, so they are defined for binary metrics (top-1)
only and are ``None`` otherwise. They differ from ``HeadEffects.effect`` in three ways, which is
why circuitcheck decides claims on the regression: (1) counts rise with how often a head is kept
at all (≈ ``keep_prob`` × successes for a head that does nothing), so every head gets about
``1 / n_heads`` and an effect is a small excess over that; (2) the normalisation couples all
heads, so no head's score has its own interval; (3) other heads' variance is not removed. The
notebook's outliers are the heads above a percentile of these scores in *either* regime
(``StochasticAblation.select(by="union", score="notebook")``).
"""
from __future__ import annotations

import numpy as np


def notebook_scores(masks: np.ndarray, metric: np.ndarray, regime: str) -> np.ndarray | None:
    """[L, H] scores summing to 1 (NaN when no trial has the counted outcome), or None when the
    metric is not binary. ``masks`` [T, L, H] bool (True = kept), ``metric`` [T]."""
    y = np.asarray(metric, dtype=float)
    if not len(y) or not np.isin(y, (0.0, 1.0)).all():
        return None
    m = np.asarray(masks, dtype=float)
    if regime == "importance":
        counts = m[y == 1].sum(0)
    else:
        counts = (1 - m[y == 0]).sum(0)
    total = counts.sum()
    return counts / total if total > 0 else np.full(m.shape[1:], np.nan)
