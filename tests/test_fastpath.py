"""The fused kernels used while nothing watches an intermediate compute the bridge's function:
same logits, same hooks firing, and the bridge's own code whenever a hook or mask needs it."""
from __future__ import annotations

import pytest
import torch

from circuitcheck import fastpath


def _ids(model, batch: int = 3, seq: int = 9) -> torch.Tensor:
    return torch.randint(4, 60, (batch, seq), generator=torch.Generator().manual_seed(0))


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_installed_where_the_bridge_computes_by_hand(tiny, arch):
    installed = {type(m).__name__ for m in tiny.modules()
                 if "forward" in m.__dict__ or "_reconstruct_attention" in m.__dict__}
    if arch == "gpt2":  # layer norms, the fused-qkv attention, the MLP (on real tokens)
        assert installed == {"NormalizationBridge", "JointQKVAttentionBridge", "GPT2MLP"}
    else:  # RMSNorm, rotary grouped-query attention, the gated MLP (tests/test_fastpath_llama)
        assert installed == {"RMSNormalizationBridge", "PositionEmbeddingsAttentionBridge",
                             "GatedMLPBridge"}


def test_same_logits_with_and_without(tiny):
    ids = _ids(tiny)
    hooks = [("blocks.1.attn.hook_z", lambda z, hook: z * 0.5)]
    with torch.inference_mode():
        fast = tiny.run_with_hooks(ids, fwd_hooks=hooks)
        with fastpath.disabled(tiny):
            slow = tiny.run_with_hooks(ids, fwd_hooks=hooks)
    _close(fast, slow)
    assert not torch.equal(fast, tiny(ids))  # the hook did act


@pytest.mark.parametrize("name", ["blocks.0.attn.hook_pattern", "blocks.0.attn.hook_attn_scores",
                                  "blocks.1.ln1.hook_scale", "blocks.1.ln2.hook_normalized"])
def test_a_hook_on_a_skipped_intermediate_fires_and_edits(tiny, name):
    ids = _ids(tiny)
    seen = []

    def edit(x, hook):
        seen.append(hook.name)
        return x * 0.7 if "scores" in name or "scale" in name or "normalized" in name else \
            torch.roll(x, 1, dims=-1)

    with torch.inference_mode():
        fast = tiny.run_with_hooks(ids, fwd_hooks=[(name, edit)])
        with fastpath.disabled(tiny):
            slow = tiny.run_with_hooks(ids, fwd_hooks=[(name, edit)])
        plain = tiny(ids)
    assert seen == [name, name]
    _close(fast, slow)
    assert (fast - plain).abs().max() > 1e-3  # the edit reached the logits


def test_cache_holds_the_skipped_intermediates(tiny, arch):
    ids = _ids(tiny)
    with torch.inference_mode():
        _, fast = tiny.run_with_cache(ids)
        with fastpath.disabled(tiny):
            _, slow = tiny.run_with_cache(ids)
    assert set(fast.keys()) == set(slow.keys())
    for name in ("blocks.1.attn.hook_pattern", "blocks.1.ln2.hook_scale", "blocks.0.mlp.hook_pre",
                 "blocks.0.mlp.hook_post"):
        _close(fast[name], slow[name])


def test_an_observed_pre_activation_is_not_overwritten(tiny):
    ids = _ids(tiny)
    kept = []
    with torch.inference_mode():
        tiny.run_with_hooks(ids, fwd_hooks=[("blocks.0.mlp.hook_pre",
                                             lambda x, hook: kept.append(x) or None)])
        with fastpath.disabled(tiny):
            _, slow = tiny.run_with_cache(ids, names_filter="blocks.0.mlp.hook_pre")
    _close(kept[0], slow["blocks.0.mlp.hook_pre"])


def test_a_padding_mask_takes_the_bridge_path(tiny):
    ids = _ids(tiny)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding on the first row
    with torch.inference_mode():
        fast = tiny(ids, attention_mask=mask)
        with fastpath.disabled(tiny):
            slow = tiny(ids, attention_mask=mask)
    _close(fast[1:], slow[1:])
    _close(fast[0, 3:], slow[0, 3:])


