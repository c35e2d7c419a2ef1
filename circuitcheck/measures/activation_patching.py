"""Exact activation patching: per-head and residual-stream grids, a head set patched together,
and the ``patching`` claim's measurement (``patching_recovery``). Conventions in
``circuitcheck.measures._patching_base``."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CircuitError
from ..interventions import Readout
from ..interventions.patching import (HEAD_COMPONENTS, RESIDUAL_COMPONENTS, Patches, cache_run,
                                      check_component, check_direction, hook_name, n_units,
                                      run_patches)
from ..tasks import Task
from ._measurement import Measurement
from ._patching_base import (PatchGrid, _Setup, _grid, _head_mask, _heads, _position_index,
                             _ratio_measurement, _seed, _setup)
from .metrics import Metric

if TYPE_CHECKING:  # pragma: no cover
    import torch


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
