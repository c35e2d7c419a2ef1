"""Declarative YAML claims: collected one item per claim, validated before any model runs."""
from __future__ import annotations

import json

import pytest

import circuitcheck as cc
from circuitcheck.claimfile import read_claim_file

from .conftest import own_task


def _write_data(model, path):
    task = own_task(model, n=10, corrupt=False)
    rows = [{"prompt": p, "answer": int(a), "wrong_answer": int(w)}
            for p, a, w in zip(task.prompts, task.answers, task.wrong_answers)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return cc.tasks.from_jsonl(path)


GOOD = """\
model: {model}
task: {{builder: jsonl, path: data.jsonl}}
circuit:
  groups: {{movers: ["1.0", "1.3"], prev: [[0, 2]]}}
  positions: {{movers: end}}
claims:
  - name: all-heads-faithful
    circuit: {{groups: {{all: ["0.1", "0.2", "0.3", "1.0", "1.1", "1.2", "1.3"]}}}}
    expect:
      faithfulness: {{at_least: 0.05, ablation: zero}}
  - name: small-circuit
    expect:
      faithfulness: {{at_least: -100, ablation: mean, reference: clean}}
  - name: typo-claim
    expect:
      faithfullness: {{at_least: 0.5}}
"""


def test_yaml_claims_run_and_a_bad_claim_fails_alone(pytester, model_dirs, tiny, arch):
    (pytester.path / "circuits").mkdir()
    _write_data(tiny, pytester.path / "circuits" / "data.jsonl")
    (pytester.path / "circuits" / "toy.yaml").write_text(GOOD.format(model=model_dirs[arch]))
    (pytester.path / "circuits" / "broken.yaml").write_text("claims:\n  - name: x\n    expect: [\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "circuits", "-v")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines([
        "*circuits/toy.yaml::all-heads-faithful PASSED*",
        "*circuits/toy.yaml::small-circuit PASSED*",
        "*circuits/toy.yaml::typo-claim FAILED*",
    ])
    result.stdout.fnmatch_lines([
        "*invalid claim: *toy.yaml:16: unknown key 'faithfullness' in expect "
        "(did you mean 'faithfulness'?)*",
    ])
    result.stdout.fnmatch_lines(["*broken.yaml:4: not valid YAML*"])


def test_yaml_and_python_give_the_same_measurement(model_dirs, tiny, arch, tmp_path):
    task = _write_data(tiny, tmp_path / "data.jsonl")
    path = tmp_path / "circuits.yaml"
    path.write_text(GOOD.format(model=model_dirs[arch]).split("  - name: typo-claim")[0])
    claim = read_claim_file(path).claims[1]
    from circuitcheck import _claims
    from circuitcheck.claimfile import run_claim

    _claims.take()
    assert run_claim(claim, tiny) == []
    recorded = _claims.take()[0]["measurement"]
    circuit = cc.Circuit({"movers": ["1.0", "1.3"], "prev": [(0, 2)]}, positions={"movers": "end"})
    m = cc.faithfulness(tiny, task, circuit, ablation="mean", reference="clean")
    assert recorded["value"] == pytest.approx(m.value, rel=1e-6)
    assert recorded["ci"] == pytest.approx(list(m.ci), rel=1e-6)


@pytest.mark.parametrize("text, message", [
    ("model: m\nclaims: []\n", "needs 'claims'"),
    ("modle: m\nclaims: [{name: a}]\n", ":1: unknown key 'modle' in a claim file (did you mean 'model'?)"),
    ("model: m\ntask: {builder: iio}\nclaims: [{name: a, expect: {necessity: {at_most: 1}}}]\n",
     "unknown task builder 'iio' (did you mean 'ioi'?)"),
    ("model: m\ntask: {builder: ioi, nn: 3}\nclaims: [{name: a, expect: {necessity: {at_most: 1}}}]\n",
     "task builder 'ioi' has no argument 'nn' (did you mean 'n'?)"),
    ("model: m\ntask: {builder: ioi}\nclaims:\n  - name: a\n    expect: {necessity: {at_least: 1}}\n",
     "unknown key 'at_least' in necessity"),
    ("model: m\ntask: {builder: ioi}\ncircuit: {groups: {a: ['x.y']}}\nclaims:\n"
     "  - name: a\n    expect: {necessity: {at_most: 1}}\n", "cannot read 'x.y' as a head"),
    ("model: m\ntask: {builder: ioi}\nclaims:\n  - name: a\n    expect: {faithfulness: {at_least: high}}\n",
     "faithfulness.at_least must be a number"),
    ("model: m\ntask: {builder: induction}\nclaims:\n  - name: a\n    expect:\n"
     "      head_scores: {induction: {top: 1}}\n", "needs 'heads'"),
])
def test_malformed_claims_name_file_line_key_and_fix(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    try:
        parsed = read_claim_file(path)
    except cc.ClaimFileError as exc:
        errors = [str(exc)]
    else:
        errors = [e[2] for e in parsed.errors]
    assert len(errors) == 1 and message in errors[0] and "c.yaml" in errors[0]


def test_xdist_gives_the_same_verdicts_and_one_merged_report(pytester, model_dirs, tiny, arch):
    pytest.importorskip("xdist")
    (pytester.path / "circuits").mkdir()
    _write_data(tiny, pytester.path / "circuits" / "data.jsonl")
    if arch != "gpt2":
        pytest.skip("one architecture is enough to check the xdist merge")
    text = GOOD.format(model=model_dirs[arch]).split("  - name: typo-claim")[0]
    (pytester.path / "circuits" / "a.yaml").write_text(text)
    (pytester.path / "circuits" / "b.yaml").write_text(
        text.replace("all-heads-faithful", "all-heads-again").replace("small-circuit", "small-again"))
    docs = {}
    for workers in ("0", "2"):
        out = pytester.path / f"r{workers}"
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "circuits", "-n", workers,
                                               f"--cc-report={out}")
        result.assert_outcomes(passed=4)
        docs[workers] = json.loads((out / "results.json").read_text())
    def verdicts(doc):
        return sorted((c["nodeid"], c["verdict"], round(c["measurement"]["value"], 9))
                      for c in doc["claims"])
    assert len(docs["2"]["claims"]) == 4
    assert verdicts(docs["0"]) == verdicts(docs["2"])


def test_literature_claims_validate_and_skip_without_weights(pytester, monkeypatch):
    """The shipped literature claims parse; without the real weights each is skipped with one
    line naming the model and how to provide it."""
    from pathlib import Path

    shipped = Path(__file__).resolve().parent.parent / "circuits"
    files = sorted(p for p in shipped.glob("*.yaml")  # the zoo and SmolLM2 ones run here
                   if not p.name.startswith(("zoo_", "smollm2_")))
    assert {p.name for p in files} >= {"ioi_gpt2.yaml", "induction_gpt2.yaml",
                                       "greater_than_gpt2.yaml", "copying_pythia160m.yaml"}
    for p in files:
        parsed = read_claim_file(p)
        assert parsed.claims and not parsed.errors, p
        assert "source" in p.read_text()
    (pytester.path / "circuits").mkdir()
    for p in files:
        (pytester.path / "circuits" / p.name).write_text(p.read_text())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(pytester.path / "empty"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "circuits", "-rs")
    n = sum(len(read_claim_file(p).claims) for p in files)
    result.assert_outcomes(skipped=n)
    result.stdout.fnmatch_lines(["*model 'EleutherAI/pythia-160m' is not available here*",
                                 "*[7]*model 'gpt2' is not available here: pass a local directory*"])
