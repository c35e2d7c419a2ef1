"""Write the claims of one run as JSON and as one self-contained HTML page (no JavaScript)."""
from __future__ import annotations

import html
import json
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

#: Bumped whenever a key of results.json changes meaning.
SCHEMA_VERSION = 1


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("circuitcheck", "torch", "transformer-lens", "transformers", "pytest"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_report(directory: str | Path, results: list[dict[str, Any]], *,
                 started: float | None = None) -> dict[str, Path]:
    """Write ``results.json`` and ``index.html`` to ``directory``; return their paths.

    ``results``: the claim records made by the ``assert_*`` helpers (see ``_claims``), each
    with ``claim``, ``kind``, ``verdict``, ``op``, ``threshold``, ``measurement`` and ``nodeid``.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for r in results:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    doc = {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": None if started is None else round(time.time() - started, 2),
        "python": platform.python_version(),
        "versions": _versions(),
        "summary": counts,
        "claims": results,
    }
    json_path = out / "results.json"
    json_path.write_text(json.dumps(doc, indent=1))
    html_path = out / "index.html"
    html_path.write_text(_html(doc))
    return {"json": json_path, "html": html_path}


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _html(doc: dict[str, Any]) -> str:
    e = html.escape
    rows = []
    for r in doc["claims"]:
        m = r["measurement"]
        lo, hi = m["ci"]
        rows.append(
            f"<tr class='{e(r['verdict'])}'><td>{e(r['claim'])}</td><td>{e(m['model'])}</td>"
            f"<td>{e(m['task'])}</td><td>{e(r['kind'])} ({e(m['metric'])})</td>"
            f"<td>{_fmt(m['value'])}</td><td>[{_fmt(lo)}, {_fmt(hi)}]</td>"
            f"<td>{e(r['op'])} {r['threshold']:g}</td><td>{e(r['verdict'])}</td>"
            f"<td><code>{e(r.get('nodeid', ''))}</code></td></tr>")
    summary = ", ".join(f"{n} {e(v)}" for v, n in sorted(doc["summary"].items())) or "no claims"
    versions = ", ".join(f"{e(k)} {e(v)}" for k, v in doc["versions"].items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>circuitcheck report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .3em .6em; }}
tr.held td:nth-child(8) {{ color: #176317; font-weight: bold; }}
tr.failed td:nth-child(8), tr.unmeasurable td:nth-child(8) {{ color: #a11; font-weight: bold; }}
tr.inconclusive td:nth-child(8) {{ color: #a60; font-weight: bold; }}
</style></head><body>
<h1>circuitcheck report</h1>
<p><strong>Claims:</strong> {summary}</p>
<table><thead><tr><th>claim</th><th>model</th><th>task</th><th>measurement</th><th>value</th>
<th>CI</th><th>threshold</th><th>verdict</th><th>test</th></tr></thead>
<tbody>{''.join(rows)}</tbody></table>
<p><small>{e(doc['created'])} · {doc['duration_s']} s · Python {e(doc['python'])} · {versions}
· schema v{doc['schema_version']}</small></p>
</body></html>
"""
