"""An edge circuit drawn as a layered graph (self-contained SVG, no JavaScript).

Rows from the bottom: ``input``, then per layer its heads and its MLP, ``logits`` on top; only
the nodes the circuit's edges touch are drawn. An edge runs from the top of its sender to the
bottom of its receiver; into a head it ends at the head's q, k or v port (left, middle, right)
and is coloured by that input (Okabe-Ito, as ``_svg.lines``); into an MLP or the logits it is
black. With scores (an EAP-IG graph's), an edge's width and opacity grow with ``|score|``, and
a negative score is dashed. Every node and edge carries a ``<title>`` tooltip.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..edge_circuit import Edge, node_layer, parse_edge
from ..errors import CircuitCheckError
from ._svg import _SERIES, _e, _heading, _open, _text, fmt, num

#: The colour of an edge by the input it feeds (``None``: an MLP's or the logits' input).
QKV_COLOURS = {"q": _SERIES[0], "k": _SERIES[1], "v": _SERIES[2], None: _SERIES[6]}
#: The most edges drawn (the largest ``|score|`` first when scored); the rest are counted.
MAX_EDGES = 400
_NODE_W, _NODE_H, _ROW, _LEFT = 46.0, 20.0, 64.0, 92.0


def _edges(items: Sequence[Any]) -> tuple[list[Edge], int]:
    """The edges of a record's ``edges`` list, and how many entries could not be read."""
    out, bad = [], 0
    for item in items or ():
        try:
            out.append(parse_edge(item))
        except (CircuitCheckError, TypeError, ValueError):
            bad += 1
    return out, bad


def _level(name: str) -> tuple[int, str]:
    """The row of a node (input 0; layer l's heads 2l + 1, its MLP 2l + 2; logits on top) and
    the row's label."""
    kind, layer, _ = node_layer(name)
    if kind == "input":
        return 0, "input"
    if kind == "logits":
        return 1 << 31, "logits"
    if kind == "head":
        return 2 * layer + 1, f"layer {layer} heads"
    return 2 * layer + 2, f"layer {layer} MLP"


def _order(name: str) -> int:
    kind, _, head = node_layer(name)
    return head if kind == "head" else 0


def edge_graph(circuit: Mapping[str, Any], *, title: str = "") -> str:
    """The circuit of a record (``edges``, optional ``scores``, ``name``) as a layered graph."""
    edges, unreadable = _edges(circuit.get("edges") or ())
    scores = circuit.get("scores") if isinstance(circuit.get("scores"), Mapping) else {}
    score = {e: num(scores.get(e.name)) for e in edges}
    scored = any(v is not None for v in score.values())
    total = len(edges)
    if scored and total > MAX_EDGES:
        edges = sorted(edges, key=lambda e: -abs(score[e] or 0.0))
    edges = edges[:MAX_EDGES]
    nodes = list(dict.fromkeys(n for e in edges for n in (e.sender, e.receiver)))
    rows: dict[int, list[str]] = {}
    labels: dict[int, str] = {}
    for n in nodes:
        level, label = _level(n)
        rows.setdefault(level, []).append(n)
        labels[level] = label
    levels = sorted(rows)
    widest = max((len(v) for v in rows.values()), default=1)
    step = max(_NODE_W + 6, min(70.0, 900.0 / widest))
    width = _LEFT + step * widest + 150
    top = 34.0
    height = top + _ROW * max(len(levels) - 1, 0) + _NODE_H + 46
    pos: dict[str, tuple[float, float]] = {}
    row_of = {n: levels.index(_level(n)[0]) for n in nodes}
    for i, level in enumerate(levels):
        y = top + _ROW * (len(levels) - 1 - i) + _NODE_H / 2  # input at the bottom
        members = sorted(rows[level], key=_order)
        x0 = _LEFT + step * (widest - len(members)) / 2
        for j, n in enumerate(members):
            pos[n] = (x0 + step * (j + 0.5), y)
    name = str(circuit.get("name") or "circuit")
    heading = title or f"{name}: {total} edge{'s' * (total != 1)}"
    out = [_open(width, height, heading, "edge-graph"), _heading(width, heading)]
    for level in levels:
        y = pos[rows[level][0]][1]
        out.append(_text(8, y + 4, labels[level], "start", ' font-size="10" fill="#555"'))
    biggest = max((abs(v) for v in score.values() if v is not None), default=0.0) or 1.0
    for e in edges:
        skips = row_of[e.receiver] - row_of[e.sender] - 1
        out.append(_edge(e, pos, score[e], biggest, scored, skips))
    for n in nodes:
        x, y = pos[n]
        kind = node_layer(n)[0]
        fill = {"head": "#f4f4f4", "mlp": "#fff7e0"}.get(kind, "#e8eef7")
        out.append(f'<g class="node"><rect x="{x - _NODE_W / 2:.1f}" y="{y - _NODE_H / 2:.1f}" '
                   f'width="{_NODE_W:.0f}" height="{_NODE_H:.0f}" rx="4" fill="{fill}" '
                   f'stroke="#333"/>{_text(x, y + 4, n)}<title>{_e(n)}</title></g>')
    out.append(_legend(width - 140, top, scored))
    notes = []
    if total > len(edges):
        notes.append(f"showing {len(edges)} of {total} edges (largest |score|)")
    if unreadable:
        notes.append(f"{unreadable} unreadable edge entr{'ies' if unreadable > 1 else 'y'} left out")
    if not edges:
        notes.append("no edges")
    if notes:
        out.append(_text(_LEFT, height - 8, "; ".join(notes), "start", ' font-size="10"'))
    out.append("</svg>")
    return "".join(out)


