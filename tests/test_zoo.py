"""The zoo: circuitcheck recovers the circuits the project's own models are known to hold."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import circuitcheck as cc
from circuitcheck import _claims
from circuitcheck import zoo

BUILT = zoo.available()
#: The zoo's copying models: a previous-token head feeding an induction head.
COPYING = [name for name in ("planted", "induction-2l") if name in BUILT]


def _circuit(name: str) -> cc.Circuit:
    return cc.Circuit(zoo.card(name)["circuit"], name=f"{name}-card")


@pytest.fixture(scope="module", params=COPYING)
def zoo_model(request):
    model = cc.load_model(f"zoo:{request.param}", device="cpu")
    seq_len = 12
    task = cc.tasks.induction(model, n=48, seq_len=seq_len, seed=11)
    return request.param, model, task


def test_zoo_is_built():
    assert COPYING == ["planted", "induction-2l"]


def test_known_heads_keep_the_copying_and_their_removal_breaks_it(zoo_model):
    name, model, task = zoo_model
    circuit = _circuit(name)
    common = dict(ablation="mean", metric="top1", normalize="ablated")
    kept = cc.faithfulness(model, task, circuit, **common)
    assert kept.ci[0] >= 0.9, kept.summary()  # the known heads alone retain >= 90%
    gone = cc.necessity(model, task, circuit, ablation="mean", metric="top1")
    chance = 1 / len(cc.tasks._induction.content_token_ids(model))
    assert gone.value * gone.baselines["full"] <= 5 * chance  # near chance (top-1 accuracy)
    assert gone.baselines["full"] >= 0.8  # while the full model copies


def test_head_scores_rank_the_known_heads_first(zoo_model):
    name, model, _ = zoo_model
    card = zoo.card(name)["circuit"]
    prev = cc.head_scores(model, "previous_token", n=32, seq_len=12)
    ind = cc.head_scores(model, "induction", n=32, seq_len=12)
    assert prev.top(1) == [tuple(card["previous token"][0])]
    assert ind.top(1) == [tuple(card["induction"][0])]


def test_a_wrong_circuit_of_the_same_size_fails_clearly(zoo_model):
    name, model, task = zoo_model
    true_heads = set(_circuit(name).heads)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    wrong = [(l, h) for l in range(L) for h in range(H) if (l, h) not in true_heads][:2]
    circuit = cc.Circuit({"decoys": wrong}, name="decoys")
    with _claims.private(), pytest.raises(AssertionError) as info:
        cc.assert_faithful(model, task, circuit, at_least=0.9, ablation="mean", metric="top1",
                           normalize="ablated", name="decoys-copy")
    first = str(info.value).splitlines()[0]
    assert first.startswith("claim 'decoys-copy' FAILED: faithfulness ") and "< required 0.90" in first
    assert "largest drops if removed" in str(info.value)


def test_stochastic_ablation_puts_the_known_heads_on_top_quickly(zoo_model):
    name, model, task = zoo_model
    heads = list(_circuit(name).heads)
    mc = cc.stochastic_ablation(model, task, heads=heads, trials=4096, ablation="mean")
    assert mc.decision == "held"
    assert set(mc.importance.ranking()[:2]) == set(heads)
    assert mc.trials_used <= 2 * 4096


def test_hypothesis_tests_accept_the_true_circuit_and_reject_a_wrong_one(zoo_model):
    name, model, task = zoo_model
    true = _circuit(name)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    wrong = cc.Circuit({"decoys": [(l, h) for l in range(L) for h in range(H)
                                   if (l, h) not in set(true.heads)][:len(true)]})
    common = dict(metric="top1", ablation="mean", alpha=0.05)
    # TOST: rejecting H0 |Δ| >= ε shows equivalence (the true circuit), not the wrong one
    assert cc.equivalence(model, task, true, epsilon=0.1, **common).rejected
    assert not cc.equivalence(model, task, wrong, epsilon=0.1, **common).rejected
    assert cc.localization(model, task, true, n_random=30, **common).rejected
    assert not cc.localization(model, task, wrong, n_random=30, **common).rejected


def test_zoo_loads_offline_from_the_package_alone(tmp_path):
    code = ("import circuitcheck as cc; m = cc.load_model('zoo:planted', device='cpu'); "
            "print(m.cfg.n_layers, m.cfg.n_heads)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "empty-hf-home")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=tmp_path, check=True)
    assert out.stdout.split()[-2:] == ["2", "4"]
    assert not (tmp_path / "empty-hf-home").exists() or not any((tmp_path / "empty-hf-home").rglob("*.safetensors"))


#: Card entries that say what a model *is* (its declared circuit, construction, data, checks):
#: a rebuild must reproduce them exactly. The rest are measurements of the built weights.
DECLARED = ("name", "description", "architecture", "circuit", "positions", "groups_explained",
            "faithful_at_least", "distractors", "construction", "circuit_identification",
            "training", "bridge_processing", "checks", "vocab", "eval")


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILT)
def test_rebuilding_reproduces_the_card(name, tmp_path):
    """The recipe rebuilds the model anywhere: the build's own circuit checks pass (it exits 1
    otherwise), the card declares the same circuit and data and has the same shape, and a
    constructed (untrained) model has the shipped weights. Trained weights are reproducible
    only on the same kind of CPU: another BLAS kernel rounds differently and SGD carries the
    difference on (measured: ioi-toy rebuilt on an AMD EPYC differs from the shipped weights
    by up to 0.33), so the measured numbers are not compared."""
    out = subprocess.run([sys.executable, "-m", "circuitcheck.zoo", "build", name, "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    shipped = zoo.card(name)
    rebuilt = json.loads((tmp_path / name / "card.json").read_text())
    assert _shape(rebuilt) == _shape(shipped)
    for key in DECLARED:
        assert _untimed(rebuilt.get(key)) == _untimed(shipped.get(key)), key
    assert all(rebuilt.get("checks", {}).values())
    if "training" not in shipped:
        from safetensors.torch import load_file

        built = load_file(tmp_path / name / "model.safetensors")
        ours = load_file(Path(zoo.__file__).parent / "models" / name / "model.safetensors")
        assert built.keys() == ours.keys()
        for k in ours:
            assert torch.equal(built[k], ours[k]), k


def _untimed(value):
    """An entry without its wall-clock timings (keys naming seconds)."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if "seconds" not in k}
    return value


