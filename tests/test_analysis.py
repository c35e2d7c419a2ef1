"""The notebooks' analyses (issue 17), each against an independent computation (plain torch on
the Hugging Face weights / TransformerLens's own cache) or a zoo model's known circuit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitcheck as cc
from circuitcheck.measures.attention_positions import position_attention, task_head_scores
from circuitcheck.measures.compensation import ablated_dla, compensation
from circuitcheck.measures.logit_lens import logit_lens
from circuitcheck.measures.ov import ov_copying, ov_eigen_scores


@pytest.fixture(scope="module")
def planted():
    m = cc.load_model("zoo:planted", device="cpu")
    return m, cc.tasks.induction(m, n=16, seq_len=10, seed=3)


@pytest.fixture(scope="module")
def ioi():
    m = cc.load_model("zoo:ioi-toy", device="cpu")
    return m, cc.tasks.ioi(m, n=24, seed=2)


def _gpt2_ov(hf, layer, head):
    """W_V, W_O of one head, read from the HF GPT-2's fused c_attn / c_proj."""
    blk = hf.transformer.h[layer].attn
    d = hf.config.n_embd
    dh = d // hf.config.n_head
    W_V = blk.c_attn.weight[:, 2 * d + head * dh: 2 * d + (head + 1) * dh].double()
    W_O = blk.c_proj.weight[head * dh:(head + 1) * dh].double()
    return W_V, W_O


def _score(lam):
    return float(lam.real.sum() / np.abs(lam).sum())


def test_ov_eigen_scores_match_numpy_on_the_full_matrices(planted, ioi):
    model, _ = ioi
    hf = model.original_model
    ov, full = ov_eigen_scores(model), ov_eigen_scores(model, circuit="full")
    W_E, W_U = hf.transformer.wte.weight.double(), hf.lm_head.weight.double().T
    # the exploratory-analysis notebook's own computation: TransformerLens's FactoredMatrix
    lam = model.OV.eigenvalues.detach()
    np.testing.assert_allclose(ov.values, (lam.sum(-1).real / lam.abs().sum(-1)).numpy(),
                               atol=1e-5)
    OV = model.OV.AB.detach().double()  # [L, H, d, d], the bridge's processed weights
    for layer, head in [(0, 2), (1, 2), (2, 2)]:
        big = OV[layer, head].numpy()  # d_model x d_model
        assert ov[layer, head] == pytest.approx(_score(np.linalg.eigvals(big)), abs=1e-6)
        vocab = (W_E @ OV[layer, head] @ W_U).detach().numpy()  # vocab x vocab
        assert full[layer, head] == pytest.approx(_score(np.linalg.eigvals(vocab)), abs=1e-6)
    # planted: the induction head's full OV circuit copies the token it reads; the previous-
    # token head writes only into a subspace it does not read (W_O W_V = 0): undefined, NaN
    pm, _ = planted
    pfull, pov = ov_eigen_scores(pm, circuit="full"), ov_eigen_scores(pm)
    assert pfull.top(1) == [(1, 1)] and pfull[(1, 1)] > 0.99
    assert np.isnan(pov[(0, 2)])


def test_ov_eigen_scores_use_each_query_heads_own_kv_head(model_dirs):
    model = cc.load_model(model_dirs["llama"], device="cpu")
    hf = model.original_model
    cfg = hf.config
    H, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    assert kv < H  # the fixture is grouped-query
    dh = cfg.hidden_size // H
    scores = ov_eigen_scores(model)
    for layer in range(cfg.num_hidden_layers):
        att = hf.model.layers[layer].self_attn
        for head in range(H):
            g = head // (H // kv)  # HF repeat_kv: consecutive query heads share a k/v head
            W_V = att.v_proj.weight[g * dh:(g + 1) * dh].T.double()
            W_O = att.o_proj.weight[:, head * dh:(head + 1) * dh].T.double()
            lam = np.linalg.eigvals((W_V @ W_O).detach().numpy())
            assert scores[(layer, head)] == pytest.approx(_score(lam), abs=1e-6)


