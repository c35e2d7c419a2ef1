"""Edge patching: an edge circuit measures what its node circuit measures; the batched engine
equals one plain forward per edge set; bad edge circuits fail before any forward pass."""
from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import circuitcheck as cc
from circuitcheck.edge_circuit import Edge, EdgeCircuit, all_edges, node_layer
from circuitcheck.errors import CircuitError

from .conftest import own_task

ABLATIONS = ("zero", "mean", "mean-by-template", "resample")
NODE = cc.Circuit({"kept": [(0, 1), (1, 2), (1, 3)]})
#: a positioned group: its edges carry its position (see ``EdgeCircuit.from_nodes``)
POSITIONED = cc.Circuit({"early": [(0, 1), (0, 2)], "late": [(1, 2), (1, 3)]},
                        positions={"early": "mid"})


@pytest.fixture(scope="module")
def task_of():
    cache = {}

    def get(model):
        key = id(model)
        if key not in cache:
            cache[key] = own_task(model, n=12)
        return cache[key]
    return get


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _same(a, b):
    assert a.problem == b.problem
    assert np.allclose(a.per_prompt, b.per_prompt, atol=1e-4, rtol=1e-4)
    assert a.value == pytest.approx(b.value, abs=1e-4)
    for k, v in a.baselines.items():
        assert b.baselines[k] == pytest.approx(v, abs=1e-4)


@pytest.mark.parametrize("circuit", [NODE, POSITIONED], ids=["heads", "positioned"])
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_edge_faithfulness_equals_node_faithfulness(tiny, task_of, ablation, circuit):
    task = task_of(tiny)
    edges = EdgeCircuit.from_nodes(tiny, circuit)
    node = _quiet(cc.faithfulness, tiny, task, circuit, ablation=ablation)
    edge = _quiet(cc.faithfulness, tiny, task, edges, ablation=ablation)
    assert node.problem is None
    _same(node, edge)
    assert edge.details["secondary"].keys() == node.details["secondary"].keys()
    assert tiny.cfg.use_split_qkv_input is False  # restored


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_edge_necessity_equals_node_necessity(tiny, task_of, ablation):
    # removing a node = patching every edge out of it (edges into it then change nothing)
    task = task_of(tiny)
    L, H = tiny.cfg.n_layers, tiny.cfg.n_heads
    heads = {f"a{l}.h{h}" for l, h in NODE.heads}
    out_of = EdgeCircuit([e for e in all_edges(L, H) if e.sender in heads])
    node = _quiet(cc.necessity, tiny, task, NODE, ablation=ablation)
    edge = _quiet(cc.necessity, tiny, task, out_of, ablation=ablation)
    _same(node, edge)


def test_full_graph_ablates_nothing_as_the_all_heads_circuit(tiny, task_of):
    task = task_of(tiny)
    L, H = tiny.cfg.n_layers, tiny.cfg.n_heads
    node = _quiet(cc.faithfulness, tiny, task,
                  cc.Circuit({"all": [(l, h) for l in range(L) for h in range(H)]}))
    edge = _quiet(cc.faithfulness, tiny, task, EdgeCircuit.full(tiny))
    assert "nothing is ablated" in node.problem and "nothing is ablated" in edge.problem
    assert np.isnan(edge.value)
    # the full graph is the full model, prompt by prompt
    assert np.allclose(edge.per_prompt, node.per_prompt, atol=1e-4)
    assert edge.baselines["full"] == pytest.approx(node.baselines["full"], abs=1e-4)
    empty = _quiet(cc.necessity, tiny, task, EdgeCircuit([]))
    assert "removes no edge" in empty.problem


# -- batched engine == one plain forward per edge set -------------------------------------

@pytest.fixture(scope="module")
def gpt2(model_dirs):
    return cc.load_model(model_dirs["gpt2"], device="cpu")


