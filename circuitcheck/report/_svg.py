"""Inline SVG pictures for the report, drawn in plain Python (no matplotlib, no JavaScript).

Every function returns one ``<svg>`` element as text, XML-well-formed, with all user text
escaped and exact values in ``<title>`` tooltips. Missing or non-finite numbers are skipped
(drawn as grey cells in heatmaps), never turned into zeros.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

FONT = 11
RUG_MAX = 500
#: viridis at five stops: perceptually even, readable in grey, fine for colour-blind readers.
_SEQUENTIAL = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
#: blue - white - red for signed data centred on zero.
_DIVERGING = ((33, 102, 172), (146, 197, 222), (247, 247, 247), (244, 165, 130), (178, 24, 43))
VERDICT_COLOURS = {"held": "#1a7f37", "failed": "#c62828", "inconclusive": "#b26a00",
                   "unmeasurable": "#6b6b8a", "error": "#7b1fa2", "baseline": "#888888"}


def num(x: Any) -> float | None:
    """``x`` as a finite float, or None (None, NaN, inf, bools and non-numbers)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def fmt(x: Any, spec: str = ".3g") -> str:
    v = num(x)
    return "n/a" if v is None else format(v, spec)


def _e(s: Any) -> str:
    return escape(str(s), quote=True)


def _open(width: float, height: float, title: str, cls: str) -> str:
    return (f'<svg class="{cls}" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" font-size="{FONT}">'
            f"<title>{_e(title)}</title>")


