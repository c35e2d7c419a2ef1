"""How claim records are matched across runs (baselines, and reports kept in one directory)."""
from __future__ import annotations

from typing import Any


def record_key(record: dict[str, Any]) -> str:
    """The key a claim record is matched by, independent of the directory pytest ran from:
    ``file name::test::claim`` (``#k`` added for a repeated claim in one test)."""
    nodeid = str(record.get("nodeid", ""))
    file, sep, rest = nodeid.partition("::")
    file = file.replace("\\", "/").rsplit("/", 1)[-1]
    k = record.get("occurrence", 1)
    return f"{file}{sep}{rest}::{record['claim']}" + (f"#{k}" if k and k > 1 else "")
