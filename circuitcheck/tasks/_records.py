"""Tasks from a user's own data: records, a DataFrame, a CSV or a JSONL file.

Columns (or keys): ``prompt`` and ``answer`` (required), ``wrong_answer``, ``corrupted``,
``group``, and one ``pos:NAME`` column per named position (token index).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import TaskError, did_you_mean
from ._task import Task

COLUMNS = ("prompt", "answer", "wrong_answer", "corrupted", "group")


def from_records(records: Iterable[Mapping[str, Any]], *, name: str = "records") -> Task:
    """A task from dicts with the columns above."""
    rows = list(records)
    if not rows:
        raise TaskError("no records: give at least one {'prompt': ..., 'answer': ...}")
    keys = set().union(*(r.keys() for r in rows))
    for k in keys:
        if k not in COLUMNS and not str(k).startswith("pos:"):
            raise TaskError(f"unknown column {k!r}{did_you_mean(str(k), COLUMNS)}; columns are "
                            f"{list(COLUMNS)} and 'pos:NAME' for positions")
    for col in ("prompt", "answer"):
        missing = [i for i, r in enumerate(rows) if r.get(col) is None]
        if missing:
            raise TaskError(f"records {missing[:5]} have no {col!r}")

    def column(col: str) -> list | None:
        if col not in keys:
            return None
        values = [r.get(col) for r in rows]
        if any(v is None for v in values):
            raise TaskError(f"column {col!r} is missing in some records; give it in all or none")
        return values

    positions = {k[4:]: [int(v) for v in column(k)] for k in sorted(keys) if k.startswith("pos:")}
    return Task(prompts=column("prompt"), answers=column("answer"),
                wrong_answers=column("wrong_answer"), corrupted=column("corrupted"),
                groups=column("group"), positions=positions, name=name)


def from_dataframe(df: Any, *, name: str = "dataframe") -> Task:
    """A task from a pandas DataFrame with the columns above (NaN counts as missing)."""
    records = [{k: v for k, v in r.items() if not _isnan(v)} for r in df.to_dict("records")]
    return from_records(records, name=name)


def from_csv(path: str | Path, **read_csv: Any) -> Task:
    """A task from a CSV file (read with pandas)."""
    import pandas as pd

    return from_dataframe(pd.read_csv(path, **read_csv), name=Path(path).stem)


def from_jsonl(path: str | Path) -> Task:
    """A task from a JSON-lines file, one record per line."""
    rows = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise TaskError(f"{path}:{i}: not valid JSON ({exc.msg})") from None
    return from_records(rows, name=Path(path).stem)


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and v != v
