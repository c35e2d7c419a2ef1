"""Patching, path patching, attention ablation and DLA against plain one-run-per-patch loops."""
from __future__ import annotations


import numpy as np
import pytest
import torch

import circuitcheck as cc
from circuitcheck import _claims
from circuitcheck.assertions_patching import (assert_attention_ablation_effect,
                                              assert_direct_effect, assert_patching_recovers)
from circuitcheck.errors import CircuitCheckError, CircuitError, TaskError
from circuitcheck.interventions.patching import skipping_is_exact
from circuitcheck.measures import patching as P

from .conftest import own_task

HEAD_HOOK = "blocks.{}.attn.hook_{}"


@pytest.fixture(scope="module")
def task_for():
    cache = {}

    def get(model, kind="ragged"):
        key = (id(model), kind)
        if key not in cache:
            cache[key] = own_task(model, n=5) if kind == "ragged" else _fixed_task(model)
        return cache[key]
    return get


def _fixed_task(model, n: int = 4, words: int = 5):
    """Like ``own_task`` but every prompt has the same length (for transformer_lens.patching)."""
    return own_task(model, n=n, seed=1, words=words)


# -- the plain reference: one unpadded forward per (patch, prompt) --------------------------

def _ids(enc, i: int, which: str) -> torch.Tensor:
    toks = enc.tokens if which == "clean" else enc.corrupted
    return toks[i, : enc.lengths[i]][None]


_CACHES: dict = {}


def _cache(model, ids):
    """Logits and activation cache of one unpadded run (memoised: the loops reuse them)."""
    key = (id(model), tuple(ids.flatten().tolist()))
    if key not in _CACHES:
        with torch.inference_mode():
            _CACHES[key] = model.run_with_cache(ids)
    return _CACHES[key]


def _ld(logits, enc, i) -> float:
    last = logits[0, -1]
    return float(last[enc.answers[i]] - last[enc.wrong[i]])


def _run(model, ids, hooks):
    with torch.inference_mode():
        return model.run_with_hooks(ids, fwd_hooks=hooks)


def _baselines(model, enc):
    clean = np.array([_ld(_cache(model, _ids(enc, i, "clean"))[0], enc, i) for i in range(enc.n)])
    corr = np.array([_ld(_cache(model, _ids(enc, i, "corr"))[0], enc, i) for i in range(enc.n)])
    return clean, corr


def _loop_heads(model, task, component: str, direction: str = "denoise", pos_of=None):
    """Normalised effect of patching each unit, one run per (unit, prompt) with a plain hook."""
    enc = task.encode(model)
    L = model.cfg.n_layers
    src_name, base_name = ("clean", "corr") if direction == "denoise" else ("corr", "clean")
    clean, corr = _baselines(model, enc)
    base = corr if direction == "denoise" else clean
    U = model.cfg.n_heads
    if component in ("k", "v"):
        U = getattr(model.cfg, "n_key_value_heads", None) or U
    K = 1 if pos_of is None else pos_of.shape[1]
    out = np.full((L, K, U), np.nan)
    for layer in range(L):
        name = HEAD_HOOK.format(layer, component)
        for k in range(K):
            for u in range(U):
                num, den = [], []
                for i in range(enc.n):
                    src = _cache(model, _ids(enc, i, src_name))[1][name]

                    def hook(x, hook, i=i, src=src):
                        x = x.clone()
                        p = slice(None) if pos_of is None else int(pos_of[i, k])
                        if component == "pattern":
                            x[:, u, p] = src[:, u, p]
                        else:
                            x[:, p, u] = src[:, p, u]
                        return x
                    patched = _ld(_run(model, _ids(enc, i, base_name), [(name, hook)]), enc, i)
                    num.append(patched - base[i])
                    den.append(clean[i] - corr[i])
                out[layer, k, u] = np.mean(num) / np.mean(den)
    return out if pos_of is not None else out[:, 0]


