"""Robustness sweeps: one claim under every ablation × metric × positions combination.

Circuit metrics move a lot with the ablation type, the metric and the positions chosen (Miller
et al. 2024), so a claim can be required to hold under all of them, or under named ones.
Forward passes are shared: one batched set of runs per ablation serves every metric (the
readout carries the answer logits, log-probabilities, top-1 and the KL to the full model).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import _settings
from ..circuit import Circuit
from ..errors import CircuitCheckError
from ..executors import get_executor, load_spec, new_context_id
from ..interventions import (Ablation, Variants, ablation_values, final_logprobs,
                             run_variants)
from ..stats import verdict  # the same rule as the assert_* helpers
from ..tasks import Task
from ._distributed import run_sweep_ablation
from ._measurement import Measurement
from ._result import ResultProtocol, jsonable
from .circuit import _ratio_measurement, _Setup
from .metrics import get_metric

POSITIONS = ("circuit", "all")
CLAIMS = {"faithfulness": False, "necessity": True}  # claim -> ablate the circuit?


@dataclass(frozen=True, eq=False)
class Sweep(ResultProtocol):
    """Every combination's measurement; ``grid()`` is the verdict table."""

    claim: str
    measurements: dict[tuple[str, str, str], Measurement]
    at_least: float | None = None
    at_most: float | None = None

    def verdict(self, key: tuple[str, str, str]) -> str:
        return verdict(self.measurements[key], at_least=self.at_least, at_most=self.at_most)

    @property
    def value(self) -> float:
        raise AttributeError("a sweep has no single value; read .measurements[(ablation, "
                             "metric, positions)] or .table()")

    values = ci_low = ci_high = value

    def table(self):
        """The verdict table (``grid()``)."""
        return self.grid()

    def to_dict(self) -> dict[str, Any]:
        return {"claim": self.claim, "at_least": self.at_least, "at_most": self.at_most,
                "grid": jsonable(self.grid().to_dict("records"))}

    def summary(self) -> str:
        head = f"{self.claim} sweep over {len(self.measurements)} combinations"
        if self.at_least is None and self.at_most is None:
            return head
        held = sum(self.verdict(k) == "held" for k in self.measurements)
        return f"{head}: {held} held"

    def grid(self):
        """A pandas DataFrame: ablation, metric, positions, value, CI and verdict."""
        import pandas as pd

        rows = []
        for (a, m, p), meas in self.measurements.items():
            row = {"ablation": a, "metric": m, "positions": p, "value": meas.value,
                   "ci_low": meas.ci[0], "ci_high": meas.ci[1]}
            if self.at_least is not None or self.at_most is not None:
                row["verdict"] = self.verdict((a, m, p))
            rows.append(row)
        return pd.DataFrame(rows)

    def select(self, require: str | Sequence[Mapping[str, str]] = "all") -> list[tuple[str, str, str]]:
        """The combinations a requirement names: "all", or dicts like {"ablation": "mean"}."""
        if require == "all":
            return list(self.measurements)
        keys = []
        for spec in require:
            unknown = set(spec) - {"ablation", "metric", "positions"}
            if unknown:
                raise CircuitCheckError(f"unknown sweep keys {sorted(unknown)}; use ablation, "
                                        "metric, positions")
            match = [k for k in self.measurements
                     if all(dict(zip(("ablation", "metric", "positions"), k))[f] == v
                            for f, v in spec.items())]
            if not match:
                raise CircuitCheckError(f"no swept combination matches {dict(spec)}")
            keys += match
        return list(dict.fromkeys(keys))


