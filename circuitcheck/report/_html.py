"""The report page: one self-contained, XHTML-well-formed ``index.html`` with inline SVG.

No external requests (no CDN, fonts or images from elsewhere) and nothing that needs
JavaScript to be seen; a tiny inline script only makes the claims table sortable.
Every piece of user text goes through ``html.escape``.
"""
from __future__ import annotations

import json
import re
from html import escape
from typing import Any

from . import _svg
from ._assets import CSS, JS
from ._svg import VERDICT_COLOURS, fmt, num

VERDICTS = ("held", "failed", "inconclusive", "unmeasurable")  # "error" shown when present
_PARAM = re.compile(r"^(?P<base>.*?::[^\[]*)(?:\[(?P<param>.*)\])?$", re.S)


def _e(s: Any) -> str:
    return escape("" if s is None else str(s), quote=True)


def split_nodeid(nodeid: str) -> tuple[str, str]:
    """``("tests/t.py::test_x", "gpt2-main")`` from ``"tests/t.py::test_x[gpt2-main]"``."""
    m = _PARAM.match(nodeid or "")
    if m is None:
        return nodeid or "", ""
    return m.group("base"), m.group("param") or ""


def group_records(claims: list[dict[str, Any]]) -> list[list[int]]:
    """Indices of records grouped by (claim, nodeid without its ``[...]`` parametrisation),
    in order of first appearance: one claim checked on several models / revisions."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(claims):
        groups.setdefault((str(r.get("claim")), split_nodeid(r.get("nodeid", ""))[0]),
                          []).append(i)
    return list(groups.values())


def variant_label(record: dict[str, Any]) -> str:
    """What distinguishes a record within its group: parametrisation id, else model."""
    m = record.get("measurement") or {}
    param = split_nodeid(record.get("nodeid", ""))[1]
    label = param or str(m.get("model") or "run")
    rev = record.get("revision") or m.get("revision")
    return f"{label} @ {rev}" if rev and str(rev) not in label else label


def condition(r: dict[str, Any]) -> str:
    """The claim's requirement in words: ``>= 0.8``, ``top 2`` (head-score claims), or both."""
    parts = []
    if num(r.get("threshold")) is not None:
        parts.append(f"{r.get('op', '>=')} {fmt(r['threshold'])}")
    if r.get("top") is not None:
        parts.append(f"top {r['top']}")
    return ", ".join(parts) or "-"


def story(r: dict[str, Any]) -> str:
    """The verdict in words (the first line of the assertion message, when none is stored)."""
    m = r["measurement"]
    if r.get("message"):
        return str(r["message"])
    v, op, thr = r["verdict"], r.get("op", ">="), num(r.get("threshold"))
    lo, hi = (m.get("ci") or [None, None])[:2]
    conf = num(m.get("confidence"))
    level = f"{conf:.0%} " if conf is not None else ""
    kind = m.get("kind") or r.get("kind", "")
    if v == "unmeasurable" or m.get("value") is None:
        return f"{kind} not measurable: {m.get('problem') or 'no value'}"
    measured = f"{kind} {fmt(m['value'], '.3f')} ({level}CI [{fmt(lo, '.3f')}, {fmt(hi, '.3f')}])"
    if v == "held":
        return f"{measured}: holds ({condition(r)})"
    if v == "inconclusive":
        return (f"{measured} straddles the threshold {fmt(thr)}; increase the number of "
                "prompts to decide")
    if thr is None:
        return f"{measured}: does not meet {condition(r)}"
    rel, word = ("<", "required") if op == ">=" else (">", "allowed at most")
    return f"{measured}: {rel} {word} {fmt(thr)}"


def _forest_rows(claims: list[dict[str, Any]], idx: list[int]) -> list[dict[str, Any]]:
    rows = []
    for i in idx:
        r, m = claims[i], claims[i]["measurement"]
        lab = variant_label(r) if len(idx) > 1 else "this run"
        b = r.get("baseline")
        if isinstance(b, dict):
            blo, bhi = (b.get("ci") or [None, None])[:2]
            rows.append({"label": f"{lab} (baseline)" if len(idx) > 1 else "baseline",
                         "value": b.get("value"), "lo": blo, "hi": bhi,
                         "colour": VERDICT_COLOURS["baseline"]})
        lo, hi = (m.get("ci") or [None, None])[:2]
        rows.append({"label": lab, "value": m.get("value"), "lo": lo, "hi": hi,
                     "colour": VERDICT_COLOURS.get(r["verdict"], "#333")})
    return rows


