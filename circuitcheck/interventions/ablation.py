"""Head (and MLP) ablation, many variants per forward pass.

A *variant* is one keep-mask over the model's heads: which heads keep their own output, and
where, while every other head's output (``hook_z``) is replaced by its ablation value.
``run_variants`` evaluates V variants on N prompts as V*N rows of large batches, with a per-row
mask applied by one hook per layer, and reads logits only at each prompt's last token.
"""
from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..circuit import Circuit
from ..errors import CircuitCheckError, TaskError
from ..tasks import EncodedTask
from ._batching import length_batches, rows_per_batch
from ._guard import HookGuard
from ._reference import reference_for, reference_prompts

if TYPE_CHECKING:  # pragma: no cover
    import torch


class Ablation(str, enum.Enum):
    """What replaces an ablated head's output."""

    ZERO = "zero"
    """Zeros: the head writes nothing (crude; can push activations off-distribution)."""
    MEAN = "mean"
    """The head's mean output over the reference prompts, at each token position."""
    MEAN_BY_TEMPLATE = "mean-by-template"
    """The mean over reference prompts of the same template group, per position (Wang et al.)."""
    RESAMPLE = "resample"
    """The head's output on the paired counterfactual (corrupted) prompt, same position."""
    LAYER_MEAN = "layer-mean"
    """The mean ``z`` over all heads of its layer, same prompt and position, in the same
    forward pass (seed 001's ablation, as its notebook writes it; heads only, not MLPs)."""

    @classmethod
    def parse(cls, value: "str | Ablation") -> "Ablation":
        try:
            return cls(value)
        except ValueError:
            raise CircuitCheckError(
                f"unknown ablation {value!r}; use one of {[a.value for a in cls]}"
            ) from None


@dataclass(frozen=True, eq=False)
class Variants:
    """V head keep-masks.

    Head (l, h) of variant v is *selected* at position p when ``sel_all[v, l, h]``, or when
    ``sel_at[v, l, h, k]`` and p is the prompt's position ``pos_names[k]``. It keeps its output
    where selected, and is ablated elsewhere; ``invert[v]`` flips that (ablate only where
    selected). ``keep_mlp[v, l]`` says which MLP layers keep their output (None: all do).
    """

    sel_all: "torch.Tensor"  # [V, L, H] bool
    sel_at: "torch.Tensor | None" = None  # [V, L, H, K] bool
    pos_names: tuple[str, ...] = ()
    invert: "torch.Tensor | None" = None  # [V] bool
    keep_mlp: "torch.Tensor | None" = None  # [V, L] bool

    def __len__(self) -> int:
        return int(self.sel_all.shape[0])

    @classmethod
    def from_masks(cls, keep: "torch.Tensor") -> "Variants":
        """Variants from plain keep-masks ``keep[v, l, h]`` (kept at every position)."""
        return cls(keep.bool())

    @classmethod
    def from_circuits(cls, model: Any, circuits: Sequence[Circuit],
                      ablate: Sequence[bool] | None = None) -> "Variants":
        """One variant per circuit: keep only the circuit, or (``ablate[v]``) remove only it."""
        import torch

        L, H = model.cfg.n_layers, model.cfg.n_heads
        pos_names = tuple(dict.fromkeys(
            p for c in circuits for _, p in c.placements() if p is not None))
        V = len(circuits)
        ablate = list(ablate) if ablate is not None else [False] * V
        sel_all = torch.zeros(V, L, H, dtype=torch.bool)
        sel_at = torch.zeros(V, L, H, len(pos_names), dtype=torch.bool)
        keep_mlp = None
        if any(c.mlps is not None for c in circuits):
            keep_mlp = torch.ones(V, L, dtype=torch.bool)
        for v, c in enumerate(circuits):
            for (layer, head), pos in c.placements():
                if pos is None:
                    sel_all[v, layer, head] = True
                else:
                    sel_at[v, layer, head, pos_names.index(pos)] = True
            if c.mlps is not None:
                in_circuit = torch.zeros(L, dtype=torch.bool)
                in_circuit[list(c.mlps)] = True
                keep_mlp[v] = ~in_circuit if ablate[v] else in_circuit
        return cls(sel_all, sel_at if pos_names else None, pos_names,
                   torch.tensor(ablate, dtype=torch.bool), keep_mlp)


