"""The edge-score claim kinds: MIB's faithfulness curve (CPR, CMD) and the recovery of a
known circuit (AUROC), one :func:`register` call each."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import ANY, BOOL, INT, NUMBER, TEXT, ClaimKind, Param, register

AE = "circuitcheck.assertions_edges:"
BOUNDS = {"cpr_at_least": "CPR", "cmd_at_most": "CMD", "auroc_at_least": "an AUROC"}


def _unit_bounds(spec: Mapping[str, Any]) -> str | None:
    """A bound outside [0, 1] bounds nothing (CPR, CMD and AUROC live there)."""
    for key, what in BOUNDS.items():
        v = spec.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not 0 <= v <= 1:
            return (f"{key} is {v!r}, but {what} lies in [0, 1]; give a bound between 0 and "
                    f"1 (e.g. {key}: {0.1 if key == 'cmd_at_most' else 0.9})")
    return None


def _curve_check(spec: Mapping[str, Any]) -> str | None:
    if "cpr_at_least" not in spec and "cmd_at_most" not in spec:
        return ("needs cpr_at_least and/or cmd_at_most (e.g. faithfulness_curve: "
                "{cpr_at_least: 0.9, cmd_at_most: 0.1})")
    sizes = spec.get("sizes")
    if sizes is not None:
        ok = (isinstance(sizes, list) and len(sizes) >= 2
              and all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x <= 1
                      for x in sizes)
              and all(a < b for a, b in zip(sizes, sizes[1:])))
        if not ok:
            return (f"sizes must be a list of at least 2 increasing fractions of the edges in "
                    f"(0, 1], e.g. [0.01, 0.1, 0.5, 1.0]; got {sizes!r}")
    return _unit_bounds(spec)


def _needs_truth(spec: Mapping[str, Any], circuit: Any) -> str | None:
    """A recovers claim compares scores with a true circuit: an edge circuit, or truth:
    planted (zoo:planted's circuit)."""
    from ..edge_circuit import EdgeCircuit

    truth = spec.get("truth", "circuit")
    if truth not in ("circuit", "planted"):
        return (f"recovers.truth must be 'circuit' (the claim's edge circuit) or 'planted' "
                f"(zoo:planted's planted edges), got {truth!r}")
    if truth == "circuit" and not isinstance(circuit, EdgeCircuit):
        got = "no circuit" if circuit is None else f"a head circuit ({circuit.describe()})"
        return ("recovers needs a ground truth to score against, but the claim has " + got
                + "; give it the true edge circuit (circuit: {edges: [...]} or {file: "
                "graph.json}), or on zoo:planted set truth: planted")
    return None


_SCORE_PARAMS = (
    Param("steps", INT, doc="EAP-IG's interpolation steps"),
    Param("ablation", TEXT, doc="resample (alias corrupted, as MIB), zero, mean or "
                                "mean-by-template"),
    Param("metric", TEXT, doc="a differentiable metric (logit_diff, prob, ...)"),
    Param("reference", TEXT, doc="prompts the ablation means come from"),
    Param("confidence", NUMBER, doc="interval level"),
    Param("allow_inconclusive", BOOL, doc="pass when an interval straddles its bound"))

register(ClaimKind(
    name="faithfulness_curve",
    summary="edges ranked by their scores make a faithful curve: MIB's CPR / CMD bounds",
    target="circuit", assertion=AE + "assert_faithfulness_curve",
    measure="circuitcheck.measures.faithfulness_curve:faithfulness_curve",
    params=(Param("cpr_at_least", NUMBER, doc="CPR (area under f) at least this"),
            Param("cmd_at_most", NUMBER, doc="CMD (area of |1 - f|) at most this"),
            Param("sizes", ANY, doc="fractions of edges, increasing in (0, 1]"),
            Param("method", TEXT, doc="eap or eap-ig (default: the graph file's scores, "
                                      "else eap-ig)"),
            *_SCORE_PARAMS, Param("seed", INT, doc="bootstrap seed")),
    check=_curve_check, edge_circuits=True,
    verdict="each given bound holds when its bootstrap interval over prompts is past it, "
            "fails when the whole interval is short of it, inconclusive otherwise (a "
            "failure unless allow_inconclusive); the claim holds when every bound holds",
    records="faithfulness curve <CPR|CMD>", figures=("histogram", "lines"),
    example={"cpr_at_least": 0.9, "cmd_at_most": 0.1, "method": "eap-ig"}))

register(ClaimKind(
    name="recovers",
    summary="edge scores find the true circuit: AUROC of the score magnitudes at least a value",
    target="circuit", assertion=AE + "assert_recovers",
    measure="circuitcheck.measures.edge_auroc:edge_auroc",
    params=(Param("auroc_at_least", NUMBER, True, "required AUROC"),
            Param("method", TEXT, doc="eap or eap-ig"),
            Param("truth", TEXT, doc="circuit (the claim's edge circuit) or planted "
                                     "(zoo:planted's edges)"),
            *_SCORE_PARAMS, Param("seed", INT, doc="bootstrap seed"),
            Param("n_boot", INT, doc="bootstrap resamples")),
    check=_unit_bounds, circuit_check=_needs_truth, edge_circuits=True,
    verdict="holds when the AUROC's bootstrap interval over prompts (scores recomputed from "
            "each resample) is above auroc_at_least, fails when wholly below, inconclusive "
            "otherwise; NOT MEASURABLE without per-prompt scores",
    records="edge AUROC", figures=("histogram", "lines"),
    example={"auroc_at_least": 0.9, "method": "eap-ig", "truth": "planted"}))
