"""``assert_*`` helpers for the notebooks' analysis claims: OV copying, attention to named
positions, compensation by backup heads, the logit lens, per-head ablation sweeps and the
full model's quality on every template of a task.

They decide like ``circuitcheck.assertions``: a claim *holds* when the whole confidence
interval is past the threshold (for several heads: the weakest head's interval), *fails* when
the whole interval is short of it, and is *inconclusive* otherwise (a failure unless
``allow_inconclusive``). Each records its measurement for the report.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .assertions import _check_threshold, _conclude, _finish
from .circuit import format_head
from .measures import Measurement
from .measures._patching_base import _heads
from .measures.attention_positions import position_attention
from .measures.compensation import compensation
from .measures.head_sweep import head_sweep
from .measures._scores import HeadScores
from .measures.logit_lens import logit_lens
from .measures.ov import ov_copying, ov_eigen_scores
from .measures.quality import task_quality
from .tasks import Task


def _one_bound(at_least: Any, at_most: Any) -> tuple[str, float]:
    if (at_least is None) == (at_most is None):
        raise ValueError("give exactly one of at_least= or at_most=")
    if at_least is not None:
        return ">=", _check_threshold(at_least, "at_least")
    return "<=", _check_threshold(at_most, "at_most")


def _weakest(scores: HeadScores, heads: list, op: str, *, kind: str, metric: str,
             description: str, model: Any, task: str, seed: int) -> Measurement:
    """The claim's measurement: the claimed head whose interval is nearest failing."""
    if op == ">=":
        hd = min(heads, key=lambda h: scores.ci_low[h])
    else:
        hd = max(heads, key=lambda h: scores.ci_high[h])
    ranked = ", ".join(f"{format_head(h)} {scores[h]:.2f}" for h in scores.top(5))
    return Measurement(
        kind=kind, value=scores[hd], ci=(float(scores.ci_low[hd]), float(scores.ci_high[hd])),
        per_prompt=scores.per_sequence[:, hd[0], hd[1]], metric=metric,
        metric_description=f"{description}; weakest claimed head {format_head(hd)}",
        confidence=scores.confidence, seed=seed, model=getattr(model, "cc_name", ""),
        task=task, baselines={format_head(h): scores[h] for h in heads},
        details={"heads": [list(h) for h in heads], "top": ranked,
                 "heatmaps": {f"{scores.kind} per head": {
                     "data": scores.values.tolist(), "label": description,
                     "outline": [list(h) for h in heads]}}})


def assert_ov_copying(model: Any, task: Task, heads: Any, *, at_least: float | None = None,
                      at_most: float | None = None, method: str = "names",
                      negative: bool = False, k: int = 5, mlp0: bool = True,
                      circuit: str = "ov", confidence: float = 0.95, seed: int = 0,
                      name: str | None = None, allow_inconclusive: bool = False) -> Measurement:
    """Assert ``heads`` copy (or, ``negative``, suppress) by their OV circuits.

    ``method="names"``: the fraction of the task's names (answers and wrong answers) each
    head's full OV circuit puts in their own top ``k`` logits (``cc.measures.ov.ov_copying``;
    interval over names). ``method="eigen"``: the eigenvalue copying score Σ Re λ / Σ |λ| of
    W_V W_O (``circuit="ov"``) or of W_E W_V W_O W_U (``circuit="full"``); with ``negative`` the
    score is negated (negative copiers score near 1)."""
    __tracebackhide__ = True
    op, threshold = _one_bound(at_least, at_most)
    hs = _heads(model, heads)
    if method == "names":
        scores = ov_copying(model, task, k=k, negative=negative, mlp0=mlp0,
                            confidence=confidence, seed=seed)
        desc = (f"fraction of {scores.n} names in their own top-{k} logits through "
                f"{'-' if negative else ''}W_OV")
    elif method == "eigen":
        s = ov_eigen_scores(model, circuit=circuit)
        if negative:
            s = HeadScores(s.kind.replace("ov_", "ov_negative_"), -s.values, -s.ci_high,
                           -s.ci_low, -s.per_sequence, s.confidence)
        scores = s
        desc = ("Σ Re λ / Σ |λ| of " + ("W_V W_O" if circuit == "ov" else "W_E W_V W_O W_U")
                + (", negated" if negative else ""))
    else:
        raise ValueError(f"method must be 'names' or 'eigen', got {method!r}")
    m = _weakest(scores, hs, op, kind=f"{scores.kind} score", metric=scores.kind,
                 description=desc, model=model, task=task.name, seed=seed)
    label = ", ".join(format_head(h) for h in hs)
    word = "negative copiers" if negative else "copy"
    claim = name or f"{label} {word} (OV {'names' if method == 'names' else 'eigenvalues'})"
    return _finish(claim, m, op, threshold, allow_inconclusive=allow_inconclusive,
                   extra=[f"  heads      {label}: {desc}",
                          f"  top heads  {m.details['top']}"])


