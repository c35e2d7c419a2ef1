"""The ``circuitcheck`` pytest plugin: options, the model fixture, claim reporting.

Registered through the ``pytest11`` entry point, so it is imported on every pytest run in the
environment: it stays thin and never imports torch until a test asks for a model.

- ``--cc-model``, ``--cc-device``, ``--cc-device-map``, ``--cc-max-memory``, ``--cc-dtype``,
  ``--cc-autocast``, ``--cc-prepend-bos``, ``--cc-seed``, ``--cc-executor ray[:ADDRESS]``
  (under xdist a bare ``ray`` is one cluster the controller starts), ``--cc-report DIR``
- ``@pytest.mark.circuitcheck_model("zoo:planted")`` names the model a test's ``cc_model``
  fixture loads (once per process; ``--cc-model`` overrides it)
- YAML claim files under a ``circuits/`` directory are collected, one item per claim
- each ``cc.assert_*`` call made in a test lands in ``report.user_properties`` (so it survives
  pytest-xdist and reaches JUnit XML), in the terminal summary and in the report files.
"""
from __future__ import annotations

import json
import time
from typing import Any

import pytest

from . import _claims, _raycluster, _settings
from ._claimpaths import named_on_command_line, stray_claim_files
from ._plugin_options import PREVIOUS_EXECUTOR, check_model_options, check_output_paths

