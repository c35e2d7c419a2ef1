"""Patching subsets (heads=, layers=), attribution of residual components, and the
attribution-screened exact grid (screen="attribution"), each against the full computation."""
from __future__ import annotations

import numpy as np
import pytest

import circuitcheck as cc
from circuitcheck.errors import CircuitError
from circuitcheck.measures import patching as P

from .conftest import own_task


@pytest.fixture(scope="module")
def task_of():
    cache = {}

    def get(model):
        if id(model) not in cache:
            cache[id(model)] = own_task(model, n=5)
        return cache[id(model)]
    return get


@pytest.mark.parametrize("component", ["z", "k"])
def test_heads_subset_equals_full_grid_cells(tiny, task_of, component):
    task = task_of(tiny)
    full = P.patch_heads(tiny, task, component=component)
    sub = P.patch_heads(tiny, task, component=component, heads=["1.1", (0, 0)])
    want = np.zeros(full.shape, dtype=bool)
    want[1, 1] = want[0, 0] = True  # on the GQA llama, k's units are key/value heads
    np.testing.assert_array_equal(sub.exact, want)
    np.testing.assert_allclose(sub.values[want], full.values[want], atol=1e-6)
    assert np.isnan(sub.values[~want]).all()
    assert full.exact.all()
    with pytest.raises(CircuitError, match="out of range"):
        P.patch_heads(tiny, task, component=component, heads=["1.7"])


def test_layers_subset_of_residual_and_attribution(tiny, task_of):
    task = task_of(tiny)
    full = P.patch_residual(tiny, task, component="attn_out")
    sub = P.patch_residual(tiny, task, component="attn_out", layers=[1])
    np.testing.assert_allclose(sub.values[1], full.values[1], atol=1e-6, equal_nan=True)
    assert np.isnan(sub.values[0]).all() and not sub.exact[0].any()
    a_full = P.attribution_patch_heads(tiny, task, positions=["end"])
    a_sub = P.attribution_patch_heads(tiny, task, positions=["end"], layers=1)
    np.testing.assert_allclose(a_sub.values[1], a_full.values[1], atol=1e-6)
    assert np.isnan(a_sub.values[0]).all() and not a_full.exact.any()
    # named positions = the per-position grid read at those positions
    per_pos = P.attribution_patch_heads(tiny, task, per_position=True)
    end = task.encode(tiny).lengths.numpy() - 1
    pp = per_pos.per_prompt[:, end, :, np.arange(len(end))]  # [N, L, H]
    np.testing.assert_allclose(a_full.per_prompt[:, 0], np.moveaxis(pp, 0, -1), atol=1e-5)


def test_attribution_of_attn_out_is_the_sum_over_heads(tiny, task_of):
    """attn_out = sum_h z_h W_O[h] + b_O, so (Δattn_out)·g = Σ_h Δz_h·(W_O[h] g): the residual
    attribution of attn_out equals the sum of the heads' z attributions."""
    task = task_of(tiny)
    res = P.attribution_patch_residual(tiny, task, component="attn_out", per_position=False)
    heads = P.attribution_patch_heads(tiny, task)
    assert res.dims == ("layer",)
    pp_sum = heads.per_prompt.sum(1) - (tiny.cfg.n_heads - 1) * heads.corrupted
    np.testing.assert_allclose(res.per_prompt, pp_sum, rtol=1e-4, atol=1e-4)
    # and each layer's residual attribution is first-order exact for resid_pre at layer 0
    exact = P.patch_residual(tiny, task, component="resid_pre", per_position=False)
    attr = P.attribution_patch_residual(tiny, task, component="resid_pre", per_position=False)
    assert np.isfinite(attr.values).all() and np.isfinite(exact.values).all()


@pytest.fixture(scope="module")
def induction():
    model = cc.load_model("zoo:induction-2l")
    return model, cc.tasks.induction(model, n=8, seed=0)


