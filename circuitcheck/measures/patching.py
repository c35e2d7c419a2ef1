"""Activation patching, attribution patching, path patching, attention ablation and DLA.

Conventions (clean = the task's prompts, corrupted = their counterfactual pairs, F = the
mean metric over prompts, default the logit difference at each prompt's last token):

- **denoising** patches clean activations into the corrupted run; a cell holds
  (F(patched) - F(corrupted)) / (F(clean) - F(corrupted)): 1 = the patch restores the clean
  behaviour, 0 = no effect (the TransformerLens convention).
- **noising** patches corrupted activations into the clean run; a cell holds
  (F(patched) - F(clean)) / (F(clean) - F(corrupted)): -1 = the patch destroys the clean
  behaviour as much as the whole corruption does, 0 = no effect. Path patching is noising.

A cell over positions that not every prompt has (``per_position=True`` with ragged prompts)
is averaged over the prompts that have it, clean and corrupted baselines included.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..circuit import Head, format_head, parse_head
from ..errors import CircuitCheckError, CircuitError
from ..interventions import Readout
from ..interventions.ablation import as_readout, last_token_hook, readout
from ..interventions.attention import check_mode, run_attention_ablation
from ..interventions.patching import (HEAD_COMPONENTS, RESIDUAL_COMPONENTS, Chunk, HookList,
                                      Patches, cache_run, check_component, check_direction,
                                      check_paired, hook_name, n_units, run_patches, run_rows)
from ..stats import bootstrap_ci
from ..tasks import EncodedTask, Task
from ._measurement import Measurement
from .metrics import Metric, get_metric

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Metrics with a gradient, for attribution patching.
DIFFERENTIABLE = ("logit_diff", "logprob", "prob", "prob_diff")


# -- results -------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class PatchGrid:
    """A labelled array of normalised patching effects.

    ``values`` has axes ``dims`` (e.g. ``("layer", "head")`` or ``("layer", "pos", "head")``),
    labelled by ``coords[dim]``. ``per_prompt`` holds the raw metric of each patched run
    (``dims + ("prompt",)``; NaN where a prompt has no such position), ``clean`` and
    ``corrupted`` the unpatched runs' metric per prompt. ``method`` is ``exact`` or
    ``attribution`` (a first-order estimate). ``problem`` is set (and ``values`` NaN) when the
    model does not tell clean from corrupted, so there is nothing to normalise by.
    """

    values: np.ndarray
    dims: tuple[str, ...]
    coords: dict[str, tuple[Any, ...]]
    metric: str
    normalization: str
    component: str
    direction: str
    method: str = "exact"
    per_prompt: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    clean: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    corrupted: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    problem: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    def __getitem__(self, key: Any) -> Any:
        """``grid["9.9"]`` / ``grid[9, 9]`` for a (layer, head) grid; else numpy indexing."""
        if self.dims == ("layer", "head") and (isinstance(key, str) or (
                isinstance(key, tuple) and len(key) == 2)):
            layer, head = parse_head(key)
            return float(self.values[layer, head])
        return self.values[key]

    def top(self, k: int = 5, *, by_abs: bool = True) -> list[tuple[tuple[Any, ...], float]]:
        """The k largest cells (by absolute value by default) as (labels, value)."""
        flat = np.nan_to_num(np.abs(self.values) if by_abs else self.values, nan=-np.inf)
        order = np.argsort(-flat, axis=None, kind="stable")[:k]
        out = []
        for i in order:
            idx = np.unravel_index(i, self.values.shape)
            labels = tuple(self.coords[d][j] for d, j in zip(self.dims, idx))
            out.append((labels, float(self.values[idx])))
        return out

    def heatmap(self, outline: Iterable[Any] = ()) -> dict[str, Any]:
        """A report heatmap (``{"data", "label", "outline"}``) of a 2-D grid."""
        if self.values.ndim != 2:
            raise CircuitCheckError(f"a heatmap needs a 2-D grid; this one has dims {self.dims}")
        data = [[None if not np.isfinite(v) else float(v) for v in row] for row in self.values]
        label = (f"{self.method} {self.direction} patching of {self.component}: "
                 f"{self.normalization}")
        return {"data": data, "label": label,
                "outline": [list(parse_head(h)) for h in outline]}

    def to_dict(self) -> dict[str, Any]:
        return {"dims": list(self.dims), "coords": {k: list(v) for k, v in self.coords.items()},
                "values": [None if not np.isfinite(v) else float(v)
                           for v in self.values.ravel()],
                "shape": list(self.shape), "metric": self.metric,
                "normalization": self.normalization, "component": self.component,
                "direction": self.direction, "method": self.method, "problem": self.problem}


def _normalization(direction: str) -> str:
    if direction == "denoise":
        return "(patched - corrupted) / (clean - corrupted)"
    return "(patched - clean) / (clean - corrupted)"


# -- shared set-up ---------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class _Setup:
    model: Any
    task: Task
    enc: EncodedTask
    metric: Metric


def _setup(model: Any, task: Task, metric: "str | Metric", *, paired: bool = True,
           what: str = "activation patching") -> _Setup:
    if not isinstance(task, Task):
        raise CircuitCheckError(f"task must be a cc.Task, got {type(task).__name__}")
    enc = task.encode(model)
    if paired:
        check_paired(enc, what)
    m = get_metric(metric, has_wrong=enc.wrong is not None, has_sets=enc.good is not None)
    return _Setup(model, task, enc, m)


def _heads(model: Any, heads: Any, what: str = "heads") -> list[Head]:
    """Parse and range-check a head or a list of heads."""
    if isinstance(heads, str) or (isinstance(heads, tuple) and len(heads) == 2
                                  and all(isinstance(x, int) for x in heads)):
        heads = [heads]
    out = [parse_head(h) for h in heads]
    if not out:
        raise CircuitError(f"name at least one head in {what}")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    for layer, h in out:
        if not (0 <= layer < L and 0 <= h < H):
            raise CircuitError(
                f"head {layer}.{h} in {what} is out of range: the model has {L} layers "
                f"(0..{L - 1}) and {H} heads per layer (0..{H - 1})")
    return list(dict.fromkeys(out))


def _head_mask(model: Any, heads: Sequence[Head]) -> "torch.Tensor":
    import torch

    m = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool)
    for layer, h in heads:
        m[layer, h] = True
    return m


def _position_index(s: _Setup, positions: Sequence[str]) -> "torch.Tensor":
    """[N, K] token index of each named position per prompt."""
    import torch

    for p in positions:
        s.task.check_position(p)
    return torch.stack([s.enc.positions[p] for p in positions], dim=1)


def _ratio_cells(patched: np.ndarray, s_clean: np.ndarray, s_corr: np.ndarray,
                 direction: str) -> tuple[np.ndarray, str | None]:
    """Normalise per-prompt patched metrics ([..., N], NaN where absent) cell by cell."""
    valid = np.isfinite(patched)
    count = valid.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(valid, patched, 0).sum(-1) / count
        clean = (valid * s_clean).sum(-1) / count
        corr = (valid * s_corr).sum(-1) / count
        base = corr if direction == "denoise" else clean
        den = clean - corr
        gap = abs(float(s_clean.mean() - s_corr.mean()))
        scale = max(abs(float(s_clean.mean())), abs(float(s_corr.mean())), 1e-12)
        problem = None
        if gap <= 1e-6 * scale:
            problem = ("the model's metric is the same on clean and corrupted prompts "
                       f"({s_clean.mean():.4g} vs {s_corr.mean():.4g}), so there is nothing for "
                       "a patch to restore; check the task's corrupted prompts and answers")
            return np.full(mean_p.shape, np.nan), problem
        return (mean_p - base) / den, problem


def _grid(values_pp: np.ndarray, dims: tuple[str, ...], coords: dict[str, tuple[Any, ...]],
          s: _Setup, clean: Readout, corr: Readout, component: str, direction: str,
          method: str = "exact") -> PatchGrid:
    c, k = s.metric(clean), s.metric(corr)
    values, problem = _ratio_cells(values_pp, c, k, direction)
    return PatchGrid(values, dims, coords, s.metric.name, _normalization(direction), component,
                     direction, method, values_pp, c, k, problem)


# -- exact activation patching --------------------------------------------------------------

def _units(model: Any, s: _Setup, component: str, per_position: bool,
           positions: Sequence[str] | None
           ) -> tuple[Patches, "torch.Tensor", tuple[int, ...], tuple[str, ...],
                      dict[str, tuple[Any, ...]]]:
    """Every (layer, [position,] [head]) unit x every prompt that has it, as patched rows, and
    the flat grid cell each row's value belongs to."""
    import torch

    enc = s.enc
    L, N, P = s.model.cfg.n_layers, enc.n, enc.tokens.shape[1]
    is_head = component in HEAD_COMPONENTS
    U = n_units(model, component) if is_head else 1
    if positions is not None:
        pos_of = _position_index(s, positions)  # [N, K]
        pos_labels: tuple[Any, ...] = tuple(positions)
    elif per_position:
        pos_of = torch.arange(P).expand(N, P)
        pos_labels = tuple(range(P))
    else:
        pos_of, pos_labels = None, ()
    K = 1 if pos_of is None else pos_of.shape[1]
    # unit grid [L, K, U] x prompts
    lay, kk, uu, pp = torch.meshgrid(torch.arange(L), torch.arange(K), torch.arange(U),
                                     torch.arange(N), indexing="ij")
    lay, kk, uu, pp = lay.flatten(), kk.flatten(), uu.flatten(), pp.flatten()
    if pos_of is None:
        pos_mask = torch.ones(len(pp), P, dtype=torch.bool)
        keep = torch.ones(len(pp), dtype=torch.bool)
    else:
        where = pos_of[pp, kk]  # [R]
        keep = where < enc.lengths[pp]
        pos_mask = torch.arange(P)[None, :] == where[:, None]
    lay, kk, uu, pp, pos_mask = lay[keep], kk[keep], uu[keep], pp[keep], pos_mask[keep]
    R = len(pp)
    layer_mask = torch.zeros(R, L, dtype=torch.bool)
    layer_mask[torch.arange(R), lay] = True
    head_mask = torch.zeros(R, L, U, dtype=torch.bool)
    if is_head:
        head_mask[torch.arange(R), lay, uu] = True
    else:
        head_mask[:] = True
    patches = Patches(pp, layer_mask, head_mask, pos_mask)
    shape = (L,) + ((K,) if pos_of is not None else ()) + ((U,) if is_head else ())
    dims = ("layer",) + (("pos",) if pos_of is not None else ()) + (
        ("kv_head" if U != s.model.cfg.n_heads else "head",) if is_head else ())
    coords: dict[str, tuple[Any, ...]] = {"layer": tuple(range(L))}
    if pos_of is not None:
        coords["pos"] = pos_labels
    if is_head:
        coords[dims[-1]] = tuple(range(U))
    return patches, (lay * K + kk) * U + uu, shape, dims, coords


