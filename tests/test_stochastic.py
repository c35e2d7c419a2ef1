"""Monte-Carlo stochastic ablation: batched trials equal a per-mask loop; estimators are right."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitcheck as cc
from circuitcheck.measures.stochastic import StochasticAblation, estimate

from .conftest import own_task


def test_batched_trials_equal_a_per_mask_loop(tiny):
    task = own_task(tiny, n=5)
    enc = task.encode(tiny)
    T, p, seed = 40, 0.5, 7
    mc = cc.stochastic_ablation(tiny, task, keep_prob=p, exclusion_keep_prob=None, trials=T,
                                seed=seed, ablation="zero", metric="logit_diff", batch_size=16)
    gen = torch.Generator().manual_seed(seed)
    masks = torch.rand(T, tiny.cfg.n_layers, tiny.cfg.n_heads, generator=gen) < p
    expected = []
    for t in range(T):  # the notebook's way: one forward per mask, a loop over heads in the hook
        i = t % enc.n

        def hook(z, hook, t=t):
            layer = int(hook.name.split(".")[1])
            z = z.clone()
            for h in range(tiny.cfg.n_heads):
                if not masks[t, layer, h]:
                    z[:, :, h] = 0
            return z
        with torch.inference_mode():
            out = tiny.run_with_hooks(enc.tokens[i:i + 1, : enc.lengths[i]], fwd_hooks=[
                (f"blocks.{l}.attn.hook_z", hook) for l in range(tiny.cfg.n_layers)])[0, -1]
        expected.append((out[enc.answers[i]] - out[enc.wrong[i]]).item())
    np.testing.assert_array_equal(mc.raw["importance"]["masks"], masks.numpy())
    np.testing.assert_allclose(mc.raw["importance"]["metric"], expected, atol=1e-4)
    assert mc.trials_used == T


def test_regression_recovers_planted_effects():
    """Synthetic trials where keeping head 0.1 adds 0.4 and 1.2 adds 0.2 to success odds."""
    rng = np.random.default_rng(0)
    T, L, H = 3000, 2, 4
    masks = rng.random((T, L, H)) < 0.3
    p = 0.2 + 0.4 * masks[:, 0, 1] + 0.2 * masks[:, 1, 2]
    y = (rng.random(T) < p).astype(float)
    # simultaneous 95% intervals over the 8 heads (Bonferroni)
    eff = estimate(masks, y, np.zeros(T, dtype=int), 0.3, "importance", 1 - 0.05 / 8)
    assert eff.ranking()[:2] == [(0, 1), (1, 2)]
    assert eff.ci_low[0, 1] < 0.4 < eff.ci_high[0, 1]
    assert eff.ci_low[1, 2] < 0.2 < eff.ci_high[1, 2]
    others = [(l, h) for l in range(L) for h in range(H) if (l, h) not in [(0, 1), (1, 2)]]
    assert all(abs(eff.effect[h]) < 0.06 for h in others)  # ~3 standard errors
    assert all(eff.ci_low[h] < 0.06 for h in others)
    # the notebook's normalised importance: rate when kept over the overall rate, minus one
    kept = masks[:, 0, 1]
    assert eff.normalized[0, 1] == pytest.approx(y[kept].mean() / y.mean() - 1)
    # rates with / without the head, and a Wilson interval around the kept rate
    assert eff.rate_kept[0, 1] == pytest.approx(y[kept].mean())
    assert eff.rate_ablated[0, 1] == pytest.approx(y[~kept].mean())
    assert eff.rate_kept_ci[0][0, 1] < y[kept].mean() < eff.rate_kept_ci[1][0, 1]


def test_raw_trials_round_trip_without_pickle(tiny, tmp_path):
    task = own_task(tiny, n=4)
    mc = cc.stochastic_ablation(tiny, task, trials=64, ablation="zero", metric="top1", seed=1)
    path = mc.save(tmp_path / "trials.npz")
    raw = StochasticAblation.load_raw(path)
    for regime in ("importance", "exclusion"):
        np.testing.assert_array_equal(raw[regime]["masks"], mc.raw[regime]["masks"])
        np.testing.assert_array_equal(raw[regime]["metric"], mc.raw[regime]["metric"])
        assert raw[regime]["keep_prob"] == mc.raw[regime]["keep_prob"]
    np.load(path, allow_pickle=False)  # loads with pickle disabled


def test_outlier_selection_by_percentile(tiny):
    task = own_task(tiny, n=6)
    mc = cc.stochastic_ablation(tiny, task, trials=512, ablation="zero", seed=2)
    top = mc.select(percentile=75)
    eff = mc.importance.effect
    assert top and all(eff[h] > np.percentile(eff, 75) for h in top)
    assert top == mc.importance.ranking()[: len(top)]
    with pytest.raises(cc.CircuitCheckError, match="no 'exclusion' estimates"):
        cc.stochastic_ablation(tiny, task, trials=16, exclusion_keep_prob=None).select(by="exclusion")


def test_bad_arguments(tiny):
    task = own_task(tiny, n=3)
    with pytest.raises(cc.CircuitCheckError, match="strictly between 0 and 1"):
        cc.stochastic_ablation(tiny, task, keep_prob=1.0)
    with pytest.raises(cc.CircuitCheckError, match="head 5.0 is out of range"):
        cc.stochastic_ablation(tiny, task, heads=["5.0"])


def test_notebook_scores_count_masks_over_successes_and_failures(tiny):
    """Seed 000's own scores: Σ mask over successes / Σ (1 - mask) over failures, sum 1."""
    task = own_task(tiny, n=6)
    mc = cc.stochastic_ablation(tiny, task, trials=256, ablation="zero", metric="top1", seed=3)
    for regime in ("importance", "exclusion"):
        raw = mc.raw[regime]
        masks, y = raw["masks"].astype(float), raw["metric"]
        counts = masks[y == 1].sum(0) if regime == "importance" else (1 - masks[y == 0]).sum(0)
        eff = getattr(mc, regime)
        np.testing.assert_allclose(eff.notebook, counts / counts.sum())
        assert eff.notebook.sum() == pytest.approx(1.0)
    # the notebook's outliers: the union over both regimes at a percentile
    union = mc.select(80, by="union", score="notebook")
    imp = mc.select(80, by="importance", score="notebook")
    exc = mc.select(80, by="exclusion", score="notebook")
    assert union == list(dict.fromkeys(imp + exc)) and set(imp) | set(exc) == set(union)
    assert "notebook" in mc.importance.table().columns
    # a continuous metric has no success/failure per trial: no counting score, a clear error
    ld = cc.stochastic_ablation(tiny, task, trials=32, ablation="zero", metric="logit_diff",
                                seed=3, keep_prob=0.5, exclusion_keep_prob=None)
    assert ld.importance.notebook is None
    with pytest.raises(cc.CircuitCheckError, match="not binary"):
        ld.select(90, score="notebook")
    with pytest.raises(cc.CircuitCheckError, match="score must be"):
        ld.select(90, score="counts")