def test_screened_equals_exact_where_marked_and_finds_the_top(induction):
    model, task = induction
    full = P.patch_heads(model, task, per_position=True)
    sc = P.patch_heads(model, task, per_position=True, screen="attribution",
                       screen_options={"top": 5})
    est = P.attribution_patch_heads(model, task, per_position=True)
    assert sc.method == "screened" and sc.exact.dtype == bool
    ex = sc.exact
    np.testing.assert_allclose(sc.values[ex], full.values[ex], atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(sc.values[~ex], est.values[~ex], atol=1e-9, equal_nan=True)
    finite = np.isfinite(full.values)
    assert 0 < (ex & finite).sum() < finite.sum() / 2  # it screened most cells out
    # the true top 5 are exact, and every cell left to the screen is truly below the cut
    for labels, _ in full.top(5):
        idx = tuple(full.coords[d].index(x) for d, x in zip(full.dims, labels))
        assert sc.exact[idx]
    rest = ~ex & finite
    cut, margin = sc.screen["cut"], sc.screen["margin"]
    assert (np.abs(est.values[rest]) + margin < cut).all()
    assert (np.abs(full.values[rest]) < cut).all()
    assert sc.to_dict()["exact"] == [bool(x) for x in ex.ravel()]


def test_patching_claim_computes_the_screened_grid_only(induction):
    model, task = induction
    m = P.patching_recovery(model, task, ["1.1"])
    assert m.details["grid"]["method"] == "screened"
    grid = P.patch_heads(model, task, screen="attribution")
    assert m.details["grid"]["exact_cells"] == int(grid.exact.sum())
    m2 = P.patching_recovery(model, task, ["1.1"], metric="top1")  # no gradient: heads only
    assert m2.details["grid"] == {"method": "exact", "exact_cells": 1, "cells": 8}


def test_screened_residual_grid_equals_exact_where_marked(tiny, task_of):
    task = task_of(tiny)
    full = P.patch_residual(tiny, task, component="mlp_out")
    sc = P.patch_residual(tiny, task, component="mlp_out", screen="attribution",
                          screen_options={"top": 2, "audit": 0.0, "audit_min": 1})
    assert sc.dims == ("layer", "pos") and sc.exact.any()
    np.testing.assert_allclose(sc.values[sc.exact], full.values[sc.exact], atol=1e-6,
                               equal_nan=True)
    assert sc.screen["exact_cells"] == int(sc.exact.sum())


@pytest.fixture(scope="module")
def induction32():
    model = cc.load_model("zoo:induction-2l")
    return model, cc.tasks.induction(model, n=32, seed=0)


def test_screen_looks_patch_some_cells_on_a_sample_of_prompts(induction32):
    """With 32 prompts the screen's looks settle cells on part of their prompts: what they
    patched equals the full computation prompt by prompt, every cell left unexact is truly
    below the cut, the top k are exact, and fewer patched runs than looking at every prompt."""
    model, task = induction32
    full = P.patch_heads(model, task)
    sc = P.patch_heads(model, task, screen="attribution", screen_options={"top": 3})
    whole = P.patch_heads(model, task, screen="attribution",
                          screen_options={"top": 3, "sample": None})
    info, n = sc.screen, task.encode(model).n
    seen = np.array(info["prompts_patched"]).reshape(sc.shape)
    assert info["sample"] == 8 and whole.screen["sample"] is None
    looked = ~sc.exact & (seen > 0)
    assert looked.any() and (seen[looked] < n).all() and info["sampled_cells"] == looked.sum()
    # the partial patches are exact on their prompts (the rest of per_prompt: the estimate)
    est = P.attribution_patch_heads(model, task)
    same = np.isclose(sc.per_prompt, full.per_prompt, atol=1e-5)
    assert (same.sum(-1)[looked] >= seen[looked]).all()
    np.testing.assert_allclose(sc.values[sc.exact], full.values[sc.exact], atol=1e-6)
    assert (np.abs(full.values[~sc.exact]) < info["cut"]).all()
    for labels, _ in full.top(3):
        assert sc.exact[tuple(labels)]
    # the sampled cells' estimates are close to the truth, not the attribution copied
    assert np.abs(sc.values[looked] - full.values[looked]).max() < info["cut"]
    assert info["patched_runs"] < whole.screen["patched_runs"] <= info["runs"]
    assert not np.allclose(sc.values[looked], est.values[looked])


def test_per_position_grids_do_not_look_by_default(induction32):
    """A cell at an absolute position matters only on the prompts whose token there matters:
    sampling those is unsafe, so the default keeps the margin rule alone."""
    model, task = induction32
    sc = P.patch_heads(model, task, per_position=True, screen="attribution",
                       screen_options={"top": 3})
    assert sc.screen["sample"] is None and sc.screen["sampled_cells"] == 0


def test_sample_stats_regression_estimator():
    """The looks' estimator (``screen._sample_stats``) on constructed populations."""
    from circuitcheck.measures.screen import _sample_stats, _settled

    rng = np.random.default_rng(0)
    N = 32
    x = rng.normal(size=N)                      # the attribution, prompt by prompt
    valid = np.ones((1, N), bool)
    census = np.zeros((1, N), bool)
    seen = np.zeros((1, N), bool)
    seen[0, :10] = True
    # exact effect linear in the estimate: the regression recovers the population mean
    u = (0.5 * x + 0.02)[None]
    m, m_low, mean, se, df, err = _sample_stats(seen, census, valid,
                                                np.where(seen, u, np.nan), x[None])
    assert m[0] == m_low[0] == 10 and df[0] == 8  # the regression: 10 - 2
    np.testing.assert_allclose(mean[0], u.mean(), atol=1e-12)
    assert se[0] < 1e-12
    np.testing.assert_allclose(err[0], np.abs((u - x)[0, :10].mean()), atol=1e-12)
    # an estimate that is pure noise: about the plain sample mean, with its standard error
    y = rng.normal(0.1, 0.05, size=N)[None]
    m, _, mean, se, df, _ = _sample_stats(seen, census, valid, np.where(seen, y, np.nan),
                                          rng.normal(size=N)[None])
    # the attribution explains little of it: the plain sample mean, df 10 - 1
    assert df[0] == 9 and abs(mean[0] - y[0, :10].mean()) < 1e-12
    assert 0.005 < se[0] < 0.03
    assert not _settled(m_low, mean, se, df, 0.1, 0.999)[0]  # a mean near the cut is not out
    assert _settled(m_low, mean - 0.1, se, df, 0.2, 0.999)[0]  # one far below it is
    # a sparse effect the sample never saw (the estimate is flat on the sample, not on the
    # population): no bound at all
    xs = np.zeros(N)
    xs[20] = 3.0
    ys = np.where(np.arange(N) == 20, 1.0, 0.0)[None]
    _, _, _, se, _, _ = _sample_stats(seen, census, valid, np.where(seen, ys, np.nan),
                                      xs[None])
    assert np.isnan(se[0])
    # ... and with that prompt in the census it is counted exactly
    census[0, 20] = seen[0, 20] = True
    m, m_low, mean, se, _, _ = _sample_stats(seen, census, valid,
                                             np.where(seen, ys, np.nan), xs[None])
    assert m_low[0] == 10 and m[0] == 11
    np.testing.assert_allclose(mean[0], 1.0 / N, atol=1e-12)
