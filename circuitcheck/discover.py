"""Discovery that writes a claim: stochastic ablation -> selected heads -> a YAML claim file.

The written expectations are the measured values with a margin, so a finding becomes a
regression test in one step (``circuitcheck discover ... --out circuits/x.yaml``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .circuit import Circuit, format_head


def discover(model_name: str, task_spec: dict[str, Any], out: str | Path, *,
             trials: int = 2048, top: int | None = None, percentile: float = 90.0,
             ablation: str = "mean", metric: str = "top1", margin: float = 0.05,
             seed: int = 0, device: str = "auto", progress: bool = True,
             overwrite: bool = False) -> dict[str, Any]:
    """Find the heads that matter and write a claim file; returns what was written.

    An existing ``out`` is refused before any model runs unless ``overwrite``; the file is
    written atomically (a full disk or an interrupt leaves the old file, never half a file).
    """
    import yaml

    from .errors import CircuitCheckError
    from .report._write import atomic_write

    path = Path(out)
    if path.exists() and not overwrite:
        raise CircuitCheckError(
            f"{str(out)!r} already exists; choose another --out or pass --force to replace it")
    if path.is_dir():
        raise CircuitCheckError(f"{str(out)!r} is a directory; --out names the claim file to "
                                "write, e.g. circuits/x.yaml")

    from .claimfile import build_task
    from .measures import faithfulness, necessity, stochastic_ablation
    from .models import load_model

    model = load_model(model_name, device=device)
    task = build_task(model, task_spec)
    mc = stochastic_ablation(model, task, trials=trials, ablation=ablation, metric=metric,
                             seed=seed, progress=progress)
    heads = mc.importance.ranking()[:top] if top else mc.select(percentile)
    circuit = Circuit({"discovered": heads}, name="discovered")
    common = {"ablation": ablation, "metric": metric, "normalize": "ablated", "seed": seed}
    f = faithfulness(model, task, circuit, **common)
    n = necessity(model, task, circuit, **common)
    name = f"{task_spec['builder']}-discovered"
    heads_txt = [format_head(h) for h in heads]
    expect: dict[str, Any] = {}
    if not f.problem:
        expect["faithfulness"] = {"at_least": round(float(f.ci[0]) - margin, 2), **_ablation(common)}
    if not n.problem:
        expect["necessity"] = {"at_most": round(float(n.ci[1]) + margin, 2), **_ablation(common)}
    expect["important"] = {"heads": heads_txt, "trials": trials, "ablation": ablation,
                           "metric": metric}
    doc = {
        "model": model_name,
        "source": (f"circuitcheck discover, {len(mc.raw['importance']['metric'])} trials per "
                   f"regime, seed {seed}: faithfulness {f.value:.3f} CI [{f.ci[0]:.3f}, "
                   f"{f.ci[1]:.3f}], necessity {n.value:.3f} CI [{n.ci[0]:.3f}, {n.ci[1]:.3f}]; "
                   f"thresholds = interval bound -/+ {margin}"),
        "task": dict(task_spec),
        "circuit": {"name": "discovered", "groups": {"discovered": heads_txt}},
        "claims": [{"name": name, "expect": expect}],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))
    return doc


def _ablation(common: dict[str, Any]) -> dict[str, Any]:
    return {k: common[k] for k in ("ablation", "metric", "normalize")}


def discover_edges(model_name: str, task_spec: dict[str, Any], out: str | Path, *,
                   method: str = "eap-ig", steps: int = 5, top: int | None = None,
                   threshold: float | None = None, ablation: str = "resample",
                   metric: str = "logit_diff", margin: float = 0.05, seed: int = 0,
                   device: str = "auto", overwrite: bool = False) -> dict[str, Any]:
    """Score every edge (EAP / EAP-IG), keep the ``top`` n (or every edge with |score| >=
    ``threshold``; by default the top 5% of edges), and write an edge claim file: ``out``
    (YAML) naming ``circuit: {file: <out>.json}``, the EAP-IG graph JSON beside it (every
    edge's score, the kept edges ``in_graph``). Its claims are the measured faithfulness,
    necessity and the faithfulness curve's CPR of the file's scores, each at its interval
    bound -/+ ``margin``. Returns the YAML document written."""
    import math

    import yaml

    from . import _validate
    from .errors import CircuitCheckError
    from .report._write import atomic_write

    path = Path(out)
    graph = path.with_suffix(".json")
    for p in (path, graph):
        if p.exists() and not overwrite:
            raise CircuitCheckError(f"{str(p)!r} already exists; choose another --out or pass "
                                    "--force to replace it")
    if path.suffix not in (".yaml", ".yml"):
        raise CircuitCheckError(f"--out names the claim file to write (.yaml), got {str(out)!r}"
                                "; e.g. circuits/found_edges.yaml")
    if top is not None and threshold is not None:
        raise CircuitCheckError("give --top N or --threshold T, not both")
    if threshold is not None:
        threshold = _validate.real(threshold, "threshold")
    margin = _validate.real(margin, "margin")

    from .claimfile import build_task
    from .measures import faithfulness, necessity
    from .measures.edge_scores import edge_scores
    from .measures.faithfulness_curve import faithfulness_curve
    from .models import load_model

    model = load_model(model_name, device=device)
    task = build_task(model, task_spec)
    scores = edge_scores(model, task, method, steps=steps, ablation=ablation, metric=metric)
    if threshold is not None:
        circuit = scores.threshold(threshold)
        how = f"|score| >= {threshold:g}"
    else:
        n = top if top is not None else max(1, math.ceil(0.05 * len(scores)))
        circuit = scores.top(n)
        how = f"top {n} of {len(scores)} edges"
    if len(circuit) == 0:
        raise CircuitCheckError(f"no edge has {how}; lower --threshold (the largest |score| "
                                f"is {float(abs(scores.values).max()):.3g}) or use --top")
    path.parent.mkdir(parents=True, exist_ok=True)
    scores.to_json(graph, model, in_graph=circuit)
    common = {"ablation": ablation, "metric": metric, "normalize": "ablated", "seed": seed}
    f = faithfulness(model, task, circuit, **common)
    nec = necessity(model, task, circuit, **common)
    curve = faithfulness_curve(model, task, scores, ablation=ablation, metric=metric, seed=seed)
    expect: dict[str, Any] = {}
    if not f.problem:
        expect["faithfulness"] = {"at_least": round(float(f.ci[0]) - margin, 2), **_ablation(common)}
    if not nec.problem:
        expect["necessity"] = {"at_most": round(float(nec.ci[1]) + margin, 2), **_ablation(common)}
    if not curve.problem:
        expect["faithfulness_curve"] = {
            "cpr_at_least": min(1.0, max(0.0, round(curve.cpr_ci[0] - margin, 2))),
            "ablation": ablation, "metric": metric}
    if not expect:
        raise CircuitCheckError(f"nothing measurable to claim: {f.problem}")
    doc = {
        "model": model_name,
        "source": (f"circuitcheck discover --edges: {method} scores ({ablation}, {metric}, "
                   f"n={scores.n}), {how}; faithfulness {f.value:.3f} CI [{f.ci[0]:.3f}, "
                   f"{f.ci[1]:.3f}], necessity {nec.value:.3f} CI [{nec.ci[0]:.3f}, "
                   f"{nec.ci[1]:.3f}], CPR {curve.cpr:.3f} CI [{curve.cpr_ci[0]:.3f}, "
                   f"{curve.cpr_ci[1]:.3f}]; thresholds = interval bound -/+ {margin}"),
        "task": dict(task_spec),
        "circuit": {"file": graph.name},
        "claims": [{"name": f"{task_spec['builder']}-edges-discovered", "expect": expect}],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))
    return doc
