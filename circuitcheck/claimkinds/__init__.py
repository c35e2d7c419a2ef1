"""The claim registry: every claim kind declared once, as a small typed record.

A :class:`ClaimKind` names the YAML key of the kind, the measurement it calls, the ``assert_*``
function that decides and records its verdict, its parameters (each a :class:`Param` with a
type), what it needs (a circuit, heads, or neither), how its verdict is decided, what it
records and what the report draws of it, and a YAML example that runs on ``zoo:planted``.
From that one declaration come

- the claim-file schema: allowed keys, required keys, value types, "did you mean"
  (:func:`validate`, used by ``circuitcheck.claimfile``);
- the dispatch of ``run_claim`` (:func:`run`);
- the README's list of kinds (:func:`readme_list`, checked by the suite);
- the suite's checks that every kind has a runnable example, a report rendering and a
  README entry, and that its parameters are accepted by its ``assert_*`` function.

The built-in kinds are declared in ``circuitcheck/claimkinds/_builtin.py``; adding a kind is
one :func:`register` call there (or in a new module imported below). See
``docs/claim_kinds.md``. Functions are named by ``"module:attribute"`` strings and imported
only when a claim runs, so this module (like the pytest plugin) never imports torch.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: What a kind acts on, and so how ``run_claim`` calls its assertion:
#: ``circuit`` -> ``assert_x(model, task, circuit, **spec)``;
#: ``heads`` -> ``assert_x(model, task, spec.pop("heads"), **spec)``;
#: ``task`` -> ``assert_x(model, task, **spec)``;
#: ``per_score`` (head scores) -> ``assert_x(model, sub.pop("heads"), score_kind,
#: claim_task=task, **sub)`` for
#: each ``score_kind: sub`` of the spec.
TARGETS = ("circuit", "heads", "task", "per_score")


@dataclass(frozen=True)
class ParamType:
    """A YAML value type: its name in docs, the words of its error message, and its check."""

    name: str
    words: str
    check: Callable[[Any], bool] = field(repr=False, compare=False)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_heads(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, (list, tuple)) and len(v) > 0)


NUMBER = ParamType("number", "a number", _is_number)
INT = ParamType("int", "a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool))
TEXT = ParamType("str", "a name (a string)", lambda v: isinstance(v, str))
BOOL = ParamType("bool", "true or false", lambda v: isinstance(v, bool))
TEXTS = ParamType("str | list", "a string or a list of strings",
                  lambda v: isinstance(v, str) or (isinstance(v, list)
                                                   and all(isinstance(x, str) for x in v)))
HEADS = ParamType("heads", 'a head ("L.H") or a list of heads', _is_heads)
ANY = ParamType("any", "any value", lambda v: True)


@dataclass(frozen=True)
class Param:
    """One YAML key of a kind: its name, type, whether it is required, and a line of doc.

    ``missing`` replaces the generic "needs 'key' (e.g. ...)" hint when a required key is
    absent.
    """

    name: str
    type: ParamType = ANY
    required: bool = False
    doc: str = ""
    missing: str = ""


@dataclass(frozen=True)
class ClaimKind:
    """One claim kind, declared once (see the module docstring for what reads each field)."""

    name: str
    summary: str
    target: str
    assertion: str  # "module:function" of the assert_* helper that measures, decides, records
    measure: str    # "module:function" of the measurement it calls
    params: tuple[Param, ...]
    verdict: str    # how the verdict is decided, in words
    records: str    # the record's "kind" (what the report and baselines key on)
    figures: tuple[str, ...]  # what the report draws: histogram, heatmap, points, bars, lines,
    #                           grid, patterns (attention-pattern pictures of the claimed heads)
    example: Mapping[str, Any]  # an expectation that runs on zoo:planted (see EXAMPLE_FILE)
    check: Callable[[Mapping[str, Any]], str | None] | None = field(default=None, repr=False)
    score_kinds: str = ""  # per_score only: "module:attribute" of the allowed score kinds
    edge_circuits: bool = False  # circuit only: also measures an EdgeCircuit (a graph of edges)
    #: a rule on the spec and the claim's circuit together (e.g. a ground truth is needed):
    #: returns the problem in words, or None; checked before any model loads
    circuit_check: Callable[[Mapping[str, Any], Any], str | None] | None = field(
        default=None, repr=False)

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"claim kind {self.name!r}: target must be one of {TARGETS}")
        if self.edge_circuits and self.target != "circuit":
            raise ValueError(f"claim kind {self.name!r}: only a circuit kind takes edge circuits")
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"claim kind {self.name!r} declares a parameter twice")

    @property
    def keys(self) -> tuple[str, ...]:
        """The YAML keys, in declaration order."""
        return tuple(p.name for p in self.params)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params if p.required)

    @property
    def needs_circuit(self) -> bool:
        return self.target == "circuit"

    def assertion_function(self) -> Callable[..., Any]:
        return resolve(self.assertion)

    def measure_function(self) -> Callable[..., Any]:
        return resolve(self.measure)


KINDS: dict[str, ClaimKind] = {}

#: The file defaults every kind's ``example`` runs under (the suite runs each one).
EXAMPLE_FILE: dict[str, Any] = {
    "model": "zoo:planted",
    "task": {"builder": "induction", "n": 64, "seq_len": 12, "seed": 0},
    "circuit": {"groups": {"previous token": ["0.2"], "induction": ["1.1"]}},
}


def register(kind: ClaimKind) -> ClaimKind:
    """Add ``kind`` to the registry (its name must be new); return it."""
    if kind.name in KINDS:
        raise ValueError(f"claim kind {kind.name!r} is already registered")
    KINDS[kind.name] = kind
    return kind


def resolve(ref: str) -> Any:
    """The object a ``"module:attribute"`` string names."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def get(name: str) -> ClaimKind:
    return KINDS[name]


