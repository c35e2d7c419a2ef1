"""The edge-score claim kinds (``faithfulness_curve``, ``recovers``), the AUROC's bootstrap
interval, EAP-IG graph JSON written from scores alone, MIB's submission forms, and each bad
input's one clear message."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import circuitcheck as cc
from circuitcheck import _claims
from circuitcheck.claimfile import read_claim_file, run_claim
from circuitcheck.edge_circuit import EdgeCircuit, all_edges, read_graph_json, write_graph_json
from circuitcheck.errors import CircuitCheckError, CircuitError
from circuitcheck.mib import MIB_PERCENTS, at_most, read_mib, write_mib

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "circuits" / "zoo_planted_edges.yaml"
TRUTH = ["input->a0.h2<v>", "a0.h2->a1.h1<k>", "input->a1.h1<q>", "input->a1.h1<v>",
         "a1.h1->logits"]
HEAD = "model: zoo:planted\ntask: {builder: induction, n: 24, seq_len: 8, seed: 0}\n"
EDGES = "circuit: {edges: [" + ", ".join(TRUTH) + "]}\n"


def _scores(shape=(2, 4), seed=0) -> cc.EdgeScores:
    names = [e.name for e in all_edges(*shape)]
    rng = np.random.default_rng(seed)
    return cc.EdgeScores.from_mapping(dict(zip(names, rng.normal(size=len(names)))), shape)


@pytest.fixture(scope="module")
def planted():
    return cc.load_model("zoo:planted", device="cpu")


def _run(path: Path, model, name: str):
    parsed = read_claim_file(path)
    assert parsed.errors == (), parsed.errors
    claim = next(c for c in parsed.claims if c.name == name)
    with _claims.private() as records:
        failures = run_claim(claim, model)
    return failures, records


# -- files: EAP-IG graph JSON from scores alone, MIB's forms -----------------------------------

def test_scores_to_json_needs_no_model_and_round_trips(tmp_path):
    s = _scores()
    path = tmp_path / "g.json"
    s.to_json(path, in_graph=True)  # was a TypeError (model was required)
    back = cc.Circuit.from_file(path)
    assert len(back) == len(s) and back.shape == (2, 4)
    assert cc.EdgeScores.from_file(path).scores == pytest.approx(s.scores)
    s.to_json(path, in_graph=s.top(4))
    assert set(cc.Circuit.from_file(path).edges) == set(s.top(4).edges)
    data = s.to_json(path, in_graph=False)  # scores only
    assert all(set(v) == {"score"} for v in data["edges"].values())
    assert cc.EdgeScores.from_file(path).scores == pytest.approx(s.scores)
    with pytest.raises(CircuitError, match="no 'in_graph'.*mark the circuit's edges"):
        read_graph_json(path)
    assert json.loads(path.read_text())["cfg"]["n_layers"] == 2
    s.top(3).to_json(path)  # a circuit from scores knows its shape too
    assert set(cc.Circuit.from_file(path).edges) == set(s.top(3).edges)
    with pytest.raises(CircuitError, match="needs the model's shape: pass the model"):
        EdgeCircuit(TRUTH).to_json(path)


def test_mib_importance_and_binary_forms_round_trip(tmp_path):
    s = _scores()
    out = write_mib(tmp_path, s, task="induction", model="zoo/planted")
    assert out.name == "induction_zoo-planted" and [p.name for p in out.iterdir()] == [
        "importances.json"]
    back = read_mib(out)
    assert isinstance(back, cc.EdgeScores) and back.scores == pytest.approx(s.scores)
    out = write_mib(tmp_path / "bin", s, task="induction", model="planted", binary=True)
    circuits = read_mib(out)
    assert list(circuits) == list(MIB_PERCENTS)
    E = len(s)
    for pct, c in circuits.items():
        assert len(c) == int(pct / 100 * E) and set(c.edges) == set(s.top(len(c)).edges)
        assert c.scores == {}  # the binary form carries no scores
    assert len(circuits[50.0]) == 55 and len(circuits[0.1]) == 0


def test_mib_sizes_are_upper_bounds_and_bad_folders_are_named(tmp_path):
    s = _scores()
    assert all(len(at_most(s, p)) <= p / 100 * len(s) for p in MIB_PERCENTS)
    out = write_mib(tmp_path, s, task="t", model="m", binary=True)
    big = out / "edges_0.1pct.json"
    write_graph_json(big, (2, 4), {e.name for e in s.top(3).edges}, None)
    with pytest.raises(CircuitError, match=r"edges_0.1pct.json: 3 edges .* more than the 0.1%"):
        read_mib(out)
    (out / "edges_50pct.json").unlink()
    with pytest.raises(CircuitError, match="1 file of importance scores or 9 binary circuits"):
        read_mib(out)
    with pytest.raises(CircuitError, match="not a folder"):
        read_mib(tmp_path / "nowhere")


# -- the AUROC's interval ---------------------------------------------------------------------

def test_auroc_interval_resamples_prompts(planted):
    task = cc.tasks.induction(planted, 24, seq_len=8, seed=0)
    s = cc.edge_scores(planted, task, "eap-ig", ablation="resample")
    assert s.per_prompt.shape == (24, len(s))
    assert np.allclose(s.per_prompt.mean(0), s.values, atol=1e-5)
    from circuitcheck.zoo.planted import planted_edges

    a = cc.edge_auroc(s, planted_edges(), n_boot=300, seed=1)
    assert a.ci_low <= a.value <= a.ci_high and a.n == 24 and len(a.per_boot) == 300
    assert a.ci_high - a.ci_low > 0  # prompts disagree, so the interval has width
    # the same AUROC by hand from one resample's mean scores
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 24, 24)
    mean = np.abs(s.per_prompt[idx].mean(0, dtype=np.float64))
    truth = np.array([n in set(TRUTH) for n in s.names])
    pairs = [(p > q) + 0.5 * (p == q) for p in mean[truth] for q in mean[~truth]]
    assert a.per_boot[0] == pytest.approx(np.mean(pairs))
    no_rows = cc.edge_auroc(cc.EdgeScores.from_mapping(s.scores, (2, 4)), planted_edges())
    assert np.isnan(no_rows.ci_low) and no_rows.value == pytest.approx(a.value)


# -- the claim kinds --------------------------------------------------------------------------

def test_shipped_edge_score_claims_hold(planted):
    for name in ("eap-ig-curve-is-faithful", "file-scores-curve-is-faithful",
                 "eap-ig-recovers-the-planted-edges"):
        failures, records = _run(EXAMPLE, planted, name)
        assert failures == [], failures
        assert records and all(r["verdict"] == "held" for r in records)
        for r in records:
            m = r["measurement"]
            assert m["ci"][0] is not None and m["ci"][1] is not None and m["lines"]
    title = next(iter(records[0]["measurement"]["lines"]))
    assert title.startswith("ROC of eap-ig scores vs eap-ig-recovers-the-planted-edges")


def test_curve_claim_straddling_is_inconclusive_and_failing_fails(planted, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(HEAD + EDGES + "claims:\n  - name: tight\n    expect:\n"
                    "      faithfulness_curve: {cpr_at_least: 0.999, cmd_at_most: 0.0001, "
                    "method: eap}\n")
    failures, records = _run(path, planted, "tight")
    assert len(failures) == 1 and {r["verdict"] for r in records} == {"failed"}
    assert "FAILED: faithfulness curve CPR" in failures[0] and "curve      f(C_k)" in failures[0]
    cpr = records[0]["measurement"]
    # CPR's per-prompt areas average to CPR exactly (it is linear in f)
    assert np.mean(cpr["per_prompt"]) == pytest.approx(cpr["value"])
    lo, hi = cpr["ci"]
    path.write_text(HEAD + EDGES + "claims:\n  - name: edge\n    expect:\n"
                    f"      faithfulness_curve: {{cpr_at_least: {(lo + hi) / 2}, method: eap}}\n")
    failures, records = _run(path, planted, "edge")
    assert [r["verdict"] for r in records] == ["inconclusive"]
    assert "INCONCLUSIVE" in failures[0] and "increase the number of prompts" in failures[0]


def test_report_draws_the_curve_band_and_the_roc(planted):
    from circuitcheck.report import build_document
    from circuitcheck.report._html import render

    _, curve = _run(EXAMPLE, planted, "file-scores-curve-is-faithful")
    _, roc = _run(EXAMPLE, planted, "eap-ig-recovers-the-planted-edges")
    html = render(build_document(curve + roc))
    assert "CPR 0.97" in html and "CMD 0.04" in html and 'class="band"' in html
    assert "ROC of eap-ig scores" in html and "false positive rate" in html


# -- bad input: one clear message each --------------------------------------------------------

@pytest.mark.parametrize("circuit, expect, needle", [
    ("circuit: {groups: {a: ['1.1']}}\n", "recovers: {auroc_at_least: 0.9}",
     "recovers needs a ground truth to score against, but the claim has a head circuit"),
    ("", "recovers: {auroc_at_least: 0.9}",
     "recovers needs a ground truth to score against, but the claim has no circuit; give it "
     "the true edge circuit"),
    (EDGES, "recovers: {auroc_at_least: 0.9, truth: oracle}", "recovers.truth must be"),
    (EDGES, "recovers: {auroc_at_least: 1.5}",
     "auroc_at_least is 1.5, but an AUROC lies in [0, 1]; give a bound between 0 and 1"),
    (EDGES, "faithfulness_curve: {cpr_at_least: -0.2}",
     "cpr_at_least is -0.2, but CPR lies in [0, 1]"),
    (EDGES, "faithfulness_curve: {cmd_at_most: 2}", "cmd_at_most is 2, but CMD lies in [0, 1]"),
    (EDGES, "faithfulness_curve: {method: eap}", "needs cpr_at_least and/or cmd_at_most"),
    (EDGES, "faithfulness_curve: {cpr_at_least: 0.5, sizes: [0.5, 0.1]}",
     "sizes must be a list of at least 2 increasing fractions"),
])
def test_bad_edge_score_claims_name_file_line_and_fix(tmp_path, circuit, expect, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(HEAD + circuit + f"claims:\n  - name: bad\n    expect:\n      {expect}\n")
    errors = [e[2] for e in read_claim_file(path).errors]
    assert len(errors) == 1 and "bad.yaml:" in errors[0] and needle in errors[0], errors


def test_python_api_checks_bounds_and_truth(planted):
    from circuitcheck.assertions_edges import assert_faithfulness_curve, assert_recovers

    task = cc.tasks.induction(planted, 8, seq_len=8, seed=0)
    with pytest.raises(CircuitCheckError, match="cpr_at_least must be between 0 and 1"):
        assert_faithfulness_curve(planted, task, cpr_at_least=3)
    with pytest.raises(CircuitCheckError, match="needs cpr_at_least and/or cmd_at_most"):
        assert_faithfulness_curve(planted, task)
    with pytest.raises(CircuitCheckError, match="needs a ground truth"):
        assert_recovers(planted, task, None, auroc_at_least=0.9)


def test_a_scores_file_of_another_model_shape_is_refused(planted, tmp_path):
    write_graph_json(tmp_path / "other.json", (3, 4), {"a2.h1->logits"},
                     {"a2.h1->logits": 1.0})
    path = tmp_path / "c.yaml"
    path.write_text(HEAD + "circuit: {file: other.json}\nclaims:\n  - name: other\n"
                    "    expect:\n      faithfulness_curve: {cpr_at_least: 0.5}\n")
    failures, records = _run(path, planted, "other")
    assert len(failures) == 1
    assert "other.json: the graph is for a model with 3 layers x 4 heads, but this model has " \
           "2 layers x 4 heads; use the graph found on this model" in failures[0]
    with pytest.raises(CircuitError, match="3 layers x 4 heads.*compute them on this model"):
        cc.faithfulness_curve(planted, cc.tasks.induction(planted, 8, seq_len=8, seed=0),
                              cc.EdgeScores.from_file(tmp_path / "other.json"))


# -- discover --edges ---------------------------------------------------------------------------

def test_discover_edges_writes_an_edge_claim_that_holds(tmp_path, planted):
    import yaml

    from circuitcheck.cli import main

    out = tmp_path / "circuits" / "found_edges.yaml"
    assert main(["discover", "--edges", "--model", "zoo:planted", "--task", "induction",
                 "--arg", "n=32", "--arg", "seq_len=8", "--top", "5", "--device", "cpu",
                 "--out", str(out)]) == 0
    doc = yaml.safe_load(out.read_text())
    assert doc["circuit"] == {"file": "found_edges.json"}
    graph = read_graph_json(out.with_suffix(".json"))
    assert len(graph) == 5 and graph.shape == (2, 4) and len(graph.scores) == 110
    expect = doc["claims"][0]["expect"]
    assert set(expect) == {"faithfulness", "necessity", "faithfulness_curve"}
    assert expect["faithfulness"]["at_least"] >= 0.8  # EAP-IG's top 5 keep the copying
    failures, records = _run(out, planted, doc["claims"][0]["name"])
    assert failures == [], failures
    assert {r["kind"] for r in records} == {"faithfulness", "necessity",
                                            "faithfulness curve CPR"}
    assert main(["discover", "--edges", "--model", "zoo:planted", "--task", "induction",
                 "--top", "5", "--out", str(out)]) == 2  # refuses to overwrite


def test_discover_edges_bad_options_are_named(tmp_path, capsys):
    from circuitcheck.cli import main

    base = ["discover", "--model", "zoo:planted", "--task", "induction", "--arg", "n=8",
            "--arg", "seq_len=6"]
    assert main(base + ["--threshold", "0.1", "--out", str(tmp_path / "a.yaml")]) == 2
    assert "--threshold selects edges; add --edges" in capsys.readouterr().err
    assert main(base + ["--edges", "--top", "3", "--threshold", "0.1",
                        "--out", str(tmp_path / "a.yaml")]) == 2
    assert "give --top N or --threshold T, not both" in capsys.readouterr().err
    assert main(base + ["--edges", "--out", str(tmp_path / "a.txt")]) == 2
    assert "names the claim file to write (.yaml)" in capsys.readouterr().err
