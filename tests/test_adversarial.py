"""The adversarial list of issue 19: bad inputs a new user tries, each one clear error (file
and line for YAML), never a raw traceback, a silent wrong result or a lost result."""
from __future__ import annotations

import json

import pytest

from circuitcheck.claimfile import read_claim_file
from circuitcheck.errors import ClaimFileError

HEAD = """\
model: zoo:planted
task: {builder: induction, n: 8, seq_len: 12, seed: 0}
circuit:
  groups: {previous token: ["0.2"], induction: ["1.1"]}
claims:
"""

# (id, the YAML's claim part or a whole file, text expected in the message)
BAD_CLAIMS = [
    ("mlps-int", "  - name: c\n    circuit: {groups: {a: ['1.1']}, mlps: 3}\n"
                 "    expect: {faithfulness: {at_least: 0.5}}\n", "mlps must be a list"),
    ("mlps-text", "  - name: c\n    circuit: {groups: {a: ['1.1']}, mlps: [x]}\n"
                  "    expect: {faithfulness: {at_least: 0.5}}\n", "mlps must be a list"),
    ("positions-list", "  - name: c\n    circuit: {groups: {a: ['1.1']}, positions: [end]}\n"
                       "    expect: {faithfulness: {at_least: 0.5}}\n", "positions must be a mapping"),
    ("builder-list", "  - name: c\n    task: {builder: [induction]}\n"
                     "    expect: {faithfulness: {at_least: 0.5}}\n", "unknown task builder"),
    ("jsonl-path-list", "  - name: c\n    task: {builder: jsonl, path: [a]}\n"
                        "    expect: {faithfulness: {at_least: 0.5}}\n", "must be a file name"),
    ("jsonl-missing", "  - name: c\n    task: {builder: jsonl, path: nowhere.jsonl}\n"
                      "    expect: {faithfulness: {at_least: 0.5}}\n", "does not exist"),
    ("name-list", "  - name: [a, b]\n    expect: {faithfulness: {at_least: 0.5}}\n", "name must be a text"),
    ("name-int", "  - name: 5\n    expect: {faithfulness: {at_least: 0.5}}\n", "name must be a text"),
    ("name-bool", "  - name: yes\n    expect: {faithfulness: {at_least: 0.5}}\n", "name must be a text"),
    ("name-float", "  - name: 1.0\n    expect: {faithfulness: {at_least: 0.5}}\n", "name must be a text"),
    ("name-date", "  - name: 2024-01-01\n    expect: {faithfulness: {at_least: 0.5}}\n", "name must be a text"),
    ("name-null", "  - name: null\n    expect: {faithfulness: {at_least: 0.5}}\n", "name must be a text"),
    ("confidence-0", "  - name: c\n    expect: {faithfulness: {at_least: 0.5, confidence: 0}}\n",
     "strictly between 0 and 1"),
    ("confidence-1", "  - name: c\n    expect: {faithfulness: {at_least: 0.5, confidence: 1.0}}\n",
     "strictly between 0 and 1"),
    ("confidence-text", "  - name: c\n    expect: {faithfulness: {at_least: 0.5, confidence: '0.9'}}\n",
     "must be a number"),
    ("allow-inconclusive-text", "  - name: c\n    expect: {faithfulness: {at_least: 0.5, "
                                "allow_inconclusive: 'false'}}\n", "true or false"),
    ("at-least-nan", "  - name: c\n    expect: {faithfulness: {at_least: .nan}}\n", "finite"),
    ("at-least-minus-inf", "  - name: c\n    expect: {faithfulness: {at_least: -.inf}}\n", "finite"),
    ("alpha-0", "  - name: c\n    expect: {equivalence: {epsilon: 0.1, alpha: 0}}\n",
     "strictly between 0 and 1"),
    ("epsilon-0", "  - name: c\n    expect: {equivalence: {epsilon: 0}}\n", "positive"),
    ("head-scores-n-0", "  - name: c\n    expect: {head_scores: {induction: {heads: ['1.1'], n: 0}}}\n",
     "whole number >= 1"),
    ("head-scores-top-0", "  - name: c\n    expect: {head_scores: {induction: {heads: ['1.1'], top: 0}}}\n",
     "whole number >= 1"),
    ("head-scores-seq-len-0", "  - name: c\n    expect: {head_scores: {induction: {heads: ['1.1'], "
                              "seq_len: 0}}}\n", "whole number >= 1"),
    ("important-top-0", "  - name: c\n    expect: {important: {heads: ['1.1'], top: 0}}\n",
     "whole number >= 1"),
    ("trials-text", "  - name: c\n    expect: {important: {heads: ['1.1'], trials: '100'}}\n",
     "whole number"),
    ("trials-float", "  - name: c\n    expect: {important: {heads: ['1.1'], trials: 1.5}}\n",
     "whole number"),
    ("keep-prob-text", "  - name: c\n    expect: {important: {heads: ['1.1'], keep_prob: '0.3'}}\n",
     "must be a number"),
    ("min-trials-0", "  - name: c\n    expect: {important: {heads: ['1.1'], min_trials: 0}}\n",
     "whole number >= 1"),
    ("min-trials-neg", "  - name: c\n    expect: {important: {heads: ['1.1'], min_trials: -5}}\n",
     "whole number >= 1"),
    ("localization-n-random-0", "  - name: c\n    expect: {localization: {n_random: 0}}\n",
     "whole number >= 1"),
    ("localization-n-random-neg", "  - name: c\n    expect: {localization: {n_random: -3}}\n",
     "whole number >= 1"),
    ("robust-ablation-empty", "  - name: c\n    expect: {robust: {at_least: 0.8, ablation: []}}\n",
     "at least one"),
    ("metric-list", "  - name: c\n    expect: {faithfulness: {at_least: 0.8, metric: [top1]}}\n",
     "must be a name"),
    ("robust-require-text", "  - name: c\n    expect: {robust: {at_least: 0.8, require: bogus}}\n",
     "require must be 'all'"),
    ("heads-text", "  - name: c\n    expect: {patching: {heads: '1.1', at_least: 0.5}}\n",
     "heads must be a non-empty list"),
]


