"""``assert_*`` helpers for edge-score claims: MIB's faithfulness curve (CPR, CMD) and the
recovery of a known circuit by edge scores (AUROC).

They decide like ``circuitcheck.assertions``: a bound *holds* when its whole interval is past
it, *fails* when the whole interval is short of it, and is *inconclusive* otherwise (a failure
unless ``allow_inconclusive``); a quantity with no interval is NOT MEASURABLE with the
reason. Each bound is recorded for the report with the curve (or ROC) it was read from.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .assertions import _check_threshold, _finish
from .edge_circuit import EdgeCircuit
from .errors import CircuitCheckError
from .measures import Measurement
from .measures._measurement import unmeasured
from .measures.edge_auroc import EdgeAuroc, edge_auroc
from .measures.edge_scores import EdgeScores, edge_scores
from .measures.faithfulness_curve import SIZES, FaithfulnessCurve, faithfulness_curve, trapezoid
from .tasks import Task

#: Where a ``recovers`` claim's ground truth comes from.
TRUTHS = ("circuit", "planted")


def unit_bound(value: Any, what: str) -> float:
    """A bound on a quantity that lives in [0, 1] (CPR, CMD of fractions, an AUROC)."""
    x = _check_threshold(value, what)
    if not 0.0 <= x <= 1.0:
        raise CircuitCheckError(f"{what} must be between 0 and 1 (it bounds a quantity in "
                                f"[0, 1]), got {value!r}; e.g. {what}: 0.9")
    return x


def _scores(model: Any, task: Task, circuit: Any, method: str | None, steps: int,
            ablation: str, metric: str, reference: str | None, confidence: float
            ) -> EdgeScores:
    """The scores a claim ranks edges by: the circuit's own (a graph file's scores) when no
    ``method`` is named and it has them, else ``cc.edge_scores`` by ``method`` on the task."""
    if method is None and isinstance(circuit, EdgeCircuit) and circuit.scores:
        where = circuit.source or circuit.name
        shape = circuit.shape or (int(model.cfg.n_layers), int(model.cfg.n_heads))
        s = EdgeScores.from_mapping(circuit.scores, shape, method=f"scores of {where}")
        s.check_model(model)
        return s
    return edge_scores(model, task, method or "eap-ig", steps=steps, ablation=ablation,
                       metric=metric, reference=reference, confidence=confidence)


def curve_lines(curve: FaithfulnessCurve) -> dict[str, Any]:
    """The report's picture of a faithfulness curve: f(C_k) with its interval band over
    log10 of the fraction of edges, the full model's 1 dashed; CPR and CMD in the title."""
    c = f"{curve.confidence:.0%}"
    title = (f"faithfulness curve ({curve.method}): CPR {curve.cpr:.3f} {c} CI "
             f"[{curve.cpr_ci[0]:.3f}, {curve.cpr_ci[1]:.3f}], CMD {curve.cmd:.3f} "
             f"[{curve.cmd_ci[0]:.3f}, {curve.cmd_ci[1]:.3f}]")
    x = np.log10(curve.sizes).tolist()
    return {title: {"x": x, "xlabel": "log10 fraction of edges kept", "ylabel": "f(C_k)",
                    "series": {"f(C_k)": {"y": curve.values.tolist(),
                                          "lo": curve.ci_low.tolist(),
                                          "hi": curve.ci_high.tolist()},
                               "full model": {"y": [1.0] * len(x), "dashed": True}}}}


