"""``assert_*`` helpers: measure a claim, and raise ``AssertionError`` with its story if it fails.

Verdicts are honest about uncertainty: a claim *holds* only when the whole confidence interval
is on the right side of the threshold, *fails* when the whole interval is on the wrong side,
and is *inconclusive* otherwise (a failure by default, worded "increase prompts", not
"claim false"). A measurement that cannot be made (the full model does not do the task) fails
with that reason instead of a ratio of noise.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _claims
from .circuit import Circuit, format_head, parse_head
from .edge_circuit import EdgeCircuit
from .errors import CircuitError
from .measures import (Measurement, compare_selection, equivalence, faithfulness, head_drops,
                       head_scores, localization, minimality, minimality_test, necessity,
                       stochastic_ablation, sweep)
from .measures.stochastic import _z
from .stats import FAILED, HOLDS, INCONCLUSIVE, UNMEASURABLE, verdict
from .tasks import Task

def _check_threshold(value: Any, what: str) -> float:
    from ._validate import real

    return real(value, what)  # a finite number: nan / inf would decide nothing honestly


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
                 f"n={m.n} {m.unit}, seed {m.seed}")
    base = "   ".join(f"{k} {'model ' if k == 'full' else ''}{val:.2f}"
                      for k, val in m.baselines.items())
    lines.append(f"  baselines  {base}")
    lines += secondary_lines(m)
    if drops:
        top = list(drops.items())[:3]
        lines.append("  largest drops if removed: "
                     + ", ".join(f"{format_head(h)} ({d:+.2f})" for h, d in top))
    node = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    if node:
        import shlex

        lines.append(f"  reproduce  pytest {shlex.quote(node)} --cc-seed={m.seed}")
    return "\n".join(lines)


def secondary_lines(m: Measurement) -> list[str]:
    """The secondary metrics (circuit kept / full model / all ablated) and any warning."""
    out = [f"  secondary  {name}: circuit {v['circuit']:.2f}   full model {v['full']:.2f}   "
           f"all ablated {v['ablated']:.2f}" for name, v in m.details.get("secondary", {}).items()]
    if m.details.get("warning"):
        out.append(f"  WARNING    {m.details['warning']}")
    return out


def _conclude(entry: dict[str, Any], ok: bool, failure: Callable[[], str]) -> None:
    """Record the claim; raise its story when it failed, or the drift when it moved."""
    __tracebackhide__ = True
    if not ok:
        entry["message"] = failure()
    drift = _claims.record(entry)
    if not ok:
        raise AssertionError(entry["message"])
    if drift:
        raise AssertionError(drift)


def _finish(name: str, m: Measurement, op: str, threshold: float, drops_fn: Any = None,
            allow_inconclusive: bool = False, extra: list[str] | tuple = ()) -> Measurement:
    """Decide the claim from ``m``'s interval and record it; ``extra`` lines go right under
    the message's first line."""
    __tracebackhide__ = True  # pytest shows the claim, not our frames
    from ._validate import flag

    flag(allow_inconclusive, "allow_inconclusive")
    v = verdict(m, **({"at_least": threshold} if op == ">=" else {"at_most": threshold}))
    ok = v == HOLDS or (v == INCONCLUSIVE and allow_inconclusive)

    def story() -> str:
        drops = drops_fn() if drops_fn is not None and v != UNMEASURABLE else None
        lines = claim_message(name, m, v, op, threshold, drops).split("\n")
        return "\n".join(lines[:1] + list(extra) + lines[1:])

    entry = {"claim": name, "kind": m.kind, "verdict": v, "op": op, "threshold": threshold,
             "measurement": m.to_dict()}
    if m.details.get("warning"):
        entry["warning"] = m.details["warning"]  # shown for a held claim too
    _conclude(entry, ok, story)
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
    drops = None if isinstance(circuit, EdgeCircuit) else (  # per-head drops: node circuits
        lambda: head_drops(model, task, circuit, **drop_kwargs))
    return _finish(name or f"{circuit.name} is faithful", m, ">=", at_least, drops,
                   allow_inconclusive)


