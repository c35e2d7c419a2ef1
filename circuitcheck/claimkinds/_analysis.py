"""Claim kinds of the notebooks' analyses: OV copying, attention to named positions,
compensation by backup heads, the logit lens (one :func:`register` call each)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import BOOL, HEADS, INT, NUMBER, TEXT, TEXTS, ClaimKind, Param, ParamType, register

A = "circuitcheck.assertions_analysis:"
INTS = ParamType("int | list", "a whole number or a list of whole numbers",
                 lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (
                     isinstance(v, list) and len(v) > 0
                     and all(isinstance(x, int) and not isinstance(x, bool) for x in v)))
M = "circuitcheck.measures."
BOUND = ("holds when the whole confidence interval (of the weakest claimed head) is past the "
         "bound, fails when it is wholly short of it, inconclusive otherwise (a failure unless "
         "allow_inconclusive)")


def _one_bound(spec: Mapping[str, Any]) -> str | None:
    if ("at_least" in spec) == ("at_most" in spec):
        return "needs exactly one of 'at_least' or 'at_most'"
    return None


def _bounds(what: str) -> tuple[Param, ...]:
    return (Param("at_least", NUMBER, doc=f"{what} at least this (or at_most)"),
            Param("at_most", NUMBER, doc=f"{what} at most this (or at_least)"),
            Param("confidence", NUMBER), Param("allow_inconclusive", BOOL))


register(ClaimKind(
    name="ov_copying",
    summary="these heads copy (or, negative, suppress) the task's names through their OV circuit",
    target="heads", assertion=A + "assert_ov_copying", measure=M + "ov:ov_copying",
    params=(Param("heads", HEADS, True, "the claimed heads"),
            Param("method", TEXT, doc="names (top-k of W_E[name] W_OV W_U) or eigen"),
            Param("negative", BOOL, doc="negative copiers (-W_OV)"),
            Param("k", INT, doc="top-k logits a name must reach (names)"),
            Param("mlp0", BOOL, doc="add the first MLP's output to W_E[name] (names)"),
            Param("circuit", TEXT, doc="ov (W_V W_O) or full (W_E W_V W_O W_U) (eigen)"),
            Param("seed", INT)) + _bounds("score"),
    check=_one_bound, verdict=BOUND, records="<ov score> score",
    figures=("histogram", "heatmap"), example={"heads": ["1.1"], "at_least": 0.9}))

register(ClaimKind(
    name="attention",
    summary="these heads attend from a position to named positions (end -> IO >= 0.5)",
    target="heads", assertion=A + "assert_attends",
    measure=M + "attention_positions:position_attention",
    params=(Param("heads", HEADS, True, "the claimed heads"),
            Param("to", TEXTS, True, "target position(s): the task's, first, self or prev; a "
                                     "list is summed"),
            Param("at", TEXT, doc="the query position (default end)"),
            Param("weighted", BOOL, doc="attention × ‖v‖"),
            Param("prompts", TEXT, doc="clean or corrupted"), Param("seed", INT))
    + _bounds("mean attention"),
    check=_one_bound, verdict=BOUND, records="attention",
    figures=("histogram", "heatmap", "patterns"),
    example={"heads": ["1.1"], "to": "target", "at_least": 0.9}))

register(ClaimKind(
    name="compensation",
    summary="when some heads are ablated, these heads raise their direct effect (backup heads)",
    target="heads", assertion=A + "assert_compensates",
    measure=M + "compensation:compensation",
    params=(Param("heads", HEADS, True, "the compensating heads"),
            Param("ablate", HEADS, True, "the ablated heads"),
            Param("at", TEXTS, doc="where they are ablated (default end; all)"),
            Param("ablation", TEXT, doc="zero (default), mean, mean-by-template, resample"),
            Param("reference", TEXT), Param("relative", BOOL,
                                            doc="share of the lost direct effect (default)"),
            Param("scale", TEXT, doc="final-norm scale: clean (default) or ablated"),
            Param("seed", INT)) + _bounds("compensation"),
    check=_one_bound, verdict=BOUND, records="compensation",
    figures=("histogram", "heatmap", "bars"),
    example={"heads": ["1.0", "1.2", "1.3"], "ablate": ["1.1"], "at_most": 0.1}))

register(ClaimKind(
    name="logit_lens",
    summary="the answer's logit difference decoded after a layer (logit lens) is past a bound",
    target="task", assertion=A + "assert_logit_lens", measure=M + "logit_lens:logit_lens",
    params=(Param("layer", INT, True, "the residual after this layer (-1: the embedding)"),
            Param("seed", INT)) + _bounds("decoded logit difference"),
    check=_one_bound, verdict=BOUND, records="logit lens", figures=("histogram", "points"),
    example={"layer": 0, "at_most": 1.0}))

register(ClaimKind(
    name="head_sweep",
    summary="ablating any one of these heads lowers the metric by at least x; no other head does",
    target="heads", assertion=A + "assert_head_sweep", measure=M + "head_sweep:head_sweep",
    params=(Param("heads", HEADS, True, "the heads whose ablation matters"),
            Param("drop_at_least", NUMBER, True, "drop (absolute; relative: share of the full "
                                                 "model) each claimed head causes at least"),
            Param("relative", BOOL, doc="drop as a share of the full model's mean metric"),
            Param("others", BOOL, doc="also claim no other head drops it that much (default)"),
            Param("ablation", TEXT, doc="layer-mean (default: seed 001), zero, mean, ..."),
            Param("metric", TEXT, doc="prob (default), logit_diff, top1, logit, ..."),
            Param("reference", TEXT), Param("confidence", NUMBER),
            Param("allow_inconclusive", BOOL)),
    verdict=("holds when every claimed head's simultaneous drop interval is at or above the "
             "bound and (others) every other head's wholly below it; fails when one is wholly "
             "on the wrong side; inconclusive otherwise"),
    records="head sweep", figures=("histogram", "heatmap"),
    example={"heads": ["0.2", "1.1"], "drop_at_least": 0.2, "ablation": "mean"}))

register(ClaimKind(
    name="ablation_curve",
    summary="ablating the top-k induction heads' attention costs more loss than k random heads "
            "at every lag (seed 004)",
    target="task", assertion="circuitcheck.assertions_patching:assert_ablation_curve",
    measure=M + "ablation_curve:ablation_curve",
    params=(Param("k", INT, True, "how many top heads (and random heads) are ablated"),
            Param("over_random_by", NUMBER, True, "required extra loss (nats) over k random "
                                                  "heads, at every lag"),
            Param("lags", INTS, doc="repeat distances (default: the task's seq_len); the task "
                                    "must be the induction builder"),
            Param("ks", INTS, doc="the curve's other k (default 0, 1, k/2, k)"),
            Param("mode", TEXT, doc="zero or mean (uniform over the visible keys)"),
            Param("layers", TEXT, doc="all, lower (layers 0..L/2-1) or upper (L/2..L-1)"),
            Param("n_permutations", INT, doc="random head sets per k"),
            Param("heads", HEADS, doc="the ranking, best first (default: by induction score)"),
            Param("confidence", NUMBER), Param("allow_inconclusive", BOOL),
            Param("executor", TEXT, doc="local (default), ray or ray:ADDRESS "
                                        "(pip install 'circuitcheck[ray]')")),
    verdict="holds when every lag's interval of the excess loss is at or above the bound, "
            "fails when one lag's is wholly below it, inconclusive otherwise",
    records="ablation curve", figures=("histogram", "lines"),
    example={"k": 1, "over_random_by": 0.5, "lags": [6, 12]}))

register(ClaimKind(
    name="task_quality",
    summary="the full model does the task on every template group (metric at least a value)",
    target="task", assertion=A + "assert_task_quality", measure=M + "quality:task_quality",
    params=(Param("at_least", NUMBER, True, "the metric's mean on every group at least this"),
            Param("metric", TEXT, doc="top1 (default), prob or logit_diff"),
            Param("per_template", BOOL, doc="per template group (default) or over all prompts"),
            Param("confidence", NUMBER), Param("allow_inconclusive", BOOL)),
    verdict=("holds when the weakest template group's interval (simultaneous over groups) is "
             "at or above the bound, fails when one group's is wholly below, inconclusive "
             "otherwise; a one-prompt group is not measurable"),
    records="task quality", figures=("histogram", "bars"),
    example={"at_least": 0.9, "metric": "top1"}))