def _shape(card):
    """A card's entries and list lengths, without its values or ``build`` (the provenance of
    one particular build)."""
    return _layout({k: v for k, v in card.items() if k != "build"})


def _layout(value):
    if isinstance(value, dict):
        return {k: _layout(v) for k, v in value.items()}
    if isinstance(value, list):
        return [len(value)]
    return type(value).__name__ if not isinstance(value, (int, float)) else "number"


def test_card_shape_ignores_values_but_not_entries():
    card = {"heads": [[1, 2]], "acc": 0.995, "n": 3, "build": {"seed": 0}}
    assert _shape({**card, "acc": 0.5, "n": 4, "build": {}}) == _shape(card)
    assert _shape({**card, "heads": [[1, 2], [3, 4]]}) != _shape(card)
    assert _shape({k: v for k, v in card.items() if k != "n"}) != _shape(card)


def test_saturated_attention_scores_are_not_zero_width_intervals():
    """The planted previous-token head attends with weight 1.0 on every sequence: its
    interval is the Wilson interval of 32/32 (never [1, 1]); a score that varies keeps its
    bootstrap interval (not widened to Wilson's)."""
    from circuitcheck.stats import wilson_ci

    planted = cc.load_model("zoo:planted", device="cpu")
    s = cc.head_scores(planted, "previous_token", n=32, seq_len=12)
    assert s[(0, 2)] == pytest.approx(1.0)
    (w_lo,), _ = wilson_ci(np.array([32.0]), np.array([32.0]))
    assert s.ci_low[0, 2] == pytest.approx(w_lo) and s.ci_high[0, 2] == 1.0
    other = cc.head_scores(cc.load_model("zoo:induction-2l", device="cpu"), "previous_token",
                           n=32, seq_len=12)
    lo, hi = other.ci_low[0, 1], other.ci_high[0, 1]
    (w_lo,), (w_hi,) = wilson_ci(np.array([other[(0, 1)] * 32]), np.array([32.0]))
    assert 0 < hi - lo < (w_hi - w_lo) / 4