def _edge(e: Edge, pos: Mapping[str, tuple[float, float]], score: float | None,
          biggest: float, scored: bool, skips: int) -> str:
    """One edge as a curve; one that skips rows bows sideways (q left, v right, else away
    from the straight line) so it does not run through the nodes between."""
    (sx, sy), (rx, ry) = pos[e.sender], pos[e.receiver]
    sy -= _NODE_H / 2
    ry += _NODE_H / 2
    if e.qkv is not None:
        rx += {"q": -14.0, "k": 0.0, "v": 14.0}[e.qkv]
    mid = (sy + ry) / 2
    side = {"q": -1.0, "v": 1.0}.get(e.qkv or "", 1.0 if rx >= sx else -1.0)
    bow = side * (_NODE_W * 0.6 + 12.0 * min(skips, 4)) if skips > 0 else 0.0
    if score is None:
        w, alpha = (1.0, 0.35) if scored else (1.8, 0.85)
    else:
        share = abs(score) / biggest
        w, alpha = 0.8 + 4.2 * share, 0.3 + 0.7 * share
    dash = ' stroke-dasharray="5 3"' if score is not None and score < 0 else ""
    tip = e.name + (f" @{e.position}" if e.position else "")
    if scored:
        tip += f"  score {fmt(score)}"
    return (f'<path class="edge" d="M{sx:.1f},{sy:.1f} C{sx + bow:.1f},{mid:.1f} '
            f'{rx + bow:.1f},{mid:.1f} {rx:.1f},{ry:.1f}" fill="none" stroke="{QKV_COLOURS[e.qkv]}" '
            f'stroke-width="{w:.2f}" stroke-opacity="{alpha:.2f}"{dash}>'
            f"<title>{_e(tip)}</title></path>")


def _legend(x: float, y: float, scored: bool) -> str:
    items = [("q", "into a head's query"), ("k", "into a head's key"),
             ("v", "into a head's value"), (None, "into an MLP / logits")]
    out = []
    for i, (qkv, words) in enumerate(items):
        ly = y + 14 * i
        out.append(f'<line x1="{x:.1f}" y1="{ly:.1f}" x2="{x + 18:.1f}" y2="{ly:.1f}" '
                   f'stroke="{QKV_COLOURS[qkv]}" stroke-width="2"/>')
        out.append(_text(x + 22, ly + 4, words, "start", ' font-size="10"'))
    if scored:
        out.append(_text(x, y + 14 * len(items) + 4, "width: |score|; dashed: < 0", "start",
                         ' font-size="10"'))
    return "".join(out)
