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

The Llama layout (SmolLM2) gets the same treatment: RMSNorm from one norm reduction (the
bridge computes its hook values, discards them and calls HF's five-op norm), rotary
grouped-query attention through ``F.scaled_dot_product_attention`` (q/k/v/z and the rotated
q/k still pass through their hooks), and the gated MLP with its activation in place.

Padding is work too: batches of prompts of different lengths are padded to the longest, and
an MLP (two thirds of a GPT-2 layer's FLOPs, three quarters of a Llama's) is position-wise,
so inside ``real_tokens(model, lengths, width)`` GPT-2's, GPT-NeoX's and the bridge's gated
MLPs run on the real tokens only.
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
    """Give ``bridge``'s layer norms and RMSNorms, attention (fused-qkv or rotary), MLPs and
    GPT-2 GELUs their fast paths; returns a function that takes them all back out."""
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
        elif _plain_rms_norm(module):
            undo.append(_override(module, "forward", _rms_norm_forward))
        elif _plain_rotary_attention(module):
            undo.append(_override(module, "forward", _rotary_attention_forward))
        elif _plain_gated_mlp(module):
            inner = tuple(m for m in module.modules() if isinstance(m, HookPoint)
                          and m is not module.hook_in and m is not module.hook_out)
            undo.append(_override(module, "forward", functools.partial(
                _gated_mlp_forward, padding, inner)))
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
    processed weights: ``_plain_gated_mlp``."""
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


# --- Llama layout: RMSNorm, rotary grouped-query attention, gated MLP -----------------------

def _plain_rms_norm(module: Any) -> bool:
    """A bridge RMSNorm whose unwatched output is Hugging Face's ``LlamaRMSNorm`` itself
    (the bridge's native-autograd path: it computes ``hook_scale``/``hook_normalized`` under
    ``no_grad``, then throws them away and calls the HF module)."""
    from transformer_lens.model_bridge.generalized_components.normalization import (
        NormalizationBridge,
    )

    try:
        from transformers.models.llama.modeling_llama import LlamaRMSNorm
    except ImportError:  # pragma: no cover - other transformers versions
        return False
    return (isinstance(module, NormalizationBridge)
            and type(module).forward is NormalizationBridge.forward
            and type(module.original_component) is LlamaRMSNorm
            and module.uses_rms_norm and not module.uses_weight_offset)


def _rms_norm_forward(self: Any, original: Callable[..., Any], hidden_states: torch.Tensor,
                      **kwargs: Any) -> torch.Tensor:
    """``hook_in`` → ``LlamaRMSNorm``'s function → ``hook_out``, with HF's precision order
    (normalised in float32, cast back to the input's dtype, then scaled by the weight). In
    float32 the mean square comes from one ``vector_norm`` reduction, on a CPU faster than
    HF's pow/mean and than ``F.rms_norm`` (SmolLM2's [480, 576] rows); in half precision it
    is HF's pow/mean, so the cast rounds exactly where HF's does."""
    native = self.use_native_layernorm_autograd or getattr(
        self.config, "layer_norm_folding", False)
    if kwargs or not native or watched(self.hook_scale, self.hook_normalized):
        return original(self, hidden_states, **kwargs)
    comp = self.original_component
    x = self.hook_in(hidden_states)
    dt, w = x.dtype, comp.weight
    xf = x.to(torch.float32)
    if dt == torch.float32:
        norm = torch.linalg.vector_norm(xf, dim=-1, keepdim=True)  # [..., 1]: cheap to refine
        mean_square = norm.square() / x.shape[-1]
    else:  # HF's own ops, bit for bit: the cast to half would round differences up to an ulp
        mean_square = xf.pow(2).mean(-1, keepdim=True)
    y = (xf * torch.rsqrt(mean_square + comp.variance_epsilon)).to(dt)
    if w.dtype == y.dtype and not (torch.is_grad_enabled() and (y.requires_grad
                                                                or w.requires_grad)):
        return self.hook_out(y.mul_(w))  # y is a fresh tensor: scaled in place
    return self.hook_out(w * y)


#: config flags under which the bridge's rotary attention does something other than
#: q/k/v → RoPE → causal softmax attention → o (split inputs, gates, per-head results, ...)
_ROTARY_SPECIAL = ("use_split_qkv_input", "use_attn_in", "gated_q_proj", "use_attn_result",
                   "rotary_interleaved_cos_sin", "rotary_adjacent_pairs", "qk_norm_after_rope")


def _plain_rotary_attention(module: Any) -> bool:
    """The bridge's own rotary attention (Llama/Mistral/Qwen-style: separate q/k/v/o, full
    RoPE, optional grouped-query heads) with none of the extras it also handles: QK norms,
    gates, a key multiplier, clipping, logit soft-capping, attention sinks, llama-4 scaling."""
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention \
        import PositionEmbeddingsAttentionBridge

    if type(module) is not PositionEmbeddingsAttentionBridge:
        return False
    hf = module.original_component
    rope = getattr(getattr(hf, "config", None), "rope_parameters", None)
    return (all(k in module.submodules for k in "qkvo")
            and not any(k in module.submodules for k in ("q_norm", "k_norm", "gate"))
            and isinstance(getattr(hf, "head_dim", None), int)
            and all(getattr(hf, a, None) is None for a in (
                "key_multiplier", "attn_logit_softcapping", "sinks"))
            and getattr(getattr(hf, "config", None), "clip_qkv", None) is None
            and not (isinstance(rope, dict) and rope.get("llama_4_scaling_beta") is not None))


def _rotary_attention_forward(self: Any, original: Callable[..., Any], *args: Any,
                              **kwargs: Any) -> tuple:
    """q/k/v (their hooks fire and edit) → RoPE → one ``scaled_dot_product_attention`` over
    the grouped key/value heads → o, when no hook reads scores or pattern, the mask is plain
    causal and nothing else (a KV cache, training, the config's extras) differs."""
    hs = kwargs.get("hidden_states", args[0] if args else None)
    pe, mask = kwargs.get("position_embeddings"), kwargs.get("attention_mask")
    hf, cfg = self.original_component, self.config
    plain = (
        isinstance(hs, torch.Tensor) and hs.ndim == 3 and len(args) <= 1
        and ("hidden_states" not in kwargs or not args)
        and hs.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and not watched(self.hook_attn_scores, self.hook_pattern)
        and not self.training and self.is_causal and not self.is_cross_attention
        and all(kwargs.get(k) is None for k in ("past_key_values", "layer_past", "cache"))
        and not kwargs.get("output_attentions")
        and not any(getattr(cfg, f, False) for f in _ROTARY_SPECIAL)
        and isinstance(pe, tuple) and len(pe) == 2
        and pe[0].shape[-1] == hf.head_dim and pe[0].dtype == hs.dtype
        and _is_causal_mask(mask, hs.shape[1])
    )
    if not plain:
        return original(self, *args, **kwargs)
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    x = self.hook_in(hs)
    batch, seq, head_dim = x.shape[0], x.shape[1], hf.head_dim
    q = self.q(x).view(batch, seq, -1, head_dim).transpose(1, 2)
    k = self.k(x).view(batch, seq, -1, head_dim).transpose(1, 2)
    v = self.v(x).view(batch, seq, -1, head_dim).transpose(1, 2)
    cos, sin = self._apply_position_embedding_hooks(pe)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    if hasattr(self, "hook_rot_q"):
        q, k = self.hook_rot_q(q), self.hook_rot_k(k)
    grouped = q.shape[1] != k.shape[1]
    out = F.scaled_dot_product_attention(
        q, k, v, is_causal=True, scale=getattr(hf, "scaling", head_dim ** -0.5),
        enable_gqa=grouped)
    out = out.transpose(1, 2).reshape(batch, seq, -1)
    w_o = getattr(getattr(self.o, "original_component", None), "weight", None)
    if isinstance(w_o, torch.Tensor) and w_o.dtype.is_floating_point and w_o.dtype != out.dtype:
        out = out.to(w_o.dtype)  # as the bridge: the o projection's dtype rules
    return (self.hook_out(self.o(out)), None)


def _plain_gated_mlp(module: Any) -> bool:
    """The bridge's gated MLP (``act(gate(x)) * up(x)`` → down, Llama's SwiGLU), run from its
    processed weights (compatibility mode) or through the HF module (unprocessed)."""
    from transformer_lens.model_bridge.generalized_components.gated_mlp import GatedMLPBridge

    return (isinstance(module, GatedMLPBridge)
            and type(module).forward is GatedMLPBridge.forward
            and all(getattr(module, n, None) is not None for n in ("gate", "in", "out")))


def _gated_mlp_forward(padding: _Padding, inner: tuple[Any, ...], self: Any,
                       original: Callable[..., Any], *args: Any, **kwargs: Any
                       ) -> torch.Tensor:
    """The bridge's gated MLP with the activation applied in place and, inside
    ``real_tokens``, on the real tokens of the padded batch only (the padding's outputs are
    zero). ``hook_in``/``hook_out`` (``hook_mlp_out``) fire on the whole batch; any hook on
    the projections' inputs or outputs (``hook_pre``, ``hook_post``, ...) takes the bridge's
    code, since those would see the gathered rows."""
    from transformer_lens.model_bridge.generalized_components.gated_mlp import (
        resolve_activation_fn,
    )

    if (len(args) != 1 or kwargs or not isinstance(args[0], torch.Tensor)
            or args[0].ndim != 3 or watched(*inner)):
        return original(self, *args, **kwargs)
    x = self.hook_in(args[0])
    B, P, d = x.shape
    rows = padding.rows
    at = None
    if rows is not None and (B, P) == rows[:2] and rows[2].numel() < B * P:
        at = rows[2].to(x.device)  # a sharded model's layers sit on their own devices
        h = x.reshape(B * P, d).index_select(0, at)[None]  # [1, real tokens, d]
    else:
        h = x
    if getattr(self, "_use_processed_weights", False):  # compatibility mode's own path
        (w_g, b_g), (w_i, b_i), (w_o, b_o) = (self._processed_projection(n)
                                              for n in ("gate", "in", "out"))
        gate, up = F.linear(h, w_g, b_g), F.linear(h, w_i, b_i)
        act = resolve_activation_fn(self.config)
        if act is F.silu and not (torch.is_grad_enabled() and gate.requires_grad):
            hidden = F.silu(gate, inplace=True).mul_(up)  # no new [tokens, d_mlp] buffers
        else:
            hidden = act(gate) * up
        y = F.linear(hidden, w_o, b_o)
    else:  # unprocessed weights: the HF module, as the bridge calls it
        y = self.original_component(h)
    if at is not None:
        y = y.new_zeros(B * P, y.shape[-1]).index_copy_(0, at, y[0]).view(B, P, -1)
    return self.hook_out(y)