@dataclass(frozen=True, eq=False)
class AblationValues:
    """What ablated outputs are replaced with: ``z[l][row_of[i], p]`` for prompt i at position p
    (None for zero ablation), and the same for MLP outputs when MLPs are ablated."""

    kind: Ablation
    z: "list[torch.Tensor] | None"  # per layer [K, P, H, D]
    mlp: "list[torch.Tensor] | None"  # per layer [K, P, d_model]
    row_of: "torch.Tensor"  # [N] long: which table row serves each prompt
    reference: str

    def describe(self) -> str:
        if self.kind is Ablation.ZERO:
            return "zero-ablated"
        if self.kind is Ablation.RESAMPLE:
            return "resample-ablated (from each prompt's corrupted pair)"
        if self.kind is Ablation.LAYER_MEAN:
            return "layer-mean-ablated (the mean z of the head's layer, same prompt and position)"
        by = ", by template" if self.kind is Ablation.MEAN_BY_TEMPLATE else ""
        return f"{self.kind.value}-ablated (reference: {self.reference} prompts{by})"


def ablation_values(model: Any, enc: EncodedTask, ablation: "str | Ablation",
                    reference: str | None = None, *, with_mlp: bool = False) -> AblationValues:
    """Compute the replacement values for ``ablation`` from the reference prompts.

    ``reference``: ``"corrupted"`` (default when the task has corrupted prompts) or
    ``"clean"``. Resample ablation always uses the paired corrupted prompts.
    """
    import torch

    kind = Ablation.parse(ablation)
    n = enc.n
    reference = reference_for(enc, reference)
    if kind in (Ablation.ZERO, Ablation.LAYER_MEAN):  # nothing to precompute
        if kind is Ablation.LAYER_MEAN and with_mlp:
            raise CircuitCheckError(
                "layer-mean ablation replaces a head by the mean of its layer's heads; an MLP has "
                "no such mean: keep every MLP (the default) or use another ablation")
        return AblationValues(kind, None, None, torch.zeros(n, dtype=torch.long),
                              "own prompt" if kind is Ablation.LAYER_MEAN else reference)
    reference, toks, lens = reference_prompts(enc, kind, reference)
    acts = _cache_outputs(model, toks, lens, with_mlp)
    if kind is Ablation.RESAMPLE:
        return AblationValues(kind, acts["z"], acts.get("mlp"), torch.arange(n), reference)
    groups = enc.groups if kind is Ablation.MEAN_BY_TEMPLATE else torch.zeros(n, dtype=torch.long)
    return AblationValues(kind, _group_means(acts["z"], groups, lens, enc, kind, reference),
                          _group_means(acts["mlp"], groups, lens, enc, kind, reference)
                          if with_mlp else None, groups.clone(), reference)


def _group_means(acts: list["torch.Tensor"], groups: "torch.Tensor", ref_lens: "torch.Tensor",
                 enc: EncodedTask, kind: Ablation, reference: str) -> list["torch.Tensor"]:
    """Per layer, the mean activation at each position over each group's reference prompts.

    Reference prompt i belongs to the group of prompt i (clean and corrupted are paired). A
    position is averaged over the reference prompts long enough to have it.
    """
    import torch

    n_groups = int(groups.max()) + 1
    P, P_ref = enc.tokens.shape[1], int(ref_lens.max())
    valid = torch.arange(P_ref)[None, :] < ref_lens[:, None]  # [N, P_ref]
    out = [torch.zeros((n_groups, P) + a.shape[2:], dtype=a.dtype, device=a.device) for a in acts]
    for g in range(n_groups):
        in_g = groups == g
        need = int(enc.lengths[in_g].max())
        w = (valid & in_g[:, None])[:, :need]
        count = w.sum(0)
        if P_ref < need or bool((count == 0).any()):
            raise TaskError(
                f"{kind.value} ablation needs, at every position of a prompt, {reference} reference "
                f"prompts{' of the same template' if n_groups > 1 else ''} at least as long; "
                f"prompts of group {enc.group_names[g]!r} have {need} tokens but the reference "
                f"prompts stop sooner. Give longer reference prompts or use ablation='zero'"
            )
        for a, m in zip(acts, out):
            wd = w.to(a.device, a.dtype)
            flat = a[:, :need].flatten(2)  # [N, need, F]
            mean = (wd[..., None] * flat).sum(0) / count.to(a.device, a.dtype)[:, None]
            m[g, :need] = mean.view((need,) + a.shape[2:])
    return out