def _baseline_cell(r: dict[str, Any]) -> str:
    b = r.get("baseline")
    if not isinstance(b, dict):
        return "<td class='num'>-</td>"
    old, new = num(b.get("value")), num(r["measurement"].get("value"))
    lo, hi = (b.get("ci") or [None, None])[:2]
    delta = "" if old is None or new is None else f" Δ {new - old:+.3f}"
    flag = " <strong class='drift'>DRIFT</strong>" if b.get("drift") else ""
    tip = _e(b.get("message") or f"tolerance {fmt(b.get('tolerance'))}")
    return (f"<td class='num{' drifted' if b.get('drift') else ''}' title='{tip}'>"
            f"{fmt(old, '.3f')} [{fmt(lo, '.3f')}, {fmt(hi, '.3f')}]<br/>→ {fmt(new, '.3f')}"
            f"{_e(delta)}{flag}</td>")


def _row(i: int, r: dict[str, Any], has_baseline: bool) -> str:
    m = r["measurement"]
    lo, hi = (m.get("ci") or [None, None])[:2]
    value = num(m.get("value"))
    mini = _svg.forest(_forest_rows([r], [0])[-1:], threshold=r.get("threshold"),
                       op=r.get("op", ">="), width=120, mini=True)
    what = f"{m.get('kind') or r.get('kind', '')} ({m.get('metric', '')}"
    what += f", {m.get('ablation')})" if m.get("ablation") else ")"
    cells = [
        f"<td><a href='#claim-{i}'>{_e(r['claim'])}</a><br/>"
        f"<code class='nodeid'>{_e(r.get('nodeid', ''))}</code></td>",
        f"<td>{_e(m.get('model'))}</td>", f"<td>{_e(m.get('task'))}</td>", f"<td>{_e(what)}</td>",
        f"<td class='num' data-v='{value if value is not None else -1e308}'>"
        f"{fmt(value, '.3f')} <span class='ci'>[{fmt(lo, '.3f')}, {fmt(hi, '.3f')}]</span></td>",
        f"<td>{mini}</td>",
        f"<td class='num'>{_e(condition(r))}</td>",
        f"<td><span class='badge {_e(r['verdict'])}'>{_e(r['verdict'])}</span></td>",
    ]
    if has_baseline:
        cells.append(_baseline_cell(r))
    return f"<tr class='claim {_e(r['verdict'])}'>{''.join(cells)}</tr>"


def _table(claims: list[dict[str, Any]], groups: list[list[int]], has_baseline: bool) -> str:
    heads = ["claim / test", "model", "task", "measurement", "value [CI]", "interval vs threshold",
             "requirement", "verdict"] + (["baseline → now"] if has_baseline else [])
    out = ["<div class='scroll'><table class='claims'><thead><tr>"
           + "".join(f"<th title='sort'>{h}</th>" for h in heads) + "</tr></thead>"]
    for idx in groups:
        out.append("<tbody>")
        if len(idx) > 1:
            first = claims[idx[0]]
            out.append(f"<tr class='grouphead'><th colspan='{len(heads)}'>{_e(first['claim'])}"
                       f" - {len(idx)} variants of "
                       f"<code>{_e(split_nodeid(first.get('nodeid', ''))[0])}</code></th></tr>")
        out.extend(_row(i, claims[i], has_baseline) for i in idx)
        out.append("</tbody>")
    out.append("</table></div>")
    return "".join(out)


#: The most edges an edge circuit's record lists in the details (the graph draws them all).
MAX_LISTED_EDGES = 40


def _edge_text(c: dict[str, Any]) -> str:
    """``name (5 edges) - input->a0.h2<v>, ...`` for an edge circuit's record."""
    names = [e if isinstance(e, str) else f"{e.get('edge')} @{e.get('position')}"
             if isinstance(e, dict) else str(e) for e in c.get("edges") or ()]
    n = c.get("n_edges", len(names))
    more = f", ... and {len(names) - MAX_LISTED_EDGES} more" if len(names) > MAX_LISTED_EDGES else ""
    return (f"{c.get('name', 'circuit')} ({n} edge{'s' * (n != 1)}) - "
            + ", ".join(names[:MAX_LISTED_EDGES]) + more)


def _circuit_text(c: dict[str, Any]) -> str:
    if "edges" in c:
        return _edge_text(c)
    groups = c.get("groups") or {}
    parts = []
    for g, heads in groups.items():
        hs = ", ".join(f"{h[0]}.{h[1]}" for h in heads
                       if isinstance(h, (list, tuple)) and len(h) == 2)
        pos = (c.get("positions") or {}).get(g)
        parts.append(f"{g}: {hs}" + (f" at {pos}" if pos else ""))
    if c.get("mlps"):
        parts.append("MLPs " + ", ".join(str(x) for x in c["mlps"]))
    n = sum(len(h) for h in groups.values())
    return f"{c.get('name', 'circuit')} ({n} heads) - " + "; ".join(parts)


