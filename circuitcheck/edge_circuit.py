"""``EdgeCircuit``: a circuit as a graph of edges between ``input``, heads, MLPs and ``logits``.

Names follow EAP-IG (Hanna et al. 2024) so graphs travel between tools: nodes ``input``,
``a9.h9`` (layer 9, head 9), ``m11`` (MLP of layer 11) and ``logits``; an edge is
``sender->receiver`` and an edge into a head names the input it feeds,
``a0.h1->a5.h5<k>``. The Python API also takes the project's head forms for a head node
(``"9.9"``, ``(9, 9)``) and ``(sender, receiver, "k")`` tuples.

The graph of a model (not parallel-attention) has, as in EAP-IG, senders in forward order
(``input``, then per layer its heads and its MLP) and receivers (per layer the heads' q, k, v
inputs and the MLP, then ``logits``). A head of layer l reads every sender before layer l; the
MLP of layer l also reads the heads of layer l; ``logits`` reads every sender.

An edge may carry a ``position`` (a task position name): then it is kept only at that token
position (sender and receiver at the same position: the residual stream is per position).
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import _HEAD_RE, CircuitError, _short, did_you_mean

QKV = ("q", "k", "v")
_NODE_RE = re.compile(r"^(?:input|logits|a(\d+)\.h(\d+)|m(\d+))$")
_EDGE_RE = re.compile(r"^\s*([^\s<>-]+)\s*->\s*([^\s<>-]+)\s*(?:<([a-z]+)>)?\s*$")


def parse_node(value: Any) -> str:
    """``"a9.h9"``, ``"9.9"``, ``(9, 9)``, ``"m3"``, ``"input"``, ``"logits"`` -> EAP-IG name."""
    if isinstance(value, str):
        text = value.strip()
        if _NODE_RE.match(text):
            return text
        m = _HEAD_RE.match(text)
        if m:
            return f"a{int(m.group(1))}.h{int(m.group(2))}"
    elif isinstance(value, Sequence) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return f"a{int(value[0])}.h{int(value[1])}"
    hint = (f" (YAML reads an unquoted {value} as a number: quote it, '{value}')"
            if isinstance(value, float) else "")
    raise CircuitError(
        f"cannot read {_short(value)} as a node{hint}; write 'input', 'logits', a head as "
        "'a9.h9' (or '9.9', [9, 9]) or an MLP as 'm9'")


def node_layer(name: str) -> tuple[str, int, int]:
    """``(kind, layer, head)`` of a node name: kind is input, head, mlp or logits."""
    m = _NODE_RE.match(name)
    if m is None:  # pragma: no cover - names are parsed before
        raise CircuitError(f"unknown node {name!r}")
    if name == "input":
        return "input", -1, -1
    if name == "logits":
        return "logits", 1 << 30, -1
    if m.group(1) is not None:
        return "head", int(m.group(1)), int(m.group(2))
    return "mlp", int(m.group(3)), -1


@dataclass(frozen=True)
class Edge:
    """One edge: ``sender -> receiver`` (into ``qkv`` of a head receiver), optionally only at
    task position ``position``."""

    sender: str
    receiver: str
    qkv: str | None = None
    position: str | None = None

    @property
    def name(self) -> str:
        """The EAP-IG name, e.g. ``a0.h1->a1.h1<k>``."""
        return f"{self.sender}->{self.receiver}" + (f"<{self.qkv}>" if self.qkv else "")

    def __str__(self) -> str:
        return self.name + (f" @{self.position}" if self.position else "")


def parse_edge(value: Any) -> Edge:
    """An ``Edge`` from ``"a0.h1->a1.h1<k>"``, ``("0.1", "1.1", "k")``, a mapping with keys
    ``edge``/``position`` (or ``sender``, ``receiver``, ``qkv``, ``position``), or an Edge."""
    if isinstance(value, Edge):
        return value
    position = None
    if isinstance(value, Mapping):
        position = value.get("position")
        if "edge" in value:
            value = value["edge"]
        else:
            value = (value.get("sender"), value.get("receiver"), value.get("qkv"))
    if isinstance(value, str):
        m = _EDGE_RE.match(value)
        if m is None:
            raise CircuitError(f"cannot read {_short(value)} as an edge; write "
                               "'sender->receiver', with '<q>', '<k>' or '<v>' after a head "
                               "receiver, e.g. 'a0.h1->a1.h1<k>' or 'a1.h1->logits'")
        sender, receiver, qkv = m.group(1), m.group(2), m.group(3)
    elif isinstance(value, Sequence) and len(value) in (2, 3):
        sender, receiver = value[0], value[1]
        qkv = value[2] if len(value) == 3 else None
    else:
        raise CircuitError(f"cannot read {_short(value)} as an edge; write 'a0.h1->a1.h1<k>' "
                           "or [sender, receiver, qkv]")
    s, r = parse_node(sender), parse_node(receiver)
    edge = Edge(s, r, qkv, position)
    kind_r = node_layer(r)[0]
    if qkv is not None and qkv not in QKV:
        raise CircuitError(f"edge {edge.name}: unknown input <{qkv}>; a head's inputs are "
                           "<q>, <k> and <v>")
    if kind_r == "head" and qkv is None:
        raise CircuitError(f"edge {edge.name}: an edge into a head names the input it feeds; "
                           f"write {edge.name}<q>, <k> or <v>")
    if kind_r != "head" and qkv is not None:
        raise CircuitError(f"edge {edge.name}: <{qkv}> labels a head's input, but {r} is not "
                           f"a head; write {s}->{r}")
    if kind_r == "input":
        raise CircuitError(f"edge {edge.name}: nothing sends into 'input'; 'input' is a sender")
    if node_layer(s)[0] == "logits":
        raise CircuitError(f"edge {edge.name}: 'logits' receives only; it sends to nothing")
    if position is not None and not isinstance(position, str):
        raise CircuitError(f"edge {edge.name}: position must be a task position name, got "
                           f"{_short(position)}")
    return edge


def order_problem(edge: Edge) -> str | None:
    """Why ``edge`` cannot be in any model's graph (its sender is computed after its receiver
    reads), or None; needs no model: a head reads layers before its own, an MLP also its own
    layer's heads, ``logits`` everything."""
    sk, sl, _ = node_layer(edge.sender)
    rk, rl, _ = node_layer(edge.receiver)
    if rk == "logits" or sk == "input":
        return None
    ok = sl < rl or (rk == "mlp" and sk == "head" and sl == rl)
    if ok:
        return None
    why = ("a head reads only what layers before its own wrote" if rk == "head"
           else "an MLP reads its own layer's heads and everything before")
    return (f"the edge goes backward or within a layer ({edge.sender} is computed after "
            f"{edge.receiver} reads its input: {why}); the sender must be in an earlier "
            "layer, e.g. reverse it or drop it")