def _cache_outputs(model: Any, toks: "torch.Tensor", lens: "torch.Tensor",
                   with_mlp: bool) -> dict[str, list["torch.Tensor"]]:
    """Every head's ``hook_z`` (and MLP output) on ``toks``, in batches of similar length, on
    the model's device: [N, P, ...] per layer, zero past each prompt's own length."""
    import torch

    from ..fastpath import real_tokens

    L = model.cfg.n_layers
    names = {f"blocks.{l}.attn.hook_z": ("z", l) for l in range(L)}
    if with_mlp:
        names.update({f"blocks.{l}.hook_mlp_out": ("mlp", l) for l in range(L)})
    store: dict[str, list[torch.Tensor | None]] = {"z": [None] * L}
    if with_mlp:
        store["mlp"] = [None] * L
    N, P_all = toks.shape[0], toks.shape[1]
    device = model.cfg.device
    guard = HookGuard("caching of the ablation values")
    with torch.inference_mode():
        for rows in length_batches(lens, rows_per_batch(model, P_all), device=device):
            P = int(lens[rows].max())
            at = rows.to(device)

            def save(x: torch.Tensor, hook: Any) -> None:
                key, layer = names[hook.name]
                if store[key][layer] is None:
                    store[key][layer] = x.new_zeros((N, P_all) + x.shape[2:])
                store[key][layer][at, :P] = x

            with real_tokens(model, lens[rows], P):
                model.run_with_hooks(toks[rows, :P].to(device),
                                     fwd_hooks=[*guard.wrap_all(((n, save) for n in names),
                                                                intervenes=False), no_logits()],
                                     return_type=None)
    guard.check()  # a layer never saved would be ablated with zeros, not its values
    return store  # type: ignore[return-value]


def no_logits() -> tuple[str, Callable[..., None]]:
    """A hook that ends a forward pass before the unembedding, for passes that only cache
    activations: no logits are computed at all (the bridge returns the residual stream)."""
    return ("unembed.hook_in", _stop_before_unembed)


def _stop_before_unembed(x: "torch.Tensor", hook: Any) -> None:
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    raise StopAtLayerException(x)


@dataclass(frozen=True, eq=False)
class Readout:
    """What the metrics read at each (variant, prompt): tensors of shape [V, N]."""

    logit: "torch.Tensor"  # answer logit
    wrong_logit: "torch.Tensor | None"
    logprob: "torch.Tensor | None"  # log-softmax of the answer (None: answer logits only)
    correct: "torch.Tensor | None"  # argmax == answer (None: answer logits only)
    good_prob: "torch.Tensor | None" = None  # probability mass on the task's good tokens
    bad_prob: "torch.Tensor | None" = None
    kl: "torch.Tensor | None" = None  # KL(full model || variant) at the read position


def final_logprobs(model: Any, enc: EncodedTask, *, batch_size: int | None = None) -> "torch.Tensor":
    """The full model's log-probabilities at each prompt's last token: [N, d_vocab]."""
    import torch

    bs = batch_size or rows_per_batch(model, enc.tokens.shape[1])
    out = []
    with torch.inference_mode():
        for start in range(0, enc.n, bs):
            idx = torch.arange(start, min(start + bs, enc.n))
            last = _read_last(model, enc.tokens[idx], enc.lengths[idx], [], stop=False)
            out.append(last.float().log_softmax(-1).cpu())
    return torch.cat(out)


