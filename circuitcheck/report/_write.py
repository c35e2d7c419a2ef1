"""Write the claims of one run as ``results.json`` (schema in docs/report.md) and ``index.html``."""
from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from ._html import render

#: Bumped whenever a key of results.json changes meaning (documented in docs/report.md).
SCHEMA_VERSION = 1


def atomic_write(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory and
    ``os.replace``, so a reader (or a full disk) never sees a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("circuitcheck", "torch", "transformer-lens", "transformers", "pytest"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _clean(x: Any) -> Any:
    """``x`` with NaN / infinities as None and tuples as lists, so the JSON is standard."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "tolist"):  # numpy scalars and arrays, without importing numpy
        return _clean(x.tolist())
    return x


def build_document(results: list[dict[str, Any]], *, started: float | None = None,
                   meta: dict[str, Any] | None = None,
                   skipped: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The ``results.json`` document (a plain, JSON-ready dict)."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    return _clean({
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": None if started is None else round(time.time() - started, 2),
        "python": platform.python_version(),
        "versions": _versions(),
        "summary": counts,
        "run": dict(meta or {}),
        "skipped": list(skipped or []),
        "claims": results,
    })


def write_report(directory: str | Path, results: list[dict[str, Any]], *,
                 started: float | None = None, meta: dict[str, Any] | None = None,
                 skipped: list[dict[str, str]] | None = None) -> dict[str, Path]:
    """Write ``results.json`` and ``index.html`` to ``directory``; return their paths.

    ``results``: the claim records made by the ``assert_*`` helpers (see ``_claims``), each
    with ``claim``, ``kind``, ``verdict``, ``op``, ``threshold``, ``measurement`` and ``nodeid``
    (optionally ``baseline``, see ``baseline.annotate``, and ``message``). ``meta``: run
    metadata shown at the bottom of the page (device, dtype, seed, model ids ...).
    ``skipped``: ``{"nodeid", "reason"}`` of tests skipped before measuring anything.

    A report already in ``directory`` with claims this run does not have (another run's
    files, say) is moved to ``previous/<its creation time>/`` first, so no run's claims are
    lost; the returned ``previous`` (when present) says where, and which claims it kept.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    doc = build_document(results, started=started, meta=meta, skipped=skipped)
    json_text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
    html_text = render(doc)  # both rendered before either file is replaced
    paths: dict[str, Any] = {}
    kept = _keep_previous(out, results)
    if kept:
        paths["previous"], paths["previous_claims"] = kept
    paths["json"] = atomic_write(out / "results.json", json_text)
    paths["html"] = atomic_write(out / "index.html", html_text)
    return paths


def _keep_previous(out: Path, results: list[dict[str, Any]]) -> tuple[Path, list[str]] | None:
    """Move the report in ``out`` aside when it has claims ``results`` lacks; return where
    and those claims' keys (None when this run covers all of it or there is none)."""
    from ._keys import record_key

    old_json = out / "results.json"
    try:
        old = json.loads(old_json.read_text(encoding="utf-8"))
        old_keys = [record_key(r) for r in old["claims"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # no report there, or not one of ours: nothing of a run to keep
    missing = sorted(set(old_keys) - {record_key(r) for r in results})
    if not missing:
        return None
    stamp = str(old.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    target = out / "previous" / stamp.replace(":", "")
    k = 1
    while target.exists():
        k += 1
        target = out / "previous" / f"{stamp.replace(':', '')}-{k}"
    target.mkdir(parents=True)
    for name in ("results.json", "index.html"):
        if (out / name).exists():
            os.replace(out / name, target / name)
    return target, missing