def test_ov_copying_on_names_matches_the_hf_modules(ioi):
    model, task = ioi
    hf = model.original_model
    pos, neg = ov_copying(model, task, k=5), ov_copying(model, task, k=5, negative=True)
    enc = task.encode(model)
    names = sorted(set(enc.answers.tolist()) | set(enc.wrong.tolist()))
    assert pos.n == len(names)
    with torch.no_grad():
        x = hf.transformer.wte.weight[names]
        x = x + hf.transformer.h[0].mlp(hf.transformer.h[0].ln_2(x))
        for layer in range(3):
            for head in range(4):
                W_OV = model.OV.AB[layer, head].detach().double()
                for sign, res in ((1, pos), (-1, neg)):
                    out = sign * (x.double() @ W_OV).float()
                    logits = hf.lm_head(hf.transformer.ln_f(out))
                    hit = (logits.topk(5, -1).indices == torch.tensor(names)[:, None]).any(-1)
                    assert res[(layer, head)] == pytest.approx(hit.float().mean().item())
    # the card: the name movers suppress the repeated name; 1.2 is the strongest of them
    assert neg.top(1) == [(1, 2)] and pos[(1, 2)] < 0.2
    # a rate over names: its interval covers Wilson's, never zero-width when all names hit
    from circuitcheck.stats import wilson_ci

    for res in (pos, neg):
        w_lo, w_hi = wilson_ci(res.per_sequence.sum(0), np.full((3, 4), res.n))
        assert (res.ci_low <= w_lo + 1e-12).all() and (res.ci_high >= w_hi - 1e-12).all()
        assert (res.ci_low < res.ci_high).all()


def test_position_attention_matches_the_cached_patterns(ioi):
    model, task = ioi
    enc = task.encode(model)
    pa = position_attention(model, task, ["IO", "S2", ["IO", "S2"], "first"])
    pw = position_attention(model, task, ["S2"], weighted=True)
    pc = position_attention(model, task, ["S2"], prompts="corrupted")
    assert pa.targets == ("IO", "S2", "IO+S2", "first")
    exp = np.zeros((enc.n, 3, 4, 4))
    expw = np.zeros((enc.n, 3, 4))
    for i in range(enc.n):
        n = int(enc.lengths[i])
        _, cache = model.run_with_cache(enc.tokens[i:i + 1, :n])
        io, s2 = int(enc.positions["IO"][i]), int(enc.positions["S2"][i])
        for layer in range(3):
            row = cache[f"blocks.{layer}.attn.hook_pattern"][0, :, n - 1]  # [H, key]
            v = cache[f"blocks.{layer}.attn.hook_v"][0, s2].norm(dim=-1)  # [H]
            exp[i, layer] = torch.stack([row[:, io], row[:, s2], row[:, io] + row[:, s2],
                                         row[:, 0]], -1).numpy()
            expw[i, layer] = (row[:, s2] * v).numpy()
    np.testing.assert_allclose(pa.per_prompt, exp, atol=1e-5)
    np.testing.assert_allclose(pw.per_prompt[..., 0], expw, atol=1e-4)
    assert (pa.ci_low <= pa.values + 1e-12).all() and (pa.values <= pa.ci_high + 1e-12).all()
    # the card's name movers attend to S2 from end; layer 0 does not
    assert pa[("1.2", "S2")] > 0.5 and pa.values[0, :, 1].max() < 0.1
    assert not np.allclose(pc.values, pa.values[..., 1:2])  # the corrupted prompts were run
    with pytest.raises(cc.TaskError, match="comes after 'S2'"):
        position_attention(model, task, [["IO", "end"]], from_="S2")