def _outputs(model, toks):
    """Every sender's output on one prompt, by name: [P, d]."""
    import torch

    out = {}
    L, H = model.cfg.n_layers, model.cfg.n_heads

    def grab(name, layer=None):
        def hook(x, hook):
            if name == "z":
                for h in range(H):
                    out[f"a{layer}.h{h}"] = x[0, :, h] @ model.blocks[layer].attn.W_O[h]
            else:
                out[name] = x[0].clone()
        return hook
    hooks = [("blocks.0.hook_resid_pre", grab("input"))]
    for l in range(L):
        hooks += [(f"blocks.{l}.attn.hook_z", grab("z", l)),
                  (f"blocks.{l}.hook_mlp_out", grab(f"m{l}"))]
    with torch.inference_mode():
        model.run_with_hooks(toks, fwd_hooks=hooks)
    return out


def _plain_logit_diff(model, toks, ref, patched_at, answer, wrong):
    """One forward: each receiver input += (ref - current) of each patched edge, at the
    positions ``patched_at[(sender, receiver, qkv)]`` (a [P] bool)."""
    import torch

    L, H = model.cfg.n_layers, model.cfg.n_heads
    cur = {}

    def senders_before(layer, mlp):
        names = ["input"]
        for l in range(layer + (1 if mlp else 0)):
            names += [f"a{l}.h{h}" for h in range(H)]
            if l < layer:
                names.append(f"m{l}")
        return names

    def add(x, receiver, qkv, senders):
        for s in senders:
            m = patched_at.get((s, receiver, qkv))
            if m is not None:
                x = x + (m[:, None] * (ref[s] - cur[s]))
        return x

    def save(name, layer=None):
        def hook(x, hook):
            if name == "z":
                for h in range(H):
                    cur[f"a{layer}.h{h}"] = x[0, :, h] @ model.blocks[layer].attn.W_O[h]
            else:
                cur[name] = x[0]
        return hook

    def heads_in(layer, qkv):
        def hook(x, hook):
            x = x.clone()
            group = H // x.shape[2]  # k/v on grouped-query attention: one input per group
            for u in range(x.shape[2]):
                x[0, :, u] = add(x[0, :, u], f"a{layer}.h{u * group}", qkv,
                                 senders_before(layer, False))
            return x
        return hook

    def mlp_in(layer):
        return lambda x, hook: add(x[0], f"m{layer}", None, senders_before(layer, True))[None]

    def logits_in(x, hook):
        return add(x[0], "logits", None, senders_before(L, False))[None]

    hooks = [("blocks.0.hook_resid_pre", save("input"))]
    for l in range(L):
        hooks += [(f"blocks.{l}.hook_{q}_input", heads_in(l, q)) for q in "qkv"]
        hooks += [(f"blocks.{l}.attn.hook_z", save("z", l)),
                  (f"blocks.{l}.ln2.hook_in", mlp_in(l)),
                  (f"blocks.{l}.hook_mlp_out", save(f"m{l}"))]
    hooks.append(("ln_final.hook_in", logits_in))
    model.cfg.use_split_qkv_input = True
    try:
        with torch.inference_mode():
            logits = model.run_with_hooks(toks, fwd_hooks=hooks)[0, -1]
    finally:
        model.cfg.use_split_qkv_input = False
    return float(logits[answer] - logits[wrong])


def _random_circuit(rng, L, H, keep, input_kept=None, group=1):
    """Random edges, some at position 'mid'; ``input_kept``: True puts every edge out of
    ``input`` in (kept), False leaves them all out (with ablate: kept). With ``group`` > 1
    the query heads of a group get the same k/v edges (grouped-query attention)."""
    edges, chosen = [], {}
    for e in all_edges(L, H):
        if e.sender == "input" and input_kept is not None:
            if input_kept:
                edges.append(e)
            continue
        kind, layer, head = node_layer(e.receiver)
        if group > 1 and e.qkv in ("k", "v") and head % group:
            pick = chosen[(e.sender, f"a{layer}.h{head - head % group}", e.qkv)]
        else:
            pick = (rng.random() < keep, "mid" if rng.random() < 0.3 else None)
            chosen[(e.sender, e.receiver, e.qkv)] = pick
        if pick[0]:
            edges.append(Edge(e.sender, e.receiver, e.qkv, pick[1]))
    return EdgeCircuit(edges)


@pytest.fixture(scope="module")
def llama(model_dirs):
    return cc.load_model(model_dirs["llama"], device="cpu")


