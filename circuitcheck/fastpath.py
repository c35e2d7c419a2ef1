"""Faster kernels for the parts of a loaded model that nothing is watching.

TransformerLens's bridge computes every intermediate a hook *could* read: a layer norm builds
``hook_scale`` and ``hook_normalized`` from five elementwise passes even when it then calls
the fused kernel, and attention builds, masks and soft-maxes the full score tensor for
``hook_attn_scores``/``hook_pattern``: on a CPU, a batched GPT-2-shaped forward takes ~15%
less time with the paths below than under ``disabled`` (3.7 vs 4.4 ms a row). Here each
such module gets the same function through one fused kernel (``F.layer_norm``,
``F.scaled_dot_product_attention``, torch's tanh GELU), used only while no hook is attached
to an intermediate it skips and nothing else differs (no KV cache, no dropout, a plain
causal mask); otherwise the bridge's own code runs. ``load_model`` installs these and checks
the model's predictions did not move; ``disabled(model)`` runs without them.

Padding is work too: batches of prompts of different lengths are padded to the longest, and
an MLP (two thirds of a GPT-2 layer's FLOPs) is position-wise, so inside
``real_tokens(model, lengths, width)`` GPT-2's and GPT-NeoX's MLPs run on the real tokens only.
"""
from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from transformer_lens.hook_points import HookPoint


def install(bridge: Any) -> Callable[[], None]:
    """Give ``bridge``'s layer norms, attention and GPT-2 GELUs their fast paths; returns
    a function that takes them all back out."""
    undo: list[Callable[[], None]] = []
    padding = _Padding()
    for module in bridge.modules():
        if _plain_layer_norm(module):
            undo.append(_override(module, "forward", _layer_norm_forward))
        elif _plain_attention(module):
            undo.append(_override(module, "_reconstruct_attention", _attention_forward))
        elif _positionwise_mlp(module):
            mlp = module.original_component
            inner = tuple(m for m in mlp.modules() if isinstance(m, HookPoint))
            undo.append(_override(mlp, "forward", functools.partial(
                _mlp_forward, padding, inner)))
        undo += _fuse_gelu(module)

    def remove() -> None:
        for fn in undo:
            fn()
        bridge.__dict__.pop("cc_padding", None)
    bridge.cc_fastpath = remove
    bridge.__dict__["cc_padding"] = padding
    return remove


@contextlib.contextmanager
def disabled(bridge: Any) -> Iterator[None]:
    """Run ``bridge`` on the TransformerLens code paths only (for checks and comparisons)."""
    remove = getattr(bridge, "cc_fastpath", None)
    if remove is None:
        yield
        return
    remove()
    try:
        yield
    finally:
        install(bridge)


@contextlib.contextmanager
def real_tokens(model: Any, lengths: torch.Tensor, width: int) -> Iterator[None]:
    """Within: forward passes over ``len(lengths)`` rows of ``width`` tokens, row ``b``
    right-padded after ``lengths[b]`` tokens, compute the MLPs at real tokens only (the
    padding's MLP outputs are zero). Causal attention keeps padding out of real positions,
    so nothing a caller reads changes; passes of any other shape are untouched."""
    padding = getattr(model, "cc_padding", None)
    if padding is None or lengths.numel() == 0 or int(lengths.min()) >= width:
        yield
        return
    real = torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]
    before = padding.rows
    padding.rows = (len(lengths), width,
                    real.flatten().nonzero().flatten().to(model.cfg.device))
    try:
        yield
    finally:
        padding.rows = before


def watched(*points: Any) -> bool:
    """Whether any hook (TransformerLens's or torch's own, forward or backward) could see
    what these hook points carry."""
    if torch.nn.modules.module._global_forward_hooks or \
            torch.nn.modules.module._global_backward_hooks:
        return True
    return any(p.fwd_hooks or p.bwd_hooks or p._forward_hooks or p._forward_pre_hooks
               or p._backward_hooks for p in points)


