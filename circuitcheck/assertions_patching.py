"""``assert_*`` helpers for patching claims: recovery by activation patching, direct effect,
attention ablation against random heads, and seed 004's ablation curve across lags.

They behave like ``circuitcheck.assertions``: a claim *holds* only when its whole confidence
interval is past the threshold, *fails* when the whole interval is short of it, and is
*inconclusive* otherwise (a failure unless ``allow_inconclusive``); each claim is recorded for
the report, with per-head heatmaps in the measurement's details.
"""
from __future__ import annotations

from typing import Any

from .assertions import _check_threshold, _finish
from .circuit import format_head, parse_head
from .measures import Measurement
from .measures.activation_patching import patching_recovery, residual_patching_recovery
from .measures.attention_ablation import attention_ablation_effect
from .measures.dla import direct_effect
from .tasks import Task


def _label(heads: Any) -> str:
    if isinstance(heads, str) or (isinstance(heads, tuple) and len(heads) == 2
                                  and all(isinstance(x, int) for x in heads)):
        heads = [heads]
    return ", ".join(format_head(parse_head(h)) for h in heads)


def assert_patching_recovers(model: Any, task: Task, heads: Any, *, at_least: float,
                             name: str | None = None, allow_inconclusive: bool = False,
                             **kwargs: Any) -> Measurement:
    """Assert that patching ``heads`` (clean → corrupted, together, all positions) recovers at
    least ``at_least`` of the metric: (F(patched) - F(corrupted)) / (F(clean) - F(corrupted)).

    Keyword arguments go to ``cc.measures.patching.patching_recovery`` (component, metric,
    seed, confidence, heatmap). On failure the story names the heads that recover the most.
    """
    __tracebackhide__ = True
    at_least = _check_threshold(at_least, "at_least")
    m = patching_recovery(model, task, heads, **kwargs)
    label = _label(heads)
    claim = name or f"patching {label} recovers {at_least:.0%} of {m.metric}"
    extra = [f"  patched    {label} ({m.details['component']}, clean into corrupted, all "
             "positions)"]
    if m.details.get("top"):
        extra.append("  best single heads  " + ", ".join(f"{h} {v:+.2f}"
                                                        for h, v in m.details["top"]))
    return _finish(claim, m, ">=", at_least, allow_inconclusive=allow_inconclusive, extra=extra)


def assert_residual_patching(model: Any, task: Task, *, layer: int, at_least: float,
                             at: str = "end", name: str | None = None,
                             allow_inconclusive: bool = False, **kwargs: Any) -> Measurement:
    """Assert that patching the residual stream of ``layer`` at position ``at`` (clean →
    corrupted) recovers at least ``at_least`` of the metric (the interval over prompts must
    clear it). Keyword arguments go to ``residual_patching_recovery`` (component, metric,
    seed, confidence, heatmap)."""
    __tracebackhide__ = True
    at_least = _check_threshold(at_least, "at_least")
    m = residual_patching_recovery(model, task, layer=layer, at=at, **kwargs)
    comp = m.details.get("component", "resid_pre")
    claim = name or f"patching {comp} of layer {layer} at {at} recovers {at_least:.0%}"
    extra = [f"  patched    {comp} of layer {layer} at {at!r}, clean into corrupted"]
    return _finish(claim, m, ">=", at_least, allow_inconclusive=allow_inconclusive, extra=extra)


