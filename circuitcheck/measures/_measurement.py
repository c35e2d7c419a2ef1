"""``Measurement``: a measured value with its interval, per-prompt values and baselines."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._result import BoundsFromCi


@dataclass(frozen=True, eq=False)
class Measurement(BoundsFromCi):
    """One measured claim quantity; never a bare float.

    ``value`` is the point estimate, ``ci`` its ``confidence`` interval (paired bootstrap over
    prompts), ``per_prompt`` the per-prompt contributions (their mean is ``value``),
    ``baselines`` the raw metric of reference runs (``full``, ``ablated``, ``corrupted``).
    ``problem`` is set when the value is meaningless (e.g. the full model does not do the task);
    then ``value`` is NaN and every assertion fails with that text.
    Truth-testing a measurement raises, so ``assert cc.faithfulness(...)`` cannot pass silently:
    compare ``m.value`` or use the ``cc.assert_*`` helpers.
    """

    kind: str
    value: float
    ci: tuple[float, float]
    per_prompt: np.ndarray = field(repr=False)
    metric: str = ""
    metric_description: str = ""
    ablation: str = ""
    baselines: dict[str, float] = field(default_factory=dict)
    confidence: float = 0.95
    seed: int = 0
    circuit: Any = field(default=None, repr=False)
    model: str = ""
    task: str = ""
    problem: str | None = None
    details: dict[str, Any] = field(default_factory=dict, repr=False)
    unit: str = "prompts"  # what ``per_prompt`` counts: prompts, or Monte-Carlo trials

    @property
    def n(self) -> int:
        return int(len(self.per_prompt))

    def table(self):
        """A one-row pandas DataFrame: kind, value, interval, n."""
        import pandas as pd

        return pd.DataFrame([{"kind": self.kind, "value": self.value, "ci_low": self.ci[0],
                              "ci_high": self.ci[1], "confidence": self.confidence,
                              "n": self.n, "metric": self.metric, "problem": self.problem}])

    def __bool__(self) -> bool:
        raise TypeError(
            f"a {self.kind} measurement has no truth value; compare m.value "
            f"(here {self.value:.3g}) with a threshold, or use the cc.assert_* helpers"
        )

    def __float__(self) -> float:
        return float(self.value)

    def summary(self) -> str:
        lo, hi = self.ci
        if self.problem:
            return f"{self.kind}: not measurable ({self.problem})"
        return (f"{self.kind} {self.value:.3f}  {self.confidence:.0%} CI [{lo:.3f}, {hi:.3f}]  "
                f"n={self.n}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (no per-prompt arrays beyond plain lists)."""
        def num(x: float) -> float | None:
            return None if x is None or not math.isfinite(x) else float(x)

        out = {
            "kind": self.kind, "value": num(self.value), "ci": [num(self.ci[0]), num(self.ci[1])],
            "confidence": self.confidence, "n": self.n, "unit": self.unit, "metric": self.metric,
            "ablation": self.ablation, "baselines": {k: num(v) for k, v in self.baselines.items()},
            "seed": self.seed, "model": self.model, "task": self.task, "problem": self.problem,
            "per_prompt": [num(x) for x in np.asarray(self.per_prompt, dtype=float).tolist()],
        }
        if self.circuit is not None:  # an edge circuit says more: its edge count, scores
            record = getattr(self.circuit, "record", None)
            out["circuit"] = record() if callable(record) else self.circuit.to_dict()
        for key in ("heatmaps", "points", "bars", "lines", "patterns", "secondary", "warning",
                    "per_prompt_label"):
            if key in self.details:
                out[key] = self.details[key]
        return out


def unmeasured(kind: str, problem: str, n: int, **fields: Any) -> Measurement:
    """A measurement that could not be made: NaN value, interval and per-prompt values, and
    ``problem`` its reason (every assertion on it says NOT MEASURABLE)."""
    nan = float("nan")
    return Measurement(kind=kind, value=nan, ci=(nan, nan), per_prompt=np.full(n, nan),
                       problem=problem, **fields)