PROPERTY = "circuitcheck"
_PREVIOUS_SEED = pytest.StashKey[int]()
_BASELINE = pytest.StashKey[dict]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("circuitcheck", "circuit claims checked as tests")
    group.addoption("--cc-model", default=None, metavar="NAME",
                    help="load this model for every cc_model fixture (hub id, local dir or "
                         "zoo:NAME), overriding circuitcheck_model markers")
    group.addoption("--cc-device", default="auto", metavar="DEVICE",
                    help="device for models: auto (cuda, then mps, then cpu), cpu, cuda, cuda:1 ...")
    group.addoption("--cc-device-map", default=None, metavar="MAP",
                    help="split each model over devices: auto, balanced, sequential or a JSON "
                         "object {module: device} (overrides YAML device_map)")
    group.addoption("--cc-max-memory", default=None, metavar="JSON",
                    help="memory budget per device for --cc-device-map, a JSON object such as "
                         "'{\"0\": \"20GiB\", \"cpu\": \"64GiB\"}' (overrides YAML max_memory)")
    group.addoption("--cc-dtype", default="float32", metavar="DTYPE",
                    help="dtype for models: float32 (default), bfloat16, float16")
    group.addoption("--cc-autocast", default=None, metavar="DTYPE",
                    help="float32 weights, forward passes under torch.autocast in bfloat16 or "
                         "float16, if a load-time probe finds it exact enough (else float32, "
                         "with a note); 'off' or a dtype overrides YAML autocast")
    group.addoption("--cc-autocast-tolerance", default=None, type=float, metavar="X",
                    help="the autocast probe's largest allowed relative logit error (default "
                         "8 units in the last place: bfloat16 0.0625, float16 0.0078), for "
                         "--cc-autocast and YAML autocast")
    group.addoption("--cc-prepend-bos", default=None, choices=("on", "off", "tokenizer"),
                    help="start token: 'tokenizer' (default: BOS only where the model's HF "
                         "tokenizer adds it), 'on' or 'off' (overrides YAML prepend_bos)")
    group.addoption("--cc-seed", default=0, type=int, metavar="SEED",
                    help="seed for bootstraps and sampling (default 0)")
    group.addoption("--cc-executor", default=None, metavar="EXECUTOR",
                    help="where Monte-Carlo trials and sweeps run: local (default), ray (a "
                         "local Ray cluster, one for all xdist workers, or RAY_ADDRESS) or "
                         "ray:ADDRESS; needs pip install 'circuitcheck[ray]'")
    group.addoption("--cc-report", default=None, metavar="DIR",
                    help="write results.json and index.html about the claims to DIR")
    group.addoption("--cc-baseline", default=None, metavar="JSON",
                    help="compare every claim with this baseline (or an earlier results.json) "
                         "and fail a claim whose value drifted beyond its tolerance")
    group.addoption("--cc-tolerance", default=None, type=float, metavar="X",
                    help="absolute drift tolerance for --cc-baseline (default: "
                         "max(0.05, the combined half-width of both intervals))")
    group.addoption("--cc-save-baseline", default=None, metavar="JSON",
                    help="write this run's claims as a baseline file")
    group.addoption("--cc-replace-with-partial", action="store_true", default=False,
                    help="let a partial run (-k/-m selection, node ids, -x, an interrupted run, "
                         "collection errors) replace an existing full report or baseline")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "circuitcheck: a declarative claim from a circuits/ file")
    check_model_options(config)
    if not hasattr(config, "workerinput"):
        check_output_paths(config)
    config.addinivalue_line(
        "markers", "circuitcheck_model(name, revision=None, prepend_bos=None): the model the cc_model fixture "
        "loads for this test (hub id, local directory, or zoo:NAME)")
    config.stash[_PREVIOUS_SEED] = _settings.seed()
    _settings.set_seed(config.getoption("--cc-seed"))
    baseline_path = config.getoption("--cc-baseline")
    if baseline_path:
        from .report.baseline import BaselineError, annotate, load_baseline

        try:
            baseline = load_baseline(baseline_path)
        except BaselineError as exc:
            raise pytest.UsageError(str(exc)) from None
        tolerance = config.getoption("--cc-tolerance")

        def check(record: dict[str, Any]) -> str | None:
            drifts = annotate([record], baseline, tolerance, source=baseline_path)
            return drifts[0].message() if drifts else None

        _claims.set_drift_check(check)
        config.stash[_BASELINE] = baseline
    config.pluginmanager.register(_Collector(), "circuitcheck-collector")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist, on the controller: a bare ``--cc-executor ray`` is one shared cluster."""
    _raycluster.configure_node(node)


def pytest_unconfigure(config: pytest.Config) -> None:
    _raycluster.shutdown(config)
    _settings.set_seed(config.stash.get(_PREVIOUS_SEED, 0))
    if PREVIOUS_EXECUTOR in config.stash:
        from . import executors

        executors.set_default(config.stash[PREVIOUS_EXECUTOR])
    _claims.set_drift_check(None)


def pytest_runtest_setup(item: pytest.Item) -> None:
    claim = getattr(item, "claim", None)
    stamp = {"task_hash": _task_hash(claim.task)} if claim is not None else None
    _claims.set_current_test(item.nodeid, stamp)


def _task_hash(spec: Any) -> str:
    """A short hash of a task spec that does not depend on where the files are: a data file
    counts by its name and content."""
    import hashlib
    from pathlib import Path

    spec = dict(spec)
    if isinstance(spec.get("path"), str):
        p = Path(spec["path"])
        try:
            digest = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        except OSError:
            digest = "missing"
        spec["path"] = f"{p.name}#{digest}"
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _provenance(config: pytest.Config, results: list[dict[str, Any]]) -> dict[str, Any]:
    """What a run's numbers depend on besides the claims: models (with a hash of local model
    files), dtype, device kind, library versions, seed."""
    import hashlib
    import sys
    from pathlib import Path

    from .report._write import _versions

    device = str(config.getoption("--cc-device"))
    if device == "auto" and "torch" in sys.modules:
        torch = sys.modules["torch"]
        device = "cuda" if torch.cuda.is_available() else "cpu"
    models: dict[str, str] = {}
    from . import gguf

    for name in sorted({str(r["measurement"].get("model") or "") for r in results} - {""}):
        path = None
        try:
            gguf_file = gguf.named_model(name) or (
                Path(name).expanduser() if name.lower().endswith(".gguf") else None)
        except Exception:  # noqa: BLE001 - a missing wheel: provenance says so below
            gguf_file = None
        if gguf_file is not None and gguf_file.is_file():
            models[name] = "gguf sha256:" + gguf.file_hash(gguf_file)[:16]
            continue
        if name.startswith("zoo:"):
            from .zoo import ZOO_DIR

            path = ZOO_DIR / name[4:]
        elif Path(name).expanduser().is_dir():
            path = Path(name).expanduser()
        if path is None or not path.is_dir():
            models[name] = "hub id (revision as given)"
            continue
        h = hashlib.sha256()
        for f in sorted(path.glob("*")):
            if f.is_file() and f.suffix in (".json", ".safetensors", ".bin", ".gguf"):
                h.update(f.name.encode())
                h.update(f.read_bytes())
        models[name] = "files sha256:" + h.hexdigest()[:16]
    autocast = sorted({str(r["measurement"]["autocast"]) for r in results
                       if r["measurement"].get("autocast")})
    return {"models": models, "dtype": str(config.getoption("--cc-dtype")),
            **({"autocast": autocast} if autocast else {}),
            "device_kind": device.split(":")[0], "versions": {
                k: v for k, v in _versions().items() if k != "pytest"},
            "seed": config.getoption("--cc-seed"),
            "prepend_bos": config.getoption("--cc-prepend-bos") or "per claim (default: the "
                                                                   "model's tokenizer)"}


@pytest.fixture(scope="session")
def cc_seed(pytestconfig: pytest.Config) -> int:
    """The run's seed (``--cc-seed``)."""
    return int(pytestconfig.getoption("--cc-seed"))