# -- activation patching -------------------------------------------------------------------

@pytest.mark.parametrize("component", ["z", "q", "k", "v", "pattern"])
def test_patch_heads_equals_loop(tiny, task_for, component):
    task = task_for(tiny)
    got = P.patch_heads(tiny, task, component=component, batch_size=7)
    want = _loop_heads(tiny, task, component)
    np.testing.assert_allclose(got.values, want, atol=1e-4, rtol=1e-3)
    assert got.dims[0] == "layer" and got.values.shape == want.shape
    assert got.normalization == "(patched - corrupted) / (clean - corrupted)"


def test_raw_logit_grid_equals_a_plain_loop(tiny, task_for):
    """metric='logit': the grid's raw (un-normalised) cells are the patched runs' mean answer
    logit, and its values the same runs normalised; attribution reads the same metric."""
    task = task_for(tiny)
    enc = task.encode(tiny)
    got = P.patch_heads(tiny, task, component="z", metric="logit")
    layer, u = tiny.cfg.n_layers - 1, 0
    name = HEAD_HOOK.format(layer, "z")
    patched, clean, corr = [], [], []
    for i in range(enc.n):
        src = _cache(tiny, _ids(enc, i, "clean"))[1][name]

        def hook(x, hook, src=src):
            x = x.clone()
            x[:, :, u] = src[:, :, u]
            return x
        patched.append(float(_run(tiny, _ids(enc, i, "corr"), [(name, hook)])[0, -1, enc.answers[i]]))
        clean.append(float(_cache(tiny, _ids(enc, i, "clean"))[0][0, -1, enc.answers[i]]))
        corr.append(float(_cache(tiny, _ids(enc, i, "corr"))[0][0, -1, enc.answers[i]]))
    assert got.raw[layer, u] == pytest.approx(np.mean(patched), abs=1e-4)
    want = (np.mean(patched) - np.mean(corr)) / (np.mean(clean) - np.mean(corr))
    assert got.values[layer, u] == pytest.approx(want, abs=1e-4, rel=1e-3)
    att = P.attribution_patch_heads(tiny, task, component="z", metric="logit")
    assert np.isfinite(att.values).all() and np.isnan(att.raw).all()  # estimates: no raw runs


def test_noising_and_named_positions_equal_loop(tiny, task_for):
    task = task_for(tiny)
    enc = task.encode(tiny)
    got = P.patch_heads(tiny, task, positions=["mid", "end"], direction="noise")
    pos_of = torch.stack([enc.positions["mid"], enc.positions["end"]], 1)
    want = _loop_heads(tiny, task, "z", "noise", pos_of=pos_of)
    np.testing.assert_allclose(got.values, want, atol=1e-4, rtol=1e-3)
    assert got.dims == ("layer", "pos", "head") and got.coords["pos"] == ("mid", "end")


@pytest.mark.parametrize("component", ["resid_pre", "attn_out", "mlp_out"])
def test_patch_residual_per_position_equals_loop(tiny, task_for, component):
    task = task_for(tiny)
    enc = task.encode(tiny)
    got = P.patch_residual(tiny, task, component=component)
    clean, corr = _baselines(tiny, enc)
    L, Pmax = tiny.cfg.n_layers, enc.tokens.shape[1]
    want = np.full((L, Pmax), np.nan)
    for layer in range(L):
        name = f"blocks.{layer}.hook_{component}"
        for p in range(Pmax):
            num, den = [], []
            for i in range(enc.n):
                if p >= enc.lengths[i]:
                    continue  # prompt i has no position p
                src = _cache(tiny, _ids(enc, i, "clean"))[1][name]

                def hook(x, hook, src=src, p=p):
                    x = x.clone()
                    x[:, p] = src[:, p]
                    return x
                num.append(_ld(_run(tiny, _ids(enc, i, "corr"), [(name, hook)]), enc, i) - corr[i])
                den.append(clean[i] - corr[i])
            want[layer, p] = np.mean(num) / np.mean(den)
    np.testing.assert_allclose(got.values, want, atol=1e-4, rtol=1e-3)
    assert got.dims == ("layer", "pos")