def assert_direct_effect(model: Any, task: Task, heads: Any, *, at_least: float,
                         name: str | None = None, allow_inconclusive: bool = False,
                         **kwargs: Any) -> Measurement:
    """Assert that ``heads``' summed direct logit attribution is at least ``at_least`` of the
    logit difference (mean over prompts). Keyword arguments go to ``direct_effect``."""
    __tracebackhide__ = True
    at_least = _check_threshold(at_least, "at_least")
    m = direct_effect(model, task, heads, **kwargs)
    label = _label(heads)
    claim = name or f"{label} directly write {at_least:.0%} of the logit difference"
    heat = m.details["heatmaps"]["direct logit attribution"]["data"]
    ranked = sorted(((v, (l, h)) for l, row in enumerate(heat) for h, v in enumerate(row)),
                    reverse=True)[:5]
    extra = [f"  heads      {label}: direct effect through ln_final and W_U[answer] - "
             "W_U[wrong]",
             "  largest direct effects  " + ", ".join(f"{format_head(hd)} {v:+.2f}"
                                                      for v, hd in ranked)]
    return _finish(claim, m, ">=", at_least, allow_inconclusive=allow_inconclusive, extra=extra)


def _signed(x: float) -> str:
    """``+0.123`` / ``-0.123``, and ``+0.000`` for what rounds to zero (never ``+-0.000``)."""
    return "+0.000" if round(x, 3) == 0 else f"{x:+.3f}"


def assert_attention_ablation_effect(model: Any, task: Task, heads: Any, *,
                                     over_random_by: float, name: str | None = None,
                                     allow_inconclusive: bool = False,
                                     **kwargs: Any) -> Measurement:
    """Assert that ablating ``heads``' attention raises the copying loss by at least
    ``over_random_by`` nats more than ablating random head sets of the same size.

    Keyword arguments go to ``attention_ablation_effect`` (n_repeats, mode, seed, heatmap).
    """
    __tracebackhide__ = True
    over_random_by = _check_threshold(over_random_by, "over_random_by")
    m = attention_ablation_effect(model, task, heads, **kwargs)
    label = _label(heads)
    claim = name or (f"ablating {label}'s attention costs {over_random_by:.2f} nats more than "
                     "random heads")
    r = m.details["random_effects"]
    b = m.baselines
    extra = [f"  ablated    {label}: loss {_signed(b['chosen ablated'] - b['clean loss'])} nats; "
             f"{len(r)} random sets of as many heads: {_signed(b['random ablated'] - b['clean loss'])}"
             f" on average (p = {m.details['p_value']:.3g} that random sets do as much)"]
    return _finish(claim, m, ">=", over_random_by, allow_inconclusive=allow_inconclusive,
                   extra=extra)


def assert_path_carries(model: Any, task: Task, heads: Any, *, receivers: Any = None,
                        at_least: float, name: str | None = None,
                        allow_inconclusive: bool = False, **kwargs: Any) -> Measurement:
    """Assert that the path from ``heads`` (the senders) to ``receivers`` carries at least ``at_least`` of the
    clean − corrupted difference (path patching, noising): (F(clean) - F(patched)) /
    (F(clean) - F(corrupted)). Keyword arguments go to ``path_patching_effect``
    (receiver_input, positions, metric, freeze_mlps, seed, confidence)."""
    __tracebackhide__ = True
    from .measures.path_patching import path_patching_effect

    at_least = _check_threshold(at_least, "at_least")
    m = path_patching_effect(model, task, heads, receivers, **kwargs)
    d = m.details
    to = ", ".join(d["receivers"]) or "the logits"
    claim = name or (f"path {_label(heads)} -> {to} ({d['receiver_input']}) carries "
                     f"{at_least:.0%} of {m.metric}")
    extra = [f"  path       senders {', '.join(d['senders'])} (corrupted) -> {to}'s "
             f"{d['receiver_input']}" + (f" at {', '.join(d['positions'])}"
                                         if d["positions"] else "")
             + "; every other head frozen clean" + (", MLPs frozen" if d["freeze_mlps"] else "")]
    return _finish(claim, m, ">=", at_least, allow_inconclusive=allow_inconclusive, extra=extra)


