"""Per-head ablation sweeps (seed 001, the per-head mean-ablation notebook, as written).

Every head is ablated alone (default: ``layer-mean``, its ``z`` replaced by the mean ``z`` of
its layer's heads at the same prompt and position, as the notebook does) and the metric read
on every prompt; the change against the full model is reported both as the notebook prints it
(absolute: ``p_ablated - p_full``, in the metric's units) and relative to the full model's mean
(``change / |mean full|``). Intervals are over prompts and *simultaneous* over all swept heads
(Student-t intervals at level 1 - (1 - confidence) / heads, Bonferroni), so "no other head
lowers p by as much" is a claim about every head at once, not one head at a time.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..circuit import Circuit, Head, format_head, parse_head
from ..errors import NotMeasurableError
from ..stats import t_quantile
from ._result import ResultProtocol, jsonable


@dataclass(frozen=True, eq=False)
class HeadSweep(ResultProtocol):
    """The per-head sweep: ``change[layer, head]`` (absolute) and ``relative``, with
    simultaneous intervals; ``per_prompt`` is ``[N, L, H]`` (NaN for heads not swept)."""

    metric: str
    ablation: str
    full: float
    change: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    per_prompt: np.ndarray
    confidence: float
    problem: str | None = None

    @property
    def n(self) -> int:
        return int(self.per_prompt.shape[0])

    @property
    def relative(self) -> np.ndarray:
        """The change over |the full model's mean metric| (NaN when that is 0)."""
        return self.change / abs(self.full) if self.full else self.change * np.nan

    def drop(self, head: Any) -> float:
        """How much ablating ``head`` lowers the metric (absolute; negative: it raises it)."""
        layer, h = parse_head(head)
        return float(-self.change[layer, h])

    def ranking(self) -> list[Head]:
        """Swept heads, largest drop first."""
        order = np.argsort(np.nan_to_num(self.change, nan=np.inf), axis=None, kind="stable")
        H = self.change.shape[1]
        return [(int(i // H), int(i % H)) for i in order if np.isfinite(self.change.flat[i])]

    def table(self):
        import pandas as pd

        rel = self.relative
        return pd.DataFrame([{"head": format_head(h), "change": float(self.change[h]),
                              "relative": float(rel[h]), "ci_low": float(self.ci_low[h]),
                              "ci_high": float(self.ci_high[h])} for h in self.ranking()])

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"metric": self.metric, "ablation": self.ablation, "full": self.full,
                         "change": self.change, "relative": self.relative,
                         "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n,
                         "confidence": self.confidence, "problem": self.problem})

    def summary(self) -> str:
        top = ", ".join(f"{format_head(h)} {self.change[h]:+.3f}" for h in self.ranking()[:3])
        return (f"per-head {self.ablation} sweep of {self.metric} on {self.n} prompts "
                f"(full model {self.full:.3f}); largest drops {top}")


def head_sweep(model: Any, task: Any, *, heads: Iterable[Any] | None = None,
               ablation: str = "layer-mean", metric: str = "prob", reference: str | None = None,
               confidence: float = 0.95, batch_size: int | None = None) -> HeadSweep:
    """Ablate each head (every head, or ``heads``) alone and measure the metric's change (see
    the module docstring); all heads × prompts run as one batched set of forward passes."""
    from .circuit import _metric_rows, _setup

    L, H = model.cfg.n_layers, model.cfg.n_heads
    swept = ([(l, h) for l in range(L) for h in range(H)] if heads is None else
             list(dict.fromkeys(parse_head(h) for h in heads)))
    circuits = [Circuit({"ablated": [h]}) for h in swept]
    s = _setup(model, task, circuits, ablation, metric, reference, "ratio", 0, confidence,
               batch_size)
    L_H = (L, H)
    try:
        rows, base = _metric_rows(s, circuits, [True] * len(circuits), with_baselines=True)
    except NotMeasurableError as exc:  # the machinery did not apply the ablations
        nan = np.full(L_H, np.nan)
        return HeadSweep(s.metric.name, s.values.describe(), float("nan"), nan, nan, nan,
                         np.full((len(task.prompts),) + L_H, np.nan), confidence, str(exc))
    full = base["full"]  # [N]
    diff = rows - full[None, :]  # [V, N]
    n = diff.shape[1]
    mean = diff.mean(1)
    problem = None
    if n < 2:
        problem = (f"only {n} prompt: an interval over prompts cannot be estimated from one; "
                   "use more prompts (20 or more)")
        half = np.full(len(swept), np.nan)
    else:
        t = t_quantile(1 - (1 - confidence) / (2 * len(swept)), n - 1)
        half = t * diff.std(1, ddof=1) / np.sqrt(n)
    grid = np.full((L, H), np.nan)
    lo, hi, per = grid.copy(), grid.copy(), np.full((n, L, H), np.nan)
    for i, (layer, h) in enumerate(swept):
        grid[layer, h], lo[layer, h], hi[layer, h] = mean[i], mean[i] - half[i], mean[i] + half[i]
        per[:, layer, h] = diff[i]
    if problem is None and np.allclose(diff, 0, atol=1e-7):
        problem = (f"no ablation changed the {s.metric.name} on any prompt "
                   f"({s.values.describe()}): nothing to compare; use another ablation")
    return HeadSweep(s.metric.name, s.values.describe(), float(full.mean()), grid, lo, hi, per,
                     confidence, problem)


__all__ = ["HeadSweep", "head_sweep"]