def _sweep(model: Any, s: _Setup, component: str, per_position: bool,
           positions: Sequence[str] | None, direction: str, batch_size: int | None) -> PatchGrid:
    enc = s.enc
    L = model.cfg.n_layers
    patches, cell, shape, dims, coords = _units(model, s, component, per_position, positions)
    src_toks, base_toks = ((enc.tokens, enc.corrupted) if direction == "denoise"
                           else (enc.corrupted, enc.tokens))
    starts = sorted(set(patches.first_layer.tolist()))
    src_names = [hook_name(component, l) for l in range(L)]
    base_names = [f"blocks.{l}.hook_resid_pre" for l in starts
                  if l > 0 or component == "resid_pre"]
    src_acts, src_read = cache_run(model, enc, src_toks, src_names, batch_size=batch_size)
    base_acts, base_read = cache_run(model, enc, base_toks, base_names, batch_size=batch_size)
    source = {l: src_acts[hook_name(component, l)] for l in range(L)}
    base_resid = {int(n.split(".")[1]): a for n, a in base_acts.items()}
    out = run_patches(model, enc, patches, component, direction, source, base_resid,
                      batch_size=batch_size, reads=s.metric.reads or None)
    vals = s.metric(out)
    cells = int(np.prod(shape))
    pp = np.full((cells, enc.n), np.nan)
    pp[cell.numpy(), patches.prompt_of.numpy()] = vals
    clean, corr = (src_read, base_read) if direction == "denoise" else (base_read, src_read)
    return _grid(pp.reshape(shape + (enc.n,)), dims, coords, s, clean, corr, component,
                 direction)


