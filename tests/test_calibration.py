"""Monte-Carlo keep-probability calibration, degenerate regimes said plainly, metrics other
than top-1, and trials labelled as trials."""
from __future__ import annotations

import numpy as np
import pytest

import circuitcheck as cc
from circuitcheck.measures.stochastic import INFORMATIVE, TARGETS, degenerate


@pytest.fixture(scope="module")
def planted():
    model = cc.load_model("zoo:planted")
    return model, cc.tasks.induction(model, n=8, seq_len=12, seed=0)


def test_calibrated_regimes_are_informative(planted):
    model, task = planted
    mc = cc.stochastic_ablation(model, task, trials=256, seed=0, progress=False,
                                calibration_trials=32)
    cal = mc.notes["calibration"]["regimes"]
    ends = mc.notes["ends"]
    r0, r1 = ends["all ablated"], ends["full"]
    assert r1 - r0 > 0.5  # top-1: the full model does the task, ablating everything does not
    for regime in ("importance", "exclusion"):
        eff = getattr(mc, regime)
        c = cal[regime]
        assert eff.keep_prob == c["keep_prob"] and [c["keep_prob"], c["measured"]] in c["probes"]
        assert c["target"] == pytest.approx(r0 + TARGETS[regime] * (r1 - r0))
        # the run's own trials (fresh draws) land near the target, well inside the range
        frac = (eff.rate - r0) / (r1 - r0)
        assert abs(frac - TARGETS[regime]) < 0.15 and eff.degenerate is None
        assert eff.rate == pytest.approx(mc.raw[regime]["metric"].mean())
    assert mc.importance.keep_prob < mc.exclusion.keep_prob
    assert set(mc.importance.ranking()[:2]) == {(0, 2), (1, 1)}  # the planted circuit
    assert "calibrated" in mc.summary()


def test_other_metrics_use_the_same_estimator(planted):
    model, task = planted
    for metric in ("logit_diff", "prob"):
        mc = cc.stochastic_ablation(model, task, trials=192, metric=metric, seed=1, calibration_trials=32,
                                    exclusion_keep_prob=None, progress=False)
        eff = mc.importance
        assert set(eff.ranking()[:2]) == {(0, 2), (1, 1)}
        # least squares on the per-trial metric: the planted heads' intervals exclude 0
        assert eff.ci_low[1, 1] > 0 and eff.ci_low[0, 2] > 0 and eff.degenerate is None
        raw = mc.raw["importance"]
        kept = raw["masks"][:, 1, 1]
        assert eff.rate_kept[1, 1] == pytest.approx(raw["metric"][kept].mean())


def test_degenerate_regimes_are_said_plainly(planted):
    model, task = planted
    mc = cc.stochastic_ablation(model, task, keep_prob=0.02, exclusion_keep_prob=None,
                                trials=128, seed=0, progress=False)
    assert "calibration" not in mc.notes
    assert mc.importance.degenerate and "succeeds in only" in mc.importance.degenerate
    assert "DEGENERATE" in mc.summary() and "not findings" in mc.summary()
    assert degenerate(np.r_[np.ones(50), np.zeros(50)]) is None
    assert "fails in only" in degenerate(np.r_[np.ones(99), 0.0])
    y = np.full(200, 1.0) + np.linspace(0, 0.01, 200)  # continuous, right at the full model
    assert "outside the informative" in degenerate(y, (0.0, 1.0))
    assert degenerate(y * 0.5, (0.0, 1.0)) is None and INFORMATIVE == (0.05, 0.95)
    assert "leaves the mean metric" in degenerate(y, (2.0, 2.0))


def test_trials_are_labelled_as_trials():
    from circuitcheck.assertions import claim_message
    from circuitcheck.measures import Measurement

    m = Measurement(kind="importance effect", value=0.1, ci=(0.05, 0.15),
                    per_prompt=np.zeros(1024), unit="trials")
    text = claim_message("x", m, "failed", ">=", 0.5)
    assert "n=1024 trials" in text and m.to_dict()["unit"] == "trials"
    assert "n=3 prompts" in claim_message("y", Measurement("f", 0.1, (0, 1), np.zeros(3)),
                                          "failed", ">=", 0.5)


def test_selection_stops_once_its_top_k_is_stable(planted):
    """A selection claim stops sampling once its top k are the same set at two consecutive
    looks; that set is the one the whole budget selects, and the other regime gets as many
    trials. A run with a claim of its own refuses stable_top."""
    from circuitcheck import _claims

    model, _ = planted
    task = cc.tasks.induction(model, n=64, seq_len=12, seed=0)
    kw = dict(top=2, retained_at_least=0.9, ablated_at_most=0.1, trials=4096, metric="top1",
              seed=0, progress=False)
    with _claims.private() as records:
        mc = cc.assert_selection(model, task, **kw)
    used = len(mc.raw["importance"]["metric"])
    assert mc.decision == "stable" and mc.notes["stable_top"] == 2 and used < 4096
    assert len(mc.raw["exclusion"]["metric"]) == used
    assert records[-1]["verdict"] == "held"
    assert sorted(records[-1]["heads"]) == [[0, 2], [1, 1]]  # the planted circuit
    with _claims.private():
        whole = cc.assert_selection(model, task, stable_top=None, **kw)
    assert len(whole.raw["importance"]["metric"]) == 4096 and whole.decision is None
    assert set(whole.importance.ranking()[:2]) == set(mc.importance.ranking()[:2])
    with pytest.raises(cc.CircuitCheckError, match="drop stable_top"):
        cc.stochastic_ablation(model, task, heads=["1.1"], stable_top=2, trials=256)