def test_gradients_flow_through_the_fast_path(tiny):
    ids = _ids(tiny, batch=2)
    grads = []
    for ctx in (fastpath.disabled(tiny), torch.enable_grad()):
        with ctx:
            acts = {}

            def keep(x, hook):
                x.retain_grad()
                acts["z"] = x
                return x
            logits = tiny.run_with_hooks(ids, fwd_hooks=[("blocks.0.attn.hook_z", keep)])
            logits[:, -1, 5].sum().backward()
            grads.append(acts["z"].grad.clone())
            tiny.zero_grad(set_to_none=True)
    _close(grads[1], grads[0])


def test_causal_mask_recognised():
    seq = 4
    tril = torch.ones(seq, seq, dtype=torch.bool).tril()
    hf = torch.zeros(2, 1, seq, seq).masked_fill(~tril, torch.finfo(torch.float32).min)
    assert fastpath._is_causal_mask(None, seq)
    assert fastpath._is_causal_mask(hf, seq)
    assert fastpath._is_causal_mask(tril[None, None].expand(2, 1, seq, seq), seq)
    padded = hf.clone()
    padded[0, :, :, 0] = torch.finfo(torch.float32).min
    assert not fastpath._is_causal_mask(padded, seq)
    biased = hf.clone()
    biased[1, 0, 3, 0] = -2.0  # an additive bias (ALiBi-like) is not a plain causal mask
    assert not fastpath._is_causal_mask(biased, seq)
    assert not fastpath._is_causal_mask(hf, seq + 1)


def _padded(model) -> tuple[torch.Tensor, torch.Tensor]:
    ids = _ids(model, batch=3, seq=9)
    lens = torch.tensor([9, 4, 6])
    return ids.masked_fill(torch.arange(9)[None] >= lens[:, None], 0), lens


def _mlp_out(model, ids, hooks=()):
    seen = {}
    with torch.inference_mode():
        logits = model.run_with_hooks(ids, fwd_hooks=[
            *hooks, ("blocks.0.hook_mlp_out", lambda x, hook: seen.setdefault("out", x.clone()))])
    return logits, seen["out"]


def test_real_tokens_skips_the_padding_and_changes_no_real_position(tiny):
    ids, lens = _padded(tiny)
    plain, plain_out = _mlp_out(tiny, ids)
    with fastpath.real_tokens(tiny, lens, 9):
        fast, fast_out = _mlp_out(tiny, ids)
    pad = torch.arange(9)[None] >= lens[:, None]
    assert float(fast_out[pad].abs().max()) == 0.0  # the padding's MLP was not computed
    assert float(plain_out[pad].abs().max()) > 0.0  # (it is without real_tokens)
    for b, n in enumerate(lens.tolist()):
        _close(fast[b, :n], plain[b, :n])
        _close(fast_out[b, :n], plain_out[b, :n])


def test_real_tokens_leaves_other_shapes_and_watched_mlps_alone(tiny):
    ids, lens = _padded(tiny)
    plain, plain_out = _mlp_out(tiny, ids)
    with fastpath.real_tokens(tiny, lens, 9):
        _, other = _mlp_out(tiny, ids[:2])  # not the announced [3, 9] batch
        edit = [("blocks.0.mlp.hook_pre", lambda x, hook: x * 1.5)]
        _, watched = _mlp_out(tiny, ids, edit)  # an inner hook sees the whole [3, 9, d_mlp]
    _close(other, plain_out[:2])
    _, watched_plain = _mlp_out(tiny, ids, edit)
    _close(watched, watched_plain)
    with fastpath.real_tokens(tiny, torch.tensor([9, 9, 9]), 9):  # no padding: no change
        _, full = _mlp_out(tiny, ids)
    _close(full, plain_out)