def patch_heads(model: Any, task: Task, *, component: str = "z", per_position: bool = False,
                positions: Sequence[str] | None = None, direction: str = "denoise",
                metric: "str | Metric" = "logit_diff", batch_size: int | None = None
                ) -> PatchGrid:
    """Activation patching of every head, exact: one patched run per (head, prompt).

    ``component``: the head's output ``z`` (what it writes), or its ``q``, ``k``, ``v`` or
    attention ``pattern``. All positions at once (``[layer, head]``), or each absolute position
    (``per_position=True``, ``[layer, pos, head]``), or named task positions
    (``positions=["S2", "end"]``). On grouped-query models k and v are per key/value head
    (dim ``kv_head``). Runs start at the patched layer from the cached base residual stream and
    read logits only at each prompt's last token (see ``interventions.patching``).
    """
    check_component(component, HEAD_COMPONENTS)
    check_direction(direction)
    s = _setup(model, task, metric)
    return _sweep(model, s, component, per_position, positions, direction, batch_size)


def patch_residual(model: Any, task: Task, *, component: str = "resid_pre",
                   per_position: bool = True, positions: Sequence[str] | None = None,
                   direction: str = "denoise", metric: "str | Metric" = "logit_diff",
                   batch_size: int | None = None) -> PatchGrid:
    """Activation patching of ``resid_pre``, ``attn_out`` or ``mlp_out``: ``[layer, pos]``
    (or ``[layer]`` with ``per_position=False``, or named ``positions``)."""
    check_component(component, RESIDUAL_COMPONENTS)
    check_direction(direction)
    s = _setup(model, task, metric)
    return _sweep(model, s, component, per_position, positions, direction, batch_size)


def patch_head_set(model: Any, task: Task, heads: Any, *, component: str = "z",
                   direction: str = "denoise", metric: "str | Metric" = "logit_diff",
                   batch_size: int | None = None) -> tuple[np.ndarray, Readout, Readout]:
    """Patch ``heads`` together (all positions): per-prompt patched metric, clean and corrupted
    readouts ([N] each)."""
    import torch

    check_component(component, HEAD_COMPONENTS)
    check_direction(direction)
    s = _setup(model, task, metric)
    enc = s.enc
    hs = _heads(model, heads)
    if n_units(model, component) != model.cfg.n_heads:
        raise CircuitError(
            f"component {component!r} is per key/value head on this model ({model.cfg.n_heads} "
            f"query heads share {n_units(model, component)}), so it cannot be patched for a "
            "query head alone; use component='z', 'q' or 'pattern'")
    L, N, P = model.cfg.n_layers, enc.n, enc.tokens.shape[1]
    hm = _head_mask(model, hs)
    layer_mask = hm.any(1)
    patches = Patches(torch.arange(N), layer_mask.expand(N, L).clone(),
                      hm.expand(N, -1, -1).clone(), torch.ones(N, P, dtype=torch.bool))
    first = int(patches.first_layer[0])
    src_toks, base_toks = ((enc.tokens, enc.corrupted) if direction == "denoise"
                           else (enc.corrupted, enc.tokens))
    src_acts, src_read = cache_run(model, enc, src_toks, [hook_name(component, l) for l in
                                                          range(L) if layer_mask[l]],
                                   batch_size=batch_size)
    base_acts, base_read = cache_run(model, enc, base_toks, [f"blocks.{first}.hook_resid_pre"]
                                     if first > 0 else [], batch_size=batch_size)
    source = {l: src_acts[hook_name(component, l)] for l in range(L) if layer_mask[l]}
    base_resid = {first: base_acts[f"blocks.{first}.hook_resid_pre"]} if first > 0 else {}
    out = run_patches(model, enc, patches, component, direction, source, base_resid,
                      batch_size=batch_size, reads=s.metric.reads or None)
    clean, corr = (src_read, base_read) if direction == "denoise" else (base_read, src_read)
    return s.metric(out), clean, corr


# -- attribution patching ----------------------------------------------------------------

def _torch_metric(name: str, logits: "torch.Tensor", enc: EncodedTask,
                  prompts: "torch.Tensor") -> "torch.Tensor":
    """A differentiable per-row metric from last-token logits [B, vocab]."""
    import torch

    sel = torch.arange(len(prompts), device=logits.device)
    ans = enc.answers[prompts].to(logits.device)
    if name == "logit_diff":
        return logits[sel, ans] - logits[sel, enc.wrong[prompts].to(logits.device)]
    logprob = logits.log_softmax(-1)
    if name == "logprob":
        return logprob[sel, ans]
    if name == "prob":
        return logprob[sel, ans].exp()
    probs = logprob.exp()
    good = (probs * enc.good[prompts].to(probs.device)).sum(-1)
    if enc.bad is None:
        return good
    return good - (probs * enc.bad[prompts].to(probs.device)).sum(-1)


