"""Edge attribution scores: EAP and EAP-IG over the edges of the model's graph.

``score(u -> v)`` estimates how much the task metric changes when the edge is patched (its
receiver ``v`` reads the sender ``u``'s reference output instead of its clean one), to first
order, per prompt, summed over token positions, then averaged over the prompts:

- EAP (Syed et al. 2023): ``(a_ref_u - a_clean_u) · ∂metric/∂(input of v)`` with the gradient
  taken on the clean run: one forward and one backward pass per batch.
- EAP-IG (Hanna et al. 2024): the same difference times the gradient averaged over ``steps``
  runs whose embeddings are interpolated from the reference input to the clean input,
  ``x_k = ref + k/steps (clean - ref)`` for k = 1 .. steps (so ``steps=1`` is EAP exactly).

Senders are ``input`` (the embeddings), each head (``hook_z[h] @ W_O[h]``) and each MLP;
receivers each head's q, k and v inputs (split per head), each MLP's input and the final
residual (``logits``), exactly the points ``interventions.edges`` patches, so a score is the
linearisation of that module's own edge patch. The score is negative when patching the edge
lowers the metric.

Grouped-query attention: a key/value head's input is shared by its group's query heads, so
an edge into ``<k>``/``<v>`` of a query head scores the patch of that edge for the whole group
(each query head of the group reports it), and ``top``/``threshold`` keep a group's k/v
edges together, as ``EdgeVariants`` requires.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _validate
from ..edge_circuit import (EdgeCircuit, all_edges, n_receivers, n_senders, node_layer,
                            parse_edge, read_graph_json, receiver_index,
                            sender_index, write_graph_json)
from ..errors import CircuitCheckError, CircuitError, did_you_mean
from ..interventions import Ablation
from ..interventions._batching import length_batches, rows_per_batch
from ..interventions.edges import EdgeReference, edge_reference, kv_groups, split_qkv_inputs
from ..interventions.ablation import last_token_hook
from ..stats import t_quantile
from ..tasks import EncodedTask, Task
from ._result import ResultProtocol, jsonable
from .attribution import DIFFERENTIABLE, _torch_metric
from .metrics import get_metric

if TYPE_CHECKING:  # pragma: no cover
    import torch

METHODS = ("eap", "eap-ig")
#: Ablation names edge scores take; ``corrupted`` is the field's name for resample.
ALIASES = {"corrupted": "resample", "patching": "resample"}
#: Keep the per-prompt scores ([N, E], for bootstrap intervals of AUROC) up to this many numbers.
PER_PROMPT_LIMIT = 20_000_000


@dataclass(frozen=True, eq=False)
class EdgeScores(ResultProtocol):
    """One score per edge of the graph (``all_edges`` order), with a t interval over prompts.

    ``values[i]`` is edge ``names[i]``'s mean score, ``ci_low``/``ci_high`` its
    ``confidence`` interval (NaN with fewer than 2 prompts); ``shape`` is the
    ``(n_layers, n_heads)`` of the model they were computed on, ``kv_group`` its query heads
    per key/value head. ``per_prompt`` is the [N, E] scores per prompt (their mean is
    ``values``; kept when N x E <= ``PER_PROMPT_LIMIT``, else None), which bootstrap
    intervals over prompts (``cc.edge_auroc``) resample."""

    values: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    names: tuple[str, ...]
    shape: tuple[int, int]
    method: str = "eap-ig"
    steps: int = 5
    ablation: str = ""
    metric: str = ""
    confidence: float = 0.95
    n: int = 0
    kv_group: int = 1
    model: str = ""
    task: str = ""
    details: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- views --------------------------------------------------------------------------
    @property
    def per_prompt(self) -> np.ndarray | None:
        return self.details.get("per_prompt")

    @property
    def scores(self) -> dict[str, float]:
        """Edge name -> score."""
        return dict(zip(self.names, self.values.tolist()))

    def __len__(self) -> int:
        return len(self.names)

    def _units(self) -> list[list[int]]:
        """Edges that must be kept or dropped together, as lists of indices: one edge each,
        except a grouped-query model's k/v edges from one sender into one key/value head."""
        if self.kv_group == 1:
            return [[i] for i in range(len(self.names))]
        units: dict[Any, list[int]] = {}
        for i, name in enumerate(self.names):
            e = parse_edge(name)
            key: Any = i
            if e.qkv in ("k", "v"):
                _, layer, head = node_layer(e.receiver)
                key = (e.sender, layer, head // self.kv_group, e.qkv)
            units.setdefault(key, []).append(i)
        return list(units.values())

    def _circuit(self, idx: list[int], name: str) -> EdgeCircuit:
        return EdgeCircuit([self.names[i] for i in idx], name=name, shape=self.shape,
                           scores=self.scores)

    def ranked(self) -> list[int]:
        """Edge indices by |score|, largest first (ties in graph order), groups kept whole
        (see ``_units``): the order ``top`` takes edges in."""
        a = np.abs(self.values)
        units = self._units()
        order = sorted(range(len(units)), key=lambda u: (-float(a[units[u][0]]), units[u][0]))
        return [i for u in order for i in units[u]]

    def top(self, n: int) -> EdgeCircuit:
        """The circuit of the ``n`` edges with the largest |score| (on a grouped-query model
        up to ``kv_group - 1`` more, to keep a key/value head's edges together)."""
        n = _validate.count(n, "n", 0)
        if n > len(self.names):
            raise CircuitCheckError(f"top({n}): the graph has only {len(self.names)} edges; "
                                    f"ask for at most {len(self.names)}")
        chosen: list[int] = []
        units = {i: u for u in self._units() for i in u}
        for i in self.ranked():
            if len(chosen) >= n:
                break
            if i not in chosen:
                chosen += units[i]
        return self._circuit(chosen, f"top {n} edges ({self.method})")

    def threshold(self, t: float) -> EdgeCircuit:
        """The circuit of every edge with |score| >= ``t``, largest first."""
        t = _validate.real(t, "threshold")
        a = np.abs(self.values)
        return self._circuit([i for i in self.ranked() if a[i] >= t],
                             f"edges with |score| >= {t:g} ({self.method})")

    def check_model(self, model: Any) -> None:
        """Raise ``CircuitError`` unless ``model`` has the shape the scores were computed on."""
        L, H = int(model.cfg.n_layers), int(model.cfg.n_heads)
        if (L, H) != self.shape:
            raise CircuitError(
                f"these edge scores were computed on a model with {self.shape[0]} layers x "
                f"{self.shape[1]} heads, but this model has {L} layers x {H} heads; compute "
                "them on this model with cc.edge_scores(model, task)")

    # -- files --------------------------------------------------------------------------
    def to_json(self, path: str | Path | None, model: Any = None,
                in_graph: "EdgeCircuit | int | bool | Iterable[Any] | None" = None
                ) -> dict[str, Any]:
        """EAP-IG's graph JSON: every edge with its ``score``; ``in_graph`` marks an
        ``EdgeCircuit``'s edges, the top-n edges (an int) or the named edges; None or True
        marks every edge (nothing pruned: the scores carry the ranking); False writes no
        ``in_graph`` at all (scores only: MIB's importance-score form). Written to ``path``
        if given; ``cc.Circuit.from_file`` reads the marked edges back, ``from_file`` the
        scores. ``model`` is optional (the scores know their shape); given, it is checked
        and its ``d_model`` recorded in ``cfg``."""
        if model is not None:
            self.check_model(model)
        graph = self.shape if model is None else model
        if in_graph is False:
            return write_graph_json(path, graph, None, self.scores)
        if in_graph is None or in_graph is True:
            kept = set(self.names)
        elif isinstance(in_graph, int):
            kept = {e.name for e in self.top(in_graph).edges}
        else:
            edges = in_graph.edges if isinstance(in_graph, EdgeCircuit) else in_graph
            parsed = [parse_edge(e) for e in edges]
            if any(e.position for e in parsed):
                raise CircuitError("EAP-IG's graph JSON has no positions; drop the edges' "
                                   "positions before writing it")
            kept = {e.name for e in parsed}
            unknown = sorted(kept - set(self.names))
            if unknown:
                raise CircuitError(f"in_graph names edges not in this graph: {unknown[:3]}")
        return write_graph_json(path, graph, kept, self.scores)

    @classmethod
    def from_file(cls, path: str | Path, kv_group: int = 1) -> "EdgeScores":
        """Scores read from an EAP-IG graph JSON (ours or EAP-IG's own); an edge without a
        score scores 0. No intervals (NaN)."""
        c = read_graph_json(path, binary=False)
        return cls.from_mapping(c.scores or {}, c.shape, kv_group=kv_group,
                                method=str(path))

    @classmethod
    def from_mapping(cls, scores: dict[str, float], shape: tuple[int, int], *,
                     kv_group: int = 1, method: str = "given") -> "EdgeScores":
        """Scores from ``{edge name: score}`` for a model of ``shape`` (n_layers, n_heads)."""
        names = tuple(e.name for e in all_edges(*shape))
        known = set(names)
        for name in scores:
            if parse_edge(name).name not in known:
                raise CircuitError(f"edge {name} is not an edge of a {shape[0]}-layer, "
                                   f"{shape[1]}-head model's graph")
        canon = {parse_edge(k).name: float(v) for k, v in scores.items()}
        values = np.array([canon.get(n, 0.0) for n in names], dtype=float)
        nan = np.full(len(names), np.nan)
        return cls(values, nan, nan.copy(), names, (int(shape[0]), int(shape[1])),
                   method=method, steps=0, kv_group=kv_group)

    # -- result protocol ----------------------------------------------------------------
    def table(self) -> Any:
        """One row per edge: name, sender, receiver, input, score, interval, rank by |score|."""
        import pandas as pd

        edges = [parse_edge(n) for n in self.names]
        rank = np.empty(len(self.names), dtype=int)
        rank[self.ranked()] = np.arange(1, len(self.names) + 1)
        return pd.DataFrame({"edge": list(self.names), "sender": [e.sender for e in edges],
                             "receiver": [e.receiver for e in edges],
                             "qkv": [e.qkv for e in edges], "score": self.values,
                             "ci_low": self.ci_low, "ci_high": self.ci_high, "rank": rank})

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"kind": "edge_scores", "method": self.method, "steps": self.steps,
                         "ablation": self.ablation, "metric": self.metric, "n": self.n,
                         "shape": list(self.shape), "kv_group": self.kv_group,
                         "confidence": self.confidence, "model": self.model, "task": self.task,
                         "scores": self.scores,
                         "ci": {k: [lo, hi] for k, lo, hi in
                                zip(self.names, self.ci_low.tolist(), self.ci_high.tolist())},
                         **{k: v for k, v in self.details.items() if k == "seconds"}})

    def summary(self) -> str:
        how = self.method + (f" ({self.steps} steps)" if self.method == "eap-ig" else "")
        top = ", ".join(f"{self.names[i]} {self.values[i]:+.3g}" for i in self.ranked()[:3])
        return (f"edge scores {how}: {len(self.names)} edges, {self.metric}, {self.ablation}, "
                f"n={self.n} prompts; largest |score|: {top}")


