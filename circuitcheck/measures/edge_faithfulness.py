"""Faithfulness and necessity of an ``EdgeCircuit`` by edge patching.

``cc.faithfulness``/``cc.necessity`` hand an edge circuit here; the ratio, its interval and its
problems are then computed exactly as for a node circuit (``measures.circuit``). The baselines
are the node path's own, as edge circuits: the full model (every edge kept) and "every head
ablated" (the edges among ``input``, the MLPs and ``logits``), so an edge circuit and the node
circuit it equals report the same numbers.
"""
from __future__ import annotations

from typing import Any

from ..circuit import Circuit
from ..edge_circuit import EdgeCircuit
from ..errors import CircuitCheckError
from ..interventions.edges import EdgeVariants, edge_reference, run_edge_variants
from ..tasks import Task
from ._circuit_setup import SECONDARY, _baselines, _setup
from .metrics import get_metric


def edge_circuit_rows(kind: str, ablate: bool, model: Any, task: Task, circuit: EdgeCircuit,
                      ablation: str, metric: str, reference: str | None, normalize: str,
                      seed: int | None, confidence: float, batch_size: int | None
                      ) -> tuple[Any, tuple[str, ...], tuple]:
    """``(setup, secondary names, (rows [1, N], baselines, secondary))`` for ``circuit``
    kept alone (``ablate=False``) or patched alone, in the shape ``_circuit_ratio`` reads.
    The circuit is validated (and, on grouped-query models, checked) before any forward."""
    if not isinstance(circuit, EdgeCircuit):
        raise CircuitCheckError(f"circuit must be a cc.EdgeCircuit, got {type(circuit).__name__}")
    circuit.validate(model, task)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    circuits = [circuit, EdgeCircuit.full(model),
                EdgeCircuit.from_nodes(model, Circuit({"none": []}), name="no heads")]
    variants = EdgeVariants.from_circuits(model, circuits, [ablate, False, False])
    s = _setup(model, task, [], ablation, metric, reference, normalize, seed, confidence,
               batch_size, values=lambda enc: edge_reference(model, enc, ablation, reference))
    names = tuple(n for n in SECONDARY if n != s.metric.name) if kind == "faithfulness" else ()
    extra = [get_metric(n, has_wrong=s.enc.wrong is not None) for n in names]
    reads = s.metric.reads or None
    if reads is not None and extra:
        reads = tuple(dict.fromkeys([*reads, *(r for m in extra for r in m.reads)]))
    readout = run_edge_variants(model, s.enc, variants, s.values, batch_size=batch_size,
                                ref_logprobs=s.ref_logprobs, reads=reads)
    rows = s.metric(readout)
    base = _baselines(s, rows[1], rows[2])
    return s, names, (rows[:1], base, {m.name: m(readout) for m in extra})