def _override(module: Any, name: str, fn: Callable[..., Any]) -> Callable[[], None]:
    original = getattr(type(module), name)
    object.__setattr__(module, name, types.MethodType(
        lambda self, *a, **kw: fn(self, original, *a, **kw), module))
    return lambda: module.__dict__.pop(name, None)


# --- layer norm ----------------------------------------------------------------------------

def _plain_layer_norm(module: Any) -> bool:
    from transformer_lens.model_bridge.generalized_components.normalization import (
        NormalizationBridge,
    )

    if not isinstance(module, NormalizationBridge):
        return False
    comp = module.original_component
    return (isinstance(comp, torch.nn.LayerNorm) and not module.uses_rms_norm
            and not getattr(module, "uses_weight_offset", False)
            and getattr(module, "weight", None) is comp.weight)


def _layer_norm_forward(self: Any, original: Callable[..., Any], hidden_states: torch.Tensor,
                        **kwargs: Any) -> torch.Tensor:
    """``hook_in`` → LayerNorm in float32 (the bridge's precision) → ``hook_out``."""
    if kwargs or watched(self.hook_scale, self.hook_normalized):
        return original(self, hidden_states, **kwargs)
    comp = self.original_component
    x = self.hook_in(hidden_states)
    dt = x.dtype
    xf = x if dt in (torch.float32, torch.float64) else x.float()
    w, b = comp.weight, comp.bias  # half-precision weights join x's float32 (no mixed dtype)
    w = w if w is None or w.dtype == xf.dtype else w.to(xf.dtype)
    b = b if b is None or b.dtype == xf.dtype else b.to(xf.dtype)
    y = F.layer_norm(xf, comp.normalized_shape, w, b, comp.eps)
    return self.hook_out(y.to(dt))


# --- attention -----------------------------------------------------------------------------

def _plain_attention(module: Any) -> bool:
    from transformer_lens.model_bridge.generalized_components.joint_qkv_attention import (
        JointQKVAttentionBridge,
    )

    # only the fused-qkv bridge (GPT-2-style) reconstructs attention by hand, without rotary
    return (getattr(type(module), "_reconstruct_attention", None)
            is JointQKVAttentionBridge._reconstruct_attention)