def attribution_patch_heads(model: Any, task: Task, *, component: str = "z",
                            per_position: bool = False, direction: str = "denoise",
                            metric: str = "logit_diff", batch_size: int | None = None
                            ) -> PatchGrid:
    """Attribution patching: every head's patching effect from one forward and one backward
    pass (Nanda 2023), the first-order estimate (source - base activation) · ∂metric/∂activation
    at the base run, summed over the head's positions (and dimensions).

    Denoising differentiates the corrupted run and uses clean - corrupted activations; noising
    the reverse. Same layout and normalisation as ``patch_heads``; ``method="attribution"``.
    It is exact for a patch the metric responds to linearly and can be far off otherwise (e.g.
    patches that move attention patterns a lot): check it against ``patch_heads`` on a sample.
    """
    import torch

    check_component(component, HEAD_COMPONENTS)
    check_direction(direction)
    name = metric.name if isinstance(metric, Metric) else metric
    if name not in DIFFERENTIABLE:
        raise CircuitCheckError(
            f"attribution patching needs a differentiable metric; {name!r} is not; use one of "
            f"{list(DIFFERENTIABLE)} or exact patching (cc.patch_heads)")
    s = _setup(model, task, metric, what="attribution patching")
    enc = s.enc
    L, N, P = model.cfg.n_layers, enc.n, enc.tokens.shape[1]
    names = [hook_name(component, l) for l in range(L)]
    src_toks, base_toks = ((enc.tokens, enc.corrupted) if direction == "denoise"
                           else (enc.corrupted, enc.tokens))
    src_acts, src_read = cache_run(model, enc, src_toks, names, batch_size=batch_size)
    attr: list[torch.Tensor] = []  # per chunk [B, L, (P,) U]
    parts = []
    bs = batch_size or max(1, _rows(model, P) // 3)  # activations + graph stay alive
    for start in range(0, N, bs):
        prompts = torch.arange(start, min(start + bs, N))
        base_vals, logits = _forward_backward(model, enc, base_toks, prompts, names, name)
        cells = []
        for n in names:
            a, g = base_vals[n]
            src = _trim(component, src_acts[n][prompts.to(src_acts[n].device)], a.shape)
            cells.append(_reduce(component, (src - a) * g, per_position))
        chunk = torch.stack(cells, 1).cpu().float()  # [B, L, (P_chunk,) U]
        if per_position:  # chunks trim padding differently: pad back to the task's length
            chunk = torch.nn.functional.pad(chunk, (0, 0, 0, P - chunk.shape[2]))
        attr.append(chunk)
        parts.append((prompts, readout(model, logits, enc, prompts)))
    base_read = as_readout(parts, N)
    est = torch.cat(attr).numpy().astype(float)  # [N, L, (P,) U]
    base_metric = s.metric(base_read)
    est = est + base_metric.reshape((N,) + (1,) * (est.ndim - 1))
    if per_position:  # positions a prompt does not have are not patches
        valid = (np.arange(P)[None, :] < enc.lengths.numpy()[:, None])
        est = np.where(valid[:, None, :, None], est, np.nan)
    pp = np.moveaxis(est, 0, -1)  # [L, (P,) U, N]
    U = pp.shape[-2]
    dims = ("layer",) + (("pos",) if per_position else ()) + (
        "kv_head" if U != model.cfg.n_heads else "head",)
    coords = {"layer": tuple(range(L)), dims[-1]: tuple(range(U))}
    if per_position:
        coords["pos"] = tuple(range(P))
    clean, corr = (src_read, base_read) if direction == "denoise" else (base_read, src_read)
    return _grid(pp, dims, coords, s, clean, corr, component, direction, "attribution")


def _rows(model: Any, P: int) -> int:
    from ..interventions._batching import rows_per_batch

    return rows_per_batch(model, P)


def _forward_backward(model: Any, enc: EncodedTask, tokens: "torch.Tensor",
                      prompts: "torch.Tensor", names: Sequence[str], metric: str
                      ) -> tuple[dict[str, tuple["torch.Tensor", "torch.Tensor"]],
                                 "torch.Tensor"]:
    """Activations ``names`` and the gradient of the summed per-prompt metric w.r.t. them."""
    import torch

    device = model.cfg.device
    P = int(enc.lengths[prompts].max())
    last = (enc.lengths[prompts] - 1).to(device)
    saved: dict[str, torch.Tensor] = {}

    def root(x: torch.Tensor, hook: Any) -> torch.Tensor:
        # the graph's root: gradients flow even when the weights do not require them
        return x if x.requires_grad else x.detach().requires_grad_(True)

    def save(name: str) -> Any:
        def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
            saved[name] = x
            return x
        return hook

    with torch.enable_grad():
        logits = model.run_with_hooks(
            tokens[prompts, :P].to(device),
            fwd_hooks=[("blocks.0.hook_resid_pre", root)] + [(n, save(n)) for n in names]
            + [last_token_hook(last)])[:, 0]
        value = _torch_metric(metric, logits.float(), enc, prompts)
        grads = torch.autograd.grad(value.sum(), [saved[n] for n in names], allow_unused=True)
    out = {}
    for n, g in zip(names, grads):
        a = saved[n].detach()
        out[n] = (a, torch.zeros_like(a) if g is None else g.detach())
    return out, logits.detach()


def _trim(component: str, src: "torch.Tensor", shape: "torch.Size") -> "torch.Tensor":
    """The source activation cut to a chunk's (trimmed) number of positions."""
    P = shape[2] if component == "pattern" else shape[1]
    return src[:, :, :P, :P] if component == "pattern" else src[:, :P]


def _reduce(component: str, prod: "torch.Tensor", per_position: bool) -> "torch.Tensor":
    """Sum an attribution product to [B, (P,) U]: over d_head, or over keys for patterns."""
    if component == "pattern":  # [B, H, Pq, Pk]
        out = prod.sum(-1)  # [B, H, Pq]
        return out.transpose(1, 2) if per_position else out.sum(-1)
    out = prod.sum(-1)  # [B, P, U]
    return out if per_position else out.sum(1)


def correlation(a: PatchGrid, b: PatchGrid) -> float:
    """Pearson correlation of two grids' finite cells (e.g. attribution vs exact)."""
    x, y = a.values.ravel(), b.values.ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2 or np.std(x[ok]) == 0 or np.std(y[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(x[ok], y[ok])[0, 1])


# -- path patching -------------------------------------------------------------------------

RECEIVER_INPUTS = ("q", "k", "v", "resid_final")


@dataclass(frozen=True, eq=False)
class PathPatchResult:
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
    if receiver_input in ("k", "v") and n_units(model, receiver_input) != model.cfg.n_heads:
        raise CircuitError(
            f"receiver_input={receiver_input!r} is ambiguous on this model: its "
            f"{model.cfg.n_heads} query heads share {n_units(model, receiver_input)} key/value "
            "heads, so one head's keys/values cannot be patched alone; use receiver_input='q' "
            "or 'resid_final'")
    return out


def _path_rows(model: Any, s: _Setup, senders: "torch.Tensor", receivers: tuple[Head, ...],
               receiver_input: str, positions: Sequence[str] | None, freeze_mlps: bool,
               batch_size: int | None) -> tuple[np.ndarray, Readout, Readout]:
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
    recv_names = [hook_name(receiver_input, l) for l in recv_layers]
    starts = sorted(set(first.tolist()) | ({recv_layers[0]} if recv_layers else set()))
    resid_names = [f"blocks.{l}.hook_resid_pre" for l in starts if l > 0]
    clean_acts, clean_read = cache_run(model, enc, enc.tokens, z + mlp + recv_names + resid_names,
                                       batch_size=batch_size)
    corr_acts, corr_read = cache_run(model, enc, enc.corrupted, z, batch_size=batch_size)
    variant = torch.arange(V).repeat_interleave(N)
    prompt_of = torch.arange(N).repeat(V)
    R = len(prompt_of)
    heads_at = {l: [h for ll, h in receivers if ll == l] for l in recv_layers}
    captured = {l: clean_acts[hook_name(receiver_input, l)][:, :, heads_at[l]][prompt_of.to(
        clean_acts[z[0]].device)].clone() for l in recv_layers}  # [R, P, n_recv, D]

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
            out.append((z[layer], lambda x, hook, v=frozen: v.to(x.dtype)))
            if freeze_mlps:
                mc = clean_acts[mlp[layer]][chunk.prompts.to(dev), :chunk.P]
                out.append((mlp[layer], lambda x, hook, v=mc: v.to(x.dtype)))
        for layer in recv_layers if not final else ():
            def capture(x: torch.Tensor, hook: Any, layer: int = layer,
                        rows: torch.Tensor = chunk.rows) -> None:
                captured[layer][rows.to(x.device), :x.shape[1]] = x[:, :, heads_at[layer]]
            out.append((hook_name(receiver_input, layer), capture))
        return out

    stop = None if final or recv_layers[-1] + 1 >= L else recv_layers[-1] + 1
    step2 = run_rows(model, enc, prompt_of, tokens=enc.tokens, lengths=enc.lengths,
                     hooks=freeze_hooks, start_layer=first[variant], start_resid=start_resid,
                     stop_at_layer=stop, batch_size=batch_size, reads=s.metric.reads or None)
    if final:
        return s.metric(step2).reshape(V, N), clean_read, corr_read
    pos_mask = torch.ones(N, P, dtype=torch.bool)
    if positions is not None:
        idx = _position_index(s, positions)
        pos_mask = (torch.arange(P)[None, None, :] == idx[:, :, None]).any(1)

    def receive_hooks(chunk: Chunk) -> HookList:
        out: HookList = []
        dev = chunk.device
        pm = pos_mask[chunk.prompts, :chunk.P].to(dev)[:, :, None, None]
        for layer in recv_layers:
            new = captured[layer][chunk.rows.to(dev), :chunk.P]
            idx = heads_at[layer]

            def patch(x: torch.Tensor, hook: Any, new: torch.Tensor = new,
                      idx: list[int] = idx) -> torch.Tensor:
                x = x.clone()
                x[:, :, idx] = torch.where(pm, new.to(x.dtype), x[:, :, idx])
                return x
            out.append((hook_name(receiver_input, layer), patch))
        return out

    start3 = torch.full((R,), recv_layers[0], dtype=torch.long)
    step3 = run_rows(model, enc, prompt_of, tokens=enc.tokens, lengths=enc.lengths,
                     hooks=receive_hooks, start_layer=start3, start_resid=start_resid,
                     batch_size=batch_size, reads=s.metric.reads or None)
    return s.metric(step3).reshape(V, N), clean_read, corr_read


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
               batch_size: int | None = None) -> PathPatchResult:
    """Path patching (Wang et al. 2022): the effect of ``senders`` on the output through the
    ``receiver_input`` of ``receivers`` only.

    1. Run the clean prompts with the senders' outputs (``hook_z``) from the corrupted run and
       every other head frozen to its clean output (MLPs are recomputed, as in the IOI paper,
       unless ``freeze_mlps``); record the receivers' q, k or v (at ``positions``, named task
       positions such as ``"end"`` or ``"S2"``; default every position).
    2. Run the clean prompts again with only those receiver inputs replaced; read the metric.

    With ``receiver_input="resid_final"`` step 1's final residual stream is the receiver, so its
    logits are the answer (the senders' direct path, plus paths through MLPs unless frozen).
    """
    s = _setup(model, task, metric, what="path patching")
    send = _heads(model, senders, "senders")
    recv = _receivers(model, receivers, receiver_input)
    pos = _check_positions(s, positions, receiver_input)
    mask = _head_mask(model, send)[None]
    patched, clean, corr = _path_rows(model, s, mask, recv, receiver_input, pos, freeze_mlps,
                                      batch_size)
    c, k = s.metric(clean), s.metric(corr)
    vals, problem = _ratio_cells(patched, c, k, "noise")
    return PathPatchResult(float(vals[0]), patched[0], c, k, tuple(send), recv, receiver_input,
                           pos, s.metric.name, freeze_mlps, problem)


def path_patch_heads(model: Any, task: Task, receivers: Any = None, *,
                     receiver_input: str = "q", positions: Sequence[str] | None = None,
                     metric: "str | Metric" = "logit_diff", freeze_mlps: bool = False,
                     batch_size: int | None = None) -> PatchGrid:
    """Path patching with each single head as the sender: a ``[layer, head]`` grid of
    (F(patched) - F(clean)) / (F(clean) - F(corrupted)), all senders batched together."""
    import torch

    s = _setup(model, task, metric, what="path patching")
    recv = _receivers(model, receivers, receiver_input)
    pos = _check_positions(s, positions, receiver_input)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    masks = torch.eye(L * H, dtype=torch.bool).view(L * H, L, H)
    patched, clean, corr = _path_rows(model, s, masks, recv, receiver_input, pos, freeze_mlps,
                                      batch_size)
    pp = patched.reshape(L, H, -1)
    c, k = s.metric(clean), s.metric(corr)
    values, problem = _ratio_cells(pp, c, k, "noise")
    comp = f"path to {receiver_input}" + (
        f" of {', '.join(format_head(h) for h in recv)}" if recv else "")
    return PatchGrid(values, ("layer", "head"), {"layer": tuple(range(L)), "head": tuple(range(H))},
                     s.metric.name, _normalization("noise"), comp, "noise", "path", pp, c, k,
                     problem)


# -- attention-score ablation ------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class AttentionAblation:
    """The task with ``heads``' attention ablated (``mode``) vs the clean run, per prompt.

    ``loss_*`` is the copying loss, the cross-entropy -log p(answer) at the last token;
    ``metric_*`` the task metric (``metric``).
    """

    heads: tuple[Head, ...]
    mode: str
    metric: str
    loss_clean: np.ndarray = field(repr=False)
    loss_ablated: np.ndarray = field(repr=False)
    metric_clean: np.ndarray = field(repr=False)
    metric_ablated: np.ndarray = field(repr=False)

    @property
    def loss_increase(self) -> float:
        return float(np.mean(self.loss_ablated - self.loss_clean))


def _default_metric(enc: EncodedTask, metric: "str | Metric | None") -> "str | Metric":
    return metric if metric is not None else ("logit_diff" if enc.wrong is not None
                                              else "logprob")


def ablate_attention(model: Any, task: Task, heads: Any, *, mode: str = "zero",
                     metric: "str | Metric | None" = None, batch_size: int | None = None
                     ) -> AttentionAblation:
    """Ablate the attention scores of ``heads`` together (see ``interventions.attention`` for
    the ``zero`` and ``mean`` modes) and compare the copying loss and the metric to clean."""
    import torch

    check_mode(mode)
    s = _setup(model, task, _default_metric(task.encode(model), metric), paired=False)
    hs = _heads(model, heads)
    masks = torch.stack([torch.zeros_like(_head_mask(model, hs)), _head_mask(model, hs)])
    r = run_attention_ablation(model, s.enc, masks, mode, batch_size=batch_size)
    loss = -r.logprob.numpy().astype(float)
    m = s.metric(r)
    return AttentionAblation(tuple(hs), mode, s.metric.name, loss[0], loss[1], m[0], m[1])


@dataclass(frozen=True, eq=False)
class RandomComparison:
    """The copying-loss increase from ablating ``heads`` vs ablating random head sets of the
    same size. ``chosen`` [N] and ``random`` [n_repeats, N] are per-prompt increases in
    -log p(answer); ``p_value`` = (1 + #random sets with a mean increase ≥ the chosen one's)
    / (1 + n_repeats)."""

    heads: tuple[Head, ...]
    mode: str
    chosen: np.ndarray = field(repr=False)
    random: np.ndarray = field(repr=False)
    random_sets: tuple[tuple[Head, ...], ...] = field(repr=False, default=())
    loss_clean: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]
    seed: int = 0

    @property
    def chosen_effect(self) -> float:
        return float(self.chosen.mean())

    @property
    def random_effects(self) -> np.ndarray:
        """Mean increase of each random set: [n_repeats]."""
        return self.random.mean(1)

    @property
    def random_mean(self) -> float:
        return float(self.random_effects.mean())

    @property
    def random_std(self) -> float:
        return float(self.random_effects.std(ddof=1)) if len(self.random) > 1 else 0.0

    @property
    def p_value(self) -> float:
        hits = int((self.random_effects >= self.chosen_effect).sum())
        return (1 + hits) / (1 + len(self.random))

    @property
    def excess(self) -> np.ndarray:
        """Per prompt: chosen increase minus the mean random increase."""
        return self.chosen - self.random.mean(0)


