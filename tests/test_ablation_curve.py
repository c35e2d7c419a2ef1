"""Seed 004's grid (``cc.ablation_curve``): every cell equals a plain one-set-at-a-time
attention ablation, the mean mode ablates on fixed-lag tasks, and bad input is refused."""
from __future__ import annotations

import numpy as np
import pytest

import circuitcheck as cc
from circuitcheck import _claims
from circuitcheck.errors import CircuitCheckError
from circuitcheck.measures.ablation_curve import read_scores_csv


@pytest.fixture(scope="module")
def planted():
    return cc.load_model("zoo:planted", device="cpu")


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_every_cell_equals_a_plain_ablation_of_that_head_set(planted, mode):
    curve = cc.ablation_curve(planted, ks=(0, 1, 3), lags=(5, 9), n=12, n_permutations=3,
                              modes=(mode,), seed=2)
    assert curve.ranked[0] == (1, 1)  # the planted induction head scores highest
    for lag in curve.lags:
        task = cc.tasks.induction(planted, 12, seq_len=lag, seed=2)
        for i, k in enumerate(curve.ks):
            got = curve.chosen[(mode, lag)][i]
            if k == 0:
                assert np.all(got == 0) and np.all(curve.random[(mode, lag)][i] == 0)
                continue
            plain = cc.ablate_attention(planted, task, list(curve.ranked[:k]), mode=mode)
            assert got == pytest.approx(plain.loss_ablated - plain.loss_clean, abs=1e-4)
            for p, perm in enumerate(curve.permutations):
                one = cc.ablate_attention(planted, task, list(perm[:k]), mode=mode)
                assert curve.random[(mode, lag)][i, p] == pytest.approx(
                    one.loss_ablated - one.loss_clean, abs=1e-4)
    t = curve.table()
    assert len(t) == 2 * 3 * 2 and set(t["heads"]) == {"top by score", "random"}
    lo, hi = curve.excess_ci(1, 5)
    assert lo < curve.excess(1, 5).mean() < hi


def test_mean_mode_ablates_on_fixed_lag_tasks_where_prompt_mean_does_not(planted):
    curve = cc.ablation_curve(planted, ks=(1,), lags=(8,), n=16, n_permutations=2,
                              modes=("mean", "prompt-mean"), heads=["1.1"])
    mean = curve.chosen[("mean", 8)][0]
    assert mean.mean() > 1.0  # uniform attention breaks induction: > 1 nat of copying loss
    # the mean profile over prompts of one lag keeps the lag: almost nothing is ablated
    assert abs(curve.chosen[("prompt-mean", 8)][0].mean()) < 0.05


def test_layer_halves_restrict_the_ranking_and_the_random_pool(planted):
    lower = cc.ablation_curve(planted, ks=(2,), lags=(6,), n=8, n_permutations=4,
                              layers="lower")
    upper = cc.ablation_curve(planted, ks=(2,), lags=(6,), n=8, n_permutations=4,
                              layers="upper")
    assert {h[0] for h in lower.ranked} == {0} and {h[0] for h in upper.ranked} == {1}
    assert all(h[0] == 0 for p in lower.permutations for h in p)
    assert all(h[0] == 1 for p in upper.permutations for h in p)


def test_scores_csv_ranks_the_heads_and_missing_heads_are_named(planted, tmp_path):
    L, H = planted.cfg.n_layers, planted.cfg.n_heads
    path = tmp_path / "scores.csv"
    rows = [f"{l},{h},{(l * H + h) / 10}" for l in range(L) for h in range(H)]
    path.write_text("layer,head,score\n" + "\n".join(rows) + "\n")
    grid = read_scores_csv(path, L, H)
    assert grid[1, 3] == pytest.approx(0.7) and grid.shape == (L, H)
    curve = cc.ablation_curve(planted, ks=(1,), lags=(6,), n=6, n_permutations=2, scores=path)
    assert curve.ranked[0] == (1, 3) and curve.score_source.startswith("scores from")
    path.write_text("layer,head,score\n" + "\n".join(rows[:-2]) + "\n")
    with pytest.raises(CircuitCheckError, match=r"no score for 2 of 8 heads \(1.2, 1.3\)"):
        read_scores_csv(path, L, H)
    path.write_text("layer,head,score\n9,0,1.0\n")
    with pytest.raises(CircuitCheckError, match="9.0 is out of range"):
        read_scores_csv(path, L, H)
    path.write_text("l,h,s,t\n0,0,1,2\n")
    with pytest.raises(CircuitCheckError, match="needs a header 'layer,head,score'"):
        read_scores_csv(path, L, H)


@pytest.mark.parametrize("kwargs, needle", [
    ({"layers": "top"}, "layers must be one of"),
    ({"ks": (0, 9)}, "k = 9 is more than the 8 ranked heads"),
    ({"ks": ()}, "non-empty"),
    ({"lags": (1,)}, "lag must be a whole number >= 2"),
    ({"modes": ("uniform",)}, "unknown attention ablation mode"),
    ({"scores": np.zeros((3, 3))}, r"scores must be \[2, 4\]"),
])
def test_bad_input_is_refused_with_the_fix(planted, kwargs, needle):
    with pytest.raises(CircuitCheckError, match=needle):
        cc.ablation_curve(planted, **{"n": 4, "lags": (4,), **kwargs})


def test_the_claim_holds_fails_and_refuses_other_tasks(planted):
    task = cc.tasks.induction(planted, 16, seq_len=6, seed=0)
    with _claims.private() as records:
        m = cc.assert_ablation_curve(planted, task, k=1, over_random_by=0.5, lags=[6, 10])
        assert m.ci[0] >= 0.5 and records[-1]["verdict"] == "held"
        assert records[-1]["measurement"]["lines"]
        with pytest.raises(AssertionError, match="FAILED") as err:
            cc.assert_ablation_curve(planted, task, k=1, over_random_by=5.0, lags=[6, 10])
        assert "per lag    lag 6: top" in str(err.value)
        assert records[-1]["verdict"] == "failed"
    other = cc.Task(prompts=["a b c"], answers=[" d"], name="other")
    with pytest.raises(CircuitCheckError, match="must be the induction builder"):
        cc.assert_ablation_curve(planted, other, k=1, over_random_by=0.5)