# -- indices (EAP-IG's layout) -----------------------------------------------------------

def n_senders(L: int, H: int) -> int:
    return 1 + L * (H + 1)


def n_receivers(L: int, H: int) -> int:
    return L * (3 * H + 1) + 1


def sender_index(name: str, H: int) -> int:
    kind, layer, head = node_layer(name)
    if kind == "input":
        return 0
    if kind == "head":
        return 1 + layer * (H + 1) + head
    return 1 + layer * (H + 1) + H


def receiver_index(name: str, qkv: str | None, H: int, L: int) -> int:
    kind, layer, head = node_layer(name)
    if kind == "logits":
        return L * (3 * H + 1)
    if kind == "head":
        return layer * (3 * H + 1) + QKV.index(qkv or "q") * H + head
    return layer * (3 * H + 1) + 3 * H


def reads_upto(receiver: int, L: int, H: int) -> int:
    """The receiver reads senders ``0 .. reads_upto - 1``."""
    if receiver == L * (3 * H + 1):
        return n_senders(L, H)
    layer, within = divmod(receiver, 3 * H + 1)
    return 1 + layer * (H + 1) + (H if within == 3 * H else 0)


def sender_names(L: int, H: int) -> list[str]:
    out = ["input"]
    for l in range(L):
        out += [f"a{l}.h{h}" for h in range(H)] + [f"m{l}"]
    return out


def receiver_names(L: int, H: int) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for l in range(L):
        out += [(f"a{l}.h{h}", x) for x in QKV for h in range(H)] + [(f"m{l}", None)]
    return out + [("logits", None)]


def all_edges(L: int, H: int) -> list[Edge]:
    """Every edge of the graph of an L-layer, H-head model, in EAP-IG's order."""
    names = sender_names(L, H)
    out = []
    for r, (rname, qkv) in enumerate(receiver_names(L, H)):
        out += [Edge(names[s], rname, qkv) for s in range(reads_upto(r, L, H))]
    return out