def assert_necessary(model: Any, task: Task, circuit: Circuit, *, at_most: float,
                     name: str | None = None, allow_inconclusive: bool = False,
                     **kwargs: Any) -> Measurement:
    """Assert necessity F(M \\ C)/F(M) <= ``at_most``: removing the circuit breaks the task."""
    __tracebackhide__ = True
    at_most = _check_threshold(at_most, "at_most")
    m = necessity(model, task, circuit, **kwargs)
    return _finish(name or f"{circuit.name} is necessary", m, "<=", at_most, None,
                   allow_inconclusive)


def assert_head_score(model: Any, heads: Any, kind: str = "induction", *,
                      at_least: float | None = None, top: int | None = None,
                      name: str | None = None, on_task: bool = False,
                      claim_task: Any = None, **kwargs: Any) -> Measurement:
    """Assert that ``heads`` are ``kind`` heads ("L1H2 is an induction head").

    Each head's score interval must lie above ``at_least`` (when given), and each head must rank
    within the ``top`` highest-scoring heads (default: ``len(heads)``, i.e. they are the top
    heads). Keyword arguments go to ``cc.head_scores`` (n, seq_len, seed, or ``task=`` to score
    on a task's own prompts). ``on_task`` (YAML) scores on ``claim_task``, the claim's task,
    which the claim file passes.
    """
    __tracebackhide__ = True
    from ._validate import flag

    flag(on_task, "on_task")
    if on_task:
        if claim_task is None:
            raise ValueError("on_task needs the claim's task (claim_task=); in Python pass task=")
        if "n" in kwargs or "seq_len" in kwargs:
            raise ValueError(f"head_scores.{kind}: n and seq_len shape the random repeats; with "
                             "on_task the task's prompts are used - drop them")
        kwargs["task"] = claim_task
    if isinstance(heads, (str, tuple)) and (isinstance(heads, str) or len(heads) == 2
                                            and all(isinstance(x, int) for x in heads)):
        heads = [heads]
    claimed = [parse_head(h) for h in heads]
    if not claimed:
        raise ValueError("name at least one head")
    if at_least is not None:
        at_least = _check_threshold(at_least, "at_least")
    from ._validate import count

    top = len(claimed) if top is None else count(top, "top")
    scores = head_scores(model, kind, **kwargs)
    L, H = scores.scores.shape
    for layer, h in claimed:
        if not (0 <= layer < L and 0 <= h < H):
            raise CircuitError(f"head {layer}.{h} is out of range: the model has {L} layers and "
                               f"{H} heads per layer")
    weakest = min(claimed, key=lambda hd: scores.ci_low[hd])
    ranks = {hd: scores.rank(hd) for hd in claimed}
    task = kwargs.get("task")
    on_task = "repeated random tokens" if task is None else task.name
    on = ("sequences of repeated random tokens" if task is None
          else f"prompts of the task {task.name!r}")
    label = ", ".join(format_head(hd) for hd in claimed)
    m = Measurement(
        kind=f"{kind} score", value=scores[weakest],
        ci=(float(scores.ci_low[weakest]), float(scores.ci_high[weakest])),
        per_prompt=scores.per_sequence[:, weakest[0], weakest[1]], metric=kind,
        metric_description=f"{kind} attention score on {scores.n} {on}",
        confidence=scores.confidence, seed=kwargs.get("seed", 0) or 0,
        model=getattr(model, "cc_name", ""), task=on_task,
        details={"heads": [list(hd) for hd in claimed], "ranks": {format_head(k): v for k, v in ranks.items()},
                 "heatmaps": {f"{kind} score": {"data": scores.scores.tolist(),
                                                "label": f"{kind} score per head",
                                                "outline": [list(hd) for hd in claimed]}}})
    problems = []
    v = HOLDS
    if at_least is not None:
        v = verdict(m, at_least=at_least)
        if v != HOLDS:
            lo, hi = m.ci
            problems.append(f"{kind} score of {format_head(weakest)} is {m.value:.2f} "
                            f"({m.confidence:.0%} CI [{lo:.2f}, {hi:.2f}]), required {at_least:.2f}"
                            + (" (inconclusive: increase n)" if v == INCONCLUSIVE else ""))
    outside = [hd for hd, r in ranks.items() if r > top]
    if outside:
        v = FAILED if v == HOLDS else v
        problems.append("not among the top " + str(top) + ": "
                        + ", ".join(f"{format_head(hd)} ranks {ranks[hd]}" for hd in outside))
    article = "an" if kind[0] in "aeiou" else "a"
    claim = name or (f"{label} is {article} {kind} head" if len(claimed) == 1
                     else f"{label} are {kind} heads")

    def story() -> str:
        best = ", ".join(f"{format_head(hd)} {scores[hd]:.2f}" for hd in scores.top(5))
        return (f"claim {claim!r} {v.upper()}: " + "; ".join(problems) + "\n"
                f"  top {kind} heads  {best}\n"
                f"  measured on {scores.n} {on}, seed {m.seed}")

    _conclude({"claim": claim, "kind": m.kind, "verdict": v, "op": ">=", "threshold": at_least,
               "top": top, "measurement": m.to_dict()}, v == HOLDS, story)
    return m


