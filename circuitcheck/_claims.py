"""Claims checked in this process, so the pytest plugin can attach them to test reports.

The ``assert_*`` helpers append a record per claim; the plugin takes them after each test,
tells us which test is running, and may install a baseline check (``--cc-baseline``) that
turns a drifted value into a failure. Nothing here imports pytest.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

RECORDS: list[dict[str, Any]] = []
_state: dict[str, Any] = {"nodeid": "", "drift_check": None, "private": None, "seen": {},
                          "stamp": {}}


def set_current_test(nodeid: str, stamp: dict[str, Any] | None = None) -> None:
    """The running test; ``stamp`` (e.g. the claim's task-spec hash) is added to the
    measurement of every record it makes, before the baseline check sees it."""
    _state["nodeid"] = nodeid
    _state["seen"] = {}
    _state["stamp"] = dict(stamp or {})


def add_stamp(**values: Any) -> None:
    """Add to the running test's stamp (e.g. ``autocast=`` the model's note, once it loads)."""
    _state["stamp"].update(values)


def set_drift_check(check: Callable[[dict[str, Any]], str | None] | None) -> None:
    """``check(record)`` returns a drift message when the record moved from its baseline."""
    _state["drift_check"] = check


def record(entry: dict[str, Any]) -> str | None:
    """Keep ``entry`` (stamped with the running test); return a drift message, if any."""
    entry.setdefault("nodeid", _state["nodeid"])
    k = _state["seen"][entry["claim"]] = _state["seen"].get(entry["claim"], 0) + 1
    if k > 1:  # the same claim name asserted again in one test: matched as #k, not as #1
        entry["occurrence"] = k
    if isinstance(entry.get("measurement"), dict):
        for key, value in _state["stamp"].items():
            entry["measurement"].setdefault(key, value)
    if _state["private"] is not None:
        _state["private"].append(entry)
        return None
    RECORDS.append(entry)
    check = _state["drift_check"]
    return check(entry) if check is not None else None


def take() -> list[dict[str, Any]]:
    """Return and forget the records made since the last call."""
    out = list(RECORDS)
    RECORDS.clear()
    return out


@contextlib.contextmanager
def private() -> Iterator[list[dict[str, Any]]]:
    """Collect the claims made inside into the yielded list instead of the run's records.

    For checks that make a claim fail on purpose (``with _claims.private(),
    pytest.raises(AssertionError): ...``): their records stay out of the session summary and
    the report, and no baseline drift check applies to them.
    """
    outer = _state["private"]
    collected: list[dict[str, Any]] = []
    _state["private"] = collected
    try:
        yield collected
    finally:
        _state["private"] = outer


ERROR = "error"


def error_record(claim: str, message: str, *, kind: str = "", nodeid: str | None = None,
                 model: str = "") -> dict[str, Any]:
    """The record of a claim that could not be checked (a file that cannot be read, a crash):
    verdict ``error``, no value, the reason as its message - so the report still lists it."""
    message = message if len(message) <= 2000 else message[:2000] + " ... (cut)"
    entry: dict[str, Any] = {
        "claim": claim, "kind": kind or ERROR, "verdict": ERROR, "op": None, "threshold": None,
        "message": message,
        "measurement": {"kind": kind or ERROR, "value": None, "ci": [None, None],
                        "problem": message, "model": model, "per_prompt": []}}
    if nodeid is not None:
        entry["nodeid"] = nodeid
    return entry


def record_error(claim: str, message: str, *, kind: str = "", model: str = "") -> None:
    """Keep an ``error_record`` for the running test (no drift check: nothing was measured)."""
    entry = error_record(claim, message, kind=kind, model=model)
    entry.setdefault("nodeid", _state["nodeid"])
    if _state["private"] is not None:  # a claim made to fail on purpose (``private``)
        _state["private"].append(entry)
        return
    RECORDS.append(entry)
