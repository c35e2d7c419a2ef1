"""Small helpers shared by the weight- and attention-based head measurements: bootstrap
intervals of per-head means, and per-query-head (ungrouped) value weights and activations for
grouped-query attention."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch


def boot_heads(per: np.ndarray, confidence: float = 0.95, seed: int = 0,
               n_boot: int = 1000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over axis 0 of ``per`` ([n, ...], NaN = absent) and its percentile bootstrap
    interval, resampling the n rows (prompts, names) together for every cell."""
    per = np.asarray(per, dtype=float)
    n = per.shape[0]
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(per, 0) if n else np.full(per.shape[1:], np.nan)
        if n < 2:
            return mean, mean.copy(), mean.copy()
        idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        boots = np.nanmean(per[idx], 1)
        alpha = (1 - confidence) / 2
        lo, hi = np.nanquantile(boots, [alpha, 1 - alpha], axis=0)
    return mean, lo, hi


def widen_unit(mean: np.ndarray, lo: np.ndarray, hi: np.ndarray, n: "int | np.ndarray",
               confidence: float = 0.95, *, rate: bool = True
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` of a quantity in [0, 1], widened to cover the Wilson interval at ``mean``
    over ``n`` samples (per cell when an array), and kept in [0, 1].

    ``rate``: the samples are 0/1 (a rate over names): always widened, as for every 0/1
    metric. Otherwise (attention weights, continuous in [0, 1]) only a degenerate interval is
    widened: a saturated score (a planted head attending with weight 1.0 on every sequence)
    bootstraps to [1, 1], no room for the next sequence; the Wilson interval is the widest a
    [0, 1] variable with that mean can need (its variance is at most p (1 - p)).
    """
    from ..stats import wilson_ci

    n = np.broadcast_to(np.asarray(n, dtype=float), np.shape(mean))
    w_lo, w_hi = wilson_ci(np.asarray(mean, dtype=float) * n, n, confidence)
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    widen = np.ones(np.shape(mean), bool) if rate else ~(hi - lo > 1e-9)
    lo = np.where(widen, np.fmin(lo, w_lo), lo)
    hi = np.where(widen, np.fmax(hi, w_hi), hi)
    return np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)


def per_query_head(x: "torch.Tensor", n_heads: int, dim: int) -> "torch.Tensor":
    """``x`` with its key/value-head axis ``dim`` expanded to one entry per query head.

    Grouped-query attention (Llama-class models) shares each k/v head among
    ``n_heads // n_kv`` consecutive query heads (HF's ``repeat_kv``); TransformerLens's bridge
    keeps ``W_V`` and ``hook_v`` grouped ([.., n_kv, ..]), so per-query-head quantities must
    repeat them. A tensor that already has ``n_heads`` entries is returned as is.
    """
    k = x.shape[dim]
    if k == n_heads:
        return x
    if n_heads % k:
        from ..errors import CircuitCheckError

        raise CircuitCheckError(f"{k} key/value heads do not divide {n_heads} query heads")
    return x.repeat_interleave(n_heads // k, dim=dim)


def W_V_per_head(model: Any) -> "torch.Tensor":
    """[L, H, d_model, d_head] value weights of every *query* head (ungrouped)."""
    return per_query_head(model.W_V.detach(), model.cfg.n_heads, 1)
