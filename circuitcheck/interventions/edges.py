"""Edge patching, many edge circuits (variants) x prompts per forward pass.

An edge circuit keeps some edges of the model's graph (``circuitcheck.edge_circuit``); every
other edge is *patched*: its receiver reads the sender's reference output (zero, a mean, or the
corrupted prompt's) instead of the sender's current output, while the residual stream itself is
left alone (as in AutoCircuit). In one patched forward pass each receiver's input is

    input + sum over patched edges (sender -> receiver) of (reference - current sender output)

with the current sender outputs captured during the same pass: ``input`` = the embeddings
(``blocks.0.hook_resid_pre``), a head = ``hook_z[h] @ W_O[h]`` (the shared ``b_O`` is no
head's), an MLP = ``hook_mlp_out``. Receivers are the heads' pre-norm q/k/v inputs
(``hook_q_input`` ... with ``use_split_qkv_input``), the MLP's norm input (``ln2.hook_in``,
which feeds only the MLP) and the final norm's input (``ln_final.hook_in``). Each row carries its
own edge mask, so one einsum per receiver hook serves every variant of the batch.

Every hook is guarded (``_guard.HookGuard``): a sender or receiver hook that never fires, or
a run whose receiver hooks change no input at all, raises ``NotMeasurableError`` (the claim is
then NOT MEASURABLE with the reason), never a number measured on the unpatched model.

Grouped-query attention: the bridge computes k and v once per key/value head, so an edge into
``<k>``/``<v>`` is patched per key/value head. An edge circuit whose k/v edges differ among the
query heads of one group is refused with a ``CircuitError`` (naming the heads) before any
forward pass; query heads whose output reaches nothing (no kept out-edge) do not count, since
their inputs change nothing.
"""
from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..edge_circuit import (EdgeCircuit, n_receivers, n_senders, reads_upto, receiver_index,
                            receiver_names, sender_index, sender_names)
from ..errors import CircuitCheckError, CircuitError
from ..tasks import EncodedTask
from ._batching import length_batches, rows_per_batch
from ._guard import HookGuard
from .ablation import (Ablation, Readout, _group_means, _read_last, as_readout, no_logits,
                       read_plan, readout)
from ._reference import reference_for, reference_prompts

if TYPE_CHECKING:  # pragma: no cover
    import torch


def kv_groups(model: Any) -> int:
    """Query heads per key/value head (1 without grouped-query attention)."""
    kv = getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads
    return int(model.cfg.n_heads) // int(kv)


@dataclass(frozen=True, eq=False)
class EdgeVariants:
    """V edge masks over the graph's receivers x senders (EAP-IG indices).

    Edge (s -> r) of variant v is *selected* at position p when ``sel_all[v, r, s]``, or when
    ``sel_at[v, r, s, k]`` and p is the prompt's position ``pos_names[k]``. Selected edges are
    kept and the others patched; ``invert[v]`` flips that (patch only the selected edges)."""

    sel_all: "torch.Tensor"  # [V, R, S] bool
    sel_at: "torch.Tensor | None"  # [V, R, S, K] bool
    pos_names: tuple[str, ...]
    invert: "torch.Tensor"  # [V] bool

    def __len__(self) -> int:
        return int(self.sel_all.shape[0])

    @classmethod
    def from_circuits(cls, model: Any, circuits: Sequence[EdgeCircuit],
                      ablate: Sequence[bool] | None = None) -> "EdgeVariants":
        """One variant per circuit: keep only its edges, or (``ablate[v]``) patch only them.
        Raises ``CircuitError`` for k/v edges a grouped-query model cannot patch apart."""
        import torch

        L, H = model.cfg.n_layers, model.cfg.n_heads
        S, R = n_senders(L, H), n_receivers(L, H)
        pos_names = tuple(dict.fromkeys(p for c in circuits for p in c.positions))
        V = len(circuits)
        sel_all = torch.zeros(V, R, S, dtype=torch.bool)
        sel_at = torch.zeros(V, R, S, max(1, len(pos_names)), dtype=torch.bool)
        # indices by dict lookup and one scatter per circuit: a real model's circuits have
        # 10^4-10^5 edges, and a parse plus an indexed write per edge took seconds
        s_of = {n: i for i, n in enumerate(sender_names(L, H))}
        r_of = {k: i for i, k in enumerate(receiver_names(L, H))}
        for v, c in enumerate(circuits):
            every: list[list[int]] = [[], []]
            at: list[list[int]] = [[], [], []]
            for e in c.edges:
                s = s_of.get(e.sender)
                r = r_of.get((e.receiver, e.qkv))
                if s is None or r is None:
                    s, r = sender_index(e.sender, H), receiver_index(e.receiver, e.qkv, H, L)
                if e.position is None:
                    every[0].append(r)
                    every[1].append(s)
                else:
                    at[0].append(r)
                    at[1].append(s)
                    at[2].append(pos_names.index(e.position))
            sel_all[v, every[0], every[1]] = True
            if at[0]:
                sel_at[v, at[0], at[1], at[2]] = True
        invert = torch.tensor(list(ablate) if ablate is not None else [False] * V,
                              dtype=torch.bool)
        out = cls(sel_all, sel_at if pos_names else None, pos_names, invert)
        if kv_groups(model) > 1:
            for v, c in enumerate(circuits):
                _align_groups(model, out, v, c)
        return out


