"""Checks of user-given values (confidence levels, counts, flags, thresholds), shared by the
Python API and the YAML schema so both refuse the same inputs with the same words.

Each check returns the value (as the right type) or raises ``ArgumentError`` naming the
argument, the value given and what is allowed. ``ArgumentError`` is a ``ValueError`` and a
``TypeError``, so code that caught either before still does.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

from .errors import CircuitCheckError


class ArgumentError(CircuitCheckError, ValueError, TypeError):
    """An argument of the wrong type or out of range (the name and the value in the message)."""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def real(value: Any, what: str) -> float:
    """A finite real number (not a bool, not a string)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentError(f"{what} must be a number, got {_show(value)}")
    x = float(value)
    if not math.isfinite(x):
        raise ArgumentError(f"{what} must be a finite number, got {_show(value)}")
    return x


def open_unit(value: Any, what: str) -> float:
    """A number strictly between 0 and 1 (a confidence level, alpha, a keep probability)."""
    x = real(value, what)
    if not 0 < x < 1:
        raise ArgumentError(f"{what} must be strictly between 0 and 1, got {_show(value)}")
    return x


def positive(value: Any, what: str) -> float:
    x = real(value, what)
    if x <= 0:
        raise ArgumentError(f"{what} must be positive, got {_show(value)}")
    return x


def count(value: Any, what: str, minimum: int = 1) -> int:
    """A whole number >= ``minimum`` (not a bool, a float or a string)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentError(f"{what} must be a whole number >= {minimum}, got {_show(value)}")
    n = int(value)
    if n < minimum:
        raise ArgumentError(f"{what} must be a whole number >= {minimum}, got {_show(value)}")
    return n


def flag(value: Any, what: str) -> bool:
    """A real ``True`` / ``False`` (the text "false" is not false)."""
    if not isinstance(value, bool):
        raise ArgumentError(f"{what} must be true or false, got {_show(value)}")
    return value


def seed(value: Any, what: str = "seed") -> int | None:
    return None if value is None else count(value, what, minimum=0)


def text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ArgumentError(f"{what} must be a name (text), got {_show(value)}")
    return value


def executor(value: Any, what: str) -> str:
    """An executor name: local, ray or ray:ADDRESS (and Ray installed for the latter two)."""
    from .executors import check_spec

    try:
        return check_spec(value, what)
    except CircuitCheckError as exc:
        raise ArgumentError(str(exc)) from None


def names(value: Any, what: str) -> Any:
    """A name, or a non-empty list of names (the sweep's ablation / metric lists)."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ArgumentError(f"{what} must name at least one, got an empty list")
        for v in value:
            text(v, f"each of {what}")
        return value
    return text(value, what)


def percentile(value: Any, what: str = "percentile") -> float:
    x = real(value, what)
    if not 0 <= x < 100:
        raise ArgumentError(f"{what} must be in [0, 100), got {_show(value)}")
    return x


#: The check each YAML ``expect`` key's value gets (by key name; None values are left alone
#: for keys whose default is None).
KEY_CHECKS = {
    "at_least": real, "at_most": real, "retained_at_least": real, "ablated_at_most": real,
    "over_random_by": real, "epsilon": positive,
    "confidence": open_unit, "alpha": open_unit, "keep_prob": open_unit,
    "exclusion_keep_prob": open_unit,
    "allow_inconclusive": flag,
    "trials": count, "min_trials": count, "n_random": count, "top": count, "n": count,
    "seq_len": count, "n_repeats": count,
    "percentile": percentile,
    "reference": text, "normalize": text, "by": text, "component": text, "mode": text,
    "executor": executor,
}
