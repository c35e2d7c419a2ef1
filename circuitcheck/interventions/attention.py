"""Attention-score ablation of chosen heads, many head sets per forward pass.

Two modes, applied to a head's attention *scores* (``hook_attn_scores``, after the causal
mask) so the head still writes through its own value/output weights:

- ``zero``: every score is set to -inf, so the head attends nowhere. A softmax over a row of
  only -inf is undefined (NaN); we define the result as an all-zero pattern (the hook on
  ``hook_pattern`` writes zeros there), so the head's output ``z`` is exactly zero and the run
  equals zero-ablating the head's ``hook_z``.
- ``mean`` (seed 004's notebook): every score of a query row is replaced by the mean of that
  row's scores over the keys it can see, so the head attends uniformly to every visible key.
  This removes what the head attends to at any lag; it is the notebook's definition.
- ``prompt-mean``: every prompt's scores are replaced by the mean score at that (query, key)
  position over the task's prompts (only prompts long enough to have the query position
  count). The head keeps its average positional profile and loses its content-dependent
  routing; on fixed-lag tasks (repeated sequences of one length) the mean profile keeps the
  lag, so this ablates little there - use ``mean`` for induction across lags.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import CircuitCheckError, did_you_mean
from ..tasks import EncodedTask
from .ablation import Readout
from .patching import Chunk, HookList, cache_activations, run_rows

if TYPE_CHECKING:  # pragma: no cover
    import torch

MODES = ("zero", "mean", "prompt-mean")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise CircuitCheckError(
            f"unknown attention ablation mode {mode!r}{did_you_mean(str(mode), MODES)}; use "
            "'zero' (the head attends nowhere), 'mean' (each query row's scores replaced by "
            "their mean: uniform over the visible keys) or 'prompt-mean' (each score replaced "
            "by its mean over the task's prompts)")
    return mode


def mean_scores(acts: dict[str, "torch.Tensor"], enc: EncodedTask, layers: list[int]
                ) -> dict[int, "torch.Tensor"]:
    """Per layer, the mean attention score [H, P, P] over prompts long enough for each query,
    from the cached ``hook_attn_scores`` in ``acts``."""
    import torch

    P = enc.tokens.shape[1]
    valid = (torch.arange(P)[None, :] < enc.lengths[:, None])  # [N, P] queries that exist
    out = {}
    for layer in layers:
        s = acts[f"blocks.{layer}.attn.hook_attn_scores"].float()  # [N, H, P, P]
        w = valid.to(s.device, s.dtype)[:, None, :, None]
        finite = torch.isfinite(s)
        total = torch.where(finite, s, torch.zeros((), device=s.device)).mul(w).sum(0)
        count = (finite.to(s.dtype) * w).sum(0)
        mean = total / count.clamp(min=1)
        out[layer] = torch.where(count > 0, mean, torch.full_like(mean, float("-inf")))
    return out


def ablation_hooks(chunk: Chunk, head_mask: "torch.Tensor", mode: str,
                   mean_scores: dict[int, "torch.Tensor"] | None) -> HookList:
    """Hooks for the chunk's rows: ``head_mask[b, l, h]`` says which heads each row ablates."""
    import torch

    hooks: HookList = []
    P = chunk.P
    for layer in range(chunk.start, head_mask.shape[1]):
        m = head_mask[:, layer]
        if not bool(m.any()):
            continue
        mask = m.to(chunk.device)[:, :, None, None]  # [B, H, 1, 1]

        if mode == "zero":
            def scores(x: torch.Tensor, hook: Any, mask: torch.Tensor = mask) -> torch.Tensor:
                return x.masked_fill(mask.to(x.device), float("-inf"))

            def pattern(x: torch.Tensor, hook: Any, mask: torch.Tensor = mask) -> torch.Tensor:
                return x.masked_fill(mask.to(x.device), 0.0)  # defined as zero where the softmax had no mass

            hooks += [(f"blocks.{layer}.attn.hook_attn_scores", scores),
                      (f"blocks.{layer}.attn.hook_pattern", pattern)]
        elif mode == "mean":
            def scores(x: torch.Tensor, hook: Any, mask: torch.Tensor = mask) -> torch.Tensor:
                seen = torch.isfinite(x)
                row = torch.where(seen, x, torch.zeros((), dtype=x.dtype, device=x.device))
                row = row.sum(-1, keepdim=True) / seen.sum(-1, keepdim=True).clamp(min=1)
                flat = torch.where(seen, row.expand_as(x), x)  # masked keys stay -inf
                return torch.where(mask.to(x.device), flat, x)

            hooks.append((f"blocks.{layer}.attn.hook_attn_scores", scores))
        else:
            mean = mean_scores[layer][:, :P, :P].to(chunk.device)

            def scores(x: torch.Tensor, hook: Any, mask: torch.Tensor = mask,
                       mean: torch.Tensor = mean) -> torch.Tensor:
                return torch.where(mask.to(x.device), mean[None].to(x.device, x.dtype), x)

            hooks.append((f"blocks.{layer}.attn.hook_attn_scores", scores))
    return hooks


def run_attention_ablation(model: Any, enc: EncodedTask, masks: "torch.Tensor", mode: str, *,
                           batch_size: int | None = None) -> Readout:
    """Every head set ``masks[v]`` ([V, L, H] bool) ablated on every prompt: a [V, N] readout.

    Each run starts at its first ablated layer from the clean residual stream (cached once).
    """
    import torch

    check_mode(mode)
    V, L, H = masks.shape
    N = enc.n
    if masks.shape[1:] != (model.cfg.n_layers, model.cfg.n_heads):
        raise CircuitCheckError(f"head masks must be [V, {model.cfg.n_layers}, "
                                f"{model.cfg.n_heads}], got {list(masks.shape)}")
    layers = sorted({int(l) for l in masks.any(2).any(0).nonzero().flatten().tolist()})
    first = torch.where(masks.any(2), torch.arange(L), L).min(1).values.clamp(max=L - 1)  # [V]
    starts = sorted({int(x) for x in first.tolist() if x > 0})
    # one clean pass caches the start residuals (and, for mean scores, the attention scores)
    score_names = ([f"blocks.{l}.attn.hook_attn_scores" for l in layers]
                   if mode == "prompt-mean" else [])
    resid_names = [f"blocks.{l}.hook_resid_pre" for l in starts]
    acts = cache_activations(model, enc.tokens, score_names + resid_names,
                             batch_size=batch_size) if score_names or resid_names else {}
    mean = mean_scores(acts, enc, layers) if score_names else None
    resid = {n: acts[n] for n in resid_names}
    variant = torch.arange(V).repeat_interleave(N)
    prompt_of = torch.arange(N).repeat(V)

    def hooks(chunk: Chunk) -> HookList:
        return ablation_hooks(chunk, masks[variant[chunk.rows]], mode, mean)

    def start_resid(chunk: Chunk) -> "torch.Tensor":
        r = resid[f"blocks.{chunk.start}.hook_resid_pre"]
        return r[chunk.prompts.to(r.device), :chunk.P]

    out = run_rows(model, enc, prompt_of, tokens=enc.tokens, lengths=enc.lengths, hooks=hooks,
                   start_layer=first[variant], start_resid=start_resid, batch_size=batch_size,
                   what="attention ablation")
    return _reshape(out, V, N)


def _reshape(r: Readout, V: int, N: int) -> Readout:
    def view(t: Any) -> Any:
        return None if t is None else t.view(V, N)

    return Readout(view(r.logit), view(r.wrong_logit), view(r.logprob), view(r.correct),
                   view(r.good_prob), view(r.bad_prob))

