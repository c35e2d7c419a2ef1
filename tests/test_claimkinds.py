"""The claim registry: every kind declared once, and everything derived from it agrees.

Each registered kind has a YAML example that runs on ``zoo:planted``, a report rendering of
what it records, a README entry, and parameters its ``assert_*`` function accepts.
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml

from circuitcheck import _claims
from circuitcheck.claimfile import read_claim_file, run_claim
from circuitcheck.claimkinds import EXAMPLE_FILE, KINDS, readme_list

ROOT = Path(__file__).resolve().parent.parent
FIGURE_DATA = {"histogram": "per_prompt", "heatmap": "heatmaps", "points": "points",
               "bars": "bars", "patterns": "patterns", "lines": "lines"}

# kinds whose example claim fails on zoo:planted (none since the minimality test has power there)
CANNOT_HOLD_ON_PLANTED: set[str] = set()  # minimality's bootstrap z-test holds there too


def _example_file(tmp_path: Path, name: str) -> Path:
    doc = dict(EXAMPLE_FILE, claims=[{"name": f"example-{name}",
                                      "expect": {name: KINDS[name].example}}])
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def planted():
    import circuitcheck as cc

    return cc.load_model("zoo:planted", device="cpu")


@pytest.mark.parametrize("name", list(KINDS))
def test_every_kind_has_an_example_that_runs_and_renders(name, planted, tmp_path):
    from circuitcheck.report import build_document
    from circuitcheck.report._html import render

    kind = KINDS[name]
    parsed = read_claim_file(_example_file(tmp_path, name))
    assert parsed.errors == () and len(parsed.claims) == 1
    with _claims.private() as records:
        failures = run_claim(parsed.claims[0], planted)
    if name in CANNOT_HOLD_ON_PLANTED:
        assert len(failures) == 1 and all(r["verdict"] == "failed" for r in records)
    else:
        assert failures == [], failures  # the examples are true claims about the planted model
    assert records, f"{name} recorded nothing"
    for r in records:
        pattern = ".+".join(map(re.escape, re.split(r"<[^>]+>", kind.records)))
        assert re.fullmatch(pattern, r["kind"]), (kind.records, r["kind"])
        m = r["measurement"]
        drawn = {f for f, key in FIGURE_DATA.items() if m.get(key)} | (
            {"grid"} if r.get("grid") else set())
        assert drawn == set(kind.figures), (name, drawn)
    html = render(build_document(records))
    expected = sum(bool(r["measurement"].get("per_prompt"))
                   + sum(len(r["measurement"].get(k) or {}) for k in ("heatmaps", "points", "bars",
                                                                   "patterns", "lines"))
                   for r in records)
    assert html.count("<figure>") == expected
    assert ("class='grid'" in html) == ("grid" in kind.figures)
    assert all(r["claim"] in html for r in records)


def test_readme_lists_every_kind_from_the_registry():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- claim-kinds -->\n", 1)[1].split("\n<!-- /claim-kinds -->")[0]
    assert block == readme_list(), ("regenerate README's list: python -c 'from circuitcheck."
                                    "claimkinds import readme_list; print(readme_list())'")
    for name in KINDS:
        assert f"| `{name}` |" in block


def test_docs_explain_how_to_add_a_kind_with_a_registered_example():
    doc = (ROOT / "docs" / "claim_kinds.md").read_text()
    assert "register(ClaimKind(" in doc
    for name in KINDS:
        assert f"`{name}`" in doc


@pytest.mark.parametrize("name", list(KINDS))
def test_declared_parameters_match_the_assertion(name):
    """Every YAML key reaches the assert_* helper (or the measurement it forwards to), and every
    argument the helper cannot do without is a required key."""
    kind = KINDS[name]
    fn = kind.assertion_function()
    sig = inspect.signature(fn)
    accepted = {p for p in sig.parameters}
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        accepted |= set(inspect.signature(kind.measure_function()).parameters)
    missing = set(kind.keys) - accepted
    assert not missing, f"{name}: YAML keys {missing} reach neither {fn.__name__} nor the measure"
    needed = {p.name for p in sig.parameters.values()
              if p.kind is p.KEYWORD_ONLY and p.default is p.empty}
    assert needed <= set(kind.required), f"{name}: {needed - set(kind.required)} not required"
    assert kind.verdict and kind.summary and kind.records


@pytest.mark.parametrize("expect, message", [
    ("{important: {heads: ['1.1'], trials: many}}", "important.trials must be a whole number"),
    ("{robust: {at_least: 0.8, at_most: 0.1}}", "robust needs exactly one of 'at_least'"),
    ("{patching: {heads: ['1.1'], at_lest: 0.5}}", "(did you mean 'at_least'?)"),
    ("{patching: {heads: ['1.1']}}", "patching needs 'at_least'"),
    ("{head_scores: {induction: {heads: ['1.1'], at_least: high}}}",
     "head_scores.induction.at_least must be a number"),
    ("{faithfulnes: {at_least: 0.8}}", "(did you mean 'faithfulness'?)"),
])
def test_validation_comes_from_the_declared_types(tmp_path, expect, message):
    path = tmp_path / "c.yaml"
    path.write_text("model: m\ntask: {builder: induction}\ncircuit: {groups: {a: ['1.1']}}\n"
                    f"claims:\n  - name: a\n    expect: {expect}\n")
    errors = [e[2] for e in read_claim_file(path).errors]
    assert len(errors) == 1 and message in errors[0] and "c.yaml:" in errors[0], errors


def test_private_claims_stay_out_of_the_run():
    _claims.take()
    with _claims.private() as mine:
        assert _claims.record({"claim": "on purpose", "verdict": "failed"}) is None
    _claims.record({"claim": "public", "verdict": "held"})
    assert [r["claim"] for r in mine] == ["on purpose"]
    assert [r["claim"] for r in _claims.take()] == ["public"]