def compare_to_random(model: Any, task: Task, heads: Any, *, n_repeats: int = 20,
                      seed: int = 0, mode: str = "zero", exclude_chosen: bool = True,
                      batch_size: int | None = None) -> RandomComparison:
    """Ablate ``heads``' attention and, for comparison, ``n_repeats`` random sets of as many
    heads (each the first k of a fresh random permutation of the other heads, or of all heads
    with ``exclude_chosen=False``), all in one batched sweep (Olsson et al. 2022's ablation of
    induction heads against random heads)."""
    import torch

    check_mode(mode)
    if not isinstance(n_repeats, int) or n_repeats < 1:
        raise CircuitCheckError(f"n_repeats must be a positive integer, got {n_repeats!r}")
    s = _setup(model, task, "logprob", paired=False)
    hs = _heads(model, heads)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    pool = [(l, h) for l in range(L) for h in range(H) if not (exclude_chosen and (l, h) in hs)]
    if len(pool) < len(hs):
        raise CircuitCheckError(
            f"cannot draw random sets of {len(hs)} heads from the {len(pool)} other heads; name "
            "fewer heads or pass exclude_chosen=False")
    rng = np.random.default_rng(seed)
    sets = tuple(tuple(pool[i] for i in sorted(rng.permutation(len(pool))[:len(hs)]))
                 for _ in range(n_repeats))
    masks = torch.stack([torch.zeros(L, H, dtype=torch.bool), _head_mask(model, hs)]
                        + [_head_mask(model, st) for st in sets])
    r = run_attention_ablation(model, s.enc, masks, mode, batch_size=batch_size)
    loss = -r.logprob.numpy().astype(float)
    inc = loss[1:] - loss[0]
    return RandomComparison(tuple(hs), mode, inc[0], inc[1:], sets, loss[0], seed)


