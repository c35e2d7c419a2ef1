"""``Circuit``: a hypothesised circuit as named groups of attention heads.

A circuit is data: groups of ``(layer, head)`` with, optionally, the one token position where
each group acts (``positions={"name mover": "end"}``), and optionally the MLP layers it keeps.
Heads of a group with a position are kept only at that position and ablated elsewhere, as in
the position-specific IOI circuit of Wang et al. (2022). Groups without a position are kept at
every position. ``mlps=None`` means MLPs are outside the hypothesis and never ablated; a list
means those MLP layers belong to the circuit and every other MLP layer is ablated with it.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import _HEAD_RE, CircuitError, _short, did_you_mean

Head = tuple[int, int]
_KEYS = ("name", "groups", "positions", "mlps")


def parse_head(value: Any) -> Head:
    """``(9, 9)``, ``[9, 9]``, ``"9.9"`` or ``"L9H9"`` -> ``(9, 9)``."""
    if isinstance(value, str):
        m = _HEAD_RE.match(value)
        if m:
            return int(m.group(1)), int(m.group(2))
    elif isinstance(value, Sequence) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return int(value[0]), int(value[1])
    raise CircuitError(
        f"cannot read {_short(value)} as a head; write a head as [layer, head], '9.9' or 'L9H9'"
    )


def format_head(head: Head) -> str:
    return f"{head[0]}.{head[1]}"


@dataclass(frozen=True)
class Circuit:
    """Named groups of heads, optional positions per group, optional MLP layers."""

    groups: Mapping[str, tuple[Head, ...]]
    positions: Mapping[str, str] = field(default_factory=dict)
    mlps: tuple[int, ...] | None = None
    name: str = "circuit"

    def __init__(
        self,
        groups: Mapping[str, Iterable[Any]] | Iterable[Any],
        positions: Mapping[str, str] | None = None,
        mlps: Iterable[int] | None = None,
        name: str = "circuit",
    ) -> None:
        if not isinstance(groups, Mapping):
            groups = {"circuit": groups}
        parsed: dict[str, tuple[Head, ...]] = {}
        for gname, heads in groups.items():
            if isinstance(heads, (str, bytes)) or not isinstance(heads, Iterable):
                raise CircuitError(f"group {_short(gname)} must be a list of heads, got "
                                   f"{_short(heads)}")
            parsed[str(gname)] = tuple(dict.fromkeys(parse_head(h) for h in heads))
        if positions is not None and not isinstance(positions, Mapping):
            raise CircuitError(f"positions must be a mapping {{group: position name}}, got "
                               f"{_short(positions)}")
        positions = dict(positions or {})
        for gname, pos in positions.items():
            if gname not in parsed:
                raise CircuitError(
                    f"positions names group {gname!r}, which the circuit does not have"
                    f"{did_you_mean(gname, parsed)}; groups are {list(parsed)}"
                )
            if pos is not None and not isinstance(pos, str):
                raise CircuitError(f"position of group {gname!r} must be a position name, got {pos!r}")
        if mlps is not None:
            if isinstance(mlps, (str, bytes)) or not isinstance(mlps, Iterable):
                raise CircuitError(f"mlps must be a list of MLP layer numbers, got {_short(mlps)}")
            mlps = list(mlps)
            bad = [m for m in mlps if isinstance(m, bool) or not isinstance(m, int)]
            if bad:
                raise CircuitError(f"mlps must be a list of MLP layer numbers, got {_short(bad[0])} "
                                   "in it")
        if not isinstance(name, str) or not name:
            raise CircuitError(f"a circuit's name must be a non-empty string, got {_short(name)}")
        object.__setattr__(self, "groups", parsed)
        object.__setattr__(self, "positions", {g: p for g, p in positions.items() if p is not None})
        object.__setattr__(self, "mlps", None if mlps is None else tuple(sorted({int(m) for m in mlps})))
        object.__setattr__(self, "name", name)

    # -- views --------------------------------------------------------------------------
    @property
    def heads(self) -> tuple[Head, ...]:
        """Every head of the circuit, once, in group order."""
        return tuple(dict.fromkeys(h for hs in self.groups.values() for h in hs))

    def __len__(self) -> int:
        return len(self.heads)

    def __contains__(self, head: object) -> bool:
        return head in self.heads

    def placements(self) -> list[tuple[Head, str | None]]:
        """``(head, position)`` pairs: where each head is kept (``None`` = everywhere)."""
        out: list[tuple[Head, str | None]] = []
        for gname, heads in self.groups.items():
            out.extend((h, self.positions.get(gname)) for h in heads)
        return list(dict.fromkeys(out))

    def without(self, heads: Iterable[Head]) -> "Circuit":
        """The same circuit with ``heads`` removed from every group."""
        drop = {parse_head(h) for h in heads}
        return Circuit({g: [h for h in hs if h not in drop] for g, hs in self.groups.items()},
                       self.positions, self.mlps, self.name)

    def describe(self) -> str:
        pos = {p for p in self.positions.values()}
        where = f", positions {sorted(pos)}" if pos else ""
        n, g = len(self), len(self.groups)
        return (f"{self.name}: {n} head{'s' * (n != 1)} in {g} group{'s' * (g != 1)}{where}")

    # -- validation ---------------------------------------------------------------------
    def validate(self, model: Any, task: Any | None = None) -> None:
        """Check every head exists in ``model`` and every position in ``task``."""
        n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
        for gname, heads in self.groups.items():
            for layer, head in heads:
                if not (0 <= layer < n_layers and 0 <= head < n_heads):
                    raise CircuitError(
                        f"head {layer}.{head} in group {gname!r} is out of range: the model has "
                        f"{n_layers} layers (0..{n_layers - 1}) and {n_heads} heads per layer "
                        f"(0..{n_heads - 1})"
                    )
        for m in self.mlps or ():
            if not 0 <= m < n_layers:
                raise CircuitError(f"MLP layer {m} is out of range: the model has {n_layers} layers")
        if task is not None:
            for gname, pos in self.positions.items():
                if pos not in task.position_names:
                    raise CircuitError(
                        f"group {gname!r} is placed at position {pos!r}, which the task does not "
                        f"define{did_you_mean(pos, task.position_names)}; the task has "
                        f"{list(task.position_names)}"
                    )

    # -- round trip ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "groups": {g: [list(h) for h in hs] for g, hs in self.groups.items()},
        }
        if self.positions:
            out["positions"] = dict(self.positions)
        if self.mlps is not None:
            out["mlps"] = list(self.mlps)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Circuit":
        if not isinstance(data, Mapping):
            raise CircuitError(f"a circuit must be a mapping with keys {list(_KEYS)}, got {data!r}")
        unknown = [k for k in data if k not in _KEYS]
        if unknown:
            k = unknown[0]
            raise CircuitError(f"unknown circuit key {k!r}{did_you_mean(k, _KEYS)}; allowed keys are {list(_KEYS)}")
        if "groups" not in data:
            raise CircuitError("a circuit needs 'groups': {group name: [[layer, head], ...]}")
        return cls(data["groups"], data.get("positions"), data.get("mlps"), data.get("name", "circuit"))

    @classmethod
    def from_file(cls, path: str | Path) -> Any:
        """A circuit from a file: an EAP-IG graph JSON (its edges with ``in_graph`` true, as an
        ``EdgeCircuit``) or the project's YAML (a node circuit, or an edge circuit ``edges:``)."""
        import yaml

        from .edge_circuit import EdgeCircuit, read_graph_json

        path = Path(path)
        if not path.exists():
            raise CircuitError(f"{path}: no such file")
        if path.suffix == ".json":
            return read_graph_json(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise CircuitError(f"{path}: not valid YAML: {exc}") from None
        if isinstance(data, Mapping) and "circuit" in data and not {"groups", "edges"} & set(data):
            data = data["circuit"]
        if isinstance(data, Mapping) and ("edges" in data or "file" in data):
            return EdgeCircuit.from_dict(data, source=str(path))
        return cls.from_yaml(path)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The circuit as YAML text; also written to ``path`` when given."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, source: str | Path) -> "Circuit":
        """Read a circuit from a YAML file (or YAML text); a ``circuit:`` key may wrap it."""
        import yaml

        text = Path(source).read_text() if _looks_like_path(source) else str(source)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CircuitError(f"{source}: not valid YAML: {exc}") from None
        if isinstance(data, Mapping) and "circuit" in data and "groups" not in data:
            data = data["circuit"]
        try:
            return cls.from_dict(data)
        except CircuitError as exc:
            raise CircuitError(f"{source}: {exc}") from None


def _looks_like_path(source: str | Path) -> bool:
    if isinstance(source, Path):
        return True
    return "\n" not in source and source.endswith((".yaml", ".yml"))
