"""Attention-pattern pictures for the report: one head on one prompt, query x key, with the
prompt's tokens as labels (self-contained SVG, no JavaScript)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._svg import ColourScale, _e, _heading, _open, _text, fmt, num


def pattern(tokens: Sequence[Any], weights: Sequence[Sequence[Any]], *, title: str,
            row: int | None = None, cols: Sequence[int] = ()) -> str:
    """``weights[query][key]`` (lower triangular) as a grid; ``row`` (the query position a claim
    reads from) and ``cols`` (its target positions) are outlined. Each cell's ``<title>`` gives
    ``query token -> key token: weight``."""
    toks = [str(t) for t in tokens]
    n = len(toks)
    cell = max(8.0, min(22.0, 420.0 / max(n, 1)))
    label_w = 8 + 6.2 * min(max((len(t) for t in toks), default=1), 14)
    left, top = label_w + 6, 24 + label_w
    width, height = left + cell * n + 90, top + cell * n + 40
    scale = ColourScale([0.0, 1.0])
    out = [_open(width, height, title, "pattern"), _heading(width, title)]
    for q in range(n):
        for k in range(q + 1):
            w = num(weights[q][k]) if q < len(weights) and k < len(weights[q]) else None
            fill = "#ddd" if w is None else scale(w)
            out.append(f'<rect class="cell" x="{left + k * cell:.1f}" y="{top + q * cell:.1f}" '
                       f'width="{cell:.1f}" height="{cell:.1f}" fill="{fill}"><title>'
                       f"{q} {_e(toks[q])} -> {k} {_e(toks[k])}: {fmt(w)}</title></rect>")
    for i, t in enumerate(toks):
        short = t if len(t) <= 14 else t[:13] + "…"
        out.append(_text(left - 4, top + (i + 0.5) * cell + 4, short, "end"))
        x = left + (i + 0.5) * cell + 4
        out.append(_text(x, top - 4, short, "start",
                         extra=f' transform="rotate(-90 {x:.1f} {top - 4:.1f})"'))
    if row is not None and 0 <= row < n:
        out.append(f'<rect class="mark" x="{left:.1f}" y="{top + row * cell:.1f}" '
                   f'width="{cell * (row + 1):.1f}" height="{cell:.1f}" fill="none" '
                   'stroke="#000" stroke-width="2"><title>the claim reads this query</title></rect>')
        for c in cols:
            if 0 <= c <= row:
                out.append(f'<rect class="mark" x="{left + c * cell + 1:.1f}" '
                           f'y="{top + row * cell + 1:.1f}" width="{cell - 2:.1f}" '
                           f'height="{cell - 2:.1f}" fill="none" stroke="#e91e63" '
                           'stroke-width="2"><title>target position</title></rect>')
    out.append(scale.legend(left + cell * n + 14, top, max(cell * n, 60.0), "attention"))
    out.append(_text(left, height - 6, "rows: query (from), columns: key (to)", "start"))
    out.append("</svg>")
    return "".join(out)