def worker_device(config: pytest.Config, n_gpus: int | None = None) -> str:
    """``--cc-device``, except that with ``auto`` under pytest-xdist and several GPUs, worker
    ``gwN`` is pinned to ``cuda:N % n_gpus`` so workers spread over the devices."""
    device = config.getoption("--cc-device")
    worker = getattr(config, "workerinput", {}).get("workerid", "")
    if device != "auto" or not worker.startswith("gw"):
        return device
    if n_gpus is None:
        import torch

        n_gpus = torch.cuda.device_count()
    return f"cuda:{int(worker[2:]) % n_gpus}" if n_gpus > 1 else device


def _load(config: pytest.Config, name: str, revision: str | None,
          prepend_bos: bool | None = None, device_map: Any = None, max_memory: Any = None,
          autocast: str | None = None) -> Any:
    """Load (once per process) or skip with one line when a hub model is not available.
    The command line's placement, dtype and autocast override the claim's."""
    from .errors import ModelUnavailableError
    from .models import load_model

    name = config.getoption("--cc-model") or name
    option = config.getoption("--cc-prepend-bos")
    if option is not None:
        prepend_bos = {"on": True, "off": False, "tokenizer": None}[option]
    if config.getoption("--cc-device-map"):
        device_map = config.getoption("--cc-device-map")
        max_memory = config.getoption("--cc-max-memory") or max_memory
    place = {"device": worker_device(config)} if device_map is None else {
        "device_map": device_map, "max_memory": max_memory}
    if config.getoption("--cc-autocast") is not None:  # "off" overrides a claim's too
        from ._autocast import parse_autocast

        autocast = parse_autocast(config.getoption("--cc-autocast"))
    if autocast:
        place.update(autocast=autocast,
                     autocast_tolerance=config.getoption("--cc-autocast-tolerance"))
    try:
        model = load_model(name, prepend_bos=prepend_bos, dtype=config.getoption("--cc-dtype"),
                           revision=revision, **place)
    except ModelUnavailableError as exc:
        pytest.skip(f"model {name!r} is not available here: {str(exc).split('. Fix: ')[-1]}")
    if autocast:  # every claim of the test says whether autocast ran, and why not
        _claims.add_stamp(autocast=model.cc_autocast_note)
    return model


