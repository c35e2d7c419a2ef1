"""Claims checked in this process, so the pytest plugin can attach them to test reports.

The ``assert_*`` helpers append a record per claim; the plugin takes them after each test,
tells us which test is running, and may install a baseline check (``--cc-baseline``) that
turns a drifted value into a failure. Nothing here imports pytest.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

RECORDS: list[dict[str, Any]] = []
_state: dict[str, Any] = {"nodeid": "", "drift_check": None}


def set_current_test(nodeid: str) -> None:
    _state["nodeid"] = nodeid


def set_drift_check(check: Callable[[dict[str, Any]], str | None] | None) -> None:
    """``check(record)`` returns a drift message when the record moved from its baseline."""
    _state["drift_check"] = check


def record(entry: dict[str, Any]) -> str | None:
    """Keep ``entry`` (stamped with the running test); return a drift message, if any."""
    entry.setdefault("nodeid", _state["nodeid"])
    RECORDS.append(entry)
    check = _state["drift_check"]
    return check(entry) if check is not None else None


def take() -> list[dict[str, Any]]:
    """Return and forget the records made since the last call."""
    out = list(RECORDS)
    RECORDS.clear()
    return out