def assert_attends(model: Any, task: Task, heads: Any, *, to: Any,
                   at_least: float | None = None, at_most: float | None = None,
                   at: str = "end", weighted: bool = False, prompts: str = "clean",
                   confidence: float = 0.95, seed: int = 0, name: str | None = None,
                   allow_inconclusive: bool = False) -> Measurement:
    """Assert ``heads`` attend from position ``at`` to ``to`` ("9.9 attends from end to IO
    >= 0.5"): each head's mean attention (summed over the positions of ``to`` when it is a
    list; ``weighted``: α·‖v‖) on the task's ``prompts``, interval over prompts."""
    __tracebackhide__ = True
    op, threshold = _one_bound(at_least, at_most)
    hs = _heads(model, heads)
    target = [to] if isinstance(to, str) else list(to)
    pa = position_attention(model, task, [target], from_=at, weighted=weighted,
                            prompts=prompts, confidence=confidence, seed=seed)
    scores = pa.of(target)
    desc = f"{pa.what} from {at} to {pa.targets[0]} on {pa.n} {prompts} prompts"
    m = _weakest(scores, hs, op, kind="attention", metric=pa.what, description=desc,
                 model=model, task=task.name, seed=seed)
    m.details["patterns"] = attention_pictures(model, task, hs, at, target, prompts)
    label = ", ".join(format_head(h) for h in hs)
    rel = "at least" if op == ">=" else "at most"
    claim = name or f"{label} attend{'s' * (len(hs) == 1)} from {at} to {pa.targets[0]} " \
                    f"{rel} {threshold:g}"
    return _finish(claim, m, op, threshold, allow_inconclusive=allow_inconclusive,
                   extra=[f"  heads      {label}: {desc}",
                          f"  top heads  {m.details['top']}"])


def attention_pictures(model: Any, task: Task, heads: list, at: str, target: list,
                       prompts: str = "clean", n_prompts: int = 2, max_heads: int = 4
                       ) -> dict[str, Any]:
    """The attention patterns of (up to ``max_heads`` of) ``heads`` on the first ``n_prompts``
    prompts, for the report: tokens, query x key weights, the claim's query row and targets."""
    import torch

    from .measures.attention_positions import _position, _prompt_set

    enc = task.encode(model)
    tokens, lengths = _prompt_set(task, enc, prompts)
    q = _position(task, enc, at, lengths)
    cols = {}
    for name in target:
        if name == "first":
            cols[name] = torch.zeros_like(q)
        elif name == "self":
            cols[name] = q
        elif name == "prev":
            cols[name] = (q - 1).clamp_min(0)
        else:
            cols[name] = _position(task, enc, name, lengths)
    out: dict[str, Any] = {}
    layers = sorted({l for l, _ in heads[:max_heads]})
    for i in range(min(n_prompts, tokens.shape[0])):
        n = int(lengths[i])
        row = tokens[i:i + 1, :n].to(model.cfg.device)
        with torch.inference_mode():
            _, cache = model.run_with_cache(
                row, names_filter=lambda nm: nm in {f"blocks.{l}.attn.hook_pattern"
                                                   for l in layers})
        words = [str(t) for t in model.to_str_tokens(row[0])]
        for layer, h in heads[:max_heads]:
            w = cache[f"blocks.{layer}.attn.hook_pattern"][0, h].float().cpu()
            out[f"{format_head((layer, h))} on {prompts} prompt {i}"] = {
                "tokens": words, "weights": [[round(float(x), 4) for x in w[r, :r + 1]]
                                             for r in range(n)],
                "row": int(q[i]), "cols": sorted({int(c[i]) for c in cols.values()})}
    return out