def test_matches_transformer_lens_patching(tiny, task_for):
    """transformer_lens.patching runs on the bridge (TL 4): same grids on equal-length prompts."""
    from transformer_lens import patching as tlp

    task = task_for(tiny, "fixed")
    enc = task.encode(tiny)
    _, clean_cache = _cache(tiny, enc.tokens)
    clean, corr = _baselines(tiny, enc)
    a, w = enc.answers, enc.wrong

    def metric(logits):
        last = logits[:, -1]
        ld = last[torch.arange(len(a)), a] - last[torch.arange(len(a)), w]
        return (ld.mean() - corr.mean()) / (clean.mean() - corr.mean())

    cases = [(tlp.get_act_patch_attn_head_out_all_pos, dict(component="z")),
             (tlp.get_act_patch_attn_head_pattern_all_pos, dict(component="pattern")),
             (tlp.get_act_patch_attn_head_v_all_pos, dict(component="v"))]
    for fn, kw in cases:
        want = fn(tiny, enc.corrupted, clean_cache, metric).numpy()
        got = P.patch_heads(tiny, task, **kw).values
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
    want = tlp.get_act_patch_resid_pre(tiny, enc.corrupted, clean_cache, metric).numpy()
    np.testing.assert_allclose(P.patch_residual(tiny, task).values, want, atol=1e-4, rtol=1e-3)


def test_skipped_blocks_are_restored_and_exact(tiny, task_for):
    """Runs that start at a layer skip the blocks before it, then leave the model as it was."""
    assert skipping_is_exact(tiny)
    task = task_for(tiny)
    ids = _ids(task.encode(tiny), 0, "clean")
    before, _ = _cache(tiny, ids)
    P.patch_heads(tiny, task)
    after, cache = _cache(tiny, ids)
    torch.testing.assert_close(after, before)
    assert all(f"blocks.{l}.attn.hook_z" in cache for l in range(tiny.cfg.n_layers))


def test_attribution_is_the_first_order_term(tiny, task_for):
    """(clean - corrupted) · ∂ld/∂z at the corrupted run, by plain autograd per prompt."""
    task = task_for(tiny)
    enc = task.encode(tiny)
    got = P.attribution_patch_heads(tiny, task)
    clean, corr = _baselines(tiny, enc)
    L, H = tiny.cfg.n_layers, tiny.cfg.n_heads
    est = np.zeros((L, H, enc.n))
    for i in range(enc.n):
        src = _cache(tiny, _ids(enc, i, "clean"))[1]
        saved = {}

        def save(x, hook):
            saved[hook.name] = x
            return x
        with torch.enable_grad():
            logits = tiny.run_with_hooks(_ids(enc, i, "corr"), fwd_hooks=[
                (lambda n: n.endswith("attn.hook_z"), save)])
            ld = logits[0, -1, enc.answers[i]] - logits[0, -1, enc.wrong[i]]
            names = [f"blocks.{l}.attn.hook_z" for l in range(L)]
            grads = torch.autograd.grad(ld, [saved[n] for n in names])
        for l, (n, g) in enumerate(zip(names, grads)):
            est[l, :, i] = ((src[n] - saved[n].detach()) * g).sum((0, 1, 3)).numpy()
    want = est.mean(-1) / (clean.mean() - corr.mean())
    np.testing.assert_allclose(got.values, want, atol=1e-4, rtol=1e-3)
    assert got.method == "attribution"
    exact = P.patch_heads(tiny, task)
    assert -1 <= P.correlation(got, exact) <= 1


