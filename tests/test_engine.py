"""The batched ablation engine against a straightforward one-prompt, one-variant loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import circuitcheck as cc
from circuitcheck.interventions import Variants, ablation_values, run_variants

from .conftest import own_task

ABLATIONS = ["zero", "mean", "mean-by-template", "resample"]


def _z_single(model, ids: list[int]) -> list[torch.Tensor]:
    """Every layer's hook_z on one unpadded prompt: [pos, head, d_head]."""
    with torch.inference_mode():
        _, cache = model.run_with_cache(torch.tensor([ids]))
    return [cache[f"blocks.{l}.attn.hook_z"][0] for l in range(model.cfg.n_layers)]


def _reference_value(model, task, enc, ablation: str, i: int) -> list[torch.Tensor] | None:
    """What replaces prompt i's head outputs, computed from scratch one prompt at a time."""
    if ablation == "zero":
        return None
    ref_ids = [enc.corrupted[j, : enc.corrupted_lengths[j]].tolist() for j in range(enc.n)]
    if ablation == "resample":
        return _z_single(model, ref_ids[i])
    same = [j for j in range(enc.n)
            if ablation == "mean" or task.groups[j] == task.groups[i]]
    length = int(enc.lengths[i])
    acts = [_z_single(model, ref_ids[j]) for j in same]
    out = []
    for layer in range(model.cfg.n_layers):
        rows = []
        for p in range(length):
            have = [a[layer][p] for a in acts if a[layer].shape[0] > p]
            rows.append(torch.stack(have).mean(0))
        out.append(torch.stack(rows))
    return out


def _loop(model, task, keep: torch.Tensor, ablation: str, at_end: torch.Tensor | None = None):
    """One forward per (variant, prompt), unpadded: answer logit and log-prob, [V, N]."""
    enc = task.encode(model)
    V, N = keep.shape[0], enc.n
    logit = torch.empty(V, N)
    logprob = torch.empty(V, N)
    for i in range(N):
        ids = enc.tokens[i, : enc.lengths[i]]
        ref = _reference_value(model, task, enc, ablation, i)
        for v in range(V):
            def make(layer):
                def hook(z, hook):
                    z = z.clone()
                    for h in range(model.cfg.n_heads):
                        positions = range(z.shape[1])
                        if keep[v, layer, h]:
                            continue
                        for p in positions:
                            if at_end is not None and at_end[v, layer, h] and p == len(ids) - 1:
                                continue
                            z[0, p, h] = 0 if ref is None else ref[layer][p, h]
                    return z
                return hook
            hooks = [(f"blocks.{l}.attn.hook_z", make(l)) for l in range(model.cfg.n_layers)]
            with torch.inference_mode():
                out = model.run_with_hooks(ids[None], fwd_hooks=hooks)[0, -1]
            a = int(enc.answers[i])
            logit[v, i] = out[a]
            logprob[v, i] = out.log_softmax(-1)[a]
    return logit, logprob


@pytest.fixture(scope="module")
def task_for(model_dirs):
    cache = {}

    def get(model):
        if id(model) not in cache:
            cache[id(model)] = own_task(model, n=6)
        return cache[id(model)]
    return get


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), ablation=st.sampled_from(ABLATIONS))
def test_batched_equals_looped(tiny, task_for, data, ablation):
    """Random keep-masks (some position-specific) in one batch == one forward per variant."""
    L, H = tiny.cfg.n_layers, tiny.cfg.n_heads
    V = data.draw(st.integers(1, 3))
    bits = data.draw(st.lists(st.booleans(), min_size=V * L * H * 2, max_size=V * L * H * 2))
    flat = torch.tensor(bits, dtype=torch.bool).view(2, V, L, H)
    keep, at_end = flat[0], flat[1] & ~flat[0]
    task = task_for(tiny)
    enc = task.encode(tiny)
    variants = Variants(keep, at_end[..., None], ("end",))
    values = ablation_values(tiny, enc, ablation)
    batch = data.draw(st.sampled_from([None, 1, 5]))
    got = run_variants(tiny, enc, variants, values, batch_size=batch)
    want_logit, want_lp = _loop(tiny, task, keep, ablation, at_end)
    torch.testing.assert_close(got.logit, want_logit, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.logprob, want_lp, atol=1e-4, rtol=1e-4)


def test_ablate_nothing_reproduces_clean_run(tiny, task_for):
    task = task_for(tiny)
    enc = task.encode(tiny)
    L, H = tiny.cfg.n_layers, tiny.cfg.n_heads
    got = run_variants(tiny, enc, Variants(torch.ones(2, L, H, dtype=torch.bool)),
                       ablation_values(tiny, enc, "mean"))
    want, _ = _loop(tiny, task, torch.ones(1, L, H, dtype=torch.bool), "zero")
    torch.testing.assert_close(got.logit, want.expand(2, -1), atol=1e-4, rtol=1e-4)
    # and the answers really are the model's top tokens, so top-1 success is 1 everywhere
    assert got.correct.all()