@pytest.fixture
def cc_model(request: pytest.FixtureRequest) -> Any:
    """The model named by ``--cc-model`` or the test's ``circuitcheck_model`` marker.

    Loaded once per process and shared; a hub model that is not available offline skips the
    test with one line saying which model and how to provide it.
    """
    name, revision, bos = None, None, None
    marker = request.node.get_closest_marker("circuitcheck_model")
    if marker is not None:
        if not marker.args:
            raise pytest.UsageError("circuitcheck_model marker needs the model name: "
                                    "@pytest.mark.circuitcheck_model('zoo:planted')")
        name = marker.args[0]
        revision = marker.kwargs.get("revision")
        bos = marker.kwargs.get("prepend_bos")
    if name is None and request.config.getoption("--cc-model") is None:
        pytest.fail("no model for cc_model: mark the test with "
                    "@pytest.mark.circuitcheck_model('NAME') or pass --cc-model NAME",
                    pytrace=False)
    return _load(request.config, name or "", revision, bos)


def pytest_collect_file(file_path: Any, parent: pytest.Collector) -> pytest.Collector | None:
    """YAML files under a directory named ``circuits/`` are claim files, and so is any YAML
    file named on the command line (naming it says it is one)."""
    if file_path.suffix in (".yaml", ".yml") and (
            "circuits" in file_path.parts[:-1] or named_on_command_line(file_path, parent.config)):
        return ClaimFileCollector.from_parent(parent, path=file_path)
    return None


class ClaimFileCollector(pytest.File):
    """A YAML claim file: one item per claim; a claim that cannot be read is an item that
    fails with the reason, so the file's other claims (and other files) still run."""

    def collect(self) -> Any:
        from .claimfile import read_claim_file
        from .errors import ClaimFileError

        try:
            parsed = read_claim_file(self.path)
        except ClaimFileError as exc:
            yield ClaimErrorItem.from_parent(self, name="<file>", message=str(exc)[:2000], line=0)
            return
        except Exception as exc:  # noqa: BLE001 - one unreadable file must not stop the session
            yield ClaimErrorItem.from_parent(
                self, name="<file>", line=0,
                message=f"{self.path}: cannot be read: {type(exc).__name__}: {str(exc)[:2000]}")
            return
        for claim in parsed.claims:
            yield ClaimItem.from_parent(self, name=claim.name, claim=claim)
        for name, line, message in parsed.errors:
            yield ClaimErrorItem.from_parent(self, name=name, message=message, line=line)


class ClaimItem(pytest.Item):
    """One declarative claim: load its model, build its task, check every expectation."""

    def __init__(self, *, claim: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.claim = claim
        self.add_marker("circuitcheck")

    def runtest(self) -> None:
        from .claimfile import run_claim

        c = self.claim
        model = _load(self.config, c.model, c.revision, c.prepend_bos, c.device_map, c.max_memory,
                      c.autocast)
        failures = run_claim(self.claim, model)
        if failures:
            raise ClaimFailed("\n\n".join(failures))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        from .errors import CircuitCheckError

        if isinstance(excinfo.value, (ClaimFailed, CircuitCheckError)):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int, str]:
        return self.path, max(self.claim.line - 1, 0), f"claim: {self.name}"