@dataclass(frozen=True)
class EdgeCircuit:
    """A circuit as a set of edges (see the module docstring); ``source`` names the file it was
    read from (for error messages), ``shape`` the ``(n_layers, n_heads)`` it was made for."""

    edges: tuple[Edge, ...]
    name: str = "circuit"
    source: str = ""
    shape: tuple[int, int] | None = None
    scores: Mapping[str, float] | None = field(default=None, repr=False, compare=False)

    def __init__(self, edges: Iterable[Any], name: str = "circuit", source: str = "",
                 shape: tuple[int, int] | None = None,
                 scores: Mapping[str, float] | None = None) -> None:
        if isinstance(edges, (str, bytes)) or not isinstance(edges, Iterable):
            raise CircuitError(f"{source + ': ' if source else ''}edges must be a list of "
                               f"edges, got {_short(edges)}")
        try:
            parsed = tuple(dict.fromkeys(parse_edge(e) for e in edges))
        except CircuitError as exc:
            raise CircuitError(f"{source}: {exc}" if source else str(exc)) from None
        if not isinstance(name, str) or not name:
            raise CircuitError(f"a circuit's name must be a non-empty string, got {_short(name)}")
        object.__setattr__(self, "edges", parsed)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "source", str(source))
        object.__setattr__(self, "shape", None if shape is None else (int(shape[0]), int(shape[1])))
        object.__setattr__(self, "scores", dict(scores) if scores is not None else None)

    # -- views --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.edges)

    def __contains__(self, edge: object) -> bool:
        try:
            return parse_edge(edge) in self.edges
        except CircuitError:
            return False

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for e in self.edges for n in (e.sender, e.receiver)))

    @property
    def heads(self) -> tuple[tuple[int, int], ...]:
        """The heads the circuit's edges touch, as ``(layer, head)``."""
        out = []
        for n in self.nodes:
            kind, layer, head = node_layer(n)
            if kind == "head":
                out.append((layer, head))
        return tuple(dict.fromkeys(out))

    @property
    def positions(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(e.position for e in self.edges if e.position))

    def describe(self) -> str:
        where = f", positions {list(self.positions)}" if self.positions else ""
        n = len(self)
        return f"{self.name}: {n} edge{'s' * (n != 1)} among {len(self.nodes)} nodes{where}"

    def record(self) -> dict[str, Any]:
        """What a claim's record says of the circuit: ``to_dict()`` plus the edge count, the
        model shape and the kept edges' scores (when the circuit came with scores)."""
        out = {"type": "edges", **self.to_dict(), "n_edges": len(self)}
        if self.shape is not None:
            out["shape"] = list(self.shape)
        if self.scores:
            out["scores"] = {e.name: self.scores[e.name] for e in self.edges
                             if e.name in self.scores}
        return out

    def check_order(self) -> None:
        """Raise ``CircuitError`` for an edge no model's graph has (backward or within a
        layer); needs no model (``validate`` also checks ranges and positions)."""
        for e in self.edges:
            problem = order_problem(e)
            if problem is not None:
                raise CircuitError(f"{self._where(e)}{problem}")

    def _where(self, edge: Edge | None = None) -> str:
        parts = [p for p in (self.source, f"edge {edge}" if edge else "") if p]
        return ": ".join(parts) + ": " if parts else ""

    # -- validation ---------------------------------------------------------------------
    def validate(self, model: Any, task: Any | None = None) -> None:
        """Check every edge exists in ``model``'s graph and every position in ``task``."""
        L, H = model.cfg.n_layers, model.cfg.n_heads
        if self.shape is not None and self.shape != (L, H):
            raise CircuitError(
                f"{self._where()}the graph is for a model with {self.shape[0]} layers x "
                f"{self.shape[1]} heads, but this model has {L} layers x {H} heads; use the "
                "graph found on this model (or load the model it was found on)")
        if getattr(model.cfg, "parallel_attn_mlp", False):
            raise CircuitError(f"{self._where()}edge circuits are not supported on "
                               "parallel-attention models (attention and MLP read the same "
                               "residual stream)")
        for e in self.edges:
            for n in (e.sender, e.receiver):
                kind, layer, head = node_layer(n)
                if kind in ("head", "mlp") and not 0 <= layer < L:
                    raise CircuitError(f"{self._where(e)}{n} is out of range: the model has "
                                       f"{L} layers (0..{L - 1})")
                if kind == "head" and not 0 <= head < H:
                    raise CircuitError(f"{self._where(e)}{n} is out of range: the model has "
                                       f"{H} heads per layer (0..{H - 1})")
            problem = order_problem(e)
            if problem is not None:
                raise CircuitError(f"{self._where(e)}{problem}")
            if task is not None and e.position is not None:
                if e.position not in task.position_names:
                    raise CircuitError(
                        f"{self._where(e)}position {e.position!r} is not defined by the task"
                        f"{did_you_mean(e.position, task.position_names)}; the task has "
                        f"{list(task.position_names)}")

    # -- construction -------------------------------------------------------------------
    @classmethod
    def full(cls, model: Any, name: str = "full graph") -> "EdgeCircuit":
        """Every edge of the model's graph (it computes exactly the full model)."""
        return cls(all_edges(model.cfg.n_layers, model.cfg.n_heads), name=name,
                   shape=(model.cfg.n_layers, model.cfg.n_heads))

    @classmethod
    def from_nodes(cls, model: Any, circuit: Any, name: str | None = None) -> "EdgeCircuit":
        """Every edge of a node ``cc.Circuit``: every edge among the nodes a node circuit
        keeps: its heads, its MLPs (all of them when ``circuit.mlps`` is None), ``input`` and
        ``logits``. An edge out of a positioned group's head carries the group's position
        (the head writes its own output only there); the receiver's position does not
        matter: a positioned head's own output elsewhere is ablated through its out-edges,
        and its keys and values are read at every position."""
        L, H = model.cfg.n_layers, model.cfg.n_heads
        keep: dict[str, str | None] = {"input": None, "logits": None}
        for (layer, head), pos in circuit.placements():
            keep.setdefault(f"a{layer}.h{head}", pos)
        mlps = range(L) if circuit.mlps is None else circuit.mlps
        keep.update({f"m{l}": None for l in mlps})
        edges = []
        for e in all_edges(L, H):
            if e.sender in keep and e.receiver in keep:
                edges.append(Edge(e.sender, e.receiver, e.qkv, keep[e.sender]))
        return cls(edges, name=name or circuit.name, shape=(L, H))

    # -- round trip ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "edges": [
            e.name if e.position is None else {"edge": e.name, "position": e.position}
            for e in self.edges]}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "") -> "EdgeCircuit":
        allowed = ("name", "edges", "file")
        where = f"{source}: " if source else ""
        if not isinstance(data, Mapping):
            raise CircuitError(f"{where}an edge circuit must be a mapping with 'edges' (or "
                               f"'file'), got {_short(data)}")
        for k in data:
            if k not in allowed:
                raise CircuitError(f"{where}unknown edge-circuit key {k!r}"
                                   f"{did_you_mean(str(k), allowed)}; allowed keys are "
                                   f"{list(allowed)}")
        if ("file" in data) == ("edges" in data):
            raise CircuitError(f"{where}an edge circuit names its edges either inline "
                               "('edges: [a0.h2->a1.h1<k>, ...]') or in an EAP-IG graph JSON "
                               "('file: graph.json'), " + ("not both" if "file" in data
                                                          else "but this names neither"))
        if "file" in data:
            if not isinstance(data["file"], str) or not data["file"]:
                raise CircuitError(f"{where}circuit 'file' must be a file name, got "
                                   f"{_short(data['file'])}")
            path = Path(data["file"])
            if source and not path.is_absolute():
                path = Path(source).parent / path
            if path.suffix != ".json":
                raise CircuitError(f"{where}circuit 'file' must be an EAP-IG graph JSON (.json), "
                                   f"got {path}; write edges inline with 'edges:'")
            if not path.is_file():
                raise CircuitError(f"{where}circuit file {str(path)!r} does not exist "
                                   "(a relative path is read from the claim file's directory)")
            circuit = read_graph_json(path)
            if "name" in data:
                circuit = EdgeCircuit(circuit.edges, name=data["name"], source=circuit.source,
                                      shape=circuit.shape, scores=circuit.scores)
            return circuit
        return cls(data["edges"], name=data.get("name", "circuit"), source=source)

    def to_json(self, path: str | Path | None, model: Any = None) -> dict[str, Any]:
        """EAP-IG's graph JSON (``cfg``, ``nodes``, ``edges`` with ``score`` and
        ``in_graph``) with this circuit's edges in the graph; written to ``path`` if given.
        ``model`` (or the circuit's own ``shape``) fixes the graph."""
        kept = {e.name for e in self.edges}
        if self.positions:
            raise CircuitError("EAP-IG's graph JSON has no positions; drop the edges' "
                               "positions before writing it")
        if model is None:
            if self.shape is None:
                raise CircuitError(f"{self._where()}writing a graph JSON needs the model's "
                                   "shape: pass the model, to_json(path, model)")
            model = self.shape
        return write_graph_json(path, model, kept, self.scores or {})