def parse_method(method: Any) -> str:
    """``eap`` or ``eap-ig`` (case and ``_`` forgiven), else a ``CircuitCheckError``."""
    key = str(method).strip().lower().replace("_", "-") if isinstance(method, str) else None
    if key not in METHODS:
        raise CircuitCheckError(
            f"unknown edge-score method {method!r}{did_you_mean(str(method), METHODS)}; use "
            "'eap' (attribution patching: one gradient at the clean input) or 'eap-ig' "
            "(integrated gradients from the reference input, `steps` gradients)")
    return key


def parse_ablation(ablation: Any) -> Ablation:
    """An ablation for edge scores (``corrupted`` = resample); layer-mean is refused."""
    kind = Ablation.parse(ALIASES.get(ablation, ablation) if isinstance(ablation, str)
                          else ablation)
    if kind is Ablation.LAYER_MEAN:
        raise CircuitCheckError("layer-mean has no per-edge reference; use 'resample' "
                                "(alias 'corrupted'), 'zero', 'mean' or 'mean-by-template'")
    return kind


def edge_scores(model: Any, task: Task, method: str = "eap-ig", *, steps: int = 5,
                ablation: str = "resample", metric: str = "logit_diff",
                reference: str | None = None, confidence: float = 0.95,
                batch_size: int | None = None) -> EdgeScores:
    """Attribution scores of every edge of ``model``'s graph on ``task`` (module docstring).

    ``ablation`` picks each sender's reference output as edge patching does: ``resample``
    (alias ``corrupted``: the paired corrupted prompt), ``zero``, ``mean`` or
    ``mean-by-template`` (over ``reference`` prompts). ``metric`` must be differentiable.
    ``steps`` is EAP-IG's number of interpolation points (EAP uses one gradient)."""
    import torch

    method = parse_method(method)
    steps = _validate.count(steps, "steps", 1) if method == "eap-ig" else 1
    kind = parse_ablation(ablation)
    confidence = _validate.open_unit(confidence, "confidence")
    if not isinstance(task, Task):
        raise CircuitCheckError(f"task must be a cc.Task, got {type(task).__name__}")
    if getattr(model.cfg, "parallel_attn_mlp", False):
        raise CircuitError("edge scores are not supported on parallel-attention models "
                           "(attention and MLP read the same residual stream)")
    enc = task.encode(model)
    m = get_metric(metric, has_wrong=enc.wrong is not None, has_sets=enc.good is not None)
    if m.name not in DIFFERENTIABLE:
        raise CircuitCheckError(f"edge scores need a differentiable metric; {m.name!r} is not; "
                                f"use one of {list(DIFFERENTIABLE)}")
    t0 = time.perf_counter()
    ref = edge_reference(model, enc, kind, reference)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    edges = all_edges(L, H)
    S = n_senders(L, H)
    flat = torch.tensor([receiver_index(e.receiver, e.qkv, H, L) * S + sender_index(e.sender, H)
                         for e in edges])
    total = torch.zeros(len(edges), dtype=torch.float64)
    total_sq = torch.zeros(len(edges), dtype=torch.float64)
    keep_rows = enc.n * len(edges) <= PER_PROMPT_LIMIT
    per_prompt: list[np.ndarray] = []
    table = None if ref.blocks is None else torch.cat(ref.blocks, dim=2)  # [K, P, S, d]
    with split_qkv_inputs(model):
        for rows in length_batches(enc.lengths, _rows(model, enc), device=model.cfg.device):
            per = _batch_scores(model, enc, rows, ref, table, m.name, steps)  # [B, R * S]
            got = per[:, flat].double().cpu()
            total += got.sum(0)
            total_sq += (got ** 2).sum(0)
            if keep_rows:
                per_prompt.append((rows.cpu().numpy(), got.float().numpy()))
    n = enc.n
    mean = (total / n).numpy()
    if n >= 2:
        var = np.maximum((total_sq.numpy() - n * mean ** 2) / (n - 1), 0.0)
        half = t_quantile(0.5 + confidence / 2, n - 1) * np.sqrt(var / n)
        lo, hi = mean - half, mean + half
    else:
        lo = hi = np.full(len(edges), np.nan)
    return EdgeScores(mean, lo, hi, tuple(e.name for e in edges), (L, H), method=method,
                      steps=steps, ablation=ref.describe(), metric=m.name,
                      confidence=confidence, n=n, kv_group=kv_groups(model),
                      model=getattr(model, "cc_name", ""), task=task.name,
                      details={"seconds": time.perf_counter() - t0,
                               **({"per_prompt": _in_order(per_prompt, n)} if keep_rows
                                  else {})})


