"""``HeadScores``: one score per head with intervals (head kinds, OV copying, attention to a
position), kept apart from the measurements that make them so they import it freely."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..circuit import Head, format_head, parse_head
from ._result import ResultProtocol, jsonable


@dataclass(frozen=True, eq=False)
class HeadScores(ResultProtocol):
    """Scores of one kind for every head: ``scores[layer, head]`` with interval arrays."""

    kind: str
    scores: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    per_sequence: np.ndarray = field(repr=False)  # [n, L, H]
    confidence: float = 0.95

    @property
    def n(self) -> int:
        return int(self.per_sequence.shape[0])

    def ranking(self) -> list[Head]:
        """Every head, highest score first."""
        order = np.argsort(-self.scores, axis=None, kind="stable")
        H = self.scores.shape[1]
        return [(int(i // H), int(i % H)) for i in order]

    def top(self, k: int = 1) -> list[Head]:
        return self.ranking()[:k]

    def rank(self, head: Any) -> int:
        """1 for the highest-scoring head."""
        return self.ranking().index(parse_head(head)) + 1

    def __getitem__(self, head: Any) -> float:
        layer, h = parse_head(head)
        return float(self.scores[layer, h])

    def table(self):
        """A pandas DataFrame of every head's score and interval, best first."""
        import pandas as pd

        return pd.DataFrame([{"head": format_head(h), "score": self[h],
                              "ci_low": float(self.ci_low[h]), "ci_high": float(self.ci_high[h])}
                             for h in self.ranking()])

    @property
    def values(self) -> np.ndarray:
        """[layer, head] scores (``scores`` is the old name, kept as an alias)."""
        return self.scores

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"kind": self.kind, "values": self.scores, "ci_low": self.ci_low,
                         "ci_high": self.ci_high, "confidence": self.confidence, "n": self.n})

    def summary(self) -> str:
        best = ", ".join(f"{format_head(h)} {self[h]:.2f}" for h in self.top(3))
        return f"{self.kind} scores of {self.scores.size} heads (n={self.n}); top {best}"