def test_attribution_per_position_sums_to_all_positions(tiny, task_for):
    task = task_for(tiny, "fixed")
    for component in ("z", "pattern"):
        total = P.attribution_patch_heads(tiny, task, component=component)
        per_pos = P.attribution_patch_heads(tiny, task, component=component, per_position=True,
                                            batch_size=1)
        assert per_pos.dims == ("layer", "pos", "head")
        np.testing.assert_allclose(per_pos.values.sum(1), total.values, atol=1e-5)


# -- path patching ---------------------------------------------------------------------------

def test_path_to_resid_final_is_the_direct_path(tiny, task_for):
    """Sender -> final residual with MLPs frozen = the head's own write swapped, by hand."""
    task = task_for(tiny)
    enc = task.encode(tiny)
    clean, corr = _baselines(tiny, enc)
    for layer, h in [(0, 1), (1, 2)]:
        got = P.path_patch(tiny, task, [(layer, h)], None, receiver_input="resid_final",
                           freeze_mlps=True)
        vals = []
        for i in range(enc.n):
            zc = _cache(tiny, _ids(enc, i, "clean"))[1][f"blocks.{layer}.attn.hook_z"]
            zk = _cache(tiny, _ids(enc, i, "corr"))[1][f"blocks.{layer}.attn.hook_z"]
            delta = (zk - zc)[0, :, h] @ tiny.W_O[layer, h].detach()

            def add(x, hook, delta=delta):
                return x + delta
            vals.append(_ld(_run(tiny, _ids(enc, i, "clean"), [("ln_final.hook_in", add)]), enc, i))
        np.testing.assert_allclose(got.per_prompt, vals, atol=1e-4, rtol=1e-4)
        want = (np.mean(vals) - clean.mean()) / (clean.mean() - corr.mean())
        assert got.value == pytest.approx(want, abs=1e-5)


def _frozen_hooks(model, enc, i, senders, mlps=False):
    """Every head's z from the clean run except the senders', from the corrupted run."""
    c = _cache(model, _ids(enc, i, "clean"))[1]
    k = _cache(model, _ids(enc, i, "corr"))[1]
    hooks = []
    for layer in range(model.cfg.n_layers):
        z = c[f"blocks.{layer}.attn.hook_z"].clone()
        for sl, sh in senders:
            if sl == layer:
                z[:, :, sh] = k[f"blocks.{layer}.attn.hook_z"][:, :, sh]
        hooks.append((f"blocks.{layer}.attn.hook_z", lambda x, hook, z=z: z))
        if mlps:
            m = c[f"blocks.{layer}.hook_mlp_out"]
            hooks.append((f"blocks.{layer}.hook_mlp_out", lambda x, hook, m=m: m))
    return hooks


def test_path_patching_equals_two_step_loop(tiny, task_for):
    task = task_for(tiny)
    enc = task.encode(tiny)
    senders, receivers = [(0, 0), (0, 3)], [(1, 1), (1, 2)]
    # resid_final, MLPs recomputed
    got = P.path_patch(tiny, task, senders, None, receiver_input="resid_final")
    want = [_ld(_run(tiny, _ids(enc, i, "clean"), _frozen_hooks(tiny, enc, i, senders)), enc, i)
            for i in range(enc.n)]
    np.testing.assert_allclose(got.per_prompt, want, atol=1e-4, rtol=1e-4)
    # receivers' queries at 'end' only
    got = P.path_patch(tiny, task, senders, receivers, receiver_input="q", positions=["end"])
    want = []
    for i in range(enc.n):
        q = {}

        def grab(x, hook):
            q[hook.name] = x.clone()
        _run(tiny, _ids(enc, i, "clean"), _frozen_hooks(tiny, enc, i, senders)
             + [("blocks.1.attn.hook_q", grab)])
        new = next(iter(q.values()))
        end = int(enc.lengths[i]) - 1

        def put(x, hook, new=new, end=end):
            x = x.clone()
            for _, h in receivers:
                x[:, end, h] = new[:, end, h]
            return x
        want.append(_ld(_run(tiny, _ids(enc, i, "clean"), [("blocks.1.attn.hook_q", put)]), enc, i))
    np.testing.assert_allclose(got.per_prompt, want, atol=1e-4, rtol=1e-4)
    grid = P.path_patch_heads(tiny, task, receivers, receiver_input="q", positions=["end"])
    assert grid.values.shape == (tiny.cfg.n_layers, tiny.cfg.n_heads)
    # a head cannot reach queries of its own layer (float32 noise from batch shapes only)
    assert np.allclose(grid.values[1], 0, atol=1e-5)
    one = P.path_patch(tiny, task, [(0, 2)], receivers, receiver_input="q", positions=["end"])
    assert grid[0, 2] == pytest.approx(one.value, abs=1e-5)