def assert_ablation_curve(model: Any, task: Task, *, k: int, over_random_by: float,
                          lags: Any = None, ks: Any = None, mode: str = "zero",
                          name: str | None = None, allow_inconclusive: bool = False,
                          **kwargs: Any) -> Measurement:
    """Assert that ablating the attention of the top-``k`` heads (by induction score, a scores
    CSV or ``heads``) costs at least ``over_random_by`` nats more copying loss than ``k``
    random heads, at every lag (seed 004).

    The lags default to the task's ``seq_len``; ``n`` and ``seed`` come from the task (an
    ``induction`` task). Decided per lag on the bootstrap interval of the excess: held when
    every lag's interval is at or above the bound, failed when one lag's is wholly below it,
    inconclusive otherwise; the recorded measurement is the deciding lag's. Other keyword
    arguments go to ``cc.ablation_curve`` (layers, n_permutations, scores, heads,
    confidence).
    """
    __tracebackhide__ = True
    import numpy as np

    from . import _validate
    from .errors import CircuitCheckError
    from .measures.ablation_curve import ablation_curve

    bound = _check_threshold(over_random_by, "over_random_by")
    k = _validate.count(k, "k")
    meta = dict(getattr(task, "meta", {}) or {})
    if meta.get("builder") != "induction" or "seq_len" not in meta:
        raise CircuitCheckError(
            "an ablation curve builds repeated-sequence tasks at each lag, so the claim's task "
            "must be the induction builder (task: {builder: induction, n: 24, seq_len: 10}); "
            f"got task {task.name!r}")
    lags = [meta["seq_len"]] if lags is None else ([lags] if isinstance(lags, int) else lags)
    ks = sorted({0, 1, max(1, k // 2), k}) if ks is None else sorted({0, *ks, k})
    curve = ablation_curve(model, ks=ks, lags=lags, modes=(mode,), n=meta.get("n", 24),
                           seed=meta.get("seed", 0), **kwargs)
    cis = {lag: curve.excess_ci(k, lag) for lag in curve.lags}
    short = [lag for lag in curve.lags if cis[lag][1] < bound]
    lag = min(short, key=lambda g: cis[g][1]) if short else min(curve.lags,
                                                                 key=lambda g: cis[g][0])
    excess = curve.excess(k, lag)
    claim = name or (f"ablating the top-{k} heads' attention costs {bound:g} nats more than "
                     f"{k} random heads at every lag")
    m = Measurement(
        kind="ablation curve", value=float(excess.mean()), ci=cis[lag], per_prompt=excess,
        metric="copying loss", metric_description="-log p(answer) at the last token (nats)",
        ablation=f"attention scores {mode}-ablated", confidence=curve.confidence,
        seed=curve.seed, model=getattr(model, "cc_name", ""), task=f"induction, lag {lag}",
        baselines={"clean loss": float(np.mean(curve.loss_clean[lag]))},
        details={"lag": lag, "k": k, "lags": list(curve.lags), "layers": curve.layers,
                 "ranked": [format_head(h) for h in curve.ranked[:k]],
                 "score_source": curve.score_source,
                 "per_lag": {str(g): [float(curve.excess(k, g).mean()), *cis[g]]
                             for g in curve.lags},
                 "lines": {f"loss increase vs k ({mode})": curve.lines(mode)}})
    i = curve.ks.index(k)
    per_lag = [f"lag {g}: top {curve.chosen[(mode, g)][i].mean():+.3f} vs random "
               f"{curve.random[(mode, g)][i].mean():+.3f} (excess CI [{cis[g][0]:.3f}, "
               f"{cis[g][1]:.3f}])" for g in curve.lags]
    extra = [f"  heads      top-{k} by {curve.score_source} in {curve.layers} layers: "
             + ", ".join(format_head(h) for h in curve.ranked[:k]),
             "  per lag    " + "; ".join(per_lag)]
    return _finish(claim, m, ">=", bound, allow_inconclusive=allow_inconclusive, extra=extra)


__all__ = ["assert_ablation_curve", "assert_attention_ablation_effect", "assert_direct_effect",
           "assert_path_carries", "assert_patching_recovers"]
