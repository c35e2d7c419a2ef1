"""Exact activation patching: per-head and residual-stream grids, a head set patched together,
and the ``patching`` claim's measurement (``patching_recovery``). Conventions in
``circuitcheck.measures._patching_base``."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CircuitCheckError, CircuitError, NotMeasurableError
from ..progress import progress_bar
from ..interventions import Readout
from ..interventions.patching import (HEAD_COMPONENTS, RESIDUAL_COMPONENTS, Patches, cache_run,
                                      check_component, check_direction, hook_name, n_units,
                                      run_patches)
from ..tasks import Task
from ._measurement import Measurement, unmeasured
from ._patching_base import (PatchGrid, _cells, _layout, _grid, _head_mask, _heads,
                             _normalization, _ratio_measurement, _seed, _setup, _Setup)
from .metrics import Metric

if TYPE_CHECKING:  # pragma: no cover
    import torch


def _pairs(cells: np.ndarray, shape: tuple[int, ...], n: int) -> np.ndarray:
    """``cells`` as a (cell, prompt) mask, ``shape + (n,)``: a mask shaped like the grid holds
    for every prompt; one with a trailing prompt axis (the screen's looks) is kept."""
    cells = np.asarray(cells, dtype=bool)
    if cells.size == int(np.prod(shape)) * n:
        return cells.reshape(shape + (n,))
    return np.broadcast_to(cells.reshape(shape + (1,)), shape + (n,))


def _units(model: Any, s: _Setup, component: str, pos_of: "torch.Tensor | None",
           cells: np.ndarray | None) -> tuple[Patches, "torch.Tensor"]:
    """Every (layer, [position,] [head]) unit in ``cells`` (default all) x every prompt that has
    it, as patched rows, and the flat grid cell each row's value belongs to. ``cells`` is
    shaped like the grid, or like the grid plus a trailing prompt axis (the screen's looks at
    a sample of prompts): then only those (cell, prompt) pairs."""
    import torch

    enc = s.enc
    L, N, P = model.cfg.n_layers, enc.n, enc.tokens.shape[1]
    is_head = component in HEAD_COMPONENTS
    U = n_units(model, component) if is_head else 1
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
    if cells is not None:
        pairs = _pairs(cells, (L, K, U), N)
        keep &= torch.from_numpy(np.ascontiguousarray(pairs))[lay, kk, uu, pp]
    lay, kk, uu, pp, pos_mask = lay[keep], kk[keep], uu[keep], pp[keep], pos_mask[keep]
    R = len(pp)
    layer_mask = torch.zeros(R, L, dtype=torch.bool)
    layer_mask[torch.arange(R), lay] = True
    head_mask = torch.zeros(R, L, U, dtype=torch.bool)
    if is_head:
        head_mask[torch.arange(R), lay, uu] = True
    else:
        head_mask[:] = True
    return Patches(pp, layer_mask, head_mask, pos_mask), (lay * K + kk) * U + uu


def _sweep(model: Any, s: _Setup, component: str, per_position: bool,
           positions: Sequence[str] | None, direction: str, batch_size: int | None,
           cells: np.ndarray | None = None, progress: Any = None,
           memo: dict[str, Any] | None = None) -> PatchGrid:
    """Exact patching of ``cells`` of the grid (default all); NaN elsewhere. A patch the
    machinery did not apply (``NotMeasurableError``) leaves the grid NaN with that problem.
    ``memo`` (a dict kept across calls, as the screen's rounds do): the source and base runs
    are cached once, at every layer, and reused by every later call."""
    try:
        return _sweep_exact(model, s, component, per_position, positions, direction,
                            batch_size, cells, progress, memo)
    except NotMeasurableError as e:
        _, shape, dims, coords = _layout(model, s, component, per_position, positions)
        nan = np.full(s.enc.n, np.nan)
        return PatchGrid(np.full(shape, np.nan), dims, coords, s.metric.name,
                         _normalization(direction), component, direction, "exact",
                         np.full(shape + (s.enc.n,), np.nan), nan, nan.copy(), str(e),
                         np.zeros(shape, dtype=bool))


def _sweep_exact(model: Any, s: _Setup, component: str, per_position: bool,
                 positions: Sequence[str] | None, direction: str, batch_size: int | None,
                 cells: np.ndarray | None, progress: Any,
                 memo: dict[str, Any] | None = None) -> PatchGrid:
    enc = s.enc
    L = model.cfg.n_layers
    pos_of, shape, dims, coords = _layout(model, s, component, per_position, positions)
    patches, cell = _units(model, s, component, pos_of, cells)
    src_toks, base_toks = ((enc.tokens, enc.corrupted) if direction == "denoise"
                           else (enc.corrupted, enc.tokens))
    starts = sorted(set(patches.first_layer.tolist()))
    used = sorted(set(patches.layer_mask.any(0).nonzero().flatten().tolist()))
    if memo is not None:  # every layer once, for this and every later call
        starts = used = list(range(L))
    src_names = [hook_name(component, l) for l in used]
    base_names = [f"blocks.{l}.hook_resid_pre" for l in starts
                  if l > 0 or component == "resid_pre"]
    if memo is not None and "base" in memo:
        (src_acts, src_read), (base_acts, base_read) = memo["src"], memo["base"]
    else:
        src_acts, src_read = cache_run(model, enc, src_toks, src_names, batch_size=batch_size)
        base_acts, base_read = cache_run(model, enc, base_toks, base_names,
                                         batch_size=batch_size)
        if memo is not None:
            memo["src"], memo["base"] = (src_acts, src_read), (base_acts, base_read)
    source = {l: src_acts[hook_name(component, l)] for l in used}
    base_resid = {int(n.split(".")[1]): a for n, a in base_acts.items()}
    cells_n = int(np.prod(shape))
    pp = np.full((cells_n, enc.n), np.nan)
    if len(patches):
        with progress_bar(progress, len(patches), f"patching {component}") as bar:
            out = run_patches(model, enc, patches, component, direction, source, base_resid,
                              batch_size=batch_size, reads=s.metric.reads or None,
                              progress=bar)
        pp[cell.numpy(), patches.prompt_of.numpy()] = s.metric(out)
    clean, corr = (src_read, base_read) if direction == "denoise" else (base_read, src_read)
    # exact: the cells patched on every prompt
    exact = (np.ones(shape, dtype=bool) if cells is None else
             _pairs(cells, shape, enc.n).all(-1))
    return _grid(pp.reshape(shape + (enc.n,)), dims, coords, s, clean, corr, component,
                 direction, exact=exact)


def run_patch_cells(model: Any, ctx: dict[str, Any], cells: np.ndarray, cache: dict
                    ) -> PatchGrid:
    """Executor work function: the exact grid of ``cells`` (boolean, shaped like the grid, or
    with a trailing prompt axis), NaN elsewhere, on this worker's copy of the model
    (``_distributed.patch_cells_on``)."""
    key = ("patch", ctx["id"])
    if key not in cache:
        cache.clear()  # one measurement at a time per worker
        cache[key] = _setup(model, ctx["task"], ctx["metric"])
    return _sweep(model, cache[key], ctx["component"], ctx["per_position"], ctx["positions"],
                  ctx["direction"], ctx["batch_size"], cells, None)


def _measure(model: Any, task: Task, component: str, per_position: bool,
             positions: Sequence[str] | None, direction: str, metric: "str | Metric",
             batch_size: int | None, heads: Any, layers: Any, screen: str | None,
             screen_options: dict[str, Any] | None, progress: Any,
             executor: Any = None) -> PatchGrid:
    from ..executors import get_executor

    ex = get_executor(executor)
    if screen not in (None, "attribution"):
        raise CircuitCheckError(f"unknown screen {screen!r}; use screen='attribution' or None")
    ctx = None
    if not ex.is_local():
        from ._distributed import patch_context

        ctx = patch_context(model, task, {
            "component": component, "per_position": per_position, "positions": positions,
            "direction": direction, "metric": metric, "batch_size": batch_size})
    s = _setup(model, task, metric)
    _, shape, dims, _ = _layout(model, s, component, per_position, positions)
    cells = _cells(model, shape, dims, heads, layers)

    memo: dict[str, Any] | None = {} if screen is not None else None

    def exact(todo: np.ndarray | None) -> PatchGrid:
        if ctx is not None:
            from ._distributed import patch_cells_on

            return patch_cells_on(ex, model, ctx, np.ones(shape, bool) if todo is None
                                  else np.asarray(todo, bool), run_patch_cells)
        return _sweep(model, s, component, per_position, positions, direction, batch_size,
                      todo, progress, memo)
    if screen is None:
        return exact(cells)
    from .screen import screened

    return screened(model, s, component, per_position, positions, direction, batch_size,
                    cells, progress, exact, memo if ctx is None else None,
                    **(screen_options or {}))


def patch_heads(model: Any, task: Task, *, component: str = "z", per_position: bool = False,
                positions: Sequence[str] | None = None, direction: str = "denoise",
                metric: "str | Metric" = "logit_diff", batch_size: int | None = None,
                heads: Any = None, layers: Any = None, screen: str | None = None,
                screen_options: dict[str, Any] | None = None, progress: Any = None,
                executor: Any = None) -> PatchGrid:
    """Activation patching of every head, exact: one patched run per (head, prompt).

    ``component``: the head's output ``z`` (what it writes), or its ``q``, ``k``, ``v`` or
    attention ``pattern``. All positions at once (``[layer, head]``), or each absolute position
    (``per_position=True``, ``[layer, pos, head]``), or named task positions
    (``positions=["S2", "end"]``). On grouped-query models k and v are per key/value head
    (dim ``kv_head``). Runs start at the patched layer from the cached base residual stream and
    read logits only at each prompt's last token (see ``interventions.patching``).

    ``heads=`` / ``layers=`` patch only those heads (key/value heads for k, v on grouped-query
    models) or layers; the grid keeps its full shape, NaN elsewhere, and ``grid.exact`` marks
    what was computed. ``screen="attribution"`` estimates every cell by attribution patching
    first and patches exactly only the cells the estimate cannot rule out, each on as many
    prompts as it takes to rule it out (the rule is in ``circuitcheck.measures.screen``;
    options in ``screen_options``: ``top``, ``at``, ``audit``, ``safety``, ``sample``,
    ``confidence``, ``seed``). ``progress``: a tqdm bar on a terminal (default: on when
    stderr is a terminal, see ``circuitcheck.progress``). ``executor`` (``"ray[:ADDRESS]"``,
    ``circuitcheck.executors``): the exact cells (all, or the screen's rounds) are dealt to
    the workers by layer and merged back; the same grid as in process.
    """
    check_component(component, HEAD_COMPONENTS)
    check_direction(direction)
    return _measure(model, task, component, per_position, positions, direction, metric,
                    batch_size, heads, layers, screen, screen_options, progress, executor)


def patch_residual(model: Any, task: Task, *, component: str = "resid_pre",
                   per_position: bool = True, positions: Sequence[str] | None = None,
                   direction: str = "denoise", metric: "str | Metric" = "logit_diff",
                   batch_size: int | None = None, layers: Any = None,
                   screen: str | None = None, screen_options: dict[str, Any] | None = None,
                   progress: Any = None, executor: Any = None) -> PatchGrid:
    """Activation patching of ``resid_pre``, ``attn_out`` or ``mlp_out``: ``[layer, pos]``
    (or ``[layer]`` with ``per_position=False``, or named ``positions``). ``layers=``,
    ``screen=``, ``progress`` and ``executor`` as in ``patch_heads``."""
    check_component(component, RESIDUAL_COMPONENTS)
    check_direction(direction)
    return _measure(model, task, component, per_position, positions, direction, metric,
                    batch_size, None, layers, screen, screen_options, progress, executor)


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


def patching_recovery(model: Any, task: Task, heads: Any, *, component: str = "z",
                      metric: "str | Metric" = "logit_diff", seed: int | None = None,
                      confidence: float = 0.95, heatmap: bool = True,
                      batch_size: int | None = None) -> Measurement:
    """How much of the clean behaviour patching ``heads`` (together, clean → corrupted, all
    positions) restores: (F(patched) - F(corrupted)) / (F(clean) - F(corrupted)).

    With ``heatmap`` the measurement's details carry every single head's recovery for the
    report: the attribution-screened grid (``patch_heads(..., screen="attribution")``: exact
    for every head that could matter, the screen's estimate for the rest), or, for a metric
    with no gradient, the claimed heads alone patched exactly. Nothing else is computed."""
    from .attribution import DIFFERENTIABLE

    hs = _heads(model, heads)
    try:
        patched, clean, corr = patch_head_set(model, task, hs, component=component,
                                              metric=metric, batch_size=batch_size)
    except NotMeasurableError as e:
        return unmeasured("patching recovery", str(e), len(task.prompts), metric=str(metric),
                          confidence=confidence, seed=_seed(seed),
                          model=getattr(model, "cc_name", ""), task=task.name,
                          details={"heads": [list(h) for h in hs], "component": component})
    s = _setup(model, task, metric)
    c, k = s.metric(clean), s.metric(corr)
    details: dict[str, Any] = {"heads": [list(h) for h in hs], "component": component}
    if heatmap:
        if s.metric.name in DIFFERENTIABLE:
            grid = patch_heads(model, task, component=component, metric=metric,
                               batch_size=batch_size, screen="attribution")
        else:
            grid = patch_heads(model, task, component=component, metric=metric,
                               batch_size=batch_size, heads=hs)
        details["heatmaps"] = {f"patching {component} (denoise)": grid.heatmap(outline=hs)}
        details["top"] = [[f"{l}.{h}", v] for (l, h), v in grid.top(5, by_abs=False)
                          if grid.exact[l, h]]
        details["grid"] = {"method": grid.method, "exact_cells": int(grid.exact.sum()),
                           "cells": int(grid.exact.size)}
    return _ratio_measurement(
        "patching recovery", patched, k, c, s.metric, seed=_seed(seed), confidence=confidence,
        model=model, task=task, what="the corrupted prompts",
        baselines={"clean": float(c.mean()), "corrupted": float(k.mean()),
                   "patched": float(patched.mean())}, details=details)


def residual_patching_recovery(model: Any, task: Task, *, layer: int, at: str = "end",
                               component: str = "resid_pre",
                               metric: "str | Metric" = "logit_diff", seed: int | None = None,
                               confidence: float = 0.95, heatmap: bool = True,
                               batch_size: int | None = None) -> Measurement:
    """How much of the clean behaviour patching the residual stream (``component`` of ``layer``
    at the named position ``at``, clean → corrupted) restores, with an interval over prompts:
    (F(patched) - F(corrupted)) / (F(clean) - F(corrupted)). With ``heatmap`` every layer is
    patched at ``at`` for the report (one variant per layer, each starting at its layer)."""
    check_component(component, RESIDUAL_COMPONENTS)
    L = model.cfg.n_layers
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < L:
        raise CircuitCheckError(f"layer must be an integer in 0..{L - 1} (the model has {L} "
                                f"layers), got {layer!r}")
    layers = None if heatmap else [int(layer)]
    grid = patch_residual(model, task, component=component, positions=[at], metric=metric,
                          batch_size=batch_size, layers=layers)
    details: dict[str, Any] = {"layer": int(layer), "at": at, "component": component}
    if heatmap:
        details["heatmaps"] = {f"patching {component} at {at} (denoise)": grid.heatmap()}
    patched = grid.per_prompt[int(layer), 0]
    s = _setup(model, task, metric)
    return _ratio_measurement(
        "residual patching recovery", patched, grid.corrupted, grid.clean, s.metric,
        seed=_seed(seed), confidence=confidence, model=model, task=task,
        what="the corrupted prompts",
        baselines={"clean": float(np.mean(grid.clean)), "corrupted": float(np.mean(grid.corrupted)),
                   "patched": float(np.nanmean(patched))}, details=details)
