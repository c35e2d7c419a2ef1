"""circuitcheck: circuit claims about transformer models, checked as tests.

The engine is usable without pytest::

    import circuitcheck as cc
    model = cc.load_model("zoo:planted")
    m = cc.faithfulness(model, task, cc.Circuit({"induction": ["1.2"]}), ablation="mean")

Names are imported lazily so that importing the pytest plugin does not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_model": "circuitcheck.models",
    "Task": "circuitcheck.tasks",
    "tasks": "circuitcheck.tasks",
    "Circuit": "circuitcheck.circuit",
    "EdgeCircuit": "circuitcheck.edge_circuit",
    "Ablation": "circuitcheck.interventions",
    "Measurement": "circuitcheck.measures",
    "Minimality": "circuitcheck.measures",
    "faithfulness": "circuitcheck.measures",
    "necessity": "circuitcheck.measures",
    "minimality": "circuitcheck.measures",
    "head_drops": "circuitcheck.measures",
    "head_scores": "circuitcheck.measures",
    "stochastic_ablation": "circuitcheck.measures",
    "StochasticAblation": "circuitcheck.measures",
    "compare_selection": "circuitcheck.measures",
    "equivalence": "circuitcheck.measures",
    "localization": "circuitcheck.measures",
    "minimality_test": "circuitcheck.measures",
    "sweep": "circuitcheck.measures",
    "task_quality": "circuitcheck.measures",
    "TaskQuality": "circuitcheck.measures",
    "HeadScores": "circuitcheck.measures",
    "assert_head_score": "circuitcheck.assertions",
    "assert_important": "circuitcheck.assertions",
    "assert_selection": "circuitcheck.assertions",
    "assert_equivalent": "circuitcheck.assertions",
    "assert_localized": "circuitcheck.assertions",
    "assert_minimal": "circuitcheck.assertions",
    "assert_robust": "circuitcheck.assertions",
    "assert_faithful": "circuitcheck.assertions",
    "assert_necessary": "circuitcheck.assertions",
    "patch_heads": "circuitcheck.measures.patching",
    "patch_residual": "circuitcheck.measures.patching",
    "attribution_patch_heads": "circuitcheck.measures.patching",
    "attribution_patch_residual": "circuitcheck.measures.patching",
    "path_patch": "circuitcheck.measures.patching",
    "path_patch_heads": "circuitcheck.measures.patching",
    "ablate_attention": "circuitcheck.measures.patching",
    "compare_to_random": "circuitcheck.measures.patching",
    "direct_logit_attribution": "circuitcheck.measures.patching",
    "PatchGrid": "circuitcheck.measures.patching",
    "assert_patching_recovers": "circuitcheck.assertions_patching",
    "assert_direct_effect": "circuitcheck.assertions_patching",
    "assert_attention_ablation_effect": "circuitcheck.assertions_patching",
    "ablation_curve": "circuitcheck.measures.ablation_curve",
    "AblationCurve": "circuitcheck.measures.ablation_curve",
    "assert_ablation_curve": "circuitcheck.assertions_patching",
    "ov_copying": "circuitcheck.measures.ov",
    "ov_eigen_scores": "circuitcheck.measures.ov",
    "position_attention": "circuitcheck.measures.attention_positions",
    "ablated_dla": "circuitcheck.measures.compensation",
    "logit_lens": "circuitcheck.measures.logit_lens",
    "head_sweep": "circuitcheck.measures.head_sweep",
    "assert_head_sweep": "circuitcheck.assertions_analysis",
    "copying_scores": "circuitcheck.measures.names",
    "attention_to": "circuitcheck.measures.names",
    "compensation": "circuitcheck.measures.names",
    "assert_ov_copying": "circuitcheck.assertions_analysis",
    "assert_attends": "circuitcheck.assertions_analysis",
    "assert_compensates": "circuitcheck.assertions_analysis",
    "assert_logit_lens": "circuitcheck.assertions_analysis",
    "assert_task_quality": "circuitcheck.assertions_analysis",
    "edge_scores": "circuitcheck.measures.edge_scores",
    "EdgeScores": "circuitcheck.measures.edge_scores",
    "edge_auroc": "circuitcheck.measures.edge_auroc",
    "EdgeAuroc": "circuitcheck.measures.edge_auroc",
    "faithfulness_curve": "circuitcheck.measures.faithfulness_curve",
    "FaithfulnessCurve": "circuitcheck.measures.faithfulness_curve",
    "CircuitCheckError": "circuitcheck.errors",
    "ModelNotFoundError": "circuitcheck.errors",
    "TaskError": "circuitcheck.errors",
    "CircuitError": "circuitcheck.errors",
    "ClaimFileError": "circuitcheck.errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'circuitcheck' has no attribute {name!r}") from None
    mod = importlib.import_module(module)
    value = mod if name == "tasks" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
