"""Edge scores (EAP, EAP-IG), their AUROC against a known circuit, the faithfulness curve
with MIB's CPR and CMD; the planted model's true edges."""
from __future__ import annotations

import itertools
import json
import warnings

import numpy as np
import pytest
import torch

import circuitcheck as cc
from circuitcheck.edge_circuit import Edge, EdgeCircuit, all_edges, node_layer
from circuitcheck.errors import CircuitCheckError, CircuitError
from circuitcheck.interventions import Ablation
from circuitcheck.interventions.edges import (EdgeReference, EdgeVariants, _sender_outputs,
                                              edge_reference, kv_groups, run_edge_variants)
from circuitcheck.measures.metrics import get_metric
from circuitcheck.zoo.planted import planted_edges

from .conftest import own_task

LOGIT_DIFF = get_metric("logit_diff", has_wrong=True)


@pytest.fixture(scope="module")
def planted():
    model = cc.load_model("zoo:planted", device="cpu")
    return model, cc.tasks.induction(model, 32, seq_len=8, seed=0)


@pytest.fixture(scope="module")
def planted_scores(planted):
    model, task = planted
    return {(m, a): cc.edge_scores(model, task, m, ablation=a)
            for m in ("eap", "eap-ig") for a in ("resample", "mean")}


def _patch_alone(model, edge: Edge) -> EdgeCircuit:
    """The edge alone; on a grouped-query model a k/v edge with its group-mates' (the key/value
    head they share is patched as one)."""
    g = kv_groups(model)
    if g == 1 or edge.qkv not in ("k", "v"):
        return EdgeCircuit([edge])
    _, layer, head = node_layer(edge.receiver)
    first = head // g * g
    return EdgeCircuit([Edge(edge.sender, f"a{layer}.h{h}", edge.qkv)
                        for h in range(first, first + g)])