def attention_ablation_grid(model: Any, task: Task, *, mode: str = "zero",
                            batch_size: int | None = None) -> np.ndarray:
    """Copying-loss increase from ablating each single head's attention: [layer, head]."""
    import torch

    check_mode(mode)
    s = _setup(model, task, "logprob", paired=False)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    masks = torch.cat([torch.zeros(1, L, H, dtype=torch.bool),
                       torch.eye(L * H, dtype=torch.bool).view(L * H, L, H)])
    r = run_attention_ablation(model, s.enc, masks, mode, batch_size=batch_size)
    loss = -r.logprob.numpy().astype(float)
    return (loss[1:] - loss[0]).mean(1).reshape(L, H)


# -- direct logit attribution ---------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class DirectLogitAttribution:
    """Each component's direct contribution to logit(answer) - logit(wrong) at the last token.

    A component's write c to the final residual stream contributes
    (c - mean(c) [LayerNorm only]) / scale · (w ⊙ (W_U[:, answer] - W_U[:, wrong])), with
    ``scale`` the final norm's cached ``ln_final.hook_scale`` and ``w`` its weight. ``heads`` is
    the mean over prompts ([layer, head]); ``components`` the other writes per prompt (``embed``,
    ``attn_bias.{l}``, ``mlp.{l}``) and ``bias`` (final-norm bias and unembedding bias).
    ``total`` (their sum) equals ``logit_diff`` up to ``max_error``.
    """

    heads: np.ndarray
    per_prompt: np.ndarray = field(repr=False)  # [L, H, N]
    components: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    logit_diff: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]
    total: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]

    @property
    def max_error(self) -> float:
        return float(np.max(np.abs(self.total - self.logit_diff)))

    def __getitem__(self, head: Any) -> float:
        return float(self.heads[parse_head(head)])

    def of(self, heads: Iterable[Any]) -> np.ndarray:
        """Per prompt, the summed direct effect of ``heads``."""
        idx = [parse_head(h) for h in heads]
        return sum((self.per_prompt[l, h] for l, h in idx), np.zeros(self.per_prompt.shape[-1]))


