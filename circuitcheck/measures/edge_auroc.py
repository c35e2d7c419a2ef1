"""How well edge scores find a known circuit: the AUROC of |score| against the true edges.

AUROC = P(|score| of a true edge > |score| of any other edge), ties counting one half: the
Mann-Whitney U of the true edges' ranks among all edges (ties given their average rank),
over n_pos x n_neg. 1 ranks every true edge first, 0.5 is chance. The ROC points are the
(false positive rate, true positive rate) of keeping every edge with |score| >= t, for each
distinct |score| t from the largest down; the trapezoid area under them equals the AUROC.

Interval: the edges are the whole population, but the scores are estimated from prompts, so
the AUROC is uncertain through them. When the scores carry their per-prompt rows
(``EdgeScores.per_prompt``, kept by ``cc.edge_scores``), a percentile bootstrap over prompts
resamples the prompts, recomputes every edge's mean score and the AUROC from it; scores with
no per-prompt rows (read from a file) have no interval (NaN).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..edge_circuit import EdgeCircuit
from ..errors import CircuitCheckError, CircuitError
from ._result import ResultProtocol, jsonable
from .edge_scores import EdgeScores


@dataclass(frozen=True, eq=False)
class EdgeAuroc(ResultProtocol):
    """The AUROC of edge scores against a true circuit (``value``), with its ROC points and
    its ``confidence`` interval over prompts (``ci_low``/``ci_high``, NaN when the scores have
    no per-prompt rows; ``per_boot`` the bootstrap AUROCs, ``n`` the prompts)."""

    value: float
    n_pos: int
    n_neg: int
    fpr: np.ndarray
    tpr: np.ndarray
    method: str = ""
    truth: str = ""
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    confidence: float = 0.95
    n: int = 0
    seed: int = 0
    per_boot: np.ndarray | None = field(default=None, repr=False)

    def table(self) -> Any:
        """The ROC points: fpr, tpr."""
        import pandas as pd

        return pd.DataFrame({"fpr": self.fpr, "tpr": self.tpr})

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"kind": "edge_auroc", "value": self.value, "n_pos": self.n_pos,
                         "n_neg": self.n_neg, "method": self.method, "truth": self.truth,
                         "ci": [self.ci_low, self.ci_high], "confidence": self.confidence,
                         "n": self.n, "seed": self.seed, "fpr": self.fpr, "tpr": self.tpr})

    def summary(self) -> str:
        ci = (f" {self.confidence:.0%} CI [{self.ci_low:.3f}, {self.ci_high:.3f}] over "
              f"{self.n} prompts" if np.isfinite(self.ci_low) else " (no interval)")
        return (f"edge AUROC {self.value:.3f}{ci} ({self.method} scores vs {self.truth!r}: "
                f"{self.n_pos} true edges, {self.n_neg} others)")


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x``, tied values sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    _, start, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.repeat(start + (counts + 1) / 2, counts)
    return ranks


def auroc(a: np.ndarray, label: np.ndarray) -> float:
    """Mann-Whitney AUROC of the values ``a`` for the positives ``label`` (ties count 1/2)."""
    n_pos = int(label.sum())
    n_neg = len(label) - n_pos
    return float((average_ranks(a)[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _boot(per_prompt: np.ndarray, label: np.ndarray, confidence: float, seed: int,
          n_boot: int) -> tuple[float, float, np.ndarray]:
    """Percentile bootstrap of the AUROC over prompts (rows of ``per_prompt``, [N, E])."""
    rng = np.random.default_rng(seed)
    n = per_prompt.shape[0]
    got = np.empty(n_boot)
    for b in range(n_boot):
        mean = per_prompt[rng.integers(0, n, n)].mean(0, dtype=np.float64)
        got[b] = auroc(np.abs(mean), label)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(got, [alpha, 1 - alpha])
    return float(lo), float(hi), got


def edge_auroc(scores: EdgeScores, truth: EdgeCircuit, *, confidence: float = 0.95,
               seed: int = 0, n_boot: int = 1000) -> EdgeAuroc:
    """The AUROC of ``|scores|`` at telling ``truth``'s edges from every other edge (module
    docstring), with a bootstrap interval over prompts when the scores carry per-prompt rows.
    Positions of ``truth``'s edges are ignored: scores are per edge."""
    from .. import _validate

    confidence = _validate.open_unit(confidence, "confidence")
    n_boot = _validate.count(n_boot, "n_boot", 1)
    if not isinstance(scores, EdgeScores):
        raise CircuitCheckError(f"scores must be cc.EdgeScores (from cc.edge_scores), got "
                                f"{type(scores).__name__}")
    if not isinstance(truth, EdgeCircuit):
        raise CircuitCheckError(f"truth must be a cc.EdgeCircuit, got {type(truth).__name__}")
    if truth.shape is not None and truth.shape != scores.shape:
        raise CircuitError(f"the true circuit is for a {truth.shape[0]}-layer x "
                           f"{truth.shape[1]}-head model but the scores for a "
                           f"{scores.shape[0]} x {scores.shape[1]} one; score the model the "
                           "circuit belongs to")
    index = {n: i for i, n in enumerate(scores.names)}
    unknown = [e.name for e in truth.edges if e.name not in index]
    if unknown:
        raise CircuitError(f"true edges {unknown[:3]} are not edges of the scored graph "
                           f"({scores.shape[0]} layers x {scores.shape[1]} heads); check the "
                           "names (e.g. 'a0.h2->a1.h1<k>')")
    label = np.zeros(len(scores.names), dtype=bool)
    label[[index[e.name] for e in truth.edges]] = True
    n_pos, n_neg = int(label.sum()), int((~label).sum())
    if n_pos == 0 or n_neg == 0:
        raise CircuitCheckError(f"an AUROC needs true edges and other edges; the true circuit "
                                f"has {n_pos} of the graph's {len(label)} edges")
    a = np.abs(np.asarray(scores.values, dtype=float))
    if not np.isfinite(a).all():
        raise CircuitCheckError("some edge scores are not finite; recompute them")
    value = auroc(a, label)
    levels = np.unique(a)[::-1]
    tpr = np.concatenate([[0.0], [(label & (a >= t)).sum() / n_pos for t in levels]])
    fpr = np.concatenate([[0.0], [(~label & (a >= t)).sum() / n_neg for t in levels]])
    rows = scores.per_prompt
    lo = hi = float("nan")
    boot, n = None, 0
    if rows is not None and rows.shape[0] >= 2:
        n = int(rows.shape[0])
        lo, hi, boot = _boot(np.asarray(rows), label, confidence, seed, n_boot)
    return EdgeAuroc(value, n_pos, n_neg, fpr, tpr, scores.method, truth.name, lo, hi,
                     confidence, n, seed, boot)


__all__ = ["EdgeAuroc", "auroc", "average_ranks", "edge_auroc"]