class SpecError(ValueError):
    """A spec that does not fit its kind; ``key`` is the offending key (or None), ``node`` the
    mapping it is in (for the file:line of the message)."""

    def __init__(self, message: str, node: Any, key: str | None = None) -> None:
        super().__init__(message)
        self.node, self.key = node, key


def _check_params(kind: ClaimKind, what: str, spec: Mapping[str, Any]) -> None:
    for p in kind.params:
        if p.required and p.name not in spec:
            hint = f": {p.missing}" if p.missing else f" (e.g. {what}: {{{p.name}: 0.8}})"
            raise SpecError(f"{what} needs {p.name!r}{hint}", spec)
    for p in kind.params:
        if p.name in spec and not p.type.check(spec[p.name]):
            raise SpecError(f"{what}.{p.name} must be {p.type.words}, got {spec[p.name]!r}",
                            spec, p.name)
    problem = kind.check(spec) if kind.check is not None else None
    if problem:
        raise SpecError(f"{what} {problem}", spec)


def score_kinds(kind: ClaimKind) -> tuple[str, ...]:
    return tuple(resolve(kind.score_kinds)) if kind.score_kinds else ()


def validate(kind: ClaimKind, spec: Any,
             check_keys: Callable[[Any, tuple[str, ...], str], None]) -> dict[str, Any]:
    """Check ``spec`` against ``kind``; return it as a plain dict (nested for ``per_score``).

    ``check_keys(node, allowed, what)`` reports unknown keys (with "did you mean"); other
    problems raise :class:`SpecError`.
    """
    if kind.target == "per_score":
        check_keys(spec, score_kinds(kind), kind.name)
        for score_kind, sub in spec.items():
            what = f"{kind.name}.{score_kind}"
            check_keys(sub, kind.keys, what)
            _check_params(kind, what, sub)
        return {k: dict(v) for k, v in spec.items()}
    check_keys(spec, kind.keys, kind.name)
    _check_params(kind, kind.name, spec)
    return dict(spec)


