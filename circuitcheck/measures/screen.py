"""Attribution-screened exact patching (AtP*-style, Kramár et al. 2024, "AtP*: An efficient and
scalable method for localizing LLM behaviour to components"): estimate every cell by
attribution patching, then patch exactly only the cells the estimate cannot rule out, and
those on only as many prompts as it takes to rule them out.

The rule (``screened``), in the grid's normalised units (fractions of the clean − corrupted
gap). Cells fall into *strata*: one head (or one layer of a residual grid) over its positions
in a grid with a position axis, one layer's cells otherwise.

1. Attribution patching estimates every cell on every prompt: ``est`` (one forward + backward
   pass per batch; it also caches the source and base runs the exact rounds start from).
2. Patch exactly the ``top`` cells with the largest ``|est|`` on every prompt, plus an
   *audit* sample from every stratum: a seeded random ``audit`` fraction (at least
   ``audit_min``) of its cells, on half a look's prompts (below; every prompt without looks).
3. ``cut = min(at, k-th largest |exact| so far)`` (k = ``top``): a cell below it can neither
   reach ``at`` nor enter the top k. Each stratum's margin is ``safety`` (default 2) times the
   largest error ``|exact - est|`` seen among its cells (on the prompts each was patched on).
4. A cell is *ruled out* when ``|est| + margin < cut``. Every other cell is patched on its
   next look of ``sample`` prompts (default 8; all of them without looks), and is *settled*
   when its prompts so far bound it below the cut: ``|estimate| + t x standard error < cut``
   at ``confidence`` (default 0.999, Student t). Steps 3-4 repeat until every cell is ruled
   out, settled, or exact on all its prompts.

The looks (step 4). A cell's effect is the mean over its prompts, so a random sample of them
estimates it without bias and with a standard error that shrinks as the sample grows (finite-
population corrected: nothing is left to estimate once every prompt is seen). Each cell looks
first at its *census*, the quarter look of prompts where its attribution is largest, counted
exactly (an effect that sits on a few prompts sits where the estimate points), then at the
others in one seeded random order; those are estimated by the regression estimator on the
attribution (``_sample_stats``), which carries the prompts a sample missed where attribution
tracks the exact effect prompt by prompt and is the plain sample mean where it does not.
Measured on SmolLM2's IOI head grid: layer-0 heads' attribution is noise prompt by prompt
(errors 0.1-0.6 around true effects below 0.04) while their exact effects vary by 0.05-0.1,
so 8-24 prompts settle them where the margin rule patched all 32. Replayed on saved grids
(32, 16 and 32 prompts; 40 seeds each), the exact work fell from 24%, 16% and 13% of the full
sweep's (looks off) to 10%, 5% and 4% on average, the top 10 exact and no cell at or above
the cut left out in any of the 120 runs. Looks are off by default
for absolute positions (``per_position=True``): there a cell matters only on the prompts
whose token at that position matters, a lone such prompt the attribution misses is missed by
a sample too (measured on ``zoo:induction-2l``: a cell of true effect 0.051, on 3 of its 19
prompts, was settled at 0.02 in 5 of 15 seeds), and the margin rule decides alone.

Why this margin: the attribution estimate is the first-order Taylor term of the patch; its
error is the remainder, which depends on how non-linearly the metric responds to that
component. That is a property of the component more than of the cell: a head that acts
through attention patterns (its output moves a later head's queries or keys, where softmax
saturates) is mis-estimated at every position it matters, while heads the metric reads
linearly are estimated almost exactly at all of them (measured on ``zoo:induction-2l``: errors
up to 0.35 in the previous-token head, below 1e-3 in most others). So each stratum's margin
is measured on that stratum's own exact cells, its largest ones and a random sample. A single
global margin, or one measured on the small cells only, missed a previous-token-head cell of
true effect 0.052 estimated at 0.0001 there (the saturation failure of Kramár et al. §3.1).

Both bounds are empirical, not proofs: a cell whose error exceeds ``safety`` times the worst
error seen in its stratum, or whose effect sits on prompts neither its census nor its sample
saw, can be missed. Raise ``audit`` (up to 1: everything exact), ``safety`` or
``confidence``, or set ``sample=None``, when that matters; the grid records the margin, the
worst error seen, the cut, which cells are exact (``grid.exact``) and how many prompts each
was patched on (``grid.screen["prompts_patched"]``). AtP*'s QK-fix and GradDrop are not
implemented.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..stats import t_quantile
from ._patching_base import PatchGrid, _ratio_cells, _Setup
from .attribution import _attribution


#: Fewest random prompts a cell's sample needs before its interval can rule it out (the
#: regression's df >= 4, where ``stats.t_quantile`` is within ~15% in the far tail).
MIN_SAMPLE = 6

#: Prompts per look by default.
LOOK = 8

#: The share of a sample's variation the attribution must explain (R^2) for the regression
#: estimator; below it the plain sample mean, which keeps the degree of freedom.
FIT = 0.5


def screened(model: Any, s: _Setup, component: str, per_position: bool,
             positions: Sequence[str] | None, direction: str, batch_size: int | None,
             cells: np.ndarray | None, progress: Any,
             exact_fn: Callable[[np.ndarray], PatchGrid], memo: dict[str, Any] | None = None,
             *, top: int = 10,
             at: float | None = 0.05, audit: float = 0.1, audit_min: int = 1,
             safety: float = 2.0, sample: int | str | None = "auto", confidence: float = 0.999,
             seed: int = 0) -> PatchGrid:
    """The screened grid: exact where ``grid.exact``; elsewhere the estimate from the prompts
    a cell was patched on (``screen["prompts_patched"]``) when they were a look's worth, else
    the attribution.

    ``exact_fn(mask)`` patches exactly the (cell, prompt) pairs of the boolean ``mask`` (the
    grid's shape plus a prompt axis; NaN elsewhere); ``memo``, the dict its exact rounds keep
    their source and base runs in, is filled by the attribution pass. Options: ``top`` (the k
    whose membership is guaranteed), ``at`` (every cell whose effect may reach it is exact;
    None: only the top k matter), ``audit`` (random fraction of the other cells patched to
    measure the screen's error), ``safety`` (margin = safety x worst error seen), ``sample``
    (prompts per look; ``"auto"``: 8, none for absolute positions; None: every candidate on
    every prompt at once; looks need two looks' worth of prompts), ``confidence`` (of a
    look's bound), ``seed`` (audits and the prompts' order).
    """
    est = _attribution(model, s, component, per_position, positions, direction, batch_size,
                       cells, progress, memo)
    E = est.values
    shape, N = E.shape, s.enc.n
    inside = np.isfinite(E) if cells is None else (np.isfinite(E) & cells)
    stratum = np.where(inside, _strata(est.dims, shape), -1)
    c, k = np.asarray(est.clean, float), np.asarray(est.corrupted, float)
    base = k if direction == "denoise" else c
    valid = np.isfinite(est.per_prompt) & inside[..., None]  # the prompts each cell has
    n_valid = valid.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        den = ((valid * c).sum(-1) - (valid * k).sum(-1)) / n_valid  # over the cell's prompts
        u_est = (est.per_prompt - base) / den[..., None]
    rng = np.random.default_rng(seed)
    if sample == "auto":  # absolute positions: a cell matters on the prompts whose token
        sample = None if per_position and positions is None else LOOK  # there is the one
    step = N if not sample or N < 2 * int(sample) else int(sample)
    # the order each cell's prompts are looked at: first its census (the quarter look whose
    # attribution is largest: a sparse effect sits on the prompts the estimate points at),
    # then the rest in one seeded random order
    order_rank = np.empty(N, dtype=int)
    order_rank[rng.permutation(N)] = np.arange(N)
    rank = np.broadcast_to(order_rank, shape + (N,)).copy()
    census = np.zeros(shape + (N,), dtype=bool)
    if step < N:
        by_size = np.argsort(-np.where(valid, np.abs(np.nan_to_num(u_est)), -1.0), -1,
                             kind="stable")[..., :step // 4]
        np.put_along_axis(census, by_size, True, -1)
        census &= valid
        rank = np.where(census, -1, rank)
    patched = np.zeros(shape + (N,), dtype=bool)

    def prompts(which: np.ndarray, n: int) -> np.ndarray:
        """The next ``n`` of each ``which`` cell's unpatched prompts in ``rank`` order (all
        that are left when fewer than one more look would remain)."""
        left = valid & ~patched & which[..., None]
        count = left.sum(-1)
        take = np.where(count - n < step, count, n)
        r = np.sort(np.where(left, rank, N), -1)
        thr = np.take_along_axis(r, np.clip(take - 1, 0, N - 1)[..., None], -1)
        return left & (rank <= thr) & (take > 0)[..., None]

    def stats() -> tuple[np.ndarray, ...]:
        return _sample_stats(patched & valid, census, valid, (got - base) / den[..., None],
                             u_est)

    flat = np.flatnonzero(inside)
    order = flat[np.argsort(-np.abs(E.ravel()[flat]), kind="stable")]
    first = np.zeros(shape, dtype=bool)
    first.ravel()[order[:top]] = True
    audits = np.zeros(shape, dtype=bool)
    for st in np.unique(stratum[stratum >= 0]):
        pool = np.flatnonzero((stratum == st) & ~first)
        n = min(len(pool), max(audit_min, math.ceil(audit * len(pool))))
        if n:
            audits.ravel()[rng.choice(pool, size=n, replace=False)] = True
    # an audit looks at half a look's prompts: how linearly a stratum is read shows on every
    # prompt (SmolLM2's layer-0 heads: per-prompt errors 0.1-0.6 around means of 0.05-0.14)
    todo = prompts(first, N) | prompts(audits, step if step == N else max(1, step // 2))
    got = np.full(shape + (N,), np.nan)
    rounds, cut = 0, float("nan")
    margin = np.zeros(shape)
    exact_values = np.full(shape, np.nan)
    failed = None  # a patch the machinery could not apply (its grid says why)
    full = np.zeros(shape, dtype=bool)  # the cells exact on every prompt
    m, m_low, mean, se, df, err = stats()
    while todo.any():
        rounds += 1
        g = exact_fn(todo)
        failed = failed or g.problem
        got[todo] = g.per_prompt[todo]
        patched |= todo
        full = inside & ~(valid & ~patched).any(-1)
        exact_values, _ = _ratio_cells(np.where(patched, got, np.nan), c, k, direction)
        m, m_low, mean, se, df, err = stats()
        mags = np.sort(np.abs(exact_values[full]))[::-1]
        kth = float(mags[min(top, len(mags)) - 1]) if len(mags) else 0.0
        cut = kth if at is None else min(float(at), kth)
        worst = np.zeros(int(stratum.max()) + 2)
        np.maximum.at(worst, stratum.ravel() + 1, np.where(m > 0, err, 0.0).ravel())
        margin = safety * worst[stratum + 1]
        settled = _settled(m_low, mean, se, df, cut, confidence)
        todo = prompts(inside & ~full & ~settled & (np.abs(E) + margin >= cut), step)
    looked = inside & ~full & (m_low >= MIN_SAMPLE)  # an audit's few prompts: attribution
    values = np.where(full, exact_values, np.where(looked, mean, E))
    pp = np.where(patched, got, est.per_prompt)
    ruled = inside & ~full & ~looked
    _, problem = _ratio_cells(pp, c, k, direction)
    info = {"method": "attribution", "top": top, "at": at, "audit": int(audits.sum()),
            "safety": safety, "sample": step if step < N else None, "confidence": confidence,
            "max_error": float(err[m > 0].max()) if (m > 0).any() else 0.0,
            "margin": float(margin[ruled].max()) if ruled.any() else 0.0,
            "cut": cut, "rounds": rounds, "exact_cells": int(full.sum()),
            "sampled_cells": int(looked.sum()), "cells": int(inside.sum()),
            "patched_runs": int(patched.sum()), "runs": int(valid.sum()),
            "prompts_patched": [int(x) for x in m.ravel()], "seed": seed}
    return PatchGrid(values, est.dims, est.coords, est.metric, est.normalization, est.component,
                     est.direction, "screened", pp, c, k, problem or failed or est.problem, full,
                     info)


def _strata(dims: tuple[str, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Each cell's stratum: one head (one layer of a residual grid) over its positions in a
    grid with a position axis, one layer's cells otherwise."""
    if "pos" in dims:
        p_ax = dims.index("pos")
        other = [n for i, n in enumerate(shape) if i != p_ax]
        st = np.expand_dims(np.arange(int(np.prod(other))).reshape(other), p_ax)
        return np.broadcast_to(st, shape)
    return np.broadcast_to(np.arange(shape[0]).reshape((-1,) + (1,) * (len(shape) - 1)), shape)


def _sample_stats(seen: np.ndarray, census: np.ndarray, valid: np.ndarray, u: np.ndarray,
                  u_est: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per cell, from the prompts ``seen`` (patched exactly; ``u`` their normalised effects):
    how many, how many beyond the ``census``, the estimate of the cell's effect and its
    standard error, and the attribution's error for the margins (|mean exact - mean
    estimate| on the seen prompts beyond the census when there are any: a margin bounds the
    error of the mean over every prompt, which the census, chosen where the attribution is
    largest, would overstate).

    The estimate is stratified: the census prompts count exactly, the rest by the regression
    estimator of their random sample on the attribution ``u_est`` (Cochran, "Sampling
    Techniques", ch. 7: the sample mean corrected by b x (population - sample) mean of the
    estimate, b the sample's least-squares slope). Where the attribution tracks the exact
    effect prompt by prompt, the correction carries the prompts the sample missed (a skewed
    cell's few large prompts); where it explains less than ``FIT`` of the sample's variation
    the plain sample mean is used. The standard error is the residuals' (df = sample - 2;
    sample - 1 for the mean), finite-population corrected."""
    m = seen.sum(-1)
    low = seen & ~census
    rest = valid & ~census
    m_low, n, n_low = low.sum(-1), valid.sum(-1), rest.sum(-1)
    x = np.nan_to_num(u_est)
    with np.errstate(invalid="ignore", divide="ignore"):
        y_bar = np.where(low, u, 0.0).sum(-1) / m_low
        x_bar = np.where(low, x, 0.0).sum(-1) / m_low
        x_pop = np.where(rest, x, 0.0).sum(-1) / n_low
        dx = np.where(low, x - x_bar[..., None], 0.0)
        dy = np.where(low, u - y_bar[..., None], 0.0)
        sxx, syy, sxy = (dx ** 2).sum(-1), (dy ** 2).sum(-1), (dx * dy).sum(-1)
        # the regression where the attribution explains most of the sample's variation
        # (it costs a degree of freedom), the plain mean where it does not
        fit = (sxx > 0) & (sxy ** 2 >= FIT * sxx * syy) & (m_low > 2)
        b = np.where(fit, sxy / np.where(sxx > 0, sxx, 1.0), 0.0)
        df = np.where(fit, m_low - 2, m_low - 1)
        resid = np.where(low, dy - b[..., None] * dx, 0.0)
        s2 = (resid ** 2).sum(-1) / df
        mean_low = y_bar + b * (x_pop - x_bar)
        mean = (np.where(census & seen, u, 0.0).sum(-1) + n_low * mean_low) / n
        se = n_low / n * np.sqrt(s2 / m_low * (1 - m_low / n_low))
        # a sample whose estimates do not vary where the population's do says nothing of
        # the prompts it missed (e.g. a sparse effect beyond the census): no bound
        x_var = np.where(rest, (x - x_pop[..., None]) ** 2, 0.0).sum(-1)
        se = np.where((sxx <= 0) & (x_var > 0), np.nan, se)
        # the attribution's error on random prompts (its census over-represents it)
        err = np.where(m_low > 0, np.abs(np.where(low, u - u_est, 0.0).sum(-1) / m_low),
                       np.abs(np.where(seen, u - u_est, 0.0).sum(-1) / m))
    return m, m_low, mean, se, df, np.nan_to_num(err)


def _settled(m_low: np.ndarray, mean: np.ndarray, se: np.ndarray, df: np.ndarray, cut: float,
             confidence: float) -> np.ndarray:
    """Cells whose sample bounds them below ``cut``: |estimate| + t x standard error < cut,
    with at least ``MIN_SAMPLE`` random prompts beyond the census and some left unseen."""
    out = np.zeros(m_low.shape, dtype=bool)
    part = (m_low >= MIN_SAMPLE) & np.isfinite(se) & np.isfinite(mean)
    for d in np.unique(df[part]):
        sel = part & (df == d)
        out[sel] = np.abs(mean[sel]) + t_quantile(confidence, d) * se[sel] < cut
    return out