def _attention_forward(self: Any, original: Callable[..., Any], q: torch.Tensor,
                       k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> tuple:
    """Causal softmax attention in one kernel, when no hook reads scores or pattern."""
    cfg = self.config
    n_heads = cfg.n_heads
    plain = (
        not watched(self.hook_attn_scores, self.hook_pattern)
        and kwargs.get("past_key_values") is None and kwargs.get("layer_past") is None
        and not self.training and self.is_causal and not self.is_cross_attention
        and not getattr(self, "_reorder_and_upcast_attn", False)
        and not getattr(cfg, "use_attn_result", False)
        and (getattr(cfg, "n_key_value_heads", None) or n_heads) == n_heads
        and q.dtype in (torch.float32, torch.float16, torch.bfloat16)
    )
    if plain:
        q4, k4, v4, batch, seq, d_head = self._reshape_qkv_to_heads(q, k, v, n_heads, n_heads)
        plain = _is_causal_mask(kwargs.get("attention_mask"), seq)
    if not plain:
        return original(self, q, k, v, **kwargs)
    scale = d_head ** -0.5
    if getattr(cfg, "scale_attn_by_inverse_layer_idx", False) and self._layer_idx is not None:
        scale /= float(self._layer_idx + 1)
    out = F.scaled_dot_product_attention(q4, k4, v4, is_causal=True, scale=scale)
    out = self._reshape_attn_output(out, batch, seq, n_heads, d_head)
    return (self._apply_output_projection(out), None)


def _is_causal_mask(mask: torch.Tensor | None, seq: int) -> bool:
    """Whether an attention mask only hides future positions (what HF builds for unpadded
    input), so ``is_causal=True`` is the same mask."""
    if mask is None:
        return True
    if mask.ndim != 4 or mask.shape[-2:] != (seq, seq):
        return False
    tril = torch.ones(seq, seq, dtype=torch.bool, device=mask.device).tril()
    if mask.dtype == torch.bool:
        return bool((mask == tril).all())
    hidden = mask <= torch.finfo(mask.dtype).min / 2
    return bool((hidden == ~tril).all()) and not bool(mask.masked_fill(hidden, 0).any())


# --- MLPs on real tokens only ---------------------------------------------------------------

class _Padding:
    """Which flat positions of the current [rows, width] pass are real tokens (None: all)."""

    rows: tuple[int, int, torch.Tensor] | None = None


def _positionwise_mlp(module: Any) -> bool:
    """A bridge MLP that hands the whole input to a Hugging Face MLP acting on each position
    alone (GPT-2's, GPT-NeoX/Pythia's). Gated MLPs (Llama) compute inside the bridge from
    processed weights and keep its code."""
    import importlib

    from transformer_lens.model_bridge.generalized_components.mlp import MLPBridge

    if not isinstance(module, MLPBridge) or type(module).forward is not MLPBridge.forward:
        return False
    inner = getattr(module, "original_component", None)
    for mod, cls in (("gpt2", "GPT2MLP"), ("gpt_neox", "GPTNeoXMLP")):
        try:
            if isinstance(inner, getattr(importlib.import_module(
                    f"transformers.models.{mod}.modeling_{mod}"), cls)):
                return True
        except (ImportError, AttributeError):  # pragma: no cover - other transformers versions
            continue
    return False


def _mlp_forward(padding: _Padding, inner: tuple[Any, ...], self: Any,
                 original: Callable[..., Any], x: torch.Tensor, *args: Any,
                 **kwargs: Any) -> torch.Tensor:
    """The MLP on the real tokens of a padded batch, gathered into one [1, n, d] row."""
    rows = padding.rows
    if (rows is None or args or kwargs or x.ndim != 3 or tuple(x.shape[:2]) != rows[:2]
            or watched(*inner)):
        return original(self, x, *args, **kwargs)
    B, P, d = x.shape
    at = rows[2].to(x.device)  # a sharded model's layers sit on their own devices
    y = original(self, x.reshape(B * P, d).index_select(0, at)[None], *args, **kwargs)[0]
    return y.new_zeros(B * P, y.shape[-1]).index_copy_(0, at, y).view(B, P, -1)


# --- GELU ----------------------------------------------------------------------------------

def _fuse_gelu(module: Any) -> list[Callable[[], None]]:
    """Hugging Face's ``NewGELUActivation`` (GPT-2's tanh GELU written as five elementwise
    ops, ~28% of a CPU forward) becomes torch's fused kernel of the same formula, applied in
    place when the pre-activation is nobody else's. The module is swapped in place, so hooks
    such as ``mlp.hook_post`` are unaffected."""
    try:
        from transformers.activations import NewGELUActivation
    except ImportError:  # pragma: no cover - older transformers
        return []
    undo = []
    fc = module._modules.get("c_fc")
    pre = getattr(fc, "hook_out", None)  # mlp.hook_pre: what sees the pre-activation
    for child_name, child in list(module._modules.items()):
        if isinstance(child, NewGELUActivation):
            module._modules[child_name] = _GELU(pre).train(child.training)
            undo.append(lambda m=module, n=child_name, c=child: m._modules.__setitem__(n, c))
    return undo


class _GELU(torch.nn.GELU):
    """torch's tanh GELU, computed in place (one pass over memory, no new buffer) while no
    hook can see the pre-activation and no gradient is wanted; bit-identical either way."""

    def __init__(self, pre: Any = None) -> None:
        super().__init__(approximate="tanh")
        object.__setattr__(self, "_pre", pre)  # not a submodule: the hook point stays where it is

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.__dict__["_pre"]
        if pre is None or watched(pre) or (torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x)
        return torch.ops.aten.gelu_(x, approximate="tanh")