@pytest.mark.parametrize("body,needle", [c[1:] for c in BAD_CLAIMS], ids=[c[0] for c in BAD_CLAIMS])
def test_a_bad_value_is_one_error_with_file_and_line(tmp_path, body, needle):
    good = "  - name: good\n    expect: {faithfulness: {at_least: 0.5}}\n"
    path = tmp_path / "claims.yaml"
    path.write_text(HEAD + good + body)
    parsed = read_claim_file(path)
    assert [c.name for c in parsed.claims] == ["good"]  # the other claim survives
    assert len(parsed.errors) == 1
    name, line, message = parsed.errors[0]
    assert isinstance(name, str) and name
    assert needle in message, message
    assert f"claims.yaml:{line}" in message or "claims.yaml:" in message
    assert line >= 8


BAD_FILES = [
    ("non-utf8", HEAD.encode() + b"  - name: caf\xe9\n    expect: {faithfulness: {at_least: 0.5}}\n",
     "not UTF-8"),
    ("duplicate-key", (HEAD + "  - name: c\n    expect:\n      faithfulness: {at_least: 0.9, "
                       "at_least: 0.1}\n").encode(), "duplicate key 'at_least'"),
    ("duplicate-top-key", ("model: zoo:planted\nmodel: zoo:induction-2l\n" + HEAD[19:]
                           + "  - name: c\n    expect: {faithfulness: {at_least: 0.5}}\n").encode(),
     "duplicate key 'model'"),
    ("alias-bomb", ("a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c]\n"
                    "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e]\n"
                    "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nclaims: [*g]\n").encode(),
     "aliases expand"),
]


@pytest.mark.parametrize("data,needle", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_a_bad_file_is_a_clear_error(tmp_path, data, needle):
    path = tmp_path / "claims.yaml"
    path.write_bytes(data)
    with pytest.raises(ClaimFileError) as err:
        read_claim_file(path)
    assert needle in str(err.value)
    assert "claims.yaml" in str(err.value)
    assert len(str(err.value)) < 2000


GOOD_FILE = HEAD + """\
  - name: good-one
    expect: {faithfulness: {at_least: 0.5, ablation: mean, metric: top1, normalize: ablated}}
  - name: out-of-range
    circuit: {groups: {a: ["7.1"]}}
    expect: {faithfulness: {at_least: 0.5, ablation: mean, metric: top1}}
"""
BAD_FILE = HEAD + """\
  - name: 5
    expect: {faithfulness: {at_least: 0.5}}
  - name: mlps-int
    circuit: {groups: {a: ["1.1"]}, mlps: 3}
    expect: {faithfulness: {at_least: 0.5}}
"""


def _run(pytester, *args):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "circuits", *args)


