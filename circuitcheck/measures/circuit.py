"""Circuit claims: faithfulness, necessity, minimality, and per-head drops.

Definitions (F = mean metric over the task's prompts; C = the circuit; M = the full model):

- faithfulness = F(C) / F(M): the metric with only the circuit kept (everything else ablated)
  relative to the full model (Wang et al. 2022). With ``normalize="ablated"`` it is
  (F(C) - F(∅)) / (F(M) - F(∅)), with ``"corrupted"`` (F(C) - F(corr)) / (F(M) - F(corr)),
  so 0 is the baseline and 1 the full model.
- necessity = F(M \\ C) / F(M) (same normalisations): performance with the circuit ablated
  and everything else kept. Low values mean the circuit is necessary.
- minimality of v ∈ C = |F(C \\ K) - F(C \\ (K ∪ {v}))| / |F(M)| for a set K (default ∅).

All variants a claim needs run together in batched forward passes. A faithfulness of a circuit
that keeps everything (or a necessity of one that removes nothing) ablates nothing, so it is 1
by construction: it is reported as not measurable, never as a held claim.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _settings
from ..circuit import Circuit, Head, format_head, parse_head
from ..edge_circuit import EdgeCircuit, all_edges
from ..errors import CircuitCheckError, CircuitCheckWarning, NotMeasurableError
from ..interventions import Ablation
from ..stats import bootstrap_ci, wilson_ci
from ..tasks import Task
from ._circuit_setup import (NORMALIZE, SECONDARY, _baselines, _metric_rows, _Setup,  # noqa: F401
                             _setup)
from ._measurement import Measurement, unmeasured
from .edge_faithfulness import edge_circuit_rows
from ._result import ResultProtocol


def _ratio_measurement(s: _Setup, kind: str, numer: np.ndarray, base: dict[str, np.ndarray],
                       circuit: Circuit | None, extra: dict[str, Any] | None = None) -> Measurement:
    """(mean(numer) - b) / (mean(full) - b) with a paired bootstrap interval.

    For a 0/1 metric (top-1) the interval also covers the Wilson interval of mean(numer)
    with the rest held at their means: a percentile bootstrap of 64 successes in 64 prompts
    is [1, 1], which would claim certainty that 64 prompts cannot give.
    """
    full = base["full"]
    b_rows = np.zeros_like(full) if s.normalize == "ratio" else base[s.normalize]
    n = len(full)
    b = float(b_rows.mean())
    den = float(full.mean()) - b
    problem = None
    den_lo, den_hi = bootstrap_ci(lambda i: full[i].mean(1) - b_rows[i].mean(1), n,
                                  confidence=s.confidence, seed=s.seed)
    ref = "zero" if s.normalize == "ratio" else f"the {s.normalize} baseline"
    ablated = base.get("ablated")
    if n < 2:
        problem = (f"only {n} prompt: an interval over prompts cannot be estimated from one, so "
                   "the claim cannot be decided; use more prompts (20 or more)")
    elif ablated is not None and np.allclose(full, ablated, rtol=1e-5, atol=1e-6) \
            and not np.allclose(full, 0, atol=1e-6):
        problem = (f"the ablation changes nothing: with every head ablated ({s.values.describe()}) "
                   f"the {s.metric.name} equals the full model's on every prompt, so any circuit "
                   "would score as the full model; e.g. a mean by template over one prompt per "
                   "template replaces each activation by itself - use more prompts per template "
                   "or another ablation")
    elif not den or den_lo <= 0 <= den_hi:
        problem = (f"the full model does not do the task: its {s.metric.name} is "
                   f"{full.mean():.3g} against {b:.3g} for {ref} (difference CI "
                   f"[{den_lo:.3g}, {den_hi:.3g}] includes 0), so a ratio to it would divide by "
                   "noise; check the task, answers and model")
    elif kind in ("faithfulness", "necessity") and circuit is not None and \
            ablates_nothing(s.model, circuit, kind == "necessity"):
        problem = _nothing_ablated(kind, kind == "necessity", isinstance(circuit, EdgeCircuit))
    elif den < 0:
        problem = (f"the full model's {s.metric.name} ({full.mean():.3g}) is below {ref} "
                   f"({b:.3g}), so the ratio's direction is reversed; for logprob use "
                   "normalize='ablated' or 'corrupted', otherwise check the answers")
    value = (float(numer.mean()) - b) / den if den else float("nan")
    ci = bootstrap_ci(lambda i: (numer[i].mean(1) - b_rows[i].mean(1))
                      / (full[i].mean(1) - b_rows[i].mean(1)), n,
                      confidence=s.confidence, seed=s.seed)
    if s.metric.binary and den and n >= 2:
        (w_lo,), (w_hi,) = wilson_ci(np.array([float(numer.sum())]), np.array([float(n)]),
                                     s.confidence)
        ci = (float(min(ci[0], (w_lo - b) / den)), float(max(ci[1], (w_hi - b) / den)))
    per_prompt = (numer - b) / den if den else np.full(n, np.nan)
    if problem:
        value = float("nan")
    label = (f"{s.metric.name} / the full model's mean" if s.normalize == "ratio" else
             f"normalised {s.metric.name} (0 = {s.normalize}, 1 = full model)")
    return Measurement(
        kind=kind, value=value, ci=ci, per_prompt=per_prompt, metric=s.metric.name,
        metric_description=s.metric.describe, ablation=s.values.describe(),
        baselines={k: float(v.mean()) for k, v in base.items()}, confidence=s.confidence,
        seed=s.seed, circuit=circuit, model=getattr(s.model, "cc_name", ""), task=s.task.name,
        problem=problem, details={"normalize": s.normalize, "per_prompt_label": label,
                                  **(extra or {})},
    )


def ablates_nothing(model: Any, circuit: Circuit, ablate: bool) -> bool:
    """Whether keeping only ``circuit`` (``ablate=False``) or removing it (``True``) leaves
    every head and MLP of ``model`` as it is (an edge circuit: every edge): then the ratio is
    1 by construction."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if isinstance(circuit, EdgeCircuit):
        if ablate:
            return not circuit.edges
        everywhere = {(e.sender, e.receiver, e.qkv) for e in circuit.edges if e.position is None}
        return all((e.sender, e.receiver, e.qkv) in everywhere for e in all_edges(L, H))
    if ablate:
        return not circuit.heads and not circuit.mlps
    everywhere = {h for h, p in circuit.placements() if p is None}
    mlps_kept = circuit.mlps is None or set(range(L)) <= set(circuit.mlps)
    return len(everywhere) == L * H and mlps_kept