def assert_important(model: Any, task: Task, heads: Any, *, top: int | None = None,
                     by: str = "importance", trials: int = 4096, confidence: float = 0.95,
                     name: str | None = None, **kwargs: Any) -> Any:
    """Assert ``heads`` are the most important heads (by stochastic ablation) at ``confidence``.

    Holds when every claimed head's interval lies above every other head's (simultaneous
    intervals, corrected for all heads and for each look of the sequential test); fails when
    another head is surely more important than a claimed one; otherwise it is inconclusive
    (raise ``trials``). ``top`` (default ``len(heads)``) allows "among the top k". Keyword
    arguments go to ``cc.stochastic_ablation``; the result is returned.
    """
    __tracebackhide__ = True

    claimed = [parse_head(h) for h in ([heads] if isinstance(heads, str) else heads)]
    if not claimed:
        raise ValueError("name at least one head")
    if top is not None:
        from ._validate import count

        top = count(top, "top")
    mc = stochastic_ablation(model, task, heads=claimed, top=top, by=by, trials=trials,
                             confidence=confidence, **kwargs)
    eff = getattr(mc, by)
    weakest = min(claimed, key=lambda hd: eff.ci_low[hd])
    v = {"held": HOLDS, "failed": FAILED}.get(mc.decision or "", INCONCLUSIVE)
    label = ", ".join(format_head(hd) for hd in claimed)
    claim = name or f"{label} {'is the most' if len(claimed) == 1 else 'are the most'} {by} head{'s' * (len(claimed) > 1)}"
    abl = {k: kwargs[k] for k in ("ablation", "metric", "reference") if k in kwargs}
    sel = compare_selection(model, task, claimed, **abl)
    details = {
        "heatmaps": {f"{r.regime} effect": {"data": r.effect.tolist(), "label": f"{r.regime}: "
                     f"{mc.metric} gained by keeping the head", "outline": [list(h) for h in claimed]}
                     for r in (mc.importance, mc.exclusion) if r is not None},
        "bars": {"selected heads": {"labels": ["full model", "only selected kept",
                                               "selected ablated"],
                                    "values": [sel["full"], sel["retained_only"], sel["ablated_only"]]}},
    }
    if mc.importance is not None and mc.exclusion is not None:
        ranking = mc.importance.ranking()
        details["points"] = {"importance vs exclusion": {
            "x": mc.importance.effect.ravel().tolist(), "y": mc.exclusion.effect.ravel().tolist(),
            "labels": [format_head(h) if h in claimed or h in ranking[:3] else ""
                       for h in [(l, hh) for l in range(eff.effect.shape[0])
                                 for hh in range(eff.effect.shape[1])]],
            "xlabel": "importance", "ylabel": "exclusion"}}
    m = Measurement(kind=f"{by} effect", value=eff[weakest],
                    ci=(float(eff.ci_low[weakest]), float(eff.ci_high[weakest])),
                    per_prompt=mc.raw[by]["metric"], metric=mc.metric,
                    metric_description=f"{mc.metric} per trial", ablation=mc.ablation,
                    baselines={"full": sel["full"]}, confidence=confidence, seed=mc.seed,
                    model=getattr(model, "cc_name", ""), task=task.name, details=details,
                    unit="trials")
    n_used = len(mc.raw[by]["metric"])

    def story() -> str:
        best = ", ".join(f"{format_head(h)} {eff[h]:+.3f}" for h in eff.ranking()[:5])
        word = {FAILED: "FAILED", INCONCLUSIVE: "INCONCLUSIVE"}[v]
        why = ("another head is surely more important than a claimed one" if v == FAILED else
               f"not decided after {n_used} trials (the budget); increase trials")
        if v == INCONCLUSIVE and eff.degenerate:
            why = (f"the {by} regime is degenerate ({eff.degenerate}); more trials at this "
                   "keep_prob will not decide it: leave keep_prob unset to calibrate it")
        return (f"claim {claim!r} {word}: {why}\n"
                f"  claimed    {label}: weakest {format_head(weakest)} {by} effect "
                f"{eff[weakest]:+.3f} {confidence:.0%} CI [{m.ci[0]:+.3f}, {m.ci[1]:+.3f}]\n"
                f"  top heads  {best}\n"
                f"  trials     {n_used} of {trials} budget, keep_prob {eff.keep_prob:.3g}"
                f"{' (calibrated)' if 'calibration' in mc.notes else ''}, "
                f"{mc.ablation}, seed {mc.seed}\n"
                + "".join(f"  DEGENERATE {r.regime}: {r.degenerate}\n"
                          for r in (mc.importance, mc.exclusion)
                          if r is not None and r.degenerate) +
                f"  selected   full {sel['full']:.2f}   only selected kept "
                f"{sel['retained_only']:.2f}   selected ablated {sel['ablated_only']:.2f}")

    _conclude({"claim": claim, "kind": m.kind, "verdict": v, "op": ">=", "threshold": None,
               "top": top or len(claimed), "trials": n_used, "measurement": m.to_dict()},
              v == HOLDS, story)
    return mc


