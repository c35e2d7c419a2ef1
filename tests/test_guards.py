"""Guards against silent failures of the machinery itself (issue 19, TransformerLens #1688):
a hook the bridge accepts but never runs, or an ablation / patch that changes no activation,
makes a claim NOT MEASURABLE with the reason, never a number measured on the wrong model."""
from __future__ import annotations

import math

import numpy as np
import pytest

from circuitcheck import _claims
from circuitcheck.errors import NotMeasurableError
from circuitcheck.interventions._guard import CHANGES_NOTHING, NEVER_FIRED, HookGuard, in_layers


@pytest.fixture(scope="module")
def planted():
    import circuitcheck as cc

    model = cc.load_model("zoo:planted", device="cpu")
    return model, cc.tasks.induction(model, n=8, seq_len=12, seed=0), cc.Circuit(
        {"previous token": ["0.2"], "induction": ["1.1"]})


def silence(monkeypatch: pytest.MonkeyPatch, model, name: str) -> None:
    """Make ``name``'s hook point accept hooks and never run them (#1688): what is registered
    there is a no-op, the caller's function is never called."""
    point = model.hook_dict[name]
    original = point.add_hook

    def add_hook(hook, *args, **kwargs):
        return original(lambda x, hook: None, *args, **kwargs)
    monkeypatch.setattr(point, "add_hook", add_hook)


# -- the guard itself ----------------------------------------------------------------------

def test_guard_flags_a_hook_that_never_fires_and_only_that():
    import torch

    g = HookGuard("ablation")
    _, fired = g.wrap("blocks.0.attn.hook_z", lambda x, hook: x * 0)
    g.wrap("blocks.1.attn.hook_z", lambda x, hook: x * 0)  # registered, never called
    g.wrap("blocks.3.attn.hook_z", lambda x, hook: x * 0, expected=False)  # may be skipped
    fired(torch.ones(2, 3), None)
    problem = g.problem()
    assert problem is not None and NEVER_FIRED in problem and "#1688" in problem
    assert "blocks.1.attn.hook_z" in problem and "blocks.0" not in problem
    assert "blocks.3" not in problem
    with pytest.raises(NotMeasurableError, match="blocks.1.attn.hook_z was registered but never"):
        g.check()


def test_guard_flags_a_run_that_changes_nothing_but_not_one_dead_hook():
    import torch

    x = torch.randn(4, 5)
    same = HookGuard("ablation")
    for name in ("a", "b"):
        _, fn = same.wrap(name, lambda x, hook: x.clone())  # a replacement equal to x
        fn(x, None)
    assert CHANGES_NOTHING in same.problem() and "a, b" in same.problem()
    mixed = HookGuard("ablation")
    _, dead = mixed.wrap("dead", lambda x, hook: x * 1.0)  # e.g. zero-ablating a zero head
    _, live = mixed.wrap("live", lambda x, hook: torch.zeros_like(x))
    dead(x, None)
    live(x, None)
    assert mixed.problem() is None
    readers = HookGuard("cache")  # hooks that only read change nothing and are not checked
    _, save = readers.wrap("blocks.0.hook_resid_pre", lambda x, hook: None)
    save(x, None)
    assert readers.problem() is None


def test_in_layers_expects_only_hooks_the_bridge_runs():
    expect = in_layers(1, 3)
    assert [expect(f"blocks.{l}.attn.hook_z") for l in range(4)] == [False, True, True, False]
    assert expect("unembed.hook_in") and in_layers(0, None)("blocks.7.hook_mlp_out")


# -- (1) a hook that never fires ----------------------------------------------------------

@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
def test_silent_hook_makes_faithfulness_not_measurable(planted, monkeypatch, ablation):
    import circuitcheck as cc

    model, task, circuit = planted
    honest = cc.faithfulness(model, task, circuit, ablation=ablation)
    assert honest.problem is None and math.isfinite(honest.value)
    silence(monkeypatch, model, "blocks.1.attn.hook_z")
    m = cc.faithfulness(model, task, circuit, ablation=ablation)
    assert m.problem is not None and NEVER_FIRED in m.problem
    assert "blocks.1.attn.hook_z" in m.problem and "#1688" in m.problem
    assert math.isnan(m.value) and m.n == len(task.prompts)
    assert "not measurable" in m.summary()
    with _claims.private(), pytest.raises(AssertionError, match="NOT MEASURABLE: hook blocks.1"):
        cc.assert_faithful(model, task, circuit, at_least=0.5, ablation=ablation)
    n = cc.necessity(model, task, circuit, ablation=ablation)
    assert n.problem is not None and NEVER_FIRED in n.problem
    mins = cc.minimality(model, task, circuit, ablation=ablation)
    assert all(s.problem and NEVER_FIRED in s.problem for s in mins.scores.values())