# -- attention ablation -------------------------------------------------------------------

def test_zero_attention_equals_zero_z(tiny, task_for):
    task = task_for(tiny)
    enc = task.encode(tiny)
    heads = [(0, 1), (1, 3)]
    got = P.ablate_attention(tiny, task, heads, mode="zero")
    assert np.isfinite(got.loss_ablated).all()
    for i in range(enc.n):
        def zero(x, hook):
            x = x.clone()
            for l, h in heads:
                if hook.name.startswith(f"blocks.{l}."):
                    x[:, :, h] = 0
            return x
        logits = _run(tiny, _ids(enc, i, "clean"), [(lambda n: n.endswith("hook_z"), zero)])
        lp = logits[0, -1].log_softmax(-1)[enc.answers[i]]
        assert got.loss_ablated[i] == pytest.approx(-float(lp), abs=1e-5)
        assert got.metric_ablated[i] == pytest.approx(_ld(logits, enc, i), abs=1e-4)


def test_mean_attention_is_uniform_over_visible_keys(tiny, task_for):
    """Seed 004's mean mode: each query row's scores set to their mean, i.e. the head attends
    uniformly to the keys it can see (written here directly on the pattern)."""
    task = task_for(tiny)
    enc = task.encode(tiny)
    head = (1, 2)
    got = P.ablate_attention(tiny, task, [head], mode="mean")
    assert np.abs(got.loss_ablated - got.loss_clean).max() > 1e-3  # it ablates something
    for i in range(enc.n):
        n = int(enc.lengths[i])
        uniform = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]

        def put(x, hook):
            x = x.clone()
            x[:, head[1]] = uniform.to(x.dtype)
            return x
        logits = _run(tiny, _ids(enc, i, "clean"), [(f"blocks.{head[0]}.attn.hook_pattern", put)])
        lp = logits[0, -1].log_softmax(-1)[enc.answers[i]]
        assert got.loss_ablated[i] == pytest.approx(-float(lp), abs=1e-4)


def test_prompt_mean_attention_uses_mean_scores(tiny, task_for):
    task = task_for(tiny)
    enc = task.encode(tiny)
    head = (1, 2)
    name = f"blocks.{head[0]}.attn.hook_attn_scores"
    scores = [_cache(tiny, _ids(enc, i, "clean"))[1][name][0, head[1]] for i in range(enc.n)]
    Pmax = enc.tokens.shape[1]
    mean = torch.full((Pmax, Pmax), float("-inf"))
    for q in range(Pmax):
        for k in range(q + 1):
            vals = [s[q, k] for s in scores if s.shape[0] > q]
            mean[q, k] = torch.stack(vals).mean()
    got = P.ablate_attention(tiny, task, [head], mode="prompt-mean")
    for i in range(enc.n):
        n = int(enc.lengths[i])

        def put(x, hook, n=n):
            x = x.clone()
            x[:, head[1]] = mean[:n, :n]
            return x
        logits = _run(tiny, _ids(enc, i, "clean"), [(name, put)])
        lp = logits[0, -1].log_softmax(-1)[enc.answers[i]]
        assert got.loss_ablated[i] == pytest.approx(-float(lp), abs=1e-4)


