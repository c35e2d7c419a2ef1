"""One result protocol: every result type answers .value / .values, .ci / .ci_low / .ci_high,
.table(), .to_dict(), .summary() the same way, and refuses truth-testing."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import circuitcheck as cc
from circuitcheck.measures import patching as P

from .conftest import own_task

SCALAR = {"Measurement", "PathPatchResult", "AttentionAblation", "RandomComparison",
          "HypothesisTest", "EdgeAuroc"}
ARRAY = {"HeadScores", "HeadEffects", "Minimality", "PatchGrid", "DirectLogitAttribution",
         "PositionAttention", "Compensation", "LogitLens", "EdgeScores", "FaithfulnessCurve"}
COMPOSITE = {"StochasticAblation", "Sweep"}


@pytest.fixture(scope="module")
def results(model_dirs):
    model = cc.load_model(model_dirs["gpt2"], device="cpu")
    task = own_task(model, n=6)
    circuit = cc.Circuit({"a": ["1.1", "1.2"]})
    mc = cc.stochastic_ablation(model, task, trials=64, ablation="zero", seed=1)
    edges = cc.edge_scores(model, task, "eap")
    return [
        edges, cc.edge_auroc(edges, edges.top(3)),
        cc.faithfulness_curve(model, task, edges, sizes=(0.1, 1.0)),
        cc.faithfulness(model, task, circuit, ablation="zero"),
        cc.head_scores(model, "induction", n=4, seq_len=6),
        mc, mc.importance,
        cc.minimality(model, task, circuit, ablation="zero"),
        P.patch_heads(model, task),
        P.path_patch(model, task, ["0.0"], None, receiver_input="resid_final"),
        P.ablate_attention(model, task, ["1.1"]),
        P.compare_to_random(model, task, ["1.1"], n_repeats=3),
        P.direct_logit_attribution(model, task),
        cc.equivalence(model, task, circuit, ablation="zero"),
        cc.sweep(model, task, circuit, ablation=["zero"], metric=["logit_diff"],
                 positions=["all"], at_least=0.5),
        cc.position_attention(model, task, ["mid", "first"]),
        cc.ablated_dla(model, task, ["1.1"]),
        cc.logit_lens(model, task),
    ]


def test_every_result_type_is_covered(results):
    assert {type(r).__name__ for r in results} == SCALAR | ARRAY | COMPOSITE


def test_every_result_follows_the_protocol(results):
    for r in results:
        name = type(r).__name__
        if name in SCALAR:
            assert isinstance(r.value, float), name
            assert len(r.ci) == 2, name
            np.testing.assert_equal(r.ci, (r.ci_low, r.ci_high))
        elif name in ARRAY:
            v = r.values
            assert isinstance(v, np.ndarray) and v.size, name
            assert np.shape(r.ci_low) == np.shape(r.ci_high) == v.shape, name
            assert r.ci[0] is r.ci_low or np.array_equal(r.ci[0], r.ci_low, equal_nan=True)
        else:
            for attr in ("value", "values", "ci"):
                with pytest.raises(AttributeError, match="no single value"):
                    getattr(r, attr)
        assert isinstance(r.table(), pd.DataFrame) and len(r.table()), name
        json.dumps(r.to_dict(), allow_nan=False)  # JSON-ready, no NaN
        assert isinstance(r.summary(), str) and r.summary(), name
        with pytest.raises(TypeError, match="no truth value"):
            bool(r)


def test_old_names_are_aliases(results):
    by = {type(r).__name__: r for r in results}
    assert by["HeadScores"].values is by["HeadScores"].scores
    assert by["HeadEffects"].values is by["HeadEffects"].effect
