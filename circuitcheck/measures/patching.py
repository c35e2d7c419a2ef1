"""Activation patching, attribution patching, path patching, attention ablation and DLA.

Each lives in its own module (conventions in ``circuitcheck.measures._patching_base``):

- ``activation_patching`` — ``patch_heads``, ``patch_residual``, ``patch_head_set``,
  ``patching_recovery``;
- ``attribution`` — ``attribution_patch_heads``, ``correlation``;
- ``path_patching`` — ``path_patch``, ``path_patch_heads``;
- ``attention_ablation`` — ``ablate_attention``, ``compare_to_random``,
  ``attention_ablation_grid``, ``attention_ablation_effect``;
- ``dla`` — ``direct_logit_attribution``, ``direct_effect``.

This module re-exports them, so ``circuitcheck.measures.patching.patch_heads`` keeps working.
"""
from __future__ import annotations

from ._patching_base import PatchGrid
from .activation_patching import patch_head_set, patch_heads, patch_residual, patching_recovery
from .attention_ablation import (AttentionAblation, RandomComparison, ablate_attention,
                                 attention_ablation_effect, attention_ablation_grid,
                                 compare_to_random)
from .attribution import (DIFFERENTIABLE, attribution_patch_heads, attribution_patch_residual,
                          correlation)
from .dla import DirectLogitAttribution, direct_effect, direct_logit_attribution
from .path_patching import RECEIVER_INPUTS, PathPatchResult, path_patch, path_patch_heads

__all__ = ["DIFFERENTIABLE", "RECEIVER_INPUTS", "AttentionAblation", "DirectLogitAttribution",
           "PatchGrid", "PathPatchResult", "RandomComparison", "ablate_attention",
           "attention_ablation_effect", "attention_ablation_grid", "attribution_patch_heads",
           "attribution_patch_residual",
           "compare_to_random", "correlation", "direct_effect", "direct_logit_attribution",
           "patch_head_set", "patch_heads", "patch_residual", "patching_recovery", "path_patch",
           "path_patch_heads"]