def test_compare_to_random_draws_other_heads(tiny, task_for):
    task = task_for(tiny)
    heads = [(0, 0), (1, 1)]
    rc = P.compare_to_random(tiny, task, heads, n_repeats=6, seed=3)
    again = P.compare_to_random(tiny, task, heads, n_repeats=6, seed=3)
    assert rc.random_sets == again.random_sets and np.allclose(rc.random, again.random)
    assert all(len(s) == 2 and not set(s) & set(heads) for s in rc.random_sets)
    single = P.ablate_attention(tiny, task, heads)
    assert rc.chosen_effect == pytest.approx(single.loss_increase, abs=1e-5)
    assert 0 < rc.p_value <= 1 and rc.random.shape == (6, task.encode(tiny).n)
    one = P.ablate_attention(tiny, task, list(rc.random_sets[0]))
    assert rc.random_effects[0] == pytest.approx(one.loss_increase, abs=1e-5)


# -- direct logit attribution -----------------------------------------------------------------

def test_dla_adds_up_and_matches_a_head_by_hand(tiny, task_for):
    task = task_for(tiny)
    enc = task.encode(tiny)
    dla = P.direct_logit_attribution(tiny, task)
    assert dla.max_error < 1e-4
    np.testing.assert_allclose(dla.total, dla.logit_diff, atol=1e-4)
    layer, h = 1, 2
    i = 0
    _, c = _cache(tiny, _ids(enc, i, "clean"))
    write = c[f"blocks.{layer}.attn.hook_z"][0, -1, h] @ tiny.W_O[layer, h].detach()
    if tiny.cfg.normalization_type.startswith("LN"):
        write = write - write.mean()
    direction = ((tiny.W_U[:, enc.answers[i]] - tiny.W_U[:, enc.wrong[i]])
                 * tiny.ln_final.w).detach()
    want = float(write / c["ln_final.hook_scale"][0, -1] @ direction)
    assert dla.per_prompt[layer, h, i] == pytest.approx(want, abs=1e-4)
    m = P.direct_effect(tiny, task, [(layer, h), (0, 1)])
    share = (dla.per_prompt[layer, h] + dla.per_prompt[0, 1]).mean() / dla.logit_diff.mean()
    assert m.value == pytest.approx(share, rel=1e-6)


# -- claims --------------------------------------------------------------------------------

def test_claims_hold_and_fail_with_a_story(tiny, task_for):
    task = task_for(tiny)
    m = assert_direct_effect(tiny, task, ["1.2"], at_least=-50.0)
    assert "direct logit attribution" in m.details["heatmaps"]
    with _claims.private(), pytest.raises(AssertionError) as err:
        assert_direct_effect(tiny, task, ["1.2"], at_least=50.0)
    first = str(err.value).splitlines()[0]
    assert "FAILED" in first and "direct effect" in first and "50.00" in first
    m = assert_patching_recovers(tiny, task, ["0.1"], at_least=-50.0, heatmap=True)
    heat = m.details["heatmaps"]["patching z (denoise)"]
    assert heat["outline"] == [[0, 1]] and len(heat["data"]) == tiny.cfg.n_layers
    with _claims.private(), pytest.raises(AssertionError, match="patching recovery"):
        assert_patching_recovers(tiny, task, ["0.1"], at_least=50.0, heatmap=False)
    with _claims.private(), pytest.raises(AssertionError, match="attention ablation effect"):
        assert_attention_ablation_effect(tiny, task, ["0.1"], over_random_by=50.0,
                                         n_repeats=3, heatmap=False)


# -- bad input -------------------------------------------------------------------------------