def test_notebook_trials_run_each_mask_on_every_prompt(tiny, tmp_path):
    task = own_task(tiny, n=5)
    mc = cc.stochastic_ablation(tiny, task, trials=23, ablation="zero", metric="logit_diff",
                                keep_prob=0.5, exclusion_keep_prob=None, seed=4, trial="notebook")
    raw = mc.raw["importance"]
    assert len(raw["metric"]) == 25  # rounded up to whole masks: 5 masks x 5 prompts
    np.testing.assert_array_equal(raw["prompt"], np.tile(np.arange(5), 5))
    grouped = raw["masks"].reshape(5, 5, *raw["masks"].shape[1:])
    assert (grouped == grouped[:, :1]).all()  # one mask per group of prompts
    assert len({g[0].tobytes() for g in grouped}) > 1
    # the same mask on every prompt: its rows equal a plain run of that mask per prompt
    circuit_mask = torch.from_numpy(grouped[0, 0])[None]
    from circuitcheck.interventions import Ablation, Variants, ablation_values, run_variants
    from circuitcheck.measures.metrics import get_metric

    enc = task.encode(tiny)
    m = get_metric("logit_diff", has_wrong=True)
    vals = ablation_values(tiny, enc, Ablation.parse("zero"), None)
    plain = m(run_variants(tiny, enc, Variants(circuit_mask), vals))[0]
    np.testing.assert_allclose(raw["metric"][:5], plain, rtol=1e-5, atol=1e-5)
    # the model's name and shape travel with the raw trials
    path = mc.save(tmp_path / "nb.npz")
    meta = StochasticAblation.load_meta(path)
    assert meta["trial"] == "notebook" and meta["seed"] == 4 and meta["metric"] == "logit_diff"
    assert meta["shape"]["n_layers"] == tiny.cfg.n_layers
    assert meta["shape"]["n_heads"] == tiny.cfg.n_heads
    assert meta["model"] == mc.notes["model"]["name"]
    with pytest.raises(cc.CircuitCheckError, match="trial must be"):
        cc.stochastic_ablation(tiny, task, trials=8, trial="mask")
