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