def assert_compensates(model: Any, task: Task, heads: Any, *, ablate: Any,
                       at_least: float | None = None, at_most: float | None = None,
                       name: str | None = None, allow_inconclusive: bool = False,
                       **kwargs: Any) -> Measurement:
    """Assert that when ``ablate`` is ablated (at ``at``, default ``end``), ``heads`` raise
    their direct logit attribution by at least ``at_least`` (a share of the direct effect the
    ablated heads lose, or logits with ``relative=False``); ``at_most`` claims they do not.
    Keyword arguments go to ``cc.measures.compensation.compensation``."""
    __tracebackhide__ = True
    op, threshold = _one_bound(at_least, at_most)
    m = compensation(model, task, heads, ablate=ablate, **kwargs)
    b = m.baselines
    label = ", ".join(format_head(h) for h in _heads(model, heads))
    gone = ", ".join(format_head(h) for h in _heads(model, ablate, "ablate"))
    claim = name or (f"{label} compensate{'s' * (label.count(',') == 0)} for {gone}"
                     if op == ">=" else f"{label} do not compensate for {gone}")
    extra = [f"  ablated    {gone} ({m.ablation}, at {kwargs.get('at', 'end')})",
             f"  logit diff clean {b['clean']:.2f}   naive prediction (clean - lost direct "
             f"effect {b['lost']:.2f}) {b['naive']:.2f}   after ablation {b['ablated']:.2f}"]
    return _finish(claim, m, op, threshold, allow_inconclusive=allow_inconclusive, extra=extra)


def assert_logit_lens(model: Any, task: Task, *, layer: int, at_least: float | None = None,
                      at_most: float | None = None, confidence: float = 0.95, seed: int = 0,
                      name: str | None = None, allow_inconclusive: bool = False) -> Measurement:
    """Assert the logit difference decoded from the residual after ``layer`` (logit lens; -1:
    the embedding) is at least ``at_least`` (the answer is readable there) or at most
    ``at_most`` (not yet)."""
    __tracebackhide__ = True
    op, threshold = _one_bound(at_least, at_most)
    ll = logit_lens(model, task, confidence=confidence, seed=seed)
    s = ll.stage(layer)
    m = Measurement(
        kind="logit lens", value=float(ll.values[s]),
        ci=(float(ll.ci_low[s]), float(ll.ci_high[s])), per_prompt=ll.per_prompt[:, s],
        metric=ll.metric, metric_description=f"{ll.metric} decoded from the residual "
        f"{ll.labels[s]} (final norm and unembedding)", confidence=confidence, seed=seed,
        model=getattr(model, "cc_name", ""), task=task.name,
        baselines={"final": float(ll.values[-1])},
        details={"points": {"logit lens": {
            "x": list(range(-1, len(ll.labels) - 1)), "y": ll.values.tolist(),
            "labels": list(ll.labels), "xlabel": "residual after layer (-1: embedding)",
            "ylabel": ll.metric}}})
    claim = name or (f"the answer is readable after layer {layer}" if op == ">=" else
                     f"the answer is not yet readable after layer {layer}")
    extra = ["  per layer  " + ", ".join(f"{lab} {v:.2f} (top-1 {t:.0%})" for lab, v, t in
                                         zip(ll.labels, ll.values, ll.top1))]
    return _finish(claim, m, op, threshold, allow_inconclusive=allow_inconclusive, extra=extra)