def sweep(model: Any, task: Task, circuit: Circuit, *, claim: str = "faithfulness",
          ablation: Sequence[str] | None = None,
          metric: Sequence[str] = ("logit_diff", "prob", "top1", "kl"),
          positions: Sequence[str] = POSITIONS, normalize: str | None = None,
          reference: str | None = None, at_least: float | None = None,
          at_most: float | None = None, seed: int | None = None, confidence: float = 0.95,
          batch_size: int | None = None, executor: Any = None) -> Sweep:
    """Measure ``claim`` (faithfulness or necessity) under every combination.

    ``ablation`` defaults to zero, mean and (when the task has corrupted prompts) resample.
    ``positions``: ``"circuit"`` uses the circuit's own positions, ``"all"`` keeps (or removes)
    its heads at every position. ``normalize`` defaults to ``"ratio"``, and ``"ablated"`` for
    the KL metric (whose full-model value is 0). ``executor`` (``circuitcheck.executors``:
    None/"local", "ray", "ray:ADDRESS"): where each ablation's batched runs go, one ablation
    per worker; the measurements are made here from their readouts.
    """
    import torch

    if claim not in CLAIMS:
        raise CircuitCheckError(f"claim must be one of {list(CLAIMS)}, got {claim!r}")
    ex = get_executor(executor)
    if not ex.is_local():
        load_spec(model)  # a model the workers cannot reload is refused before any run
    enc = task.encode(model)
    circuit.validate(model, task)
    if ablation is None:
        ablation = ["zero", "mean"] + (["resample"] if enc.corrupted is not None else [])
    for p in positions:
        if p not in POSITIONS:
            raise CircuitCheckError(f"positions must be among {POSITIONS}, got {p!r}")
    metrics = [get_metric(m, has_wrong=enc.wrong is not None, has_sets=enc.good is not None)
               for m in metric]
    seed = _settings.seed() if seed is None else seed
    ref = final_logprobs(model, enc, batch_size=batch_size) if any(
        m.needs_reference for m in metrics) else None
    L, H = model.cfg.n_layers, model.cfg.n_heads
    placed = {"circuit": circuit,
              "all": Circuit(circuit.groups, {}, circuit.mlps, circuit.name)}
    everything = Circuit({"all": [(l, h) for l in range(L) for h in range(H)]})
    nothing = Circuit({"none": []})
    variants = [placed[p] for p in positions] + [everything, nothing]
    ablate = [CLAIMS[claim]] * len(positions) + [False, False]
    corrupted_readout = None
    if enc.corrupted is not None:
        corrupted_readout = run_variants(model, enc, Variants(torch.ones(1, L, H, dtype=torch.bool)),
                                         None, tokens=enc.corrupted, lengths=enc.corrupted_lengths,
                                         batch_size=batch_size, ref_logprobs=ref)
    out: dict[tuple[str, str, str], Measurement] = {}
    with_mlp = circuit.mlps is not None
    remote = {}
    if not ex.is_local():  # every ablation's runs at once, one per worker, back in order
        ctx = {"id": new_context_id(), "task": task, "variants": variants, "ablate": ablate,
               "reference": reference, "with_mlp": with_mlp, "batch_size": batch_size,
               "with_ref": ref is not None}
        remote = dict(zip(ablation, ex.map(model, run_sweep_ablation, ctx, list(ablation))))
    for abl in ablation:
        values = ablation_values(model, enc, Ablation.parse(abl), reference, with_mlp=with_mlp)
        readout = remote[abl] if abl in remote else run_variants(
            model, enc, Variants.from_circuits(model, variants, ablate), values,
            batch_size=batch_size, ref_logprobs=ref)
        for m in metrics:
            rows = m(readout)
            base = {"full": rows[len(positions)], "ablated": rows[len(positions) + 1]}
            if corrupted_readout is not None:
                base["corrupted"] = m(corrupted_readout)[0]
            norm = normalize or ("ablated" if m.needs_reference else "ratio")
            s = _Setup(model, task, enc, m, values, norm, seed, confidence, batch_size, ref)
            for i, p in enumerate(positions):
                out[(values.kind.value, m.name, p)] = _ratio_measurement(
                    s, claim, rows[i], base, placed[p], {"positions": p})
    return Sweep(claim, out, at_least, at_most)