def _details(r: dict[str, Any]) -> str:
    m = r["measurement"]
    rows = [("test", f"<code>{_e(r.get('nodeid', ''))}</code>"),
            ("model", _e(m.get("model"))), ("task", _e(m.get("task"))),
            ("measurement", _e(f"{m.get('kind', '')}, metric {m.get('metric', '')}, "
                               f"ablation {m.get('ablation') or '-'}")),
            ("sample", _e(f"n={m.get('n')} {m.get('unit', 'prompts')}, seed {m.get('seed')}, "
                          f"{fmt(m.get('confidence'), '.0%')} interval"))]
    if m.get("circuit"):
        rows.append(("circuit", _e(_circuit_text(m["circuit"]))))
    if m.get("baselines"):
        rows.append(("baselines", _e("   ".join(f"{k} {fmt(v)}"
                                                for k, v in m["baselines"].items()))))
    for name, v in (m.get("secondary") or {}).items():
        if isinstance(v, dict):
            rows.append((f"secondary: {_e(name)}", _e(
                f"circuit {fmt(v.get('circuit'))}   full model {fmt(v.get('full'))}   "
                f"all ablated {fmt(v.get('ablated'))}")))
    b = r.get("baseline")
    if isinstance(b, dict):
        rows.append(("baseline run", _e(b.get("message") or
                                        f"{fmt(b.get('value'), '.3f')} (within tolerance "
                                        f"{fmt(b.get('tolerance'))})")))
    return "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def _heads(hs: Any) -> list[tuple[int, int]]:
    """``[layer, head]`` pairs from a JSON list, skipping anything else."""
    return [(h[0], h[1]) for h in hs or () if isinstance(h, (list, tuple)) and len(h) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in h)]


def _outline(m: dict[str, Any]) -> list[tuple[int, int]]:
    """The circuit's heads, outlined on heatmaps that do not name their own."""
    return [h for hs in ((m.get("circuit") or {}).get("groups") or {}).values()
            for h in _heads(hs)]


def _figures(r: dict[str, Any]) -> str:
    m = r["measurement"]
    figs = []
    lo, hi = (m.get("ci") or [None, None])[:2]
    if m.get("per_prompt"):
        figs.append(_svg.histogram(
            m["per_prompt"],
            title=f"per-prompt {m.get('kind', 'value')} (n={len(m['per_prompt'])})",
            xlabel=str(m.get("per_prompt_label") or m.get("metric") or "value"), band=(lo, hi),
            marks={"mean": m.get("value"), "threshold": r.get("threshold")}))
    for title, h in (m.get("heatmaps") or {}).items():
        own = h.get("outline")
        figs.append(_svg.heatmap(h.get("data") or [], title=str(title), label=h.get("label", ""),
                                 outline=_heads(own) if own else _outline(m),
                                 outline_label="claimed heads" if own else "heads in the circuit"))
    for title, p in (m.get("points") or {}).items():
        figs.append(_svg.scatter(p.get("x") or [], p.get("y") or [], p.get("labels") or [],
                                 title=str(title), xlabel=p.get("xlabel", ""),
                                 ylabel=p.get("ylabel", "")))
    for title, c in (m.get("lines") or {}).items():
        figs.append(_svg.lines(c.get("x") or [], c.get("series") or {}, title=str(title),
                               xlabel=c.get("xlabel", ""), ylabel=c.get("ylabel", "")))
    for title, b in (m.get("bars") or {}).items():
        figs.append(_svg.bars(b.get("labels") or [], b.get("values") or [], title=str(title)))
    for title, p in (m.get("patterns") or {}).items():
        from ._attention_svg import pattern

        figs.append(pattern(p.get("tokens") or [], p.get("weights") or [], title=str(title),
                            row=p.get("row"), cols=p.get("cols") or ()))
    circuit = m.get("circuit")
    if isinstance(circuit, dict) and isinstance(circuit.get("edges"), list):
        from ._graph_svg import edge_graph

        figs.append(edge_graph(circuit))
    return "".join(f"<figure>{f}</figure>" for f in figs)


def _grid(rows: list[dict[str, Any]]) -> str:
    """A robustness sweep's verdict grid: one row per ablation × metric × positions."""
    body = "".join(
        f"<tr class='{_e(g.get('verdict', ''))}'><td>{_e(g.get('ablation'))}</td>"
        f"<td>{_e(g.get('metric'))}</td><td>{_e(g.get('positions'))}</td>"
        f"<td>{fmt(g.get('value'), '.3f')}</td>"
        f"<td>[{fmt(g.get('ci_low'), '.3f')}, {fmt(g.get('ci_high'), '.3f')}]</td>"
        f"<td><span class='badge {_e(g.get('verdict', ''))}'>{_e(g.get('verdict', ''))}</span></td></tr>"
        for g in rows)
    return ("<table class='grid'><caption>robustness sweep</caption><thead><tr><th>ablation</th>"
            "<th>metric</th><th>positions</th><th>value</th><th>CI</th><th>verdict</th></tr>"
            f"</thead><tbody>{body}</tbody></table>")