def test_without_the_guard_the_silent_hook_gives_a_plausible_wrong_number(planted, monkeypatch):
    """What the guard prevents: with its check switched off, the sabotaged run returns a finite
    faithfulness with no problem, and not the honest one."""
    import circuitcheck as cc

    model, task, circuit = planted
    honest = cc.faithfulness(model, task, circuit, ablation="zero")
    silence(monkeypatch, model, "blocks.1.attn.hook_z")
    monkeypatch.setattr(HookGuard, "check", lambda self: None)
    wrong = cc.faithfulness(model, task, circuit, ablation="zero")
    assert wrong.problem is None and math.isfinite(wrong.value)
    assert abs(wrong.value - honest.value) > 0.05


def test_silent_hook_makes_patching_not_measurable(planted, monkeypatch):
    import circuitcheck as cc
    from circuitcheck.measures.activation_patching import patching_recovery

    model, task, _ = planted
    silence(monkeypatch, model, "blocks.1.attn.hook_z")
    grid = cc.patch_heads(model, task)
    assert grid.problem is not None and NEVER_FIRED in grid.problem
    assert "blocks.1.attn.hook_z" in grid.problem and np.isnan(grid.values).all()
    rec = patching_recovery(model, task, ["1.1"])
    assert rec.problem is not None and NEVER_FIRED in rec.problem and math.isnan(rec.value)


def test_silent_hook_in_attention_ablation_raises(planted, monkeypatch):
    import circuitcheck as cc

    model, task, _ = planted
    assert cc.ablate_attention(model, task, ["1.1"]).loss_increase > 1.0  # the honest effect
    silence(monkeypatch, model, "blocks.1.attn.hook_attn_scores")
    with pytest.raises(NotMeasurableError, match="blocks.1.attn.hook_attn_scores was registered"):
        cc.ablate_attention(model, task, ["1.1"])


# -- (2) an intervention that changes nothing ----------------------------------------------

def test_replacement_equal_to_the_activation_is_not_measurable(planted, monkeypatch):
    """Replacement table = the clean activations themselves: every ablation hook fires and
    changes nothing."""
    import torch

    import circuitcheck as cc
    from circuitcheck.interventions import ablation as abl
    from circuitcheck.measures import _circuit_setup as circuit_mod

    model, task, circuit = planted

    def clean_values(model, enc, ablation, reference=None, *, with_mlp=False):
        acts = abl._cache_outputs(model, enc.tokens, enc.lengths, with_mlp)
        return abl.AblationValues(abl.Ablation.RESAMPLE, acts["z"], acts.get("mlp"),
                                  torch.arange(enc.n), "clean")
    monkeypatch.setattr(circuit_mod, "ablation_values", clean_values)
    m = cc.faithfulness(model, task, circuit)
    assert m.problem is not None and m.problem.startswith("the ablation changes nothing")
    assert "returned each activation unchanged" in m.problem and math.isnan(m.value)
    with _claims.private(), pytest.raises(AssertionError,
                                          match="NOT MEASURABLE|not measurable"):
        cc.assert_faithful(model, task, circuit, at_least=0.5)


def test_patch_from_identical_prompts_is_not_measurable(planted):
    import circuitcheck as cc

    model, task, _ = planted
    same = cc.Task(prompts=task.prompts, answers=task.answers,
                   wrong_answers=task.wrong_answers, corrupted=task.prompts)
    grid = cc.patch_heads(model, same)
    assert grid.problem is not None and grid.problem.startswith("the patch changes nothing")


# -- (3) honest claims still measure -------------------------------------------------------

def test_zoo_claims_still_measure(planted):
    import circuitcheck as cc
    from circuitcheck.measures.activation_patching import patching_recovery

    model, task, circuit = planted
    for ablation in ("mean", "zero", "resample"):
        m = cc.faithfulness(model, task, circuit, ablation=ablation)
        assert m.problem is None and m.value > 0.9, (ablation, m.summary())
    n = cc.necessity(model, task, circuit)
    assert n.problem is None and n.value < 0.2
    grid = cc.patch_heads(model, task)
    assert grid.problem is None and grid.values[1, 1] > 0.9
    assert abs(grid.values[0, 0]) < 0.05  # the patch of a head that does nothing: no problem
    rec = patching_recovery(model, task, ["1.1"], heatmap=False)
    assert rec.problem is None and rec.value > 0.9


