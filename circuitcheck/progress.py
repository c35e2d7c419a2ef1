"""Progress bars for long measurements (tqdm): on a terminal, in notebooks and inside pytest
runs, never in logs.

``progress=None`` (the default of every measurement that takes it) means *auto*:

- in a notebook (ipykernel loaded): a notebook bar;
- when stderr is a terminal: a bar on stderr;
- inside a pytest run with output captured: a bar written straight to the controlling terminal
  (``/dev/tty``), so it shows on screen and stays out of the captured output and JUnit XML;
- otherwise (CI logs, pipes, no terminal): no bar.

``CIRCUITCHECK_PROGRESS=0`` turns bars off, ``=1`` forces them on stderr; ``progress=True`` /
``False`` decide for one call. Bars appear only after ``DELAY`` seconds, so quick measurements
print nothing.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

#: Seconds a measurement runs before its bar is drawn.
DELAY = 2.0

_TTY: list[Any] = []  # the opened /dev/tty, kept for the process


def _terminal() -> TextIO | None:
    if not _TTY:
        try:
            _TTY.append(open("/dev/tty", "w"))  # noqa: SIM115 - kept open for the process
        except OSError:
            _TTY.append(None)
    return _TTY[0]


def target(progress: Any = None) -> tuple[bool, TextIO | None, bool]:
    """(show, stream, notebook) for a measurement's ``progress`` argument."""
    if progress is False:
        return False, None, False
    env = os.environ.get("CIRCUITCHECK_PROGRESS", "").strip().lower()
    if progress is None and env in ("0", "false", "no", "off"):
        return False, None, False
    if "ipykernel" in sys.modules:
        return True, None, True
    if progress is True or env in ("1", "true", "yes", "on"):
        return True, sys.stderr, False
    err = sys.stderr
    if err is not None and hasattr(err, "isatty") and err.isatty():
        return True, err, False
    if "PYTEST_CURRENT_TEST" in os.environ or "_pytest.capture" in sys.modules:
        tty = _terminal()
        if tty is not None:
            return True, tty, False
    return False, None, False


@contextlib.contextmanager
def progress_bar(progress: Any, total: int, desc: str, unit: str = "run"
                 ) -> Iterator[Callable[[int], None] | None]:
    """A callable ``advance(n)`` while the measurement runs (None when no bar is shown).

    ``progress`` may also be a callable already (an outer bar): it is passed through."""
    if callable(progress):
        yield progress
        return
    show, stream, notebook = target(progress)
    if not show:
        yield None
        return
    if notebook:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc=desc, unit=unit, delay=DELAY, leave=False)
    else:
        from tqdm import tqdm
        bar = tqdm(total=total, desc=desc, unit=unit, delay=DELAY, leave=False, file=stream,
                   dynamic_ncols=True)
    try:
        yield bar.update
    finally:
        bar.close()