def test_bad_files_fail_alone_and_every_claim_is_reported(pytester):
    d = pytester.path / "circuits"
    d.mkdir()
    (d / "good.yaml").write_text(GOOD_FILE)
    (d / "bad.yaml").write_text(BAD_FILE)
    (d / "latin1.yaml").write_bytes(b"model: zoo:planted\n# caf\xe9\nclaims: []\n")
    rep, base = pytester.path / "r", pytester.path / "base.json"
    full = _run(pytester, f"--cc-report={rep}", f"--cc-save-baseline={base}")
    full.assert_outcomes(passed=1, failed=4)
    assert "INTERNALERROR" not in full.stdout.str()
    full.stdout.fnmatch_lines(["*bad.yaml:*name must be a text*",
                               "*latin1.yaml:2: not UTF-8*"])
    doc = json.loads((rep / "results.json").read_text())
    names = sorted(c["claim"] for c in doc["claims"])
    assert names == ["<file>", "claim-0", "good-one", "mlps-int", "out-of-range"], names
    assert doc["summary"] == {"held": 1, "error": 4}
    html = (rep / "index.html").read_text()
    assert "4 of 5 claims did not hold" in html and "all 1 claims held" not in html
    assert "out of range" in html
    assert not list(rep.glob(".*.tmp"))  # atomic writes leave no temporary files

    # a -k run is partial: it does not replace the full report or baseline ...
    before = (rep / "results.json").read_text(), base.read_text()
    part = _run(pytester, "-k", "good", f"--cc-report={rep}", f"--cc-save-baseline={base}")
    part.stdout.fnmatch_lines(["*PARTIAL run (-k 'good'*", "*baseline NOT written*",
                               "*report NOT written*"])
    assert ((rep / "results.json").read_text(), base.read_text()) == before
    # ... unless asked, and then it says it is partial
    _run(pytester, "-k", "good", f"--cc-report={rep}", f"--cc-save-baseline={base}",
         "--cc-replace-with-partial")
    doc = json.loads((rep / "results.json").read_text())
    assert doc["run"]["partial"].startswith("-k 'good'")
    assert "PARTIAL run" in (rep / "index.html").read_text()
    assert json.loads(base.read_text())["partial"]