def test_weighted_attention_ungroups_kv_heads(model_dirs):
    model = cc.load_model(model_dirs["llama"], device="cpu")
    task = cc.Task(prompts=["t1 t2 t3 t4", "t5 t6 t7"], answers=["t1", "t2"],
                   positions={"second": [2, 2]})
    pw = position_attention(model, task, ["second"], weighted=True)
    rep = model.cfg.n_heads // model.W_V.shape[1]
    for i, text in enumerate(task.prompts):
        _, cache = model.run_with_cache(text)
        for layer in range(model.cfg.n_layers):
            row = cache[f"blocks.{layer}.attn.hook_pattern"][0, :, -1, 2]
            v = cache[f"blocks.{layer}.attn.hook_v"][0, 2].norm(dim=-1)  # [n_kv]
            expected = row * v[torch.arange(model.cfg.n_heads) // rep]
            np.testing.assert_allclose(pw.per_prompt[i, layer, :, 0], expected.numpy(),
                                       rtol=1e-4)


def test_head_kinds_on_a_tasks_prompts_find_the_planted_heads(planted):
    model, task = planted
    bos = task_head_scores(model, task, "bos")
    assert set(bos.top(2)) == {(0, 0), (1, 3)} and bos[(0, 0)] > 0.99
    # saturated at 1.0 on every prompt: the Wilson interval of n/n, not a zero-width [1, 1]
    assert 0.7 < bos.ci_low[0, 0] < bos.ci_high[0, 0] == 1.0
    assert cc.head_scores(model, "induction", task=task).top(1) == [(1, 1)]
    assert cc.head_scores(model, "previous_token", task=task).top(1) == [(0, 2)]
    assert cc.head_scores(model, "self", n=4, seq_len=8).top(1) == [(1, 0)]  # attends itself
    rnd = cc.head_scores(model, "bos", n=4, seq_len=8)
    assert set(rnd.top(2)) == {(0, 0), (1, 3)}
    # induction on one prompt with a repeated token, by hand: keys after earlier occurrences
    t = cc.Task(prompts=[[1, 5, 6, 7, 5, 8, 6]], answers=[7])
    got = task_head_scores(model, t, "induction").per_sequence[0]
    dup = task_head_scores(model, t, "duplicate_token").per_sequence[0]
    _, cache = model.run_with_cache(torch.tensor([[1, 5, 6, 7, 5, 8, 6]]))
    for layer in range(2):
        p = cache[f"blocks.{layer}.attn.hook_pattern"][0]
        # queries 4 (5: earlier at 1 -> key 2) and 6 (6: earlier at 2 -> key 3)
        np.testing.assert_allclose(got[layer], ((p[:, 4, 2] + p[:, 6, 3]) / 2).numpy(), atol=1e-6)
        np.testing.assert_allclose(dup[layer], ((p[:, 4, 1] + p[:, 6, 2]) / 2).numpy(), atol=1e-6)


def test_dla_under_ablation_against_a_hand_ablated_run(ioi):
    model, task = ioi
    enc = task.encode(model)
    c = ablated_dla(model, task, ["1.2"])  # zero, at end, clean norm scale
    ca = ablated_dla(model, task, ["1.2"], scale="ablated")
    real = []
    for i in range(enc.n):
        n = int(enc.lengths[i])

        def zero(z, hook, n=n):
            z[:, n - 1, 2] = 0
            return z

        logits = model.run_with_hooks(enc.tokens[i:i + 1, :n],
                                      fwd_hooks=[("blocks.1.attn.hook_z", zero)])[0, -1]
        real.append(float(logits[enc.answers[i]] - logits[enc.wrong[i]]))
    np.testing.assert_allclose(c.actual, real, atol=1e-3)
    clean = cc.direct_logit_attribution(model, task)
    np.testing.assert_allclose(c.clean_ld, clean.logit_diff, atol=1e-4)
    np.testing.assert_allclose(c.naive, clean.logit_diff - clean.per_prompt[1, 2], atol=1e-4)
    # with the clean norm scale nothing upstream of or beside 1.2 changes; downstream does
    others = np.delete(c.change[:2].reshape(8, -1), 1 * 4 + 2, axis=0)  # all but 1.2
    assert np.abs(others).max() < 1e-6
    assert np.abs(c.change[2]).max() > 1e-3
    # with the ablated run's scale the components add up to the real logit difference
    np.testing.assert_allclose(ca.after.total, real, atol=1e-3)
    m = compensation(model, task, ["2.0", "2.1"], ablate=["1.2"])
    np.testing.assert_allclose(m.per_prompt, c.of([(2, 0), (2, 1)]) / c.lost.mean())
    with pytest.raises(cc.CircuitCheckError, match="both ablated and claimed"):
        compensation(model, task, ["1.2"], ablate=["1.2"])


def test_logit_lens_matches_the_hf_final_norm(ioi):
    model, task = ioi
    enc = task.encode(model)
    ll = logit_lens(model, task)
    hf = model.original_model
    with torch.no_grad():
        for i in range(4):
            n = int(enc.lengths[i])
            hs = hf(enc.tokens[i:i + 1, :n], output_hidden_states=True).hidden_states
            for s in range(len(hs) - 1):  # HF's last hidden state is already ln_f'd
                lg = hf.lm_head(hf.transformer.ln_f(hs[s][0, -1]))
                assert ll.per_prompt[i, s] == pytest.approx(
                    float(lg[enc.answers[i]] - lg[enc.wrong[i]]), abs=1e-3)
    dla = cc.direct_logit_attribution(model, task)
    np.testing.assert_allclose(ll.per_prompt[:, -1], dla.logit_diff, atol=1e-3)
    assert ll.top1[-1] == 1.0 and ll.top1[0] < 0.5


def test_analysis_assertions_fail_with_their_story(ioi):
    from circuitcheck import _claims

    model, task = ioi
    with _claims.private():
        _assertion_stories(model, task)


def _assertion_stories(model, task):
    with pytest.raises(AssertionError, match=r"FAILED: attention 0\.\d\d < required 0\.50"):
        cc.assert_attends(model, task, ["1.2", "1.3"], to="IO", at_least=0.5)
    cc.assert_attends(model, task, "1.2", to="S2", at_least=0.3)
    cc.assert_ov_copying(model, task, "1.2", negative=True, at_least=0.4)
    with pytest.raises(AssertionError, match="logit diff clean"):
        cc.assert_compensates(model, task, ["2.0", "2.1", "2.3"], ablate="1.2", at_least=0.3)
    cc.assert_logit_lens(model, task, layer=1, at_least=5.0)


def test_attention_claims_draw_the_claimed_heads_patterns(ioi):
    import re
    import xml.etree.ElementTree as ET

    from circuitcheck import _claims
    from circuitcheck.report import build_document
    from circuitcheck.report._html import render

    model, task = ioi
    with _claims.private() as records:
        cc.assert_attends(model, task, "1.2", to="S2", at_least=0.3)
    pics = records[0]["measurement"]["patterns"]
    assert list(pics) == ["1.2 on clean prompt 0", "1.2 on clean prompt 1"]
    enc = task.encode(model)
    n = int(enc.lengths[0])
    _, cache = model.run_with_cache(enc.tokens[:1, :n])
    p0 = pics["1.2 on clean prompt 0"]
    assert p0["row"] == n - 1 and p0["cols"] == [int(enc.positions["S2"][0])]
    assert p0["tokens"] == model.to_str_tokens(enc.tokens[0, :n])
    np.testing.assert_allclose(p0["weights"][-1], cache["blocks.1.attn.hook_pattern"][0, 2, -1]
                               .numpy(), atol=1e-4)
    html = render(build_document(records))
    svgs = re.findall(r'<svg class="pattern".*?</svg>', html, flags=re.S)
    assert len(svgs) == 2
    root = ET.fromstring(svgs[0])  # well-formed, self-contained
    cells = [t.text for t in root.iter("{*}title") if t.text and "->" in t.text] or \
            [t.text for t in root.iter("title") if t.text and "->" in t.text]
    assert len(cells) == n * (n + 1) // 2
    s2 = int(enc.positions["S2"][0])
    want = f"{n - 1} {p0['tokens'][-1]} -> {s2} {p0['tokens'][s2]}: "
    assert any(c.startswith(want) for c in cells)


def test_the_issue_names_are_the_same_measurements(ioi, planted):
    """cc.copying_scores / attention_to / compensation / head_scores('first_token') give what
    the measurements they name give (same numbers), with heads= restricting or checking."""
    model, task = ioi
    names = cc.copying_scores(model, task=task)
    np.testing.assert_array_equal(names.scores, ov_copying(model, task).scores)
    neg = cc.copying_scores(model, ["2.0", "2.1"], task, negative=True)
    full_neg = ov_copying(model, task, negative=True).scores
    assert neg.scores[2, 0] == full_neg[2, 0] and neg.scores[2, 1] == full_neg[2, 1]
    assert np.isnan(neg.scores).sum() == neg.scores.size - 2
    np.testing.assert_array_equal(cc.copying_scores(model).scores, ov_eigen_scores(model).scores)
    with pytest.raises(cc.CircuitCheckError, match="out of range"):
        cc.copying_scores(model, ["9.0"], task)
    att = cc.attention_to(model, task, source="end", targets=["IO", "S1"])
    ref = cc.position_attention(model, task, to=["IO", "S1"], from_="end")
    np.testing.assert_array_equal(att["IO"].scores, ref.values[..., 0])
    assert att["2.0", "S1"] == ref["2.0", "S1"] == float(ref.values[2, 0, 1])
    comp = cc.compensation(model, task, ["2.0", "2.1"], ablate=["1.2"], positions="end")
    np.testing.assert_allclose(comp.per_prompt,
                               compensation(model, task, ["2.0", "2.1"], ablate=["1.2"]).per_prompt)
    pm, ptask = planted
    first = cc.head_scores(pm, "first_token", task=ptask)
    np.testing.assert_array_equal(first.scores, cc.head_scores(pm, "bos", task=ptask).scores)


def test_full_ov_scores_refuse_different_embedding_and_unembedding_vocabularies():
    """W_E[t] -> ... -> W_U reads token t at both ends: meaningless when the vocabularies differ."""
    import types

    odd = types.SimpleNamespace(W_E=torch.zeros(10, 4), W_U=torch.zeros(4, 12),
                                cfg=types.SimpleNamespace(d_vocab=10, d_vocab_out=12))
    for call in (lambda: ov_eigen_scores(odd, circuit="full"),
                 lambda: ov_copying(odd, names=[1, 2])):
        with pytest.raises(cc.CircuitCheckError, match="embeds 10 tokens and unembeds 12"):
            call()


def test_task_quality_claim_per_template(ioi):
    """The per-template claim reads the groups a plain groupby gives; its intervals are
    simultaneous (Bonferroni), Wilson for top-1; a one-prompt group is not measurable."""
    from statistics import NormalDist

    from circuitcheck import _claims

    model, _ = ioi
    task = cc.tasks.ioi(model, n=120, seed=1)
    q = cc.task_quality(model, task)
    per = q.intervals("logit_diff")
    frame = q.table().drop(index="all")
    assert sorted(per) == sorted(frame.index)
    for g, (n, mean, lo, hi) in per.items():
        assert n == frame.loc[g, "n"] and mean == pytest.approx(frame.loc[g, "logit_diff"])
        assert lo < mean < hi
    # Wilson at the Bonferroni level, by hand, for one group
    g = sorted(per)[0]
    n, k = per[g][0], q.top1[np.asarray(q.groups) == g].sum()
    z = NormalDist().inv_cdf(1 - 0.05 / len(per) / 2)
    p = k / n
    lo = (p + z**2 / (2 * n) - z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))) / (1 + z**2 / n)
    assert q.intervals("top1")[g][2] == pytest.approx(lo)
    m = cc.assert_task_quality(model, task, metric="logit_diff", at_least=5.0)
    weakest = min(per, key=lambda g: per[g][2])
    assert m.ci == pytest.approx(per[weakest][2:]) and m.details["groups"][weakest]["n"] > 1
    with _claims.private():
        with pytest.raises(AssertionError, match=r"FAILED: task quality .* required 100"):
            cc.assert_task_quality(model, task, metric="logit_diff", at_least=100.0)
        with pytest.raises(AssertionError, match="NOT MEASURABLE.*single prompt"):
            cc.assert_task_quality(model, cc.tasks.ioi(model, n=1, seed=1), at_least=0.5)
    with pytest.raises(ValueError, match="not one of top1, prob, logit_diff"):
        q.intervals("accuracy")
    pooled = cc.assert_task_quality(model, task, at_least=0.8, per_template=False)
    assert pooled.n == len(task)


def test_head_score_on_task_scores_the_claims_own_prompts(ioi):
    model, task = ioi
    m = cc.assert_head_score(model, ["0.0"], "bos", top=4, on_task=True, claim_task=task)
    direct = cc.head_scores(model, "bos", task=task)
    assert m.value == pytest.approx(direct[(0, 0)]) and m.n == direct.n
    with pytest.raises(ValueError, match="n and seq_len shape the random repeats"):
        cc.assert_head_score(model, ["0.0"], "bos", on_task=True, claim_task=task, n=4)
    with pytest.raises(cc.CircuitCheckError, match="on_task must be true or false"):
        cc.assert_head_score(model, ["0.0"], "bos", on_task="yes", claim_task=task)
