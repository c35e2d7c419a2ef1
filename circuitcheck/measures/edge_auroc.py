"""How well edge scores find a known circuit: the AUROC of |score| against the true edges.

AUROC = P(|score| of a true edge > |score| of any other edge), ties counting one half: the
Mann-Whitney U of the true edges' ranks among all edges (ties given their average rank),
over n_pos x n_neg. 1 ranks every true edge first, 0.5 is chance. The ROC points are the
(false positive rate, true positive rate) of keeping every edge with |score| >= t, for each
distinct |score| t from the largest down; the trapezoid area under them equals the AUROC.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..edge_circuit import EdgeCircuit
from ..errors import CircuitCheckError, CircuitError
from ._result import ResultProtocol, jsonable
from .edge_scores import EdgeScores


@dataclass(frozen=True, eq=False)
class EdgeAuroc(ResultProtocol):
    """The AUROC of edge scores against a true circuit (``value``), with its ROC points.

    It has no interval (``ci`` is NaN): the edges are the whole population, not a sample; the
    uncertainty lies in the scores (see ``EdgeScores.ci_low``)."""

    value: float
    n_pos: int
    n_neg: int
    fpr: np.ndarray
    tpr: np.ndarray
    method: str = ""
    truth: str = ""

    @property
    def ci_low(self) -> float:
        return float("nan")

    @property
    def ci_high(self) -> float:
        return float("nan")

    def table(self) -> Any:
        """The ROC points: fpr, tpr."""
        import pandas as pd

        return pd.DataFrame({"fpr": self.fpr, "tpr": self.tpr})

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"kind": "edge_auroc", "value": self.value, "n_pos": self.n_pos,
                         "n_neg": self.n_neg, "method": self.method, "truth": self.truth,
                         "fpr": self.fpr, "tpr": self.tpr})

    def summary(self) -> str:
        return (f"edge AUROC {self.value:.3f} ({self.method} scores vs {self.truth!r}: "
                f"{self.n_pos} true edges, {self.n_neg} others)")


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x``, tied values sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    _, start, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.repeat(start + (counts + 1) / 2, counts)
    return ranks


def edge_auroc(scores: EdgeScores, truth: EdgeCircuit) -> EdgeAuroc:
    """The AUROC of ``|scores|`` at telling ``truth``'s edges from every other edge (module
    docstring). Positions of ``truth``'s edges are ignored: scores are per edge."""
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
    ranks = average_ranks(a)
    value = (ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    levels = np.unique(a)[::-1]
    tpr = np.concatenate([[0.0], [(label & (a >= t)).sum() / n_pos for t in levels]])
    fpr = np.concatenate([[0.0], [(~label & (a >= t)).sum() / n_neg for t in levels]])
    return EdgeAuroc(float(value), n_pos, n_neg, fpr, tpr, scores.method, truth.name)


__all__ = ["EdgeAuroc", "average_ranks", "edge_auroc"]