def _test_record(claim: str, test: Any, ok: bool, model: Any, task: Task) -> None:
    """Record a hypothesis test as a claim: the statistic, its p-value and the decision."""
    __tracebackhide__ = True

    se = test.details.get("se")
    z = _z(0.95)
    ci = (test.statistic - z * se, test.statistic + z * se) if se else (float("nan"),) * 2
    n_prompts = test.details.get("n", len(task.prompts))
    m = Measurement(kind=test.name, value=test.statistic, ci=ci, per_prompt=np.array([]),
                    metric=f"p = {test.p_value:.3g} (alpha {test.alpha:g})",
                    metric_description=f"H0: {test.null}", ablation=test.details.get("ablation", ""),
                    model=getattr(model, "cc_name", ""), task=task.name,
                    details={"p_value": test.p_value, "alpha": test.alpha, "null": test.null,
                             "n_prompts": n_prompts})
    entry = {"claim": claim, "kind": test.name, "verdict": HOLDS if ok else FAILED,
             "op": "p", "threshold": None, "p_value": test.p_value, "alpha": test.alpha,
             "measurement": {**m.to_dict(), "n": n_prompts}}
    entry["message"] = (f"{test.summary()}; the claim "
                        f"{'holds' if ok else 'does not hold'}")

    def story() -> str:
        lines = [f"claim {claim!r} FAILED: {test.summary()}"]
        if test.details.get("method") == "tost":
            lines.append("  test       TOST: equivalence must be shown (both one-sided tests of "
                         "|Δ| >= ε reject); more prompts or a larger ε make that possible")
        elif test.details.get("method") == "shi":
            lines.append("  test       Shi et al.: H0 is equivalence, rejected here")
        lines.append(f"  n          {n_prompts} prompts")
        for key, value in test.details.items():
            if key not in ("reference_gains",):
                lines.append(f"  {key:<10} {value}")
        return "\n".join(lines)

    _conclude(entry, ok, story)


