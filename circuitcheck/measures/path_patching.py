"""Path patching: the effect of senders on receivers' q, k, v (or the final residual) only,
by noising (conventions in ``circuitcheck.measures._patching_base``)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..circuit import Head, format_head
from ..errors import CircuitCheckError, CircuitError
from ..interventions import Readout
from ..progress import progress_bar
from ..interventions.patching import (Chunk, HookList, cache_run, check_component, hook_name,
                                      n_units, run_rows)
from ..tasks import Task
from ._measurement import Measurement
from ._patching_base import (PatchGrid, _Setup, _head_mask, _heads, _normalization, _position_index,
                             _ratio_cells, _ratio_measurement, _seed, _setup)
from ._result import ResultProtocol, jsonable
from .metrics import Metric

if TYPE_CHECKING:  # pragma: no cover
    import torch


RECEIVER_INPUTS = ("q", "k", "v", "resid_final")


@dataclass(frozen=True, eq=False)
class PathPatchResult(ResultProtocol):
    """Path patching of ``senders`` → ``receivers`` (their ``receiver_input``).

    ``value`` = (F(patched) - F(clean)) / (F(clean) - F(corrupted)): -1 means the path carries
    the whole clean/corrupted difference, 0 that it carries none. ``per_prompt`` is the
    patched metric per prompt; ``clean`` and ``corrupted`` the unpatched runs'.
    """

    value: float
    per_prompt: np.ndarray = field(repr=False)
    clean: np.ndarray = field(repr=False)
    corrupted: np.ndarray = field(repr=False)
    senders: tuple[Head, ...] = ()
    receivers: tuple[Head, ...] = ()
    receiver_input: str = "resid_final"
    positions: tuple[str, ...] | None = None
    metric: str = "logit_diff"
    freeze_mlps: bool = False
    problem: str | None = None

    @property
    def ci_low(self) -> float:
        """NaN: path patching reports no interval."""
        return float("nan")

    ci_high = ci_low

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"value": self.value, "senders": [format_head(h) for h in self.senders],
                         "receivers": [format_head(h) for h in self.receivers],
                         "receiver_input": self.receiver_input, "positions": self.positions,
                         "metric": self.metric, "freeze_mlps": self.freeze_mlps,
                         "problem": self.problem, "n": len(self.per_prompt)})

    def table(self):
        import pandas as pd

        return pd.DataFrame([self.to_dict()])

    def summary(self) -> str:
        if self.problem:
            return f"path patching: not measurable ({self.problem})"
        to = ", ".join(map(format_head, self.receivers)) or "the logits"
        return (f"path patching {', '.join(map(format_head, self.senders))} -> {to} "
                f"({self.receiver_input}): {self.value:+.3f}")


def _receivers(model: Any, receivers: Any, receiver_input: str) -> tuple[Head, ...]:
    check_component(receiver_input, RECEIVER_INPUTS)
    if receiver_input == "resid_final":
        if receivers not in (None, (), []):
            raise CircuitError("receiver_input='resid_final' has no receiver heads; pass "
                               "receivers=None (the final residual stream is the receiver)")
        return ()
    if receivers is None:
        raise CircuitError(f"receiver_input={receiver_input!r} needs receiver heads, e.g. "
                           "receivers=['9.9', '10.0']")
    out = tuple(_heads(model, receivers, "receivers"))
    if _grouped(model, receiver_input):
        for layer, _ in out:
            hf = getattr(model.blocks[layer].attn, "original_component", None)
            if getattr(hf, "attn_logit_softcapping", None) is not None:
                raise CircuitError(
                    f"receiver_input={receiver_input!r} per query head is not supported on a "
                    "model with attention-logit softcapping; use receiver_input='q'")
    return out


def _grouped(model: Any, receiver_input: str) -> bool:
    """k / v receivers on a grouped-query model: patched per query head (see ``path_patch``)."""
    return receiver_input in ("k", "v") and n_units(model, receiver_input) != model.cfg.n_heads


def _capture_name(model: Any, receiver_input: str, layer: int) -> str:
    """The hook whose value a receiver takes from step 1: the rotated keys on a grouped-query
    model with rotary embeddings (the scores use them), else the receiver input itself."""
    if _grouped(model, "k") and receiver_input == "k" and hasattr(model.blocks[layer].attn,
                                                                   "hook_rot_k"):
        return f"blocks.{layer}.attn.hook_rot_k"
    return hook_name(receiver_input, layer)


def _path_rows(model: Any, s: _Setup, senders: "torch.Tensor", receivers: tuple[Head, ...],
               receiver_input: str, positions: Sequence[str] | None, freeze_mlps: bool,
               batch_size: int | None, progress: Any = False
               ) -> tuple[np.ndarray, Readout, Readout]:
    """Patched metric [V, N] of path patching each sender set ``senders[v]`` ([V, L, H])."""
    import torch

    enc = s.enc
    L, N, P = model.cfg.n_layers, enc.n, enc.tokens.shape[1]
    V = senders.shape[0]
    first = torch.where(senders.any(2), torch.arange(L), L).min(1).values.clamp(max=L - 1)
    recv_layers = sorted({l for l, _ in receivers})
    final = receiver_input == "resid_final"
    z = [f"blocks.{l}.attn.hook_z" for l in range(L)]
    mlp = [f"blocks.{l}.hook_mlp_out" for l in range(L)] if freeze_mlps else []
    grouped = _grouped(model, receiver_input)
    group = model.cfg.n_heads // n_units(model, receiver_input) if grouped else 1
    cap = {l: _capture_name(model, receiver_input, l) for l in recv_layers}
    recv_names = [cap[l] for l in recv_layers]
    starts = sorted(set(first.tolist()) | ({recv_layers[0]} if recv_layers else set()))
    resid_names = [f"blocks.{l}.hook_resid_pre" for l in starts if l > 0]
    clean_acts, clean_read = cache_run(model, enc, enc.tokens, z + mlp + recv_names + resid_names,
                                       batch_size=batch_size)
    corr_acts, corr_read = cache_run(model, enc, enc.corrupted, z, batch_size=batch_size)
    variant = torch.arange(V).repeat_interleave(N)
    prompt_of = torch.arange(N).repeat(V)
    R = len(prompt_of)
    heads_at = {l: [h for ll, h in receivers if ll == l] for l in recv_layers}
    # the units captured per layer: the receivers, or on GQA k/v their key/value heads
    units_at = {l: sorted({h // group for h in heads_at[l]}) for l in recv_layers}
    captured = {l: clean_acts[cap[l]][:, :, units_at[l]][prompt_of.to(
        clean_acts[z[0]].device)].clone() for l in recv_layers}  # [R, P, n_units, D]

    def start_resid(chunk: Chunk) -> "torch.Tensor":
        r = clean_acts[f"blocks.{chunk.start}.hook_resid_pre"]
        return r[chunk.prompts.to(r.device), :chunk.P]

    def freeze_hooks(chunk: Chunk) -> HookList:
        """Senders from the corrupted run, every other head (and MLP) frozen to clean."""
        out: HookList = []
        dev = chunk.device
        for layer in range(chunk.start, L):
            m = senders[variant[chunk.rows], layer].to(dev)[:, None, :, None]
            zc = clean_acts[z[layer]][chunk.prompts.to(dev), :chunk.P]
            zk = corr_acts[z[layer]][chunk.prompts.to(dev), :chunk.P]
            frozen = torch.where(m, zk, zc)
            out.append((z[layer], lambda x, hook, v=frozen: v.to(x.device, x.dtype)))
            if freeze_mlps:
                mc = clean_acts[mlp[layer]][chunk.prompts.to(dev), :chunk.P]
                out.append((mlp[layer], lambda x, hook, v=mc: v.to(x.device, x.dtype)))
        for layer in recv_layers if not final else ():
            def capture(x: torch.Tensor, hook: Any, layer: int = layer,
                        rows: torch.Tensor = chunk.rows) -> None:
                into = captured[layer]  # x sits on its layer's device; the store may not
                into[rows.to(into.device), :x.shape[1]] = x[:, :, units_at[layer]].to(into.device)
            out.append((cap[layer], capture))
        return out

    stop = None if final or recv_layers[-1] + 1 >= L else recv_layers[-1] + 1
    with progress_bar(progress, R * (1 if final else 2), "path patching") as bar:
        step2 = run_rows(model, enc, prompt_of, tokens=enc.tokens, lengths=enc.lengths,
                         hooks=freeze_hooks, start_layer=first[variant],
                         start_resid=start_resid, stop_at_layer=stop, batch_size=batch_size,
                         reads=s.metric.reads or None, progress=bar)
        if final:
            return s.metric(step2).reshape(V, N), clean_read, corr_read
        return _receive(model, s, receiver_input, positions, recv_layers, heads_at, units_at,
                        group, grouped, captured, cap, prompt_of, start_resid, batch_size,
                        bar), clean_read, corr_read


def _receive(model: Any, s: _Setup, receiver_input: str, positions: Sequence[str] | None,
             recv_layers: list[int], heads_at: dict[int, list[int]],
             units_at: dict[int, list[int]], group: int, grouped: bool,
             captured: dict[int, "torch.Tensor"], cap: dict[int, str],
             prompt_of: "torch.Tensor", start_resid: Any, batch_size: int | None,
             bar: Any) -> np.ndarray:
    """Step 2: the clean run with only the receivers' inputs replaced; metric [V, N]."""
    import torch

    enc = s.enc
    N, P = enc.n, enc.tokens.shape[1]
    R = len(prompt_of)
    pos_mask = torch.ones(N, P, dtype=torch.bool)
    if positions is not None:
        idx = _position_index(s, positions)
        pos_mask = (torch.arange(P)[None, None, :] == idx[:, :, None]).any(1)

    def receive_hooks(chunk: Chunk) -> HookList:
        if grouped:
            return _grouped_hooks(model, receiver_input, chunk, recv_layers, heads_at, units_at,
                                  group, captured, pos_mask, cap)
        out: HookList = []
        dev = chunk.device
        pm = pos_mask[chunk.prompts, :chunk.P].to(dev)[:, :, None, None]
        for layer in recv_layers:
            new = captured[layer][chunk.rows.to(dev), :chunk.P]
            idx = heads_at[layer]

            def patch(x: torch.Tensor, hook: Any, new: torch.Tensor = new,
                      idx: list[int] = idx) -> torch.Tensor:
                x = x.clone()
                x[:, :, idx] = torch.where(pm.to(x.device), new.to(x.device, x.dtype), x[:, :, idx])
                return x
            out.append((hook_name(receiver_input, layer), patch))
        return out

    start3 = torch.full((R,), recv_layers[0], dtype=torch.long)
    step3 = run_rows(model, enc, prompt_of, tokens=enc.tokens, lengths=enc.lengths,
                     hooks=receive_hooks, start_layer=start3, start_resid=start_resid,
                     batch_size=batch_size, reads=s.metric.reads or None, progress=bar)
    return s.metric(step3).reshape(R // N, N)


def _grouped_hooks(model: Any, receiver_input: str, chunk: Chunk, recv_layers: list[int],
                   heads_at: dict[int, list[int]], units_at: dict[int, list[int]], group: int,
                   captured: dict[int, "torch.Tensor"], pos_mask: "torch.Tensor",
                   cap: dict[int, str]) -> HookList:
    """Step 2 on a grouped-query model: give one *query* head the new keys / values of its
    key/value head while the other query heads of the group keep the run's own.

    The bridge has no hook on the ungrouped (repeated) k/v, so the patch is applied where the
    query head uses them, exactly: for ``v``, ``z_h += pattern_h @ (v' - v)_g`` at the patched
    key positions (the pattern does not depend on v); for ``k``, the scores
    ``s_h += scaling * q_h (k' - k)_g^T`` over the patched key positions, causal entries only
    (rotated q and k, before the softmax, as the bridge computes them)."""
    import torch

    out: HookList = []
    dev = chunk.device
    pm = pos_mask[chunk.prompts, :chunk.P].to(dev)  # [B, P] patched key positions
    P = chunk.P
    causal = torch.ones(P, P, dtype=torch.bool, device=dev).tril()
    for layer in recv_layers:
        new = captured[layer][chunk.rows.to(dev), :P]  # [B, P, n_units, D]
        seen: dict[str, torch.Tensor] = {}
        col = {u: i for i, u in enumerate(units_at[layer])}

        def keep(name: str, seen: dict = seen) -> Any:
            def hook(x: torch.Tensor, hook: Any) -> None:
                seen[name] = x
            return hook

        if receiver_input == "v":
            def fix_z(x: torch.Tensor, hook: Any, new: torch.Tensor = new, seen: dict = seen,
                      layer: int = layer, col: dict = col) -> torch.Tensor:
                x = x.clone()
                v, pat = seen["v"], seen["pattern"]
                for h in heads_at[layer]:
                    g = h // group
                    dv = (new[:, :, col[g]].to(v.device, v.dtype) - v[:, :, g]) * pm[:, :, None].to(v.device)
                    x[:, :, h] = x[:, :, h] + torch.einsum("bqk,bkd->bqd", pat[:, h].to(v.dtype),
                                                           dv).to(x.dtype)
                return x
            out += [(hook_name("v", layer), keep("v")),
                    (f"blocks.{layer}.attn.hook_pattern", keep("pattern")),
                    (hook_name("z", layer), fix_z)]
        else:
            hf = getattr(model.blocks[layer].attn, "original_component", None)
            scaling = float(getattr(hf, "scaling", model.cfg.d_head ** -0.5))
            qname = (f"blocks.{layer}.attn.hook_rot_q" if cap[layer].endswith("hook_rot_k")
                     else hook_name("q", layer))

            def fix_scores(x: torch.Tensor, hook: Any, new: torch.Tensor = new,
                           seen: dict = seen, layer: int = layer, col: dict = col,
                           scaling: float = scaling) -> torch.Tensor:
                x = x.clone()
                q, k = seen["q"].float(), seen["k"].float()
                for h in heads_at[layer]:
                    g = h // group
                    dk = (new[:, :, col[g]].to(k.device).float() - k[:, :, g]) * pm[:, :, None].to(k.device)
                    ds = torch.einsum("bqd,bkd->bqk", q[:, :, h], dk) * scaling
                    x[:, h] = x[:, h] + torch.where(causal.to(ds.device), ds, 0).to(x.device, x.dtype)
                return x
            out += [(qname, keep("q")), (cap[layer], keep("k")),
                    (f"blocks.{layer}.attn.hook_attn_scores", fix_scores)]
    return out


def _clean_corr(model: Any, s: _Setup, batch_size: int | None) -> tuple[Readout, Readout]:
    _, clean = cache_run(model, s.enc, s.enc.tokens, [], batch_size=batch_size)
    _, corr = cache_run(model, s.enc, s.enc.corrupted, [], batch_size=batch_size)
    return clean, corr


def _check_positions(s: _Setup, positions: Sequence[str] | None, receiver_input: str
                     ) -> tuple[str, ...] | None:
    if positions is None:
        return None
    if isinstance(positions, str):
        positions = [positions]
    positions = tuple(positions)
    for p in positions:
        s.task.check_position(p)
    if receiver_input == "resid_final" and positions != ("end",):
        raise CircuitCheckError("the final residual stream is read at 'end' only; drop "
                                "positions= or use positions=['end'] with receiver_input='resid_final'")
    return positions


def path_patch(model: Any, task: Task, senders: Any, receivers: Any = None, *,
               receiver_input: str = "q", positions: Sequence[str] | None = None,
               metric: "str | Metric" = "logit_diff", freeze_mlps: bool = False,
               batch_size: int | None = None, progress: Any = None) -> PathPatchResult:
    """Path patching (Wang et al. 2022): the effect of ``senders`` on the output through the
    ``receiver_input`` of ``receivers`` only.

    1. Run the clean prompts with the senders' outputs (``hook_z``) from the corrupted run and
       every other head frozen to its clean output (MLPs are recomputed, as in the IOI paper,
       unless ``freeze_mlps``); record the receivers' q, k or v (at ``positions``, named task
       positions such as ``"end"`` or ``"S2"``; default every position).
    2. Run the clean prompts again with only those receiver inputs replaced; read the metric.

    With ``receiver_input="resid_final"`` step 1's final residual stream is the receiver, so its
    logits are the answer (the senders' direct path, plus paths through MLPs unless frozen).

    On grouped-query models (query heads sharing key/value heads) a ``k`` or ``v`` receiver is
    patched *per query head*: the receiver head alone sees the new keys / values of its
    key/value head (as if k/v were ungrouped, one copy per query head), while the other query
    heads of its group keep theirs. The bridge has no hook on ungrouped k/v, so the patch is
    applied exactly where the head uses them (its scores for k, its output for v; see
    ``_grouped_hooks``). To patch a shared key/value head for its whole group, name every
    query head of the group as a receiver.
    """
    s = _setup(model, task, metric, what="path patching")
    send = _heads(model, senders, "senders")
    recv = _receivers(model, receivers, receiver_input)
    pos = _check_positions(s, positions, receiver_input)
    mask = _head_mask(model, send)[None]
    patched, clean, corr = _path_rows(model, s, mask, recv, receiver_input, pos, freeze_mlps,
                                      batch_size, progress)
    c, k = s.metric(clean), s.metric(corr)
    vals, problem = _ratio_cells(patched, c, k, "noise")
    return PathPatchResult(float(vals[0]), patched[0], c, k, tuple(send), recv, receiver_input,
                           pos, s.metric.name, freeze_mlps, problem)


def path_patch_heads(model: Any, task: Task, receivers: Any = None, *,
                     receiver_input: str = "q", positions: Sequence[str] | None = None,
                     metric: "str | Metric" = "logit_diff", freeze_mlps: bool = False,
                     batch_size: int | None = None, progress: Any = None) -> PatchGrid:
    """Path patching with each single head as the sender: a ``[layer, head]`` grid of
    (F(patched) - F(clean)) / (F(clean) - F(corrupted)), all senders batched together.

    Senders at or above the last receiver's layer cannot reach a receiver's input; they are
    not run (their cells are exactly 0: the patched run is the clean run). Each sender's runs
    start at its own layer from the cached clean residual stream and stop after the last
    receiver layer, so the cost falls with the senders' and receivers' depth."""
    import torch

    s = _setup(model, task, metric, what="path patching")
    recv = _receivers(model, receivers, receiver_input)
    pos = _check_positions(s, positions, receiver_input)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    # a sender at or above the last receiver's layer cannot reach any receiver's input: its
    # patched run is the clean run, so it is not computed
    reach = L if receiver_input == "resid_final" else max(l for l, _ in recv)
    n = reach * H
    masks = torch.eye(L * H, dtype=torch.bool).view(L * H, L, H)[:n]
    patched, clean, corr = _path_rows(model, s, masks, recv, receiver_input, pos, freeze_mlps,
                                      batch_size, progress) if n else (None, *_clean_corr(model, s, batch_size))
    c, k = s.metric(clean), s.metric(corr)
    pp = np.broadcast_to(c, (L * H, len(c))).copy()
    if n:
        pp[:n] = patched
    pp = pp.reshape(L, H, -1)
    values, problem = _ratio_cells(pp, c, k, "noise")
    comp = f"path to {receiver_input}" + (
        f" of {', '.join(format_head(h) for h in recv)}" if recv else "")
    return PatchGrid(values, ("layer", "head"), {"layer": tuple(range(L)), "head": tuple(range(H))},
                     s.metric.name, _normalization("noise"), comp, "noise", "path", pp, c, k,
                     problem)


def path_patching_effect(model: Any, task: Task, senders: Any, receivers: Any = None, *,
                         receiver_input: str = "q", positions: Sequence[str] | None = None,
                         metric: "str | Metric" = "logit_diff", freeze_mlps: bool = False,
                         seed: int | None = None, confidence: float = 0.95,
                         batch_size: int | None = None) -> Measurement:
    """The share of the clean − corrupted difference the path ``senders`` → ``receivers``
    (``receiver_input``) carries: (F(clean) - F(path patched)) / (F(clean) - F(corrupted)),
    i.e. minus ``path_patch``'s value, with a paired bootstrap interval over prompts
    (1 = the path carries the whole difference, 0 = none). The ``path_patching`` claim."""
    res = path_patch(model, task, senders, receivers, receiver_input=receiver_input,
                     positions=positions, metric=metric, freeze_mlps=freeze_mlps,
                     batch_size=batch_size)
    s = _setup(model, task, metric, what="path patching")
    details = {"senders": [format_head(h) for h in res.senders],
               "receivers": [format_head(h) for h in res.receivers],
               "receiver_input": receiver_input, "positions": res.positions,
               "freeze_mlps": freeze_mlps}
    return _ratio_measurement(
        "path patching", res.per_prompt, res.clean, res.corrupted, s.metric, seed=_seed(seed),
        confidence=confidence, model=model, task=task, what="the corrupted prompts",
        baselines={"clean": float(res.clean.mean()), "corrupted": float(res.corrupted.mean()),
                   "path patched": float(res.per_prompt.mean())}, details=details)