def _in_order(parts: list[tuple[np.ndarray, np.ndarray]], n: int) -> np.ndarray:
    """The per-prompt score rows of every batch, back in prompt order: [N, E] float32."""
    out = np.empty((n, parts[0][1].shape[1]), dtype=np.float32)
    for rows, got in parts:
        out[rows] = got
    return out


def _rows(model: Any, enc: EncodedTask) -> int:
    """Rows per gradient pass: the backward keeps every layer's activations alive (not one
    layer's, as ``rows_per_batch`` assumes), plus each row's sender differences and
    receiver gradients."""
    import torch

    cfg = model.cfg
    P = enc.tokens.shape[1]
    elem = torch.finfo(cfg.dtype).bits // 8
    L, H = cfg.n_layers, cfg.n_heads
    extra = P * (n_senders(L, H) + 2 * n_receivers(L, H)) * cfg.d_model * elem
    return max(1, rows_per_batch(model, P, extra_per_row=extra) // max(3, L // 2))


def _batch_scores(model: Any, enc: EncodedTask, rows: "torch.Tensor", ref: EdgeReference,
                  table: "torch.Tensor | None", metric: str, steps: int) -> "torch.Tensor":
    """Per-prompt scores of every (receiver, sender) pair for prompts ``rows``: [B, R * S].
    The gradients of ``steps`` interpolated runs are averaged; the last run (k = steps) is
    the clean run and gives the clean sender outputs."""
    import torch

    device = model.cfg.device
    P = int(enc.lengths[rows].max())
    ref_all = None if table is None else table[ref.row_of[rows].to(table.device), :P].to(device)
    grads, clean = None, None
    for k in range(1, steps + 1):
        g, cap = _grad_pass(model, enc, rows, P, metric, k / steps,
                            None if ref_all is None else ref_all[:, :, 0], k == steps)
        grads = g if grads is None else grads + g
        clean = cap if cap is not None else clean
    delta = (-clean if ref_all is None else ref_all.to(clean.dtype) - clean)
    valid = (torch.arange(P, device=device)[None, :] < enc.lengths[rows].to(device)[:, None])
    delta = delta * valid[:, :, None, None].to(delta.dtype)
    per = torch.einsum("bprd,bpsd->brs", (grads / steps).float(), delta.float())
    return per.reshape(per.shape[0], -1)


def _grad_pass(model: Any, enc: EncodedTask, rows: "torch.Tensor", P: int, metric: str,
               alpha: float, ref_in: "torch.Tensor | None", capture: bool
               ) -> tuple["torch.Tensor", "torch.Tensor | None"]:
    """One forward and backward pass with the embeddings at ``ref + alpha (clean - ref)``:
    the metric's gradient at every receiver input, [B, P, R, d], and (``capture``) every
    sender's output, [B, P, S, d]."""
    import torch

    L, H = model.cfg.n_layers, model.cfg.n_heads
    group = kv_groups(model)
    device = model.cfg.device
    recv: dict[str, torch.Tensor] = {}
    sent: dict[int, torch.Tensor] = {}

    def embed(x: torch.Tensor, hook: Any) -> torch.Tensor:
        x = x.detach()
        if capture:
            sent[0] = x[:, :, None]
        if alpha != 1.0:
            base = torch.zeros_like(x) if ref_in is None else ref_in.to(x.device, x.dtype)
            x = base + alpha * (x - base)
        return x.clone().requires_grad_(True)  # the graph's root (weights may not need grad)

    def receiver(key: str):
        def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
            y = x.view_as(x)  # its own autograd node: the gradient is this receiver's alone
            recv[key] = y
            return y
        return hook

    def sender(slot: int, W_O: "torch.Tensor | None" = None):
        def hook(x: torch.Tensor, hook: Any) -> None:
            x = x.detach()
            sent[slot] = x[:, :, None] if W_O is None else torch.einsum(
                "bphe,hed->bphd", x, W_O.detach().to(x.device, x.dtype))
        return hook

    hooks: list = [("blocks.0.hook_resid_pre", embed)]
    keys: list[str] = []
    for l in range(L):
        for x in ("q", "k", "v"):
            keys.append(f"blocks.{l}.hook_{x}_input")
        keys.append(f"blocks.{l}.ln2.hook_in")
        if capture:
            hooks += [(f"blocks.{l}.attn.hook_z", sender(2 * l + 1, model.blocks[l].attn.W_O)),
                      (f"blocks.{l}.hook_mlp_out", sender(2 * l + 2))]
    keys.append("ln_final.hook_in")
    hooks += [(k, receiver(k)) for k in keys]
    prompts = rows.cpu()
    last = (enc.lengths[prompts] - 1).to(device)
    with torch.enable_grad():
        logits = model.run_with_hooks(enc.tokens[prompts, :P].to(device),
                                      fwd_hooks=[*hooks, last_token_hook(last)])[:, 0]
        value = _torch_metric(metric, logits.float(), enc, prompts)
        missing = [k for k in keys if k not in recv]
        if missing:
            raise CircuitCheckError(f"edge scores: hook {missing[0]} never ran on this model, so "
                                    "its receivers' gradients are unknown")
        got = torch.autograd.grad(value.sum(), [recv[k] for k in keys], allow_unused=True)
    parts = []
    for k, g in zip(keys, got):
        g = torch.zeros_like(recv[k]) if g is None else g.detach()
        if g.dim() == 3:
            g = g[:, :, None]
        elif group > 1 and ("hook_k_input" in k or "hook_v_input" in k):
            g = g.repeat_interleave(group, dim=2)  # each query head: its key/value head's
        parts.append(g)
    grads = torch.cat(parts, dim=2)
    clean = None
    if capture:
        clean = torch.cat([sent[i] for i in range(2 * L + 1)], dim=2)
    return grads, clean


def with_kv_group(scores: EdgeScores, model: Any) -> EdgeScores:
    """``scores`` checked against ``model``'s shape, carrying its key/value grouping."""
    scores.check_model(model)
    group = kv_groups(model)
    return scores if scores.kv_group == group else replace(scores, kv_group=group)


__all__ = ["EdgeScores", "METHODS", "edge_scores", "parse_ablation", "parse_method",
           "with_kv_group"]