#: What a readout can hold; reading only the first two needs no unembedding.
ANSWER_LOGITS = frozenset({"logit", "wrong_logit"})
READ_ALL = ANSWER_LOGITS | {"logprob", "correct", "good_prob", "bad_prob", "kl"}


def read_plan(model: Any, reads: "Collection[str] | None", with_kl: bool = False
              ) -> tuple[frozenset[str], str]:
    """The readout fields to compute, and how (``readout``'s ``how``): ``"answers"``, two rows
    of W_U per prompt and no unembedding, when only the answer logits are read; on a CPU,
    ``"streamed"`` when top-1/log-prob are read too; else ``"logits"``. The first two need
    ``answer_logits_exact``."""
    want = READ_ALL if reads is None else frozenset(reads) | {"logit"}
    if with_kl:
        want |= {"kl"}
    cpu = str(model.cfg.device).startswith("cpu")
    if want <= ANSWER_LOGITS and answer_logits_exact(model):
        return want, "answers"
    if cpu and want <= ANSWER_LOGITS | {"logprob", "correct"} and answer_logits_exact(model):
        return want, "streamed"
    return want, "logits"


def answer_ids(enc: EncodedTask, prompts: "torch.Tensor") -> "torch.Tensor":
    """[B, 1 or 2]: each prompt's answer token (and its wrong answer's)."""
    import torch

    ids = [enc.answers[prompts]] + ([enc.wrong[prompts]] if enc.wrong is not None else [])
    return torch.stack(ids, 1)


def readout(model: Any, final: "torch.Tensor", enc: EncodedTask, prompts: "torch.Tensor",
            want: "Collection[str]" = READ_ALL, how: str = "logits",
            ref_logprobs: "torch.Tensor | None" = None) -> dict[str, "torch.Tensor"]:
    """The fields ``want`` of the rows reading ``prompts``, on the CPU, from ``final``: each
    row's last-token logits [B, d_vocab] (``how="logits"``) or its final residual [B, d_model]
    (``"answers"``/``"streamed"``, see ``read_plan``). Fields not wanted are left out."""
    import torch

    if how == "answers":
        sel = selected_logits(model, final, answer_ids(enc, prompts)).cpu()
        return {"logit": sel[:, 0]} | ({"wrong_logit": sel[:, 1]} if enc.wrong is not None else {})
    if how == "streamed":
        got = streamed_readout(model, final, answer_ids(enc, prompts))
        return {k: v for k, v in got.items() if k in want}
    logits = final.float()
    device = logits.device
    sel = torch.arange(len(prompts), device=device)
    ans = enc.answers[prompts].to(device)
    a = logits[sel, ans]
    out = {"logit": a.cpu()}
    if "logprob" in want:
        out["logprob"] = (a - torch.logsumexp(logits, -1)).cpu()
    if "correct" in want:
        out["correct"] = (logits.argmax(-1) == ans).cpu()
    if enc.wrong is not None:
        out["wrong_logit"] = logits[sel, enc.wrong[prompts].to(device)].cpu()
    if want & {"good_prob", "bad_prob"} and (enc.good is not None or enc.bad is not None):
        probs = logits.softmax(-1)
        for key, mask in (("good_prob", enc.good), ("bad_prob", enc.bad)):
            if mask is not None:
                out[key] = (probs * mask[prompts].to(device)).sum(-1).cpu()
    if ref_logprobs is not None:
        ref = ref_logprobs[prompts].to(device)
        out["kl"] = (ref.exp() * (ref - logits.log_softmax(-1))).sum(-1).cpu()
    return out


