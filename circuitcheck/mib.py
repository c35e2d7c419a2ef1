"""MIB's circuit-localization submission forms, written and read.

Followed: the MIB circuit track's README (github.com/yanivnik/MIB-shared-task, "Submitting to
the MIB Leaderboard", Mueller et al. 2025). A submission is one folder per task and model,
named ``<task>_<model>`` (e.g. ``ioi_gpt2``), holding either

1. one file of floating-point importance scores for every edge (EAP-IG's graph JSON with a
   ``score`` per edge; we write it with no ``in_graph`` flags), or
2. nine files of binary circuits (the same graph JSON with ``in_graph`` per edge and no
   scores), one with at most each of 0.1, 0.2, 0.5, 1, 2, 5, 10, 20 and 50 percent of the
   graph's edges.

The README does not name the files inside a folder (its examples are on the Hugging Face hub);
we write ``importances.json`` and ``edges_<percent>pct.json`` and read any ``*.json``: one
file is the importance form, nine the binary form (matched to the percentages by our names,
else by size, smallest first).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .edge_circuit import EdgeCircuit, read_graph_json, write_graph_json
from .errors import CircuitError
from .measures.edge_scores import EdgeScores

#: The benchmark's circuit sizes, in percent of the graph's edges (one binary circuit each).
MIB_PERCENTS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)
IMPORTANCES = "importances.json"


def folder_name(task: str, model: str) -> str:
    """``<task>_<model>``, MIB's folder name (``/`` in a hub id becomes ``-``)."""
    for what, v in (("task", task), ("model", model)):
        if not isinstance(v, str) or not v.strip():
            raise CircuitError(f"an MIB folder is named <task>_<model>; the {what} name must "
                               f"be a non-empty string, got {v!r}")
    return f"{task.strip()}_{model.strip().replace('/', '-')}"


def at_most(scores: EdgeScores, percent: float) -> EdgeCircuit:
    """The top-|score| circuit with at most ``percent`` % of the edges (on a grouped-query
    model a key/value head's edges stay together, so it may keep fewer)."""
    limit = math.floor(percent / 100 * len(scores) + 1e-9)
    n = limit
    circuit = scores.top(n)
    while len(circuit) > limit:  # top() kept a k/v group whole past the limit
        n -= 1
        circuit = scores.top(n)
    return circuit


def percent_name(percent: float) -> str:
    return f"edges_{percent:g}pct.json"


def write_mib(folder: str | Path, scores: EdgeScores, *, task: str, model: str,
              binary: bool = False, model_obj: Any = None) -> Path:
    """Write ``scores`` as an MIB submission folder ``folder/<task>_<model>``: the importance
    form (one file of scores), or with ``binary`` the nine circuits at ``MIB_PERCENTS``.
    ``model_obj`` (the loaded model) is checked against the scores and records ``d_model``.
    Returns the task/model folder."""
    if not isinstance(scores, EdgeScores):
        raise CircuitError(f"scores must be cc.EdgeScores (from cc.edge_scores), got "
                           f"{type(scores).__name__}")
    if model_obj is not None:
        scores.check_model(model_obj)
    graph = scores.shape if model_obj is None else model_obj
    out = Path(folder) / folder_name(task, model)
    out.mkdir(parents=True, exist_ok=True)
    if not binary:
        write_graph_json(out / IMPORTANCES, graph, None, scores.scores)
        return out
    for pct in MIB_PERCENTS:
        kept = {e.name for e in at_most(scores, pct).edges}
        write_graph_json(out / percent_name(pct), graph, kept, None)
    return out


def read_mib(folder: str | Path) -> EdgeScores | dict[float, EdgeCircuit]:
    """One ``<task>_<model>`` folder of an MIB submission: ``EdgeScores`` (importance form)
    or ``{percent: EdgeCircuit}`` (binary form), each circuit checked against its size."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CircuitError(f"{folder}: not a folder; an MIB submission is one folder per "
                           "task and model (<task>_<model>) of .json graph files")
    files = sorted(folder.glob("*.json"))
    if len(files) == 1:
        return EdgeScores.from_file(files[0])
    if len(files) != len(MIB_PERCENTS):
        raise CircuitError(f"{folder}: an MIB submission folder holds 1 file of importance "
                           f"scores or {len(MIB_PERCENTS)} binary circuits (at most "
                           f"{list(MIB_PERCENTS)} % of edges), but it has {len(files)} .json "
                           "files; write it with circuitcheck.mib.write_mib")
    named = {f.name: f for f in files}
    if set(named) == {percent_name(p) for p in MIB_PERCENTS}:  # ours: matched by name
        circuits = [read_graph_json(named[percent_name(p)]) for p in MIB_PERCENTS]
    else:  # another tool's names: matched to the sizes by size
        circuits = sorted((read_graph_json(f) for f in files), key=len)
    shapes = {c.shape for c in circuits}
    if len(shapes) != 1:
        raise CircuitError(f"{folder}: the circuits are for different model shapes "
                           f"{sorted(shapes)}; one folder is one model")
    (L, H), = shapes
    from .edge_circuit import all_edges

    total = len(all_edges(L, H))
    out: dict[float, EdgeCircuit] = {}
    for pct, c in zip(MIB_PERCENTS, circuits):
        if len(c) > math.floor(pct / 100 * total + 1e-9):
            raise CircuitError(f"{c.source}: {len(c)} edges ({100 * len(c) / total:.2f}% of "
                               f"{total}) is more than the {pct:g}% this circuit fills in "
                               "MIB's sizes; keep at most that many edges (the top-|score| "
                               "ones)")
        out[pct] = c
    return out


__all__ = ["IMPORTANCES", "MIB_PERCENTS", "at_most", "folder_name", "percent_name",
           "read_mib", "write_mib"]
