"""The built-in claim kinds, one :func:`register` call each (order = the README's order)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import BOOL, HEADS, INT, NUMBER, TEXT, TEXTS, ANY, ClaimKind, Param, register

A = "circuitcheck.assertions:"
AP = "circuitcheck.assertions_patching:"
M = "circuitcheck.measures:"
MP = "circuitcheck.measures."

INTERVAL = ("holds when the whole confidence interval is past the threshold, fails when the "
            "whole interval is short of it, inconclusive otherwise (a failure unless "
            "allow_inconclusive)")
P_VALUE = "holds when the test's p-value decides for the claim at level alpha"


def _ratio_params(threshold: str, doc: str) -> tuple[Param, ...]:
    return (Param(threshold, NUMBER, True, doc),
            Param("ablation", TEXT, doc="zero, mean, mean-by-template, resample or layer-mean"),
            Param("metric", TEXT, doc="logit_diff, prob, top1, kl, ..."),
            Param("reference", TEXT, doc="prompts the ablation means come from"),
            Param("normalize", TEXT, doc="ratio (F(C)/F(M)) or ablated"),
            Param("confidence", NUMBER, doc="interval level"),
            Param("allow_inconclusive", BOOL, doc="pass when the interval straddles"))


#: Where a Monte-Carlo or sweep claim's forward passes run (``circuitcheck.executors``).
EXECUTOR = Param("executor", TEXT, doc="local (default), ray or ray:ADDRESS "
                                      "(pip install 'circuitcheck[ray]')")


def _test_params(first: Param) -> tuple[Param, ...]:
    return (first, Param("alpha", NUMBER, doc="test level"),
            Param("ablation", TEXT), Param("metric", TEXT), Param("reference", TEXT))


register(ClaimKind(
    name="faithfulness", summary="the circuit alone keeps the task: F(C)/F(M) at least a value",
    target="circuit", assertion=A + "assert_faithful", measure=M + "faithfulness",
    params=_ratio_params("at_least", "required faithfulness"), verdict=INTERVAL,
    records="faithfulness", figures=("histogram",), edge_circuits=True,
    example={"at_least": 0.9, "ablation": "mean", "metric": "top1", "normalize": "ablated"}))

register(ClaimKind(
    name="necessity", summary="removing the circuit breaks the task: F(M\\C)/F(M) at most a value",
    target="circuit", assertion=A + "assert_necessary", measure=M + "necessity",
    params=_ratio_params("at_most", "allowed necessity ratio"), verdict=INTERVAL,
    records="necessity", figures=("histogram",), edge_circuits=True,
    example={"at_most": 0.1, "ablation": "mean", "metric": "top1", "normalize": "ablated"}))

register(ClaimKind(
    name="head_scores",
    summary="heads are of a kind by their attention (induction, previous_token, ...)",
    target="per_score", assertion=A + "assert_head_score", measure=M + "head_scores",
    score_kinds=M + "HEAD_SCORE_KINDS",
    params=(Param("heads", HEADS, True, "the claimed heads",
                  missing="the heads claimed to be of this kind"),
            Param("at_least", NUMBER, doc="every claimed head's score interval above this"),
            Param("top", INT, doc="each claimed head ranks within the top k (default: as many "
                                  "as claimed)"),
            Param("n", INT, doc="sequences of repeated random tokens"),
            Param("seq_len", INT, doc="length of each repeated segment"),
            Param("on_task", BOOL, doc="score on the claim's task prompts instead of "
                                       "repeated random tokens")),
    verdict="held when the weakest claimed head's interval is above at_least (" + INTERVAL
            + ") and every claimed head ranks within top",
    records="<score kind> score", figures=("histogram", "heatmap"),
    example={"previous_token": {"heads": ["0.2"], "top": 1, "at_least": 0.9, "n": 64},
             "induction": {"heads": ["1.1"], "top": 1, "at_least": 0.9, "n": 64}}))

register(ClaimKind(
    name="important", summary="stochastic ablation ranks these heads the most important",
    target="heads", assertion=A + "assert_important", measure=M + "stochastic_ablation",
    params=(Param("heads", HEADS, True, "the claimed heads"),
            Param("top", INT, doc='"among the top k" (default: as many as claimed)'),
            Param("by", TEXT, doc="importance or exclusion"),
            Param("trials", INT, doc="trial budget of the sequential test"),
            Param("confidence", NUMBER), Param("keep_prob", NUMBER),
            Param("exclusion_keep_prob", NUMBER), Param("ablation", TEXT),
            Param("metric", TEXT), Param("reference", TEXT), Param("min_trials", INT),
            Param("trial", TEXT, doc="prompt (one mask per prompt) or notebook (every prompt)"),
            EXECUTOR),
    verdict="held when every claimed head's simultaneous interval lies above every other "
            "head's, failed when another head is surely more important, inconclusive otherwise",
    records="<by> effect", figures=("histogram", "heatmap", "points", "bars"),
    example={"heads": ["0.2", "1.1"], "trials": 4096, "ablation": "mean"}))

register(ClaimKind(
    name="equivalence", summary="the circuit's metric is within epsilon of the model's (TOST)",
    target="circuit", assertion=A + "assert_equivalent", measure=M + "equivalence",
    params=_test_params(Param("epsilon", NUMBER, doc="allowed difference")),
    verdict="held when TOST rejects H0 |F(M) - F(C)| >= epsilon at alpha (both one-sided tests)",
    records="equivalence (<method>)", figures=(),
    example={"epsilon": 0.1, "alpha": 0.05, "metric": "top1"}))

register(ClaimKind(
    name="localization", summary="removing the circuit hurts more than removing random heads",
    target="circuit", assertion=A + "assert_localized", measure=M + "localization",
    params=_test_params(Param("n_random", INT, doc="random head sets")),
    verdict=P_VALUE + " (H0 rejected)", records="localization", figures=(),
    example={"alpha": 0.05, "n_random": 50, "metric": "top1"}))

register(ClaimKind(
    name="minimality", summary="every head matters more than random outside heads (Holm)",
    target="circuit", assertion=A + "assert_minimal", measure=M + "minimality_test",
    params=_test_params(Param("n_random", INT, doc="outside heads compared with")),
    verdict=P_VALUE + " (H0 rejected for every head, Holm-corrected)", records="minimality",
    figures=(), example={"alpha": 0.05, "metric": "top1"}))


register(ClaimKind(
    name="minimality_scores",
    summary="every head's minimality score (given its K set, seed 002) is at least a value",
    target="circuit", assertion=A + "assert_minimality_scores", measure=M + "minimality",
    params=(Param("at_least", NUMBER, True, "required score of every head"),
            Param("k_sets", ANY, doc='K per head, e.g. {"1.1": ["0.2"]} (default: none)'),
            Param("ablation", TEXT), Param("metric", TEXT), Param("reference", TEXT),
            Param("confidence", NUMBER), Param("allow_inconclusive", BOOL)),
    verdict="failed when some head's whole interval is below at_least, held when every "
            "head's interval is above it, inconclusive otherwise",
    records="minimality", figures=("histogram", "bars"),
    example={"at_least": 0.005, "k_sets": {"1.1": ["0.2"]}}))


def _one_threshold(spec: Mapping[str, Any]) -> str | None:
    if ("at_least" in spec) == ("at_most" in spec):
        return "needs exactly one of 'at_least' (faithfulness) or 'at_most' (necessity)"
    return None


register(ClaimKind(
    name="robust", summary="faithfulness or necessity holds over ablations x metrics x positions",
    target="circuit", assertion=A + "assert_robust", measure=M + "sweep",
    params=(Param("at_least", NUMBER, doc="faithfulness threshold (or at_most)"),
            Param("at_most", NUMBER, doc="necessity threshold (or at_least)"),
            Param("require", ANY, doc="all, or the combinations that must hold"),
            Param("ablation", TEXTS), Param("metric", TEXTS), Param("positions", TEXTS),
            Param("normalize", TEXT), Param("reference", TEXT), Param("confidence", NUMBER),
            EXECUTOR),
    check=_one_threshold,
    verdict="held when every required combination holds (each decided by its interval)",
    records="robust <faithfulness|necessity>", figures=("histogram", "grid"),
    example={"at_least": 0.8, "ablation": ["zero", "mean"], "metric": ["top1", "prob"],
             "normalize": "ablated"}))

register(ClaimKind(
    name="selection",
    summary="the heads stochastic ablation selects carry the task alone and break it removed",
    target="task", assertion=A + "assert_selection", measure=M + "stochastic_ablation",
    params=(Param("top", INT, doc="select the top k (or percentile)"),
            Param("percentile", NUMBER, doc="select the heads above it (or top)"),
            Param("retained_at_least", NUMBER, doc="kept alone, fraction of the full model"),
            Param("ablated_at_most", NUMBER, doc="ablated, fraction of the full model"),
            Param("by", TEXT, doc="importance, exclusion or union (either regime's outliers)"),
            Param("score", TEXT, doc="effect (regression) or notebook (seed 000's counts)"),
            Param("trial", TEXT, doc="prompt (one mask per prompt) or notebook (every prompt)"),
            Param("trials", INT), Param("keep_prob", NUMBER),
            Param("exclusion_keep_prob", NUMBER), Param("ablation", TEXT),
            Param("metric", TEXT), Param("reference", TEXT), EXECUTOR),
    verdict=("held when every given fraction's interval (over prompts; for top-1 at least "
             "its Wilson interval) is past its bound, failed when one is wholly short, "
             "inconclusive otherwise"),
    records="selection", figures=("histogram", "heatmap", "bars"),
    example={"top": 2, "retained_at_least": 0.9, "ablated_at_most": 0.1, "trials": 2048,
             "ablation": "mean", "metric": "top1"}))

register(ClaimKind(
    name="patching", summary="patching these heads clean into corrupted recovers the metric",
    target="heads", assertion=AP + "assert_patching_recovers",
    measure=MP + "activation_patching:patching_recovery",
    params=(Param("heads", HEADS, True, "the patched heads"),
            Param("at_least", NUMBER, True, "required recovered fraction"),
            Param("component", TEXT, doc="z, q, k, v or pattern"), Param("metric", TEXT),
            Param("confidence", NUMBER), Param("allow_inconclusive", BOOL),
            Param("heatmap", BOOL, doc="also the screened per-head grid for the report "
                                       "(minutes on a 30-layer model)")),
    verdict=INTERVAL, records="patching recovery", figures=("histogram", "heatmap"),
    example={"heads": ["0.2", "1.1"], "at_least": 0.5}))

register(ClaimKind(
    name="residual_patching",
    summary="patching the residual stream of one layer at one position recovers the metric",
    target="task", assertion=AP + "assert_residual_patching",
    measure=MP + "activation_patching:residual_patching_recovery",
    params=(Param("layer", INT, True, "the patched layer"),
            Param("at_least", NUMBER, True, "required recovered fraction"),
            Param("at", TEXT, doc="the named position (default end)"),
            Param("component", TEXT, doc="resid_pre, attn_out or mlp_out"), Param("metric", TEXT),
            Param("confidence", NUMBER), Param("allow_inconclusive", BOOL),
            Param("heatmap", BOOL, doc="also every layer at that position, for the report")),
    verdict=INTERVAL, records="residual patching recovery", figures=("histogram", "heatmap"),
    example={"layer": 0, "at": "end", "at_least": 0.5}))

register(ClaimKind(
    name="direct_effect",
    summary="these heads directly write a share of the logit difference (DLA)",
    target="heads", assertion=AP + "assert_direct_effect", measure=MP + "dla:direct_effect",
    params=(Param("heads", HEADS, True, "the heads"),
            Param("at_least", NUMBER, True, "required share of the logit difference"),
            Param("confidence", NUMBER), Param("allow_inconclusive", BOOL)),
    verdict=INTERVAL, records="direct effect", figures=("histogram", "heatmap"),
    example={"heads": ["1.1"], "at_least": 0.3}))

register(ClaimKind(
    name="attention_ablation",
    summary="ablating these heads' attention costs more loss than random heads",
    target="heads", assertion=AP + "assert_attention_ablation_effect",
    measure=MP + "attention_ablation:attention_ablation_effect",
    params=(Param("heads", HEADS, True, "the heads"),
            Param("over_random_by", NUMBER, True, "required extra loss (nats) over random sets"),
            Param("n_repeats", INT, doc="random head sets"),
            Param("mode", TEXT, doc="zero, mean (uniform over visible keys) or prompt-mean"),
            Param("confidence", NUMBER),
            Param("allow_inconclusive", BOOL),
            Param("heatmap", BOOL, doc="also ablate every single head for the report's heatmap "
                                       "(one pass per head: minutes on a 30-layer model)")),
    verdict=INTERVAL, records="attention ablation effect", figures=("histogram", "heatmap"),
    example={"heads": ["1.1"], "over_random_by": 0.5}))

register(ClaimKind(
    name="path_patching",
    summary="the path from these heads to the receivers carries a share of the effect",
    target="heads", assertion=AP + "assert_path_carries",
    measure=MP + "path_patching:path_patching_effect",
    params=(Param("heads", HEADS, True, "the senders"),
            Param("at_least", NUMBER, True, "required share of clean - corrupted carried"),
            Param("receivers", HEADS, doc="receiver heads (none: the final residual stream)"),
            Param("receiver_input", TEXT, doc="q, k, v or resid_final"),
            Param("positions", TEXTS, doc="receivers' positions, e.g. end"),
            Param("freeze_mlps", BOOL), Param("metric", TEXT), Param("confidence", NUMBER),
            Param("allow_inconclusive", BOOL)),
    verdict=INTERVAL, records="path patching", figures=("histogram",),
    example={"heads": ["1.1"], "receiver_input": "resid_final", "at_least": 0.5}))