def _nothing_ablated(kind: str, ablate: bool, edges: bool = False) -> str:
    what, fix = (("removes no head and no MLP", "name the heads whose removal is claimed")
                 if ablate else ("keeps every head at every position (and every MLP)",
                                 "claim a circuit smaller than the model"))
    if edges:
        what, fix = (("removes no edge", "name the edges whose removal is claimed") if ablate
                     else ("keeps every edge of the graph at every position",
                           "claim a circuit smaller than the graph"))
    return (f"the circuit {what}, so nothing is ablated and the {kind} is 1 by construction: "
            f"nothing is measured; {fix} (the full model's own metric is in the baselines)")


def trivial_warning(value: float, metric: str, top1: Mapping[str, float] | None,
                    n_heads: int, total: int) -> str | None:
    """The warning for a faithfulness the primary metric calls high while top-1 collapses.

    Rule: warn when the faithfulness is >= 0.5, top-1 accuracy can tell (the full model's is
    at least 0.2 above the all-ablated model's), and top-1 with the circuit kept recovers less
    than half the share the primary metric claims, (top1(C) - top1(∅)) / (top1(M) - top1(∅))
    < faithfulness / 2. On a 30-layer model one head with all MLPs kept scored 0.83 of the
    logit difference with top-1 0: the primary number is carried by what stays outside the
    heads (MLPs, mean activations), not by the circuit. A warning, not a verdict.
    """
    if top1 is None or not np.isfinite(value) or value < 0.5:
        return None
    c, f, a = top1["circuit"], top1["full"], top1["ablated"]
    if not f - a >= 0.2:
        return None
    share = (c - a) / (f - a)
    if share >= value / 2:
        return None
    return (f"possibly trivial: the circuit ({n_heads} of {total} heads) keeps {value:.2f} of "
            f"the {metric} but top-1 accuracy with it kept is {c:.2f} (full model {f:.2f}, all "
            f"ablated {a:.2f}: {share:.2f} of the way); what is kept outside the heads may carry "
            "the primary metric - compare smaller circuits and the secondary metrics")