def as_readout(parts: list[tuple["torch.Tensor", dict[str, "torch.Tensor"]]], n_rows: int,
               shape: tuple[int, ...] | None = None) -> Readout:
    """Assemble per-batch readouts (row indices, fields) into one ``Readout`` of [n_rows]
    (viewed as ``shape``)."""
    import torch

    keys = parts[0][1].keys() if parts else ("logit", "logprob", "correct")
    full: dict[str, torch.Tensor] = {}
    for key in keys:
        t = torch.zeros(n_rows, dtype=torch.bool if key == "correct" else torch.float32)
        for rows, vals in parts:
            t[rows] = vals[key]
        full[key] = t if shape is None else t.view(shape)
    return Readout(full["logit"], full.get("wrong_logit"), full.get("logprob"),
                   full.get("correct"), full.get("good_prob"), full.get("bad_prob"),
                   full.get("kl"))


def _read_last(model: Any, toks: "torch.Tensor", lens: "torch.Tensor", hooks: list, *,
               stop: bool) -> "torch.Tensor":
    """Each row's last token only: its logits [B, d_vocab] (unembedding work is done nowhere
    else) or, with ``stop``, its final residual [B, d_model] (no unembedding at all)."""
    from ..fastpath import real_tokens

    device = model.cfg.device
    P = int(lens.max())  # less work: trim padding shared by the whole chunk
    hook = last_token_hook((lens - 1).to(device), stop=stop)
    with real_tokens(model, lens, P):
        return model.run_with_hooks(toks[:, :P].to(device), fwd_hooks=[*hooks, hook])[:, 0]


def last_token_hook(last: "torch.Tensor", *, stop: bool = False) -> tuple[str, Callable]:
    """The ``unembed.hook_in`` hook keeping each row's last position (``last[b]``); with
    ``stop`` the pass ends there and returns that residual ([B, 1, d_model])."""
    import torch

    def read_last(x: torch.Tensor, hook: Any) -> torch.Tensor:
        y = x[torch.arange(x.shape[0], device=x.device), last][:, None]
        if stop:
            from transformer_lens.model_bridge.exceptions import StopAtLayerException

            raise StopAtLayerException(y)
        return y
    return ("unembed.hook_in", read_last)


def selected_logits(model: Any, resid: "torch.Tensor", ids: "torch.Tensor") -> "torch.Tensor":
    """Logits of token ``ids[b, j]`` from the final residual ``resid[b]`` (after the final
    norm): the unembedding's rows for those tokens only, [B, k] float32."""
    unembed = model.unembed.original_component
    w = unembed.weight[ids.to(unembed.weight.device)]  # [B, k, d]
    out = (resid.to(w.device).float()[:, None, :] * w.float()).sum(-1)
    if unembed.bias is not None:
        out = out + unembed.bias[ids.to(unembed.bias.device)].float()
    return out


#: Vocabulary rows per slice when streaming the unembedding (a [B, 8192] slice stays in cache).
VOCAB_CHUNK = 8192


def streamed_readout(model: Any, resid: "torch.Tensor", ids: "torch.Tensor"
                     ) -> dict[str, "torch.Tensor"]:
    """Answer (and wrong-answer) logit, log-prob of the answer and top-1 success from the
    final residual, unembedding the vocabulary a slice at a time with a running max/argmax
    and log-sum-exp: the same numbers as from full logits, without writing and re-reading
    [B, d_vocab] of them (on a CPU that costs about as much as the unembedding's last third).
    """
    import torch
    import torch.nn.functional as F

    unembed = model.unembed.original_component
    w, b = unembed.weight, unembed.bias
    resid = resid.to(w.device)  # the final residual may sit on another device (a device map)
    B = resid.shape[0]
    best = torch.full((B,), -torch.inf, device=resid.device)
    arg = torch.zeros(B, dtype=torch.long, device=resid.device)
    total = torch.zeros(B, device=resid.device)
    for s in range(0, w.shape[0], VOCAB_CHUNK):
        lo = F.linear(resid, w[s:s + VOCAB_CHUNK],
                      None if b is None else b[s:s + VOCAB_CHUNK]).float()
        i = lo.argmax(-1)
        m = lo.gather(1, i[:, None])[:, 0]
        new = torch.maximum(best, m)
        total = total * torch.exp(best - new) + torch.exp(lo - new[:, None]).sum(-1)
        arg = torch.where(m > best, i + s, arg)
        best = new
    sel = selected_logits(model, resid, ids)
    out = {"logit": sel[:, 0].cpu(), "logprob": (sel[:, 0] - best - total.log()).cpu(),
           "correct": (arg == ids[:, 0].to(arg.device)).cpu()}
    if ids.shape[1] > 1:
        out["wrong_logit"] = sel[:, 1].cpu()
    return out