@settings(max_examples=5, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6), keep=st.sampled_from([0.2, 0.6, 0.9]),
       ablation=st.sampled_from(["zero", "resample"]))
def test_batched_engine_equals_a_plain_loop(gpt2, seed, keep, ablation):
    _check_against_plain_loop(gpt2, seed, keep, ablation)


@settings(max_examples=3, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6), keep=st.sampled_from([0.3, 0.8]),
       ablation=st.sampled_from(["zero", "resample"]))
def test_batched_engine_equals_a_plain_loop_on_grouped_query_attention(llama, seed, keep,
                                                                      ablation):
    _check_against_plain_loop(llama, seed, keep, ablation)


def _check_against_plain_loop(model, seed, keep, ablation):
    """Three random edge sets (kept or patched) x 5 prompts in batches of 4 rows, against
    one plain forward per (edge set, prompt)."""
    import torch

    from circuitcheck.interventions.edges import (EdgeVariants, edge_reference, kv_groups,
                                                  run_edge_variants)

    rng = random.Random(seed)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    task = own_task(model, n=5, seed=seed % 7)
    enc = task.encode(model)
    ablate = [rng.random() < 0.5 for _ in range(3)]
    # zero patching every edge into a receiver leaves its input ~0 (rounding noise), which
    # its norm scales up by 1/sqrt(eps): a 1e-6 change moved such a metric by 0.1 (measured),
    # so under zero ablation the embeddings' edges are kept and every input is well away from 0
    circuits = [_random_circuit(rng, L, H, keep, None if ablation != "zero" else not a,
                                kv_groups(model)) for a in ablate]
    ref_table = edge_reference(model, enc, ablation)
    got = run_edge_variants(model, enc, EdgeVariants.from_circuits(model, circuits, ablate),
                            ref_table, reads=("logit", "wrong_logit"), batch_size=4)
    batched = (got.logit - got.wrong_logit).numpy()
    for i in range(enc.n):
        P = int(enc.lengths[i])
        toks = enc.tokens[i:i + 1, :P]
        if ablation == "zero":
            ref = {k: torch.zeros_like(v) for k, v in _outputs(model, toks).items()}
        else:
            ref = _outputs(model, enc.corrupted[i:i + 1, :P])
        mid = torch.arange(P) == int(enc.positions["mid"][i])
        for v, c in enumerate(circuits):
            kept_at = {}
            for e in c.edges:
                kept_at[(e.sender, e.receiver, e.qkv)] = torch.ones(P, dtype=torch.bool) \
                    if e.position is None else mid
            patched = {}
            for e in all_edges(L, H):
                k = kept_at.get((e.sender, e.receiver, e.qkv), torch.zeros(P, dtype=torch.bool))
                patched[(e.sender, e.receiver, e.qkv)] = (k if ablate[v] else ~k).float()
            plain = _plain_logit_diff(model, toks, ref, patched, int(enc.answers[i]),
                                      int(enc.wrong[i]))
            assert batched[v, i] == pytest.approx(plain, abs=1e-4), (v, i, ablate[v])


# -- bad circuits fail before any forward pass -------------------------------------------

