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
_state: dict[str, Any] = {"nodeid": "", "drift_check": None, "private": None}


def set_current_test(nodeid: str) -> None:
    _state["nodeid"] = nodeid


def set_drift_check(check: Callable[[dict[str, Any]], str | None] | None) -> None:
    """``check(record)`` returns a drift message when the record moved from its baseline."""
    _state["drift_check"] = check


def record(entry: dict[str, Any]) -> str | None:
    """Keep ``entry`` (stamped with the running test); return a drift message, if any."""
    entry.setdefault("nodeid", _state["nodeid"])
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
