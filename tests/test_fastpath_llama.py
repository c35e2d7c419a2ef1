"""The Llama layout's fast paths (RMSNorm, rotary grouped-query attention through SDPA, the
gated MLP on real tokens) compute the bridge's function: on a random 2-layer Llama with 4
query and 2 key/value heads, logits and measurements agree with ``fastpath.disabled``, hooks
on q/k/v/z and the rotated q/k still fire and edit, and a hook on the scores or pattern (or a
padding mask) sends that layer back to the bridge's own code."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import circuitcheck as cc
from circuitcheck import fastpath
from circuitcheck.measures import patching as P
from circuitcheck.models import rounding_tolerance

from .conftest import own_task


@pytest.fixture(scope="module")
def llama(model_dirs):
    return cc.load_model(model_dirs["llama"], device="cpu")


@pytest.fixture
def calls(monkeypatch):
    """How often the fused kernels ran (the bridge's own code calls neither)."""
    seen = {"sdpa": 0, "rms": 0}
    sdpa, rms = F.scaled_dot_product_attention, torch.linalg.vector_norm

    def count_sdpa(*a, **kw):
        seen["sdpa"] += 1
        return sdpa(*a, **kw)

    def count_rms(*a, **kw):
        seen["rms"] += 1
        return rms(*a, **kw)
    monkeypatch.setattr(F, "scaled_dot_product_attention", count_sdpa)
    monkeypatch.setattr(torch.linalg, "vector_norm", count_rms)
    return seen


def _ids(batch: int = 3, seq: int = 9) -> torch.Tensor:
    return torch.randint(4, 60, (batch, seq), generator=torch.Generator().manual_seed(1))


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> None:
    a, b = a.float(), b.float()
    torch.testing.assert_close(a, b, rtol=rel, atol=rel * float(b.abs().max()))


def _both(model, ids, hooks=()):
    """Logits with the fast paths and under ``disabled``."""
    with torch.inference_mode():
        fast = model.run_with_hooks(ids, fwd_hooks=list(hooks))
        with fastpath.disabled(model):
            slow = model.run_with_hooks(ids, fwd_hooks=list(hooks))
    return fast, slow


def test_every_kernel_is_installed_kept_and_used(llama, calls):
    assert llama.cc_fastpath is not None  # the load-time probe kept them
    L = llama.cfg.n_layers
    assert llama.cfg.n_key_value_heads < llama.cfg.n_heads  # grouped-query attention
    fast, slow = _both(llama, _ids())
    assert calls == {"sdpa": L, "rms": 2 * L + 1}  # every layer, only the fast pass
    _close(fast, slow)


EDITS = {  # hook -> an edit of every head (grouped k/v hooks carry the key/value heads)
    "blocks.0.attn.hook_q": lambda x, hook: x * 0.5,
    "blocks.1.attn.hook_k": lambda x, hook: torch.roll(x, 1, dims=1),
    "blocks.0.attn.hook_v": lambda x, hook: x.flip(-1),
    "blocks.1.attn.hook_z": lambda x, hook: x * torch.linspace(0, 1, x.shape[2])[:, None],
    "blocks.0.attn.hook_rot_q": lambda x, hook: x * 1.5,
    "blocks.1.attn.hook_rot_k": lambda x, hook: -x,
    "blocks.0.hook_mlp_out": lambda x, hook: x * 0.3,
    "blocks.1.ln1.hook_in": lambda x, hook: x + 0.1,
}


@pytest.mark.parametrize("name", sorted(EDITS))
def test_edits_of_the_hooks_it_keeps_match_the_bridge(llama, calls, name):
    seen = []

    def edit(x, hook):
        seen.append(tuple(x.shape))
        return EDITS[name](x, hook)
    fast, slow = _both(llama, _ids(), [(name, edit)])
    assert len(seen) == 2 and seen[0] == seen[1]  # fired once a pass, same shape both ways
    assert calls["sdpa"] == llama.cfg.n_layers  # and the fast path stayed on
    _close(fast, slow)
    assert (fast - llama(_ids())).abs().max() > 1e-3  # the edit reached the logits


@pytest.mark.parametrize("name", ["hook_pattern", "hook_attn_scores"])
def test_a_watched_pattern_sends_that_layer_to_the_bridge(llama, calls, name):
    seen = []

    def edit(x, hook):
        seen.append(hook.name)
        return x * 0.5 if name == "hook_attn_scores" else torch.roll(x, 1, dims=-1)
    fast, slow = _both(llama, _ids(), [(f"blocks.1.attn.{name}", edit)])
    assert seen == [f"blocks.1.attn.{name}"] * 2
    assert calls["sdpa"] == llama.cfg.n_layers - 1  # layer 0 still fused, layer 1 not
    _close(fast, slow)
    assert (fast - llama(_ids())).abs().max() > 1e-3


def test_a_watched_norm_intermediate_takes_the_bridge_path(llama, calls):
    fast, slow = _both(llama, _ids(), [("blocks.0.ln2.hook_scale", lambda x, hook: None)])
    assert calls["rms"] == 2 * llama.cfg.n_layers  # all but the watched norm
    _close(fast, slow)


def test_a_padding_mask_takes_the_bridge_path(llama, calls):
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding on the first row: not a plain causal mask
    with torch.inference_mode():
        fast = llama(ids, attention_mask=mask)
        with fastpath.disabled(llama):
            slow = llama(ids, attention_mask=mask)
    assert calls["sdpa"] == 0
    _close(fast[1:], slow[1:])
    _close(fast[0, 3:], slow[0, 3:])


def test_real_tokens_runs_the_gated_mlp_on_real_tokens_only(llama):
    ids = _ids(seq=9)
    lens = torch.tensor([9, 4, 6])
    ids = ids.masked_fill(torch.arange(9)[None] >= lens[:, None], 0)
    outs = {}

    def keep(x, hook):
        outs.setdefault(hook.name, []).append(x.clone())
    hooks = [(f"blocks.{l}.hook_mlp_out", keep) for l in range(llama.cfg.n_layers)]
    with torch.inference_mode():
        with fastpath.disabled(llama):
            slow = llama.run_with_hooks(ids, fwd_hooks=hooks)
        with fastpath.real_tokens(llama, lens, 9):
            fast = llama.run_with_hooks(ids, fwd_hooks=hooks)
    pad = torch.arange(9)[None] >= lens[:, None]
    for name, (s, f) in outs.items():
        assert float(f[pad].abs().max()) == 0.0 and float(s[pad].abs().max()) > 0.0, name
        _close(f[~pad], s[~pad])
    for b, n in enumerate(lens.tolist()):
        _close(fast[b, :n], slow[b, :n])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_uses_the_kernels_within_rounding(model_dirs, calls, dtype):
    model = cc.load_model(model_dirs["llama"], device="cpu", dtype=dtype)
    assert model.cc_fastpath is not None
    calls.update(sdpa=0, rms=0)  # not the load-time probe's passes
    fast, slow = _both(model, _ids())
    assert calls["sdpa"] == model.cfg.n_layers
    assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}
    # a half-precision forward rounds every op; fused kernels round at other places
    _close(fast, slow, rel=4 * rounding_tolerance(getattr(torch, dtype)))


def test_measurements_agree_with_and_without(llama):
    task = own_task(llama, n=10)
    circuit = cc.Circuit({"c": [(0, 1), (1, 0), (1, 3)]})

    def measure():
        out = {c: P.patch_heads(llama, task, component=c, batch_size=7).values
               for c in ("z", "q", "k", "v")}
        out["path k"] = P.path_patch_heads(llama, task, [(1, 2)], receiver_input="k",
                                           positions=["end"]).values
        f = cc.faithfulness(llama, task, circuit, ablation="mean", metric="logit_diff")
        out["faith"] = np.array([f.value, *f.per_prompt])
        return out
    fast = measure()
    with fastpath.disabled(llama):
        slow = measure()
    for key in fast:
        assert np.abs(fast[key]).max() > 1e-3, key  # something was measured
        np.testing.assert_allclose(fast[key], slow[key], atol=1e-4, rtol=1e-3, err_msg=key)
