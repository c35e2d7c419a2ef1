"""The `ioi-toy` zoo model: the IOI builder works on it, it does IOI, its card's circuit holds."""
from __future__ import annotations

import pytest

from circuitcheck import zoo

pytestmark = pytest.mark.skipif(
    "ioi-toy" not in zoo.available(),
    reason="zoo model ioi-toy is not built (python -m circuitcheck.zoo.ioi_toy --out "
           "circuitcheck/zoo/models/ioi-toy)",
)


@pytest.fixture(scope="module")
def model():
    import torch

    import circuitcheck as cc

    torch.set_num_threads(1)
    return cc.load_model("zoo:ioi-toy", device="cpu")


@pytest.fixture(scope="module")
def card():
    return zoo.card("ioi-toy")


def test_ioi_positions_land_on_the_right_words(model):
    import circuitcheck as cc

    task = cc.tasks.ioi(model, n=64, seed=0)
    for i, prompt in enumerate(task.prompts):
        toks = model.to_str_tokens(prompt)
        io, s = task.answers[i].strip(), task.wrong_answers[i].strip()
        assert toks[task.positions["IO"][i]] == io
        assert toks[task.positions["S1"][i]] == s
        assert toks[task.positions["S2"][i]] == s
        assert task.positions["S1+1"][i] == task.positions["S1"][i] + 1
        assert toks[-1] == "to"
        assert "<unk>" not in toks


def test_full_model_does_ioi(model, card):
    import circuitcheck as cc

    task = cc.tasks.ioi(model, n=200, seed=99)
    every = cc.Circuit({"all": [(l, h) for l in range(model.cfg.n_layers)
                                for h in range(model.cfg.n_heads)]})
    acc = cc.faithfulness(model, task, every, metric="top1", ablation="mean")
    ld = cc.faithfulness(model, task, every, metric="logit_diff", ablation="mean")
    assert acc.baselines["full"] >= 0.9
    assert ld.baselines["full"] > 2.0
    assert acc.baselines["full"] == pytest.approx(card["full_model"]["top1_accuracy"], abs=1e-3)
    assert ld.baselines["full"] == pytest.approx(card["full_model"]["logit_diff_mean"], rel=1e-3)


def test_card_circuit_is_faithful(model, card):
    import circuitcheck as cc

    circuit = cc.Circuit(card["circuit"], positions=card["positions"])
    task = cc.tasks.ioi(model, n=100, seed=1)
    m = cc.faithfulness(model, task, circuit, ablation="mean-by-template")
    lo, hi = card["circuit_measurements"]["faithfulness"]["ci"]
    assert m.problem is None
    assert lo <= m.value <= hi, m.summary()
    assert m.ci[0] >= card["faithful_at_least"], m.summary()
    n = cc.necessity(model, task, circuit, ablation="mean-by-template")
    nlo, nhi = card["circuit_measurements"]["necessity"]["ci"]
    assert nlo <= n.value <= nhi, n.summary()