def _curve_measurement(curve: FaithfulnessCurve, which: str, model: Any) -> Measurement:
    """CPR or CMD as a measurement; its per-prompt values are each prompt's area (for CPR
    their mean is CPR exactly; for CMD each is the area of |1 - f_i|, whose mean bounds CMD
    from above)."""
    kind = f"faithfulness curve {which}"
    fields = dict(metric=curve.metric, ablation=curve.ablation, confidence=curve.confidence,
                  seed=curve.seed, model=getattr(model, "cc_name", ""), task=curve.task,
                  metric_description=(f"MIB {which} over {len(curve.sizes)} sizes "
                                      f"{curve.sizes.tolist()} of {curve.method} scores, "
                                      f"f(C_k) = (m(C_k) - m(empty)) / (m(full) - m(empty)) "
                                      f"of {curve.metric}"))
    if curve.problem:
        return unmeasured(kind, curve.problem, curve.n, **fields)
    per = curve.per_prompt.T  # [N, K]
    if which == "CPR":
        value, ci, rows = curve.cpr, curve.cpr_ci, trapezoid(curve.sizes, per)
        label = "per-prompt area under f_i (their mean is CPR)"
    else:
        value, ci, rows = curve.cmd, curve.cmd_ci, trapezoid(curve.sizes, np.abs(1 - per))
        label = "per-prompt area of |1 - f_i| (their mean bounds CMD from above)"
    return Measurement(kind=kind, value=value, ci=ci, per_prompt=rows,
                       baselines=dict(curve.baselines),
                       details={"lines": curve_lines(curve), "per_prompt_label": label,
                                "n_edges": curve.n_edges.tolist()}, **fields)


def assert_faithfulness_curve(model: Any, task: Task, circuit: Any = None, *,
                              cpr_at_least: float | None = None,
                              cmd_at_most: float | None = None,
                              sizes: Sequence[float] = SIZES, method: str | None = None,
                              steps: int = 5, ablation: str = "resample",
                              metric: str = "logit_diff", reference: str | None = None,
                              confidence: float = 0.95, seed: int | None = None,
                              name: str | None = None, allow_inconclusive: bool = False
                              ) -> FaithfulnessCurve:
    """Assert MIB's faithfulness curve of ranked edges: CPR >= ``cpr_at_least`` and/or CMD
    <= ``cmd_at_most``, each decided by its bootstrap interval over prompts.

    Edges are ranked by ``method`` (``eap`` or ``eap-ig``, ``steps``) computed on ``task``;
    with no ``method`` an edge circuit read from a graph file with scores is ranked by its
    file's scores (else EAP-IG). ``ablation`` patches the edges a circuit leaves out
    (resample, as MIB; zero, mean, mean-by-template). Every given bound is recorded; the
    first that does not hold raises its story. Returns the curve."""
    __tracebackhide__ = True
    bounds = [(w, op, unit_bound(b, k)) for w, op, b, k in
              (("CPR", ">=", cpr_at_least, "cpr_at_least"),
               ("CMD", "<=", cmd_at_most, "cmd_at_most")) if b is not None]
    if not bounds:
        raise CircuitCheckError("a faithfulness curve claim needs cpr_at_least and/or "
                                "cmd_at_most, e.g. faithfulness_curve: {cpr_at_least: 0.9}")
    scores = _scores(model, task, circuit, method, steps, ablation, metric, reference,
                     confidence)
    curve = faithfulness_curve(model, task, scores, sizes=sizes, ablation=ablation,
                               metric=metric, reference=reference, confidence=confidence,
                               seed=seed)
    claim = name or f"{scores.method} edges' faithfulness curve"
    failures = []
    for which, op, bound in bounds:
        m = _curve_measurement(curve, which, model)
        extra = [f"  curve      f(C_k) at sizes {curve.sizes.tolist()}: "
                 + ", ".join(f"{v:.2f}" for v in curve.values)
                 + f" (edges kept {curve.n_edges.tolist()})"]
        try:
            _finish(claim, m, op, bound, allow_inconclusive=allow_inconclusive, extra=extra)
        except AssertionError as exc:
            failures.append(str(exc))
    if failures:
        raise AssertionError("\n".join(failures))
    return curve


