"""The faithfulness curve of ranked edges and MIB's integrated metrics, CPR and CMD.

Definitions (Mueller et al. 2025, MIB): for a fraction k of the graph's edges, C_k keeps the
top-|score| edges (at least one; ``round(k E)``) and patches every other edge. Its
faithfulness is

    f(C_k) = (m(C_k) - m(∅)) / (m(N) - m(∅))

with m the mean metric over prompts, N the full model (every edge kept) and ∅ the empty
circuit (every edge patched). Over the sizes k_1 < ... < k_K (fractions of edges):

- CPR, the integrated circuit performance ratio, is the area under f (higher is better);
- CMD, the integrated circuit-model distance, is the area between f and 1, of |1 - f| (0 is
  best);

both by the trapezoid rule over the sizes, sum_i (k_{i+1} - k_i) (y_i + y_{i+1}) / 2.

Intervals: a paired percentile bootstrap over prompts. Each resample recomputes every m
(circuits, N and ∅ on the same prompts), so the ratio's shared denominator and the sizes'
correlation are carried exactly; a delta method would need the covariance of all K + 2 means
and breaks down at the kink of |1 - f| where a curve touches 1 (CMD's usual case).

Every circuit, N and ∅ run in one batched edge-patching pass (``run_edge_variants``); sizes
that keep the same edges share a variant.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _validate
from ..edge_circuit import EdgeCircuit
from ..errors import CircuitCheckError
from ..interventions.edges import EdgeVariants, edge_reference, run_edge_variants
from ..stats import bootstrap_ci
from ..tasks import Task
from ._circuit_setup import _setup
from ._result import ResultProtocol, jsonable
from .edge_scores import EdgeScores, parse_ablation, with_kv_group

SIZES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def trapezoid(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """sum_i (x_{i+1} - x_i) (y_i + y_{i+1}) / 2 over the last axis of ``y``."""
    dx = np.diff(np.asarray(x, dtype=float))
    return (dx * (y[..., 1:] + y[..., :-1]) / 2).sum(-1)


@dataclass(frozen=True, eq=False)
class FaithfulnessCurve(ResultProtocol):
    """Faithfulness f(C_k) at each size (``values``, with ``ci_low``/``ci_high``), and
    ``cpr``/``cmd`` with their intervals (module docstring). ``n_edges[i]`` edges are kept
    at fraction ``sizes[i]``; ``per_prompt`` is [K, N] of (m_i(C_k) - m(∅)) / (m(N) - m(∅)).
    ``problem`` says why nothing could be measured (then every number is NaN)."""

    sizes: np.ndarray
    n_edges: np.ndarray
    values: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    cpr: float
    cpr_ci: tuple[float, float]
    cmd: float
    cmd_ci: tuple[float, float]
    per_prompt: np.ndarray = field(repr=False)
    baselines: dict[str, float] = field(default_factory=dict)
    metric: str = ""
    ablation: str = ""
    method: str = ""
    confidence: float = 0.95
    seed: int = 0
    n: int = 0
    model: str = ""
    task: str = ""
    problem: str | None = None

    def table(self) -> Any:
        """One row per size: fraction, edges kept, faithfulness and its interval."""
        import pandas as pd

        return pd.DataFrame({"size": self.sizes, "n_edges": self.n_edges,
                             "faithfulness": self.values, "ci_low": self.ci_low,
                             "ci_high": self.ci_high})

    def to_dict(self) -> dict[str, Any]:
        return jsonable({
            "kind": "faithfulness_curve", "sizes": self.sizes, "n_edges": self.n_edges,
            "values": self.values, "ci_low": self.ci_low, "ci_high": self.ci_high,
            "cpr": self.cpr, "cpr_ci": list(self.cpr_ci), "cmd": self.cmd,
            "cmd_ci": list(self.cmd_ci), "baselines": self.baselines, "metric": self.metric,
            "ablation": self.ablation, "method": self.method, "confidence": self.confidence,
            "seed": self.seed, "n": self.n, "model": self.model, "task": self.task,
            "problem": self.problem})

    def summary(self) -> str:
        if self.problem:
            return f"faithfulness curve: not measurable ({self.problem})"
        c = f"{self.confidence:.0%}"
        return (f"faithfulness curve of {self.method} scores over {len(self.sizes)} sizes: "
                f"CPR {self.cpr:.3f} {c} CI [{self.cpr_ci[0]:.3f}, {self.cpr_ci[1]:.3f}], "
                f"CMD {self.cmd:.3f} {c} CI [{self.cmd_ci[0]:.3f}, {self.cmd_ci[1]:.3f}], "
                f"n={self.n} prompts")


def _sizes(sizes: Sequence[float]) -> np.ndarray:
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or len(sizes) < 2:
        raise CircuitCheckError(f"sizes must be a list of at least 2 fractions of the edges "
                                f"in (0, 1], e.g. {list(SIZES)}; got {sizes!r}")
    x = np.array([_validate.real(s, "size") for s in sizes], dtype=float)
    if ((x <= 0) | (x > 1)).any() or (np.diff(x) <= 0).any():
        raise CircuitCheckError(f"sizes must be increasing fractions of the edges in (0, 1], "
                                f"e.g. {list(SIZES)}; got {list(sizes)}")
    return x


def faithfulness_curve(model: Any, task: Task, scores: EdgeScores, *,
                       sizes: Sequence[float] = SIZES, ablation: str = "resample",
                       metric: str = "logit_diff", reference: str | None = None,
                       confidence: float = 0.95, seed: int | None = None,
                       batch_size: int | None = None) -> FaithfulnessCurve:
    """f(C_k) for the top-|score| circuits at each fraction of edges in ``sizes``, and MIB's
    CPR and CMD over them (module docstring). ``ablation`` patches the edges left out
    (``resample``, alias ``corrupted``, as MIB does; or zero, mean, mean-by-template)."""
    if not isinstance(scores, EdgeScores):
        raise CircuitCheckError(f"scores must be cc.EdgeScores (from cc.edge_scores), got "
                                f"{type(scores).__name__}")
    scores = with_kv_group(scores, model)
    x = _sizes(sizes)
    kind = parse_ablation(ablation)
    s = _setup(model, task, [], kind.value, metric, reference, "ablated", seed, confidence,
               batch_size, values=lambda enc: edge_reference(model, enc, kind, reference))
    E = len(scores.names)
    counts = [max(1, math.floor(k * E + 0.5)) for k in x]
    circuits: list[EdgeCircuit] = []
    slot: dict[frozenset, int] = {}
    which = []
    kept = []
    for c in counts:
        circuit = scores.top(c)
        key = frozenset(e.name for e in circuit.edges)
        if key not in slot:
            slot[key] = len(circuits)
            circuits.append(circuit)
        which.append(slot[key])
        kept.append(len(circuit))
    V = len(circuits)
    variants = EdgeVariants.from_circuits(model, circuits + [EdgeCircuit.full(model),
                                                             EdgeCircuit([])])
    readout = run_edge_variants(model, s.enc, variants, s.values, batch_size=batch_size,
                                ref_logprobs=s.ref_logprobs, reads=s.metric.reads or None)
    rows = s.metric(readout)  # [V + 2, N]
    curve_rows, full, empty = rows[which], rows[V], rows[V + 1]
    return _curve(x, np.array(kept), curve_rows, full, empty, s, scores.method, model, task)


def _curve(x: np.ndarray, kept: np.ndarray, rows: np.ndarray, full: np.ndarray,
           empty: np.ndarray, s: Any, method: str, model: Any, task: Task
           ) -> FaithfulnessCurve:
    """The curve, CPR and CMD with bootstrap intervals from the per-prompt metric rows."""
    n = len(full)
    conf, seed = s.confidence, s.seed
    den = float(full.mean() - empty.mean())
    den_ci = bootstrap_ci(lambda i: full[i].mean(1) - empty[i].mean(1), n, confidence=conf,
                          seed=seed)
    problem = None
    if n < 2:
        problem = (f"only {n} prompt: an interval over prompts cannot be estimated from one; "
                   "use more prompts (20 or more)")
    elif not den or den_ci[0] <= 0 <= den_ci[1]:
        problem = (f"the full model does not do the task against the empty circuit: its "
                   f"{s.metric.name} is {full.mean():.3g} against {empty.mean():.3g} with every "
                   f"edge patched (difference CI [{den_ci[0]:.3g}, {den_ci[1]:.3g}] includes 0), "
                   "so a ratio to it would divide by noise; check the task, the corrupted "
                   "prompts and the ablation")

    def f_of(i: np.ndarray) -> np.ndarray:  # [B, n] index -> [B, K]
        b = empty[i].mean(1)
        return ((rows[:, i].mean(-1) - b) / (full[i].mean(1) - b)).T

    values = (rows.mean(1) - empty.mean()) / den if den else np.full(len(x), np.nan)
    per_prompt = (rows - empty.mean()) / den if den else np.full(rows.shape, np.nan)
    lo, hi = np.full(len(x), np.nan), np.full(len(x), np.nan)
    cpr_ci = cmd_ci = (float("nan"), float("nan"))
    cpr = cmd = float("nan")
    if problem is None:
        for k in range(len(x)):
            lo[k], hi[k] = bootstrap_ci(lambda i, k=k: f_of(i)[:, k], n, confidence=conf,
                                        seed=seed)
        cpr, cmd = float(trapezoid(x, values)), float(trapezoid(x, np.abs(1 - values)))
        cpr_ci = bootstrap_ci(lambda i: trapezoid(x, f_of(i)), n, confidence=conf,
                              seed=seed)
        cmd_ci = bootstrap_ci(lambda i: trapezoid(x, np.abs(1 - f_of(i))), n,
                              confidence=conf, seed=seed)
    else:
        values = np.full(len(x), np.nan)
    return FaithfulnessCurve(
        x, kept, values, lo, hi, cpr, cpr_ci, cmd, cmd_ci, per_prompt,
        {"full": float(full.mean()), "empty": float(empty.mean())}, s.metric.name,
        s.values.describe(), method, conf, seed, n, getattr(model, "cc_name", ""), task.name,
        problem)


__all__ = ["SIZES", "FaithfulnessCurve", "faithfulness_curve", "trapezoid"]
