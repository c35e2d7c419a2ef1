"""Edge circuits in YAML claim files: ``circuit: {edges: [...]}`` inline or ``circuit: {file:
graph.json}`` (EAP-IG), each bad input one failing claim with file:line, head-needing kinds
refused before any model loads, and the shipped example holding on zoo:planted."""
from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import pytest

from circuitcheck import _claims
from circuitcheck.claimfile import read_claim_file
from circuitcheck.claimkinds import KINDS, edge_problem
from circuitcheck.claimkinds import run as run_kind
from circuitcheck.edge_circuit import (EdgeCircuit, all_edges, order_problem, parse_edge,
                                       read_graph_json, write_graph_json)
from circuitcheck.errors import CircuitError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "circuits" / "zoo_planted_edges.yaml"
EXAMPLE_JSON = ROOT / "circuits" / "data" / "zoo_planted_edges.json"
#: The planted model's circuit, by construction (circuitcheck/zoo/planted.py).
TRUTH = ["input->a0.h2<v>", "a0.h2->a1.h1<k>", "input->a1.h1<q>", "input->a1.h1<v>",
         "a1.h1->logits"]
PLANTED = types.SimpleNamespace(cfg=types.SimpleNamespace(n_layers=2, n_heads=4, d_model=128))
HEAD = "model: zoo:planted\ntask: {builder: induction, n: 16, seq_len: 12, seed: 0}\n"
GOOD = ("  - name: good\n    circuit: {groups: {a: ['1.1']}}\n"
        "    expect: {faithfulness: {at_least: 0.5}}\n")


