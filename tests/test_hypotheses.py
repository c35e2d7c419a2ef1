"""Hypothesis tests and sweeps: calibration by simulation, forward passes shared across metrics."""
from __future__ import annotations

import numpy as np
import pytest

import circuitcheck as cc
from circuitcheck import _claims
from circuitcheck.measures.hypotheses import (equivalence_test, equivalence_test_shi,
                                              minimality_from_rows)

from .conftest import own_task


@pytest.mark.slow
def test_shi_equivalence_false_rejection_rate_is_near_alpha():
    """Shi et al.'s test: at the boundary of H0 (|Δ| = ε) it rejects about α of the time."""
    rng = np.random.default_rng(0)
    n, eps, alpha, sims = 60, 0.1, 0.05, 400

    def rate(true_delta: float) -> float:
        rejected = 0
        for s in range(sims):
            full = rng.normal(2.0, 0.5, n)
            circuit = full * (1 + true_delta) + rng.normal(0, 0.3, n)
            rejected += equivalence_test_shi(circuit, full, epsilon=eps, alpha=alpha,
                                             n_boot=300, seed=s).rejected
        return rejected / sims

    boundary = rate(eps)
    assert 0.02 <= boundary <= 0.09  # alpha = 0.05, with 400 simulations' noise
    assert rate(0.0) < 0.02  # a truly equivalent circuit is (almost) never rejected
    assert rate(0.3) > 0.9  # a clearly different one is


@pytest.fixture(params=["gpt2", "llama", "zoo:planted"])
def sweep_case(request, model_dirs):
    if request.param in model_dirs:
        tiny = cc.load_model(model_dirs[request.param], device="cpu")
        return tiny, own_task(tiny, n=8), cc.Circuit({"a": ["0.1", "1.2"], "b": ["1.0"]},
                                                     positions={"b": "end"})
    model = cc.load_model("zoo:planted", device="cpu")
    return (model, cc.tasks.induction(model, n=16, seq_len=8),
            cc.Circuit({"copy": ["0.2", "1.1"]}))


def test_sweep_reuses_forward_passes_across_metrics(sweep_case, monkeypatch):
    tiny, task, circuit = sweep_case
    calls = {"n": 0}
    original = tiny.run_with_hooks

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    def count(metrics):
        calls["n"] = 0
        monkeypatch.setattr(tiny, "run_with_hooks", counting)
        sw = cc.sweep(tiny, task, circuit, ablation=["zero", "mean", "resample"], metric=metrics,
                      batch_size=64)
        monkeypatch.setattr(tiny, "run_with_hooks", original)
        return calls["n"], sw

    one, _ = count(["logit_diff"])
    four, sw = count(["logit_diff", "prob", "top1", "kl"])
    # four metrics cost only the one extra clean pass that the KL reference needs
    assert four == one + 1
    grid = sw.grid()
    assert len(grid) == 3 * 4 * 2
    # each cell equals the stand-alone measurement
    m = cc.faithfulness(tiny, task, circuit, ablation="mean", metric="prob")
    cell = grid[(grid.ablation == "mean") & (grid.metric == "prob") & (grid.positions == "circuit")]
    assert float(cell.value.iloc[0]) == pytest.approx(m.value, rel=1e-6)
    kl = cc.faithfulness(tiny, task, circuit, ablation="zero", metric="kl", normalize="ablated")
    cell = grid[(grid.ablation == "zero") & (grid.metric == "kl") & (grid.positions == "circuit")]
    assert float(cell.value.iloc[0]) == pytest.approx(kl.value, rel=1e-6)


def test_localization_and_minimality_statistics(tiny):
    task = own_task(tiny, n=8)
    circuit = cc.Circuit({"a": ["0.1", "1.2"]})
    loc = cc.localization(tiny, task, circuit, n_random=20, ablation="zero", metric="prob")
    n = cc.necessity(tiny, task, circuit, ablation="zero", metric="prob")
    assert loc.statistic == pytest.approx(n.value * n.baselines["full"], rel=1e-5)
    assert 1 / 21 <= loc.p_value <= 1
    mini = cc.minimality_test(tiny, task, circuit, ablation="zero", metric="prob")
    drops = mini.details["drops"]
    f_c = cc.faithfulness(tiny, task, circuit, ablation="zero", metric="prob")
    f_without = cc.faithfulness(tiny, task, circuit.without(["0.1"]), ablation="zero", metric="prob")
    assert drops["0.1"] == pytest.approx((f_c.value - f_without.value) * f_c.baselines["full"],
                                         rel=1e-4, abs=1e-7)
    assert len(mini.details["reference_gains"]) == 8 - 2
    with pytest.raises(TypeError, match="no truth value"):
        bool(mini)