def test_ragged_prompts_read_their_own_last_token(tiny):
    """Padding never shifts the read position: batched ragged prompts == each prompt alone."""
    prompts = ["t1 t2", "t3 t4 t5 t6 t7 t8 t9", "t10", "t11 t12 t13"]
    task = cc.Task(prompts=prompts, answers=["t5"] * 4)
    enc = task.encode(tiny)
    assert enc.lengths.tolist() == [3, 8, 2, 4]  # BOS + words
    L, H = tiny.cfg.n_layers, tiny.cfg.n_heads
    got = run_variants(tiny, enc, Variants(torch.ones(1, L, H, dtype=torch.bool)), None)
    answer = tiny.to_single_token("t5") if hasattr(tiny, "to_single_token") else int(enc.answers[0])
    for i, p in enumerate(prompts):
        with torch.inference_mode():
            alone = tiny(tiny.to_tokens(p))[0, -1]
        assert got.logit[0, i].item() == pytest.approx(alone[answer].item(), abs=1e-4)


def test_token_id_prompts_are_used_exactly(tiny):
    """Token-id prompts get no BOS; text prompts get the model's default BOS."""
    task = cc.Task(prompts=[[5, 6, 7], "t1 t2"], answers=[8, "t3"])
    enc = task.encode(tiny)
    assert enc.tokens[0, :3].tolist() == [5, 6, 7]
    assert enc.lengths.tolist() == [3, 3]
    assert enc.tokens[1, 0].item() == tiny.tokenizer.bos_token_id


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_faithfulness_matches_manual_definition(tiny, task_for, ablation):
    """F(C)/F(M) from cc.faithfulness equals the ratio computed from the reference loop."""
    task = task_for(tiny)
    circuit = cc.Circuit({"a": [(0, 1), (1, 2)], "b": [(1, 0)]}, positions={"b": "end"})
    m = cc.faithfulness(tiny, task, circuit, ablation=ablation, metric="prob")
    L, H = tiny.cfg.n_layers, tiny.cfg.n_heads
    keep = torch.zeros(1, L, H, dtype=torch.bool)
    keep[0, 0, 1] = keep[0, 1, 2] = True
    at_end = torch.zeros(1, L, H, dtype=torch.bool)
    at_end[0, 1, 0] = True
    _, lp_c = _loop(tiny, task, keep, ablation, at_end)
    lp_c = lp_c.exp()
    _, lp_full = _loop(tiny, task, torch.ones(1, L, H, dtype=torch.bool), "zero")
    lp_full = lp_full.exp()
    expected = lp_c.mean().item() / lp_full.mean().item()
    assert m.value == pytest.approx(expected, rel=1e-4)
    assert m.ci[0] <= m.value <= m.ci[1]
    assert np.mean(m.per_prompt) == pytest.approx(m.value, rel=1e-6)
    assert m.baselines["full"] == pytest.approx(lp_full.mean().item(), rel=1e-5)


def test_full_circuit_is_perfectly_faithful_and_unnecessary_empty(tiny, task_for):
    task = task_for(tiny)
    L, H = tiny.cfg.n_layers, tiny.cfg.n_heads
    everything = cc.Circuit({"all": [(l, h) for l in range(L) for h in range(H)]})
    # nothing ablated either way: 1 by construction, so refused as not measurable
    f = cc.faithfulness(tiny, task, everything, ablation="zero")
    assert np.isnan(f.value) and "nothing is ablated" in f.problem
    n = cc.necessity(tiny, task, cc.Circuit({"none": []}), ablation="zero")
    assert np.isnan(n.value) and "nothing is ablated" in n.problem
    # removing every head is the same as keeping none of them
    gone = cc.necessity(tiny, task, everything, ablation="zero")
    kept_none = cc.faithfulness(tiny, task, cc.Circuit({"none": []}), ablation="zero")
    assert gone.value == pytest.approx(kept_none.value, rel=1e-5)
    assert gone.baselines["ablated"] * 1 == pytest.approx(gone.value * gone.baselines["full"], rel=1e-4)


def test_minimality_is_the_documented_difference(tiny, task_for):
    task = task_for(tiny)
    circuit = cc.Circuit({"a": [(0, 0), (0, 3), (1, 1)]})
    mini = cc.minimality(tiny, task, circuit, ablation="zero", metric="logit_diff",
                         k_sets={(1, 1): [(0, 0)]})
    full = cc.faithfulness(tiny, task, circuit, ablation="zero").baselines["full"]

    def F(c):
        return cc.faithfulness(tiny, task, c, ablation="zero").value * full

    expected = abs(F(circuit.without([(0, 0)])) - F(circuit.without([(0, 0), (1, 1)]))) / abs(full)
    assert mini[(1, 1)].value == pytest.approx(expected, rel=1e-4)
    assert mini["0.3"].value == pytest.approx(abs(F(circuit) - F(circuit.without([(0, 3)]))) / abs(full), rel=1e-4)
    assert list(mini.table()["head"]) == ["0.0", "0.3", "1.1"]