def _no_forward(model, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a forward pass ran")
    monkeypatch.setattr(model, "run_with_hooks", boom)
    monkeypatch.setattr(model, "forward", boom)


def test_edge_into_a_head_out_of_range_fails_before_any_forward(tiny, task_of, monkeypatch):
    task = task_of(tiny)
    _no_forward(tiny, monkeypatch)
    with pytest.raises(CircuitError, match=r"a1\.h7 is out of range: the model has 4 heads"):
        cc.faithfulness(tiny, task, EdgeCircuit(["a0.h1->a1.h7<q>", "a1.h1->logits"]))


def test_gqa_kv_edges_that_differ_in_a_group_are_refused(model_dirs, monkeypatch):
    llama = cc.load_model(model_dirs["llama"], device="cpu")
    task = own_task(llama, n=6)
    bad = EdgeCircuit(["input->a1.h0<k>", "a1.h0->logits", "a1.h1->logits", "input->logits"])
    _no_forward(llama, monkeypatch)
    with pytest.raises(CircuitError, match=r"a1\.h0 and a1\.h1 share a key/value head.*<k> "
                                           r"edges differ \(senders input\)"):
        cc.faithfulness(llama, task, bad)
    # a head whose output reaches nothing does not count: a1.h1 here is dead
    fine = EdgeCircuit(["input->a1.h0<k>", "a1.h0->logits", "input->logits"])
    from circuitcheck.interventions.edges import EdgeVariants
    EdgeVariants.from_circuits(llama, [fine])


# -- a known circuit, and the fast kernels ------------------------------------------------

PATH = ["input->a0.h2<q>", "input->a0.h2<k>", "input->a0.h2<v>", "a0.h2->a1.h1<k>",
        "input->a1.h1<q>", "input->a1.h1<v>", "a1.h1->logits", "input->logits",
        "input->m0", "input->m1", "m0->m1", "m0->logits", "m1->logits", "a0.h2->m0",
        "a0.h2->m1", "a1.h1->m1", "m0->a1.h1<q>", "m0->a1.h1<k>", "m0->a1.h1<v>"]


def test_planted_induction_needs_its_k_composition_edge():
    # zoo:planted's induction head 1.1 finds its target through the keys 0.2 writes
    model = cc.load_model("zoo:planted", device="cpu")
    task = cc.tasks.induction(model, n=16, seq_len=12, seed=0)
    node = cc.Circuit({"previous token": ["0.2"], "induction": ["1.1"]})
    _same(_quiet(cc.faithfulness, model, task, node),
          _quiet(cc.faithfulness, model, task, EdgeCircuit.from_nodes(model, node)))
    path = _quiet(cc.faithfulness, model, task, EdgeCircuit(PATH))
    cut = _quiet(cc.faithfulness, model, task,
                 EdgeCircuit([e for e in PATH if e != "a0.h2->a1.h1<k>"]))
    assert path.ci[0] > 0.9 and cut.ci[1] < 0.5, (path.ci, cut.ci)


def test_fast_kernels_do_not_change_edge_patching(tiny, task_of):
    from circuitcheck import fastpath
    from circuitcheck.interventions.edges import (EdgeVariants, edge_reference,
                                                  run_edge_variants)

    task = task_of(tiny)
    enc = task.encode(tiny)
    rng = random.Random(3)
    L, H = tiny.cfg.n_layers, tiny.cfg.n_heads
    circuits = [_random_circuit(rng, L, H, 0.6, True), EdgeCircuit.full(tiny)]
    if getattr(tiny.cfg, "n_key_value_heads", None) not in (None, H):
        circuits[0] = EdgeCircuit.from_nodes(tiny, POSITIONED)  # random k/v edges: refused
    ref = edge_reference(tiny, enc, "mean")
    variants = EdgeVariants.from_circuits(tiny, circuits)
    fast = run_edge_variants(tiny, enc, variants, ref)
    with fastpath.disabled(tiny):
        slow = run_edge_variants(tiny, enc, variants, ref)
    assert np.allclose(fast.logit, slow.logit, atol=1e-4)
    assert np.allclose(fast.logprob, slow.logprob, atol=1e-4)


def test_assert_faithful_tells_an_edge_circuits_story(tiny, task_of):
    task = task_of(tiny)
    from circuitcheck import _claims

    with _claims.private(), pytest.raises(AssertionError) as info:  # fails on purpose
        _quiet(cc.assert_faithful, tiny, task, cc.EdgeCircuit(["input->logits"], name="direct"),
               at_least=0.99, ablation="zero")
    text = str(info.value)
    assert text.startswith("claim 'direct is faithful' FAILED") or "INCONCLUSIVE" in text
    assert "direct: 1 edge among 2 nodes; kept, complement edges zero-patched" in text


def test_layer_mean_is_refused_for_edge_circuits(tiny, task_of):
    task = task_of(tiny)
    with pytest.raises(cc.CircuitCheckError, match="an edge has no such mean"):
        cc.faithfulness(tiny, task, cc.EdgeCircuit(["input->logits"]), ablation="layer-mean")