def _align_groups(model: Any, var: EdgeVariants, v: int, circuit: EdgeCircuit) -> None:
    """On grouped-query attention: check that the live query heads of each group select the
    same k and v edges, and give the group's dead heads those edges too (in place), so the
    group's first head speaks for its key/value head."""
    import torch

    L, H = model.cfg.n_layers, model.cfg.n_heads
    group = kv_groups(model)
    names = sender_names(L, H)
    upto = _reads_upto_all(L, H)
    sel = var.sel_all[v] | (var.sel_at[v].any(-1) if var.sel_at is not None else False)
    for layer in range(L):
        for x in ("k", "v"):
            for g in range(H // group):
                heads = range(g * group, (g + 1) * group)
                rows = [receiver_index(f"a{layer}.h{h}", x, H, L) for h in heads]
                live = [h for h, r in zip(heads, rows) if _reaches(model, var, v, layer, h, upto)]
                if not live:
                    continue
                r0 = receiver_index(f"a{layer}.h{live[0]}", x, H, L)
                for h, r in zip(heads, rows):
                    same = torch.equal(var.sel_all[v, r], var.sel_all[v, r0]) and (
                        var.sel_at is None or torch.equal(var.sel_at[v, r], var.sel_at[v, r0]))
                    if same:
                        continue
                    if h in live:
                        diff = (sel[r] ^ sel[r0]).nonzero()[:, 0].tolist()
                        odd = ", ".join(names[s] for s in diff[:4]) or "(positions differ)"
                        raise CircuitError(
                            f"{circuit._where()}a{layer}.h{live[0]} and a{layer}.h{h} share a "
                            f"key/value head on this grouped-query model (query heads "
                            f"{heads.start}..{heads.stop - 1} of layer {layer}), so their <{x}> "
                            f"inputs cannot be patched apart, but their <{x}> edges differ "
                            f"(senders {odd}); give every query head of the group the same "
                            f"<{x}> edges (add or drop those edges for all of them)")
                    var.sel_all[v, r] = var.sel_all[v, r0]
                    if var.sel_at is not None:
                        var.sel_at[v, r] = var.sel_at[v, r0]


def _reaches(model: Any, var: EdgeVariants, v: int, layer: int, head: int,
             upto: "torch.Tensor | None" = None) -> bool:
    """Whether head (layer, head)'s own output reaches some receiver in variant v (a kept
    out-edge at some position); if not, its inputs change nothing. ``upto``: each
    receiver's ``reads_upto`` (computed here when not given)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    s = sender_index(f"a{layer}.h{head}", H)
    if upto is None:
        upto = _reads_upto_all(L, H)
    readers = (upto > s).nonzero()[:, 0]
    everywhere = var.sel_all[v, readers, s]
    if bool(var.invert[v]):  # kept unless selected: dead only if patched everywhere
        return not bool(everywhere.all())
    somewhere = everywhere if var.sel_at is None else everywhere | var.sel_at[v, readers, s].any(-1)
    return bool(somewhere.any())


def _reads_upto_all(L: int, H: int) -> "torch.Tensor":
    """``reads_upto`` of every receiver, [R] (one Python pass, not one per head asked)."""
    import torch

    return torch.tensor([reads_upto(r, L, H) for r in range(n_receivers(L, H))])


@dataclass(frozen=True, eq=False)
class EdgeReference:
    """Each sender's reference output: ``blocks[0]`` = ``input`` [K, P, 1, d], ``blocks[l+1]``
    = layer l's heads then MLP [K, P, H + 1, d]; prompt i reads table row ``row_of[i]``. None
    for zero ablation (every reference output is 0)."""

    kind: Ablation
    blocks: "list[torch.Tensor] | None"
    row_of: "torch.Tensor"
    reference: str

    def describe(self) -> str:
        if self.kind is Ablation.ZERO:
            return "edges zero-patched"
        if self.kind is Ablation.RESAMPLE:
            return "edges resample-patched (from each prompt's corrupted pair)"
        by = ", by template" if self.kind is Ablation.MEAN_BY_TEMPLATE else ""
        return f"edges {self.kind.value}-patched (reference: {self.reference} prompts{by})"


def edge_reference(model: Any, enc: EncodedTask, ablation: "str | Ablation",
                   reference: str | None = None) -> EdgeReference:
    """The reference outputs of every sender for ``ablation`` (as ``ablation_values`` takes
    them for heads: ``reference`` is ``"corrupted"`` by default when the task has them)."""
    import torch

    kind = Ablation.parse(ablation)
    n = enc.n
    reference = reference_for(enc, reference)
    if kind is Ablation.LAYER_MEAN:
        raise CircuitCheckError(
            "layer-mean replaces a head's z inside its layer; an edge has no such mean: use "
            "zero, mean, mean-by-template or resample for an edge circuit")
    if kind is Ablation.ZERO:
        return EdgeReference(kind, None, torch.zeros(n, dtype=torch.long), reference)
    reference, toks, lens = reference_prompts(enc, kind, reference)
    blocks = _sender_outputs(model, toks, lens)
    if kind is Ablation.RESAMPLE:
        return EdgeReference(kind, blocks, torch.arange(n), reference)
    groups = enc.groups if kind is Ablation.MEAN_BY_TEMPLATE else torch.zeros(n, dtype=torch.long)
    return EdgeReference(kind, _group_means(blocks, groups, lens, enc, kind, reference),
                         groups.clone(), reference)


def _sender_outputs(model: Any, toks: "torch.Tensor", lens: "torch.Tensor"
                    ) -> list["torch.Tensor"]:
    """Every sender's output on ``toks`` in ``EdgeReference.blocks``' layout, [N, P, ., d]."""
    import torch

    from ..fastpath import real_tokens

    L, H = model.cfg.n_layers, model.cfg.n_heads
    N, P_all = toks.shape[0], toks.shape[1]
    device = model.cfg.device
    W_O = [model.blocks[l].attn.W_O for l in range(L)]
    out: list[torch.Tensor | None] = [None] * (L + 1)
    guard = HookGuard("caching of the edges' reference outputs")

    def put(block: int, lo: int, width: int, at: torch.Tensor, P: int):
        def hook(x: torch.Tensor, hook: Any) -> None:
            if out[block] is None:
                out[block] = x.new_zeros(N, P_all, width, model.cfg.d_model)
            val = x[:, :, None] if x.dim() == 3 else torch.einsum(
                "bphe,hed->bphd", x, W_O[block - 1].to(x.device, x.dtype))
            out[block][at.to(out[block].device), :P, lo:lo + val.shape[2]] = val.to(out[block].device)
        return hook

    with torch.inference_mode():
        for rows in length_batches(lens, rows_per_batch(model, P_all), device=device):
            P = int(lens[rows].max())
            at = rows.to(device)
            hooks = [("blocks.0.hook_resid_pre", put(0, 0, 1, at, P))]
            for l in range(L):
                hooks += [(f"blocks.{l}.attn.hook_z", put(l + 1, 0, H + 1, at, P)),
                          (f"blocks.{l}.hook_mlp_out", put(l + 1, H, H + 1, at, P))]
            with real_tokens(model, lens[rows], P):
                model.run_with_hooks(toks[rows, :P].to(device),
                                     fwd_hooks=[*guard.wrap_all(hooks, intervenes=False),
                                                no_logits()],
                                     return_type=None)
    guard.check()  # a sender never cached would be patched with zeros, not its reference
    return out  # type: ignore[return-value]


@contextlib.contextmanager
def split_qkv_inputs(model: Any) -> Iterator[None]:
    """Within: per-head q/k/v input hooks (``use_split_qkv_input``), restored afterwards."""
    old = model.cfg.use_split_qkv_input
    model.cfg.use_split_qkv_input = True
    try:
        yield
    finally:
        model.cfg.use_split_qkv_input = old


def run_edge_variants(model: Any, enc: EncodedTask, variants: EdgeVariants,
                      ref: EdgeReference, *, batch_size: int | None = None,
                      ref_logprobs: "torch.Tensor | None" = None,
                      reads: "Collection[str] | None" = None) -> Readout:
    """Evaluate every edge variant on every prompt: a ``Readout`` of [V, N]. Rows (variant,
    prompt) are batched by length; each batch is one forward pass with its rows' edge masks
    (see the module docstring). ``reads`` as in ``run_variants``. Raises
    ``NotMeasurableError`` when a hook never fired or no patch changed anything."""
    import torch

    toks, lens = enc.tokens, enc.lengths
    N, V = toks.shape[0], len(variants)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    device = model.cfg.device
    if ref.kind is not Ablation.ZERO and ref.blocks is None:
        raise CircuitCheckError("reference outputs are missing")
    P_all = toks.shape[1]
    elem = torch.finfo(model.cfg.dtype).bits // 8
    extra = P_all * n_senders(L, H) * model.cfg.d_model * elem * 3
    bs = batch_size or rows_per_batch(model, P_all, extra_per_row=extra)
    pos_table = None
    if variants.sel_at is not None:
        pos_table = torch.stack([enc.positions[p] for p in variants.pos_names], dim=1)  # [N, K]
    want, how = read_plan(model, reads, ref_logprobs is not None)
    n_rows = V * N
    all_prompts = torch.arange(n_rows) % N
    parts = []
    guard = HookGuard("edge patch")
    with torch.inference_mode(), split_qkv_inputs(model):
        for rows in length_batches(lens[all_prompts], bs, device=device,
                                   fixed_rows=batch_size is not None):
            v_idx, p_idx = rows // N, rows % N
            P = int(lens[p_idx].max())
            hooks = _edge_hooks(model, variants, ref, v_idx, p_idx, P, pos_table, guard)
            final = _read_last(model, toks[p_idx], lens[p_idx], hooks, stop=how != "logits")
            parts.append((rows, readout(model, final, enc, p_idx, want, how, ref_logprobs)))
    guard.check()
    return as_readout(parts, n_rows, (V, N))


def _patched_mask(variants: EdgeVariants, v_idx: "torch.Tensor", recv: slice, send: int,
                  at: "torch.Tensor | None", dtype: Any, device: Any) -> "torch.Tensor":
    """Which edges (receivers ``recv`` x senders ``:send``) each row patches: [B, S, r] when
    no edge is positioned, else [B, P, S, r], as 0/1 in ``dtype``."""
    import torch

    sel = variants.sel_all[v_idx, recv, :send]  # [B, r, S]
    inv = variants.invert[v_idx]
    if at is None:
        patched = sel ^ ~inv[:, None, None]
        return patched.transpose(1, 2).to(device, dtype)
    hit = torch.einsum("brsk,bpk->bprs", variants.sel_at[v_idx, recv, :send].float(),
                       at.float()) > 0
    patched = (sel[:, None] | hit) ^ ~inv[:, None, None, None]
    return patched.transpose(2, 3).to(device, dtype)


def _edge_hooks(model: Any, variants: EdgeVariants, ref: EdgeReference, v_idx: "torch.Tensor",
                p_idx: "torch.Tensor", P: int, pos_table: "torch.Tensor | None",
                guard: HookGuard) -> list:
    """The hooks of one batch: capture each sender's output as (reference - current) and add
    the patched edges' sum of those to each receiver's input; each wrapped by ``guard``
    (senders only read, receivers intervene)."""
    import torch

    L, H = model.cfg.n_layers, model.cfg.n_heads
    group = kv_groups(model)
    device = model.cfg.device
    dtype = model.cfg.dtype
    at = None
    if pos_table is not None:
        at = (torch.arange(P)[None, :, None] == pos_table[p_idx][:, None, :])  # [B, P, K]
    table_rows = ref.row_of[p_idx].to(device)
    S = n_senders(L, H)
    # (reference - current) of every sender, in sender order, written as the pass goes
    buf: dict[str, torch.Tensor] = {}
    per_layer = 3 * H + 1

    def sender(start: int, block: int, lo: int, hi: int, W_O: "torch.Tensor | None" = None):
        r = None if ref.blocks is None else ref.blocks[block][table_rows, :P, lo:hi]

        def hook(x: torch.Tensor, hook: Any) -> None:
            cur = x[:, :, None] if W_O is None else torch.einsum("bphe,hed->bphd", x,
                                                                 W_O.to(x.device, x.dtype))
            if "d" not in buf:
                buf["d"] = cur.new_zeros(cur.shape[0], cur.shape[1], S, cur.shape[-1])
            delta = -cur if r is None else r.to(cur.device, cur.dtype) - cur
            buf["d"][:, :, start:start + cur.shape[2]] = delta.to(buf["d"].device)
        return hook

    def receiver(recv: slice, send: int, heads: bool):
        mask = _patched_mask(variants, v_idx, recv, send, at, dtype, device)
        if not bool(mask.any()):
            return None  # no row of this batch patches an edge into these receivers
        if not heads:
            mask = mask[..., 0]

        # as [B, 1 or P, r, S] matrices that multiply each (row, position)'s [S, d] block of
        # the buffer in place: a matmul over a view, where an einsum copied the buffer
        if heads:
            m = mask.transpose(-1, -2) if mask.dim() == 4 else mask.transpose(1, 2)[:, None]
        else:
            m = mask[..., None, :] if mask.dim() == 3 else mask[:, None, None, :]

        def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
            # layers may sit on other devices (a device-mapped model): bring both to x's
            d = buf["d"][:, :, :send].to(x.device, x.dtype)
            add = torch.matmul(m.to(x.device, x.dtype), d)
            return x + (add if heads else add[:, :, 0])
        return hook

    hooks: list = [("blocks.0.hook_resid_pre", sender(0, 0, 0, 1))]
    receivers: list = []
    for l in range(L):
        send = 1 + l * (H + 1)
        base = l * per_layer
        for i, x in enumerate(("q", "k", "v")):
            lo = base + i * H
            if x == "q" or group == 1:
                recv = slice(lo, lo + H)
            else:  # one query head per key/value head speaks for it (see _align_groups)
                recv = slice(lo, lo + H, group)
            receivers.append((f"blocks.{l}.hook_{x}_input", receiver(recv, send, True)))
        hooks.append((f"blocks.{l}.attn.hook_z",
                      sender(send, l + 1, 0, H, model.blocks[l].attn.W_O)))
        receivers.append((f"blocks.{l}.ln2.hook_in",
                          receiver(slice(base + 3 * H, base + 3 * H + 1), send + H, False)))
        hooks.append((f"blocks.{l}.hook_mlp_out", sender(send + H, l + 1, H, H + 1)))
    R = n_receivers(L, H)
    receivers.append(("ln_final.hook_in", receiver(slice(R - 1, R), S, False)))
    receivers = [(n, h) for n, h in receivers if h is not None]
    if not receivers:
        return []
    return guard.wrap_all(hooks, intervenes=False) + guard.wrap_all(receivers)


__all__ = ["EdgeReference", "EdgeVariants", "edge_reference", "kv_groups", "run_edge_variants",
           "split_qkv_inputs"]
