"""The plugin's command-line options checked up front, before any test runs and without torch:
a bad device, dtype, autocast, device map, memory budget, executor, tolerance or output path is
a usage error naming the fix, never a traceback found at the end of a run (when its results
would be lost)."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest

PREVIOUS_EXECUTOR = pytest.StashKey[str]()


def check_output_paths(config: pytest.Config) -> None:
    """Refuse, before anything runs, a report or baseline path that cannot be written (so no
    run's results are lost to a path found bad at the end), and a report directory holding an
    ``index.html`` that circuitcheck did not write."""
    def writable_dir(d: Path, what: str) -> None:
        if d.exists() and not d.is_dir():
            raise pytest.UsageError(f"{what}: {str(d)!r} exists and is not a directory")
        probe = d
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise pytest.UsageError(f"{what}: {str(probe)!r} is a file, so {str(d)!r} cannot "
                                    "be made a directory")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise pytest.UsageError(f"{what}: {str(probe)!r} is not writable")

    report = config.getoption("--cc-report")
    if report:
        d = Path(report)
        writable_dir(d, "--cc-report")
        page = d / "index.html"
        if page.is_file():
            try:
                head = page.read_text(encoding="utf-8", errors="replace")[:2000]
            except OSError:
                head = ""
            if "<title>circuitcheck report</title>" not in head:
                raise pytest.UsageError(
                    f"--cc-report: {str(page)!r} exists and is not a circuitcheck report; "
                    "refusing to overwrite it - choose an empty or new directory")
    for option in ("--cc-save-baseline",):
        value = config.getoption(option)
        if value:
            f = Path(value)
            if f.is_dir():
                raise pytest.UsageError(f"{option}: {str(f)!r} is a directory; give a file "
                                        "name such as baseline.json")
            writable_dir(f.parent, option)


_DTYPES = ("float32", "fp32", "float16", "fp16", "bfloat16", "bf16", "float64")


def check_model_options(config: pytest.Config) -> None:
    """``--cc-device`` / ``--cc-device-map`` / ``--cc-max-memory`` / ``--cc-dtype`` /
    ``--cc-autocast`` / ``--cc-executor`` / ``--cc-tolerance`` checked up front (without
    torch); ``--cc-executor`` becomes what ``executor=None`` means (on an xdist worker with a
    bare ``ray``: the controller's one cluster, ``circuitcheck._raycluster``)."""

    device = str(config.getoption("--cc-device"))
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise pytest.UsageError(f"--cc-device {device!r} is not a device; use auto, cpu, "
                                "cuda, cuda:N or mps")
    from ._devicemap import parse_device_map

    try:
        parse_device_map(config.getoption("--cc-device-map"))
    except ValueError as exc:
        raise pytest.UsageError(f"--cc-device-map: {exc}") from None
    if config.getoption("--cc-device-map") and device != "auto":
        raise pytest.UsageError("--cc-device-map places every module itself; leave --cc-device "
                                f"at auto (got {device!r})")
    check_max_memory(config)
    dtype = str(config.getoption("--cc-dtype"))
    if dtype.removeprefix("torch.") not in _DTYPES:
        raise pytest.UsageError(f"--cc-dtype {dtype!r} is not supported; use one of "
                                "float32, bfloat16, float16 (or float64)")
    check_autocast(config)
    from . import _raycluster, executors
    from .errors import CircuitCheckError

    try:  # torch- and Ray-free: only whether the name is one and Ray is installed
        config.stash[PREVIOUS_EXECUTOR] = executors.default()
        executors.set_default(_raycluster.executor_spec(config))
    except CircuitCheckError as exc:
        raise pytest.UsageError(str(exc)) from None
    tol = config.getoption("--cc-tolerance")
    if tol is not None and not (math.isfinite(tol) and tol >= 0):
        raise pytest.UsageError(f"--cc-tolerance must be a finite number >= 0, got {tol}: "
                                "with nan or inf any drift would pass")


def check_max_memory(config: pytest.Config) -> None:
    """``--cc-max-memory``: a JSON mapping device -> size, only with ``--cc-device-map``."""
    from ._devicemap import parse_max_memory

    value = config.getoption("--cc-max-memory")
    try:
        parse_max_memory(value)
    except ValueError as exc:
        raise pytest.UsageError(f"--cc-max-memory: {exc}") from None
    if value and not config.getoption("--cc-device-map"):
        raise pytest.UsageError("--cc-max-memory only applies with a device map: pass "
                                "--cc-device-map too (e.g. --cc-device-map auto)")


def check_autocast(config: pytest.Config) -> None:
    """``--cc-autocast`` (bfloat16 / float16 over float32 weights) and its tolerance (which
    also applies to a claim file's ``autocast:``)."""
    from ._autocast import parse_autocast, parse_tolerance

    for option, parse in (("--cc-autocast", parse_autocast),
                          ("--cc-autocast-tolerance", parse_tolerance)):
        try:
            parse(config.getoption(option))
        except ValueError as exc:
            raise pytest.UsageError(f"{option}: {exc}") from None
    mixed = parse_autocast(config.getoption("--cc-autocast"))
    dtype = str(config.getoption("--cc-dtype")).removeprefix("torch.")
    if mixed is not None and dtype not in ("float32", "fp32"):
        raise pytest.UsageError(f"--cc-autocast {mixed} runs float32 weights' matmuls in "
                                f"{mixed}; with --cc-dtype {dtype} the weights are not float32 "
                                "(leave --cc-dtype at float32, or drop --cc-autocast)")
