"""Compare a run's claims with a saved baseline run, so a measured value that moves is noticed.

A baseline is a JSON file of claim records (``save_baseline``); a ``results.json`` written by
``write_report`` works as one too. Records are matched by ``record_key``: the test's node id
with its file's directories dropped (``circuits/x.yaml::c`` and ``x.yaml::c``, what pytest
writes when run from ``circuits/``, are the same claim) plus the claim name, and ``#k`` for the
k-th record of the same claim in one test (so repeated names never cross-compare). A baseline
also stores the run's provenance (model, dtype, device kind, library versions, task specs);
``provenance_changes`` says what differs.

Default tolerance (used when none is given)::

    tolerance = max(floor, sqrt(h_old**2 + h_new**2))      floor = 0.05

where ``h`` is the half-width of a run's confidence interval. ``sqrt(h_old**2 + h_new**2)`` is
the half-width of the interval of the *difference* of two independent estimates at the same
confidence, so a change larger than it is one the sampling noise of the two runs does not
explain. Runs on the same prompts and seed are positively correlated, which makes this bound
conservative (it flags less, never more) - the right side for a check that must not flake.
The floor keeps reruns with very narrow intervals from flagging changes too small to matter
(5 points of a faithfulness ratio). Give ``tolerance=`` for a fixed absolute bound instead,
e.g. for raw logit differences, whose scale differs from a ratio's.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CircuitCheckError
from ._keys import record_key

BASELINE_SCHEMA_VERSION = 1
DEFAULT_FLOOR = 0.05
#: Measurement keys left out of a saved baseline: large, and not needed to compare values.
_BULKY = ("per_prompt", "heatmaps", "points", "bars")


class BaselineError(CircuitCheckError, ValueError):
    """A baseline file that cannot be read (path and offending record in the message)."""


def provenance_changes(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[str]:
    """``key: old -> new`` for every provenance entry that differs between two runs."""
    old, new = old or {}, new or {}
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            out.append(f"{key}: {old.get(key, 'not recorded')!r} -> {new.get(key, 'not recorded')!r}")
    return out


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _half_width(ci: Any) -> float:
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        return 0.0
    lo, hi = _num(ci[0]), _num(ci[1])
    return 0.0 if lo is None or hi is None else abs(hi - lo) / 2


def default_tolerance(old_ci: Any, new_ci: Any, floor: float = DEFAULT_FLOOR) -> float:
    """``max(floor, sqrt(h_old² + h_new²))`` from the two intervals' half-widths."""
    return max(floor, math.hypot(_half_width(old_ci), _half_width(new_ci)))


@dataclass(frozen=True)
class Drift:
    """A claim whose measured value moved from the baseline by more than ``tolerance``.

    ``old`` / ``new`` are None when that run could not measure the claim; ``note`` then
    (or when the two runs measured differently) says what changed.
    """

    claim: str
    kind: str
    old: float | None
    new: float | None
    tolerance: float
    source: str | None = None
    note: str = ""

    @property
    def delta(self) -> float | None:
        """``new - old``, or None when either is missing."""
        return None if self.old is None or self.new is None else self.new - self.old

    def message(self) -> str:
        """One line, e.g. ``claim 'x' DRIFTED: faithfulness 0.62 -> 0.41 (|Δ| 0.21 > ...)``."""
        def f(x: float | None) -> str:
            return "not measurable" if x is None else f"{x:.2f}"

        why = self.note or (f"|Δ| {abs(self.delta or 0.0):.2f} > tolerance "
                            f"{self.tolerance:.2f}")
        where = f" against baseline {self.source}" if self.source else ""
        return (f"claim {self.claim!r} DRIFTED: {self.kind} {f(self.old)} -> {f(self.new)} "
                f"({why}){where}")


def compare(record: dict[str, Any], baseline_record: dict[str, Any],
            tolerance: float | None = None, *, floor: float = DEFAULT_FLOOR,
            source: str | Path | None = None) -> Drift | None:
    """The ``Drift`` of ``record`` from ``baseline_record``, or None when it stayed within bounds.

    ``tolerance`` is an absolute bound on ``|new - old|``; None uses ``default_tolerance``.
    A claim that became (or stopped being) unmeasurable, or that is now measured with another
    kind / metric / ablation, counts as drifted whatever the values.
    """
    m, b = record["measurement"], baseline_record["measurement"]
    new, old = _num(m.get("value")), _num(b.get("value"))
    tol = (float(tolerance) if tolerance is not None
           else default_tolerance(b.get("ci"), m.get("ci"), floor))

    def make(note: str = "") -> Drift:
        return Drift(record["claim"], str(m.get("kind") or record.get("kind", "")), old, new,
                     tol, None if source is None else str(source), note)

    changed = [f"{k} {b.get(k)!r} -> {m.get(k)!r}" for k in ("kind", "metric", "ablation")
               if b.get(k) != m.get(k)]
    if b.get("task_hash") and m.get("task_hash") and b["task_hash"] != m["task_hash"]:
        changed.append("the task spec changed")
    if changed:
        return make("measured differently: " + ", ".join(changed))
    if new is None and old is None:
        return None
    if new is None:
        return make(f"now {m.get('problem') or 'not measurable'}")
    if old is None:
        return make("was not measurable in the baseline")
    return make() if abs(new - old) > tol else None