def test_mlp_layers_in_the_circuit(tiny, task_for):
    """A circuit with mlps=[0] ablates MLP 1; its necessity ablates MLP 0 only."""
    task = task_for(tiny)
    L, H = tiny.cfg.n_layers, tiny.cfg.n_heads
    heads = [(l, h) for l in range(L) for h in range(H)]
    with_mlp0 = cc.faithfulness(tiny, task, cc.Circuit({"all": heads}, mlps=[0]), ablation="zero")
    with_both = cc.faithfulness(tiny, task, cc.Circuit({"all": heads}, mlps=[0, 1]), ablation="zero")
    assert with_both.problem and "nothing is ablated" in with_both.problem  # keeps everything
    assert abs(with_mlp0.value - 1.0) > 1e-3  # MLP 1 zeroed changes the output

    def manual(x, hook):
        return x * 0
    enc = task.encode(tiny)
    vals = []
    with torch.inference_mode():
        for i in range(enc.n):
            ids = enc.tokens[i:i + 1, : enc.lengths[i]]
            out = tiny.run_with_hooks(ids, fwd_hooks=[("blocks.1.hook_mlp_out", manual)])[0, -1]
            vals.append((out[enc.answers[i]] - out[enc.wrong[i]]).item())
    assert with_mlp0.value == pytest.approx(np.mean(vals) / with_mlp0.baselines["full"], rel=1e-4)


def test_minimality_interval_is_for_the_absolute_difference(tiny, task_for):
    """The interval comes from the signed difference's bootstrap: it reaches 0 exactly when
    that one holds 0 (a bootstrap of |d| never would), and it always holds the value."""
    from circuitcheck.stats import bootstrap_ci

    task = task_for(tiny)
    circuit = cc.Circuit({"a": [(0, 0), (0, 3), (1, 1)]})
    mini = cc.minimality(tiny, task, circuit, ablation="zero", metric="logit_diff", seed=3)
    for head, m in mini.scores.items():
        d = m.per_prompt  # signed, over |F(M)|
        assert m.value == pytest.approx(abs(d.mean()), rel=1e-5)
        assert m.details["signed"] == pytest.approx(d.mean(), rel=1e-5)
        lo, hi = bootstrap_ci(lambda idx: d[idx].mean(1), len(d), seed=3)  # same resamples
        assert m.ci[0] <= m.value <= m.ci[1]
        assert (m.ci[0] == 0.0) == (lo <= 0 <= hi)
    from circuitcheck.measures.circuit import _abs_interval

    assert _abs_interval(-0.2, 0.1) == (0.0, 0.2) and _abs_interval(-0.3, -0.1) == (0.1, 0.3)
    assert _abs_interval(0.1, 0.3) == (0.1, 0.3)


def test_minimality_scores_claim_is_decided_by_every_heads_interval(tiny, task_for):
    """The YAML ``minimality_scores`` claim (seed 002's K sets): held only when the lowest
    interval clears the bound, failed when some head's whole interval is below it."""
    from circuitcheck import _claims
    from circuitcheck.assertions import assert_minimality_scores

    task = task_for(tiny)
    circuit = cc.Circuit({"a": [(0, 0), (0, 3), (1, 1)]})
    ks = {"1.1": ["0.0"]}
    mini = cc.minimality(tiny, task, circuit, ablation="zero", k_sets=ks)
    lows = {h: m.ci[0] for h, m in mini.scores.items()}
    highs = {h: m.ci[1] for h, m in mini.scores.items()}
    with _claims.private() as rec:
        lowest = min(lows.values())
        if lowest > 1e-3:  # every interval clears a bound just below the lowest: held
            m = assert_minimality_scores(tiny, task, circuit, at_least=lowest - 1e-3,
                                         k_sets=ks, ablation="zero")
            assert m.ci[0] == pytest.approx(lowest)
            assert m.details["bars"]["minimality score per head"]["labels"] == ["0.0", "0.3",
                                                                                  "1.1"]
        else:  # a head whose interval reaches 0 keeps any positive bound from holding
            with pytest.raises(AssertionError, match="INCONCLUSIVE|FAILED"):
                assert_minimality_scores(tiny, task, circuit, at_least=2e-3, k_sets=ks,
                                         ablation="zero")
        above = min(highs.values()) + 1e-3  # the weakest head is wholly below it
        with pytest.raises(AssertionError, match="deciding head"):
            assert_minimality_scores(tiny, task, circuit, at_least=above, k_sets=ks,
                                     ablation="zero")
    assert rec and rec[-1]["verdict"] in ("failed", "inconclusive")
    with pytest.raises(cc.CircuitCheckError, match="k_sets must map a head"):
        assert_minimality_scores(tiny, task, circuit, at_least=0.1, k_sets=["1.1"])