def assert_equivalent(model: Any, task: Task, circuit: Circuit, *, epsilon: float = 0.1,
                      alpha: float = 0.05, name: str | None = None, **kwargs: Any) -> Any:
    """Assert the circuit is shown equivalent to the full model within ε.

    By default a TOST test (H0: |Δ| >= ε; holds only when both one-sided tests reject, so few
    prompts cannot make it hold). ``method="shi"`` uses Shi et al.'s test instead (H0: |Δ| <= ε;
    holds when not rejected - absence of evidence; the message says so)."""
    __tracebackhide__ = True

    test = equivalence(model, task, circuit, epsilon=epsilon, alpha=alpha, **kwargs)
    ok = test.rejected if test.details.get("method") == "tost" else not test.rejected
    _test_record(name or f"{circuit.name} is equivalent", test, ok, model, task)
    return test


def assert_localized(model: Any, task: Task, circuit: Circuit, *, alpha: float = 0.05,
                     n_random: int = 100, name: str | None = None, **kwargs: Any) -> Any:
    """Assert removing the circuit hurts more than removing random head sets (p < alpha)."""
    __tracebackhide__ = True

    test = localization(model, task, circuit, alpha=alpha, n_random=n_random, **kwargs)
    _test_record(name or f"{circuit.name} is localized", test, test.rejected, model, task)
    return test


def assert_minimal(model: Any, task: Task, circuit: Circuit, *, alpha: float = 0.05,
                   name: str | None = None, **kwargs: Any) -> Any:
    """Assert every head matters more than random outside heads (Holm-corrected p < alpha)."""
    __tracebackhide__ = True

    test = minimality_test(model, task, circuit, alpha=alpha, **kwargs)
    _test_record(name or f"{circuit.name} is minimal", test, test.rejected, model, task)
    return test


def assert_minimality_scores(model: Any, task: Task, circuit: Circuit, *, at_least: float,
                             k_sets: Any = None, name: str | None = None,
                             allow_inconclusive: bool = False, **kwargs: Any) -> Measurement:
    """Assert every head v of the circuit has minimality score |F(C \\ K_v) - F(C \\ (K_v ∪ {v}))|
    / |F(M)| of at least ``at_least`` (seed 002's check; ``k_sets`` maps a head to its K, as the
    notebook's ``K_FOR_EACH_COMPONENT``). Decided on the head whose interval is the deciding
    one: failed when some head's whole interval is below the bound, held when the lowest
    interval clears it. Keyword arguments go to ``cc.minimality`` (ablation, metric, ...)."""
    __tracebackhide__ = True
    from dataclasses import replace

    at_least = _check_threshold(at_least, "at_least")
    if k_sets is not None and not isinstance(k_sets, dict):
        raise CircuitError(f"k_sets must map a head to the heads of its K set, e.g. "
                           f"{{'9.9': ['10.0']}}, got {k_sets!r}")
    result = minimality(model, task, circuit, k_sets=k_sets, **kwargs)
    scores = result.scores
    short = [h for h, m in scores.items() if m.ci[1] < at_least]
    head = (min(short, key=lambda h: scores[h].ci[1]) if short
            else min(scores, key=lambda h: scores[h].ci[0]))
    labels = [format_head(h) for h in scores]
    m = replace(scores[head], details={**scores[head].details, "bars": {
        "minimality score per head": {"labels": labels,
                                      "values": [scores[h].value for h in scores]}}})
    claim = name or f"every head of {circuit.name} has minimality score >= {at_least:g}"
    extra = [f"  deciding head {format_head(head)} (K = "
             f"{[format_head(k) for k in m.details.get('K', [])] or '∅'})",
             "  per head  " + ", ".join(f"{format_head(h)} {x.value:.3f} [{x.ci[0]:.3f}, "
                                        f"{x.ci[1]:.3f}]" for h, x in scores.items())]
    return _finish(claim, m, ">=", at_least, allow_inconclusive=allow_inconclusive, extra=extra)