def _circuit_ratio(kind: str, ablate: bool, model: Any, task: Task,
                   circuit: "Circuit | EdgeCircuit", *args: Any) -> Measurement:
    """The circuit kept alone (``ablate=False``) or removed alone, relative to the full model;
    the full and all-ablated baselines ride along in the same batched passes. A faithfulness
    also reads the ``SECONDARY`` metrics (circuit, full model, all ablated) from those passes
    and carries ``trivial_warning``'s warning, if any, in ``details``. An ``EdgeCircuit`` is
    measured by edge patching (``edge_faithfulness``). An intervention the machinery did not
    apply (``NotMeasurableError``) makes it not measurable."""
    try:
        if isinstance(circuit, EdgeCircuit):
            s, names, got = edge_circuit_rows(kind, ablate, model, task, circuit, *args)
        else:
            s = _setup(model, task, [circuit], *args)
            names = (tuple(n for n in SECONDARY if n != s.metric.name)
                     if kind == "faithfulness" else ())
            got = _metric_rows(s, [circuit], [ablate], with_baselines=True, secondary=names)
    except NotMeasurableError as e:
        return _unmeasured(kind, e, model, task, circuit, args[0], args[1], args[4], args[5])
    rows, base = got[:2]
    extra: dict[str, Any] = {}
    if names:
        extra["secondary"] = {n: {"circuit": float(r[0].mean()), "full": float(r[1].mean()),
                                  "ablated": float(r[2].mean())} for n, r in got[2].items()}
    m = _ratio_measurement(s, kind, rows[0], base, circuit, extra)
    if names and m.problem is None:
        L, H = model.cfg.n_layers, model.cfg.n_heads
        warn = trivial_warning(m.value, s.metric.name, extra["secondary"].get("top1"),
                               len(circuit.heads), L * H)
        if warn:
            m.details["warning"] = warn
            warnings.warn(CircuitCheckWarning(f"faithfulness of {circuit.name!r}: {warn}"),
                          stacklevel=3)
    return m


def _unmeasured(kind: str, error: NotMeasurableError, model: Any, task: Task,
                circuit: Any, ablation: str, metric: str, seed: int | None,
                confidence: float) -> Measurement:
    """The measurement of a claim whose interventions failed (see ``interventions._guard``)."""
    return unmeasured(kind, str(error), len(task.prompts), metric=str(metric),
                      ablation=f"{Ablation.parse(ablation).value}-ablated", confidence=confidence,
                      seed=_settings.seed() if seed is None else int(seed), circuit=circuit,
                      model=getattr(model, "cc_name", ""), task=task.name)


def faithfulness(model: Any, task: Task, circuit: "Circuit | EdgeCircuit", *,
                 ablation: str = "mean",
                 metric: str = "logit_diff", reference: str | None = None,
                 normalize: str = "ratio", seed: int | None = None, confidence: float = 0.95,
                 batch_size: int | None = None) -> Measurement:
    """F(C) / F(M): the metric with only ``circuit`` kept, relative to the full model.

    Everything outside the circuit (and each positioned group outside its position) is
    ablated with ``ablation`` (zero, mean, mean-by-template, resample); ``reference`` picks the
    prompts the means are taken over (default: corrupted when the task has them).
    An ``EdgeCircuit`` keeps only its edges: every other edge's receiver reads the sender's
    ablated output (edge patching, ``circuitcheck.interventions.edges``).
    """
    return _circuit_ratio("faithfulness", False, model, task, circuit, ablation, metric,
                          reference, normalize, seed, confidence, batch_size)


def necessity(model: Any, task: Task, circuit: "Circuit | EdgeCircuit", *,
              ablation: str = "mean",
              metric: str = "logit_diff", reference: str | None = None,
              normalize: str = "ratio", seed: int | None = None, confidence: float = 0.95,
              batch_size: int | None = None) -> Measurement:
    """F(M \\ C) / F(M): performance with ``circuit`` ablated, everything else kept (an
    ``EdgeCircuit``: its edges patched, every other edge kept)."""
    return _circuit_ratio("necessity", True, model, task, circuit, ablation, metric,
                          reference, normalize, seed, confidence, batch_size)


def head_drops(model: Any, task: Task, circuit: Circuit, *, ablation: str = "mean",
               metric: str = "logit_diff", reference: str | None = None,
               normalize: str = "ratio", batch_size: int | None = None) -> dict[Head, float]:
    """For each head v of the circuit, faithfulness(C \\ {v}) - faithfulness(C), largest first.

    All |C| + 1 variants run in one batched pass; used to say which heads mattered most.
    """
    s = _setup(model, task, [circuit], ablation, metric, reference, normalize, 0, 0.95,
               batch_size)
    heads = circuit.heads
    rows, base = _metric_rows(s, [circuit] + [circuit.without([h]) for h in heads],
                              [False] * (len(heads) + 1), with_baselines=True)
    b = 0.0 if normalize == "ratio" else float(base[normalize].mean())
    den = float(base["full"].mean()) - b
    if not den:
        return {}
    f = (rows.mean(1) - b) / den
    drops = {h: float(f[i + 1] - f[0]) for i, h in enumerate(heads)}
    return dict(sorted(drops.items(), key=lambda kv: kv[1]))