def _truth(model: Any, circuit: Any, truth: str) -> EdgeCircuit:
    if truth not in TRUTHS:
        raise CircuitCheckError(f"truth must be one of {list(TRUTHS)}, got {truth!r}")
    if truth == "planted":
        if getattr(model, "cc_name", "") != "zoo:planted":
            raise CircuitCheckError(
                "truth: planted is the zoo's planted circuit, known only on model zoo:planted "
                f"(this model is {getattr(model, 'cc_name', '') or 'another'}); give the true "
                "circuit as the claim's edge circuit (circuit: {edges: [...]})")
        from .zoo.planted import planted_edges

        return planted_edges()
    if not isinstance(circuit, EdgeCircuit):
        raise CircuitCheckError(
            "a recovers claim needs a ground truth: the claim's circuit must be an edge "
            "circuit (circuit: {edges: [...]} or {file: graph.json}), or, on zoo:planted, "
            "truth: planted")
    return circuit


def roc_lines(a: EdgeAuroc) -> dict[str, Any]:
    """The report's ROC curve: true against false positive rate, the chance line dashed."""
    ci = (f" {a.confidence:.0%} CI [{a.ci_low:.3f}, {a.ci_high:.3f}]"
          if np.isfinite(a.ci_low) else " (no interval)")
    return {f"ROC of {a.method} scores vs {a.truth} (AUROC {a.value:.3f}{ci})": {
        "x": a.fpr.tolist(), "xlabel": "false positive rate", "ylabel": "true positive rate",
        "series": {"ROC": {"y": a.tpr.tolist()},
                   "chance": {"y": a.fpr.tolist(), "dashed": True}}}}


def assert_recovers(model: Any, task: Task, circuit: Any = None, *, auroc_at_least: float,
                    method: str = "eap-ig", steps: int = 5, ablation: str = "resample",
                    metric: str = "logit_diff", reference: str | None = None,
                    truth: str = "circuit", confidence: float = 0.95, seed: int = 0,
                    n_boot: int = 1000, name: str | None = None,
                    allow_inconclusive: bool = False) -> EdgeAuroc:
    """Assert edge scores by ``method`` on ``task`` recover a known circuit: the AUROC of
    |score| against the true edges is at least ``auroc_at_least``, decided by its bootstrap
    interval over prompts. The truth is the claim's edge circuit (``truth="circuit"``) or, on
    ``zoo:planted``, its planted edges (``truth="planted"``). Returns the AUROC."""
    __tracebackhide__ = True
    bound = unit_bound(auroc_at_least, "auroc_at_least")
    true = _truth(model, circuit, truth)
    true.validate(model)
    scores = edge_scores(model, task, method, steps=steps, ablation=ablation, metric=metric,
                         reference=reference, confidence=confidence)
    a = edge_auroc(scores, true, confidence=confidence, seed=seed, n_boot=n_boot)
    fields = dict(metric=metric, ablation=scores.ablation, confidence=confidence, seed=seed,
                  model=getattr(model, "cc_name", ""), task=task.name,
                  metric_description=(f"AUROC of |{a.method} score| for the {a.n_pos} edges "
                                      f"of {a.truth!r} among {a.n_pos + a.n_neg}; bootstrap "
                                      f"over {a.n} prompts"))
    if a.per_boot is None:
        m = unmeasured("edge AUROC", "the scores have no per-prompt values, so the AUROC has "
                       "no interval; score on at least 2 prompts", 1, **fields)
    else:
        m = Measurement(kind="edge AUROC", value=a.value, ci=(a.ci_low, a.ci_high),
                        per_prompt=a.per_boot, unit="bootstrap resamples",
                        baselines={"chance": 0.5},
                        details={"lines": roc_lines(a),
                                 "per_prompt_label": "AUROC of a bootstrap resample of the "
                                                     "prompts"}, **fields)
    _finish(name or f"{a.method} scores recover {a.truth}", m, ">=", bound,
            allow_inconclusive=allow_inconclusive,
            extra=[f"  truth      {true.describe()}: "
                   + ", ".join(e.name for e in true.edges[:10])])
    return a


__all__ = ["TRUTHS", "assert_faithfulness_curve", "assert_recovers", "curve_lines",
           "roc_lines", "unit_bound"]