def annotate(results: list[dict[str, Any]], baseline: dict[str, dict[str, Any]],
             tolerance: float | None = None, *, floor: float = DEFAULT_FLOOR,
             source: str | Path | None = None) -> list[Drift]:
    """Attach ``record["baseline"] = {value, ci, verdict, tolerance, drift}`` to every record
    that has a baseline entry (in place, for the report); return the drifts found."""
    drifts = []
    for r in results:
        old = baseline.get(record_key(r))
        if old is None:
            continue
        om = old["measurement"]
        tol = (float(tolerance) if tolerance is not None
               else default_tolerance(om.get("ci"), r["measurement"].get("ci"), floor))
        d = compare(r, old, tol, source=source)
        r["baseline"] = {"value": om.get("value"), "ci": om.get("ci"),
                         "verdict": old.get("verdict"), "tolerance": tol, "drift": d is not None}
        if d is not None:
            r["baseline"]["message"] = d.message()
            drifts.append(d)
    return drifts


def _slim(record: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in record.items() if k != "baseline"}
    out["measurement"] = {k: v for k, v in record["measurement"].items() if k not in _BULKY}
    return out


def save_baseline(path: str | Path, results: list[dict[str, Any]], *,
                  partial: list[str] | None = None,
                  provenance: dict[str, Any] | None = None) -> Path:
    """Write ``results`` as a baseline (sorted by key, bulky per-prompt data left out).

    ``partial``: why the run did not check every claim (stored, so a later full run is not
    compared against, or replaced by, a partial one unknowingly). The file is replaced
    atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    claims = sorted((_slim(r) for r in results), key=record_key)
    doc = {"schema_version": BASELINE_SCHEMA_VERSION, "kind": "circuitcheck-baseline",
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "claims": claims}
    if partial:
        doc["partial"] = "; ".join(partial)
    if provenance:
        doc["provenance"] = provenance
    from ._write import atomic_write

    return atomic_write(p, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def load_baseline(path: str | Path) -> dict[str, dict[str, Any]]:
    """Claim records of a baseline (or of a ``results.json``), keyed by ``record_key``.

    A repeated claim in one test is keyed ``#k`` by its ``occurrence``; if a key still occurs
    twice, the last record wins. The file's provenance is in ``load_provenance``.
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise BaselineError(f"baseline {str(p)!r} does not exist; write one with "
                            "save_baseline() or copy a run's results.json there") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaselineError(f"baseline {str(p)!r} is not readable JSON: {exc}") from None
    if isinstance(doc, dict):
        version = doc.get("schema_version", BASELINE_SCHEMA_VERSION)
        if isinstance(version, bool) or not isinstance(version, int) or not (
                1 <= version <= BASELINE_SCHEMA_VERSION):
            raise BaselineError(f"baseline {str(p)!r} has schema_version {version!r}; this "
                                f"circuitcheck reads up to {BASELINE_SCHEMA_VERSION}")
        doc = doc.get("claims")
    if not isinstance(doc, list):
        raise BaselineError(f"baseline {str(p)!r} must hold a list of claim records under "
                            "'claims'")
    out = {}
    for i, r in enumerate(doc):
        if not (isinstance(r, dict) and isinstance(r.get("claim"), str)
                and isinstance(r.get("measurement"), dict) and "value" in r["measurement"]):
            raise BaselineError(f"baseline {str(p)!r}: claim record #{i} needs 'claim', "
                                f"'nodeid' and 'measurement.value'; got {str(r)[:120]}")
        out[record_key(r)] = r
    return out


def load_provenance(path: str | Path) -> dict[str, Any]:
    """The provenance a baseline (or ``results.json``) recorded; ``{}`` when it has none."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(doc, dict):
        return {}
    prov = doc.get("provenance") or (doc.get("run") or {}).get("provenance")
    return prov if isinstance(prov, dict) else {}