def test_bad_inputs_are_named(tiny, task_for):
    task = task_for(tiny)
    ragged = cc.Task(prompts=["t1 t2 t3", "t4 t5"], answers=["t1", "t2"],
                     wrong_answers=["t3", "t4"], corrupted=["t1 t2", "t4 t5"])
    with pytest.raises(TaskError, match="corrupted prompt 0 has 3 tokens"):
        P.patch_heads(tiny, ragged)
    with pytest.raises(TaskError, match="needs corrupted prompts"):
        P.patch_heads(tiny, cc.Task(prompts=["t1 t2"], answers=["t3"], wrong_answers=["t4"]))
    with pytest.raises(CircuitCheckError, match="did you mean 'pattern'"):
        P.patch_heads(tiny, task, component="patern")
    with pytest.raises(CircuitCheckError, match="unknown component 'z'"):
        P.patch_residual(tiny, task, component="z")
    with pytest.raises(CircuitCheckError, match="unknown direction"):
        P.patch_heads(tiny, task, direction="forward")
    with pytest.raises(CircuitError, match="head 7.0 in heads is out of range"):
        P.ablate_attention(tiny, task, ["7.0"])
    with pytest.raises(CircuitError, match="out of range"):
        P.path_patch(tiny, task, ["0.9"], None, receiver_input="resid_final")
    with pytest.raises(CircuitError, match="receivers=None"):
        P.path_patch(tiny, task, ["0.1"], ["1.1"], receiver_input="resid_final")
    with pytest.raises(CircuitCheckError, match="differentiable"):
        P.attribution_patch_heads(tiny, task, metric="top1")
    with pytest.raises(CircuitCheckError, match="unknown attention ablation mode"):
        P.ablate_attention(tiny, task, ["0.1"], mode="uniform")
    with pytest.raises(TaskError, match="unknown position 'S9'"):
        P.patch_heads(tiny, task, positions=["S9"])
    if tiny.cfg.n_key_value_heads not in (None, tiny.cfg.n_heads):
        with pytest.raises(CircuitError, match="share"):  # a head set's k/v: still ambiguous
            P.patch_head_set(tiny, task, ["1.1"], component="k")
        # path patching into k / v is per query head (tests/test_path_depth.py)


def test_residual_patching_claim_equals_a_loop_at_the_named_position(tiny, task_for):
    """The YAML ``residual_patching`` claim: one layer's resid_pre at ``end``, clean into
    corrupted, against one unpadded forward per prompt; the claim holds and fails by it."""
    from circuitcheck.assertions_patching import assert_residual_patching
    from circuitcheck.measures.activation_patching import residual_patching_recovery

    task = task_for(tiny)
    enc = task.encode(tiny)
    clean, corr = _baselines(tiny, enc)
    layer, name = 1, "blocks.1.hook_resid_pre"
    num = []
    for i in range(enc.n):
        p = int(enc.lengths[i]) - 1  # "end": the last token of prompt i
        src = _cache(tiny, _ids(enc, i, "clean"))[1][name]

        def hook(x, hook, src=src, p=p):
            x = x.clone()
            x[:, p] = src[:, p]
            return x
        num.append(_ld(_run(tiny, _ids(enc, i, "corr"), [(name, hook)]), enc, i) - corr[i])
    want = np.mean(num) / np.mean(np.asarray(clean) - np.asarray(corr))
    m = residual_patching_recovery(tiny, task, layer=layer, at="end")
    assert m.value == pytest.approx(want, abs=1e-4)
    assert m.ci[0] < m.value < m.ci[1]
    assert "heatmaps" in m.details
    with _claims.private() as rec:
        assert_residual_patching(tiny, task, layer=layer, at_least=m.ci[0] - 0.05, heatmap=False)
        with pytest.raises(AssertionError, match="residual|layer 1"):
            assert_residual_patching(tiny, task, layer=layer, at_least=m.ci[1] + 0.05)
    assert len(rec) == 2
    with pytest.raises(CircuitCheckError, match="layer must be an integer in 0..1"):
        residual_patching_recovery(tiny, task, layer=7)
