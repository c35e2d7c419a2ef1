"""Declarative claims: YAML files under ``circuits/``, read, validated and run.

A file names defaults (``model``, ``task``, ``circuit``) and a list of ``claims``, each with a
``name`` and ``expect``-ations; a claim may override any default::

    model: zoo:planted
    source: "built by hand: circuitcheck/zoo/planted.py"
    task: {builder: induction, n: 64, seq_len: 12}
    circuit:
      groups: {previous token: ["0.2"], induction: ["1.1"]}
    claims:
      - name: planted-circuit-sufficient
        expect:
          faithfulness: {at_least: 0.9, ablation: mean, metric: top1, normalize: ablated}
          necessity: {at_most: 0.2, ablation: mean, metric: top1, normalize: ablated}
          head_scores: {induction: {heads: ["1.1"], top: 1, at_least: 0.5}}
          important: {heads: ["0.2", "1.1"], trials: 4096}
          selection: {top: 2, retained_at_least: 0.9, ablated_at_most: 0.1}
          equivalence: {epsilon: 0.1, alpha: 0.05}
          localization: {alpha: 0.05, n_random: 100}
          robust: {at_least: 0.8, ablation: [zero, mean], metric: [top1, prob]}
          patching: {heads: ["1.1"], at_least: 0.5}
          direct_effect: {heads: ["1.1"], at_least: 0.5}
          attention_ablation: {heads: ["1.1"], over_random_by: 1.0}

Every key is checked before any model runs; an error names the file, the line, the key and
the fix ("did you mean ..."). Nothing here imports pytest.

``circuit:`` is either head groups (a ``Circuit``, as above) or a graph of edges (an
``EdgeCircuit``): ``circuit: {edges: ["input->a0.h2<v>", "a1.h1->logits", ...]}`` inline, or
``circuit: {file: graph.json}``, an EAP-IG graph JSON read relative to the claim file (its edges
with ``in_graph`` true). Only kinds declared with ``edge_circuits`` (faithfulness, necessity)
take an edge circuit; the others are refused before any model loads.

``device_map:`` (``auto``, ``balanced``, ``sequential`` or ``{module: device}``) and
``max_memory:`` (``{0: 20GiB, cpu: 64GiB}``), at the top or in a claim, shard the model over
devices (``load_model(device_map=...)``); ``--cc-device-map`` overrides them. ``autocast:``
(``bfloat16`` or ``float16``) runs the model's forwards under ``torch.autocast`` over float32
weights where a load-time probe finds it exact enough (``load_model(autocast=...)``);
``--cc-autocast`` overrides it.
"""
from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .claimkinds import KINDS, SpecError, circuit_problem
from .claimkinds import run as run_kind
from .claimkinds import validate as validate_kind
from .errors import CircuitCheckError, ClaimFileError, did_you_mean

FILE_KEYS = ("model", "revision", "prepend_bos", "device_map", "max_memory", "autocast", "task",
             "circuit", "claims", "source", "description")
CLAIM_KEYS = ("name", "model", "revision", "prepend_bos", "device_map", "max_memory", "autocast",
              "task", "circuit", "expect", "description", "source")
# The schema of ``expect`` comes from the claim registry (``circuitcheck.claimkinds``): one
# declaration per kind gives its keys, their types, what is required and what it needs.
EXPECT_KEYS = {name: kind.keys for name, kind in KINDS.items()}
REQUIRED = {name: kind.required for name, kind in KINDS.items() if kind.required}
NEEDS_CIRCUIT = {name for name, kind in KINDS.items() if kind.needs_circuit}


class _LineDict(dict):
    """A mapping that remembers the line of itself and of each key (1-based)."""

    line: int = 0
    key_lines: dict[str, int]


#: The most YAML nodes a claim file may expand to through aliases (``*ref``): a few hundred
#: bytes of nested aliases (a "billion laughs") otherwise cost gigabytes.
MAX_EXPANDED_NODES = 20_000
#: The longest error message a claim item shows (a huge value is cut, not printed whole).
MAX_MESSAGE = 2_000