def _single_edge_effects(model, enc, ref) -> np.ndarray:
    """Exact mean metric change of patching each edge alone (all edges in one batched pass)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    circuits = [_patch_alone(model, e) for e in all_edges(L, H)] + [EdgeCircuit([])]
    variants = EdgeVariants.from_circuits(model, circuits, [True] * len(circuits))
    rows = LOGIT_DIFF(run_edge_variants(model, enc, variants, ref, reads=LOGIT_DIFF.reads))
    return (rows[:-1] - rows[-1]).mean(1)


def test_eap_is_the_derivative_of_exact_edge_patching(tiny):
    # patch each edge with clean +- eps (reference - clean): the central difference of the
    # exact effects over 2 eps is the EAP score (to O(eps^2))
    task = own_task(tiny, n=8)
    enc = task.encode(tiny)
    scores = cc.edge_scores(tiny, task, "eap", ablation="resample")
    ref = edge_reference(tiny, enc, "resample")
    clean = _sender_outputs(tiny, enc.tokens, enc.lengths)
    eps = 1e-2

    def near(t: float) -> EdgeReference:
        return EdgeReference(Ablation.RESAMPLE, [c + t * (r - c) for c, r in
                                                 zip(clean, ref.blocks)],
                             torch.arange(enc.n), "corrupted")
    fd = (_single_edge_effects(tiny, enc, near(eps))
          - _single_edge_effects(tiny, enc, near(-eps))) / (2 * eps)
    scale = np.abs(scores.values).max()
    assert scale > 0.05  # the heads matter: the check is not 0 == 0
    assert np.abs(fd - scores.values).max() < 3e-3 * scale  # measured: 2e-4, 1.2e-3
    assert tiny.cfg.use_split_qkv_input is False  # restored


def test_eap_ig_with_one_step_is_eap(planted, planted_scores):
    model, task = planted
    one = cc.edge_scores(model, task, "eap-ig", steps=1)
    eap = planted_scores[("eap", "resample")]
    assert np.allclose(one.values, eap.values, atol=1e-5)
    assert not np.allclose(planted_scores[("eap-ig", "resample")].values, eap.values, atol=1e-2)


@pytest.mark.parametrize("ablation", ["resample", "mean"])
def test_eap_ig_finds_the_planted_circuit_and_eap_ranks_it_lower(planted_scores, ablation):
    # measured: eap-ig 0.977 (resample) / 0.981 (mean); eap 0.703 / 0.810, because the
    # induction head's attention is saturated on the clean run, so its query gets no gradient
    ig = cc.edge_auroc(planted_scores[("eap-ig", ablation)], planted_edges())
    eap = cc.edge_auroc(planted_scores[("eap", ablation)], planted_edges())
    assert ig.value >= 0.9 and (ig.n_pos, ig.n_neg) == (5, 105)
    assert eap.value < ig.value - 0.1


def test_planted_edges_are_the_largest_exact_effects_and_keep_the_task(planted):
    model, task = planted
    enc = task.encode(model)
    effects = _single_edge_effects(model, enc, edge_reference(model, enc, "mean"))
    names = [e.name for e in all_edges(2, 4)]
    top5 = {names[i] for i in np.argsort(-np.abs(effects))[:5]}
    assert top5 == {e.name for e in planted_edges().edges}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for positions, ablation in itertools.product((False, True), ("resample", "mean")):
            m = cc.faithfulness(model, task, planted_edges(positions), ablation=ablation)
            assert m.problem is None and m.ci[0] >= 0.9, (positions, ablation, m.summary())


def test_top_and_threshold_pick_the_largest_scores(planted_scores):
    s = planted_scores[("eap-ig", "resample")]
    a = np.abs(s.values)
    top = s.top(3)
    assert len(top) == 3 and top.shape == (2, 4)
    assert min(a[s.names.index(e.name)] for e in top.edges) >= np.sort(a)[-3]
    t = float(np.sort(a)[-7])
    kept = {e.name for e in s.threshold(t).edges}
    assert kept == {n for n, x in zip(s.names, a) if x >= t} and len(kept) == 7
    assert len(s.top(0)) == 0 and top.scores == s.scores
    with pytest.raises(CircuitCheckError, match="only 110 edges"):
        s.top(111)
    assert s.table()["rank"].min() == 1 and "eap-ig" in s.summary()
    assert json.dumps(s.to_dict())
    with pytest.raises(TypeError, match="no truth value"):
        bool(s)


def test_graph_json_round_trips(planted, planted_scores, tmp_path):
    model, _ = planted
    s = planted_scores[("eap-ig", "resample")]
    path = tmp_path / "scores.json"
    s.to_json(path, model, in_graph=s.top(5))
    back = cc.Circuit.from_file(path)
    assert set(back.edges) == set(s.top(5).edges) and back.shape == (2, 4)
    assert back.scores == pytest.approx(s.scores)
    again = cc.EdgeScores.from_file(path)
    assert again.names == s.names and np.allclose(again.values, s.values)
    s.to_json(path, model)  # default: every edge in the graph, scores carry the ranking
    assert len(cc.Circuit.from_file(path)) == 110
    s.to_json(path, model, in_graph=2)
    assert set(cc.Circuit.from_file(path).edges) == set(s.top(2).edges)


def test_auroc_is_the_pairwise_count_and_the_roc_area():
    names = [e.name for e in all_edges(2, 4)]
    rng = np.random.default_rng(0)
    values = np.round(rng.normal(size=len(names)), 1)  # many ties
    s = cc.EdgeScores.from_mapping(dict(zip(names, values)), (2, 4))
    truth = EdgeCircuit(names[::9], shape=(2, 4))
    got = cc.edge_auroc(s, truth)
    pos = np.abs(values[::9])
    neg = np.abs(np.delete(values, np.arange(0, len(names), 9)))
    pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    assert got.value == pytest.approx(pairs)
    assert np.trapezoid(got.tpr, got.fpr) == pytest.approx(pairs)
    assert (got.fpr[-1], got.tpr[-1]) == (1.0, 1.0) and np.isnan(got.ci[0])
    perfect = cc.EdgeScores.from_mapping({n: 1.0 for n in names[:4]}, (2, 4))
    assert cc.edge_auroc(perfect, EdgeCircuit(names[:4])).value == 1.0


def test_curve_points_cpr_and_cmd(planted, planted_scores):
    model, task = planted
    s = planted_scores[("eap-ig", "resample")]
    sizes = (0.01, 0.02, 0.05, 0.2, 1.0)
    c = cc.faithfulness_curve(model, task, s, sizes=sizes, ablation="resample", seed=0)
    assert c.problem is None and list(c.n_edges) == [1, 2, 6, 22, 110]
    assert c.values[-1] == pytest.approx(1.0)
    assert c.values[1] > 0.9 > c.values[0]  # the query edge and the read-out carry it
    assert np.all((c.ci_low <= c.values + 1e-9) & (c.values <= c.ci_high + 1e-9))
    x, y = np.array(sizes), c.values
    hand = sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1))
    hand_cmd = sum((x[i + 1] - x[i]) * (abs(1 - y[i]) + abs(1 - y[i + 1])) / 2
                   for i in range(len(x) - 1))
    assert c.cpr == pytest.approx(hand) and c.cmd == pytest.approx(hand_cmd)
    assert c.cpr_ci[0] <= c.cpr <= c.cpr_ci[1] and c.cmd_ci[0] <= c.cmd <= c.cmd_ci[1]
    # each point is (m(C) - m(∅)) / (m(N) - m(∅)), from plain faithfulness ratios
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        empty = cc.faithfulness(model, task, EdgeCircuit([]), ablation="resample").value
        two = cc.faithfulness(model, task, s.top(2), ablation="resample").value
    assert c.values[1] == pytest.approx((two - empty) / (1 - empty), abs=1e-4)
    assert "CPR" in c.summary() and json.dumps(c.to_dict())


def test_grouped_query_scores_keep_key_value_heads_together(model_dirs):
    model = cc.load_model(model_dirs["llama"], device="cpu")
    task = own_task(model, n=8)
    s = cc.edge_scores(model, task, "eap-ig", steps=2)
    assert s.kv_group == 2
    for n in (3, 10, 40):
        kept = {e.name for e in s.top(n).edges}
        assert n <= len(kept) < n + 2
        for name in kept:
            e = EdgeCircuit([name]).edges[0]
            assert all(m.name in kept for m in _patch_alone(model, e).edges)
    c = cc.faithfulness_curve(model, task, s, sizes=(0.05, 0.2, 0.5, 1.0))
    assert c.problem is None and c.values[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs, needle", [
    ({"method": "eap_gi"}, "unknown edge-score method 'eap_gi' \\(did you mean 'eap-ig'"),
    ({"method": "eap-ig", "steps": 0}, "steps must be a whole number >= 1"),
    ({"method": "eap-ig", "steps": 2.5}, "steps must be a whole number"),
    ({"metric": "top1"}, "differentiable metric; 'top1'"),
    ({"ablation": "layer-mean"}, "use 'resample' \\(alias 'corrupted'\\)"),
    ({"ablation": "nope"}, "unknown ablation 'nope'"),
])
def test_bad_arguments_name_the_fix(planted, kwargs, needle):
    model, task = planted
    with pytest.raises(CircuitCheckError, match=needle):
        cc.edge_scores(model, task, **kwargs)


def test_scores_of_another_model_shape_are_refused(planted, planted_scores, tmp_path):
    model, task = planted
    s = planted_scores[("eap", "resample")]
    other = cc.EdgeScores.from_mapping({}, (3, 4))
    with pytest.raises(CircuitError, match="3 layers x 4 heads.*cc.edge_scores\\(model, task\\)"):
        cc.faithfulness_curve(model, task, other)
    with pytest.raises(CircuitError, match="computed on a model with 2 layers"):
        s.to_json(tmp_path / "x.json", _shaped(3, 4))
    with pytest.raises(CircuitError, match="true circuit is for a 3-layer"):
        cc.edge_auroc(s, EdgeCircuit(["a0.h1->logits"], shape=(3, 4)))
    with pytest.raises(CircuitCheckError, match="sizes must be increasing"):
        cc.faithfulness_curve(model, task, s, sizes=(0.5, 0.1))
    with pytest.raises(CircuitCheckError, match="true edges and other edges"):
        cc.edge_auroc(s, EdgeCircuit([]))


def _shaped(L: int, H: int):
    import types

    return types.SimpleNamespace(cfg=types.SimpleNamespace(n_layers=L, n_heads=H, d_model=8))
