"""Path patching at depth: unreachable senders skipped (== the full computation), and k / v
receivers per query head on grouped-query attention (== an ungrouped copy of the model, and a
plain two-step loop on it)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitcheck as cc
from circuitcheck.measures import patching as P
from circuitcheck.measures.path_patching import _path_rows
from circuitcheck.measures._patching_base import _setup

from .conftest import own_task
from .test_patching import _frozen_hooks, _ids, _ld, _run


def _full(model, task, receivers, receiver_input, positions=None):
    """The old computation: every head a sender, none skipped."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    s = _setup(model, task, "logit_diff", what="path patching")
    masks = torch.eye(L * H, dtype=torch.bool).view(L * H, L, H)
    recv = tuple(cc.circuit.parse_head(h) for h in receivers)
    patched, clean, corr = _path_rows(model, s, masks, recv, receiver_input, positions, False,
                                      None)
    c, k = s.metric(clean), s.metric(corr)
    return (patched.reshape(L, H, -1) - c.mean()).mean(-1) / (c.mean() - k.mean())


def test_skipped_senders_equal_the_full_computation():
    model = cc.load_model("zoo:ioi-toy")  # 3 layers: receivers at 1 skip senders in 1 and 2
    task = cc.tasks.ioi(model, n=6, seed=0)
    for recv, inp in [(["1.0", "1.3"], "q"), (["2.1"], "v")]:
        grid = P.path_patch_heads(model, task, recv, receiver_input=inp, positions=["end"])
        want = _full(model, task, recv, inp, ("end",))
        np.testing.assert_allclose(grid.values, want, atol=2e-5)
        top = max(cc.circuit.parse_head(h)[0] for h in recv)
        assert (grid.values[top:] == 0).all() and np.abs(want[:top]).max() > 1e-3


@pytest.fixture(scope="module")
def gqa_pair(model_dirs, tmp_path_factory):
    """The tiny GQA llama (4 query heads, 2 key/value heads) and the same model ungrouped:
    k_proj / v_proj repeated per query head, num_key_value_heads = 4 (the same function)."""
    from transformers import LlamaForCausalLM

    src = model_dirs["llama"]
    hf = LlamaForCausalLM.from_pretrained(src)
    cfg = hf.config
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    D = cfg.hidden_size // H
    cfg2 = type(cfg).from_dict({**cfg.to_dict(), "num_key_value_heads": H})
    un = LlamaForCausalLM(cfg2)
    sd = hf.state_dict()
    for name, w in list(sd.items()):
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            sd[name] = w.view(KV, D, -1).repeat_interleave(H // KV, 0).reshape(H * D, -1)
    un.load_state_dict(sd)
    out = tmp_path_factory.mktemp("ungrouped")
    un.save_pretrained(out)
    from transformers import AutoTokenizer
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    gqa = cc.load_model(src, device="cpu")
    flat = cc.load_model(out, device="cpu")
    assert gqa.cfg.n_key_value_heads == 2 and flat.cfg.n_key_value_heads in (None, 4)
    return gqa, flat


@pytest.mark.parametrize("inp", ["k", "v"])
def test_gqa_kv_receivers_per_query_head_equal_ungrouped_model(gqa_pair, inp):
    gqa, flat = gqa_pair
    task = own_task(gqa, n=3)
    t2 = own_task(flat, n=3)
    e1, e2 = task.encode(gqa), t2.encode(flat)
    assert torch.equal(e1.tokens, e2.tokens)
    senders = [(0, 0), (0, 3)]
    for receivers, pos in [([(1, 1)], None), ([(1, 0), (1, 3)], ["end"])]:
        a = P.path_patch(gqa, task, senders, receivers, receiver_input=inp, positions=pos)
        b = P.path_patch(flat, t2, senders, receivers, receiver_input=inp, positions=pos)
        np.testing.assert_allclose(a.per_prompt, b.per_prompt, atol=1e-4, rtol=1e-4)
        assert abs(a.value) > 1e-3  # the path carries something, so equality means something
    # the plain two-step loop on the ungrouped model (one query head's keys/values replaced)
    enc = e2
    want = []
    name = f"blocks.1.attn.hook_{inp}"
    for i in range(enc.n):
        got = {}

        def grab(x, hook):
            got["x"] = x.clone()
        _run(flat, _ids(enc, i, "clean"), _frozen_hooks(flat, enc, i, senders) + [(name, grab)])

        def put(x, hook, new=got["x"]):
            x = x.clone()
            x[:, :, 1] = new[:, :, 1]
            return x
        want.append(_ld(_run(flat, _ids(enc, i, "clean"), [(name, put)]), enc, i))
    a = P.path_patch(gqa, task, senders, [(1, 1)], receiver_input=inp)
    np.testing.assert_allclose(a.per_prompt, want, atol=1e-4, rtol=1e-4)


def test_gqa_whole_group_equals_patching_the_shared_head(gqa_pair):
    """Every query head of a group as receivers = the shared key/value head patched."""
    gqa, _ = gqa_pair
    task = own_task(gqa, n=3)
    enc = task.encode(gqa)
    senders = [(0, 1)]
    a = P.path_patch(gqa, task, senders, [(1, 2), (1, 3)], receiver_input="v")
    want = []
    for i in range(enc.n):
        got = {}

        def grab(x, hook):
            got["x"] = x.clone()
        _run(gqa, _ids(enc, i, "clean"), _frozen_hooks(gqa, enc, i, senders)
             + [("blocks.1.attn.hook_v", grab)])

        def put(x, hook, new=got["x"]):
            x = x.clone()
            x[:, :, 1] = new[:, :, 1]  # key/value head 1 serves query heads 2 and 3
            return x
        want.append(_ld(_run(gqa, _ids(enc, i, "clean"), [("blocks.1.attn.hook_v", put)]), enc, i))
    np.testing.assert_allclose(a.per_prompt, want, atol=1e-4, rtol=1e-4)
