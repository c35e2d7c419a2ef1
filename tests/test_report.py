"""The run report: well-formed self-contained HTML with SVG pictures, the JSON schema,
baseline round trip and drift detection, and a real headless-browser render when Chromium
is installed. Hand-made records only: no model runs here."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from circuitcheck.report import (SCHEMA_VERSION, BaselineError, Drift, annotate, compare,
                                 default_tolerance, load_baseline, record_key, save_baseline,
                                 write_report)
from circuitcheck.report._html import group_records, split_nodeid


def measurement(value, ci, *, kind="faithfulness", model="zoo:planted", problem=None, n=8,
                **extra):
    per = [] if value is None else [value + 0.1 * math.sin(i) for i in range(n)]
    out = {"kind": kind, "value": value, "ci": list(ci), "confidence": 0.95, "n": len(per),
           "metric": "logit_diff", "ablation": "mean",
           "baselines": {"full": 3.41, "ablated": 0.12, "corrupted": -0.5}, "seed": 0,
           "model": model, "task": "induction", "problem": problem, "per_prompt": per,
           "circuit": {"name": "induction", "groups": {"prev": [[0, 1]], "induction": [[1, 2]]}}}
    out.update(extra)
    return out


def record(claim, verdict, m, *, nodeid="tests/test_x.py::test_claim", op=">=", threshold=0.8):
    return {"claim": claim, "kind": m["kind"], "verdict": verdict, "op": op,
            "threshold": threshold, "nodeid": nodeid, "measurement": m}


HEAT = [[0.1, 0.9, -0.2, 0.0], [0.05, 0.3, 0.95, float("nan")]]  # 2 layers x 4 heads


def sample_records() -> list[dict]:
    held = record("induction-faithful", "held", measurement(0.93, (0.9, 0.96)))
    failed = record("<script>alert(1)</script> & friends", "failed",
                    measurement(0.41, (0.35, 0.47), heatmaps={
                        "stochastic importance": {"data": HEAT, "label": "Δ metric"}},
                        points={"importance vs exclusion": {
                            "x": [0.1, 0.9, -0.2, 0.3], "y": [0.0, 0.8, 0.1, 0.05],
                            "labels": ["", "L0H1", "", "<b>&"], "xlabel": "importance",
                            "ylabel": "exclusion"}},
                        bars={"kept vs ablated": {"labels": ["retained only", "ablated only",
                                                             "full"],
                                                  "values": [1.2, -0.3, 3.41]}}),
                    nodeid="tests/test_x.py::test_sweep[gpt2-main]")
    failed2 = record("<script>alert(1)</script> & friends", "inconclusive",
                     measurement(0.78, (0.7, 0.86), model="gpt2@step1000"),
                     nodeid="tests/test_x.py::test_sweep[gpt2-step1000]")
    unmeasurable = record("copying-necessary", "unmeasurable",
                          measurement(None, (None, None), kind="necessity",
                                      problem="the full model does not do the task "
                                              "(clean 0.01 vs corrupted 0.02)"),
                          op="<=", threshold=0.2)
    return [held, failed, failed2, unmeasurable]


@pytest.fixture
def report(tmp_path):
    records = sample_records()
    records[0]["baseline"] = {"value": 0.95, "ci": [0.92, 0.98], "drift": False,
                              "tolerance": 0.05}
    records[1]["baseline"] = {"value": 0.62, "ci": [0.58, 0.66], "drift": True,
                              "tolerance": 0.07, "message": "claim DRIFTED"}
    paths = write_report(tmp_path / "rep", records, started=time.time() - 3,
                         meta={"device": "cpu", "dtype": "float32", "seed": 0,
                               "models": ["zoo:planted", "gpt2"]},
                         skipped=[{"nodeid": "tests/test_x.py::test_gpt2",
                                   "reason": "model 'gpt2' is not available here"}])
    return paths


def test_json_keeps_the_schema(report):
    doc = json.loads(report["json"].read_text())
    assert doc["schema_version"] == SCHEMA_VERSION == 1
    assert {"schema_version", "created", "duration_s", "python", "versions", "summary", "claims",
            "run", "skipped"} <= set(doc)
    assert doc["summary"] == {"held": 1, "failed": 1, "inconclusive": 1, "unmeasurable": 1}
    assert doc["run"]["device"] == "cpu" and doc["duration_s"] >= 3
    # NaN in a heatmap is written as null: the file is standard JSON
    heat = doc["claims"][1]["measurement"]["heatmaps"]["stochastic importance"]
    assert heat["data"][1][3] is None
    assert "NaN" not in report["json"].read_text()


def test_html_is_well_formed_xhtml_with_heatmap_cells(report):
    text = report["html"].read_text()
    root = ET.fromstring(text)  # XML-well-formed, so also balanced for HTML parsers
    svgs = [s for s in root.iter("svg") if s.get("class") == "heatmap"]
    assert len(svgs) == 1
    cells = [r for r in svgs[0].iter("rect") if r.get("class") == "cell"]
    assert len(cells) == 2 * 4
    tips = [c.find("title").text for c in cells]
    assert tips[1] == "L0H1: 0.9" and tips[7] == "L1H3: n/a"
    marks = [r for r in svgs[0].iter("rect") if r.get("class") == "mark"]
    assert len(marks) == 2  # the circuit's heads are outlined
    classes = {s.get("class") for s in root.iter("svg")}
    assert {"heatmap", "scatter", "bars", "histogram", "forest", "forest mini"} <= classes


def test_html_escapes_and_makes_no_external_requests(report):
    text = report["html"].read_text()
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt; &amp;" in text
    assert len(re.findall(r"<script", text)) == 1  # only the table sorter
    assert "<b>" not in text and "&lt;b&gt;&amp;" in text  # SVG text is escaped too
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", text)
    assert refs and all(r.startswith("#") for r in refs)
    assert not re.search(r"https?://|@import|url\(", text)

    class Tags(HTMLParser):  # every opened tag is closed, in order
        def __init__(self):
            super().__init__()
            self.stack: list[str] = []

        def handle_startendtag(self, tag, attrs):
            pass

        def handle_starttag(self, tag, attrs):
            self.stack.append(tag)

        def handle_endtag(self, tag):
            assert self.stack.pop() == tag

    parser = Tags()
    parser.feed(text)
    assert parser.stack == []


def test_html_shows_summary_problems_baseline_groups_and_meta(report):
    text = report["html"].read_text()
    root = ET.fromstring(text)
    cards = {c.get("class").split()[1]: c.find("span").text for c in root.iter("div")
             if (c.get("class") or "").startswith("card ")}
    assert cards == {"held": "1", "failed": "1", "inconclusive": "1", "unmeasurable": "1",
                     "skipped": "1", "drifted": "1"}
    assert "the full model does not do the task" in text
    assert "0.620 [0.580, 0.660]<br/>→ 0.410 Δ -0.210" in text and "DRIFT" in text
    assert "2 variants of" in text and "gpt2-step1000" in text
    assert "model &#x27;gpt2&#x27; is not available here" in text
    assert "float32" in text and "schema" in text
    assert "faithfulness 0.410 (95% CI [0.350, 0.470]): &lt; required 0.8" in text


def test_grouping_by_parametrisation():
    assert split_nodeid("t.py::test_a[gpt2-main]") == ("t.py::test_a", "gpt2-main")
    assert split_nodeid("t.py::C::test_a") == ("t.py::C::test_a", "")
    assert split_nodeid("t.py::test[a::b[1]]") == ("t.py::test", "a::b[1]")
    assert group_records(sample_records()) == [[0], [1, 2], [3]]


def test_head_score_claim_without_threshold(tmp_path):
    m = measurement(0.7, (0.6, 0.8), kind="induction score", heatmaps={
        "induction score": {"data": HEAT, "label": "score", "outline": [[1, 2], [9, 9]]}})
    r = record("1.2 is induction head", "failed", m, threshold=None)
    r["top"] = 1
    text = write_report(tmp_path, [r])["html"].read_text()
    root = ET.fromstring(text)
    marks = [x for x in root.iter("rect") if x.get("class") == "mark"]
    assert [x.find("title").text for x in marks] == ["L1H2: claimed heads"]  # 9.9 is off-grid
    assert "does not meet top 1" in text and ">top 1<" in text


def test_empty_run_still_writes_a_page(tmp_path):
    paths = write_report(tmp_path, [])
    ET.fromstring(paths["html"].read_text())
    assert "no claims were checked" in paths["html"].read_text()


# --- baseline ---------------------------------------------------------------------------

def test_baseline_round_trip(tmp_path):
    records = sample_records()
    path = save_baseline(tmp_path / "reports" / "baseline.json", records)
    loaded = load_baseline(path)
    assert set(loaded) == {record_key(r) for r in records}
    key = "test_x.py::test_sweep[gpt2-main]::<script>alert(1)</script> & friends"
    assert loaded[key]["measurement"]["value"] == 0.41
    assert "per_prompt" not in loaded[key]["measurement"]  # bulky arrays are left out
    assert "heatmaps" not in loaded[key]["measurement"]
    # a run's results.json serves as a baseline too
    paths = write_report(tmp_path / "run", records)
    assert set(load_baseline(paths["json"])) == set(loaded)


def test_bad_baselines_say_what_is_wrong(tmp_path):
    with pytest.raises(BaselineError, match="does not exist"):
        load_baseline(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BaselineError, match="not readable JSON"):
        load_baseline(bad)
    bad.write_text(json.dumps({"schema_version": 1, "claims": [{"claim": "x"}]}))
    with pytest.raises(BaselineError, match="record #0"):
        load_baseline(bad)
    bad.write_text(json.dumps({"schema_version": 99, "claims": []}))
    with pytest.raises(BaselineError, match="schema_version 99"):
        load_baseline(bad)


def test_default_tolerance():
    # half-widths 0.04 and 0.03: difference interval half-width 0.05 -> max(0.05, 0.05)
    assert default_tolerance([0.58, 0.66], [0.38, 0.44]) == pytest.approx(0.05)
    assert default_tolerance([0.4, 0.8], [0.5, 0.8]) == pytest.approx(math.hypot(0.2, 0.15))
    assert default_tolerance([0.6, 0.6], [None, None]) == 0.05
    assert default_tolerance([0.6, 0.6], [0.6, 0.6], floor=0.01) == 0.01


def test_drift_detected_with_real_numbers():
    old = record("x", "held", measurement(0.62, (0.58, 0.66)))
    new = record("x", "failed", measurement(0.41, (0.38, 0.44)))
    d = compare(new, old, source="reports/baseline.json")
    assert isinstance(d, Drift) and d.old == 0.62 and d.new == 0.41
    assert d.tolerance == pytest.approx(0.05) and d.delta == pytest.approx(-0.21)
    assert d.message() == ("claim 'x' DRIFTED: faithfulness 0.62 -> 0.41 (|Δ| 0.21 > "
                           "tolerance 0.05) against baseline reports/baseline.json")
    # within the noise of two wide intervals: no drift; a fixed tolerance overrides
    wide_old = record("x", "held", measurement(0.62, (0.42, 0.82)))
    wide_new = record("x", "held", measurement(0.45, (0.30, 0.60)))
    assert compare(wide_new, wide_old) is None  # |Δ| 0.17 < hypot(0.2, 0.15) = 0.25
    assert compare(wide_new, wide_old, tolerance=0.1).tolerance == 0.1
    assert compare(old, old) is None


def test_drift_in_measurability_and_definition():
    ok = record("x", "held", measurement(0.9, (0.85, 0.95)))
    gone = record("x", "unmeasurable",
                  measurement(None, (None, None), problem="clean ≈ corrupted"))
    assert "now clean ≈ corrupted" in compare(gone, ok).message()
    assert "was not measurable" in compare(ok, gone).message()
    assert compare(gone, gone) is None
    other = record("x", "held", measurement(0.9, (0.85, 0.95)))
    other["measurement"]["metric"] = "prob"
    assert "metric 'logit_diff' -> 'prob'" in compare(other, ok).message()


def test_annotate_attaches_baseline_for_the_report(tmp_path):
    old = sample_records()
    save_baseline(tmp_path / "b.json", old)
    new = sample_records()
    new[0]["measurement"].update(value=0.70, ci=[0.66, 0.74])  # was 0.93 [0.90, 0.96]
    drifts = annotate(new, load_baseline(tmp_path / "b.json"), source=tmp_path / "b.json")
    assert [d.claim for d in drifts] == ["induction-faithful"]
    assert new[0]["baseline"]["drift"] and new[0]["baseline"]["value"] == 0.93
    assert not new[1]["baseline"]["drift"] and new[3]["baseline"]["value"] is None
    html = write_report(tmp_path / "rep", new)["html"].read_text()
    assert "DRIFTED: faithfulness 0.93 -&gt; 0.70" in html


# --- a real browser ------------------------------------------------------------------------

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser",
                             shutil.which("chromium") or "") if p and Path(p).exists()), None)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                    "(apt-get install chromium) - the headless render check needs it")
def test_chromium_renders_the_report(report, tmp_path):
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-extensions", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2000",
             "--enable-logging=stderr", "--v=0"]
    url = report["html"].resolve().as_uri()
    png = tmp_path / "shot.png"
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True,
                         timeout=120)
    shot = subprocess.run(flags + [f"--screenshot={png}", url], capture_output=True, text=True,
                          timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'class="heatmap"' in dom.stdout and "circuitcheck report" in dom.stdout
    # the sorting script ran without error and the DOM kept every claim row
    assert dom.stdout.count('class="claim ') == 4
    def console(log: str) -> list[str]:
        return [line for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line]

    for log in (dom.stderr, shot.stderr):
        assert not console(log), "\n".join(console(log))
    # control: the same page, with a click on the "value [CI]" heading and then an error;
    # the table is re-sorted by value (row groups kept) and the error is seen by the check
    clicked = tmp_path / "clicked.html"
    clicked.write_text(report["html"].read_text().replace("</body>", (
        "<script>document.querySelectorAll('table.claims thead th')[4].click();"
        "throw new Error('boom')</script></body>")))
    control = subprocess.run(flags + ["--dump-dom", clicked.as_uri()], capture_output=True,
                             text=True, timeout=120)
    assert any("boom" in line for line in console(control.stderr)), control.stderr[-2000:]
    order = re.findall(r"<tr class=\"claim \w+\"><td><a href=\"#claim-(\d)", control.stdout)
    assert order == ["3", "1", "2", "0"]  # n/a first, then 0.41 (with its group), then 0.93
    assert shot.returncode == 0 and png.stat().st_size > 10_000, shot.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- edge circuits ------------------------------------------------------------------------

EDGE_CIRCUIT = {"type": "edges", "name": "planted-edges", "n_edges": 6,
                "edges": ["input->a0.h2<v>", "a0.h2->a1.h1<k>", "input->a1.h1<q>",
                          "input->a1.h1<v>", "a1.h1->logits",
                          {"edge": "a0.h1->m0", "position": "end"}],
                "scores": {"a1.h1->logits": 1.0, "a0.h2->a1.h1<k>": 0.5, "a0.h1->m0": -0.25}}


def test_edge_circuit_is_drawn_as_a_layered_graph():
    from circuitcheck.report._graph_svg import QKV_COLOURS, edge_graph

    root = ET.fromstring(edge_graph(EDGE_CIRCUIT))
    nodes = {g.find("title").text: g.find("rect") for g in root.iter("g")
             if g.get("class") == "node"}
    assert set(nodes) == {"input", "a0.h1", "a0.h2", "m0", "a1.h1", "logits"}
    y = {n: float(r.get("y")) for n, r in nodes.items()}  # SVG y grows downwards
    assert y["input"] > y["a0.h2"] == y["a0.h1"] > y["m0"] > y["a1.h1"] > y["logits"]
    edges = {p.find("title").text.split("  ")[0]: p for p in root.iter("path")
             if p.get("class") == "edge"}
    assert set(edges) == {*EDGE_CIRCUIT["edges"][:5], "a0.h1->m0 @end"}
    colour = {n: p.get("stroke") for n, p in edges.items()}
    assert colour["input->a1.h1<q>"] == QKV_COLOURS["q"] != colour["a0.h2->a1.h1<k>"] \
        == QKV_COLOURS["k"] != colour["input->a0.h2<v>"] == QKV_COLOURS["v"]
    width = {n: float(p.get("stroke-width")) for n, p in edges.items()}
    assert width["a1.h1->logits"] > width["a0.h2->a1.h1<k>"] > width["input->a1.h1<q>"]
    assert edges["a0.h1->m0 @end"].get("stroke-dasharray")  # a negative score is dashed
    assert "score 0.5" in edges["a0.h2->a1.h1<k>"].find("title").text
    unscored = ET.fromstring(edge_graph({**EDGE_CIRCUIT, "scores": None}))
    widths = {p.get("stroke-width") for p in unscored.iter("path") if p.get("class") == "edge"}
    assert len(widths) == 1 and "|score|" not in edge_graph({**EDGE_CIRCUIT, "scores": None})
    broken = ET.fromstring(edge_graph({"edges": ["a0.h1->a1.h1<x>", 7, "a0.h1->logits"]}))
    assert "2 unreadable edge entries left out" in ET.tostring(broken, encoding="unicode")


def test_report_names_and_draws_an_edge_circuit(tmp_path):
    m = measurement(0.97, (0.94, 1.0), circuit=EDGE_CIRCUIT)
    text = write_report(tmp_path, [record("planted-edges-sufficient", "held", m)])["html"] \
        .read_text()
    root = ET.fromstring(text)
    graphs = [s for s in root.iter("svg") if s.get("class") == "edge-graph"]
    assert len(graphs) == 1 and text.count("<figure>") == 2  # the histogram and the graph
    assert ("planted-edges (6 edges) - input-&gt;a0.h2&lt;v&gt;, a0.h2-&gt;a1.h1&lt;k&gt;"
            in text and "a0.h1-&gt;m0 @end" in text)
