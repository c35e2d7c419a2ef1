"""Attribution-screened exact patching (AtP*-style, Kramár et al. 2024, "AtP*: An efficient and
scalable method for localizing LLM behaviour to components"): estimate every cell by
attribution patching, then patch exactly only the cells the estimate cannot rule out.

The rule (``screened``), in the grid's normalised units (fractions of the clean − corrupted
gap):

1. Attribution patching estimates every cell: ``est`` (one forward + backward pass per batch).
2. Patch exactly the ``top`` cells with the largest ``|est|``, plus an *audit* sample: a seeded
   random ``audit`` fraction (at least 4 cells) of the others.
3. The screen's error on what was patched, ``err = max |exact - est|``, sets the margin
   ``margin = safety * err`` (default ``safety = 2``).
4. A cell is *ruled out* when ``|est| + margin < cut``, where ``cut = min(at, k-th largest
   |exact| so far)`` (k = ``top``): its effect can then neither reach ``at`` nor enter the top k.
   Every cell not ruled out is patched exactly, the error and margin are recomputed on the
   larger exact set, and step 4 repeats until no cell is left to patch.

Why this margin: the attribution estimate is the first-order Taylor term of the patch, and its
error is the remainder, which grows with the size of the change a patch makes. The cells
patched first are the largest by the estimate, where that error is largest, and the audit
sample measures the error among the small ones, where the failure AtP* describes (a head whose
gradient is saturated, so that its estimate is near 0 while its effect is not, Kramár et al.
§3.1) would show up; the safety factor covers error the sample has not seen. It is an
empirical bound, not a proof: a cell whose error is more than ``safety`` times the worst error
seen can be missed. Raise ``audit`` (up to 1: everything exact) or ``safety`` when that
matters; the grid records the margin, the error seen and which cells are exact
(``grid.exact``, ``grid.screen``). AtP*'s QK-fix and GradDrop are not implemented.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._patching_base import PatchGrid, _ratio_cells, _Setup
from .attribution import _attribution


def screened(model: Any, s: _Setup, component: str, per_position: bool,
             positions: Sequence[str] | None, direction: str, batch_size: int | None,
             cells: np.ndarray | None, progress: Any,
             exact_fn: Callable[[np.ndarray], PatchGrid], *, top: int = 10,
             at: float | None = 0.05, audit: float = 0.1, safety: float = 2.0,
             seed: int = 0) -> PatchGrid:
    """The screened grid: exact where ``grid.exact``, the attribution estimate elsewhere.

    ``exact_fn(cells)`` patches the boolean grid ``cells`` exactly (NaN elsewhere). Options:
    ``top`` (the k whose membership is guaranteed), ``at`` (every cell whose effect may reach
    it is exact; None: only the top k matter), ``audit`` (random fraction of the other cells
    patched to measure the screen's error), ``safety`` (margin = safety x worst error seen).
    """
    est = _attribution(model, s, component, per_position, positions, direction, batch_size,
                       cells, progress)
    E = est.values
    shape = E.shape
    inside = np.isfinite(E) if cells is None else (np.isfinite(E) & cells)
    flat = np.flatnonzero(inside)
    rng = np.random.default_rng(seed)
    order = flat[np.argsort(-np.abs(E.ravel()[flat]), kind="stable")]
    first = set(order[:top].tolist())
    rest = order[top:]
    n_audit = min(len(rest), max(4, math.ceil(audit * len(rest))))
    first |= set(rng.choice(rest, size=n_audit, replace=False).tolist()) if n_audit else set()
    done = np.zeros(shape, dtype=bool)
    values = E.copy()
    pp = est.per_prompt.copy()
    todo = np.zeros(shape, dtype=bool)
    todo.ravel()[list(first)] = True
    rounds, margin, err, cut = 0, 0.0, 0.0, float("nan")
    while todo.any():
        rounds += 1
        g = exact_fn(todo)
        values[todo] = g.values[todo]
        pp[todo] = g.per_prompt[todo]
        done |= todo
        ok = done & np.isfinite(values) & np.isfinite(E)
        err = float(np.abs(values[ok] - E[ok]).max()) if ok.any() else 0.0
        margin = safety * err
        mags = np.sort(np.abs(values[ok]))[::-1]
        kth = float(mags[min(top, len(mags)) - 1]) if len(mags) else 0.0
        cut = kth if at is None else min(float(at), kth)
        todo = inside & ~done & (np.abs(E) + margin >= cut)
    c, k = est.clean, est.corrupted
    _, problem = _ratio_cells(pp, c, k, direction)
    info = {"method": "attribution", "top": top, "at": at, "audit": n_audit, "safety": safety,
            "max_error": err, "margin": margin, "cut": cut, "rounds": rounds,
            "exact_cells": int(done.sum()), "cells": int(inside.sum()), "seed": seed}
    return PatchGrid(values, est.dims, est.coords, est.metric, est.normalization, est.component,
                     est.direction, "screened", pp, c, k, problem or est.problem, done, info)