def assert_head_sweep(model: Any, task: Task, heads: Any, *, drop_at_least: float,
                      relative: bool = False, others: bool = True, name: str | None = None,
                      allow_inconclusive: bool = False, **kwargs: Any) -> Any:
    """Assert that ablating any one of ``heads`` lowers the metric by at least
    ``drop_at_least`` (absolute, in the metric's units, as seed 001 prints it; a share of the
    full model's mean with ``relative=True``) and, with ``others``, that no other head does.

    Decided on the sweep's simultaneous intervals (``cc.measures.head_sweep``): held when every
    claimed head's drop interval is at or above the bound and every other head's wholly below
    it; failed when a claimed head's is wholly below or another head's wholly at or above;
    inconclusive otherwise. Keyword arguments go to ``head_sweep`` (ablation, metric, ...).
    """
    __tracebackhide__ = True
    from ._validate import flag
    from .stats import FAILED, HOLDS, INCONCLUSIVE, UNMEASURABLE

    bound = _check_threshold(drop_at_least, "drop_at_least")
    flag(relative, "relative")
    flag(others, "others")
    flag(allow_inconclusive, "allow_inconclusive")
    claimed = _heads(model, heads)
    if not others and "heads" not in kwargs:  # nothing is claimed of the rest: sweep only these
        kwargs["heads"] = claimed
    sw = head_sweep(model, task, **kwargs)
    scale = abs(sw.full) if relative else 1.0
    if relative and not sw.full:
        scale = float("nan")
    drop, d_lo, d_hi = -sw.change / scale, -sw.ci_high / scale, -sw.ci_low / scale
    rest = [h for h in sw.ranking() if h not in claimed] if others else []
    weakest = min(claimed, key=lambda h: d_lo[h])
    strongest = max(rest, key=lambda h: d_hi[h]) if rest else None
    if sw.problem or not np.isfinite(scale):
        v = UNMEASURABLE
    elif any(d_hi[h] < bound for h in claimed) or any(d_lo[h] >= bound for h in rest):
        v = FAILED
    elif all(d_lo[h] >= bound for h in claimed) and all(d_hi[h] < bound for h in rest):
        v = HOLDS
    else:
        v = INCONCLUSIVE
    unit = "of the full model" if relative else sw.metric
    label = ", ".join(format_head(h) for h in claimed)
    claim = name or f"ablating {label} lowers {sw.metric} by >= {bound:g}" + (
        "; no other head does" if others else "")
    m = Measurement(
        kind="head sweep", value=float(drop[weakest]),
        ci=(float(d_lo[weakest]), float(d_hi[weakest])), per_prompt=-sw.per_prompt[:, weakest[0],
                                                                             weakest[1]] / scale,
        metric=sw.metric, metric_description=f"drop in {sw.metric} ({unit}) when one head is "
        "ablated", ablation=sw.ablation, confidence=sw.confidence, seed=0,
        model=getattr(model, "cc_name", ""), task=task.name, problem=sw.problem,
        baselines={"full": sw.full},
        details={"heatmaps": {f"drop in {sw.metric}": {
            "data": np.nan_to_num(drop, nan=0.0).tolist(), "outline": [list(h) for h in claimed],
            "label": f"drop in {sw.metric} ({unit}) when the head is ablated alone"}},
            "strongest_other": None if strongest is None else {
                "head": format_head(strongest), "drop": float(drop[strongest]),
                "ci": [float(d_lo[strongest]), float(d_hi[strongest])]}})

    def story() -> str:
        word = {UNMEASURABLE: "NOT MEASURABLE", FAILED: "FAILED", INCONCLUSIVE: "INCONCLUSIVE"}[v]
        ci = f"{sw.confidence:.0%} simultaneous CI"
        lines = [f"claim {claim!r} {word}: " + (sw.problem or (
            f"weakest claimed head {format_head(weakest)} drops {drop[weakest]:.3f} ({ci} "
            f"[{d_lo[weakest]:.3f}, {d_hi[weakest]:.3f}]); required {bound:g}"
            + ("" if strongest is None else
               f"; strongest other head {format_head(strongest)} drops {drop[strongest]:.3f} "
               f"[{d_lo[strongest]:.3f}, {d_hi[strongest]:.3f}], allowed below {bound:g}")))]
        lines.append(f"  sweep      each head alone, {sw.ablation}; {sw.metric} of the full "
                     f"model {sw.full:.3f}; n={sw.n} prompts")
        lines.append("  largest    " + ", ".join(f"{format_head(h)} {drop[h]:+.3f}"
                                                 for h in sw.ranking()[:5]))
        return "\n".join(lines)

    entry = {"claim": claim, "kind": "head sweep", "verdict": v, "op": ">=", "threshold": bound,
             "heads": [list(h) for h in claimed], "measurement": m.to_dict(),
             "strongest_other": m.details["strongest_other"]}
    _conclude(entry, v == HOLDS or (v == INCONCLUSIVE and allow_inconclusive), story)
    return sw