def _text(x: float, y: float, s: Any, anchor: str = "middle", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{_e(s)}</text>')


def _heading(width: float, title: str) -> str:
    return _text(width / 2, 14, title, extra=' font-weight="bold" font-size="12"')


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    out = []
    t = start
    while t <= hi + step * 1e-9:
        out.append(0.0 if abs(t) < step * 1e-9 else t)
        t += step
    return out


def span(values: Iterable[Any], pad: float = 0.05) -> tuple[float, float]:
    """A padded [lo, hi] around the finite ``values`` (``(0, 1)`` when there are none)."""
    vs = [v for v in (num(x) for x in values) if v is not None]
    if not vs:
        return 0.0, 1.0
    lo, hi = min(vs), max(vs)
    if hi == lo:
        d = abs(lo) * 0.1 or 0.5
        return lo - d, hi + d
    d = (hi - lo) * pad
    return lo - d, hi + d


def _lerp(stops: Sequence[tuple[int, int, int]], t: float) -> str:
    t = min(max(t, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(t), len(stops) - 2)
    f = t - i
    rgb = [round(a + (b - a) * f) for a, b in zip(stops[i], stops[i + 1])]
    return "#{:02x}{:02x}{:02x}".format(*rgb)


class ColourScale:
    """Maps values to colours: diverging around 0 for signed data, viridis otherwise."""

    def __init__(self, values: Iterable[Any]) -> None:
        vs = [v for v in (num(x) for x in values) if v is not None] or [0.0, 1.0]
        self.lo, self.hi = min(vs), max(vs)
        self.diverging = self.lo < 0 < self.hi
        if self.diverging:
            m = max(-self.lo, self.hi)
            self.lo, self.hi = -m, m
        elif self.hi == self.lo:
            self.hi = self.lo + 1.0

    def __call__(self, x: float) -> str:
        t = (x - self.lo) / (self.hi - self.lo)
        return _lerp(_DIVERGING if self.diverging else _SEQUENTIAL, t)

    def legend(self, x: float, y: float, height: float, label: str) -> str:
        """A vertical colour bar of 24 steps with min / middle / max values and ``label``."""
        steps, out = 24, []
        h = height / steps
        for i in range(steps):
            v = self.hi - (self.hi - self.lo) * (i + 0.5) / steps
            out.append(f'<rect x="{x:.1f}" y="{y + i * h:.1f}" width="12" height="{h + 0.5:.1f}" '
                       f'fill="{self(v)}"/>')
        out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="12" height="{height:.1f}" '
                   f'fill="none" stroke="#555"/>')
        for frac, v in ((0, self.hi), (0.5, (self.hi + self.lo) / 2), (1, self.lo)):
            out.append(_text(x + 16, y + frac * height + 4, fmt(v), "start"))
        out.append(_text(x, y + height + 30, label, "start"))
        return "".join(out)


def heatmap(data: Sequence[Sequence[Any]], *, title: str, label: str = "",
            outline: Iterable[tuple[int, int]] = (),
            outline_label: str = "heads in the circuit") -> str:
    """A layer x head grid (layer 0 at the top); ``outline`` marks heads, e.g. the circuit's.

    Each cell is a ``<rect class="cell">`` whose ``<title>`` gives ``L{layer}H{head}: value``.
    """
    rows = [list(r) for r in data]
    n_layers = len(rows)
    n_heads = max((len(r) for r in rows), default=0)
    cell = max(6.0, min(40.0, 420.0 / max(n_heads, 1), 360.0 / max(n_layers, 1)))
    left, top = 58.0, 26.0
    gw, gh = cell * n_heads, cell * n_layers
    width = left + gw + max(80.0, 24 + 6.5 * len(label or "value"))
    height = top + max(gh, 60.0) + 48
    scale = ColourScale(x for r in rows for x in r)
    show_values = cell >= 28 and n_heads <= 14
    marked = {(int(a), int(b)) for a, b in outline}
    out = [_open(width, height, title, "heatmap"), _heading(width, title)]
    for i, r in enumerate(rows):
        for j in range(n_heads):
            v = num(r[j]) if j < len(r) else None
            x, y = left + j * cell, top + i * cell
            fill = "#ddd" if v is None else scale(v)
            out.append(f'<rect class="cell" x="{x:.1f}" y="{y:.1f}" width="{cell:.1f}" '
                       f'height="{cell:.1f}" fill="{fill}"><title>L{i}H{j}: {fmt(v)}</title>'
                       "</rect>")
            if show_values and v is not None:
                t = (v - scale.lo) / (scale.hi - scale.lo)
                dark = (0.25 < t < 0.75) if scale.diverging else t > 0.55
                colour = "#111" if dark else "#fff"
                out.append(_text(x + cell / 2, y + cell / 2 + 3.5, fmt(v, ".2g"),
                                 extra=f' fill="{colour}" font-size="9" pointer-events="none"'))
    for i, j in sorted(marked):
        if 0 <= i < n_layers and 0 <= j < n_heads:
            out.append(f'<rect class="mark" x="{left + j * cell + 1:.1f}" '
                       f'y="{top + i * cell + 1:.1f}" width="{cell - 2:.1f}" '
                       f'height="{cell - 2:.1f}" fill="none" stroke="#000" stroke-width="2">'
                       f"<title>L{i}H{j}: {_e(outline_label)}</title></rect>")
    every = max(1, math.ceil(n_heads / 16))
    for j in range(0, n_heads, every):
        out.append(_text(left + (j + 0.5) * cell, top + gh + 13, j))
    every = max(1, math.ceil(n_layers / 16))
    for i in range(0, n_layers, every):
        out.append(_text(left - 5, top + (i + 0.5) * cell + 4, i, "end"))
    out.append(_text(left + gw / 2, top + gh + 30, "head"))
    out.append(_text(14, top + gh / 2, "layer",
                     extra=f' transform="rotate(-90 14 {top + gh / 2:.1f})"'))
    out.append(scale.legend(left + gw + 14, top, max(gh, 60.0), label or "value"))
    if marked:
        out.append(_text(left, height - 2, f"outlined: {outline_label}", "start",
                         ' fill="#555" font-size="10"'))
    out.append("</svg>")
    return "".join(out)


class _Axes:
    """Linear x / y scales into a plotting box, and their tick marks."""

    def __init__(self, box: tuple[float, float, float, float],
                 xr: tuple[float, float], yr: tuple[float, float]) -> None:
        self.x0, self.y0, self.w, self.h = box
        self.xr, self.yr = xr, yr

    def x(self, v: float) -> float:
        return self.x0 + (v - self.xr[0]) / (self.xr[1] - self.xr[0]) * self.w

    def y(self, v: float) -> float:
        return self.y0 + self.h - (v - self.yr[0]) / (self.yr[1] - self.yr[0]) * self.h

    def frame(self, xlabel: str = "", ylabel: str = "", yticks: bool = True) -> str:
        b = self.y0 + self.h
        out = [f'<rect x="{self.x0:.1f}" y="{self.y0:.1f}" width="{self.w:.1f}" '
               f'height="{self.h:.1f}" fill="none" stroke="#999"/>']
        for t in ticks(*self.xr):
            if self.xr[0] <= t <= self.xr[1]:
                out.append(f'<line x1="{self.x(t):.1f}" y1="{b:.1f}" x2="{self.x(t):.1f}" '
                           f'y2="{b + 4:.1f}" stroke="#999"/>')
                out.append(_text(self.x(t), b + 15, fmt(t)))
        if yticks:
            for t in ticks(*self.yr):
                if self.yr[0] <= t <= self.yr[1]:
                    out.append(f'<line x1="{self.x0 - 4:.1f}" y1="{self.y(t):.1f}" '
                               f'x2="{self.x0:.1f}" y2="{self.y(t):.1f}" stroke="#999"/>')
                    out.append(_text(self.x0 - 6, self.y(t) + 4, fmt(t), "end"))
        if xlabel:
            out.append(_text(self.x0 + self.w / 2, b + 30, xlabel))
        if ylabel:
            cy = self.y0 + self.h / 2
            out.append(_text(12, cy, ylabel, extra=f' transform="rotate(-90 12 {cy:.1f})"'))
        return "".join(out)


def scatter(x: Sequence[Any], y: Sequence[Any], labels: Sequence[Any] = (), *, title: str,
            xlabel: str = "", ylabel: str = "") -> str:
    """Points with tooltips; points whose label is non-empty get it written beside them."""
    pts = []
    for i, (a, b) in enumerate(zip(x, y)):
        a, b = num(a), num(b)
        if a is not None and b is not None:
            lab = labels[i] if i < len(labels) and labels[i] is not None else ""
            pts.append((a, b, str(lab)))
    width, height = 400.0, 300.0
    ax = _Axes((56, 26, width - 76, height - 74), span(p[0] for p in pts),
               span(p[1] for p in pts))
    out = [_open(width, height, title, "scatter"), _heading(width, title),
           ax.frame(xlabel, ylabel)]
    for a, b, lab in pts:
        tip = f"{lab}: " if lab else ""
        out.append(f'<circle class="point" cx="{ax.x(a):.1f}" cy="{ax.y(b):.1f}" r="3.5" '
                   f'fill="#3b528b" fill-opacity="0.7"><title>{_e(tip)}({fmt(a)}, {fmt(b)})'
                   "</title></circle>")
    for a, b, lab in pts:
        if lab:
            anchor = "end" if ax.x(a) > ax.x0 + ax.w * 0.75 else "start"
            dx = -6 if anchor == "end" else 6
            out.append(_text(ax.x(a) + dx, ax.y(b) - 4, lab, anchor, ' font-size="10"'))
    if not pts:
        out.append(_text(width / 2, height / 2, "no finite points"))
    out.append("</svg>")
    return "".join(out)


#: Okabe-Ito: a categorical palette that colour-blind readers can tell apart.
_SERIES = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")


def lines(x: Sequence[Any], series: dict[str, dict[str, Any]], *, title: str,
          xlabel: str = "", ylabel: str = "") -> str:
    """One line per series over the shared ``x`` (each ``{"y": [...]}``, optionally ``lo`` /
    ``hi`` for an interval band and ``dashed``), with a legend; points carry tooltips."""
    xs = [num(v) for v in x]
    ys = [num(v) for s in series.values() for key in ("y", "lo", "hi") for v in s.get(key) or ()]
    width = 460.0
    height = 300.0 + 14 * max(len(series) - 6, 0)
    ax = _Axes((56, 26, 250, height - 74), span(v for v in xs if v is not None),
               span(v for v in ys if v is not None))
    out = [_open(width, height, title, "lines"), _heading(width, title), ax.frame(xlabel, ylabel)]
    for i, (name, s) in enumerate(series.items()):
        colour = _SERIES[i % len(_SERIES)]
        pts = [(a, num(b)) for a, b in zip(xs, s.get("y") or ()) if a is not None]
        lo, hi = s.get("lo") or (), s.get("hi") or ()
        band = [(a, num(l), num(h)) for a, l, h in zip(xs, lo, hi) if a is not None]
        band = [(a, l, h) for a, l, h in band if l is not None and h is not None]
        if len(band) > 1:
            ring = [(a, h) for a, _, h in band] + [(a, l) for a, l, _ in reversed(band)]
            out.append('<polygon class="band" points="' + " ".join(
                f"{ax.x(a):.1f},{ax.y(b):.1f}" for a, b in ring)
                + f'" fill="{colour}" fill-opacity="0.12" stroke="none"/>')
        dash = ' stroke-dasharray="5 3"' if s.get("dashed") else ""
        seg = [(a, b) for a, b in pts if b is not None]
        if len(seg) > 1:
            out.append('<polyline points="' + " ".join(f"{ax.x(a):.1f},{ax.y(b):.1f}"
                                                       for a, b in seg)
                       + f'" fill="none" stroke="{colour}" stroke-width="1.6"{dash}/>')
        for a, b in seg:
            out.append(f'<circle class="point" cx="{ax.x(a):.1f}" cy="{ax.y(b):.1f}" r="2.8" '
                       f'fill="{colour}"><title>{_e(name)}: ({fmt(a)}, {fmt(b)})</title></circle>')
        ly = 40 + 14 * i
        out.append(f'<line x1="{ax.x0 + ax.w + 12:.1f}" y1="{ly - 4}" x2="{ax.x0 + ax.w + 30:.1f}"'
                   f' y2="{ly - 4}" stroke="{colour}" stroke-width="1.6"{dash}/>')
        out.append(_text(ax.x0 + ax.w + 34, ly, name, "start", ' font-size="10"'))
    if not any(num(v) is not None for s in series.values() for v in s.get("y") or ()):
        out.append(_text(ax.x0 + ax.w / 2, height / 2, "no finite points"))
    out.append("</svg>")
    return "".join(out)


def bars(labels: Sequence[Any], values: Sequence[Any], *, title: str) -> str:
    """Vertical bars from zero, the value written on each; missing values say ``n/a``."""
    items = list(zip(labels, values))
    n = max(len(items), 1)
    bw = max(18.0, min(60.0, 360.0 / n))
    width, height = 70 + bw * 1.4 * n + 20, 260.0
    vals = [num(v) for _, v in items]
    lo, hi = span([0.0, *vals], pad=0.1)
    ax = _Axes((60, 28, bw * 1.4 * n, height - 90), (0, n), (min(lo, 0.0), max(hi, 0.0)))
    out = [_open(width, height, title, "bars"), _heading(width, title)]
    out.append(f'<line x1="{ax.x0:.1f}" y1="{ax.y0:.1f}" x2="{ax.x0:.1f}" '
               f'y2="{ax.y0 + ax.h:.1f}" stroke="#999"/>')
    for t in ticks(*ax.yr):
        if ax.yr[0] <= t <= ax.yr[1]:
            out.append(_text(ax.x0 - 6, ax.y(t) + 4, fmt(t), "end"))
            out.append(f'<line x1="{ax.x0 - 4:.1f}" y1="{ax.y(t):.1f}" x2="{ax.x0:.1f}" '
                       f'y2="{ax.y(t):.1f}" stroke="#999"/>')
    zero = ax.y(0.0)
    for i, ((lab, _), v) in enumerate(zip(items, vals)):
        cx = ax.x(i + 0.5)
        if v is None:
            out.append(_text(cx, zero - 4, "n/a", extra=' fill="#888"'))
        else:
            top, bottom = min(ax.y(v), zero), max(ax.y(v), zero)
            out.append(f'<rect class="bar" x="{cx - bw / 2:.1f}" y="{top:.1f}" width="{bw:.1f}" '
                       f'height="{max(bottom - top, 0.5):.1f}" fill="#21918c">'
                       f"<title>{_e(lab)}: {fmt(v)}</title></rect>")
            ty = top - 4 if v >= 0 else bottom + 12
            out.append(_text(cx, ty, fmt(v)))
        out.append(_text(cx, ax.y0 + ax.h + 16, lab,
                         extra=f' transform="rotate(-20 {cx:.1f} {ax.y0 + ax.h + 16:.1f})"'
                         if len(str(lab)) * 6 > bw * 1.4 else ""))
    out.append(f'<line x1="{ax.x0:.1f}" y1="{zero:.1f}" x2="{ax.x0 + ax.w:.1f}" y2="{zero:.1f}" '
               'stroke="#444"/>')
    out.append("</svg>")
    return "".join(out)


def histogram(values: Sequence[Any], *, title: str, xlabel: str = "",
              marks: dict[str, Any] | None = None, band: tuple[Any, Any] | None = None) -> str:
    """Histogram of ``values`` with a rug of every value below it (each with a tooltip;
    left out above ``RUG_MAX`` values to keep the page small).

    ``marks`` draws labelled vertical lines (e.g. mean, threshold); ``band`` shades an
    interval (e.g. the confidence interval of the mean).
    """
    vs = [(i, v) for i, v in enumerate(num(x) for x in values) if v is not None]
    marks = {k: num(v) for k, v in (marks or {}).items()}
    lo, hi = span([v for _, v in vs] + [v for v in marks.values() if v is not None])
    nb = max(5, min(30, math.ceil(math.sqrt(max(len(vs), 1)))))
    counts = [0] * nb
    for _, v in vs:
        counts[min(nb - 1, int((v - lo) / (hi - lo) * nb))] += 1
    width, height = 400.0, 250.0
    ax = _Axes((50, 26, width - 70, height - 96), (lo, hi), (0, max(counts) * 1.1 or 1))
    out = [_open(width, height, title, "histogram"), _heading(width, title)]
    b = band and (num(band[0]), num(band[1]))
    if b and b[0] is not None and b[1] is not None:
        out.append(f'<rect x="{ax.x(b[0]):.1f}" y="{ax.y0:.1f}" '
                   f'width="{max(ax.x(b[1]) - ax.x(b[0]), 1):.1f}" height="{ax.h:.1f}" '
                   f'fill="#3b528b" fill-opacity="0.15"><title>interval [{fmt(b[0])}, '
                   f"{fmt(b[1])}]</title></rect>")
    bw = (hi - lo) / nb
    for k, c in enumerate(counts):
        if c:
            x0, x1 = ax.x(lo + k * bw), ax.x(lo + (k + 1) * bw)
            out.append(f'<rect class="bin" x="{x0:.1f}" y="{ax.y(c):.1f}" '
                       f'width="{max(x1 - x0 - 1, 0.5):.1f}" height="{ax.y(0) - ax.y(c):.1f}" '
                       f'fill="#5ec962" stroke="#3a8a3f" stroke-width="0.5"><title>'
                       f"[{fmt(lo + k * bw)}, {fmt(lo + (k + 1) * bw)}): {c}</title></rect>")
    out.append(ax.frame(xlabel, "prompts"))
    rug = ax.y0 + ax.h + 36
    for i, v in vs if len(vs) <= RUG_MAX else ():
        out.append(f'<line class="rug" x1="{ax.x(v):.1f}" y1="{rug:.1f}" x2="{ax.x(v):.1f}" '
                   f'y2="{rug + 10:.1f}" stroke="#333" stroke-opacity="0.5">'
                   f"<title>prompt {i}: {fmt(v)}</title></line>")
    styles = {"mean": ("#3b528b", ""), "threshold": ("#c62828", ' stroke-dasharray="5 3"')}
    legend_x = ax.x0
    for name, v in marks.items():
        if v is None:
            continue
        colour, dash = styles.get(name, ("#444", ' stroke-dasharray="2 2"'))
        out.append(f'<line x1="{ax.x(v):.1f}" y1="{ax.y0:.1f}" x2="{ax.x(v):.1f}" '
                   f'y2="{ax.y0 + ax.h:.1f}" stroke="{colour}" stroke-width="2"{dash}>'
                   f"<title>{_e(name)}: {fmt(v)}</title></line>")
        out.append(f'<line x1="{legend_x:.1f}" y1="{height - 8:.1f}" x2="{legend_x + 16:.1f}" '
                   f'y2="{height - 8:.1f}" stroke="{colour}" stroke-width="2"{dash}/>')
        out.append(_text(legend_x + 20, height - 4, f"{name} {fmt(v)}", "start"))
        legend_x += 30 + 7 * len(f"{name} {fmt(v)}")
    if not vs:
        out.append(_text(width / 2, height / 2, "no per-prompt values"))
    out.append("</svg>")
    return "".join(out)


def forest(rows: Sequence[dict[str, Any]], *, threshold: Any, op: str, title: str = "",
           width: float = 400.0, mini: bool = False) -> str:
    """Intervals against the threshold: one line per row (``label, value, lo, hi, colour``).

    The side of the threshold where the claim holds is shaded green. ``mini`` draws a
    one-row, axis-free version for a table cell.
    """
    thr = num(threshold)
    vals = [thr] + [r.get(k) for r in rows for k in ("value", "lo", "hi")]
    lo, hi = span(vals, pad=0.12)
    row_h = 14.0 if mini else 22.0
    longest = max((len(str(r.get("label", ""))) for r in rows), default=0)
    left = 4.0 if mini else min(240.0, 14.0 + 6.5 * longest)
    top = 2.0 if mini else (24.0 if title else 8.0)
    height = top + row_h * len(rows) + (2 if mini else 26)
    ax = _Axes((left, top, width - left - (4 if mini else 16), row_h * len(rows)),
               (lo, hi), (0, 1))
    out = [_open(width, height, title or "interval against threshold",
                 "forest mini" if mini else "forest")]
    if title:
        out.append(_heading(width, title))
    if thr is not None:
        a, b = (ax.x(thr), ax.x0 + ax.w) if op == ">=" else (ax.x0, ax.x(thr))
        out.append(f'<rect x="{a:.1f}" y="{ax.y0:.1f}" width="{max(b - a, 0):.1f}" '
                   f'height="{ax.h:.1f}" fill="#1a7f37" fill-opacity="0.08"/>')
    if not mini:
        out.append(ax.frame(yticks=False))
    for k, r in enumerate(rows):
        cy = top + row_h * (k + 0.5)
        colour = r.get("colour", "#333")
        v, a, b = num(r.get("value")), num(r.get("lo")), num(r.get("hi"))
        if not mini:
            out.append(_text(left - 6, cy + 4, r.get("label", ""), "end"))
        tip = f"{r.get('label', '')}: {fmt(v)} [{fmt(a)}, {fmt(b)}]"
        out.append(f'<g class="interval"><title>{_e(tip)}</title>')
        if a is not None and b is not None:
            out.append(f'<line x1="{ax.x(a):.1f}" y1="{cy:.1f}" x2="{ax.x(b):.1f}" y2="{cy:.1f}" '
                       f'stroke="{colour}" stroke-width="2"/>')
            for e in (a, b):
                out.append(f'<line x1="{ax.x(e):.1f}" y1="{cy - 4:.1f}" x2="{ax.x(e):.1f}" '
                           f'y2="{cy + 4:.1f}" stroke="{colour}" stroke-width="2"/>')
        if v is not None:
            out.append(f'<circle cx="{ax.x(v):.1f}" cy="{cy:.1f}" r="{3.5 if mini else 4.5}" '
                       f'fill="{colour}"/>')
        else:
            out.append(_text(ax.x0 + ax.w / 2, cy + 4, "not measurable", extra=' fill="#888"'))
        out.append("</g>")
    if thr is not None:
        out.append(f'<line class="threshold" x1="{ax.x(thr):.1f}" y1="{ax.y0 - 2:.1f}" '
                   f'x2="{ax.x(thr):.1f}" y2="{ax.y0 + ax.h + 2:.1f}" stroke="#c62828" '
                   f'stroke-width="1.5" stroke-dasharray="4 2"><title>threshold {_e(op)} '
                   f"{fmt(thr)}</title></line>")
    out.append("</svg>")
    return "".join(out)