def direct_logit_attribution(model: Any, task: Task, *, batch_size: int | None = None,
                             check: bool = True) -> DirectLogitAttribution:
    """Direct logit attribution of every head (and the other residual writes) to the logit
    difference, from one cached clean run. With ``check`` (default) the components must sum
    to the model's own logit difference; architectures whose residual writes are not linear in
    this sense (e.g. extra norms after attention) raise instead of returning wrong numbers."""
    import torch

    if not isinstance(task, Task):
        raise CircuitCheckError(f"task must be a cc.Task, got {type(task).__name__}")
    enc = task.encode(model)
    if enc.wrong is None:
        raise CircuitCheckError("direct logit attribution to the logit difference needs wrong "
                                "answers; give the task `wrong_answers=[...]`")
    L = model.cfg.n_layers
    names = ([f"blocks.{l}.attn.hook_z" for l in range(L)]
             + [f"blocks.{l}.hook_attn_out" for l in range(L)]
             + [f"blocks.{l}.hook_mlp_out" for l in range(L)]
             + ["blocks.0.hook_resid_pre", "ln_final.hook_in", "ln_final.hook_scale",
                "ln_final.hook_normalized", "ln_final.hook_out"])
    acts, read = cache_run(model, enc, enc.tokens, names, batch_size=batch_size)
    N = enc.n
    dev = acts[names[0]].device
    end = (enc.lengths - 1).to(dev)
    at_end = {n: a[torch.arange(N, device=dev), end].double() for n, a in acts.items()}
    w, b = _final_norm_affine(model, at_end)
    W_U = model.W_U.detach().double()
    b_U = _b_U(model)
    direction = (W_U[:, enc.answers.to(dev)] - W_U[:, enc.wrong.to(dev)]).T * w  # [N, d]
    centre = str(getattr(model.cfg, "normalization_type", "LN") or "").upper().startswith("LN")
    scale = at_end["ln_final.hook_scale"]  # [N, 1]

    def project(c: torch.Tensor) -> torch.Tensor:  # c [N, ..., d]
        if centre:
            c = c - c.mean(-1, keepdim=True)
        shape = (N,) + (1,) * (c.dim() - 2)
        return (c / scale.view(shape + (1,)) * direction.view(
            (N,) + (1,) * (c.dim() - 2) + (-1,))).sum(-1)

    W_O = model.W_O.detach().double()  # [L, H, D, d]
    heads, comps = [], {"embed": project(at_end["blocks.0.hook_resid_pre"])}
    for layer in range(L):
        per_head = torch.einsum("nhd,hdm->nhm", at_end[f"blocks.{layer}.attn.hook_z"], W_O[layer])
        heads.append(project(per_head))  # [N, H]
        bias = at_end[f"blocks.{layer}.hook_attn_out"] - per_head.sum(1)
        comps[f"attn_bias.{layer}"] = project(bias)
        comps[f"mlp.{layer}"] = project(at_end[f"blocks.{layer}.hook_mlp_out"])
    a, k = enc.answers.to(dev), enc.wrong.to(dev)
    comps["bias"] = (W_U[:, a] - W_U[:, k]).T.mul(b).sum(-1) + b_U[a] - b_U[k]
    per_head = torch.stack(heads, 0).permute(0, 2, 1).cpu().numpy()  # [L, H, N]
    components = {kk: v.cpu().numpy() for kk, v in comps.items()}
    total = per_head.sum((0, 1)) + sum(components.values())
    ld = (read.logit - read.wrong_logit).numpy().astype(float)
    out = DirectLogitAttribution(per_head.mean(-1), per_head, components, ld, total)
    if check:
        tol = 1e-3 * max(1.0, float(np.abs(ld).max()))
        resid = at_end["ln_final.hook_in"] - at_end["blocks.0.hook_resid_pre"] - sum(
            at_end[f"blocks.{l}.hook_attn_out"] + at_end[f"blocks.{l}.hook_mlp_out"]
            for l in range(L))
        if out.max_error > tol or float(resid.abs().max()) > 1e-3 * float(
                at_end["ln_final.hook_in"].abs().max()):
            raise CircuitCheckError(
                f"direct logit attribution does not add up on this model: the components sum "
                f"to the logit difference only within {out.max_error:.3g} (tolerance {tol:.3g}); "
                "its residual stream is not embed + attention + MLP writes through one final "
                "norm. Use activation patching (cc.patch_heads) instead")
    return out


def _final_norm_affine(model: Any, at_end: dict[str, "torch.Tensor"]
                       ) -> tuple["torch.Tensor", "torch.Tensor"]:
    """The final norm's weight and bias, checked against the cached run (out = x̂·w + b)."""
    import torch

    normed, out = at_end["ln_final.hook_normalized"], at_end["ln_final.hook_out"]
    d = normed.shape[-1]
    w = getattr(model.ln_final, "w", None)
    b = getattr(model.ln_final, "b", None)
    w = torch.ones(d, dtype=normed.dtype, device=normed.device) if w is None else \
        w.detach().to(normed.device, normed.dtype)
    b = torch.zeros(d, dtype=normed.dtype, device=normed.device) if b is None else \
        b.detach().to(normed.device, normed.dtype)
    if not torch.allclose(normed * w + b, out, atol=1e-3 * float(out.abs().max()) + 1e-6):
        raise CircuitCheckError(
            "the final norm is not x̂·w + b on this model (ln_final.hook_out differs), so direct "
            "logit attribution through ln_final.hook_scale would be wrong; use activation "
            "patching (cc.patch_heads) instead")
    return w, b


def _b_U(model: Any) -> "torch.Tensor":
    import torch

    try:
        b = model.b_U
    except Exception:  # noqa: BLE001 - bias-free unembedding
        b = None
    if b is None:
        return torch.zeros(model.cfg.d_vocab, dtype=torch.float64)
    return b.detach().double()


# -- claim measurements ----------------------------------------------------------------------