@dataclass(frozen=True, eq=False)
class Minimality(ResultProtocol):
    """Per-head minimality scores of a circuit, each a ``Measurement``."""

    scores: dict[Head, Measurement]

    def table(self):
        """A pandas DataFrame: head, score, CI, the K set used."""
        import pandas as pd

        return pd.DataFrame([
            {"head": format_head(h), "score": m.value, "ci_low": m.ci[0], "ci_high": m.ci[1],
             "K": [format_head(k) for k in m.details.get("K", [])]}
            for h, m in self.scores.items()
        ])

    def __getitem__(self, head: Any) -> Measurement:
        return self.scores[parse_head(head)]

    @property
    def values(self) -> np.ndarray:
        """Each head's score, in the order of ``scores``."""
        return np.array([m.value for m in self.scores.values()], dtype=float)

    @property
    def ci_low(self) -> np.ndarray:
        return np.array([m.ci[0] for m in self.scores.values()], dtype=float)

    @property
    def ci_high(self) -> np.ndarray:
        return np.array([m.ci[1] for m in self.scores.values()], dtype=float)

    def to_dict(self) -> dict[str, Any]:
        return {"scores": {format_head(h): m.to_dict() for h, m in self.scores.items()}}

    def summary(self) -> str:
        return "minimality: " + ", ".join(f"{format_head(h)} {m.value:.3f}"
                                          for h, m in self.scores.items())


def minimality(model: Any, task: Task, circuit: Circuit, *,
               k_sets: Mapping[Any, Iterable[Any]] | None = None, ablation: str = "mean",
               metric: str = "logit_diff", reference: str | None = None,
               seed: int | None = None, confidence: float = 0.95,
               batch_size: int | None = None) -> Minimality:
    """|F(C \\ K) - F(C \\ (K ∪ {v}))| / |F(M)| for every head v of the circuit.

    ``k_sets`` maps a head to its K (heads of the circuit); default K = ∅ for every head.
    Every C \\ K and C \\ (K ∪ {v}) runs in one batched set of forward passes. The
    normaliser |F(M)| is the full model's mean metric on the same prompts (in every bootstrap
    resample, its own mean). The interval is for |d|, d the signed difference over |F(M)|:
    from the bootstrap interval [lo, hi] of d, [lo, hi] when 0 < lo, [-hi, -lo] when hi < 0,
    and [0, max(-lo, hi)] when it holds 0 (bootstrapping |d| itself would give an interval
    that never reaches 0, so "v does not matter" could never be shown). ``per_prompt`` and
    ``details["signed"]`` keep the sign: negative when removing v raises the metric.
    """
    try:
        s = _setup(model, task, [circuit], ablation, metric, reference, "ratio", seed,
                   confidence, batch_size)
    except NotMeasurableError as e:
        return Minimality({h: _unmeasured("minimality", e, model, task, circuit, ablation,
                                          metric, seed, confidence) for h in circuit.heads})
    ks: dict[Head, tuple[Head, ...]] = {h: () for h in circuit.heads}
    for head, kset in (k_sets or {}).items():
        h = parse_head(head)
        if h not in ks:
            raise CircuitCheckError(f"k_sets names head {format_head(h)}, which is not in the circuit")
        ks[h] = tuple(parse_head(k) for k in kset)
    variants: list[Circuit] = []
    for h, k in ks.items():
        variants += [circuit.without(k), circuit.without(k + (h,))]
    try:
        rows, base = _metric_rows(s, variants, [False] * len(variants), with_baselines=True)
    except NotMeasurableError as e:
        return Minimality({h: _unmeasured("minimality", e, model, task, circuit, ablation,
                                          metric, seed, confidence) for h in ks})
    full = base["full"]
    den = abs(float(full.mean()))
    n = len(full)
    scores = {}
    for i, (h, k) in enumerate(ks.items()):
        a, b = rows[2 * i], rows[2 * i + 1]
        signed = float(a.mean() - b.mean()) / den if den else float("nan")
        lo, hi = bootstrap_ci(lambda idx: (a[idx].mean(1) - b[idx].mean(1))
                              / np.abs(full[idx].mean(1)), n, confidence=confidence, seed=s.seed)
        value, ci = abs(signed), _abs_interval(lo, hi)
        scores[h] = Measurement(
            kind="minimality", value=value, ci=ci, per_prompt=(a - b) / den if den else a * np.nan,
            metric=s.metric.name, metric_description=s.metric.describe,
            ablation=s.values.describe(), baselines={"full": float(full.mean())},
            confidence=confidence, seed=s.seed, circuit=circuit,
            model=getattr(model, "cc_name", ""), task=task.name,
            problem=None if den else "the full model's metric is 0",
            details={"head": h, "K": list(k), "signed": signed},
        )
    return Minimality(scores)


def _abs_interval(lo: float, hi: float) -> tuple[float, float]:
    """An interval for |d| from one for d (see ``minimality``)."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return float("nan"), float("nan")
    if lo > 0:
        return lo, hi
    if hi < 0:
        return -hi, -lo
    return 0.0, max(-lo, hi)