def assert_robust(model: Any, task: Task, circuit: Circuit, *, at_least: float | None = None,
                  at_most: float | None = None, require: Any = "all", name: str | None = None,
                  **kwargs: Any) -> Any:
    """Assert a faithfulness (``at_least``) or necessity (``at_most``) claim holds under every
    required combination of a ``cc.sweep`` (ablation × metric × positions)."""
    __tracebackhide__ = True

    if (at_least is None) == (at_most is None):
        raise ValueError("give exactly one of at_least= (faithfulness) or at_most= (necessity)")
    claim_kind = "faithfulness" if at_least is not None else "necessity"
    kwargs.setdefault("claim", claim_kind)
    sw = sweep(model, task, circuit, at_least=at_least, at_most=at_most, **kwargs)
    keys = sw.select(require)
    verdicts = {k: sw.verdict(k) for k in keys}
    bad = {k: v for k, v in verdicts.items() if v != HOLDS}
    grid = sw.grid()
    claim = name or f"{circuit.name} is robustly {'faithful' if at_least is not None else 'necessary'}"
    worst_key = min(keys, key=lambda k: sw.measurements[k].value
                    if at_least is not None else -sw.measurements[k].value)
    m = sw.measurements[worst_key]
    threshold = at_least if at_least is not None else at_most

    def story() -> str:
        lines = [f"claim {claim!r} FAILED: holds under {len(keys) - len(bad)} of {len(keys)} "
                 f"required combinations ({sw.claim} {'>=' if at_least is not None else '<='} "
                 f"{threshold:g})"]
        for (a, mt, p), v in bad.items():
            meas = sw.measurements[(a, mt, p)]
            lines.append(f"  {v:<12} {a:<16} {mt:<10} {p:<8} {meas.value:.2f} "
                         f"CI [{meas.ci[0]:.2f}, {meas.ci[1]:.2f}]")
        return "\n".join(lines)

    _conclude({"claim": claim, "kind": f"robust {sw.claim}", "verdict": HOLDS if not bad else FAILED,
               "op": ">=" if at_least is not None else "<=", "threshold": threshold,
               "grid": grid.to_dict("records"), "measurement": m.to_dict()}, not bad, story)
    return sw