# -- EAP-IG graph JSON --------------------------------------------------------------------

def graph_cfg(model: Any) -> dict[str, Any]:
    """EAP-IG's ``cfg`` of a model, or of a bare ``(n_layers, n_heads)`` shape (no d_model)."""
    if isinstance(model, tuple):
        return {"n_layers": int(model[0]), "n_heads": int(model[1]),
                "parallel_attn_mlp": False}
    cfg = model.cfg
    return {"n_layers": int(cfg.n_layers), "n_heads": int(cfg.n_heads),
            "parallel_attn_mlp": bool(getattr(cfg, "parallel_attn_mlp", False)),
            "d_model": int(cfg.d_model)}


def write_graph_json(path: str | Path | None, model: Any, in_graph: set[str] | None,
                     scores: Mapping[str, float] | None) -> dict[str, Any]:
    """EAP-IG's format: every edge of the model's graph (``model`` or an ``(n_layers,
    n_heads)`` shape) with its score and ``in_graph``; a node is in the graph when an edge in
    the graph touches it (``logits`` always). ``in_graph=None`` writes scores only (no
    ``in_graph`` flags: MIB's importance-score form); ``scores=None`` writes flags only
    (MIB's binary-circuit form)."""
    L, H = (model if isinstance(model, tuple) else (model.cfg.n_layers, model.cfg.n_heads))
    edges: dict[str, dict[str, Any]] = {}
    for e in all_edges(L, H):
        info: dict[str, Any] = {}
        if scores is not None:
            info["score"] = float(scores.get(e.name, 0.0))
        if in_graph is not None:
            info["in_graph"] = e.name in in_graph
        edges[e.name] = info
    kept = in_graph or set()
    touched = {n for name in kept for e in [parse_edge(name)] for n in (e.sender, e.receiver)}
    nodes = {n: ({"in_graph": n in touched or n == "logits"} if in_graph is not None else {})
             for n in sender_names(L, H) + ["logits"]}
    data = {"cfg": graph_cfg(model), "nodes": nodes, "edges": edges}
    if path is not None:
        Path(path).write_text(json.dumps(data))
    return data