def answer_logits_exact(model: Any) -> bool:
    """Whether the model's logits are its unembedding of the final residual and nothing more
    (no soft-capping or scaling after it), checked once on a probe sequence; only then may
    a metric that reads two logits skip the other ``d_vocab - 2``."""
    import torch

    known = model.__dict__.get("cc_answer_logits")
    if known is not None:
        return known
    unembed = getattr(getattr(model, "unembed", None), "original_component", None)
    ok = (isinstance(unembed, torch.nn.Linear)  # offloaded (meta) weights: read full logits
          and unembed.weight.dtype in (torch.float32, torch.float64)
          and unembed.weight.device.type != "meta")
    if ok:
        V = model.cfg.d_vocab
        ids = torch.tensor([[int(i * 7919) % V for i in range(1, 9)]])
        with torch.inference_mode():
            full = model(ids.to(model.cfg.device))[:, -1].float()
            resid = _read_last(model, ids, torch.tensor([8]), [], stop=True)
            sel = selected_logits(model, resid, torch.arange(V)[None])
        ok = bool(torch.allclose(sel, full, rtol=1e-4, atol=1e-4 * float(full.abs().max())))
    model.__dict__["cc_answer_logits"] = ok
    return ok


def run_variants(model: Any, enc: EncodedTask, variants: Variants,
                 values: AblationValues | None, *, batch_size: int | None = None,
                 tokens: "torch.Tensor | None" = None, lengths: "torch.Tensor | None" = None,
                 prompt_of: "torch.Tensor | None" = None, progress: Any = None,
                 ref_logprobs: "torch.Tensor | None" = None,
                 reads: "Collection[str] | None" = None) -> Readout:
    """Evaluate every variant on every prompt ([V, N] results); rows are batched, one hook
    per layer. With ``prompt_of[v]`` each variant runs on that one prompt only ([V, 1]).

    With ``values=None`` nothing is ablated (used for the clean and corrupted baselines).
    ``tokens``/``lengths`` override the prompts (e.g. the corrupted ones), answers stay.
    ``ref_logprobs`` (the full model's, from ``final_logprobs``) adds the KL divergence.
    ``reads``: the ``Readout`` fields the caller will read (a metric's ``reads``; None: all).
    The others are None, never made up; reading only ``logit``/``wrong_logit`` skips the
    unembedding where ``answer_logits_exact`` allows it. Every ablation hook is guarded
    (``_guard.HookGuard``): one that never fires, or an ablation that changes no activation
    at all, raises ``NotMeasurableError``.
    """
    import torch

    toks = enc.tokens if tokens is None else tokens
    lens = enc.lengths if lengths is None else lengths
    N, V = toks.shape[0], len(variants)
    device = model.cfg.device
    if values is not None and values.kind not in (Ablation.ZERO, Ablation.LAYER_MEAN) \
            and values.z is None:
        raise CircuitCheckError("ablation values are missing")
    bs = batch_size or rows_per_batch(model, toks.shape[1])
    pos_table = None
    if variants.sel_at is not None:
        pos_table = torch.stack([enc.positions[p] for p in variants.pos_names], dim=1)  # [N, K]
    invert = variants.invert if variants.invert is not None else torch.zeros(V, dtype=torch.bool)
    n_rows = V * N if prompt_of is None else V
    want, how = read_plan(model, reads, ref_logprobs is not None)
    all_prompts = torch.arange(n_rows) % N if prompt_of is None else prompt_of
    parts = []
    guard = HookGuard("ablation")
    # less work: rows of similar length share a batch, so little padding is computed
    batches = length_batches(lens[all_prompts], bs, device=device,
                             fixed_rows=batch_size is not None)
    with torch.inference_mode():
        for rows in batches:
            if prompt_of is None:
                v_idx, p_idx = rows // N, rows % N
            else:
                v_idx, p_idx = rows, prompt_of[rows]
            P = int(lens[p_idx].max())
            hooks = []
            if values is not None:
                hooks = guard.wrap_all(_ablation_hooks(model, variants, values, v_idx, p_idx,
                                                       P, pos_table, invert, device))
            final = _read_last(model, toks[p_idx], lens[p_idx], hooks, stop=how != "logits")
            parts.append((rows, readout(model, final, enc, p_idx, want, how, ref_logprobs)))
            if progress is not None:
                progress(len(rows))
    guard.check()
    return as_readout(parts, n_rows, (V, N) if prompt_of is None else (V, 1))


