"""The result protocol every result object follows (documented in ``docs/claim_kinds.md``).

- ``.value`` — the number of a scalar result; ``.values`` — the array of a per-head or
  per-cell result (old names ``HeadScores.scores``, ``HeadEffects.effect`` stay as aliases);
- ``.ci`` = ``(.ci_low, .ci_high)`` — its interval (NaN where the result has none);
- ``.table()`` — a pandas DataFrame; ``.to_dict()`` — a JSON-ready dict; ``.summary()`` — a
  line in words;
- ``bool(result)`` raises, so ``assert cc.patch_heads(...)`` cannot pass silently.

``ResultProtocol`` adds ``ci`` and the refusing ``__bool__``; it defines no name a dataclass
field could shadow (``value``, ``values``, ``ci_low``, ``ci_high`` are each class's own).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


class ResultProtocol:
    """Mixin: ``ci`` from ``ci_low``/``ci_high``, and no truth value."""

    __slots__ = ()

    @property
    def ci(self) -> tuple[Any, Any]:
        return (self.ci_low, self.ci_high)  # type: ignore[attr-defined]

    def __bool__(self) -> bool:
        raise TypeError(f"a {type(self).__name__} has no truth value; compare its .value / "
                        ".values with a threshold, or use the cc.assert_* helpers")


class BoundsFromCi:
    """Mixin for results whose interval is ``ci`` (a field or property): ``ci_low``/``ci_high``
    read from it."""

    __slots__ = ()

    @property
    def ci_low(self) -> Any:
        return self.ci[0]  # type: ignore[attr-defined]

    @property
    def ci_high(self) -> Any:
        return self.ci[1]  # type: ignore[attr-defined]


def nan_like(values: Any) -> Any:
    """NaN of ``values``' shape (a float for a scalar): the interval of a result without one."""
    if np.ndim(values) == 0:
        return float("nan")
    return np.full(np.shape(values), np.nan)


def jsonable(x: Any) -> Any:
    """Plain lists, floats (NaN/inf -> None), strings and dicts, for ``to_dict``."""
    if isinstance(x, dict):
        return {str(k) if not isinstance(k, str) else k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def head_table(values: np.ndarray, ci_low: np.ndarray, ci_high: np.ndarray,
               name: str = "value", **extra: np.ndarray) -> Any:
    """One row per (layer, head) of [L, H] arrays."""
    import pandas as pd

    L, H = values.shape
    data = {"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
            name: values.ravel(), "ci_low": np.asarray(ci_low).ravel(),
            "ci_high": np.asarray(ci_high).ravel()}
    data.update({k: np.asarray(v).ravel() for k, v in extra.items()})
    return pd.DataFrame(data)