def test_bad_output_paths_are_refused_before_the_run(pytester):
    (pytester.path / "circuits").mkdir()
    (pytester.path / "circuits" / "good.yaml").write_text(GOOD_FILE)
    (pytester.path / "afile").write_text("x")
    (pytester.path / "site").mkdir()
    (pytester.path / "site" / "index.html").write_text("<html>my own page</html>")
    for args, needle in [
            (["--cc-report=afile"], "exists and is not a directory"),
            (["--cc-report=afile/sub"], "is a file"),
            (["--cc-report=site"], "is not a circuitcheck report"),
            (["--cc-save-baseline=site"], "is a directory"),
            (["--cc-save-baseline=afile/b.json"], "is not a directory")]:
        result = _run(pytester, *args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR, (args, result.stdout.str())
        result.stderr.fnmatch_lines([f"*{needle}*"])
    assert (pytester.path / "site" / "index.html").read_text() == "<html>my own page</html>"


# --- the Python API: each bad argument is one clear error, never a raw traceback -----------

@pytest.fixture(scope="module")
def planted():
    import circuitcheck as cc

    model = cc.load_model("zoo:planted", device="cpu")
    return model, cc.tasks.induction(model, n=8, seq_len=12, seed=0), cc.Circuit(
        {"previous token": ["0.2"], "induction": ["1.1"]})


API_CASES = [
    ("faithful-confidence-text", "faithful", {"at_least": 0.5, "confidence": "0.9"}, "must be a number"),
    ("faithful-confidence-0", "faithful", {"at_least": 0.5, "confidence": 0}, "strictly between"),
    ("faithful-at-least-nan", "faithful", {"at_least": float("nan")}, "finite"),
    ("faithful-at-least-minus-inf", "faithful", {"at_least": float("-inf")}, "finite"),
    ("faithful-allow-inconclusive-text", "faithful",
     {"at_least": 0.5, "allow_inconclusive": "false"}, "true or false"),
    ("faithful-seed-text", "faithful", {"at_least": 0.5, "seed": "x"}, "whole number"),
    ("equivalent-alpha-0", "equivalent", {"epsilon": 0.1, "alpha": 0}, "strictly between"),
    ("equivalent-epsilon-nan", "equivalent", {"epsilon": float("nan")}, "finite"),
    ("localized-n-random-0", "localized", {"n_random": 0}, "whole number >= 1"),
    ("localized-n-random-neg", "localized", {"n_random": -3}, "whole number >= 1"),
    ("minimal-n-random-0", "minimal", {"n_random": 0}, "whole number >= 1"),
    ("important-trials-text", "important", {"trials": "100"}, "whole number"),
    ("important-trials-float", "important", {"trials": 1.5}, "whole number"),
    ("important-keep-prob-text", "important", {"keep_prob": "0.3"}, "must be a number"),
    ("important-min-trials-0", "important", {"min_trials": 0}, "whole number >= 1"),
    ("important-min-trials-neg", "important", {"min_trials": -5}, "whole number >= 1"),
    ("important-confidence-1", "important", {"confidence": 1.0}, "strictly between"),
    ("important-top-0", "important", {"top": 0}, "whole number >= 1"),
    ("head-score-n-0", "head_score", {"n": 0}, "whole number >= 1"),
    ("head-score-top-0", "head_score", {"top": 0}, "whole number >= 1"),
    ("head-score-seq-len-0", "head_score", {"seq_len": 0}, "whole number >= 2"),
]


@pytest.mark.parametrize("fn,kwargs,needle", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_bad_api_arguments_are_clear_errors(planted, fn, kwargs, needle):
    import circuitcheck as cc
    from circuitcheck._validate import ArgumentError

    model, task, circuit = planted
    call = {"faithful": lambda: cc.assert_faithful(model, task, circuit, **kwargs),
            "equivalent": lambda: cc.assert_equivalent(model, task, circuit, **kwargs),
            "localized": lambda: cc.assert_localized(model, task, circuit, **kwargs),
            "minimal": lambda: cc.assert_minimal(model, task, circuit, **kwargs),
            "important": lambda: cc.assert_important(model, task, ["1.1"], **kwargs),
            "head_score": lambda: cc.assert_head_score(model, ["1.1"], "induction", **kwargs)}[fn]
    with pytest.raises(ArgumentError, match=needle):
        call()


def test_degenerate_measurements_are_not_measurable(planted):
    """One prompt gives CI [1, 1]; an ablation that changes nothing (mean by template with one
    prompt per template) makes every circuit score as the full model: neither may hold."""
    import circuitcheck as cc

    model, task, circuit = planted
    one = cc.Task(prompts=task.prompts[:1], answers=task.answers[:1],
                  wrong_answers=None if task.wrong_answers is None else task.wrong_answers[:1])
    from circuitcheck import _claims

    with _claims.private(), pytest.raises(AssertionError, match="NOT MEASURABLE: only 1 prompt"):
        cc.assert_faithful(model, one, circuit, at_least=0.99, ablation="zero", metric="top1")
    solo = cc.Task(prompts=task.prompts, answers=task.answers, wrong_answers=task.wrong_answers,
                   groups=[f"t{i}" for i in range(len(task.prompts))])
    with _claims.private(), pytest.raises(AssertionError,
                                          match="NOT MEASURABLE: the ablation changes nothing"):
        cc.assert_faithful(model, solo, cc.Circuit({"none": []}), at_least=0.9,
                           ablation="mean-by-template", reference="clean")


def test_half_precision_on_a_gpt2_layout_model_runs_on_cpu(model_dirs):
    import circuitcheck as cc

    from .conftest import own_task

    for dtype in ("float16", "bfloat16"):
        model = cc.load_model(model_dirs["gpt2"], device="cpu", dtype=dtype)
        m = cc.faithfulness(model, own_task(model, n=4), cc.Circuit({"a": ["0.1"]}),
                            ablation="zero")
        assert m.n == 4


def test_model_names_that_are_not_models_say_so(tmp_path, monkeypatch):
    from circuitcheck.errors import ModelNotFoundError
    from circuitcheck.models import resolve_source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for name, needle in [("zoo-planted", "did you mean 'zoo:planted'"),
                         ("planted", "did you mean 'zoo:planted'"),
                         ("models/nothing-here", "does not exist"),
                         ("./nothing", "does not exist")]:
        with pytest.raises(ModelNotFoundError, match=needle):
            resolve_source(name)


def test_bad_device_is_a_clear_error():
    from circuitcheck.errors import ModelNotFoundError
    from circuitcheck.models import resolve_device

    with pytest.raises(ModelNotFoundError, match="unknown device 'bogus'"):
        resolve_device("bogus")


def test_text_prompt_longer_than_the_context_is_refused(planted):
    import circuitcheck as cc
    from circuitcheck.errors import TaskError

    model, task, circuit = planted
    word = model.to_string(task.prompts[0][1:4])  # three words of the model's vocabulary
    long = " ".join([word] * (model.cfg.n_ctx // 3 + 2))
    bad = cc.Task(prompts=[long, word], answers=task.answers[:2])
    with pytest.raises(TaskError, match="longer than the model's context"):
        cc.faithfulness(model, bad, circuit, ablation="zero", metric="top1")


def test_reproduce_line_is_shell_quoted(planted, monkeypatch):
    import circuitcheck as cc

    model, task, circuit = planted
    from circuitcheck import _claims

    monkeypatch.setenv("PYTEST_CURRENT_TEST", "c.yaml::$(touch pwned) (call)")
    with _claims.private(), pytest.raises(AssertionError) as err:
        cc.assert_faithful(model, task, circuit, at_least=1.5, ablation="mean", metric="top1")
    assert "reproduce  pytest 'c.yaml::$(touch pwned)' --cc-seed=" in str(err.value)


@pytest.mark.parametrize("args,needle", [
    (["--cc-device=bogus"], "--cc-device 'bogus' is not a device"),
    (["--cc-dtype=int4"], "--cc-dtype 'int4' is not supported"),
    (["--cc-tolerance=nan"], "--cc-tolerance must be a finite number"),
    (["--cc-tolerance=inf"], "--cc-tolerance must be a finite number"),
], ids=["device-bogus", "dtype-int4", "tolerance-nan", "tolerance-inf"])
def test_bad_command_line_options_are_usage_errors(pytester, args, needle):
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{needle}*"])


def test_baseline_matches_from_any_directory_and_reports_what_changed(pytester, monkeypatch):
    d = pytester.path / "circuits"
    d.mkdir()
    two = GOOD_FILE.split("  - name: out-of-range")[0] + (
        "  - name: second\n    expect: {necessity: {at_most: 0.5, ablation: mean, metric: top1,"
        " normalize: ablated}}\n")
    (d / "good.yaml").write_text(two)
    base = pytester.path / "base.json"
    first = _run(pytester, f"--cc-save-baseline={base}")
    first.assert_outcomes(passed=2)
    saved = json.loads(base.read_text())
    assert saved["provenance"]["dtype"] == "float32" and "zoo:planted" in saved["provenance"]["models"]
    assert {c["nodeid"] for c in saved["claims"]} == {"circuits/good.yaml::good-one",
                                                      "circuits/good.yaml::second"}
    # from inside circuits/ (other node ids), one claim removed, another dtype
    (d / "good.yaml").write_text(GOOD_FILE.split("  - name: out-of-range")[0])
    monkeypatch.chdir(d)
    second = pytester.runpytest_subprocess("-p", "no:cacheprovider", "good.yaml",
                                           f"--cc-baseline={base}", "--cc-dtype=float64")
    second.assert_outcomes(passed=1)
    out = second.stdout.str()
    assert "DRIFTED" not in out
    second.stdout.fnmatch_lines([
        "*provenance changed since the baseline: dtype: 'float32' -> 'float64'*",
        "*baseline claim with no match in this run: good.yaml::second*"])


def test_repeated_claims_and_old_schemas_do_not_cross_compare(tmp_path):
    from circuitcheck import _claims
    from circuitcheck.report.baseline import BaselineError, load_baseline, record_key

    _claims.take()
    _claims.set_current_test("tests/t.py::test_x")
    for value in (0.0, 1.0):
        _claims.record({"claim": "same", "measurement": {"value": value}})
    a, b = _claims.take()
    assert record_key(a) == "t.py::test_x::same" and record_key(b) == "t.py::test_x::same#2"
    for version in (0, -1, True, "1"):
        p = tmp_path / f"b{version}.json"
        p.write_text(json.dumps({"schema_version": version, "claims": []}))
        with pytest.raises(BaselineError, match="schema_version"):
            load_baseline(p)


# --- trivial circuits: nothing ablated is not measured; secondary metrics; the warning --------

import circuitcheck as cc  # noqa: E402
from circuitcheck import _claims  # noqa: E402
from circuitcheck.errors import CircuitCheckWarning  # noqa: E402
from circuitcheck.measures.circuit import trivial_warning  # noqa: E402

def test_faithfulness_reads_secondary_metrics_and_warns_on_a_trivial_circuit(tiny):
    import warnings

    from tests.conftest import own_task

    task = own_task(tiny, n=24)
    one = cc.Circuit({"one": ["1.1"]}, name="one")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = cc.faithfulness(tiny, task, one, ablation="zero")
    sec = m.details["secondary"]
    assert set(sec) == {"top1", "prob"}
    for name in ("top1", "prob"):  # the same passes give what a separate run of that metric gives
        alone = cc.faithfulness(tiny, task, one, ablation="zero", metric=name)
        assert sec[name]["full"] == pytest.approx(alone.baselines["full"], abs=1e-6)
        assert sec[name]["ablated"] == pytest.approx(alone.baselines["ablated"], abs=1e-6)
    warned = [w for w in caught if issubclass(w.category, CircuitCheckWarning)]
    expected = trivial_warning(m.value, m.metric, sec["top1"], 1,
                                                   tiny.cfg.n_layers * tiny.cfg.n_heads)
    assert (m.details.get("warning") is not None) == (expected is not None) == bool(warned)


def test_trivial_warning_rule():
    # high primary, top-1 at the all-ablated level: warned
    assert "possibly trivial" in trivial_warning(0.83, "logit_diff",
                                                 {"circuit": 0.0, "full": 0.9, "ablated": 0.0}, 1, 270)
    # top-1 recovers with the primary: no warning; low primary or uninformative top-1: none
    assert trivial_warning(0.83, "logit_diff", {"circuit": 0.7, "full": 0.9, "ablated": 0.0}, 1, 270) is None
    assert trivial_warning(0.3, "logit_diff", {"circuit": 0.0, "full": 0.9, "ablated": 0.0}, 1, 270) is None
    assert trivial_warning(0.9, "logit_diff", {"circuit": 0.0, "full": 0.1, "ablated": 0.0}, 1, 270) is None


def test_circuit_that_ablates_nothing_is_not_measurable(tiny):
    from tests.conftest import own_task

    task = own_task(tiny, n=8)
    L, H = tiny.cfg.n_layers, tiny.cfg.n_heads
    every = cc.Circuit({"all": [(l, h) for l in range(L) for h in range(H)]}, name="every")
    with _claims.private(), pytest.raises(AssertionError, match="NOT MEASURABLE|not measurable"):
        cc.assert_faithful(tiny, task, every, at_least=0.9, ablation="mean", name="every")
    with _claims.private(), pytest.raises(AssertionError, match="NOT MEASURABLE|not measurable"):
        cc.assert_necessary(tiny, task, cc.Circuit({"none": []}), at_most=1.5, ablation="mean")
    # one head at one position is ablated elsewhere: measured
    placed = cc.Circuit({"all": [(l, h) for l in range(L) for h in range(H)]},
                        positions={"all": "end"})
    assert cc.faithfulness(tiny, task, placed, ablation="mean").problem is None


# --- bad task values, a cut weights file, discover/report outputs, stray claim files ---------

@pytest.mark.parametrize("field,value,needle", [
    ("answers", 3.7, "answers[0] = 3.7 is not an answer token"),
    ("answers", None, "answers[0] = None is not an answer token"),
    ("answers", True, "answers[0] = True is not an answer token"),
    ("wrong_answers", None, "wrong_answers[0] = None is not an answer token"),
    ("groups", ["t"], "groups[0] = ['t'] cannot be a template label"),
    ("groups", {"t": 1}, "is not hashable"),
    ("good_tokens", " 1", "good_tokens[0] = ' 1' must be a list of tokens"),
], ids=["answer-float", "answer-none", "answer-bool", "wrong-none", "groups-list", "groups-dict",
        "good-tokens-text"])
def test_bad_task_values_are_clear_errors(planted, field, value, needle):
    import numpy as np

    import circuitcheck as cc
    from circuitcheck.errors import TaskError

    _, task, _ = planted
    n = len(task.prompts)
    with pytest.raises(TaskError) as err:
        cc.Task(**{"prompts": task.prompts, "answers": task.answers, field: [value] * n})
    assert needle in str(err.value)
    # numpy ids (from a DataFrame) are token ids, not errors
    assert cc.Task(prompts=task.prompts, answers=[np.int64(a) for a in task.answers])


def test_a_cut_weights_file_says_so(tmp_path):
    import circuitcheck as cc
    from circuitcheck.errors import ModelNotFoundError

    from .conftest import build_tiny

    d = build_tiny("llama", tmp_path / "m")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ModelNotFoundError, match="weights could not be read .*truncated or corrupt"):
        cc.load_model(d, device="cpu")


def test_two_runs_into_one_report_directory_keep_both(pytester):
    d = pytester.path / "circuits"
    d.mkdir()
    one = GOOD_FILE.split("  - name: out-of-range")[0]
    (d / "a.yaml").write_text(one)
    (d / "b.yaml").write_text(one.replace("good-one", "other-one"))
    rep = pytester.path / "r"
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "circuits/a.yaml", f"--cc-report={rep}")
    first = (rep / "results.json").read_text()
    second = pytester.runpytest_subprocess("-p", "no:cacheprovider", "circuits/b.yaml",
                                           f"--cc-report={rep}")
    second.stdout.fnmatch_lines(["*held another run's report with 1 claim(s) not in this run "
                                 "(a.yaml::good-one::good-one); it is kept in*previous*"])
    kept = list((rep / "previous").glob("*/results.json"))
    assert [p.read_text() for p in kept] == [first]
    assert [c["claim"] for c in json.loads((rep / "results.json").read_text())["claims"]] == [
        "other-one"]
    # the same claims again: replaced in place, nothing new kept aside
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "circuits/b.yaml", f"--cc-report={rep}")
    assert len(list((rep / "previous").glob("*/results.json"))) == 1


def test_claim_files_outside_circuits_are_named_or_hinted(pytester):
    d = pytester.path / "claims"
    d.mkdir()
    (d / "mine.yaml").write_text(GOOD_FILE.split("  - name: out-of-range")[0])
    hint = pytester.runpytest_subprocess("-p", "no:cacheprovider", "claims")
    assert hint.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    hint.stdout.fnmatch_lines(["*no tests ran, but claims/mine.yaml look like claim files*"
                               "directories named circuits/*"])
    named = pytester.runpytest_subprocess("-p", "no:cacheprovider", "claims/mine.yaml")
    named.assert_outcomes(passed=1)


def test_all_successes_on_few_prompts_is_not_certainty(planted):
    """64 top-1 successes in 64 prompts do not make a [1, 1] interval: a 0/1 metric's interval
    covers the Wilson interval of its mean (here with the all-ablated baseline at its mean)."""
    import numpy as np

    from circuitcheck.stats import wilson_ci

    model, _, circuit = planted
    for n in (8, 64):
        task = cc.tasks.induction(model, n=n, seq_len=12, seed=0)
        m = cc.faithfulness(model, task, circuit, ablation="mean", metric="top1",
                            normalize="ablated")
        rows = m.per_prompt * (m.baselines["full"] - m.baselines["ablated"]) + m.baselines["ablated"]
        assert m.value == pytest.approx(1.0) and set(np.round(rows, 6)) == {1.0}
        (w_lo,), _ = wilson_ci(np.array([n]), np.array([n]), 0.95)
        b, f = m.baselines["ablated"], m.baselines["full"]
        assert m.ci[0] == pytest.approx((w_lo - b) / (f - b)) and m.ci[0] < m.ci[1]


def test_selection_is_decided_by_intervals(planted):
    """The selection claim holds only when its intervals clear the bounds: with 8 prompts it
    cannot show 'retains >= 0.9' (inconclusive), with 64 it can."""
    model, _, _ = planted
    kw = dict(top=2, retained_at_least=0.9, ablated_at_most=0.1, trials=1024, ablation="mean",
              metric="top1", seed=0)
    small = cc.tasks.induction(model, n=8, seq_len=12, seed=0)
    with _claims.private(), pytest.raises(AssertionError, match="INCONCLUSIVE: kept alone they "
                                          r"retain 1.00 \(95% CI \[0.\d\d, 1.00\]\), required 0.90"):
        cc.assert_selection(model, small, **kw)
    big = cc.tasks.induction(model, n=64, seq_len=12, seed=0)
    with _claims.private() as records:
        cc.assert_selection(model, big, **kw)
    record = records[-1]
    assert record["verdict"] == "held"
    lo, hi = record["measurement"]["ci"]
    assert 0.9 <= lo < hi and record["ablated"]["ci"][1] <= 0.1