def _short(value: Any, limit: int = 120) -> str:
    """``repr(value)`` cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: Any, node: Any) -> _LineDict:
        seen: dict[Any, int] = {}
        for k, _ in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else id(k)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {k.value!r} (first on line {seen[key]}); a "
                    "repeated key would silently keep only the last value", k.start_mark)
            seen[key] = k.start_mark.line + 1
        out = _LineDict(loader.construct_mapping(node, deep=True))
        out.line = node.start_mark.line + 1
        out.key_lines = {str(k.value): k.start_mark.line + 1 for k, _ in node.value}
        return out

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


def _expanded_size(node: Any, limit: int) -> int:
    """How many nodes ``node`` stands for once every alias is expanded (stops past ``limit``)."""
    import yaml

    memo: dict[int, int] = {}

    def size(n: Any) -> int:
        if id(n) in memo:
            return memo[id(n)]
        memo[id(n)] = limit + 1  # a cycle (recursive alias) counts as too large
        total = 1
        if isinstance(n, yaml.SequenceNode):
            for child in n.value:
                total += size(child)
                if total > limit:
                    break
        elif isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                total += size(k) + size(v)
                if total > limit:
                    break
        memo[id(n)] = min(total, limit + 1)
        return memo[id(n)]

    return size(node)


def _load_yaml(path: Path) -> Any:
    """The document of ``path``: UTF-8, no duplicate keys, aliases within a small expansion."""
    import yaml

    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ClaimFileError(f"{_where(path, None)}:{line}: not UTF-8 text (byte "
                             f"{raw[exc.start]:#04x} at offset {exc.start}); save the file as "
                             "UTF-8") from None
    loader = _loader()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, MAX_EXPANDED_NODES) > MAX_EXPANDED_NODES:
            raise ClaimFileError(f"{_where(path, None)}: YAML aliases expand this file to more "
                                 f"than {MAX_EXPANDED_NODES} values (or refer to themselves); "
                                 "refusing it - write the values out instead of nesting aliases")
        return loader.construct_document(node)
    finally:
        loader.dispose()


@dataclass(frozen=True)
class Claim:
    """One claim of a file, with its defaults resolved; ``line`` is where it starts."""

    name: str
    path: Path
    line: int
    model: str
    revision: str | None
    task: Mapping[str, Any]
    circuit: Any  # Circuit | None
    expect: Mapping[str, Mapping[str, Any]]
    source: str = ""
    description: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)
    prepend_bos: bool | None = None  # None: the model's tokenizer convention
    device_map: Any = None  # a sharded model: a strategy name or {module: device}
    max_memory: Any = None  # the dispatcher's per-device budget, with a device_map
    autocast: str | None = None  # forwards under torch.autocast in this dtype (probe-checked)


@dataclass(frozen=True)
class ClaimFile:
    """A parsed file: its valid claims, and an error per claim that could not be read."""

    path: Path
    claims: tuple[Claim, ...]
    errors: tuple[tuple[str, int, str], ...]  # (claim name, line, message)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _where(path: Path, node: Any, key: str | None = None) -> str:
    """``file:line`` of ``node`` (or of its ``key``), the file relative to the working dir."""
    line = getattr(node, "line", 0)
    if key is not None:
        line = getattr(node, "key_lines", {}).get(key, line)
    shown = _shown(path)
    return f"{shown}:{line}" if line else shown


def _read_circuit(path: Path, spec: Any) -> Any:
    """The claim's circuit: head groups (``Circuit``) or, with ``edges:`` / ``file:``, an
    ``EdgeCircuit`` whose ``source`` is the ``file:line`` of ``spec`` (and the graph file),
    checked for edges no model has; range and shape are checked once the model is loaded."""
    from dataclasses import replace

    from .circuit import Circuit
    from .edge_circuit import EdgeCircuit

    where = _where(path, spec)
    keys = ("name", "groups", "positions", "mlps", "edges", "file")
    try:
        for key in spec if isinstance(spec, Mapping) else ():
            if key not in keys:
                raise CircuitCheckError(
                    f"unknown circuit key {_short(key)}{did_you_mean(str(key), keys)}; a "
                    "circuit is head groups (groups, positions, mlps) or a graph of edges "
                    "(edges, or file: an EAP-IG graph JSON), with an optional name")
        if not (isinstance(spec, Mapping) and ("edges" in spec or "file" in spec)):
            return Circuit.from_dict(spec)
        if "groups" in spec:
            raise CircuitCheckError("a circuit is either head groups ('groups:') or a graph of "
                                    "edges ('edges:' or 'file:'), not both; split them into "
                                    "two claims")
        spec = dict(spec)
        graph = spec.get("file")
        if isinstance(graph, str) and graph and not Path(graph).is_absolute():
            spec["file"] = _shown(path.parent / graph)  # relative to the claim file
        circuit = EdgeCircuit.from_dict(spec)
        circuit.check_order()
    except CircuitCheckError as exc:
        raise ClaimFileError(f"{where}: circuit: {exc}") from None
    return replace(circuit, source=f"{where}: {spec['file']}" if "file" in spec else where)


def _check_keys(path: Path, node: Any, allowed: tuple[str, ...], what: str) -> None:
    if not isinstance(node, Mapping):
        raise ClaimFileError(f"{_where(path, node)}: {what} must be a mapping, got {_short(node)}")
    for key in node:
        if key not in allowed:
            raise ClaimFileError(
                f"{_where(path, node, key)}: unknown key {_short(key)} in {what}"
                f"{did_you_mean(str(key), allowed)}; allowed keys are {list(allowed)}")


def validate_task_spec(path: Path, task: Any, what: str) -> dict[str, Any]:
    from .tasks import BUILDERS

    if not isinstance(task, Mapping):
        raise ClaimFileError(f"{_where(path, task)}: {what} must be a mapping like "
                             f"{{builder: ioi, n: 50}}, got {_short(task)}")
    if "builder" not in task:
        raise ClaimFileError(f"{_where(path, task)}: {what} needs 'builder', one of {list(BUILDERS)}")
    builder = task["builder"]
    if not isinstance(builder, str) or builder not in BUILDERS:
        raise ClaimFileError(f"{_where(path, task, 'builder')}: unknown task builder "
                             f"{_short(builder)}"
                             f"{did_you_mean(str(builder), BUILDERS)}; use one of {list(BUILDERS)}")
    params = [p for p in inspect.signature(BUILDERS[builder]).parameters if p != "model"]
    for key in task:
        if key != "builder" and key not in params:
            raise ClaimFileError(
                f"{_where(path, task, key)}: task builder {builder!r} has no argument {key!r}"
                f"{did_you_mean(str(key), params)}; its arguments are {params}")
    out = dict(task)
    if builder in ("jsonl", "csv", "copying") and "path" in out:
        if not isinstance(out["path"], str) or not out["path"]:
            raise ClaimFileError(f"{_where(path, task, 'path')}: {builder} 'path' must be a file "
                                 f"name, got {_short(out['path'])}")
        out["path"] = str((path.parent / out["path"]).resolve())
        if not Path(out["path"]).is_file():
            raise ClaimFileError(f"{_where(path, task, 'path')}: {builder} file "
                                 f"{out['path']!r} does not exist (relative paths are read from "
                                 "the claim file's directory)")
    return out


def _check_values(path: Path, spec: Mapping[str, Any], kind: str) -> None:
    """Each value of an expectation has the right type and range (``_validate.KEY_CHECKS``)."""
    from . import _validate as v

    for key, value in spec.items():
        check = v.KEY_CHECKS.get(key)
        if key in ("ablation", "metric"):
            check = v.names if kind == "robust" else v.text
        if key == "require" and value != "all" and not (
                isinstance(value, list) and value and all(isinstance(x, Mapping) for x in value)):
            raise ClaimFileError(f"{_where(path, spec, key)}: {kind}.require must be 'all' or a "
                                 f"list of mappings like {{ablation: mean}}, got {_short(value)}")
        if key == "heads" and (isinstance(value, (str, bytes)) or not isinstance(value, list)
                               or not value):
            raise ClaimFileError(f"{_where(path, spec, key)}: {kind}.heads must be a non-empty "
                                 f"list of heads like [\"1.1\"], got {_short(value)}")
        if check is None or (value is None and key in ("exclusion_keep_prob", "top")):
            continue
        try:
            check(value, f"{kind}.{key}")
        except v.ArgumentError as exc:
            raise ClaimFileError(f"{_where(path, spec, key)}: {exc}") from None


def _check_expect(path: Path, expect: Any) -> dict[str, dict[str, Any]]:
    _check_keys(path, expect, tuple(KINDS), "expect")
    if not expect:
        raise ClaimFileError(f"{_where(path, expect)}: 'expect' is empty; name at least one of "
                             f"{list(KINDS)}")
    out: dict[str, dict[str, Any]] = {}
    for kind, spec in expect.items():
        try:
            out[kind] = validate_kind(KINDS[kind], spec,
                                      lambda node, allowed, what: _check_keys(path, node,
                                                                              allowed, what))
        except SpecError as exc:
            raise ClaimFileError(f"{_where(path, exc.node, exc.key)}: {exc}") from None
        if kind == "head_scores":
            for score_kind, sub in spec.items():
                _check_values(path, sub, f"head_scores.{score_kind}")
        else:
            _check_values(path, spec, kind)
    return out


def read_claim_file(path: str | Path) -> ClaimFile:
    """Parse and validate a claim file; per-claim problems are returned, not raised.

    A file that is not valid YAML, or whose top level is malformed, raises ``ClaimFileError``.
    """
    import yaml

    path = Path(path)
    try:
        data = _load_yaml(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{_where(path, None)}:{mark.line + 1}" if mark else _where(path, None)
        raise ClaimFileError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    _check_keys(path, data, FILE_KEYS, "a claim file")
    claims = data.get("claims")
    if not isinstance(claims, list) or not claims:
        raise ClaimFileError(f"{_where(path, data, 'claims')}: a claim file needs 'claims': a "
                             "list of {name: ..., expect: {...}}")
    good: list[Claim] = []
    errors: list[tuple[str, int, str]] = []
    seen: set[str] = set()
    for i, raw in enumerate(claims):
        name = raw.get("name", f"claim-{i}") if isinstance(raw, Mapping) else f"claim-{i}"
        line = getattr(raw, "line", 0)
        bad_name = not isinstance(name, str) or not name.strip()
        if bad_name:
            name, given = f"claim-{i}", name
        try:
            _check_keys(path, raw, CLAIM_KEYS, f"claim {name!r}")
            if "name" not in raw:
                raise ClaimFileError(f"{_where(path, raw)}: claim {i} needs a 'name'")
            if bad_name:
                raise ClaimFileError(f"{_where(path, raw, 'name')}: claim {i}'s name must be a "
                                     f"text, got {_short(given)}; quote it (name: \"...\")")
            if name in seen:
                raise ClaimFileError(f"{_where(path, raw, 'name')}: claim name {name!r} is used twice")
            seen.add(name)
            model = raw.get("model", data.get("model"))
            if not model:
                raise ClaimFileError(f"{_where(path, raw)}: claim {name!r} names no model; set "
                                     "'model:' at the top of the file or in the claim")
            task_spec = raw.get("task", data.get("task"))
            if task_spec is None:
                raise ClaimFileError(f"{_where(path, raw)}: claim {name!r} names no task; set "
                                     "'task: {builder: ...}' at the top or in the claim")
            task = validate_task_spec(path, task_spec, "task")
            circuit_spec = raw.get("circuit", data.get("circuit"))
            circuit = None if circuit_spec is None else _read_circuit(path, circuit_spec)
            if "expect" not in raw:
                raise ClaimFileError(f"{_where(path, raw)}: claim {name!r} has no 'expect'")
            expect = _check_expect(path, raw["expect"])
            for kind in expect:  # a kind's own rule first: it names the fix (a truth, ...)
                check = KINDS[kind].circuit_check
                problem = check(expect[kind], circuit) if circuit is None and check else None
                if problem:
                    raise ClaimFileError(f"{_where(path, raw['expect'], kind)}: claim "
                                         f"{name!r}: {problem}")
            if circuit is None and set(expect) & NEEDS_CIRCUIT:
                raise ClaimFileError(f"{_where(path, raw)}: claim {name!r} expects "
                                     f"{sorted(set(expect) & NEEDS_CIRCUIT)} but names no circuit")
            if circuit is not None and circuit.name == "circuit":
                from dataclasses import replace

                circuit = replace(circuit, name=name)
            for kind in expect:
                problem = circuit_problem(KINDS[kind], expect[kind], circuit)
                if problem:
                    raise ClaimFileError(f"{_where(path, raw['expect'], kind)}: claim {name!r}: "
                                         f"{problem}" + (f" (the circuit is at {where})"
                                                         if (where := getattr(
                                                             circuit, "source", "")) else ""))
            bos = raw.get("prepend_bos", data.get("prepend_bos"))
            if bos is not None and not isinstance(bos, bool):
                node = raw if "prepend_bos" in raw else data
                raise ClaimFileError(f"{_where(path, node, 'prepend_bos')}: prepend_bos must be "
                                     f"true or false (leave it out to follow the model's "
                                     f"tokenizer), got {_short(bos)}")
            placement = _placement(path, raw, data)
            good.append(Claim(name, path, line, str(model), raw.get("revision", data.get("revision")),
                              task, circuit, expect, str(raw.get("source", data.get("source", ""))),
                              str(raw.get("description", "")), dict(raw), bos, *placement))
        except ClaimFileError as exc:
            errors.append((str(name), line, str(exc)[:MAX_MESSAGE]))
        except Exception as exc:  # noqa: BLE001 - one bad value must not hide the other claims
            errors.append((str(name), line, f"{_where(path, raw)}: claim {name!r} cannot be read: "
                           f"{type(exc).__name__}: {str(exc)[:MAX_MESSAGE]}"))
    return ClaimFile(path, tuple(good), tuple(errors))


_TASKS: dict[tuple[int, str], Any] = {}


def _placement(path: Path, raw: Mapping[str, Any],
               data: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """The claim's ``device_map`` / ``max_memory`` / ``autocast`` (its own, else the file's),
    checked without torch (``_devicemap``, ``_autocast``); an error names the file and line."""
    from ._autocast import parse_autocast
    from ._devicemap import parse_device_map, parse_max_memory

    out = []
    for key, parse in (("device_map", parse_device_map), ("max_memory", parse_max_memory),
                       ("autocast", parse_autocast)):
        node = raw if key in raw else data
        try:
            out.append(parse(node.get(key)))
        except ValueError as exc:
            raise ClaimFileError(f"{_where(path, node, key)}: {exc}") from None
    if out[1] is not None and out[0] is None:
        node = raw if "max_memory" in raw else data
        raise ClaimFileError(f"{_where(path, node, 'max_memory')}: max_memory only applies "
                             "with a device_map; add 'device_map: auto' (or a mapping)")
    return out[0], out[1], out[2]


def build_task(model: Any, spec: Mapping[str, Any]) -> Any:
    """The task a claim names, built once per (model, spec) in this process."""
    from .tasks import BUILDERS

    key = (id(model), json.dumps(spec, sort_keys=True, default=str))
    if key not in _TASKS:
        args = {k: v for k, v in spec.items() if k != "builder"}
        builder = BUILDERS[spec["builder"]]
        params = inspect.signature(builder).parameters
        _TASKS[key] = builder(model, **args) if "model" in params else builder(**args)
    return _TASKS[key]


def run_claim(claim: Claim, model: Any) -> list[str]:
    """Check every expectation of ``claim`` on ``model``; return the failure messages.

    Every expectation runs (and is recorded for the report) even when an earlier one failed.
    """
    task = build_task(model, claim.task)
    failures: list[str] = []
    from .edge_circuit import EdgeCircuit

    if isinstance(claim.circuit, EdgeCircuit):  # does the graph fit this model and task?
        try:
            claim.circuit.validate(model, task)
        except CircuitCheckError as exc:
            from . import _claims

            text = f"claim {claim.name!r} ERROR: circuit: {exc}"
            _claims.record_error(claim.name, text, model=claim.model)
            return [text]
    for kind, spec in claim.expect.items():
        try:
            run_kind(KINDS[kind], model, task, claim.circuit, spec, claim.name)
        except AssertionError as exc:
            failures.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - recorded, so the report lists this claim
            from . import _claims

            text = f"claim {claim.name!r} ERROR in {kind}: {type(exc).__name__}: {exc}"
            if not isinstance(exc, CircuitCheckError):  # a bug of ours: say where it happened
                import traceback

                text += "\n" + "".join(traceback.format_tb(exc.__traceback__, limit=-3))
            _claims.record_error(claim.name, text, kind=kind, model=claim.model)
            failures.append(text)
    return failures
