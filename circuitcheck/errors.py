"""The exceptions circuitcheck raises.

Every error names the problem and the fix, with the user's own input in it::

    CircuitCheckError                 base of everything raised for bad input or setup
    ├── ModelNotFoundError            a model id / directory / zoo name that cannot be loaded
    │   └── ModelUnavailableError     a hub model that is not cached here while offline
    ├── TaskError                     prompts, answers, positions or groups that do not fit
    ├── CircuitError                  a circuit that does not fit the model or the task
    ├── ClaimFileError                a malformed YAML claim (file, line and key in the message)
    └── NotMeasurableError            the machinery did not apply an intervention (a hook that
                                      never fired, an ablation that changed nothing); measures
                                      turn it into their result's ``problem``

``CircuitCheckWarning`` (a ``UserWarning``) flags a measurement worth a second look (e.g. a
faithfulness the primary metric calls high while top-1 accuracy collapses).

A claim that is *measured* and does not hold is not an error: it is an ``AssertionError``
raised by the ``assert_*`` helpers, so pytest reports it as a failed test.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

#: A head written as ``9.9``, ``L9H9`` or ``9:9`` (shared by node and edge circuits).
_HEAD_RE = re.compile(r"^\s*(?:L?(\d+)\s*[.H:]\s*(\d+))\s*$", re.IGNORECASE)


def _short(value: Any, limit: int = 120) -> str:
    """``repr(value)``, cut to ``limit`` characters (a YAML alias can make it huge)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


class CircuitCheckError(Exception):
    """Base class: bad input or setup, never a failed claim."""


class ModelNotFoundError(CircuitCheckError):
    """A model could not be found or loaded (offline, missing weights, unknown zoo name)."""


class ModelUnavailableError(ModelNotFoundError):
    """A hub model that is neither cached nor downloadable here; tests naming it are skipped."""


class TaskError(CircuitCheckError, ValueError):
    """A task whose prompts, answers, positions or groups are inconsistent."""


class CircuitError(CircuitCheckError, ValueError):
    """A circuit that is malformed or does not fit the model / task."""


class ClaimFileError(CircuitCheckError, ValueError):
    """A declarative claim file that cannot be read."""


class NotMeasurableError(CircuitCheckError):
    """An intervention the machinery did not apply as intended (see
    ``interventions._guard``); ``str(error)`` is the reason a claim is NOT MEASURABLE."""


class CircuitCheckWarning(UserWarning):
    """A measurement that holds up numerically but deserves a second look."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' suffix when ``word`` is close to one of ``choices``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
