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
