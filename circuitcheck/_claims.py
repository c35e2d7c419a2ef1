"""Claims checked in this process, so the pytest plugin can attach them to test reports.

The engine appends a record per ``assert_*`` call; the plugin takes them after each test.
Nothing here imports pytest.
"""
from __future__ import annotations

from typing import Any

RECORDS: list[dict[str, Any]] = []


def record(entry: dict[str, Any]) -> None:
    RECORDS.append(entry)


def take() -> list[dict[str, Any]]:
    """Return and forget the records made since the last call."""
    out = list(RECORDS)
    RECORDS.clear()
    return out