class ClaimErrorItem(pytest.Item):
    """A claim (or file) that could not be read; fails with the message, runs nothing."""

    def __init__(self, *, message: str, line: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.message, self.line = message, line

    def runtest(self) -> None:
        raise ClaimFailed(self.message)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        return f"invalid claim: {excinfo.value}"

    def reportinfo(self) -> tuple[Any, int, str]:
        return self.path, max(self.line - 1, 0), f"invalid claim: {self.name}"


class ClaimFailed(AssertionError):
    """A declarative claim that did not hold (its message is the whole story)."""


def _claim_test(item: pytest.Item) -> bool:
    """A YAML claim, or a Python test that loads a model through ``cc_model``."""
    return isinstance(item, (ClaimItem, ClaimErrorItem)) or "cc_model" in getattr(
        item, "fixturenames", ())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    report = yield
    if call.when == "call" or (call.when == "setup" and report.outcome != "passed"):
        entries = _claims.take()
        crashed = call.excinfo is not None and not isinstance(
            call.excinfo.value, (AssertionError, pytest.skip.Exception, KeyboardInterrupt))
        if report.failed and _claim_test(item) and (crashed or not entries):
            # a claim that failed to run is listed too, never left out of the report
            value = call.excinfo.value if call.excinfo is not None else None
            why = (item.message if isinstance(item, ClaimErrorItem)
                   else f"{type(value).__name__}: {value}")
            claim = getattr(getattr(item, "claim", None), "name", None) or item.name
            model = getattr(getattr(item, "claim", None), "model", "")
            entry = _claims.error_record(str(claim), str(why), nodeid=item.nodeid, model=model)
            if call.when == "setup":
                entry["message"] = f"setup failed: {entry['message']}"
            entries.append(entry)
        for entry in entries:
            report.user_properties.append((PROPERTY, json.dumps(entry)))
    return report


def _condition(record: dict[str, Any]) -> str:
    """The claim's requirement in words: ">= 0.8", "top 2", or both."""
    parts = []
    if record.get("threshold") is not None:
        parts.append(f"{record['op']} {record['threshold']:g}")
    if record.get("top") is not None:
        parts.append(f"top {record['top']}")
    if record.get("p_value") is not None:
        parts.append(f"p={record['p_value']:.3g} (alpha {record['alpha']:g})")
    return ", ".join(parts)


class _Collector:
    """Gathers claim records from every test report (xdist workers' included)."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []
        self.started = time.time()
        self.deselected = 0
        self.collect_errors = 0
        self.interrupted = False

    def pytest_deselected(self, items: Any) -> None:
        self.deselected += len(items)

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self.collect_errors += 1

    def pytest_keyboard_interrupt(self, excinfo: Any) -> None:
        self.interrupted = True

    def partial(self, config: pytest.Config, exitstatus: int) -> list[str]:
        """Why this run did not check every claim it could have (empty: a full run)."""
        why = []
        if config.getoption("keyword", None):
            why.append(f"-k {config.getoption('keyword')!r} selected some tests")
        if config.getoption("markexpr", None):
            why.append(f"-m {config.getoption('markexpr')!r} selected some tests")
        if self.deselected and not why:
            why.append(f"{self.deselected} tests deselected")
        if any("::" in str(a) for a in config.args):
            why.append("node ids named on the command line")
        if self.collect_errors:
            why.append(f"{self.collect_errors} collection errors")
        if self.interrupted or exitstatus == int(pytest.ExitCode.INTERRUPTED):
            why.append("the run was interrupted")
        session = getattr(self, "session", None)
        if session is not None and (session.shouldfail or session.shouldstop) and \
                not self.interrupted:
            why.append(f"the run stopped early ({session.shouldfail or session.shouldstop})")
        return why

    def pytest_sessionstart(self, session: Any) -> None:
        self.session = session

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for key, value in report.user_properties:
            if key == PROPERTY:
                self.results.append(json.loads(value))
        if report.skipped and isinstance(report.longrepr, tuple):
            self.skipped.append({"nodeid": report.nodeid, "reason": str(report.longrepr[2])})


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    collector: _Collector = config.pluginmanager.get_plugin("circuitcheck-collector")
    results = collector.results
    tr = terminalreporter
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and not hasattr(config, "workerinput"):
        stray = stray_claim_files(config)
        if stray:
            tr.write_line(f"circuitcheck: no tests ran, but {', '.join(stray)} look like claim "
                          "files: YAML claims are collected from directories named circuits/; "
                          "move them into one or name the file on the command line")
    if results:
        counts: dict[str, int] = {}
        for r in results:
            counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
        tr.section("circuitcheck")
        for r in results:
            m = r["measurement"]
            if r["verdict"] == "error":
                first = str(r.get("message", "")).split("\n")[0]
                tr.write_line(f"{'ERROR':>12}  {r['claim']}: {first[:200]}")
                continue
            lo, hi = m["ci"]
            value = "n/a" if m["value"] is None else f"{m['value']:.3f}"
            ci = "" if lo is None else f" CI [{lo:.3f}, {hi:.3f}]"
            tr.write_line(f"{r['verdict'].upper():>12}  {r['claim']}: {r['kind']} {value}{ci} "
                          f"{_condition(r)}")
            if r.get("warning"):
                tr.write_line(f"{'WARNING':>12}  {str(r['warning'])[:300]}")
        tr.write_line("claims: " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items())))
        for note in sorted({str(r["measurement"].get("autocast")) for r in results
                            if "not used" in str(r["measurement"].get("autocast"))}):
            tr.write_line(f"circuitcheck: {note}")
    if hasattr(config, "workerinput"):
        return  # xdist workers: the controller writes the one merged report
    partial = collector.partial(config, int(exitstatus))
    if partial and results:
        tr.write_line("circuitcheck: PARTIAL run (" + "; ".join(partial) + ")")
    provenance = _provenance(config, results)
    baseline_path = config.getoption("--cc-baseline")
    baseline_notes: dict[str, Any] = {}
    if baseline_path:
        from .report.baseline import load_provenance, provenance_changes, record_key

        changes = provenance_changes(load_provenance(baseline_path), provenance)
        unmatched = sorted(set(config.stash.get(_BASELINE, {}))
                           - {record_key(r) for r in results})
        for line in changes:
            tr.write_line(f"circuitcheck: provenance changed since the baseline: {line}")
        for key in unmatched:
            tr.write_line(f"circuitcheck: baseline claim with no match in this run: {key}")
        baseline_notes = {"provenance_changes": changes, "baseline_unmatched": unmatched}
    replace = config.getoption("--cc-replace-with-partial")
    save = config.getoption("--cc-save-baseline")
    if save:
        from .report.baseline import save_baseline

        if partial and not replace and _is_full(save):
            tr.write_line(f"circuitcheck baseline NOT written: this run is partial and {save} "
                          "holds a full run (pass --cc-replace-with-partial to replace it)")
        else:
            tr.write_line(f"circuitcheck baseline written: "
                          f"{save_baseline(save, results, partial=partial, provenance=provenance)}")
    report_dir = config.getoption("--cc-report")
    if report_dir:
        from pathlib import Path

        from .report import write_report

        meta = {"device": config.getoption("--cc-device"), "dtype": config.getoption("--cc-dtype"),
                "seed": config.getoption("--cc-seed"),
                "models": sorted({r["measurement"].get("model", "") for r in results}),
                "baseline": config.getoption("--cc-baseline"), "provenance": provenance,
                **baseline_notes}
        if partial:
            meta["partial"] = "; ".join(partial)
        if partial and not replace and _is_full(Path(report_dir) / "results.json"):
            tr.write_line(f"circuitcheck report NOT written: this run is partial and "
                          f"{report_dir} holds a full run's report (pass "
                          "--cc-replace-with-partial to replace it)")
            return
        paths = write_report(report_dir, results, started=collector.started, meta=meta,
                             skipped=collector.skipped)
        if "previous" in paths:
            kept = paths["previous_claims"]
            tr.write_line(f"circuitcheck: {report_dir} held another run's report with "
                          f"{len(kept)} claim(s) not in this run ({', '.join(kept[:3])}"
                          f"{' ...' if len(kept) > 3 else ''}); it is kept in {paths['previous']}")
        tr.write_line(f"circuitcheck report: {paths['html']}")


def _is_full(path: Any) -> bool:
    """Whether ``path`` is a results / baseline file of a full (not partial) run."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        return False
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(doc, dict):
        return True
    run = doc.get("run") if isinstance(doc.get("run"), dict) else {}
    return not (doc.get("partial") or run.get("partial"))