EDGE_KINDS_HINT = ("edge circuits are measured by the kinds that take them "
                   "({kinds}); give this claim a node circuit (circuit: {{groups: {{...}}}}) "
                   "for {kind}, or move {kind} to a claim of its own with one")


def edge_problem(kind: ClaimKind, circuit: Any) -> str | None:
    """Why ``kind`` cannot run on ``circuit`` (an edge circuit given to a kind that needs head
    groups and positions), or None."""
    from ..edge_circuit import EdgeCircuit

    if kind.target != "circuit" or kind.edge_circuits or not isinstance(circuit, EdgeCircuit):
        return None
    takes = ", ".join(k.name for k in KINDS.values() if k.edge_circuits)
    return (f"{kind.name} needs a head circuit (groups of heads, positions), but the circuit "
            f"is an edge circuit ({circuit.describe()}); "
            + EDGE_KINDS_HINT.format(kinds=takes, kind=kind.name))


def circuit_problem(kind: ClaimKind, spec: Mapping[str, Any], circuit: Any) -> str | None:
    """Why ``kind`` cannot run with ``spec`` on ``circuit``: ``edge_problem``, or the kind's
    own ``circuit_check`` (a recovers claim without a true circuit), or None."""
    problem = edge_problem(kind, circuit)
    if problem is None and kind.circuit_check is not None and kind.target != "per_score":
        problem = kind.circuit_check(spec, circuit)
    return problem


def refuse_edges(kind: ClaimKind, circuit: Any, spec: Mapping[str, Any] | None = None) -> None:
    """Raise ``CircuitError`` with ``circuit_problem``'s reason, if there is one."""
    problem = circuit_problem(kind, spec or {}, circuit)
    if problem:
        from ..errors import CircuitError

        raise CircuitError(problem)


def run(kind: ClaimKind, model: Any, task: Any, circuit: Any, spec: Mapping[str, Any],
        name: str) -> None:
    """Check one expectation: call the kind's assertion as its ``target`` says."""
    refuse_edges(kind, circuit, spec)
    fn = kind.assertion_function()
    spec = dict(spec)
    if kind.target == "circuit":
        fn(model, task, circuit, name=name, **spec)
    elif kind.target == "task":
        fn(model, task, name=name, **spec)
    elif kind.target == "heads":
        fn(model, task, spec.pop("heads"), name=name, **spec)
    else:
        for score_kind, sub in spec.items():
            sub = dict(sub)
            fn(model, sub.pop("heads"), score_kind, name=name, claim_task=task, **sub)


def readme_list() -> str:
    """The README's list of claim kinds (between its ``claim-kinds`` markers)."""
    lines = ["| expectation | needs | keys (**required**) | what it claims |",
             "|---|---|---|---|"]
    for k in KINDS.values():
        needs = {"circuit": "circuit", "heads": "heads", "task": "-",
                 "per_score": "heads per score kind"}[k.target]
        if k.edge_circuits:
            needs = "circuit (heads or edges)"
        keys = ", ".join(f"**{p.name}**" if p.required else p.name for p in k.params)
        lines.append(f"| `{k.name}` | {needs} | {keys} | {k.summary} |")
    return "\n".join(lines)


from . import _builtin  # noqa: E402,F401  (registers the built-in kinds)

__all__ = ["ANY", "BOOL", "EXAMPLE_FILE", "HEADS", "INT", "KINDS", "NUMBER", "TEXT", "TEXTS",
           "ClaimKind", "Param", "ParamType", "SpecError", "circuit_problem", "edge_problem", "get",
           "readme_list",
           "refuse_edges", "register", "resolve", "run", "validate"]
from . import _analysis  # noqa: E402,F401  (OV copying, attention, compensation, logit lens)
from . import _edges  # noqa: E402,F401  (faithfulness curve, recovers)