def assert_selection(model: Any, task: Task, *, top: int | None = None,
                     percentile: float | None = None, retained_at_least: float | None = None,
                     ablated_at_most: float | None = None, by: str = "importance",
                     score: str = "effect", trials: int = 4096, name: str | None = None,
                     **kwargs: Any) -> Any:
    """Assert the notebook's outlier claim: the heads stochastic ablation selects (the ``top``
    k by ``by``, or those above ``percentile``) keep at least ``retained_at_least`` of the full
    model's metric when kept alone, and leave at most ``ablated_at_most`` when ablated.

    Both fractions are relative to the full model (mean metric over the task's prompts), each
    with a paired bootstrap interval over prompts (``faithfulness`` / ``necessity`` with
    ``normalize="ratio"``): held when every given bound is met by the whole interval, failed
    when an interval is wholly on the wrong side, inconclusive otherwise. ``by="union"`` with
    ``percentile`` takes the outliers of either regime, and ``score="notebook"`` ranks by seed
    000's counting scores (top-1 only): the notebook's selection as written. Keyword arguments
    go to ``cc.stochastic_ablation`` (ablation, metric, seed, trial, ...). With ``top`` and
    effect scores, sampling stops once the top k are the same set at two consecutive looks
    (``stable_top``; pass ``stable_top=None`` to spend the whole budget).
    """
    __tracebackhide__ = True

    if (top is None) == (percentile is None):
        raise ValueError("give exactly one of top= or percentile=")
    if retained_at_least is None and ablated_at_most is None:
        raise ValueError("give retained_at_least= and/or ablated_at_most=")
    for bound, what in ((retained_at_least, "retained_at_least"),
                        (ablated_at_most, "ablated_at_most")):
        if bound is not None:
            _check_threshold(bound, what)
    if by == "union" and top:
        raise ValueError("by='union' selects the outliers of both regimes: give percentile=, "
                         "not top=")
    if top and by != "union" and score == "effect" and "heads" not in kwargs:
        kwargs.setdefault("stable_top", top)
    mc = stochastic_ablation(model, task, trials=trials, **kwargs)
    eff = mc._regime("importance" if by == "union" else by)
    heads = mc.ranked(by, score)[:top] if top else mc.select(percentile, by=by, score=score)
    abl = {"ablation": kwargs.get("ablation", "mean"), "metric": kwargs.get("metric", "top1"),
           "reference": kwargs.get("reference"), "seed": mc.seed, "normalize": "ratio"}
    selected = Circuit({"selected": heads}, name="selected")
    kept = faithfulness(model, task, selected, **abl)
    removed = necessity(model, task, selected, **abl)
    checks = []  # (what, measurement, op, bound, verdict)
    if retained_at_least is not None:
        checks.append(("kept alone they retain", kept, ">=", retained_at_least,
                       verdict(kept, at_least=retained_at_least)))
    if ablated_at_most is not None:
        checks.append(("ablated they leave", removed, "<=", ablated_at_most,
                       verdict(removed, at_most=ablated_at_most)))
    found = {c[4] for c in checks}
    v = next((x for x in (UNMEASURABLE, FAILED, INCONCLUSIVE) if x in found), HOLDS)
    label = ", ".join(format_head(h) for h in heads)
    how = f"top {top}" if top else f"above the {percentile:g}th percentile"
    claim = name or f"the {how} {by} heads carry the task"
    full = kept.baselines["full"]

    def interval(m: Measurement) -> str:
        return f"{m.value:.2f} ({m.confidence:.0%} CI [{m.ci[0]:.2f}, {m.ci[1]:.2f}])"

    first, primary = checks[0][1], checks[0]
    m = Measurement(kind="selection retained" if primary[2] == ">=" else "selection ablated",
                    value=first.value, ci=first.ci, per_prompt=first.per_prompt,
                    metric=mc.metric, metric_description=first.metric_description,
                    ablation=mc.ablation, confidence=first.confidence,
                    baselines={"full": full, "retained": kept.value, "ablated": removed.value},
                    seed=mc.seed, model=getattr(model, "cc_name", ""), task=task.name,
                    problem=next((c[1].problem for c in checks if c[1].problem), None),
                    details={"retained": {"value": kept.value, "ci": list(kept.ci)},
                             "ablated": {"value": removed.value, "ci": list(removed.ci)},
                             "heatmaps": {f"{by} effect": {
                        "data": eff.effect.tolist(), "label": f"{by}: {mc.metric} gained by keeping",
                        "outline": [list(h) for h in heads]}},
                        "bars": {"selected heads": {
                            "labels": ["full model", "only selected kept", "selected ablated"],
                            "values": [full, kept.value * full, removed.value * full]}}})
    ok = v == HOLDS
    entry = {"claim": claim, "kind": "selection", "verdict": v,
             "op": primary[2], "threshold": primary[3], "heads": [list(h) for h in heads],
             "measurement": m.to_dict(), "retained": m.details["retained"],
             "ablated": m.details["ablated"],
             "message": f"selected {label} ({how} by {by}): retained {interval(kept)}, "
                        f"ablated {interval(removed)} of the full model"}

    def story() -> str:
        word = {UNMEASURABLE: "NOT MEASURABLE", FAILED: "FAILED", INCONCLUSIVE: "INCONCLUSIVE"}[v]
        why = "; ".join(
            (f"{what}: {c.problem}" if c.problem else
             f"{what} {interval(c)}, {'required' if op == '>=' else 'allowed at most'} {bound:.2f}"
             + (" (the interval straddles it: use more prompts)" if cv == INCONCLUSIVE else ""))
            for what, c, op, bound, cv in checks if cv != HOLDS)
        return (f"claim {claim!r} {word}: {why}\n"
                f"  selected   {label} ({how} by {by}, {len(mc.raw[by]['metric'])} trials, "
                f"{mc.ablation}, seed {mc.seed})\n"
                f"  metric     {first.metric_description}: full {full:.3f}   n={first.n} prompts")

    _conclude(entry, ok, story)
    return mc
