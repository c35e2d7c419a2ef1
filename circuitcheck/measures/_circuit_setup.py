"""What every circuit measurement (node or edge circuit) shares: validation and encoding
(``_setup``), the batched metric rows of node circuits with their baselines."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _settings
from ..circuit import Circuit
from ..errors import CircuitCheckError
from ..interventions import Ablation, Variants, ablation_values, final_logprobs, run_variants
from ..tasks import Task
from .metrics import Metric, get_metric

NORMALIZE = ("ratio", "ablated", "corrupted")


@dataclass(frozen=True, eq=False)
class _Setup:
    """What every circuit measurement shares: the encoded task, the metric, ablation values."""

    model: Any
    task: Task
    enc: Any
    metric: Metric
    values: Any
    normalize: str
    seed: int
    confidence: float
    batch_size: int | None
    ref_logprobs: Any = None  # the full model's next-token log-probs, for the KL metric


def _setup(model: Any, task: Task, circuits: Sequence[Circuit], ablation: str, metric: str,
           reference: str | None, normalize: str, seed: int | None, confidence: float,
           batch_size: int | None, *, values: Any = None) -> _Setup:
    """Validate and encode once; ``values`` (e.g. an edge circuit's reference outputs,
    built by ``values(enc)``) replaces the heads' ablation values."""
    from .. import _validate

    if not isinstance(task, Task):
        raise CircuitCheckError(f"task must be a cc.Task, got {type(task).__name__}")
    confidence = _validate.open_unit(confidence, "confidence")
    seed = _validate.seed(seed)
    if normalize not in NORMALIZE:
        raise CircuitCheckError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    enc = task.encode(model)
    if normalize == "corrupted" and enc.corrupted is None:
        raise CircuitCheckError("normalize='corrupted' needs a task with corrupted prompts")
    for c in circuits:
        if not isinstance(c, Circuit):
            raise CircuitCheckError(f"circuit must be a cc.Circuit, got {type(c).__name__}")
        c.validate(model, task)
    m = get_metric(metric, has_wrong=enc.wrong is not None, has_sets=enc.good is not None)
    ref = None
    if m.needs_reference:
        if normalize == "ratio":
            raise CircuitCheckError(f"metric {m.name!r} is 0 for the full model, so a ratio to it "
                                    "is undefined; use normalize='ablated' (or 'corrupted')")
        ref = final_logprobs(model, enc, batch_size=batch_size)
    if values is not None:
        values = values(enc)
    else:
        with_mlp = any(c.mlps is not None for c in circuits)
        values = ablation_values(model, enc, Ablation.parse(ablation), reference,
                                 with_mlp=with_mlp)
    return _Setup(model, task, enc, m, values, normalize,
                  _settings.seed() if seed is None else seed, confidence, batch_size, ref)


#: Metrics shown beside a faithfulness's primary metric (those the task can feed).
SECONDARY = ("top1", "prob")


def _metric_rows(s: _Setup, circuits: Sequence[Circuit], ablate: Sequence[bool],
                 *, with_baselines: bool = False, secondary: Sequence[str] = ()) -> Any:
    """Metric per (variant, prompt) for the given circuit variants: [V, N].

    With ``with_baselines`` the full model and the all-ablated model ride along in the same
    batched passes, and ``(rows, baselines)`` is returned (see ``_baselines``). ``secondary``
    metrics (names other than the primary's) are read from the same passes and a third item,
    ``{name: [V + 2, N]}``, is returned.
    """
    circuits, ablate = list(circuits), list(ablate)
    if with_baselines:
        L, H = s.model.cfg.n_layers, s.model.cfg.n_heads
        circuits += [Circuit({"all": [(l, h) for l in range(L) for h in range(H)]}),
                     Circuit({"none": []})]
        ablate += [False, False]
    extra = [get_metric(n, has_wrong=s.enc.wrong is not None) for n in secondary]
    reads = s.metric.reads or None
    if reads is not None and extra:
        reads = tuple(dict.fromkeys([*reads, *(r for m in extra for r in m.reads)]))
    variants = Variants.from_circuits(s.model, circuits, ablate)
    readout = run_variants(s.model, s.enc, variants, s.values, batch_size=s.batch_size,
                           ref_logprobs=s.ref_logprobs, reads=reads)
    rows = s.metric(readout)
    if not with_baselines:
        return rows
    out = rows[:-2], _baselines(s, rows[-2], rows[-1])
    return out + ({m.name: m(readout) for m in extra},) if secondary else out


def _baselines(s: _Setup, full: np.ndarray, ablated: np.ndarray) -> dict[str, np.ndarray]:
    """Per-prompt metric of the full model, of everything ablated, and (when the measurement
    is normalised to it) of the corrupted prompts."""
    import torch

    out = {"full": full, "ablated": ablated}
    if s.normalize == "corrupted":  # only then is the corrupted run worth its forward passes
        L, H = s.model.cfg.n_layers, s.model.cfg.n_heads
        out["corrupted"] = s.metric(run_variants(
            s.model, s.enc, Variants(torch.ones(1, L, H, dtype=torch.bool)), None,
            tokens=s.enc.corrupted, lengths=s.enc.corrupted_lengths, batch_size=s.batch_size,
            ref_logprobs=s.ref_logprobs, reads=s.metric.reads or None))[0]
    return out