@pytest.mark.filterwarnings("ignore::circuitcheck.errors.CircuitCheckWarning")
def test_tiny_models_still_measure(tiny):
    import circuitcheck as cc

    from .conftest import own_task

    task = own_task(tiny)
    circuit = cc.Circuit({"a": ["0.1", "1.2"]})
    for ablation in ("mean", "zero", "resample"):
        m = cc.faithfulness(tiny, task, circuit, ablation=ablation)
        assert m.problem is None and math.isfinite(m.value), (ablation, m.problem)


def test_device_flags_are_read_once_at_the_end():
    """Off the CPU each call leaves a 0-d tensor (no sync); the end reads them together."""
    import torch

    from circuitcheck.interventions._guard import _any_changed, _Record

    rec = _Record("blocks.0.attn.hook_z", True, True)
    rec.changed.extend([torch.tensor(False), torch.tensor(False)])
    assert _any_changed([rec]) is False
    rec.changed.append(torch.tensor(True))
    assert _any_changed([rec]) is True


# -- (4) edge patching ---------------------------------------------------------------------

PLANTED_EDGES = ["input->a0.h2<v>", "a0.h2->a1.h1<k>", "input->a1.h1<q>", "input->a1.h1<v>",
                 "a1.h1->logits"]


@pytest.mark.parametrize("hook", ["blocks.1.attn.hook_z", "blocks.1.hook_k_input"])
def test_silent_hook_makes_edge_faithfulness_not_measurable(planted, monkeypatch, hook):
    """A sender hook (a head's output) or a receiver hook (a head's key input) that never fires
    leaves edges unpatched: the edge claim is NOT MEASURABLE with the hook's name."""
    import circuitcheck as cc

    model, task, _ = planted
    edges = cc.EdgeCircuit(PLANTED_EDGES)
    honest = cc.faithfulness(model, task, edges, ablation="mean", metric="top1",
                             normalize="ablated")
    assert honest.problem is None and honest.value > 0.9
    silence(monkeypatch, model, hook)
    m = cc.faithfulness(model, task, edges, ablation="mean", metric="top1", normalize="ablated")
    assert m.problem is not None and NEVER_FIRED in m.problem and hook in m.problem
    assert math.isnan(m.value) and "not measurable" in m.summary()
    n = cc.necessity(model, task, edges, ablation="mean")
    assert n.problem is not None and NEVER_FIRED in n.problem
    with _claims.private(), pytest.raises(AssertionError, match=f"NOT MEASURABLE: hook {hook}"):
        cc.assert_faithful(model, task, edges, at_least=0.5, ablation="mean")


def test_silent_edge_hook_is_a_problem_of_the_yaml_claim_not_a_crash(planted, monkeypatch,
                                                                      tmp_path):
    from circuitcheck.claimfile import read_claim_file, run_claim

    model, _, _ = planted
    path = tmp_path / "c.yaml"
    path.write_text("model: zoo:planted\ntask: {builder: induction, n: 8, seq_len: 12, seed: 0}\n"
                    f"circuit: {{edges: {PLANTED_EDGES}}}\nclaims:\n  - name: edges\n"
                    "    expect: {faithfulness: {at_least: 0.9, ablation: mean, metric: top1}}\n")
    claim = read_claim_file(path).claims[0]
    silence(monkeypatch, model, "blocks.1.hook_q_input")
    with _claims.private() as records:
        failures = run_claim(claim, model)
    assert len(failures) == 1 and "NOT MEASURABLE: hook blocks.1.hook_q_input" in failures[0]
    assert "ERROR" not in failures[0]  # a verdict with its reason, not a crash
    assert records[0]["verdict"] == "unmeasurable"
    assert records[0]["measurement"]["circuit"]["n_edges"] == 5


def test_edge_patch_from_identical_prompts_is_not_measurable(planted):
    """Resample-patching from corrupted prompts equal to the clean ones: every receiver hook
    fires and changes nothing."""
    import circuitcheck as cc

    model, task, _ = planted
    same = cc.Task(prompts=task.prompts, answers=task.answers,
                   wrong_answers=task.wrong_answers, corrupted=task.prompts)
    m = cc.faithfulness(model, same, cc.EdgeCircuit(PLANTED_EDGES), ablation="resample")
    assert m.problem is not None and m.problem.startswith("the edge patch changes nothing")