def _read(tmp_path: Path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return read_claim_file(path)


def test_inline_edges_give_an_edge_circuit_named_after_the_claim(tmp_path):
    parsed = _read(tmp_path, HEAD + "circuit:\n  edges: [input->a0.h2<v>, '0.2->1.1<k>', "
                   "[input, '1.1', q], {edge: input->a1.h1<v>, position: end}, "
                   "a1.h1->logits]\nclaims:\n  - name: inline\n"
                   "    expect: {faithfulness: {at_least: 0.9}, necessity: {at_most: 0.1}}\n")
    assert parsed.errors == ()
    c = parsed.claims[0].circuit
    assert isinstance(c, EdgeCircuit) and c.name == "inline" and c.source.endswith("c.yaml:4")
    assert [e.name for e in c.edges] == TRUTH[:3] + ["input->a1.h1<v>", "a1.h1->logits"]
    assert c.edges[3].position == "end"
    record = c.record()
    assert record["n_edges"] == 5 and record["edges"][0] == "input->a0.h2<v>"
    assert EdgeCircuit.from_dict({"edges": record["edges"]}).edges == c.edges


def test_file_is_read_relative_to_the_claim_file(tmp_path, monkeypatch):
    (tmp_path / "claims" / "graphs").mkdir(parents=True)
    write_graph_json(tmp_path / "claims" / "graphs" / "g.json", PLANTED, set(TRUTH),
                     {"a1.h1->logits": 2.5, "a0.h1->logits": -0.1})
    (tmp_path / "claims" / "c.yaml").write_text(
        HEAD + "claims:\n  - name: from-file\n    circuit: {file: graphs/g.json}\n"
        "    expect: {faithfulness: {at_least: 0.9}}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the path is the YAML file's, not the working directory's
    parsed = read_claim_file(tmp_path / "claims" / "c.yaml")
    assert parsed.errors == ()
    c = parsed.claims[0].circuit
    assert set(e.name for e in c.edges) == set(TRUTH) and c.shape == (2, 4)
    assert c.name == "g" and "c.yaml:5: " in c.source and c.source.endswith("g.json")
    # only the kept edges' scores (write_graph_json gives every edge one, 0 by default)
    assert c.record()["scores"] == {**{e: 0.0 for e in TRUTH[:4]}, "a1.h1->logits": 2.5}


def _scores_only(path: Path) -> None:
    data = write_graph_json(None, PLANTED, set(TRUTH), {})
    for info in data["edges"].values():
        info.pop("in_graph")
    path.write_text(json.dumps(data))


def _backward_in_file(path: Path) -> None:
    data = write_graph_json(None, PLANTED, set(TRUTH), {})
    data["edges"]["a1.h1->a0.h2<k>"] = {"score": 1.0, "in_graph": True}
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("circuit, line, message", [
    ("{edges: [foo->logits]}", 5, "cannot read 'foo' as a node"),
    ("{edges: [a1.h1->a0.h2<k>]}", 5, "edge a1.h1->a0.h2<k>: the edge goes backward"),
    ("{edges: [a1.h0->a1.h1<q>]}", 5, "backward or within a layer"),
    ("{edges: [a0.h1->m1<q>]}", 5, "<q> labels a head's input, but m1 is not a head"),
    ("{edges: [a0.h1->a1.h1]}", 5, "names the input it feeds"),
    ("{edges: [[0.2, 1.1, k]]}", 5, "YAML reads an unquoted 0.2 as a number: quote it"),
    ("{edges: [a0.h1->m1], groups: {a: ['1.1']}}", 5, "either head groups ('groups:') or a "
                                                     "graph of edges"),
    ("{edges: [a0.h1->m1], file: g.json}", 5, "not both"),
    ("{edgs: [a0.h1->m1]}", 5, "unknown circuit key 'edgs' (did you mean 'edges'?)"),
    ("{file: missing.json}", 5, "missing.json' does not exist (a relative path is read from "
                                "the claim file's directory)"),
    ("{file: g.yaml}", 5, "must be an EAP-IG graph JSON (.json)"),
    ("{file: scores.json}", 5, "the edges have scores but no 'in_graph'"),
    ("{file: backward.json}", 5, "edge a1.h1->a0.h2<k> is not an edge of a 2-layer, 4-head"),
])
def test_each_bad_edge_circuit_is_one_failing_claim_with_file_line(tmp_path, circuit, line,
                                                                   message):
    _scores_only(tmp_path / "scores.json")
    _backward_in_file(tmp_path / "backward.json")
    (tmp_path / "g.yaml").write_text("edges: []\n")
    parsed = _read(tmp_path, HEAD + "claims:\n  - name: bad\n    circuit: " + circuit
                   + "\n    expect: {faithfulness: {at_least: 0.9}}\n" + GOOD)
    assert [c.name for c in parsed.claims] == ["good"]  # the file's other claim still runs
    (name, _, text), = parsed.errors
    assert name == "bad" and f"c.yaml:{line}: circuit: " in text and message in text, text


@pytest.mark.parametrize("kind, spec", [
    ("equivalence", "{epsilon: 0.1}"), ("localization", "{alpha: 0.05}"),
    ("minimality", "{alpha: 0.05}"), ("robust", "{at_least: 0.8}")])
def test_head_circuit_kinds_refuse_an_edge_circuit_before_any_model(tmp_path, kind, spec):
    parsed = _read(tmp_path, HEAD + f"circuit: {{edges: {TRUTH}}}\nclaims:\n  - name: mixed\n"
                   f"    expect:\n      faithfulness: {{at_least: 0.9}}\n      {kind}: {spec}\n"
                   "  - name: fine\n    expect: {necessity: {at_most: 0.1}}\n")
    assert [c.name for c in parsed.claims] == ["fine"]
    (_, _, text), = parsed.errors
    assert f"c.yaml:8: claim 'mixed': {kind} needs a head circuit" in text
    assert "edge circuit (mixed: 5 edges among 4 nodes)" in text
    assert "(faithfulness, necessity, faithfulness_curve, recovers)" in text and "circuit: {groups: {...}}" in text
    assert "(the circuit is at " in text and text.endswith("c.yaml:3)")


def test_the_registry_refuses_edges_in_python_too():
    edges = EdgeCircuit(TRUTH)
    assert {k.name for k in KINDS.values() if k.edge_circuits} == {
        "faithfulness", "necessity", "faithfulness_curve", "recovers"}
    assert edge_problem(KINDS["faithfulness"], edges) is None
    assert edge_problem(KINDS["equivalence"], None) is None
    with pytest.raises(CircuitError, match="equivalence needs a head circuit"):
        run_kind(KINDS["equivalence"], None, None, edges, {"epsilon": 0.1}, "x")


@pytest.mark.parametrize("L, H", [(2, 4), (3, 2), (1, 1)])
def test_the_model_free_order_check_is_the_graph(L, H):
    """``order_problem`` (no model) accepts exactly the edges of EAP-IG's graph."""
    nodes = ["input"] + [f"a{l}.h{h}" for l in range(L) for h in range(H)] + \
        [f"m{l}" for l in range(L)] + ["logits"]
    candidates = []
    for s in nodes[:-1]:
        for r in nodes[1:]:
            for x in (("q", "k", "v") if r.startswith("a") else (None,)):
                candidates.append(parse_edge((s, r, x)) if x else parse_edge((s, r)))
    ok = {e for e in candidates if order_problem(e) is None}
    assert ok == set(all_edges(L, H))


def test_the_example_json_is_the_inline_circuit_in_eap_ig_format():
    from circuitcheck.claimfile import read_claim_file as read

    parsed = read(EXAMPLE)
    assert parsed.errors == () and len(parsed.claims) == 6  # 3 + the edge-score kinds' 3
    inline, _, from_file = (c.circuit for c in parsed.claims[:3])
    assert [e.name for e in inline.edges] == TRUTH
    assert set(from_file.edges) == set(inline.edges) and from_file.shape == (2, 4)
    data = json.loads(EXAMPLE_JSON.read_text())
    scores = {k: v["score"] for k, v in data["edges"].items()}
    assert data == write_graph_json(None, PLANTED, set(TRUTH), scores)  # as written by it
    top = sorted(scores, key=lambda k: -abs(scores[k]))[:5]
    assert set(top) == set(TRUTH)  # the scores (exact patching effects) rank the truth first
    assert set(read_graph_json(EXAMPLE_JSON).edges) == set(inline.edges)


BAD_AT_RUN = HEAD + f"""\
circuit: {{edges: {TRUTH}}}
claims:
  - name: runs
    expect: {{necessity: {{at_most: 0.2, ablation: mean, metric: top1, normalize: ablated}}}}
  - name: out-of-range
    circuit: {{edges: [a0.h9->logits]}}
    expect: {{faithfulness: {{at_least: 0.9}}}}
  - name: other-shape
    circuit: {{file: data/three_layers.json}}
    expect: {{faithfulness: {{at_least: 0.9}}}}
  - name: refused
    expect: {{localization: {{alpha: 0.05}}}}
"""


def test_example_holds_and_bad_claims_fail_alone_in_a_run(pytester):
    """The shipped example holds when pytest runs circuits/; in another file, a circuit that
    does not fit the model (a head out of range, a graph of another shape) fails its claim
    with file:line once the model is loaded, while that file's other claim runs."""
    circuits = pytester.path / "circuits"
    (circuits / "data").mkdir(parents=True)
    shutil.copy(EXAMPLE, circuits / EXAMPLE.name)
    shutil.copy(EXAMPLE_JSON, circuits / "data" / EXAMPLE_JSON.name)
    three = types.SimpleNamespace(cfg=types.SimpleNamespace(n_layers=3, n_heads=4, d_model=8))
    write_graph_json(circuits / "data" / "three_layers.json", three, {"a2.h1->logits"}, {})
    (circuits / "bad.yaml").write_text(BAD_AT_RUN)
    rep = pytester.path / "rep"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "circuits", "-v",
                                           f"--cc-report={rep}")
    result.assert_outcomes(passed=7, failed=3)  # the example: 6 claims
    result.stdout.fnmatch_lines([
        "*bad.yaml::runs PASSED*", "*bad.yaml::out-of-range FAILED*",
        "*bad.yaml::other-shape FAILED*", "*bad.yaml::refused FAILED*",
        "*zoo_planted_edges.yaml::planted-edges-sufficient PASSED*",
        "*zoo_planted_edges.yaml::planted-edges-necessary PASSED*",
        "*zoo_planted_edges.yaml::planted-edges-from-eap-ig-file PASSED*"], consecutive=False)
    out = result.stdout.str()
    assert "bad.yaml:8: edge a0.h9->logits: a0.h9 is out of range: the model has 4 heads" in out
    assert ("bad.yaml:11: circuits/data/three_layers.json: the graph is for a model with 3 "
            "layers x 4 heads, but this model has 2 layers x 4 heads") in out
    assert "bad.yaml:14: claim 'refused': localization needs a head circuit" in out
    doc = json.loads((rep / "results.json").read_text())
    held = {r["claim"]: r for r in doc["claims"] if r["verdict"] == "held"}
    assert sorted(held) == ["eap-ig-curve-is-faithful", "eap-ig-recovers-the-planted-edges",
                            "file-scores-curve-is-faithful", "planted-edges-from-eap-ig-file",
                            "planted-edges-necessary", "planted-edges-sufficient", "runs"]
    record = held["planted-edges-sufficient"]["measurement"]["circuit"]
    assert record["n_edges"] == 5 and record["edges"] == TRUTH and record["type"] == "edges"
    scored = [r for r in doc["claims"] if r["claim"] == "planted-edges-from-eap-ig-file"]
    assert scored[0]["measurement"]["circuit"]["scores"]["a1.h1->logits"] > 0.9
    html = (rep / "index.html").read_text()
    assert html.count("class=\"edge-graph\"") == 5
    assert "planted-edges-sufficient (5 edges) - input-&gt;a0.h2&lt;v&gt;" in html
    errors = {r["claim"]: r["message"] for r in doc["claims"] if r["verdict"] == "error"}
    assert "a0.h9 is out of range" in errors["out-of-range"]
