"""``assert_*`` helpers: measure a claim, and raise ``AssertionError`` with its story if it fails.

Verdicts are honest about uncertainty: a claim *holds* only when the whole confidence interval
is on the right side of the threshold, *fails* when the whole interval is on the wrong side,
and is *inconclusive* otherwise (a failure by default, worded "increase prompts", not
"claim false"). A measurement that cannot be made (the full model does not do the task) fails
with that reason instead of a ratio of noise.
"""
from __future__ import annotations

import os
from typing import Any

from . import _claims
from .circuit import Circuit, format_head
from .measures import Measurement, faithfulness, head_drops, necessity
from .tasks import Task

HOLDS, FAILED, INCONCLUSIVE, UNMEASURABLE = "held", "failed", "inconclusive", "unmeasurable"


def verdict(m: Measurement, *, at_least: float | None = None, at_most: float | None = None) -> str:
    """``held`` / ``failed`` / ``inconclusive`` / ``unmeasurable`` for a threshold."""
    if (at_least is None) == (at_most is None):
        raise ValueError("give exactly one of at_least= or at_most=")
    if m.problem:
        return UNMEASURABLE
    lo, hi = m.ci
    if at_least is not None:
        if lo >= at_least:
            return HOLDS
        return FAILED if hi < at_least else INCONCLUSIVE
    if hi <= at_most:
        return HOLDS
    return FAILED if lo > at_most else INCONCLUSIVE


def _check_threshold(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, got {value!r}")
    return float(value)


def claim_message(name: str, m: Measurement, v: str, op: str, threshold: float,
                  drops: dict | None = None) -> str:
    """The failure story; its first line alone is a complete summary."""
    lo, hi = m.ci
    if v == UNMEASURABLE:
        head = f"claim {name!r} NOT MEASURABLE: {m.problem}"
    elif v == INCONCLUSIVE:
        head = (f"claim {name!r} INCONCLUSIVE: {m.kind} {m.value:.2f} with {m.confidence:.0%} CI "
                f"[{lo:.2f}, {hi:.2f}] straddles the threshold {threshold:.2f}; increase the "
                "number of prompts to decide")
    else:
        rel = "<" if op == ">=" else ">"
        word = "required" if op == ">=" else "allowed at most"
        head = f"claim {name!r} FAILED: {m.kind} {m.value:.2f} {rel} {word} {threshold:.2f}"
    lines = [head]
    c = m.circuit
    if c is not None:
        where = "kept, complement" if m.kind == "faithfulness" else "removed,"
        lines.append(f"  circuit    {c.describe()}; {where} {m.ablation}")
    lines.append(f"  metric     {m.metric_description}")
    lines.append(f"  measured   {m.value:.2f}   {m.confidence:.0%} CI [{lo:.2f}, {hi:.2f}]   "
                 f"n={m.n} prompts, seed {m.seed}")
    base = "   ".join(f"{k} {'model ' if k == 'full' else ''}{val:.2f}"
                      for k, val in m.baselines.items())
    lines.append(f"  baselines  {base}")
    if drops:
        top = list(drops.items())[:3]
        lines.append("  largest drops if removed: "
                     + ", ".join(f"{format_head(h)} ({d:+.2f})" for h, d in top))
    node = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    if node:
        lines.append(f"  reproduce  pytest \"{node}\" --cc-seed={m.seed}")
    return "\n".join(lines)


def _finish(name: str, m: Measurement, op: str, threshold: float, drops_fn: Any = None,
            allow_inconclusive: bool = False) -> Measurement:
    __tracebackhide__ = True  # pytest shows the claim, not our frames
    v = verdict(m, **({"at_least": threshold} if op == ">=" else {"at_most": threshold}))
    ok = v == HOLDS or (v == INCONCLUSIVE and allow_inconclusive)
    _claims.record({"claim": name, "kind": m.kind, "verdict": v, "op": op,
                    "threshold": threshold, "measurement": m.to_dict()})
    if not ok:
        drops = drops_fn() if drops_fn is not None and v != UNMEASURABLE else None
        raise AssertionError(claim_message(name, m, v, op, threshold, drops))
    return m


def assert_faithful(model: Any, task: Task, circuit: Circuit, *, at_least: float,
                    name: str | None = None, allow_inconclusive: bool = False,
                    **kwargs: Any) -> Measurement:
    """Assert faithfulness F(C)/F(M) >= ``at_least`` (whole CI above it); return the measurement.

    Keyword arguments go to ``cc.faithfulness`` (ablation, metric, reference, normalize, seed).
    On failure the message names the heads whose removal costs the most.
    """
    __tracebackhide__ = True
    at_least = _check_threshold(at_least, "at_least")
    m = faithfulness(model, task, circuit, **kwargs)
    drop_kwargs = {k: v for k, v in kwargs.items() if k not in ("seed", "confidence")}
    return _finish(name or f"{circuit.name} is faithful", m, ">=", at_least,
                   lambda: head_drops(model, task, circuit, **drop_kwargs), allow_inconclusive)


def assert_necessary(model: Any, task: Task, circuit: Circuit, *, at_most: float,
                     name: str | None = None, allow_inconclusive: bool = False,
                     **kwargs: Any) -> Measurement:
    """Assert necessity F(M \\ C)/F(M) <= ``at_most``: removing the circuit breaks the task."""
    __tracebackhide__ = True
    at_most = _check_threshold(at_most, "at_most")
    m = necessity(model, task, circuit, **kwargs)
    return _finish(name or f"{circuit.name} is necessary", m, "<=", at_most, None,
                   allow_inconclusive)