def _ablation_hooks(model: Any, variants: Variants, values: AblationValues,
                    v_idx: "torch.Tensor", p_idx: "torch.Tensor", P: int,
                    pos_table: "torch.Tensor | None", invert: "torch.Tensor",
                    device: Any) -> list:
    """One ``hook_z`` hook per layer where some row ablates something (and MLP hooks)."""
    import torch

    L = model.cfg.n_layers
    sel = variants.sel_all[v_idx]  # [B, L, H]
    masks = sel[:, :, None, :].expand(-1, -1, P, -1)  # [B, L, P, H]
    if variants.sel_at is not None:
        at = torch.arange(P)[None, :, None] == pos_table[p_idx][:, None, :]  # [B, P, K]
        hit = torch.einsum("blhk,bpk->blph", variants.sel_at[v_idx].float(), at.float()) > 0
        masks = masks | hit
    keep = masks ^ invert[v_idx][:, None, None, None]
    table_rows = values.row_of[p_idx]
    hooks = []
    for layer in range(L):
        if values.kind is Ablation.LAYER_MEAN:
            k = keep[:, layer][..., None]
            hooks += [] if bool(k.all()) else [(f"blocks.{layer}.attn.hook_z",
                                                _layer_mean_hook(k.to(device)))]
            continue
        hooks += _layer_hook(f"blocks.{layer}.attn.hook_z", keep[:, layer][..., None],
                             None if values.z is None else values.z[layer], table_rows, P, device)
    if variants.keep_mlp is not None:
        keep_mlp = variants.keep_mlp[v_idx]  # [B, L]
        for layer in range(L):
            hooks += _layer_hook(f"blocks.{layer}.hook_mlp_out", keep_mlp[:, layer][:, None, None],
                                 None if values.mlp is None else values.mlp[layer], table_rows,
                                 P, device)
    return hooks


def _layer_hook(name: str, keep: "torch.Tensor", table: "torch.Tensor | None",
                table_rows: "torch.Tensor", P: int, device: Any) -> list:
    """The hook for one activation: none when every row keeps it, else zero or replace."""
    if bool(keep.all()):
        return []
    keep = keep.to(device)
    if table is None:
        return [(name, _zero_hook(keep))]
    return [(name, _replace_hook(keep, table, table_rows.to(table.device), P))]


def _zero_hook(keep: "torch.Tensor"):
    def hook(x: "torch.Tensor", hook: Any) -> "torch.Tensor":
        return x * keep.to(x.device, x.dtype)  # x: on its layer's device (a device map)
    return hook


def _layer_mean_hook(keep: "torch.Tensor"):
    def hook(x: "torch.Tensor", hook: Any) -> "torch.Tensor":
        import torch

        return torch.where(keep.to(x.device), x, x.mean(2, keepdim=True).expand_as(x))
    return hook


def _replace_hook(keep: "torch.Tensor", table: "torch.Tensor", rows: "torch.Tensor", P: int):
    def hook(x: "torch.Tensor", hook: Any) -> "torch.Tensor":
        import torch

        return torch.where(keep.to(x.device), x, table[rows, :P].to(x.device, x.dtype))
    return hook
