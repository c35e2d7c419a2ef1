"""Edge circuits as data: EAP-IG names, validation messages, EAP-IG graph JSON round trip."""
from __future__ import annotations

import json
import types

import pytest

from circuitcheck.circuit import Circuit
from circuitcheck.edge_circuit import (EdgeCircuit, all_edges, read_graph_json,
                                       write_graph_json)
from circuitcheck.errors import CircuitError

MODEL = types.SimpleNamespace(cfg=types.SimpleNamespace(n_layers=2, n_heads=4, d_model=32))


def test_edge_count_matches_eap_ig_layout():
    # heads of layer 0: 12 inputs x 1 sender; m0: 5; layer-1 heads: 12 x 6; m1: 10; logits: 11
    assert len(all_edges(2, 4)) == 12 + 5 + 12 * 6 + 10 + 11


def test_project_head_forms_are_accepted():
    c = EdgeCircuit(["a0.h2->a1.h1<k>", ("1.1", "logits"), ((0, 2), "1.1", "v")])
    assert [e.name for e in c.edges] == ["a0.h2->a1.h1<k>", "a1.h1->logits", "a0.h2->a1.h1<v>"]
    assert c.heads == ((0, 2), (1, 1))
    c.validate(MODEL)


@pytest.mark.parametrize("edge, words", [
    ("a1.h1->a0.h2<k>", "backward"), ("a1.h0->a1.h1<q>", "within a layer"),
    ("a0.h1->m0<q>", "not a head"), ("a0.h1->a1.h1", "names the input"),
    ("a0.h9->logits", "out of range"), ("foo->logits", "cannot read 'foo'")])
def test_bad_edges_say_what_and_how(edge, words):
    with pytest.raises(CircuitError, match=words):
        EdgeCircuit([edge]).validate(MODEL)


def test_graph_from_another_model_shape():
    with pytest.raises(CircuitError, match="x.json: the graph is for a model with 3 layers"):
        EdgeCircuit(["a0.h2->a1.h1<k>"], shape=(3, 4), source="x.json").validate(MODEL)


def test_from_nodes_keeps_every_edge_among_the_nodes():
    c = EdgeCircuit.from_nodes(MODEL, Circuit({"p": ["0.2"], "i": ["1.1"]}))
    nodes = {"input", "a0.h2", "a1.h1", "m0", "m1", "logits"}
    expected = [e for e in all_edges(2, 4) if e.sender in nodes and e.receiver in nodes]
    assert list(c.edges) == expected


def test_eap_ig_json_round_trip_and_scores_only_file(tmp_path):
    c = EdgeCircuit(["a0.h2->a1.h1<k>", "a1.h1->logits"])
    path = tmp_path / "g.json"
    write_graph_json(path, MODEL, {e.name for e in c.edges}, {"a0.h2->a1.h1<k>": 1.5})
    back = Circuit.from_file(path)
    assert set(back.edges) == set(c.edges) and back.shape == (2, 4)
    assert back.scores["a0.h2->a1.h1<k>"] == 1.5
    data = json.loads(path.read_text())
    for info in data["edges"].values():
        info.pop("in_graph")
    path.write_text(json.dumps(data))
    with pytest.raises(CircuitError, match="scores but no 'in_graph'"):
        read_graph_json(path)
    assert len(read_graph_json(path, binary=False)) == 0