def _section(k: int, claims: list[dict[str, Any]], idx: list[int]) -> str:
    first = claims[idx[0]]
    verdicts = [claims[i]["verdict"] for i in idx]
    badges = "".join(f"<span class='badge {_e(v)}'>{_e(v)}</span>" for v in verdicts)
    out = [f"<section class='group' id='group-{k}'><h2>{_e(first['claim'])} {badges}</h2>"]
    rows = _forest_rows(claims, idx)
    out.append(_svg.forest(rows, threshold=first.get("threshold"), op=first.get("op", ">="),
                           title=f"{first.get('kind', '')} interval vs {condition(first)}",
                           width=520))
    out.append("<div class='multiples'>")
    for i in idx:
        r = claims[i]
        cls = "problem" if r["verdict"] != "held" else "ok"
        out.append(f"<div class='member' id='claim-{i}'>")
        if len(idx) > 1:
            out.append(f"<h3>{_e(variant_label(r))}</h3>")
        out.append(f"<pre class='story {cls}'>{_e(story(r))}</pre>")
        warning = r.get("warning") or r["measurement"].get("warning")
        if warning and str(warning) not in story(r):
            out.append(f"<p class='story problem'>WARNING: {_e(warning)}</p>")
        problem = r["measurement"].get("problem")
        if problem and str(problem) not in story(r):
            out.append(f"<p class='story problem'>problem: {_e(problem)}</p>")
        out.append(_details(r))
        if r.get("grid"):
            out.append(_grid(r["grid"]))
        out.append(f"<div class='figs'>{_figures(r)}</div></div>")
    out.append("</div></section>")
    return "".join(out)


def _summary(doc: dict[str, Any]) -> str:
    claims = doc["claims"]
    counts = {v: doc["summary"].get(v, 0) for v in VERDICTS}
    counts.update({v: n for v, n in doc["summary"].items() if v not in counts})
    counts["skipped"] = len(doc.get("skipped") or [])
    with_base = [r for r in claims if isinstance(r.get("baseline"), dict)]
    if with_base:
        counts["drifted"] = sum(bool(r["baseline"].get("drift")) for r in with_base)
    bad = len(claims) - counts["held"]
    head = ("no claims were checked" if not claims else
            f"all {len(claims)} claims held" if not bad else
            f"{bad} of {len(claims)} claims did not hold")
    partial = (doc.get("run") or {}).get("partial")
    if partial:
        head = f"PARTIAL run ({partial}): {head}"
        bad = bad or 1
    cards = "".join(f"<div class='card {_e(v)}'><span class='n'>{n}</span>{_e(v)}</div>"
                    for v, n in counts.items())
    return (f"<section class='summary'><p class='headline {'ok' if not bad else 'bad'}'>"
            f"{_e(head)}</p><div class='cards'>{cards}</div></section>")


def _skipped(doc: dict[str, Any]) -> str:
    items = doc.get("skipped") or []
    if not items:
        return ""
    lis = "".join(f"<li><code>{_e(s.get('nodeid', ''))}</code>: {_e(s.get('reason', ''))}</li>"
                  for s in items)
    return f"<section><h2>Skipped tests</h2><ul class='skipped'>{lis}</ul></section>"


def _value(v: Any) -> str:
    return str(v) if isinstance(v, (str, int, float)) or v is None else json.dumps(v)


def _meta(doc: dict[str, Any]) -> str:
    rows = [(k, _value(v)) for k, v in (doc.get("run") or {}).items()]
    took = doc["duration_s"]
    rows += [("created", doc["created"]), ("duration", "n/a" if took is None else f"{took} s"),
             ("python", doc["python"]),
             ("versions", ", ".join(f"{k} {v}" for k, v in doc["versions"].items())),
             ("results.json schema", f"version {doc['schema_version']}")]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<footer><h2>Run</h2><table class='meta'>{body}</table></footer>"


def render(doc: dict[str, Any]) -> str:
    """The whole page for a ``results.json`` document."""
    claims = doc["claims"]
    groups = group_records(claims)
    has_baseline = any(isinstance(r.get("baseline"), dict) for r in claims)
    table = _table(claims, groups, has_baseline) if claims else "<p>No claims were recorded.</p>"
    sections = "".join(_section(k, claims, idx) for k, idx in enumerate(groups))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"/>
<meta name="viewport" content="width=device-width, initial-scale=1"/>
<title>circuitcheck report</title>
<style>{CSS}</style></head><body>
<h1>circuitcheck report</h1>
{_summary(doc)}
<h2>Claims</h2>
{table}
{_skipped(doc)}
{sections}
{_meta(doc)}
<script>{JS}</script>
</body></html>
"""