def assert_task_quality(model: Any, task: Task, *, at_least: float, metric: str = "top1",
                        per_template: bool = True, confidence: float = 0.95,
                        name: str | None = None, allow_inconclusive: bool = False
                        ) -> Measurement:
    """Assert the full model does the task: ``metric`` (top1, prob or logit_diff) at least
    ``at_least`` on every template group (``per_template``; else over all prompts).

    The precondition of every circuit claim on the task, per template as the IOI notebook
    breaks it down: a template the model fails is averaged into a circuit's baseline unless it
    is seen. Decided on the weakest group's interval, simultaneous over the groups
    (``TaskQuality.intervals``): held when every group's interval is at or above the bound,
    failed when one is wholly below, inconclusive otherwise; a group of one prompt makes the
    claim not measurable (no interval from one prompt).
    """
    __tracebackhide__ = True
    from dataclasses import replace

    from ._validate import flag

    bound = _check_threshold(at_least, "at_least")
    flag(per_template, "per_template")
    q = task_quality(model, task)
    if not per_template:
        q = replace(q, groups=("all",) * len(q.groups))
    per = q.intervals(metric, confidence=confidence)
    x = q.per_prompt(metric)
    small = [g for g, (n, *_rest) in per.items() if n < 2]
    weakest = min(per, key=lambda g: (per[g][2] if per[g][0] >= 2 else -np.inf))
    n, mean, lo, hi = per[weakest]
    groups = np.asarray(q.groups)
    problem = (f"template group(s) {', '.join(small)} have a single prompt: no interval; use "
               "more prompts (n) or per_template: false" if small else None)
    m = Measurement(
        kind="task quality", value=float("nan") if problem else mean, ci=(lo, hi),
        per_prompt=x[groups == weakest], metric=metric,
        metric_description=f"the full model's {metric} on template group {weakest!r} (the "
        f"weakest of {len(per)}; intervals simultaneous over the groups)",
        confidence=confidence, model=getattr(model, "cc_name", ""), task=task.name,
        problem=problem, baselines={"all": float(x.mean())},
        details={"groups": {g: {"n": v[0], "mean": v[1], "ci": [v[2], v[3]]}
                            for g, v in per.items()},
                 "bars": {f"{metric} per template group": {
                     "labels": list(per), "values": [v[1] for v in per.values()]}}})
    claim = name or (f"the model does {task.name} on every template ({metric} >= {bound:g})"
                     if per_template else f"the model does {task.name} ({metric} >= {bound:g})")
    extra = ["  per group  " + ", ".join(f"{g} {v[1]:.2f} [{v[2]:.2f}, {v[3]:.2f}] (n={v[0]})"
                                         for g, v in per.items())]
    return _finish(claim, m, ">=", bound, allow_inconclusive=allow_inconclusive, extra=extra)


__all__ = ["assert_attends", "assert_compensates", "assert_head_sweep", "assert_logit_lens",
           "assert_ov_copying", "assert_task_quality"]