def _ratio_measurement(kind: str, numer: np.ndarray, base: np.ndarray, full: np.ndarray,
                       metric: Metric, *, seed: int, confidence: float, model: Any,
                       task: Task, what: str, baselines: dict[str, float],
                       details: dict[str, Any]) -> Measurement:
    """(mean(numer) - mean(base)) / (mean(full) - mean(base)), paired bootstrap over prompts."""
    n = len(full)
    b = float(base.mean())
    den = float(full.mean()) - b
    den_lo, den_hi = bootstrap_ci(lambda i: full[i].mean(1) - base[i].mean(1), n,
                                  confidence=confidence, seed=seed)
    problem = None
    if not den or den_lo <= 0 <= den_hi:
        problem = (f"the model does not separate the prompts: its {metric.name} is "
                   f"{full.mean():.3g} against {b:.3g} for {what} (difference CI "
                   f"[{den_lo:.3g}, {den_hi:.3g}] includes 0), so a ratio to it would divide by "
                   "noise; check the task, answers and model")
    ci = bootstrap_ci(lambda i: (numer[i].mean(1) - base[i].mean(1))
                      / (full[i].mean(1) - base[i].mean(1)), n, confidence=confidence, seed=seed)
    value = float("nan") if problem else (float(numer.mean()) - b) / den
    per_prompt = (numer - b) / den if den else np.full(n, np.nan)
    return Measurement(kind=kind, value=value, ci=ci, per_prompt=per_prompt, metric=metric.name,
                       metric_description=metric.describe, baselines=baselines,
                       confidence=confidence, seed=seed, model=getattr(model, "cc_name", ""),
                       task=task.name, problem=problem, details=details)


def _seed(seed: int | None) -> int:
    from .. import _settings

    return _settings.seed() if seed is None else int(seed)


def patching_recovery(model: Any, task: Task, heads: Any, *, component: str = "z",
                      metric: "str | Metric" = "logit_diff", seed: int | None = None,
                      confidence: float = 0.95, heatmap: bool = True,
                      batch_size: int | None = None) -> Measurement:
    """How much of the clean behaviour patching ``heads`` (together, clean → corrupted, all
    positions) restores: (F(patched) - F(corrupted)) / (F(clean) - F(corrupted)).

    With ``heatmap`` the measurement's details carry every single head's recovery (one
    ``patch_heads`` sweep) for the report."""
    hs = _heads(model, heads)
    patched, clean, corr = patch_head_set(model, task, hs, component=component,
                                          metric=metric, batch_size=batch_size)
    s = _setup(model, task, metric)
    c, k = s.metric(clean), s.metric(corr)
    details: dict[str, Any] = {"heads": [list(h) for h in hs], "component": component}
    if heatmap:
        grid = patch_heads(model, task, component=component, metric=metric,
                           batch_size=batch_size)
        details["heatmaps"] = {f"patching {component} (denoise)": grid.heatmap(outline=hs)}
        details["top"] = [[f"{l}.{h}", v] for (l, h), v in grid.top(5, by_abs=False)]
    return _ratio_measurement(
        "patching recovery", patched, k, c, s.metric, seed=_seed(seed), confidence=confidence,
        model=model, task=task, what="the corrupted prompts",
        baselines={"clean": float(c.mean()), "corrupted": float(k.mean()),
                   "patched": float(patched.mean())}, details=details)


def direct_effect(model: Any, task: Task, heads: Any, *, seed: int | None = None,
                  confidence: float = 0.95, batch_size: int | None = None) -> Measurement:
    """The summed direct logit attribution of ``heads`` as a share of the logit difference:
    mean(Σ_heads DLA) / mean(logit_diff), per prompt Σ_heads DLA_i / mean(logit_diff)."""
    hs = _heads(model, heads)
    dla = direct_logit_attribution(model, task, batch_size=batch_size)
    metric = get_metric("logit_diff", has_wrong=True)
    ld = dla.logit_diff
    mine = dla.of(hs)
    scale = float(np.mean(ld)) or 1.0
    data = (dla.heads / scale).tolist()
    details = {"heads": [list(h) for h in hs],
               "heatmaps": {"direct logit attribution": {
                   "data": data, "label": "direct effect per head, share of the logit difference",
                   "outline": [list(h) for h in hs]}}}
    return _ratio_measurement(
        "direct effect", mine, np.zeros_like(ld), ld, metric, seed=_seed(seed),
        confidence=confidence, model=model, task=task, what="zero",
        baselines={"logit_diff": float(ld.mean()), "heads": float(mine.mean())},
        details=details)


def attention_ablation_effect(model: Any, task: Task, heads: Any, *, n_repeats: int = 20,
                              mode: str = "zero", seed: int | None = None,
                              confidence: float = 0.95, heatmap: bool = True,
                              batch_size: int | None = None) -> Measurement:
    """Copying-loss increase (nats of -log p(answer)) from ablating ``heads``' attention,
    minus the mean increase from ablating random head sets of the same size; the interval is
    a bootstrap over prompts with the random sets fixed."""
    sd = _seed(seed)
    hs = _heads(model, heads)
    rc = compare_to_random(model, task, hs, n_repeats=n_repeats, seed=sd, mode=mode,
                           batch_size=batch_size)
    excess = rc.excess
    n = len(excess)
    ci = bootstrap_ci(lambda i: excess[i].mean(1), n, confidence=confidence, seed=sd)
    details: dict[str, Any] = {"heads": [list(h) for h in hs], "mode": mode,
                               "random_effects": rc.random_effects.tolist(),
                               "p_value": rc.p_value}
    if heatmap:
        grid = attention_ablation_grid(model, task, mode=mode, batch_size=batch_size)
        details["heatmaps"] = {f"attention ablation ({mode})": {
            "data": grid.tolist(), "label": "copying-loss increase when the head's attention "
            f"is {mode}-ablated (nats)", "outline": [list(h) for h in hs]}}
    loss0 = float(rc.loss_clean.mean())
    return Measurement(
        kind="attention ablation effect", value=float(excess.mean()), ci=ci, per_prompt=excess,
        metric="copying loss", metric_description="-log p(answer) at 'end' (nats)",
        ablation=f"attention scores {mode}-ablated",
        baselines={"clean loss": loss0, "chosen ablated": loss0 + rc.chosen_effect,
                   "random ablated": loss0 + rc.random_mean},
        confidence=confidence, seed=sd, model=getattr(model, "cc_name", ""), task=task.name,
        details=details)