def test_robust_claim_and_its_verdict_grid_in_the_report(tiny, tmp_path):
    from circuitcheck import _claims
    from circuitcheck.report import write_report

    task = own_task(tiny, n=8)
    L, H = tiny.cfg.n_layers, tiny.cfg.n_heads
    most = cc.Circuit({"most": [(l, h) for l in range(L) for h in range(H) if (l, h) != (0, 0)]})
    _claims.take()
    sw = cc.assert_robust(tiny, task, most, at_least=0.1, ablation=["zero", "mean"],
                          metric=["prob", "top1"], name="all-heads-robust")
    assert set(sw.grid().verdict) == {"held"}
    with _claims.private() as failed, pytest.raises(
            AssertionError, match=r"holds under \d+ of 8 required combinations"):
        cc.assert_robust(tiny, task, cc.Circuit({"one": ["0.0"]}), at_least=0.99,
                         ablation=["zero", "mean"], metric=["prob", "top1"])
    records = _claims.take() + failed
    html = write_report(tmp_path, records)["html"].read_text()
    assert html.count("robustness sweep") == 2 and "mean" in html


def _tost_rate(true_delta: float, n: int, sims: int = 200) -> float:
    rng = np.random.default_rng(1)
    rejected = 0
    for s in range(sims):
        full = rng.normal(2.0, 0.5, n)
        circuit = full * (1 + true_delta) + rng.normal(0, 0.3, n)
        rejected += equivalence_test(circuit, full, epsilon=0.1, alpha=0.05, n_boot=200,
                                     seed=s).rejected
    return rejected / sims


def test_tost_equivalence_is_shown_only_with_evidence():
    """TOST (H0: |Δ| >= ε): at the boundary it shows equivalence at most about α of the time;
    a truly equivalent circuit is shown equivalent with enough prompts, not with few."""
    assert _tost_rate(0.1, n=60) <= 0.08
    assert _tost_rate(0.0, n=200) > 0.9
    assert _tost_rate(0.0, n=5) < 0.1  # absence of evidence is not equivalence
    one = equivalence_test([1.0], [1.0], epsilon=0.1)
    assert not one.rejected and "TOST" in one.name
    with pytest.raises(ValueError, match="alpha must be strictly between 0 and 1"):
        equivalence_test([1.0, 2.0], [1.0, 2.0], epsilon=0.1, alpha=0)


def test_tost_on_the_zoo_needs_enough_prompts():
    model = cc.load_model("zoo:planted", device="cpu")
    c = cc.Circuit({"previous token": ["0.2"], "induction": ["1.1"]})
    few, many = (cc.tasks.induction(model, n=n, seq_len=12, seed=0) for n in (8, 64))
    common = dict(epsilon=0.1, metric="top1", ablation="mean")
    assert not cc.equivalence(model, few, c, **common).rejected
    assert cc.equivalence(model, many, c, **common).rejected
    # Shi et al.'s direction "holds" (does not reject) even on 8 prompts: why it is not default
    assert not cc.equivalence(model, few, c, method="shi", **common).rejected
    from circuitcheck import _claims

    with pytest.raises(AssertionError, match="TOST: equivalence must be shown"):
        cc.assert_equivalent(model, few, c, **common)
    cc.assert_equivalent(model, many, c, **common)
    assert _claims.take()[-1]["measurement"]["n"] == 64


def _minimality_rate(inside, sims: int = 60, outside: int = 250, n: int = 48) -> float:
    rng = np.random.default_rng(2)
    rejected = 0
    for s in range(sims):
        eff_in = inside(rng)
        drops = eff_in[:, None] + rng.normal(0, 0.5, (len(eff_in), n))
        gains = rng.normal(0, 0.05, outside)[:, None] + rng.normal(0, 0.5, (outside, n))
        rejected += minimality_from_rows(drops, gains, n_boot=200, seed=s).rejected
    return rejected / sims


def test_minimality_test_size_and_power_by_simulation():
    """20 circuit heads among 270: heads like the outside ones (one null head among strong
    ones: the least favourable null) are rejected at most about α of the time; a circuit whose
    heads all matter - helping or hurting - is rejected (supported) almost always."""
    null_one = _minimality_rate(lambda r: np.r_[np.full(19, 1.0), r.normal(0, 0.05, 1)])
    assert null_one <= 0.1
    assert _minimality_rate(lambda r: r.normal(0, 0.05, 20)) <= 0.1
    assert _minimality_rate(lambda r: np.r_[np.full(10, 0.5), np.full(10, -0.5)]) >= 0.95
