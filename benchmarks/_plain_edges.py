"""The plain way to patch edges: one forward pass per edge circuit, written with TransformerLens
hooks and nothing of circuitcheck's engine (the benchmark's baseline; a test checks it against
``run_edge_variants``).

In each pass every sender's (reference - current) output is written to a buffer as the pass
reaches it (``input`` = ``blocks.0.hook_resid_pre``, a head = ``hook_z[h] @ W_O[h]``, an MLP =
``hook_mlp_out``) and each receiver input (a head's q/k/v input, ``ln2.hook_in``,
``ln_final.hook_in``) gets the sum of its patched senders' entries, one 0/1 mask per hook. All prompts run in the one
pass, so every prompt must have the same length; the metric is read from the full logits.
"""
from __future__ import annotations

from typing import Any

import torch


def sender_names(L: int, H: int) -> list[str]:
    """Senders in EAP-IG's order: input, then per layer its heads and its MLP."""
    out = ["input"]
    for l in range(L):
        out += [f"a{l}.h{h}" for h in range(H)] + [f"m{l}"]
    return out


def sender_outputs(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Every sender's output on ``tokens`` [N, P]: [N, P, S, d] in ``sender_names`` order."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    parts: dict[int, torch.Tensor] = {}

    def grab(slot: int, layer: int | None = None):
        def hook(x: torch.Tensor, hook: Any) -> None:
            parts[slot] = x[:, :, None].clone() if layer is None else torch.einsum(
                "bphe,hed->bphd", x, model.blocks[layer].attn.W_O)
        return hook

    hooks = [("blocks.0.hook_resid_pre", grab(0))]
    for l in range(L):
        hooks += [(f"blocks.{l}.attn.hook_z", grab(1 + l * (H + 1), l)),
                  (f"blocks.{l}.hook_mlp_out", grab(1 + l * (H + 1) + H))]
    with torch.inference_mode():
        model.run_with_hooks(tokens.to(model.cfg.device), fwd_hooks=hooks)
    return torch.cat([parts[k] for k in sorted(parts)], dim=2)


def patch_masks(kept: set[str], L: int, H: int) -> dict[str, torch.Tensor]:
    """For each receiver hook, which of the senders it reads are patched (their edge is not
    in ``kept``, names like ``a0.h1->a1.h2<k>``): [n_read, H] for a layer's q, k or v input
    (a column per head), [n_read] for an MLP's input and for the logits; 1.0 = patched."""
    names = sender_names(L, H)

    def column(receiver: str, n_read: int) -> list[float]:
        return [float(f"{names[s]}->{receiver}" not in kept) for s in range(n_read)]

    out: dict[str, torch.Tensor] = {}
    for l in range(L):
        n = 1 + l * (H + 1)
        for x in "qkv":
            out[f"blocks.{l}.hook_{x}_input"] = torch.tensor(
                [column(f"a{l}.h{h}<{x}>", n) for h in range(H)]).T
        out[f"blocks.{l}.ln2.hook_in"] = torch.tensor(column(f"m{l}", n + H))
    out["ln_final.hook_in"] = torch.tensor(column("logits", len(names)))
    return out


def plain_logit_diff(model: Any, tokens: torch.Tensor, ref: torch.Tensor | None,
                     kept: set[str], answers: torch.Tensor, wrong: torch.Tensor
                     ) -> torch.Tensor:
    """One forward over all of ``tokens`` [N, P] with every edge not in ``kept`` patched to
    ``ref`` (sender outputs [N, P, S, d]; None: zero); the logit difference per prompt [N]."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    dtype, device = model.cfg.dtype, model.cfg.device
    masks = {k: v.to(device, dtype) for k, v in patch_masks(kept, L, H).items()}
    N, P = tokens.shape
    delta = torch.zeros(N, P, 1 + L * (H + 1), model.cfg.d_model, dtype=dtype, device=device)

    def save(slot: int, layer: int | None = None):
        def hook(x: torch.Tensor, hook: Any) -> None:
            cur = x[:, :, None] if layer is None else torch.einsum(
                "bphe,hed->bphd", x, model.blocks[layer].attn.W_O)
            width = cur.shape[2]
            base = 0 if ref is None else ref[:, :, slot:slot + width]
            delta[:, :, slot:slot + width] = base - cur
        return hook

    def heads_in(name: str):
        def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
            # k/v on grouped-query attention: one input per key/value head, which follows
            # its group's first query head (circuits keep a group's k/v edges together)
            m = masks[name][:, ::H // x.shape[2]]
            return x + torch.einsum("bpsd,sh->bphd", delta[:, :, :m.shape[0]], m)
        return hook

    def resid_in(name: str):
        def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
            m = masks[name]
            return x + torch.einsum("bpsd,s->bpd", delta[:, :, :m.shape[0]], m)
        return hook

    hooks = [("blocks.0.hook_resid_pre", save(0))]
    for l in range(L):
        hooks += [(f"blocks.{l}.hook_{x}_input", heads_in(f"blocks.{l}.hook_{x}_input"))
                  for x in "qkv"]
        hooks += [(f"blocks.{l}.attn.hook_z", save(1 + l * (H + 1), l)),
                  (f"blocks.{l}.ln2.hook_in", resid_in(f"blocks.{l}.ln2.hook_in")),
                  (f"blocks.{l}.hook_mlp_out", save(1 + l * (H + 1) + H))]
    hooks.append(("ln_final.hook_in", resid_in("ln_final.hook_in")))
    old = model.cfg.use_split_qkv_input
    model.cfg.use_split_qkv_input = True
    try:
        with torch.inference_mode():
            logits = model.run_with_hooks(tokens.to(device), fwd_hooks=hooks)
    finally:
        model.cfg.use_split_qkv_input = old
    last = logits[:, -1].float().cpu()
    rows = torch.arange(N)
    return last[rows, answers] - last[rows, wrong]


def plain_curve(model: Any, tokens: torch.Tensor, corrupted: torch.Tensor,
                circuits: list[set[str]], answers: torch.Tensor, wrong: torch.Tensor
                ) -> torch.Tensor:
    """Resample patching: one reference pass on ``corrupted``, then one pass per circuit
    keeping only its edges; the logit differences [len(circuits), N]."""
    ref = sender_outputs(model, corrupted)
    return torch.stack([plain_logit_diff(model, tokens, ref, kept, answers, wrong)
                        for kept in circuits])