def read_graph_json(path: str | Path, *, binary: bool = True) -> EdgeCircuit:
    """An ``EdgeCircuit`` of the edges with ``in_graph`` true in an EAP-IG graph JSON; the
    scores ride along (``.scores``). ``binary=False`` accepts a file of scores only."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CircuitError(f"{path}: cannot read as an EAP-IG graph JSON: {exc}") from None
    missing = [k for k in ("cfg", "nodes", "edges") if not isinstance(data, Mapping)
               or k not in data]
    if missing:
        raise CircuitError(f"{path}: an EAP-IG graph JSON has keys 'cfg', 'nodes' and "
                           f"'edges'; this file lacks {missing}")
    cfg = data["cfg"]
    try:
        shape = (int(cfg["n_layers"]), int(cfg["n_heads"]))
    except (KeyError, TypeError, ValueError):
        raise CircuitError(f"{path}: 'cfg' needs n_layers and n_heads (the model shape the "
                           "graph was found on)") from None
    edges, scores, has_flag = [], {}, False
    for name, info in data["edges"].items():
        if not isinstance(info, Mapping):
            raise CircuitError(f"{path}: edge {name}: expected {{'score': .., 'in_graph': ..}}, "
                               f"got {_short(info)}")
        if "score" in info and info["score"] is not None:
            scores[name] = float(info["score"])
        if "in_graph" in info:
            has_flag = True
            if info["in_graph"]:
                edges.append(name)
    if binary and not has_flag:
        raise CircuitError(f"{path}: the edges have scores but no 'in_graph', so the file "
                           "names no circuit; mark the circuit's edges \"in_graph\": true (e.g. the "
                           "top-n edges by score) or read it with binary=False")
    circuit = EdgeCircuit(edges, name=path.stem, source=str(path), shape=shape, scores=scores)
    L, H = shape
    known = {e.name for e in all_edges(L, H)}
    for name in data["edges"]:
        e = parse_edge(name)  # raises with the name
        if e.name not in known:
            raise CircuitError(f"{path}: edge {name} is not an edge of a {L}-layer, {H}-head "
                               "model's graph (unknown node, or backward / same-layer edge); "
                               "check the file's cfg and the edge's names")
    return circuit
