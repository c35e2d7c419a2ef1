"""Claims as pytest tests: they pass when true and fail with the story when false."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import circuitcheck as cc
from circuitcheck import _claims
from circuitcheck.assertions import FAILED, HOLDS, INCONCLUSIVE, verdict
from circuitcheck.measures import Measurement

from .conftest import own_task

heads = st.tuples(st.integers(0, 47), st.integers(0, 63))
names = st.text("abcdefgh xyz-", min_size=1, max_size=12).filter(lambda s: s.strip() == s)


@settings(max_examples=50, deadline=None)
@given(groups=st.dictionaries(names, st.lists(heads, max_size=6), min_size=1, max_size=4),
       mlps=st.one_of(st.none(), st.lists(st.integers(0, 47), max_size=3)), data=st.data())
def test_circuit_yaml_round_trip(groups, mlps, data):
    placed = data.draw(st.lists(st.sampled_from(sorted(groups)), unique=True))
    positions = {g: data.draw(st.sampled_from(["end", "S2", "S1+1", "IO"])) for g in placed}
    c = cc.Circuit(groups, positions=positions, mlps=mlps, name="ioi")
    assert cc.Circuit.from_yaml(c.to_yaml()) == c
    assert cc.Circuit.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_circuit_from_yaml_file(tmp_path):
    path = tmp_path / "ioi.yaml"
    path.write_text("circuit:\n  name: ioi\n  groups:\n    name mover: ['9.9', L10H0, [9, 6]]\n"
                    "  positions: {name mover: end}\n")
    c = cc.Circuit.from_yaml(path)
    assert c.heads == ((9, 9), (10, 0), (9, 6)) and c.positions == {"name mover": "end"}
    path.write_text("groups: [unclosed\n")
    with pytest.raises(cc.CircuitError, match="ioi.yaml: not valid YAML"):
        cc.Circuit.from_yaml(path)


def _m(value, lo, hi):
    import numpy as np
    return Measurement("faithfulness", value, (lo, hi), np.array([value]))


@pytest.mark.parametrize("m, expected", [
    (_m(0.9, 0.85, 0.95), HOLDS), (_m(0.6, 0.5, 0.7), FAILED), (_m(0.8, 0.7, 0.9), INCONCLUSIVE),
])
def test_verdicts_respect_the_interval(m, expected):
    assert verdict(m, at_least=0.8) == expected


def test_true_claim_passes_false_claim_tells_the_story(tiny):
    task = own_task(tiny, n=16)
    L, H = tiny.cfg.n_layers, tiny.cfg.n_heads
    everything = cc.Circuit({"all": [(l, h) for l in range(L) for h in range(H)]}, name="all")
    # keeping every head ablates nothing: 1 by construction, so not measured (never "held")
    trivial = cc.faithfulness(tiny, task, everything, ablation="mean")
    assert trivial.problem and "nothing is ablated" in trivial.problem
    most = cc.Circuit({"most": [(l, h) for l in range(L) for h in range(H) if (l, h) != (0, 0)]},
                      name="most")
    m = cc.assert_faithful(tiny, task, most, at_least=0.6, ablation="mean")
    assert 0.6 < m.ci[0] < m.value < m.ci[1]  # measured: an interval, not a point at 1
    small = cc.Circuit({"movers": ["1.0", "1.3"], "prev": ["0.2"]}, positions={"movers": "end"},
                       name="tiny-circuit")
    measured = cc.faithfulness(tiny, task, small, ablation="mean")
    threshold = measured.ci[1] + 0.5  # above the whole interval: the claim is false
    with _claims.private(), pytest.raises(AssertionError) as info:
        cc.assert_faithful(tiny, task, small, at_least=threshold, ablation="mean",
                           name="movers-sufficient")
    msg = str(info.value)
    first = msg.splitlines()[0]
    assert first == (f"claim 'movers-sufficient' FAILED: faithfulness {measured.value:.2f} < "
                     f"required {threshold:.2f}")
    assert "tiny-circuit: 3 heads in 2 groups, positions ['end']" in msg
    assert "mean-ablated (reference: corrupted prompts)" in msg
    assert f"n={len(task)} prompts, seed 0" in msg
    assert "largest drops if removed: " in msg and "baselines  full model" in msg
    assert "reproduce  pytest" in msg


def test_necessity_claim(tiny):
    task = own_task(tiny, n=16)
    L, H = tiny.cfg.n_layers, tiny.cfg.n_heads
    everything = cc.Circuit({"all": [(l, h) for l in range(L) for h in range(H)]})
    n = cc.necessity(tiny, task, everything, ablation="zero")
    with _claims.private(), pytest.raises(AssertionError,
                                          match="FAILED: necessity .* > allowed at most"):
        cc.assert_necessary(tiny, task, everything, at_most=n.ci[0] - 0.5, ablation="zero")
    cc.assert_necessary(tiny, task, everything, at_most=n.ci[1] + 0.01, ablation="zero")


PLUGIN_TEST = '''
import pytest, circuitcheck as cc

TASK = cc.Task(prompts=["t1 t2 t3"] * 4 + ["t4 t5"] * 4, answers=[{a}] * 4 + [{b}] * 4,
               wrong_answers=[{wa}] * 4 + [{wb}] * 4, name="toy")
ALL = cc.Circuit({{"all": [(l, h) for l in range(2) for h in range(4)]}}, name="all-heads")
MOST = cc.Circuit({{"most": [(l, h) for l in range(2) for h in range(4) if (l, h) != (0, 0)]}},
                  name="most-heads")

@pytest.mark.circuitcheck_model({model!r})
def test_holds(cc_model):
    cc.assert_faithful(cc_model, TASK, MOST, at_least=0.1, ablation="zero", name="most")

@pytest.mark.circuitcheck_model({model!r})
def test_trivial(cc_model):
    cc.assert_faithful(cc_model, TASK, ALL, at_least=0.95, ablation="zero", name="everything")

@pytest.mark.circuitcheck_model({model!r})
def test_fails(cc_model):
    cc.assert_faithful(cc_model, TASK, cc.Circuit({{"one": ["0.0"]}}), at_least=50,
                       ablation="zero", name="one-head-is-50x")

@pytest.mark.circuitcheck_model("someone/not-cached-anywhere")
def test_skipped(cc_model):
    pass
'''


def test_plugin_end_to_end(pytester, model_dirs, tiny, monkeypatch):
    import torch
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(pytester.path / "hf"))
    with torch.inference_mode():
        top = [int(tiny(tiny.to_tokens(p))[0, -1].argmax()) for p in ("t1 t2 t3", "t4 t5")]
        low = [int(tiny(tiny.to_tokens(p))[0, -1].argmin()) for p in ("t1 t2 t3", "t4 t5")]
    model = str(model_dirs["gpt2"])
    if tiny.cfg.n_key_value_heads if hasattr(tiny.cfg, "n_key_value_heads") else False:
        model = str(model_dirs["llama"])
    pytester.makepyfile(test_claims=PLUGIN_TEST.format(model=model, a=top[0], b=top[1],
                                                       wa=low[0], wb=low[1]))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--cc-seed=3",
                                f"--cc-report={pytester.path / 'reports'}", "-rs")
    result.assert_outcomes(passed=1, failed=2, skipped=1)
    result.stdout.fnmatch_lines([
        "*claim 'one-head-is-50x' FAILED: faithfulness * < required 50.00*",
        "*reproduce  pytest test_claims.py::test_fails --cc-seed=3*",
        "*HELD  most: faithfulness *",
        "*UNMEASURABLE  everything: faithfulness n/a*",
        "*FAILED  one-head-is-50x*",
        "claims: 1 failed, 1 held, 1 unmeasurable",
        "circuitcheck report: *index.html",
        "*someone/not-cached-anywhere*not available here*",
    ])
    doc = json.loads((pytester.path / "reports" / "results.json").read_text())
    assert doc["schema_version"] == 1 and doc["summary"] == {"held": 1, "failed": 1, "unmeasurable": 1}
    assert {c["nodeid"] for c in doc["claims"]} == {"test_claims.py::test_holds",
                                                   "test_claims.py::test_fails",
                                                   "test_claims.py::test_trivial"}
    assert "one-head-is-50x" in (pytester.path / "reports" / "index.html").read_text()


def test_xdist_workers_are_pinned_to_their_own_gpu():
    from types import SimpleNamespace

    from circuitcheck.plugin import worker_device

    def config(device, worker=None):
        c = SimpleNamespace(getoption=lambda name: device)
        if worker:
            c.workerinput = {"workerid": worker}
        return c

    assert worker_device(config("auto", "gw5"), n_gpus=4) == "cuda:1"
    assert worker_device(config("auto", "gw0"), n_gpus=1) == "auto"
    assert worker_device(config("cpu", "gw3"), n_gpus=4) == "cpu"
    assert worker_device(config("auto"), n_gpus=4) == "auto"


def test_private_claims_keep_their_errors_out_of_the_run():
    """An error record made inside ``private()`` (a claim failed on purpose) stays out of the
    session's records like a failed measurement does."""
    from circuitcheck import _claims

    before = list(_claims.RECORDS)
    with _claims.private() as kept:
        _claims.record_error("on-purpose", "cannot be read")
    assert [r["claim"] for r in kept] == ["on-purpose"] and kept[0]["verdict"] == "error"
    assert _claims.RECORDS == before
